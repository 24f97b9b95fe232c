"""Export a voice as a Piper voice: `NAME.onnx` (the VITS inference graph) + `NAME.onnx.json`.

    from vits_jax.voice import load_voice
    from vits_jax.export.piper import export_piper
    onnx_path, json_path = export_piper(load_voice("my_workdir"), "out/en_US-me-medium.onnx")

The graph is written node by node with `onnx.helper` from the numpy weights (no torch), and
follows the contract of Piper's own exporter (`piper.train.export_onnx`), so the Piper
runtime (OHF-Voice/piper1-gpl, `piper.PiperVoice.load`) runs it unchanged:

- inputs `input` int64 [batch, phonemes], `input_lengths` int64 [batch], `scales` float32
  [3] = (noise_scale, length_scale, noise_w), and `sid` int64 [batch] for multi-speaker
  voices only; output `output` float32 [batch, 1, 1, time];
- opset 15, one self-contained file, noise drawn inside the graph (`RandomNormalLike`);
- exactly one `Ceil` node, whose output is the per-id durations `w_ceil` [batch, 1,
  phonemes] in frames: Piper's alignment patch (`piper.patch_voice_with_alignment`) finds
  it by that op type and multiplies it by `hop_length`.

The computation is the official `SynthesizerTrn.infer` (jaywalnut310/vits): text encoder
with windowed relative-position attention, stochastic (reverse flow with the inverse
rational-quadratic spline) or deterministic duration predictor, ceil'd durations, hard
alignment, prior sample, reverse residual-coupling flow and the HiFi-GAN decoder. Padded
items of a batch are masked as in the official code, and the decoder is also re-masked
after every stage (as `vits_jax.models.decoder` does), so each item of a batch decodes
to exactly its waveform alone, zeros past its own length.

Node names are the official module paths (`/dp/flows.3/convs/convs_sep.0/Conv`) and
parameters keep their official names, so `vits_jax.convert.piper.load_piper` reads an
exported voice back.
"""

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

OPSET = 15
IR_VERSION = 8            # the IR of opset 15: loads in old onnxruntime builds too
PIPER_VERSION = "1.5.0"   # what piper1-gpl's trainer writes into new voices

# Sizes the official code hard-codes (and so do vits_jax.models): the ones not readable
# off the weights.
WINDOW_SIZE = 4           # attentions.Encoder(window_size=4); checked against emb_rel_k
LRELU_SLOPE = 0.1         # modules.LRELU_SLOPE; the last decoder leaky_relu uses 0.01
LN_EPS = 1e-5             # modules.LayerNorm
ATTN_MASK_VALUE = -1e4    # masked_fill value of padded keys
SPLINE_TAIL_BOUND = 5.0   # ConvFlow(tail_bound=5.0), linear tails
MIN_BIN_WIDTH = MIN_BIN_HEIGHT = MIN_DERIVATIVE = 1e-3
SEARCH_EPS = 1e-6         # transforms.searchsorted nudges the last knot up by this


# =========================================================================== graph builder
def _scope_of(module: str) -> str:
  """'dp.flows.3.convs.convs_sep.0' -> 'dp/flows.3/convs/convs_sep.0' (torch's naming)."""
  parts: List[str] = []
  for p in module.split("."):
    if p.isdigit() and parts:
      parts[-1] = f"{parts[-1]}.{p}"
    elif p:
      parts.append(p)
  return "/".join(parts)


