"""Building blocks of the VITS prior, posterior and duration flows.

- `Embedding`: lookup table with the PyTorch parameter name `weight`.
- `WN`: the WaveNet-style stack of gated dilated convolutions (posterior encoder, flow).
- `DDSConv`: dilated depth-separable convolutions (stochastic duration predictor).
- Flow layers, each `__call__(x, x_mask, g=None, reverse=False) -> (y, logdet)` with
  `logdet: [B]` = log|det dy/dx| of the map actually applied (so the inverse's logdet is the
  negative of the forward's): `Log`, `Flip`, `ElementwiseAffine`, `ResidualCouplingLayer`,
  `ConvFlow`.

All arrays are channels-last: `x: [B, T, C]`, `x_mask: [B, T, 1]`, `g: [B, 1, gin]`.
"""

import math
from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp
import flax.linen as nn

from vits_jax.models.layers import Conv1d, LayerNorm
from vits_jax.models.transforms import piecewise_rational_quadratic_transform

Dtype = Any


class Embedding(nn.Module):
  """`torch.nn.Embedding` with its parameter name (`weight: [num_embeddings, features]`)."""
  num_embeddings: int
  features: int
  init_std: float = 1.0

  @nn.compact
  def __call__(self, ids: jax.Array) -> jax.Array:
    weight = self.param("weight", nn.initializers.normal(self.init_std),
                        (self.num_embeddings, self.features))
    return jnp.take(weight, ids, axis=0)


class ZeroConv1x1(nn.Module):
  """1x1 Conv1d whose weight and bias start at zero, so a coupling layer starts as identity.

  Same parameter layout as `layers.Conv1d(kernel_size=1)`: `weight [1, Cin, Cout]`, `bias`.
  """
  features: int
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    w = self.param("weight", nn.initializers.zeros, (1, x.shape[-1], self.features))
    b = self.param("bias", nn.initializers.zeros, (self.features,))
    dtype = self.dtype or x.dtype
    return jnp.einsum("btc,cd->btd", x.astype(dtype), w[0].astype(dtype)) + b.astype(dtype)


class WN(nn.Module):
  """Non-causal WaveNet: gated (tanh * sigmoid) dilated convs with residual/skip 1x1 convs.

  Attributes:
    hidden_channels: width of the residual stream.
    kernel_size: odd kernel width of the dilated convs.
    dilation_rate: layer i uses dilation `dilation_rate ** i`.
    n_layers: number of layers.
    gin_channels: global conditioning width (0 = unconditioned).
    p_dropout: dropout on the gated activations.
  """
  hidden_channels: int
  kernel_size: int
  dilation_rate: int
  n_layers: int
  gin_channels: int = 0
  p_dropout: float = 0.0
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array, x_mask: jax.Array, g: Optional[jax.Array] = None,
               train: bool = False) -> jax.Array:
    """x: [B, T, H], x_mask: [B, T, 1], g: [B, 1, gin] or None -> [B, T, H] (masked)."""
    assert self.kernel_size % 2 == 1
    h = self.hidden_channels
    if self.gin_channels and g is not None:
      g = Conv1d(2 * h * self.n_layers, 1, weight_norm=True, dtype=self.dtype,
                 name="cond_layer")(g)
    x = x.astype(self.dtype or x.dtype)
    output = jnp.zeros_like(x)
    for i in range(self.n_layers):
      dilation = self.dilation_rate ** i
      x_in = Conv1d(2 * h, self.kernel_size, dilation=dilation,
                    padding=(self.kernel_size * dilation - dilation) // 2, weight_norm=True,
                    dtype=self.dtype, name=f"in_layers_{i}")(x)
      if g is not None and self.gin_channels:
        x_in = x_in + g[..., i * 2 * h:(i + 1) * 2 * h]
      acts = jnp.tanh(x_in[..., :h]) * jax.nn.sigmoid(x_in[..., h:])
      if self.p_dropout > 0:
        acts = nn.Dropout(self.p_dropout, deterministic=not train)(acts)
      # The last layer only feeds the skip output.
      res_skip = Conv1d(2 * h if i < self.n_layers - 1 else h, 1, weight_norm=True,
                        dtype=self.dtype, name=f"res_skip_layers_{i}")(acts)
      if i < self.n_layers - 1:
        x = (x + res_skip[..., :h]) * x_mask
        output = output + res_skip[..., h:]
      else:
        output = output + res_skip
    return output * x_mask


class DDSConv(nn.Module):
  """Dilated depth-separable conv stack (layer i: dilation kernel_size ** i), pre-norm GELU."""
  channels: int
  kernel_size: int
  n_layers: int
  p_dropout: float = 0.0
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array, x_mask: jax.Array, g: Optional[jax.Array] = None,
               train: bool = False) -> jax.Array:
    """x: [B, T, C], x_mask: [B, T, 1], g: [B, T or 1, C] added first -> [B, T, C]."""
    if g is not None:
      x = x + g
    for i in range(self.n_layers):
      dilation = self.kernel_size ** i
      y = Conv1d(self.channels, self.kernel_size, groups=self.channels, dilation=dilation,
                 padding=(self.kernel_size * dilation - dilation) // 2, dtype=self.dtype,
                 name=f"convs_sep_{i}")(x * x_mask)
      y = jax.nn.gelu(LayerNorm(name=f"norms_1_{i}")(y), approximate=False)
      y = Conv1d(self.channels, 1, dtype=self.dtype, name=f"convs_1x1_{i}")(y)
      y = jax.nn.gelu(LayerNorm(name=f"norms_2_{i}")(y), approximate=False)
      if self.p_dropout > 0:
        y = nn.Dropout(self.p_dropout, deterministic=not train)(y)
      x = x + y
    return x * x_mask


