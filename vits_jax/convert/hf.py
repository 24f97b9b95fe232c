"""Hugging Face `transformers` VITS (`VitsModel`, e.g. facebook/mms-tts-*) -> our model.

An HF folder holds `config.json` (a `VitsConfig`) and `model.safetensors`. We read both
without torch (safetensors' numpy loader), rename HF parameters to the official VITS names
(`hf_to_official`), and hand those to `torch_names.torch_to_flax`.

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


def _flow_index(match: re.Match) -> str:
  """HF prior flow i (coupling + implicit flip) -> official flows.(2i)."""
  return f"flow.flows.{2 * int(match.group(1))}."


def _sdp_flow_index(match: re.Match) -> str:
  """HF SDP flows: 0 = ElementwiseAffine, j >= 1 ConvFlow -> official 2j - 1."""
  j = int(match.group(2))
  return f"dp.{match.group(1)}.{0 if j == 0 else 2 * j - 1}."


# (pattern, replacement) applied in order to every key.
_RULES = [
    (r"\.parametrizations\.weight\.original0$", ".weight_g"),
    (r"\.parametrizations\.weight\.original1$", ".weight_v"),
    # Text encoder.
    (r"^text_encoder\.embed_tokens\.", "enc_p.emb."),
    (r"^text_encoder\.project\.", "enc_p.proj."),
    (r"^text_encoder\.encoder\.layers\.(\d+)\.attention\.([qkv])_proj\.",
     r"enc_p.encoder.attn_layers.\1.conv_\2."),
    (r"^text_encoder\.encoder\.layers\.(\d+)\.attention\.out_proj\.",
     r"enc_p.encoder.attn_layers.\1.conv_o."),
    (r"^text_encoder\.encoder\.layers\.(\d+)\.attention\.emb_rel_([kv])$",
     r"enc_p.encoder.attn_layers.\1.emb_rel_\2"),
    (r"^text_encoder\.encoder\.layers\.(\d+)\.layer_norm\.", r"enc_p.encoder.norm_layers_1.\1."),
    (r"^text_encoder\.encoder\.layers\.(\d+)\.final_layer_norm\.",
     r"enc_p.encoder.norm_layers_2.\1."),
    (r"^text_encoder\.encoder\.layers\.(\d+)\.feed_forward\.", r"enc_p.encoder.ffn_layers.\1."),
    # Posterior encoder and flow (WaveNet -> WN).
    (r"^posterior_encoder\.conv_pre\.", "enc_q.pre."),
    (r"^posterior_encoder\.conv_proj\.", "enc_q.proj."),
    (r"^posterior_encoder\.wavenet\.", "enc_q.enc."),
    (r"^flow\.flows\.(\d+)\.", _flow_index),
    (r"^(flow\.flows\.\d+)\.conv_pre\.", r"\1.pre."),
    (r"^(flow\.flows\.\d+)\.conv_post\.", r"\1.post."),
    (r"^(flow\.flows\.\d+)\.wavenet\.", r"\1.enc."),
    # Decoder.
    (r"^decoder\.upsampler\.", "dec.ups."),
    (r"^decoder\.", "dec."),
    # Duration predictors.
    (r"^duration_predictor\.(flows|post_flows)\.(\d+)\.", _sdp_flow_index),
    (r"^duration_predictor\.", "dp."),
    (r"^dp\.post_conv_pre\.", "dp.post_pre."),
    (r"^dp\.post_conv_proj\.", "dp.post_proj."),
    (r"^dp\.post_conv_dds\.", "dp.post_convs."),
    (r"^dp\.conv_pre\.", "dp.pre."),
    (r"^dp\.conv_proj\.", "dp.proj."),
    (r"^dp\.conv_dds\.", "dp.convs."),
    (r"^(dp\.(?:post_)?flows\.\d+)\.conv_pre\.", r"\1.pre."),
    (r"^(dp\.(?:post_)?flows\.\d+)\.conv_proj\.", r"\1.proj."),
    (r"^(dp\.(?:post_)?flows\.\d+)\.conv_dds\.", r"\1.convs."),
    (r"\.translate$", ".m"),
    (r"\.log_scale$", ".logs"),
    (r"\.convs_dilated\.", ".convs_sep."),
    (r"\.convs_pointwise\.", ".convs_1x1."),
    # Speakers.
    (r"^embed_speaker\.", "emb_g."),
]
_LAYER_NORM = re.compile(r"(norm_layers_[12]\.\d+|norms_[12]\.\d+|dp\.norm_[12])\.(weight|bias)$")


def hf_to_official(state_dict: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  """Renames an HF `VitsModel` state dict to official VITS names (torch layouts).

  Linear attention projections `[out, in]` become 1x1 conv weights `[out, in, 1]`.
  """
  out = {}
  for key, value in state_dict.items():
    new = key
    for pattern, repl in _RULES:
      new = re.sub(pattern, repl, new)
    value = np.asarray(value)
    m = _LAYER_NORM.search(new)
    if m:
      new = new[:m.start(2)] + ("gamma" if m.group(2) == "weight" else "beta")
    if re.search(r"attn_layers\.\d+\.conv_[qkvo]\.weight$", new) and value.ndim == 2:
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
  # Synthesis defaults the HF model was published with.
  infer = dict(noise_scale=c.get("noise_scale", 0.667),
               noise_scale_w=c.get("noise_scale_duration", 0.8),
               length_scale=1.0 / c.get("speaking_rate", 1.0))
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


def load_hf(path: str) -> Tuple[ml_collections.ConfigDict, Dict]:
  """Loads an HF VITS folder (`config.json` + `model.safetensors`) without torch.

  Args:
    path: folder of a saved `VitsModel` (e.g. a local copy of facebook/mms-tts-eng).

  Returns:
    (config, params) for `build_synthesizer(config).apply({'params': params}, ...,
    method='infer')`.

  Raises:
    FileNotFoundError: `config.json` or `model.safetensors` is missing.
    ValueError: a file is malformed (e.g. a truncated `model.safetensors`).
  """
  config_path = os.path.join(path, "config.json")
  weights_path = os.path.join(path, "model.safetensors")
  for p in (config_path, weights_path):
    if not os.path.isfile(p):
      raise FileNotFoundError(f"not an HF VITS folder: {p} is missing")
  config = config_from_hf(source.read_json(Path(config_path)), where=config_path)
  tok_path = Path(path) / "tokenizer_config.json"
  if tok_path.is_file():
    config.data.add_blank = bool(source.read_json(tok_path).get("add_blank", True))
  official = hf_to_official(_read_safetensors(weights_path))
  params = torch_names.torch_to_flax(official, like=param_template(config))
  return config, params
