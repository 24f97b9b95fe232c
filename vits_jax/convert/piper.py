"""Import a Piper voice (`voice.onnx` + `voice.onnx.json`) as an official-name state dict.

Piper voices are VITS generators exported with `torch.onnx.export` of `SynthesizerTrn.infer`
(rhasspy/piper, `piper_train/export_onnx.py`). The graph keeps most parameters as initializers
under their PyTorch names, but the exporter rewrites a few of them:

- Weight-normed convolutions (the flow's WN `in_layers` / `res_skip_layers` / `cond_layer`)
  are constant-folded to `w = g * v / ||v||` and stored as anonymous `onnx::Conv_*`
  initializers. We find each one through the Conv node that consumes it, whose node name
  (`/flow/flows.0/enc/in_layers.0/Conv`) is the module path.
- The decoder had its weight norm removed before export, so `dec.ups.*` and
  `dec.resblocks.*` carry plain folded `weight`s.
- `ElementwiseAffine.logs` only appears as the folded `exp(-logs)` (`/dp/flows.0/Exp_output_0`).
- The text embedding can be renamed (`sid` in single-speaker exports, after the unused
  input name); we find it through the `Gather` node under `/enc_p/emb/`.
- Modules that `infer` never runs (the posterior encoder `enc_q`, the duration predictor's
  posterior flows `dp.post_*` and its unused first ConvFlow `dp.flows.1`) are absent.

Our model is weight-normed where the official one is, so every folded weight `w` becomes
`weight_v = w`, `weight_g = ||w||` (norm over all axes but the first: per output channel of a
Conv1d, per input channel of a ConvTranspose1d, exactly torch's `weight_norm(dim=0)`), which
reproduces `w` exactly.

Arrays are returned channels-first as in PyTorch; `vits_jax.convert.torch_names` turns them
into flax params.
"""

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from vits_jax.models import layers

PathLike = Union[str, Path]

# Official module paths that are weight-normed (torch weight_norm, dim=0).
_WEIGHT_NORMED = (
    re.compile(r"^(flow\.flows\.\d+|enc_q)\.enc\.(in_layers|res_skip_layers)\.\d+$"),
    re.compile(r"^(flow\.flows\.\d+|enc_q)\.enc\.cond_layer$"),
    re.compile(r"^dec\.ups\.\d+$"),
    re.compile(r"^dec\.resblocks\.\d+\.convs[12]?\.\d+$"),
)
_OFFICIAL_NAME = re.compile(r"^(enc_p|enc_q|dp|flow|dec|emb_g)(\.[A-Za-z0-9_]+)+$")
_EXP_CONST = re.compile(r"^/(?P<path>.+)/Exp(_\d+)?_output_0$")


@dataclasses.dataclass
class PiperVoice:
  """A Piper voice read from disk.

  Attributes:
    state_dict: official VITS parameter names -> float32 arrays, channels-first (PyTorch
      layout), weight-normed layers as `weight_g` / `weight_v`.
    model: official `hps.model` keys plus `n_vocab`, `n_speakers`.
    sample_rate: output sampling rate in Hz.
    hop_length: audio samples per spectrogram frame (product of the upsample rates).
    voice_config: the parsed `.onnx.json` (phoneme map, espeak voice, speaker map, ...).
    onnx_path: the graph it was read from.
  """
  state_dict: Dict[str, np.ndarray]
  model: Dict[str, Any]
  sample_rate: int
  hop_length: int
  voice_config: Dict[str, Any]
  onnx_path: Path


