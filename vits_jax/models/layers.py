"""Convolution and normalization layers shared by every VITS module.

Arrays are channels-last: 1-D inputs are `[B, T, C]`, 2-D inputs `[B, H, W, C]`.
Parameter names follow PyTorch / the official VITS so converters are name maps plus
transposes:

- plain conv: `weight`, `bias`
- weight-normed conv (`torch.nn.utils.weight_norm`, dim=0): `weight_g`, `weight_v`, `bias`
- spectral-normed conv: `weight` (the un-normalized `weight_orig`), `bias`, and the power
  iteration vector `u` in the `spectral` collection.

Kernel layouts (ours <- torch):

- Conv1d          `[K, Cin/groups, Cout]`  <- `[Cout, Cin/groups, K]`  (transpose 2, 1, 0)
- ConvTranspose1d `[K, Cin, Cout]`         <- `[Cin, Cout, K]`         (transpose 2, 0, 1)
- Conv2d          `[KH, KW, Cin, Cout]`    <- `[Cout, Cin, KH, KW]`    (transpose 2, 3, 1, 0)

`weight_g` is stored flat: `[Cout]` for Conv1d/Conv2d and `[Cin]` for ConvTranspose1d
(torch's weight_norm dim=0 is the input channel axis of a transposed conv), so parameter
counts equal PyTorch's to the unit.
"""

import functools
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

Dtype = Any


