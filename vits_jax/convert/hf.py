"""Hugging Face `transformers` VITS (`VitsModel`, e.g. facebook/mms-tts-*) -> our model.

An HF folder holds `config.json` (a `VitsConfig`) and `model.safetensors` (older saves:
`pytorch_model.bin`). We read them without torch (safetensors' numpy loader; the `.bin` with
the tensors-only reader of official checkpoints), rename HF parameters to the official VITS names
(`hf_to_official`: one name table, `_PREFIXES`, that `vits_jax.export.hf` reads the other
way) and hand those to `torch_names.torch_to_flax`.

HF differences handled here: attention projections are `nn.Linear` (official: 1x1 convs), the
LayerNorms are `nn.LayerNorm` (`weight`/`bias`; official `gamma`/`beta`), the flows and the
SDP's flow lists have no `Flip` entries (official indices are recovered), the decoder is
stored with weight norm removed, and weight norm may be stored as
`parametrizations.weight.original0/1` or as legacy `weight_g/weight_v`.
"""

import os
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple

import numpy as np
import ml_collections

from vits_jax.convert import source, torch_names

# VitsConfig fields whose values the official architecture hard-codes.
_FIXED = {
    "window_size": 4,
    "prior_encoder_num_flows": 4,
    "prior_encoder_num_wavenet_layers": 4,
    "wavenet_kernel_size": 5,
    "wavenet_dilation_rate": 1,
    "depth_separable_channels": 2,
    "depth_separable_num_layers": 3,
    "duration_predictor_flow_bins": 10,
    "duration_predictor_tail_bound": 5.0,
    "duration_predictor_kernel_size": 3,
    "duration_predictor_num_flows": 4,
    "duration_predictor_filter_channels": 256,
    "use_bias": True,
    "hidden_act": "relu",
    "leaky_relu_slope": 0.1,
    "layer_norm_eps": 1e-5,
}