def _sum_bt(x: jax.Array) -> jax.Array:
  """Sum over time and channels: [B, T, C] -> [B] (in float32)."""
  return jnp.sum(x.astype(jnp.float32), axis=(1, 2))


class Log(nn.Module):
  """y = log(x) on the masked positions (x clamped at 1e-5)."""

  def __call__(self, x, x_mask, g=None, reverse=False, train=False):
    if not reverse:
      y = jnp.log(jnp.maximum(x, 1e-5)) * x_mask
      return y, _sum_bt(-y)
    return jnp.exp(x) * x_mask, _sum_bt(x * x_mask)


class Flip(nn.Module):
  """Reverses the channel order (volume preserving)."""

  def __call__(self, x, x_mask=None, g=None, reverse=False, train=False):
    return jnp.flip(x, axis=-1), jnp.zeros((x.shape[0],), jnp.float32)


class ElementwiseAffine(nn.Module):
  """y = m + exp(logs) * x with learned per-channel m, logs (`[C]`; torch stores `[C, 1]`)."""
  channels: int

  @nn.compact
  def __call__(self, x, x_mask, g=None, reverse=False, train=False):
    m = self.param("m", nn.initializers.zeros, (self.channels,))
    logs = self.param("logs", nn.initializers.zeros, (self.channels,))
    if not reverse:
      y = (m + jnp.exp(logs) * x) * x_mask
      return y, _sum_bt(logs * x_mask)
    y = (x - m) * jnp.exp(-logs) * x_mask
    return y, -_sum_bt(logs * x_mask)


class ResidualCouplingLayer(nn.Module):
  """Affine coupling: the second half of the channels is shifted (and scaled unless
  `mean_only`) by a WN network of the first half. Starts as the identity (zero `post`)."""
  channels: int
  hidden_channels: int
  kernel_size: int
  dilation_rate: int
  n_layers: int
  p_dropout: float = 0.0
  gin_channels: int = 0
  mean_only: bool = False
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x, x_mask, g=None, reverse=False, train=False):
    assert self.channels % 2 == 0, "channels should be divisible by 2"
    half = self.channels // 2
    x0, x1 = x[..., :half], x[..., half:]
    h = Conv1d(self.hidden_channels, 1, dtype=self.dtype, name="pre")(x0) * x_mask
    h = WN(self.hidden_channels, self.kernel_size, self.dilation_rate, self.n_layers,
           gin_channels=self.gin_channels, p_dropout=self.p_dropout, dtype=self.dtype,
           name="enc")(h, x_mask, g=g, train=train)
    stats = ZeroConv1x1(half * (1 if self.mean_only else 2), dtype=self.dtype,
                        name="post")(h) * x_mask
    stats = stats.astype(x.dtype)
    if self.mean_only:
      m, logs = stats, jnp.zeros_like(stats)
    else:
      m, logs = stats[..., :half], stats[..., half:]
    if not reverse:
      x1 = m + x1 * jnp.exp(logs) * x_mask
      logdet = _sum_bt(logs)
    else:
      x1 = (x1 - m) * jnp.exp(-logs) * x_mask
      logdet = -_sum_bt(logs)
    return jnp.concatenate([x0, x1], axis=-1), logdet


class ConvFlow(nn.Module):
  """Neural spline coupling: the second half of the channels goes through a rational-quadratic
  spline whose bins come from a DDSConv network of the first half (conditioned on g)."""
  in_channels: int
  filter_channels: int
  kernel_size: int
  n_layers: int
  num_bins: int = 10
  tail_bound: float = 5.0
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x, x_mask, g=None, reverse=False, train=False):
    half = self.in_channels // 2
    k = self.num_bins
    x0, x1 = x[..., :half], x[..., half:]
    h = Conv1d(self.filter_channels, 1, dtype=self.dtype, name="pre")(x0)
    h = DDSConv(self.filter_channels, self.kernel_size, self.n_layers, p_dropout=0.0,
                dtype=self.dtype, name="convs")(h, x_mask, g=g)
    h = ZeroConv1x1(half * (3 * k - 1), dtype=self.dtype, name="proj")(h) * x_mask
    # torch: [B, half*(3K-1), T] -> [B, half, T, 3K-1]; channels-last keeps the same order.
    h = h.reshape(h.shape[:2] + (half, 3 * k - 1)).astype(jnp.float32)
    scale = math.sqrt(self.filter_channels)
    x1, logabsdet = piecewise_rational_quadratic_transform(
        x1, h[..., :k] / scale, h[..., k:2 * k] / scale, h[..., 2 * k:],
        inverse=reverse, tail_bound=self.tail_bound)
    y = jnp.concatenate([x0, x1.astype(x0.dtype)], axis=-1) * x_mask
    return y, _sum_bt(logabsdet * x_mask)