class _Graph:
  """Collects nodes and initializers; names nodes `/scope/Op[_n]` like torch.onnx."""

  def __init__(self, state_dict: Mapping[str, Any]):
    self.sd = state_dict
    self.nodes: List[Any] = []
    self.initializers: Dict[str, Any] = {}
    self._names: Dict[str, int] = {}
    self._consts: Dict[Tuple, str] = {}

  # ------------------------------------------------------------------ values
  def has(self, name: str) -> bool:
    return name in self.sd

  def array(self, name: str) -> np.ndarray:
    if name not in self.sd:
      raise ValueError(f"state_dict lacks {name}")
    return np.asarray(self.sd[name], np.float32)

  def param(self, name: str, value: Optional[np.ndarray] = None) -> str:
    """An initializer under its official name (from the state dict unless `value`)."""
    if name not in self.initializers:
      from onnx import numpy_helper
      value = self.array(name) if value is None else np.asarray(value, np.float32)
      self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(value), name)
    return name

  def weight(self, module: str) -> str:
    """`module.weight`, weight norm folded (w = g * v / ||v||, torch's dim=0) if needed."""
    if self.has(f"{module}.weight"):
      return self.param(f"{module}.weight")
    v = self.array(f"{module}.weight_v").astype(np.float64)
    g = self.array(f"{module}.weight_g").astype(np.float64)
    norm = np.sqrt(np.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))
    return self.param(f"{module}.weight", (v * (g.reshape(norm.shape) / norm)))

  def const(self, value, dtype=np.float32) -> str:
    """An anonymous constant (deduplicated)."""
    from onnx import numpy_helper
    arr = np.ascontiguousarray(np.asarray(value, dtype))
    key = (arr.dtype.str, arr.shape, arr.tobytes())
    if key not in self._consts:
      name = f"const_{len(self._consts)}"
      self._consts[key] = name
      self.initializers[name] = numpy_helper.from_array(arr, name)
    return self._consts[key]

  def i64(self, *values) -> str:
    return self.const(list(values), np.int64)

  def f32(self, value: float) -> str:
    return self.const(value, np.float32)

  # ------------------------------------------------------------------ nodes
  def op(self, op_type: str, inputs: Sequence[Optional[str]], scope: str = "",
         outputs: int = 1, name: Optional[str] = None, **attrs):
    """Adds one node; returns its output name (or the list of them)."""
    from onnx import helper
    base = f"/{scope}/{op_type}" if scope else f"/{op_type}"
    if name is None:
      n = self._names.get(base, 0)
      self._names[base] = n + 1
      name = base if n == 0 else f"{base}_{n}"
    outs = [f"{name}_output_{i}" for i in range(outputs)]
    self.nodes.append(helper.make_node(op_type, [i or "" for i in inputs], outs, name=name,
                                       **attrs))
    return outs[0] if outputs == 1 else outs

  def count(self, op_type: str) -> int:
    return sum(1 for n in self.nodes if n.op_type == op_type)

  # ------------------------------------------------------------------ common ops
  def add(self, a, b, s=""): return self.op("Add", [a, b], s)
  def sub(self, a, b, s=""): return self.op("Sub", [a, b], s)
  def mul(self, a, b, s=""): return self.op("Mul", [a, b], s)
  def div(self, a, b, s=""): return self.op("Div", [a, b], s)

  def dim(self, x: str, axis: int, s: str) -> str:
    """x.shape[axis] as a 1-D int64 [1] tensor."""
    return self.op("Shape", [x], s, start=axis, end=axis + 1)

  def scalar(self, x: str, s: str) -> str:
    """A [1] tensor as a 0-D scalar."""
    return self.op("Squeeze", [x, self.i64(0)], s)

  def slice(self, x: str, start, end, axis: int, s: str) -> str:
    """x[start:end] along `axis` (ints or [1] int64 tensor names)."""
    st = self.i64(start) if isinstance(start, int) else start
    en = self.i64(end) if isinstance(end, int) else end
    return self.op("Slice", [x, st, en, self.i64(axis)], s)

  def unsqueeze(self, x: str, axes: Sequence[int], s: str) -> str:
    return self.op("Unsqueeze", [x, self.i64(*axes)], s)

  def squeeze(self, x: str, axes: Sequence[int], s: str) -> str:
    return self.op("Squeeze", [x, self.i64(*axes)], s)

  def conv(self, x: str, module: str, dilation: int = 1,
           padding: Union[str, Tuple[int, int]] = (0, 0), groups: int = 1) -> str:
    """torch `Conv1d` of `module` (`.weight` [Cout, Cin/groups, K], optional `.bias`);
    padding 'same' is (K - 1) * dilation // 2 on both sides."""
    w = self.weight(module)
    k = int(self.initializers[w].dims[-1])
    if padding == "same":  # odd kernels, as every padded conv of VITS
      padding = ((k - 1) * dilation // 2,) * 2
    b = self.param(f"{module}.bias") if self.has(f"{module}.bias") else None
    return self.op("Conv", [x, w] + ([b] if b else []), _scope_of(module),
                   dilations=[int(dilation)], group=int(groups), kernel_shape=[k],
                   pads=[int(padding[0]), int(padding[1])], strides=[1])

  def conv_transpose(self, x: str, module: str, stride: int, padding: int) -> str:
    """torch `ConvTranspose1d` (`.weight` [Cin, Cout, K])."""
    w = self.weight(module)
    k = int(self.initializers[w].dims[-1])
    b = self.param(f"{module}.bias") if self.has(f"{module}.bias") else None
    return self.op("ConvTranspose", [x, w] + ([b] if b else []), _scope_of(module),
                   dilations=[1], group=1, kernel_shape=[k], pads=[padding, padding],
                   strides=[int(stride)])

  def channel_param(self, name: str, s: str) -> str:
    """A [C] parameter as [C, 1] (broadcast over time of [B, C, T])."""
    return self.unsqueeze(self.param(name), [1], s)

  def layer_norm(self, x: str, module: str) -> str:
    """Official `modules.LayerNorm`: over the channel axis of [B, C, T] (opset 15 has no
    LayerNormalization)."""
    s = _scope_of(module)
    mean = self.op("ReduceMean", [x], s, axes=[1], keepdims=1)
    xc = self.sub(x, mean, s)
    var = self.op("ReduceMean", [self.mul(xc, xc, s)], s, axes=[1], keepdims=1)
    y = self.div(xc, self.op("Sqrt", [self.add(var, self.f32(LN_EPS), s)], s), s)
    y = self.mul(y, self.channel_param(f"{module}.gamma", s), s)
    return self.add(y, self.channel_param(f"{module}.beta", s), s)

  def gelu(self, x: str, s: str) -> str:
    """Exact GELU: 0.5 x (1 + erf(x / sqrt 2))."""
    e = self.op("Erf", [self.div(x, self.f32(math.sqrt(2.0)), s)], s)
    return self.mul(self.mul(x, self.add(e, self.f32(1.0), s), s), self.f32(0.5), s)

  def leaky_relu(self, x: str, alpha: float, s: str) -> str:
    return self.op("LeakyRelu", [x], s, alpha=float(alpha))

  def length_mask(self, lengths: str, length: str, s: str) -> str:
    """[B] int64 lengths, [1] int64 length T -> [B, 1, T] float mask (t < length)."""
    t = self.op("Range", [self.const(0, np.int64), self.scalar(length, s),
                         self.const(1, np.int64)], s)
    lt = self.op("Less", [self.unsqueeze(t, [0], s), self.unsqueeze(lengths, [1], s)], s)
    return self.unsqueeze(self.op("Cast", [lt], s, to=_FLOAT), [1], s)


_FLOAT, _INT64 = 1, 7  # onnx.TensorProto element types


# =========================================================================== text encoder
def _attention(g: _Graph, module: str, x: str, attn_mask: str, n_heads: int,
               channels: int) -> str:
  """Official `attentions.MultiHeadAttention` (self-attention, shared relative position
  embeddings within +-window_size). x: [B, C, T] -> [B, C, T]."""
  s = _scope_of(module)
  d = channels // n_heads
  t = g.dim(x, 2, s)

  def heads(y):  # [B, C, T] -> [B, H, T, D]
    y = g.op("Reshape", [y, g.i64(0, n_heads, d, -1)], s)
    return g.op("Transpose", [y], s, perm=[0, 1, 3, 2])

  q = g.div(heads(g.conv(x, f"{module}.conv_q")), g.f32(math.sqrt(d)), s)
  k = heads(g.conv(x, f"{module}.conv_k"))
  v = heads(g.conv(x, f"{module}.conv_v"))
  scores = g.op("MatMul", [q, g.op("Transpose", [k], s, perm=[0, 1, 3, 2])], s)

  window = (int(g.array(f"{module}.emb_rel_k").shape[1]) - 1) // 2
  rel_k = _relative_embeddings(g, f"{module}.emb_rel_k", window, t, s)   # [1, 2T-1, D]
  rel_logits = g.op("MatMul", [q, g.op("Transpose", [rel_k], s, perm=[0, 2, 1])], s)
  scores = g.add(scores, _relative_to_absolute(g, rel_logits, t, s), s)

  masked = g.op("Equal", [attn_mask, g.f32(0.0)], s)
  scores = g.op("Where", [masked, g.f32(ATTN_MASK_VALUE), scores], s)
  p_attn = g.op("Softmax", [scores], s, axis=-1)
  out = g.op("MatMul", [p_attn, v], s)
  rel_v = _relative_embeddings(g, f"{module}.emb_rel_v", window, t, s)
  out = g.add(out, g.op("MatMul", [_absolute_to_relative(g, p_attn, t, s), rel_v], s), s)
  out = g.op("Transpose", [out], s, perm=[0, 1, 3, 2])                   # [B, H, D, T]
  out = g.op("Reshape", [out, g.i64(0, channels, -1)], s)
  return g.conv(out, f"{module}.conv_o")


def _relative_embeddings(g: _Graph, name: str, window: int, t: str, s: str) -> str:
  """Official `_get_relative_embeddings`: [1, 2W+1, D] -> [1, 2T-1, D] (pad, then slice)."""
  w1 = g.i64(window + 1)
  zero = g.i64(0)
  pad = g.op("Max", [g.sub(t, w1, s), zero], s)
  start = g.op("Max", [g.sub(w1, t, s), zero], s)
  end = g.add(start, g.sub(g.mul(t, g.i64(2), s), g.i64(1), s), s)
  pads = g.op("Concat", [zero, pad, zero, zero, pad, zero], s, axis=0)
  padded = g.op("Pad", [g.param(name), pads], s, mode="constant")
  return g.slice(padded, start, end, 1, s)


def _relative_to_absolute(g: _Graph, x: str, t: str, s: str) -> str:
  """Official `_relative_position_to_absolute_position`: [B, H, T, 2T-1] -> [B, H, T, T]."""
  x = g.op("Pad", [x, g.i64(0, 0, 0, 0, 0, 0, 0, 1)], s, mode="constant")
  x = g.op("Reshape", [x, g.i64(0, 0, -1)], s)                           # [B, H, 2T*T]
  tm1 = g.sub(t, g.i64(1), s)
  x = g.op("Pad", [x, g.op("Concat", [g.i64(0, 0, 0, 0, 0), tm1], s, axis=0)], s,
           mode="constant")
  shape = g.op("Concat", [g.i64(0, 0), g.add(t, g.i64(1), s),
                          g.sub(g.mul(t, g.i64(2), s), g.i64(1), s)], s, axis=0)
  x = g.op("Reshape", [x, shape], s)                                     # [B, H, T+1, 2T-1]
  x = g.slice(x, 0, t, 2, s)
  return g.op("Slice", [x, tm1, g.i64(np.iinfo(np.int64).max), g.i64(3)], s)


def _absolute_to_relative(g: _Graph, x: str, t: str, s: str) -> str:
  """Official `_absolute_position_to_relative_position`: [B, H, T, T] -> [B, H, T, 2T-1]."""
  tm1 = g.sub(t, g.i64(1), s)
  x = g.op("Pad", [x, g.op("Concat", [g.i64(0, 0, 0, 0, 0, 0, 0), tm1], s, axis=0)], s,
           mode="constant")
  x = g.op("Reshape", [x, g.i64(0, 0, -1)], s)                           # [B, H, T(2T-1)]
  x = g.op("Pad", [x, g.op("Concat", [g.i64(0, 0), t, g.i64(0, 0, 0)], s, axis=0)], s,
           mode="constant")
  shape = g.op("Concat", [g.i64(0, 0), t, g.mul(t, g.i64(2), s)], s, axis=0)
  x = g.op("Reshape", [x, shape], s)                                     # [B, H, T, 2T]
  return g.slice(x, 1, np.iinfo(np.int64).max, 3, s)


def _ffn(g: _Graph, module: str, x: str, x_mask: str, kernel_size: int) -> str:
  """Official `attentions.FFN` (relu, 'same' padding)."""
  s = _scope_of(module)
  pad = ((kernel_size - 1) // 2, kernel_size // 2)
  x = g.conv(g.mul(x, x_mask, s), f"{module}.conv_1", padding=pad)
  x = g.op("Relu", [x], s)
  x = g.conv(g.mul(x, x_mask, s), f"{module}.conv_2", padding=pad)
  return g.mul(x, x_mask, s)


def _text_encoder(g: _Graph, hp: Mapping[str, Any], ids: str, lengths: str):
  """Official `TextEncoder`: ids [B, T] -> (x [B, H, T], m_p, logs_p [B, C, T], x_mask
  [B, 1, T])."""
  s = "enc_p"
  hidden = int(hp["hidden_channels"])
  x = g.op("Gather", [g.param("enc_p.emb.weight"), ids], "enc_p/emb", axis=0)
  x = g.mul(x, g.f32(math.sqrt(hidden)), s)
  x = g.op("Transpose", [x], s, perm=[0, 2, 1])
  x_mask = g.length_mask(lengths, g.dim(ids, 1, s), s)

  e = "enc_p.encoder"
  es = _scope_of(e)
  attn_mask = g.mul(g.unsqueeze(x_mask, [2], es), g.unsqueeze(x_mask, [3], es), es)
  x = g.mul(x, x_mask, es)
  for i in range(int(hp["n_layers"])):
    y = _attention(g, f"{e}.attn_layers.{i}", x, attn_mask, int(hp["n_heads"]), hidden)
    x = g.layer_norm(g.add(x, y, es), f"{e}.norm_layers_1.{i}")
    y = _ffn(g, f"{e}.ffn_layers.{i}", x, x_mask, int(hp["kernel_size"]))
    x = g.layer_norm(g.add(x, y, es), f"{e}.norm_layers_2.{i}")
  x = g.mul(x, x_mask, es)

  stats = g.mul(g.conv(x, "enc_p.proj"), x_mask, s)
  inter = int(hp["inter_channels"])
  m_p, logs_p = g.op("Split", [stats, g.i64(inter, inter)], s, outputs=2, axis=1)
  return x, m_p, logs_p, x_mask


# =========================================================================== duration
def _dds_conv(g: _Graph, module: str, x: str, x_mask: str, cond: Optional[str]) -> str:
  """Official `modules.DDSConv` (dilated depth-separable convs, layer i dilation k**i)."""
  s = _scope_of(module)
  if cond is not None:
    x = g.add(x, cond, s)
  channels = int(g.array(f"{module}.convs_sep.0.weight").shape[0])
  n_layers = _count(g.sd, module + ".convs_sep.{}.weight")
  for i in range(n_layers):
    k = int(g.array(f"{module}.convs_sep.{i}.weight").shape[-1])
    dilation = k ** i
    pad = (k * dilation - dilation) // 2
    y = g.conv(g.mul(x, x_mask, s), f"{module}.convs_sep.{i}", dilation=dilation,
               padding=(pad, pad), groups=channels)
    y = g.gelu(g.layer_norm(y, f"{module}.norms_1.{i}"), s)
    y = g.conv(y, f"{module}.convs_1x1.{i}")
    y = g.gelu(g.layer_norm(y, f"{module}.norms_2.{i}"), s)
    x = g.add(x, y, s)
  return g.mul(x, x_mask, s)


def _spline_inverse(g: _Graph, s: str, x: str, widths: str, heights: str, derivs: str,
                    num_bins: int) -> str:
  """Inverse of the rational-quadratic spline with linear tails (official
  `unconstrained_rational_quadratic_spline(inverse=True, tails='linear')`), branch free.

  x: [B, 1, T]; widths, heights: [B, 1, T, K] logits; derivs: [B, 1, T, K-1].
  """
  tb = SPLINE_TAIL_BOUND
  k = num_bins
  # Boundary derivatives are exactly 1: softplus(constant) + min_derivative = 1.
  constant = float(np.log(np.exp(1 - MIN_DERIVATIVE) - 1))
  derivs = g.op("Pad", [derivs, g.i64(0, 0, 0, 1, 0, 0, 0, 1), g.f32(constant)], s,
                mode="constant")
  derivatives = g.add(g.op("Softplus", [derivs], s), g.f32(MIN_DERIVATIVE), s)
  last = np.zeros(k + 1, np.float32)
  last[-1] = 1.0

  def knots(logits, min_size):
    """Knot positions [.., K+1] (exactly -tb and tb at the ends) and bin sizes [.., K]."""
    sizes = g.op("Softmax", [logits], s, axis=-1)
    sizes = g.add(g.mul(sizes, g.f32(1 - min_size * k), s), g.f32(min_size), s)
    cum = g.op("CumSum", [sizes, g.const(-1, np.int64)], s)
    cum = g.add(g.mul(g.slice(cum, 0, k - 1, 3, s), g.f32(2 * tb), s), g.f32(-tb), s)
    cum = g.op("Pad", [cum, g.i64(0, 0, 0, 1, 0, 0, 0, 1), g.f32(-tb)], s, mode="constant")
    cum = g.add(cum, g.const(last * (2 * tb)), s)           # last knot: -tb + 2 tb = tb
    size = g.sub(g.slice(cum, 1, k + 1, 3, s), g.slice(cum, 0, k, 3, s), s)
    return cum, size

  cumwidths, bin_widths = knots(widths, MIN_BIN_WIDTH)
  cumheights, bin_heights = knots(heights, MIN_BIN_HEIGHT)
  delta = g.div(bin_heights, bin_widths, s)

  inside = g.op("And", [g.op("GreaterOrEqual", [x, g.f32(-tb)], s),
                        g.op("LessOrEqual", [x, g.f32(tb)], s)], s)
  xc = g.unsqueeze(g.op("Clip", [x, g.f32(-tb), g.f32(tb)], s), [3], s)   # [B, 1, T, 1]
  # searchsorted(cumheights) as a count of knots at or below the input.
  locations = g.add(cumheights, g.const(last * SEARCH_EPS), s)
  above = g.op("Cast", [g.op("GreaterOrEqual", [xc, locations], s)], s, to=_FLOAT)
  idx = g.sub(g.op("ReduceSum", [above, g.i64(-1)], s, keepdims=1), g.f32(1.0), s)
  idx = g.op("Cast", [g.op("Clip", [idx, g.f32(0.0), g.f32(k - 1)], s)], s, to=_INT64)

  def at(values):
    return g.op("GatherElements", [values, idx], s, axis=-1)

  in_cumwidths, in_widths = at(cumwidths), at(bin_widths)
  in_cumheights, in_heights, in_delta = at(cumheights), at(bin_heights), at(delta)
  in_d = at(derivatives)
  in_d1 = at(g.slice(derivatives, 1, k + 1, 3, s))

  rel = g.sub(xc, in_cumheights, s)
  slope = g.sub(g.add(in_d, in_d1, s), g.mul(in_delta, g.f32(2.0), s), s)
  a = g.add(g.mul(rel, slope, s), g.mul(in_heights, g.sub(in_delta, in_d, s), s), s)
  b = g.sub(g.mul(in_heights, in_d, s), g.mul(rel, slope, s), s)
  c = g.mul(g.op("Neg", [in_delta], s), rel, s)
  disc = g.sub(g.mul(b, b, s), g.mul(g.mul(a, c, s), g.f32(4.0), s), s)
  disc = g.op("Max", [disc, g.f32(0.0)], s)
  root = g.div(g.mul(c, g.f32(2.0), s),
               g.sub(g.op("Neg", [b], s), g.op("Sqrt", [disc], s), s), s)
  out = g.squeeze(g.add(g.mul(root, in_widths, s), in_cumwidths, s), [3], s)
  return g.op("Where", [inside, out, x], s)


def _conv_flow_reverse(g: _Graph, module: str, x: str, x_mask: str, cond: str) -> str:
  """Official `modules.ConvFlow` with reverse=True (inverse spline on the second half)."""
  s = _scope_of(module)
  filter_channels = int(g.array(f"{module}.pre.weight").shape[0])
  x0, x1 = g.op("Split", [x, g.i64(1, 1)], s, outputs=2, axis=1)
  h = g.conv(x0, f"{module}.pre")
  h = _dds_conv(g, f"{module}.convs", h, x_mask, cond)
  h = g.mul(g.conv(h, f"{module}.proj"), x_mask, s)
  n_params = int(g.array(f"{module}.proj.weight").shape[0])   # half * (3K - 1), half = 1
  k = (n_params + 1) // 3
  # [B, 3K-1, T] -> [B, 1, T, 3K-1]
  h = g.op("Transpose", [g.op("Reshape", [h, g.i64(0, 1, n_params, -1)], s)], s,
           perm=[0, 1, 3, 2])
  scale = g.f32(math.sqrt(filter_channels))
  widths = g.div(g.slice(h, 0, k, 3, s), scale, s)
  heights = g.div(g.slice(h, k, 2 * k, 3, s), scale, s)
  derivs = g.slice(h, 2 * k, n_params, 3, s)
  x1 = _spline_inverse(g, s, x1, widths, heights, derivs, k)
  return g.mul(g.op("Concat", [x0, x1], s, axis=1), x_mask, s)


def _flip(g: _Graph, x: str, s: str) -> str:
  """Official `modules.Flip`: reverse the channel order."""
  return g.op("Slice", [x, g.i64(-1), g.i64(np.iinfo(np.int64).min), g.i64(1), g.i64(-1)], s)


def _sdp_reverse(g: _Graph, x: str, x_mask: str, spk: Optional[str], noise_w: str) -> str:
  """Official `StochasticDurationPredictor(reverse=True)`: log-durations [B, 1, T] sampled
  by running the flow backwards from N(0, noise_w^2) noise."""
  s = "dp"
  h = g.conv(x, "dp.pre")
  if spk is not None:
    h = g.add(h, g.conv(spk, "dp.cond"), s)
  h = _dds_conv(g, "dp.convs", h, x_mask, None)
  h = g.mul(g.conv(h, "dp.proj"), x_mask, s)

  shape = g.op("Concat", [g.dim(x, 0, s), g.i64(2), g.dim(x, 2, s)], s, axis=0)
  zeros = g.op("ConstantOfShape", [shape], s)
  z = g.mul(g.op("RandomNormalLike", [zeros], s, dtype=_FLOAT), noise_w, s)
  n_flows = (max(int(m.group(1)) for m in
                 (re.match(r"^dp\.flows\.(\d+)\.", k) for k in g.sd) if m) + 1) // 2
  # flows = [ElementwiseAffine, (ConvFlow, Flip) * n]; reversed, without the first ConvFlow
  # ("a useless vflow": it only acts on the discarded channel).
  for i in range(2 * n_flows, 0, -1):
    if i % 2 == 0:
      z = _flip(g, z, _scope_of(f"dp.flows.{i}"))
    elif i > 1:
      z = _conv_flow_reverse(g, f"dp.flows.{i}", z, x_mask, h)
  fs = "dp/flows.0"
  m = g.param("dp.flows.0.m")
  inv_scale = g.op("Exp", [g.op("Neg", [g.param("dp.flows.0.logs")], fs)], fs)
  z = g.mul(g.mul(g.sub(z, m, fs), inv_scale, fs), x_mask, fs)
  return g.slice(z, 0, 1, 1, s)


def _dp(g: _Graph, x: str, x_mask: str, spk: Optional[str]) -> str:
  """Official deterministic `DurationPredictor`: log-durations [B, 1, T]."""
  s = "dp"
  if spk is not None:
    x = g.add(x, g.conv(spk, "dp.cond"), s)
  for i in (1, 2):
    k = int(g.array(f"dp.conv_{i}.weight").shape[-1])
    x = g.conv(g.mul(x, x_mask, s), f"dp.conv_{i}", padding=(k // 2, k // 2))
    x = g.layer_norm(g.op("Relu", [x], s), f"dp.norm_{i}")
  x = g.conv(g.mul(x, x_mask, s), "dp.proj")
  return g.mul(x, x_mask, s)


# =========================================================================== flow
def _wn(g: _Graph, module: str, x: str, x_mask: str, spk: Optional[str], hidden: int,
        dilation_rate: int, n_layers: int) -> str:
  """Official `modules.WN` (gated dilated convs; speaker conditioning via `cond_layer`)."""
  s = _scope_of(module)
  cond = None
  if spk is not None and (g.has(f"{module}.cond_layer.weight") or
                          g.has(f"{module}.cond_layer.weight_v")):
    cond = g.conv(spk, f"{module}.cond_layer")
  output = None
  for i in range(n_layers):
    dilation = dilation_rate ** i
    k = int(g.initializers[g.weight(f"{module}.in_layers.{i}")].dims[-1])
    pad = (k * dilation - dilation) // 2
    x_in = g.conv(x, f"{module}.in_layers.{i}", dilation=dilation, padding=(pad, pad))
    if cond is not None:
      x_in = g.add(x_in, g.slice(cond, 2 * hidden * i, 2 * hidden * (i + 1), 1, s), s)
    t_in, s_in = g.op("Split", [x_in, g.i64(hidden, hidden)], s, outputs=2, axis=1)
    acts = g.mul(g.op("Tanh", [t_in], s), g.op("Sigmoid", [s_in], s), s)
    res_skip = g.conv(acts, f"{module}.res_skip_layers.{i}")
    if i < n_layers - 1:
      res, skip = g.op("Split", [res_skip, g.i64(hidden, hidden)], s, outputs=2, axis=1)
      x = g.mul(g.add(x, res, s), x_mask, s)
    else:
      skip = res_skip
    output = skip if output is None else g.add(output, skip, s)
  return g.mul(output, x_mask, s)


def _coupling_reverse(g: _Graph, module: str, x: str, x_mask: str, spk: Optional[str],
                      hp: Mapping[str, Any]) -> str:
  """Official mean-only `ResidualCouplingLayer` with reverse=True."""
  s = _scope_of(module)
  half = int(hp["inter_channels"]) // 2
  x0, x1 = g.op("Split", [x, g.i64(half, half)], s, outputs=2, axis=1)
  h = g.mul(g.conv(x0, f"{module}.pre"), x_mask, s)
  h = _wn(g, f"{module}.enc", h, x_mask, spk, int(hp["hidden_channels"]),
          int(hp.get("flow_dilation_rate", 1)), int(hp.get("flow_n_layers", 4)))
  m = g.mul(g.conv(h, f"{module}.post"), x_mask, s)
  x1 = g.mul(g.sub(x1, m, s), x_mask, s)   # mean only: logs = 0
  return g.op("Concat", [x0, x1], s, axis=1)


def _flow_reverse(g: _Graph, x: str, x_mask: str, spk: Optional[str],
                  hp: Mapping[str, Any]) -> str:
  """Official `ResidualCouplingBlock(reverse=True)`: z_p -> z."""
  n_flows = int(hp.get("flow_n_flows", 4))
  for i in range(2 * n_flows - 1, -1, -1):
    if i % 2:
      x = _flip(g, x, _scope_of(f"flow.flows.{i}"))
    else:
      x = _coupling_reverse(g, f"flow.flows.{i}", x, x_mask, spk, hp)
  return x


# =========================================================================== decoder
def _resblock(g: _Graph, module: str, kind: str, x: str, mask: str, kernel: int,
              dilations: Sequence[int]) -> str:
  """Official `ResBlock1` (dilated + plain conv pairs) or `ResBlock2`, with x_mask.

  `x` comes in masked and the residual stream is re-masked after each add; as
  leaky_relu(0) = 0, every conv input is then zero past the length without the official
  mask after each activation: the same values with fewer multiplies."""
  s = _scope_of(module)
  for j, d in enumerate(dilations):
    p = (kernel * d - d) // 2
    xt = g.leaky_relu(x, LRELU_SLOPE, s)
    if kind == "1":
      xt = g.conv(xt, f"{module}.convs1.{j}", dilation=d, padding=(p, p))
      xt = g.mul(g.leaky_relu(xt, LRELU_SLOPE, s), mask, s)
      p1 = (kernel - 1) // 2
      xt = g.conv(xt, f"{module}.convs2.{j}", padding=(p1, p1))
    else:
      xt = g.conv(xt, f"{module}.convs.{j}", dilation=d, padding=(p, p))
    x = g.mul(g.add(xt, x, s), mask, s)
  return x


def _generator(g: _Graph, x: str, y_mask: str, y_lengths: str, spk: Optional[str],
               hp: Mapping[str, Any]) -> str:
  """Official HiFi-GAN `Generator`, re-masked after every stage: z [B, C, T] -> [B, 1, T*hop]."""
  s = "dec"
  kind = str(hp["resblock"])
  kernels = [int(k) for k in hp["resblock_kernel_sizes"]]
  dilations = [[int(d) for d in ds] for ds in hp["resblock_dilation_sizes"]]
  x = g.conv(g.mul(x, y_mask, s), "dec.conv_pre", padding="same")
  if spk is not None:
    x = g.add(x, g.conv(spk, "dec.cond"), s)
  x = g.mul(x, y_mask, s)
  mask = y_mask
  rate = 1
  for i, (u, k) in enumerate(zip(hp["upsample_rates"], hp["upsample_kernel_sizes"])):
    u, k = int(u), int(k)
    rate *= u
    x = g.leaky_relu(x, LRELU_SLOPE, s)
    x = g.conv_transpose(x, f"dec.ups.{i}", u, (k - u) // 2)
    # Samples past y_length * rate are padding (as `commons.upsample_mask`).
    mask = g.length_mask(g.mul(y_lengths, g.i64(rate), s), g.dim(x, 2, s), s)
    x = g.mul(x, mask, s)
    xs = None
    for j, (rk, rd) in enumerate(zip(kernels, dilations)):
      y = _resblock(g, f"dec.resblocks.{i * len(kernels) + j}", kind, x, mask, rk, rd)
      xs = y if xs is None else g.add(xs, y, s)
    x = g.div(xs, g.f32(float(len(kernels))), s)
  x = g.leaky_relu(x, 0.01, s)  # torch's default slope here, as official
  x = g.conv(x, "dec.conv_post", padding="same")
  return g.mul(g.op("Tanh", [x], s), mask, s)


# =========================================================================== the model
def _count(sd: Mapping[str, Any], pattern: str) -> int:
  n = 0
  while pattern.format(n) in sd:
    n += 1
  return n


def _check_hparams(sd: Mapping[str, Any], hp: Mapping[str, Any]):
  """Fails early, with the reason, where hparams and weights disagree."""
  def shape(name):
    if name not in sd:
      raise ValueError(f"state_dict lacks {name}")
    return tuple(np.shape(sd[name]))

  problems = []
  n_vocab, hidden = shape("enc_p.emb.weight")
  if n_vocab != int(hp["n_vocab"]) or hidden != int(hp["hidden_channels"]):
    problems.append(f"enc_p.emb.weight is {n_vocab}x{hidden}, hparams say "
                    f"{hp['n_vocab']}x{hp['hidden_channels']}")
  if shape("enc_p.proj.weight")[0] != 2 * int(hp["inter_channels"]):
    problems.append("enc_p.proj does not give 2 * inter_channels stats")
  if hidden % int(hp["n_heads"]):
    problems.append(f"hidden_channels {hidden} not divisible by n_heads {hp['n_heads']}")
  rel = shape("enc_p.encoder.attn_layers.0.emb_rel_k")
  if rel[-1] * int(hp["n_heads"]) != hidden:
    problems.append(f"emb_rel_k width {rel[-1]} != hidden / n_heads")
  if _count(sd, "enc_p.encoder.attn_layers.{}.emb_rel_k") != int(hp["n_layers"]):
    problems.append("n_layers does not match the encoder's layers")
  n_speakers = int(hp.get("n_speakers", 0) or 0)
  if n_speakers > 1 and "emb_g.weight" not in sd:
    problems.append("n_speakers > 1 but no emb_g.weight")
  if str(hp["resblock"]) not in ("1", "2"):
    problems.append(f"resblock must be '1' or '2', got {hp['resblock']!r}")
  if len(hp["upsample_rates"]) != len(hp["upsample_kernel_sizes"]):
    problems.append("upsample_rates and upsample_kernel_sizes differ in length")
  if bool(hp.get("use_sdp", True)) != ("dp.flows.0.m" in sd):
    problems.append(f"use_sdp={hp.get('use_sdp', True)} but the duration predictor weights "
                    "say otherwise")
  if problems:
    raise ValueError("hparams do not match the weights: " + "; ".join(problems))


def build_graph(state_dict: Mapping[str, Any], hparams: Mapping[str, Any]):
  """The Piper inference graph of a VITS generator.

  Args:
    state_dict: official jaywalnut310/vits parameter names -> arrays (torch layouts), e.g.
      `vits_jax.convert.torch_names.flax_to_torch(params, fold_weight_norm=True)`;
      weight-normed convs may also come as `weight_g` / `weight_v` (folded here). Names
      inference does not use (enc_q, dp.post_*) are ignored.
    hparams: official `hps.model` keys plus `n_vocab` and `n_speakers` (and optionally the
      flow_* sizes of `SynthesizerTrn`); see `hparams_of`.

  Returns:
    an `onnx.ModelProto` (opset 15) with Piper's inputs and output.

  Raises:
    ValueError: hparams and weights disagree, or a weight is missing.
  """
  from onnx import TensorProto, helper

  hp = dict(hparams)
  _check_hparams(state_dict, hp)
  multi = int(hp.get("n_speakers", 0) or 0) > 1
  g = _Graph(state_dict)

  ids, lengths, scales = "input", "input_lengths", "scales"
  noise_scale = g.op("Gather", [scales, g.const(0, np.int64)], axis=0)
  length_scale = g.op("Gather", [scales, g.const(1, np.int64)], axis=0)
  noise_w = g.op("Gather", [scales, g.const(2, np.int64)], axis=0)

  x, m_p, logs_p, x_mask = _text_encoder(g, hp, ids, lengths)
  spk = None
  if multi:
    spk = g.op("Gather", [g.param("emb_g.weight"), "sid"], "emb_g", axis=0)   # [B, gin]
    spk = g.unsqueeze(spk, [2], "")                                           # [B, gin, 1]

  if bool(hp.get("use_sdp", True)):
    logw = _sdp_reverse(g, x, x_mask, spk, noise_w)
  else:
    logw = _dp(g, x, x_mask, spk)
  w = g.mul(g.mul(g.op("Exp", [logw]), x_mask), length_scale)
  w_ceil = g.op("Ceil", [w])                                    # [B, 1, T_x] frames per id

  # Frames: y_lengths = max(sum(w_ceil), 1); the path puts frame y on token x when
  # cum[x] - w[x] <= y < cum[x] (official `generate_path`).
  total = g.op("ReduceSum", [w_ceil, g.i64(1, 2)], keepdims=0)
  y_lengths = g.op("Cast", [g.op("Max", [total, g.f32(1.0)])], to=_INT64)   # [B]
  t_y = g.unsqueeze(g.op("ReduceMax", [y_lengths], keepdims=0), [0], "")
  y_mask = g.length_mask(y_lengths, t_y, "")                               # [B, 1, T_y]

  w_col = g.op("Transpose", [w_ceil], perm=[0, 2, 1])                       # [B, T_x, 1]
  end = g.op("CumSum", [w_col, g.const(1, np.int64)])
  start = g.sub(end, w_col, "")
  frames = g.op("Range", [g.const(0, np.int64), g.scalar(t_y, ""), g.const(1, np.int64)])
  frames = g.op("Cast", [frames], to=_FLOAT)
  frames = g.unsqueeze(frames, [0, 1], "")                                 # [1, 1, T_y]
  path = g.op("And", [g.op("GreaterOrEqual", [frames, start]), g.op("Less", [frames, end])])
  path = g.op("Cast", [path], to=_FLOAT)                                   # [B, T_x, T_y]
  path = g.mul(g.mul(path, g.op("Transpose", [x_mask], perm=[0, 2, 1])), y_mask, "")
  m_p = g.op("MatMul", [m_p, path])                                        # [B, C, T_y]
  logs_p = g.op("MatMul", [logs_p, path])

  eps = g.op("RandomNormalLike", [m_p], dtype=_FLOAT)
  z_p = g.add(m_p, g.mul(g.mul(eps, g.op("Exp", [logs_p])), noise_scale), "")
  z = _flow_reverse(g, z_p, y_mask, spk, hp)
  o = _generator(g, g.mul(z, y_mask, ""), y_mask, y_lengths, spk, hp)     # [B, 1, T]
  g.op("Unsqueeze", [o, g.i64(1)], name="/Unsqueeze_output")
  g.nodes[-1].output[0] = "output"
  assert g.count("Ceil") == 1

  inputs = [
      helper.make_tensor_value_info("input", TensorProto.INT64, ["batch_size", "phonemes"]),
      helper.make_tensor_value_info("input_lengths", TensorProto.INT64, ["batch_size"]),
      helper.make_tensor_value_info("scales", TensorProto.FLOAT, [3]),
  ]
  if multi:
    inputs.append(helper.make_tensor_value_info("sid", TensorProto.INT64, ["batch_size"]))
  outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT,
                                           ["batch_size", 1, 1, "time"])]
  graph = helper.make_graph(g.nodes, "vits_piper", inputs, outputs,
                            initializer=list(g.initializers.values()))
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                            producer_name="vits_jax", producer_version=_version())
  model.ir_version = IR_VERSION
  return model


def _version() -> str:
  try:
    from importlib.metadata import version
    return version("vits_jax")
  except Exception:  # pylint: disable=broad-except  (not installed as a package)
    return "0"


def hparams_of(model) -> Dict[str, Any]:
  """`build_graph`'s hparams from a `SynthesizerTrn` module's fields."""
  n_speakers = int(model.n_speakers or 0)
  return dict(
      n_vocab=int(model.n_vocab), inter_channels=int(model.inter_channels),
      hidden_channels=int(model.hidden_channels), filter_channels=int(model.filter_channels),
      n_heads=int(model.n_heads), n_layers=int(model.n_layers),
      kernel_size=int(model.kernel_size), p_dropout=float(model.p_dropout),
      resblock=str(model.resblock),
      resblock_kernel_sizes=[int(k) for k in model.resblock_kernel_sizes],
      resblock_dilation_sizes=[[int(d) for d in ds] for ds in model.resblock_dilation_sizes],
      upsample_rates=[int(u) for u in model.upsample_rates],
      upsample_initial_channel=int(model.upsample_initial_channel),
      upsample_kernel_sizes=[int(k) for k in model.upsample_kernel_sizes],
      n_speakers=n_speakers if n_speakers > 1 else 0,
      gin_channels=int(model.gin_channels or 0), use_sdp=bool(model.use_sdp),
      flow_kernel_size=int(model.flow_kernel_size),
      flow_dilation_rate=int(model.flow_dilation_rate),
      flow_n_layers=int(model.flow_n_layers), flow_n_flows=int(model.flow_n_flows))


# =========================================================================== the json
REQUIRED_JSON_KEYS = ("audio", "espeak", "language", "inference", "phoneme_type",
                      "phoneme_map", "phoneme_id_map", "num_symbols", "num_speakers",
                      "speaker_id_map", "piper_version", "hop_length")


def _language(espeak_voice: str) -> Dict[str, str]:
  """'en-us' -> {'code': 'en_US', 'family': 'en', 'region': 'US'} (Piper's convention)."""
  parts = re.split(r"[-_]", espeak_voice)
  family = parts[0].lower()
  region = parts[1].upper() if len(parts) > 1 and parts[1].isalpha() else ""
  out = {"code": f"{family}_{region}" if region else family, "family": family}
  if region:
    out["region"] = region
  return out


def _quality(hp: Mapping[str, Any], sample_rate: int) -> str:
  """Piper's quality label as its trainers set it: 'high' for the V1 decoder, 'low' at
  16 kHz, else 'medium'."""
  if str(hp["resblock"]) == "1":
    return "high"
  return "low" if sample_rate <= 16000 else "medium"


def _frontend_config(frontend) -> Dict[str, Any]:
  """The Piper `.onnx.json` a Piper frontend was made from, as far as it keeps it."""
  config = getattr(frontend, "config", None)
  if isinstance(config, Mapping):
    return json.loads(json.dumps(config))  # a deep copy
  out: Dict[str, Any] = {"phoneme_type": frontend.phoneme_type,
                         "espeak": {"voice": frontend.voice},
                         "phoneme_id_map": {p: list(i) for p, i in frontend.id_map.items()}}
  return out


def check_piper_frontend(voice) -> None:
  """Raises ValueError (one line, with the reason) unless Piper's runtime can feed `voice`."""
  frontend = voice.frontend
  name = getattr(frontend, "name", "") or type(frontend).__name__
  if name == "piper" and hasattr(frontend, "id_map"):
    return
  if name == "vits":
    why = ("it uses the official VITS symbol table (cleaned text mapped symbol by symbol, "
           "with blank ids in between), but Piper's runtime makes ids with a "
           "phoneme_id_map (^ BOS, _ between phonemes, $ EOS)")
  else:
    why = (f"its text frontend ({name}) is not Piper's: Piper's runtime makes ids with a "
           "phoneme_id_map from espeak-ng phonemes")
  raise ValueError(f"voice {voice.name!r} cannot run in Piper: {why}, so the ids would not "
                   "be the ones the model was trained on; only voices with the Piper "
                   "frontend can be exported")


def voice_json(voice, base: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
  """The `NAME.onnx.json` of `voice`: its own Piper config (or `base`), with every field
  Piper reads filled or overridden from the model.

  Raises:
    ValueError: the voice's frontend is not Piper's, its id map does not fit the model, or
      espeak-ng has no voice of its name.
  """
  check_piper_frontend(voice)
  model = voice.model
  hp = hparams_of(model)
  config = json.loads(json.dumps(base)) if base is not None else _frontend_config(
      voice.frontend)
  frontend = voice.frontend

  id_map = {p: [int(i) for i in ids] for p, ids in frontend.id_map.items()}
  top = max(i for ids in id_map.values() for i in ids)
  if top >= hp["n_vocab"]:
    raise ValueError(f"voice {voice.name!r}: the phoneme_id_map uses id {top} but the model "
                     f"has only {hp['n_vocab']} symbols")
  n_speakers = max(1, int(hp["n_speakers"]))
  speakers = dict(voice.speaker_names or config.get("speaker_id_map") or {})
  if n_speakers == 1:
    speakers = {}
  bad = {k: v for k, v in speakers.items() if not 0 <= int(v) < n_speakers}
  if bad:
    raise ValueError(f"voice {voice.name!r}: speaker ids {bad} out of range 0..{n_speakers - 1}")

  sample_rate = int(voice.sample_rate)
  audio = dict(config.get("audio") or {})
  audio["sample_rate"] = sample_rate
  if audio.get("quality") not in ("x_low", "low", "medium", "high"):
    audio["quality"] = _quality(hp, sample_rate)   # a label Piper's tools know
  if frontend.phoneme_type == "espeak":   # Piper would fail on its first sentence
    from vits_jax.text import piper_phonemes  # pylint: disable=import-outside-toplevel
    piper_phonemes.check_espeak_voice(frontend.voice)   # ValueError: espeak-ng has no voice
  espeak = dict(config.get("espeak") or {})
  espeak["voice"] = frontend.voice
  language = dict(config.get("language") or {})
  if "code" not in language:
    language = {**_language(frontend.voice), **language}
  from vits_jax.convert.source import PIPER_KNOBS  # pylint: disable=import-outside-toplevel
  inference = dict(config.get("inference") or {})   # the voice's own knobs, Piper's names
  inference.update({theirs: voice.defaults[ours] for ours, theirs in PIPER_KNOBS.items()})

  config.update(
      audio=audio, espeak=espeak, language=language, inference=inference,
      phoneme_type=frontend.phoneme_type, phoneme_map=dict(config.get("phoneme_map") or {}),
      phoneme_id_map=id_map, num_symbols=int(hp["n_vocab"]), num_speakers=n_speakers,
      speaker_id_map={str(k): int(v) for k, v in speakers.items()},
      piper_version=str(config.get("piper_version") or PIPER_VERSION),
      hop_length=int(np.prod(hp["upsample_rates"])))
  config.setdefault("dataset", _default_name(voice))
  return config


# =========================================================================== export
def _default_name(voice) -> str:
  name = Path(str(voice.name or "voice").rstrip("/\\")).name
  for suffix in (".onnx.json", ".onnx", ".pth", ".pt"):
    if name.endswith(suffix):
      name = name[:-len(suffix)]
  return name or "voice"


def _output_paths(voice, out_path) -> Tuple[Path, Path]:
  out = Path(out_path).expanduser()
  if out.suffix != ".onnx":   # a folder (created if missing)
    if out.suffix[1:].isalpha():
      raise ValueError(f"{out}: a Piper voice is written as NAME.onnx (or into a folder), "
                       f"not {out.suffix}")
    if out.exists() and not out.is_dir():
      raise FileExistsError(f"{out} is a file, not a folder: give NAME.onnx or a folder")
    out = out / f"{_default_name(voice)}.onnx"
  return out, Path(str(out) + ".json")


def _write_atomic(path: Path, data: bytes) -> Path:
  """Writes `data` to a temp file beside `path`; returns the temp path (not yet moved)."""
  from vits_jax.export.common import share_as_usual
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    share_as_usual(Path(tmp))
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise
  return Path(tmp)


def export_piper(voice, out_path: Union[str, os.PathLike], force: bool = False,
                 config: Optional[Mapping[str, Any]] = None) -> Tuple[Path, Path]:
  """Writes `voice` (a `vits_jax.voice.Voice`) as a Piper voice.

  Args:
    voice: from `vits_jax.voice.load_voice`; its frontend must be Piper's.
    out_path: `DIR/NAME.onnx`, or a folder (the voice's name is used there).
    force: overwrite existing files.
    config: the Piper config to start the json from (e.g. the voice's original
      `.onnx.json`, to keep its language names and dataset); default: the frontend's
      config where it keeps one, else what the frontend holds (id map, espeak voice).

  Returns:
    (onnx path, json path).

  Raises:
    ValueError: the voice cannot run in Piper (the message says why); nothing is written.
    FileExistsError: an output exists and not `force`; it is left untouched.
  """
  from vits_jax.convert import torch_names
  check_piper_frontend(voice)
  onnx_path, json_path = _output_paths(voice, out_path)
  for p in (onnx_path, json_path):
    if p.exists() and not force:
      raise FileExistsError(f"{p} exists (pass --force to replace it)")
    if p.is_dir():   # checked before either file is replaced: the two stay a pair
      raise FileExistsError(f"{p} is a folder: --force replaces files only")
  config = voice_json(voice, config)
  state_dict = torch_names.flax_to_torch(voice.params, fold_weight_norm=True)
  model = build_graph(state_dict, hparams_of(voice.model))
  blob = model.SerializeToString()
  text = (json.dumps(config, ensure_ascii=False, indent=2) + "\n").encode("utf-8")

  onnx_path.parent.mkdir(parents=True, exist_ok=True)
  tmps = []
  try:
    tmps.append(_write_atomic(onnx_path, blob))
    tmps.append(_write_atomic(json_path, text))
    os.replace(tmps[0], onnx_path)
    os.replace(tmps[1], json_path)
  finally:
    for t in tmps:
      t.unlink(missing_ok=True)
  return onnx_path, json_path