# HF <-> official parameter names, one row per part of the model: (HF, official), read
# left to right on import and right to left on export. A name's first row whose side
# matches its start rewrites that start; `{slot}`s match what `_SLOTS` says and carry the
# same value to the other side, through its index maps where the two number differently.
_PREFIXES = [
    ("text_encoder.embed_tokens.", "enc_p.emb."),
    ("text_encoder.project.", "enc_p.proj."),
    ("text_encoder.encoder.layers.{n}.attention.{qkv}_proj.",
     "enc_p.encoder.attn_layers.{n}.conv_{qkv}."),
    ("text_encoder.encoder.layers.{n}.attention.out_proj.",
     "enc_p.encoder.attn_layers.{n}.conv_o."),
    ("text_encoder.encoder.layers.{n}.attention.emb_rel_{kv}",
     "enc_p.encoder.attn_layers.{n}.emb_rel_{kv}"),
    ("text_encoder.encoder.layers.{n}.layer_norm.", "enc_p.encoder.norm_layers_1.{n}."),
    ("text_encoder.encoder.layers.{n}.final_layer_norm.", "enc_p.encoder.norm_layers_2.{n}."),
    ("text_encoder.encoder.layers.{n}.feed_forward.", "enc_p.encoder.ffn_layers.{n}."),
    ("posterior_encoder.conv_pre.", "enc_q.pre."),
    ("posterior_encoder.conv_proj.", "enc_q.proj."),
    ("posterior_encoder.wavenet.", "enc_q.enc."),
    ("flow.flows.{flow}.conv_pre.", "flow.flows.{flow}.pre."),
    ("flow.flows.{flow}.conv_post.", "flow.flows.{flow}.post."),
    ("flow.flows.{flow}.wavenet.", "flow.flows.{flow}.enc."),
    ("decoder.upsampler.", "dec.ups."),
    ("decoder.", "dec."),
    ("duration_predictor.{flows}.{sdp}.conv_pre.", "dp.{flows}.{sdp}.pre."),
    ("duration_predictor.{flows}.{sdp}.conv_proj.", "dp.{flows}.{sdp}.proj."),
    ("duration_predictor.{flows}.{sdp}.conv_dds.", "dp.{flows}.{sdp}.convs."),
    ("duration_predictor.{flows}.{sdp}.", "dp.{flows}.{sdp}."),
    ("duration_predictor.post_conv_pre.", "dp.post_pre."),
    ("duration_predictor.post_conv_proj.", "dp.post_proj."),
    ("duration_predictor.post_conv_dds.", "dp.post_convs."),
    ("duration_predictor.conv_pre.", "dp.pre."),
    ("duration_predictor.conv_proj.", "dp.proj."),
    ("duration_predictor.conv_dds.", "dp.convs."),
    ("duration_predictor.", "dp."),
    ("embed_speaker.", "emb_g."),
]
# Parts renamed wherever they occur (HF, official); a trailing `$`: only at the end.
_PARTS = [
    (".translate$", ".m$"),
    (".log_scale$", ".logs$"),
    (".convs_dilated.", ".convs_sep."),
    (".convs_pointwise.", ".convs_1x1."),
    (".parametrizations.weight.original0$", ".weight_g$"),
    (".parametrizations.weight.original1$", ".weight_v$"),
]
# slot: (pattern, HF index -> official, official index -> HF). HF lists only the coupling
# layers of a flow (official: coupling, Flip, coupling, ...) and of the SDP's flows (official:
# ElementwiseAffine, then ConvFlow, Flip, ConvFlow, ...).
_SLOTS = {
    "n": (r"\d+", None, None),
    "qkv": ("[qkv]", None, None),
    "kv": ("[kv]", None, None),
    "flows": ("flows|post_flows", None, None),
    "flow": (r"\d+", lambda i: 2 * i, lambda k: k // 2),
    "sdp": (r"\d+", lambda j: 0 if j == 0 else 2 * j - 1, lambda k: (k + 1) // 2),
}
# LayerNorm parameters (official side; HF weight/bias are official gamma/beta), and the
# attention projections (HF Linear [out, in], official 1x1 conv [out, in, 1]).
_LAYER_NORM = re.compile(r"(norm_layers_[12]\.\d+|norms_[12]\.\d+|dp\.norm_[12])\.")
_LAYER_NORM_PARAMS = (("weight", "gamma"), ("bias", "beta"))
ATTENTION_WEIGHT = re.compile(r"attn_layers\.\d+\.conv_[qkvo]\.weight$")


def _start(template: str):
  """One side of a `_PREFIXES` row -> (regex of a name's start, its slots in order)."""
  parts = re.split(r"\{(\w+)\}", template)
  regex = "".join(re.escape(p) if i % 2 == 0 else f"({_SLOTS[p][0]})"
                  for i, p in enumerate(parts))
  return re.compile("^" + regex), parts[1::2]


_STARTS = [(_start(hf), _start(official)) for hf, official in _PREFIXES]


def _rename(name: str, side: int) -> str:
  """`name` from side `side` (0 HF, 1 official) to the other."""
  for row, starts in zip(_PREFIXES, _STARTS):
    pattern, slots = starts[side]
    m = pattern.match(name)
    if not m:
      continue
    values = {}
    for slot, value in zip(slots, m.groups()):
      index_map = _SLOTS[slot][1 + side]
      values[slot] = str(index_map(int(value))) if index_map else value
    name = row[1 - side].format(**values) + name[m.end():]
    break
  for part in _PARTS:
    src, dst = part[side], part[1 - side]
    if src.endswith("$"):
      if name.endswith(src[:-1]):
        name = name[:-len(src) + 1] + dst[:-1]
    else:
      name = name.replace(src, dst)
  return name


def hf_to_official_name(name: str) -> str:
  """HF `VitsModel` parameter name -> official VITS name."""
  name = _rename(name, 0)
  m = _LAYER_NORM.search(name)
  if m:
    name = name[:m.end()] + dict(_LAYER_NORM_PARAMS).get(name[m.end():], name[m.end():])
  return name


def official_to_hf_name(name: str, sdp: bool = True) -> str:
  """Official VITS parameter name -> HF `VitsModel` name (what current transformers saves:
  weight norm as `parametrizations.weight.original0/1`).

  `sdp`: whether the voice's duration predictor is the stochastic one. The plain one has
  the official names under HF's `duration_predictor.` (its `proj` stays `proj`, where the
  stochastic one's is `conv_proj`)."""
  m = _LAYER_NORM.search(name)
  if m:
    back = {o: h for h, o in _LAYER_NORM_PARAMS}
    name = name[:m.end()] + back.get(name[m.end():], name[m.end():])
  if not sdp and name.startswith("dp."):
    return "duration_predictor." + name[len("dp."):]
  return _rename(name, 1)


def hf_to_official(state_dict: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  """Renames an HF `VitsModel` state dict to official VITS names (torch layouts).

  Linear attention projections `[out, in]` become 1x1 conv weights `[out, in, 1]`.
  """
  out = {}
  for key, value in state_dict.items():
    new = hf_to_official_name(key)
    value = np.asarray(value)
    if ATTENTION_WEIGHT.search(new) and value.ndim == 2:
      value = value[:, :, None]
    out[new] = value
  return out


def config_from_hf(hf_config: Any, where: str = "VitsConfig") -> ml_collections.ConfigDict:
  """Our config (sections `data`, `model`, `train`) from a `VitsConfig` or its dict.

  Raises:
    ValueError: if the HF config uses an architecture knob the official VITS fixes.
  """
  c = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
  for key, expected in _FIXED.items():
    if key in c and c[key] != expected:
      raise ValueError(f"unsupported VitsConfig: {key}={c[key]!r} (only {expected!r} is "
                       f"supported, as in the official VITS)")
  def seq(key, default):
    value = c.get(key, default)
    if not isinstance(value, (list, tuple)):
      raise ValueError(f"{where}: {key} must be a list, got {value!r}")
    return list(value)

  dilations = seq("resblock_dilation_sizes", [[1, 3, 5]] * 3)
  upsample_rates = seq("upsample_rates", [8, 8, 2, 2])
  bins = int(c.get("spectrogram_bins", 513))
  model = dict(
      inter_channels=c.get("flow_size", 192),
      hidden_channels=c.get("hidden_size", 192),
      filter_channels=c.get("ffn_dim", 768),
      n_heads=c.get("num_attention_heads", 2),
      n_layers=c.get("num_hidden_layers", 6),
      kernel_size=c.get("ffn_kernel_size", 3),
      p_dropout=c.get("hidden_dropout", 0.1),
      # HF's HiFi-GAN block is ResBlock1 (dilated + plain conv pairs), any dilation count.
      resblock="1",
      resblock_kernel_sizes=seq("resblock_kernel_sizes", [3, 7, 11]),
      resblock_dilation_sizes=dilations,
      upsample_rates=upsample_rates,
      upsample_initial_channel=c.get("upsample_initial_channel", 512),
      upsample_kernel_sizes=seq("upsample_kernel_sizes", [16, 16, 4, 4]),
      n_layers_enc_q=c.get("posterior_encoder_num_wavenet_layers", 16),
      gin_channels=c.get("speaker_embedding_size", 0),
      use_sdp=bool(c.get("use_stochastic_duration_prediction", True)),
      n_vocab=c.get("vocab_size", 38),
      n_speakers=int(c.get("num_speakers", 1)),
  )
  data = dict(sampling_rate=int(c.get("sampling_rate", 16000)),
              filter_length=(bins - 1) * 2, win_length=(bins - 1) * 2, frontend="hf",
              text_cleaners=[])
  # Synthesis defaults the HF model was published with (`Voice` checks their ranges).
  infer = {}
  for ours, theirs in (("noise_scale", "noise_scale"), ("noise_scale_w", "noise_scale_duration")):
    if c.get(theirs) is not None:
      infer[ours] = float(source.number(c[theirs], where, theirs))
  if c.get("speaking_rate") is not None:
    rate = source.number(c["speaking_rate"], where, "speaking_rate")
    if not rate > 0:
      raise ValueError(f"{where}: speaking_rate must be > 0, got {rate!r}")
    infer["length_scale"] = 1.0 / float(rate)
  return source.config_from_hparams(model, data, dict(segment_size=8192), infer,
                                    where=where)


def param_template(config: ml_collections.ConfigDict):
  """Shapes of our model's params for `config` (no real init), for `torch_to_flax(like=)`."""
  from vits_jax.models.synthesizer import build_synthesizer, param_shapes
  return param_shapes(build_synthesizer(config))


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def _read_safetensors(path: str) -> Dict[str, np.ndarray]:
  """The tensors of a `.safetensors` file as numpy arrays.

  Raises:
    OSError: the file cannot be opened or read.
    ValueError: it is not a valid safetensors file (e.g. an interrupted download); the
      message names the file and is one line.
  """
  import safetensors
  from safetensors.numpy import load_file
  try:
    return load_file(path)
  except OSError:
    raise
  except safetensors.SafetensorError as e:
    raise ValueError(f"{path}: corrupt or truncated safetensors file ({_one_line(e)})") from None
  except Exception as e:  # pylint: disable=broad-except  (any malformed input)
    raise ValueError(f"{path}: not a readable safetensors file ({_one_line(e)})") from None


def weights_file(path) -> str:
  """The weights of the HF folder `path`: `model.safetensors`, else (older saves)
  `pytorch_model.bin`; the first where neither exists."""
  safetensors = os.path.join(path, "model.safetensors")
  pickled = os.path.join(path, "pytorch_model.bin")
  return pickled if not os.path.isfile(safetensors) and os.path.isfile(pickled) else safetensors


def _read_torch_bin(path: str) -> Dict[str, np.ndarray]:
  """The tensors of a `pytorch_model.bin` (a `torch.save`d state dict), read by the reader
  of official checkpoints: only tensors and plain containers, nothing in the file is run.

  Raises:
    ValueError: it is not a readable state dict (one line naming the file).
  """
  from vits_jax.convert import check_parameter_count, official_pth
  state = official_pth.read_torch_checkpoint(path)
  if not isinstance(state, dict) or not all(
      isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state.items()):
    raise ValueError(f"{path}: not a state dict (a mapping of names to tensors)")
  check_parameter_count(sum(v.size for v in state.values()), path)
  return {k: np.asarray(v, np.float32) if v.dtype.kind == "f" else v for k, v in state.items()}


def load_hf(path: str) -> Tuple[ml_collections.ConfigDict, Dict]:
  """Loads an HF VITS folder (`config.json` + `model.safetensors`, or an older save's
  `pytorch_model.bin`) without torch.

  Args:
    path: folder of a saved `VitsModel` (e.g. a local copy of facebook/mms-tts-eng).

  Returns:
    (config, params) for `build_synthesizer(config).apply({'params': params}, ...,
    method='infer')`.

  Raises:
    FileNotFoundError: `config.json` or the weights are missing.
    ValueError: a file is malformed (e.g. a truncated `model.safetensors`).
  """
  config_path = os.path.join(path, "config.json")
  weights_path = weights_file(path)
  for p in (config_path, weights_path):
    if not os.path.isfile(p):
      raise FileNotFoundError(f"not an HF VITS folder: {p} is missing")
  config = config_from_hf(source.read_json(Path(config_path)), where=config_path)
  tok_path = Path(path) / "tokenizer_config.json"
  if tok_path.is_file():
    config.data.add_blank = bool(source.read_json(tok_path).get("add_blank", True))
  official = hf_to_official(_read_safetensors(weights_path) if weights_path.endswith(
      ".safetensors") else _read_torch_bin(weights_path))
  params = torch_names.torch_to_flax(official, like=param_template(config))
  return config, params