def _torch_uniform(fan_in: int):
  """PyTorch's default conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / max(fan_in, 1) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def weight_norm_scale(v, keep_axis: int):
  """||v|| over every axis but `keep_axis` (kept as size-1 axes): torch's
  `norm_except_dim(v, 2, dim)`, the `g` that makes `g * v / ||v|| == v`. The one weight-norm
  computation of the project: jax arrays here, numpy arrays in the converters (pass float64
  for an exact fold)."""
  xp = np if isinstance(v, np.ndarray) else jnp
  axes = tuple(a for a in range(v.ndim) if a != keep_axis % v.ndim)
  return xp.sqrt(xp.sum(xp.square(v), axis=axes, keepdims=True))


def normalized_weight(v, g, keep_axis: int):
  """w = g * v / ||v||, the norm taken over every axis but `keep_axis` (jax or numpy)."""
  shape = [1] * v.ndim
  shape[keep_axis] = -1
  return v * (g.reshape(shape) / weight_norm_scale(v, keep_axis))


def conv_time(x: jax.Array, w: jax.Array, stride: int = 1, dilation: int = 1,
              padding: Tuple[int, int] = (0, 0), groups: int = 1) -> jax.Array:
  """Convolution along axis 1 with PyTorch semantics: `[B, T, *S, Cin] -> [B, T', *S, Cout]`.

  `w` is `[K, Cin/groups, Cout]`; axes between time and channels (`S`, e.g. the period axis
  of `DiscriminatorP`) are carried along (a kernel of size 1 there). The forward pass is one
  `lax.conv_general_dilated`. The backward pass is the VJP of the same linear map written as
  K strided slices and one (grouped) matmul: XLA:CPU runs the convolutions that autodiff
  emits for strided, grouped and fully padded (transposed-conv) convs up to 100x slower than
  their forward pass (the discriminators' and upsamplers' backward was most of a CPU training
  step). Same gradients, up to float rounding. 1-D stride-1 "same" convs with fewer than 512
  input channels keep XLA's own VJP, which measured faster there.
  """
  args = (int(stride), int(dilation), (int(padding[0]), int(padding[1])), int(groups))
  if groups > 1 and w.shape[1] == 1 and w.shape[2] == groups and x.shape[-1] == groups:
    return _conv_time_depthwise(x, w, *args)
  if groups > 1 and stride > 1 and dilation == 1 and x.ndim == 3:
    return _conv_time_polyphase(x, w, *args)
  same = stride == 1 and groups == 1 and sum(args[2]) == dilation * (w.shape[0] - 1)
  if same and x.ndim == 3 and w.shape[1] < 512:
    return _conv_time_lax(x, w, *args)       # XLA's own VJP is faster here (decoder, WN)
  return _conv_time(x, w, *args)


def _conv_time_polyphase(x, w, stride, dilation, padding, groups):
  """A strided grouped conv (`DiscriminatorS`) as a stride-1 one over the signal's `stride`
  phases: `[B, T, C]` -> `[B, T / s, C * s]` (each group's channels stay together, phase
  innermost) with the K taps padded to a multiple of s (`[ceil(K / s), Cin/g * s, Cout]`).
  XLA:CPU runs the stride-1 form 1.3-2.3x faster, and its backward (slices + matmul, as
  `_conv_time`) takes ceil(K / s) slices instead of K strided ones: 145 vs 193 ms for the
  four grouped convs of a batch-4 `DiscriminatorS` forward and backward. Same map."""
  del dilation
  k, cin_g, cout = w.shape
  b, t, c = x.shape
  taps = -(-k // stride)
  t_out = (t + padding[0] + padding[1] - k) // stride + 1
  need = (t_out - 1 + taps) * stride   # padded input frames the phases read
  x = jnp.pad(x, ((0, 0), (padding[0], max(0, need - t - padding[0])), (0, 0)))[:, :need]
  x = x.reshape(b, need // stride, stride, c).transpose(0, 1, 3, 2)
  x = x.reshape(b, need // stride, c * stride)
  w = jnp.pad(w, ((0, taps * stride - k), (0, 0), (0, 0)))
  w = w.reshape(taps, stride, cin_g, cout).transpose(0, 2, 1, 3)
  return _conv_time(x, w.reshape(taps, cin_g * stride, cout), 1, 1, (0, 0), groups)


def _conv_time_depthwise(x, w, stride, dilation, padding, groups):
  """A depthwise conv (one input channel per group, the duration predictor's DDSConv) as K
  shifted element-wise multiply-adds, one fused loop: XLA:CPU ran it as a grouped
  convolution at ~0.2 GFLOP/s (2.5 ms for 768 x 192 x 3 taps, 12 of them per sentence).
  Plain jnp, so its gradient is element-wise too."""
  del groups
  w = w[:, 0, :]
  y = None
  for i, tap in enumerate(_taps(x, w.shape[0], stride, dilation, padding)):
    y = tap * w[i] if y is None else y + tap * w[i]
  return y


def _taps(x, k, stride, dilation, padding):
  """The K inputs of a conv's taps: `x` zero-padded along time, sliced once per tap to the
  output frames (`[B, T', *S, Cin]` each)."""
  x = jnp.pad(x, [(0, 0), padding] + [(0, 0)] * (x.ndim - 2))
  t_out = (x.shape[1] - dilation * (k - 1) - 1) // stride + 1
  return [jax.lax.slice_in_dim(x, i * dilation, i * dilation + (t_out - 1) * stride + 1,
                               stride, axis=1) for i in range(k)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_time(x, w, stride, dilation, padding, groups):
  return _conv_time_rows(x, w, stride, dilation, padding, groups)


def _conv_time_rows(x, w, stride, dilation, padding, groups):
  """`_conv_time_lax` with the axes between time and channels moved into the batch: the
  period discriminators' `[B, H, p, C]` convs run as 1-D convs over `B * p` rows, which
  XLA:CPU computes 1.3-2x faster than the same conv with a size-1 kernel axis."""
  if x.ndim == 3:
    return _conv_time_lax(x, w, stride, dilation, padding, groups)
  b, t, mid, c = x.shape[0], x.shape[1], x.shape[2:-1], x.shape[-1]
  n_mid = len(mid)
  order = (0,) + tuple(range(2, 2 + n_mid)) + (1, x.ndim - 1)
  rows = jnp.transpose(x, order).reshape((-1, t, c))
  y = _conv_time_lax(rows, w, stride, dilation, padding, groups)
  y = y.reshape((b,) + mid + y.shape[1:])
  back = (0, 1 + n_mid) + tuple(range(1, 1 + n_mid)) + (2 + n_mid,)
  return jnp.transpose(y, back)


def _conv_time_lax(x, w, stride, dilation, padding, groups):
  n_mid = x.ndim - 3
  spatial = "HWDE"[:n_mid + 1]
  lhs = "N" + spatial + "C"
  rhs = spatial + "IO"
  w = w.reshape(w.shape[:1] + (1,) * n_mid + w.shape[1:])
  return jax.lax.conv_general_dilated(
      x, w, window_strides=(stride,) + (1,) * n_mid,
      padding=[padding] + [(0, 0)] * n_mid, rhs_dilation=(dilation,) + (1,) * n_mid,
      dimension_numbers=(lhs, rhs, lhs), feature_group_count=groups)


def _conv_time_matmul(x, w, stride, dilation, padding, groups):
  """`_conv_time_lax` as slices + matmul (the form whose VJP XLA:CPU runs fast)."""
  k, cin_g, cout = w.shape
  cols = _taps(x, k, stride, dilation, padding)
  if groups == 1:
    patches = jnp.concatenate(cols, axis=-1)                         # [..., K * Cin]
    return patches @ w.reshape(k * cin_g, cout)
  lead = cols[0].shape[:-1]
  patches = jnp.stack(cols, axis=-2).reshape(lead + (k, groups, cin_g))
  if cin_g == 1 and cout == groups:                                 # depthwise
    return jnp.sum(patches[..., 0] * w[:, 0, :], axis=-2)
  wg = w.reshape(k, cin_g, groups, cout // groups)
  y = jnp.einsum("...kgc,kcgo->...go", patches, wg)
  return y.reshape(lead + (cout,))


def _conv_time_fwd(x, w, stride, dilation, padding, groups):
  return _conv_time_rows(x, w, stride, dilation, padding, groups), (x, w)


def _conv_time_bwd(stride, dilation, padding, groups, res, dy):
  x, w = res
  _, vjp = jax.vjp(
      lambda x, w: _conv_time_matmul(x, w, stride, dilation, padding, groups), x, w)
  return vjp(dy)


_conv_time.defvjp(_conv_time_fwd, _conv_time_bwd)


class _WeightMixin:
  """Creates `weight` or (`weight_g`, `weight_v`) and returns the effective kernel."""

  def _kernel(self, shape: Sequence[int], fan_in: int, norm_axis: int, init=None):
    # torch's default init unless given. (The official `init_weights`, N(0, 0.01), runs on
    # its decoder's convs after `weight_norm`, so it sets only the derived `weight`, which
    # the next forward recomputes from `weight_g`, `weight_v`: training starts from torch's.)
    init = init or _torch_uniform(fan_in)
    if not self.weight_norm or self.has_variable("params", "weight"):
      # (a weight-normed conv folded for inference: `torch_names.fold_weight_norm`)
      return self.param("weight", init, tuple(shape))
    v = self.param("weight_v", init, tuple(shape))
    g = self.param("weight_g", lambda _: weight_norm_scale(v, norm_axis).reshape(-1))
    return normalized_weight(v, g, norm_axis)


class Conv1d(nn.Module, _WeightMixin):
  """1-D convolution, `[B, T, Cin] -> [B, T', Cout]`, PyTorch semantics.

  Attributes:
    features: output channels.
    kernel_size: kernel width.
    stride, dilation, groups: as in `torch.nn.Conv1d`.
    padding: symmetric zero padding (int) or a `(left, right)` pair.
    use_bias: whether to add `bias`.
    weight_norm: weight-normalized (`weight_g`, `weight_v`) instead of `weight`.
    kernel_init: the kernel's initializer (default torch's, U(+-1/sqrt(fan_in))).
    dtype: compute dtype (params stay float32).
  """
  features: int
  kernel_size: int = 1
  stride: int = 1
  dilation: int = 1
  padding: Union[int, Tuple[int, int]] = 0
  groups: int = 1
  use_bias: bool = True
  weight_norm: bool = False
  kernel_init: Optional[Callable] = None
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cin = x.shape[-1]
    fan_in = cin // self.groups * self.kernel_size
    w = self._kernel((self.kernel_size, cin // self.groups, self.features), fan_in, -1,
                     self.kernel_init)
    pad = self.padding if isinstance(self.padding, tuple) else (self.padding, self.padding)
    dtype = self.dtype or x.dtype
    y = conv_time(x.astype(dtype), w.astype(dtype), self.stride, self.dilation, pad,
                  self.groups)
    if self.use_bias:
      b = self.param("bias", _torch_uniform(fan_in), (self.features,))
      y = y + b.astype(dtype)
    return y


class ConvTranspose1d(nn.Module, _WeightMixin):
  """Transposed 1-D convolution with `torch.nn.ConvTranspose1d` semantics.

  Output length is `(T - 1) * stride - 2 * padding + kernel_size`.
  """
  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  use_bias: bool = True
  weight_norm: bool = False
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cin = x.shape[-1]
    # torch computes fan_in of a transposed conv from weight.size(1) * k = Cout * k.
    fan_in = self.features * self.kernel_size
    # weight_norm(dim=0) on a torch ConvTranspose1d normalizes per *input* channel.
    w = self._kernel((self.kernel_size, cin, self.features), fan_in, 1)
    dtype = self.dtype or x.dtype
    y = _conv_transpose_polyphase(x.astype(dtype), w.astype(dtype), self.stride, self.padding)
    if self.use_bias:
      b = self.param("bias", _torch_uniform(fan_in), (self.features,))
      y = y + b.astype(dtype)
    return y


def _conv_transpose_polyphase(x: jax.Array, w: jax.Array, stride: int, padding: int):
  """torch's ConvTranspose1d as one ordinary conv, without a zero-stuffed input.

  Output sample `j` with `j + padding = q * stride + r` is `sum_l x[q - l] @ w[l * stride + r]`,
  so a conv with `ceil(K / stride)` taps and `stride * Cout` outputs (phase r in block r),
  reshaped to time, gives all phases at once: `stride` times fewer multiply-adds than a conv
  over the stride-dilated input (`lhs_dilation`), same result.

  Args:
    x: [B, T, Cin]; w: [K, Cin, Cout] (our layout); stride, padding: as in torch.

  Returns:
    [B, (T - 1) * stride - 2 * padding + K, Cout].
  """
  k, cin, cout = w.shape
  taps = -(-k // stride)
  w = jnp.pad(w, ((0, taps * stride - k), (0, 0), (0, 0)))
  w = w.reshape(taps, stride, cin, cout).transpose(0, 2, 1, 3).reshape(taps, cin, stride * cout)
  y = conv_time(x, jnp.flip(w, 0), padding=(taps - 1, taps - 1))
  b, t = x.shape[:2]
  y = y.reshape(b, (t + taps - 1) * stride, cout)
  return y[:, padding:padding + (t - 1) * stride - 2 * padding + k]


class Conv2d(nn.Module, _WeightMixin):
  """2-D convolution, `[B, H, W, Cin] -> [B, H', W', Cout]`, PyTorch semantics.

  With `spectral_norm=True` the kernel is divided by its largest singular value, estimated
  by one power iteration per call as `torch.nn.utils.spectral_norm` does in training; the
  iteration vector `u` lives in the mutable `spectral` collection.
  """
  features: int
  kernel_size: Tuple[int, int] = (1, 1)
  stride: Tuple[int, int] = (1, 1)
  padding: Tuple[int, int] = (0, 0)
  groups: int = 1
  use_bias: bool = True
  weight_norm: bool = False
  spectral_norm: bool = False
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array, update_stats: bool = False) -> jax.Array:
    cin = x.shape[-1]
    kh, kw = self.kernel_size
    fan_in = cin // self.groups * kh * kw
    w = self._kernel((kh, kw, cin // self.groups, self.features), fan_in, -1)
    if self.spectral_norm:
      w = _spectral_normalize(self, w, update_stats)
    dtype = self.dtype or x.dtype
    if kw == 1 and self.stride[1] == 1 and self.padding[1] == 0:
      # Every VITS Conv2d (DiscriminatorP): a conv along H, W carried along.
      y = conv_time(x.astype(dtype), w[:, 0].astype(dtype), self.stride[0],
                    padding=(self.padding[0],) * 2, groups=self.groups)
    else:
      y = jax.lax.conv_general_dilated(
          x.astype(dtype), w.astype(dtype), window_strides=self.stride,
          padding=[(self.padding[0],) * 2, (self.padding[1],) * 2],
          dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=self.groups)
    if self.use_bias:
      b = self.param("bias", _torch_uniform(fan_in), (self.features,))
      y = y + b.astype(dtype)
    return y


def _spectral_normalize(module: nn.Module, w: jax.Array, update_stats: bool) -> jax.Array:
  """Divides `w` by sigma_max(W) with W = w as a `[Cout, rest]` matrix (torch layout)."""
  mat = jnp.moveaxis(w, -1, 0).reshape(w.shape[-1], -1)
  u_var = module.variable(
      "spectral", "u",
      lambda: _l2n(jax.random.normal(module.make_rng("params"), (mat.shape[0],))))
  u = u_var.value
  v = _l2n(mat.T @ u)
  u_new = _l2n(mat @ v)
  if update_stats and not module.is_initializing():
    u_var.value = jax.lax.stop_gradient(u_new)
  # torch's estimate, sigma = u_new . W v with the v that gave u_new (both held constant).
  u_new, v = jax.lax.stop_gradient(u_new), jax.lax.stop_gradient(v)
  sigma = u_new @ (mat @ v)
  return w / sigma


def _l2n(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x), eps)


class LayerNorm(nn.Module):
  """LayerNorm over the channel axis with the official parameter names `gamma`, `beta`."""
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    gamma = self.param("gamma", nn.initializers.ones, (c,))
    beta = self.param("beta", nn.initializers.zeros, (c,))
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * gamma + beta).astype(x.dtype)


def count_params(tree, collection: str = "params") -> int:
  """Number of scalars in a param pytree (or in `tree[collection]` if present)."""
  if isinstance(tree, dict) and collection in tree:
    tree = tree[collection]
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))