def load_piper(onnx_path: PathLike, config_path: Optional[PathLike] = None) -> PiperVoice:
  """Reads a Piper voice: parameters, hyperparameters and its JSON config.

  Args:
    onnx_path: the voice's `.onnx` file.
    config_path: its JSON config; default `<onnx_path>.json`.

  Returns:
    A `PiperVoice`.

  Raises:
    FileNotFoundError: a file is missing.
    ValueError: the graph is not a Piper VITS export we can map (the message names the
      missing or unexpected parts).
  """
  import onnx  # Deferred: only Piper imports need it.

  onnx_path = Path(onnx_path)
  config_path = Path(config_path) if config_path else Path(str(onnx_path) + ".json")
  if not onnx_path.is_file():
    raise FileNotFoundError(f"Piper voice not found: {onnx_path}")
  if not config_path.is_file():
    raise FileNotFoundError(f"Piper voice config not found: {config_path} "
                            "(a Piper voice is a .onnx file plus its .onnx.json)")
  from vits_jax.convert import source
  voice_config = source.read_json(config_path)
  source.piper_data(voice_config, str(config_path))   # the audio section, before any use
  if Path(onnx_path).stat().st_size == 0:
    raise ValueError(f"{onnx_path} is empty (an interrupted download or copy?)")
  try:
    graph = onnx.load(str(onnx_path)).graph
  except Exception as e:  # onnx raises several protobuf/decode errors
    raise ValueError(f"{onnx_path}: not a readable ONNX model ({e})") from None
  state_dict, attrs = _graph_state_dict(graph)
  model = _hyperparameters(state_dict, attrs, voice_config, onnx_path)
  _check_complete(state_dict, model, onnx_path)
  sample_rate = source.piper_data(voice_config, str(config_path))["sampling_rate"]
  hop = int(np.prod(model["upsample_rates"]))
  return PiperVoice(state_dict, model, sample_rate, hop, voice_config, onnx_path)


def _module_path(node_name: str) -> str:
  """`/flow/flows.0/enc/in_layers.0/Conv` -> `flow.flows.0.enc.in_layers.0`."""
  parts = [p for p in node_name.split("/") if p]
  return ".".join(parts[:-1])


def _graph_state_dict(graph) -> Tuple[Dict[str, np.ndarray], Dict[str, Dict[str, Any]]]:
  """Maps initializers to official names; also returns conv attributes per module path."""
  from onnx import helper, numpy_helper
  from vits_jax.convert import check_parameter_count

  inits = {t.name: t for t in graph.initializer}
  producers = {out: node for node in graph.node for out in node.output}
  consumers: Dict[str, List[Any]] = {}
  for node in graph.node:
    for name in node.input:
      consumers.setdefault(name, []).append(node)

  def constant(name: str) -> Optional[str]:
    """The initializer behind `name`, following Identity nodes (the exporter dedups equal
    constants into one initializer plus Identity copies)."""
    while name not in inits:
      node = producers.get(name)
      if node is None or node.op_type != "Identity":
        return None
      name = node.input[0]
    return name

  raw: Dict[str, np.ndarray] = {}
  attrs: Dict[str, Dict[str, Any]] = {}
  arrays: Dict[str, np.ndarray] = {}
  check_parameter_count(sum(int(np.prod(t.dims, dtype=np.float64)) for t in graph.initializer),
                        "the Piper graph")
  named = 0

  def put(name: str, init_name: str):
    if init_name not in arrays:   # (one array per initializer, however many read it)
      arrays[init_name] = numpy_helper.to_array(inits[init_name]).astype(np.float32)
    value = arrays[init_name]
    nonlocal named   # (what the names will hold once converted, copies included)
    named += value.size
    check_parameter_count(named, "the Piper graph")
    if name in raw and not np.array_equal(raw[name], value):
      raise ValueError(f"two different initializers map to {name}")
    raw[name] = value

  def put_logs(path: str, value: np.ndarray, source: str):
    if path in raw:
      return
    if np.any(~np.isfinite(value)):
      raise ValueError(f"unsupported Piper graph: cannot recover {path} from {source}")
    raw[path] = value.astype(np.float32)

  for node in graph.node:
    if node.op_type in ("Conv", "ConvTranspose"):
      path = _module_path(node.name)
      attrs[path] = {a.name: helper.get_attribute_value(a) for a in node.attribute}
      attrs[path]["op"] = node.op_type
      for slot, suffix in ((1, "weight"), (2, "bias")):
        if len(node.input) <= slot or not node.input[slot]:
          continue
        src = constant(node.input[slot])
        if src is None:
          raise ValueError(f"unsupported Piper graph: the {suffix} of {node.name} is computed "
                           "in the graph, not stored as a constant")
        name = node.input[slot] if _OFFICIAL_NAME.match(node.input[slot]) else f"{path}.{suffix}"
        put(name, src)
    elif node.op_type == "Gather" and constant(node.input[0]) is not None:
      src = constant(node.input[0])
      if len(inits[src].dims) == 2:  # an nn.Embedding table
        put(f"{_module_path(node.name)}.weight", src)
    elif node.op_type == "Exp" and constant(node.input[0]) is not None:
      src = constant(node.input[0])
      if not _OFFICIAL_NAME.match(src):
        # ElementwiseAffine in reverse computes (x - m) * exp(-logs); the exporter folded
        # the Neg into this constant.
        value = -numpy_helper.to_array(inits[src]).astype(np.float64)
        put_logs(f"{_module_path(node.name)}.logs", value, src)

  for name, tensor in inits.items():
    if _OFFICIAL_NAME.match(name) and name not in raw:
      put(name, name)
      continue
    m = _EXP_CONST.match(name)
    if m and name in consumers:
      # Here Neg and Exp were both folded: the constant is exp(-logs).
      value = numpy_helper.to_array(tensor).astype(np.float64)
      if consumers[name][0].op_type != "Mul" or np.any(value <= 0):
        raise ValueError(f"unsupported Piper graph: cannot recover logs from {name}")
      put_logs(m.group("path").replace("/", ".") + ".logs", -np.log(value), name)

  state_dict: Dict[str, np.ndarray] = {}
  for name, value in raw.items():
    module, _, leaf = name.rpartition(".")
    if leaf == "weight" and any(p.match(module) for p in _WEIGHT_NORMED):
      state_dict[f"{module}.weight_v"] = value
      state_dict[f"{module}.weight_g"] = layers.weight_norm_scale(
          value.astype(np.float64), 0).astype(np.float32)
    else:
      state_dict[name] = value
  return state_dict, attrs


def _count(sd: Dict[str, np.ndarray], pattern: str) -> int:
  """Number of consecutive indices i with `pattern.format(i)` in sd."""
  n = 0
  while pattern.format(n) in sd:
    n += 1
  return n


def _require(sd, names, where):
  missing = [n for n in names if n not in sd]
  if missing:
    raise ValueError(f"{where}: unsupported Piper graph, missing " + ", ".join(missing))


def _weight(sd, module):
  return sd[f"{module}.weight"] if f"{module}.weight" in sd else sd[f"{module}.weight_v"]


def _hyperparameters(sd, attrs, voice_config, where) -> Dict[str, Any]:
  """Reads the official `hps.model` values off the parameter shapes and conv attributes."""
  _require(sd, ["enc_p.emb.weight", "enc_p.proj.weight",
                "enc_p.encoder.attn_layers.0.emb_rel_k",
                "enc_p.encoder.ffn_layers.0.conv_1.weight", "dec.conv_pre.weight",
                "dec.ups.0.weight_v", "dec.resblocks.0.convs1.0.weight_v"
                if "dec.resblocks.0.convs1.0.weight_v" in sd else
                "dec.resblocks.0.convs.0.weight_v", "flow.flows.0.pre.weight"], where)
  n_vocab, hidden = sd["enc_p.emb.weight"].shape
  inter = sd["enc_p.proj.weight"].shape[0] // 2
  rel = sd["enc_p.encoder.attn_layers.0.emb_rel_k"]
  if rel.shape[1] != 9:
    raise ValueError(f"{where}: unsupported attention window {(rel.shape[1] - 1) // 2} "
                     "(VITS uses 4)")
  ffn = sd["enc_p.encoder.ffn_layers.0.conv_1.weight"]

  n_ups = _count(sd, "dec.ups.{}.weight_v")
  upsample_rates, upsample_kernels = [], []
  for i in range(n_ups):
    a = attrs.get(f"dec.ups.{i}")
    if a is None or a["op"] != "ConvTranspose":
      raise ValueError(f"{where}: unsupported Piper graph, no ConvTranspose for dec.ups.{i}")
    upsample_rates.append(int(a["strides"][0]))
    upsample_kernels.append(int(a["kernel_shape"][0]))

  resblock = "1" if "dec.resblocks.0.convs1.0.weight_v" in sd else "2"
  conv_name = "convs1" if resblock == "1" else "convs"
  n_res = _count(sd, "dec.resblocks.{}." + conv_name + ".0.weight_v")
  if n_res % n_ups:
    raise ValueError(f"{where}: {n_res} resblocks do not divide among {n_ups} upsamples")
  kernels, dilations = [], []
  for j in range(n_res // n_ups):
    n_convs = _count(sd, f"dec.resblocks.{j}.{conv_name}." + "{}.weight_v")
    kernels.append(int(sd[f"dec.resblocks.{j}.{conv_name}.0.weight_v"].shape[-1]))
    dilations.append([int(attrs[f"dec.resblocks.{j}.{conv_name}.{k}"]["dilations"][0])
                      for k in range(n_convs)])

  # Coupling layers sit at even indices (odd ones are parameter-free Flips).
  n_flows = len([k for k in sd if re.match(r"^flow\.flows\.\d+\.pre\.weight$", k)])
  wn_layers = _count(sd, "flow.flows.0.enc.in_layers.{}.weight_v")
  wn_kernel = _weight(sd, "flow.flows.0.enc.in_layers.0").shape[-1]
  if (n_flows, wn_layers, wn_kernel) != (4, 4, 5):
    raise ValueError(f"{where}: unsupported flow ({n_flows} coupling layers, {wn_layers} WN "
                     f"layers, kernel {wn_kernel}); VITS uses 4, 4, 5")

  use_sdp = "dp.flows.0.m" in sd
  if not use_sdp and "dp.conv_1.weight" not in sd:
    raise ValueError(f"{where}: unsupported Piper graph, no duration predictor "
                     "(missing dp.flows.0.m and dp.conv_1.weight)")
  if "emb_g.weight" in sd:
    n_speakers, gin = sd["emb_g.weight"].shape
  else:
    n_speakers, gin = 1, 0
  json_speakers = voice_config.get("num_speakers", n_speakers)
  if isinstance(json_speakers, bool) or not isinstance(json_speakers, int):
    raise ValueError(f"{where}.json: num_speakers must be an integer, got {json_speakers!r}")
  if json_speakers > 1 and "emb_g.weight" not in sd:
    raise ValueError(f"{where}: unsupported Piper graph, missing emb_g.weight (the JSON "
                     f"config says {json_speakers} speakers)")
  if json_speakers != n_speakers:
    raise ValueError(f"{where}: the JSON config says {json_speakers} speakers but the graph "
                     f"has {n_speakers}")
  return dict(
      n_vocab=int(n_vocab), inter_channels=int(inter), hidden_channels=int(hidden),
      filter_channels=int(ffn.shape[0]), n_heads=int(hidden // rel.shape[-1]),
      n_layers=_count(sd, "enc_p.encoder.attn_layers.{}.conv_q.weight"),
      kernel_size=int(ffn.shape[-1]), p_dropout=0.1, resblock=resblock,
      resblock_kernel_sizes=kernels, resblock_dilation_sizes=dilations,
      upsample_rates=upsample_rates,
      upsample_initial_channel=int(sd["dec.conv_pre.weight"].shape[0]),
      upsample_kernel_sizes=upsample_kernels, n_layers_q=3, use_spectral_norm=False,
      gin_channels=int(gin), use_sdp=bool(use_sdp), n_speakers=int(n_speakers))


def inference_param_names(model: Dict[str, Any]) -> List[str]:
  """Official names of every parameter `SynthesizerTrn.infer` reads, for these hparams: the
  model's parameter tree less the modules inference never runs."""
  from flax import traverse_util
  from vits_jax.convert import source, torch_names
  from vits_jax.models.synthesizer import build_synthesizer, param_shapes
  shapes = param_shapes(build_synthesizer(source.config_from_hparams(model)))
  return [torch_names.official_name(k) for k in traverse_util.flatten_dict(shapes)
          if not "/".join(k).startswith(source.INFERENCE_ONLY_ABSENT)]


def _check_complete(sd, model, where):
  missing = [n for n in inference_param_names(model) if n not in sd]
  if missing:
    shown = ", ".join(missing[:8]) + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else "")
    raise ValueError(f"{where}: unsupported Piper graph, missing parameters: {shown}")
