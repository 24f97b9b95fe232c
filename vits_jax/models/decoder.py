"""HiFi-GAN generator (decoder) of VITS: latent frames z -> waveform.

Upsampling by transposed convs (any `upsample_rates`), each followed by a multi-receptive-
field fusion of residual blocks (`ResBlock1`: dilated + plain conv pairs, HiFi-GAN V1/V2;
`ResBlock2`: dilated convs only, V3). Weight norm on every conv but `conv_pre`, `conv_post`
and `cond`, as in the official code.

With `x_mask` the decoder re-masks after every stage with the mask upsampled to that stage's
rate, so samples past an item's length are exactly zero before each conv and batch padding
never leaks into real samples: an item decodes to the same waveform alone or in any batch.
"""

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from vits_jax.models import commons, receptive
from vits_jax.models.commons import LRELU_SLOPE
from vits_jax.models.layers import Conv1d, ConvTranspose1d

Dtype = Any


def _mask(x, x_mask):
  return x if x_mask is None else x * x_mask.astype(x.dtype)


def _crop(x, cut: int):
  """`x` [B, T, C] (or None) less `cut` steps at each end."""
  return x if x is None or not cut else x[:, cut:x.shape[1] - cut]


def _padding(kernel_size: int, dilation: int = 1) -> int:
  return (kernel_size * dilation - dilation) // 2


class ResBlock1(nn.Module):
  """Residual pairs (dilated conv, plain conv), one pair per dilation (official: 3)."""
  channels: int
  kernel_size: int = 3
  dilation: Sequence[int] = (1, 3, 5)
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array, x_mask: Optional[jax.Array] = None) -> jax.Array:
    """x: [B, T, C], x_mask: [B, T, 1] or None -> [B, T, C]."""
    for j, d in enumerate(self.dilation):
      xt = _mask(nn.leaky_relu(x, LRELU_SLOPE), x_mask)
      xt = Conv1d(self.channels, self.kernel_size, dilation=d,
                  padding=_padding(self.kernel_size, d), weight_norm=True,
                  dtype=self.dtype, name=f"convs1_{j}")(xt)
      xt = _mask(nn.leaky_relu(xt, LRELU_SLOPE), x_mask)
      xt = Conv1d(self.channels, self.kernel_size, padding=_padding(self.kernel_size),
                  weight_norm=True, dtype=self.dtype, name=f"convs2_{j}")(xt)
      x = xt + x
    return _mask(x, x_mask)


class ResBlock2(nn.Module):
  """Residual dilated convs, one per dilation (official: 2)."""
  channels: int
  kernel_size: int = 3
  dilation: Sequence[int] = (1, 3)
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array, x_mask: Optional[jax.Array] = None) -> jax.Array:
    """x: [B, T, C], x_mask: [B, T, 1] or None -> [B, T, C]."""
    for j, d in enumerate(self.dilation):
      xt = _mask(nn.leaky_relu(x, LRELU_SLOPE), x_mask)
      xt = Conv1d(self.channels, self.kernel_size, dilation=d,
                  padding=_padding(self.kernel_size, d), weight_norm=True,
                  dtype=self.dtype, name=f"convs_{j}")(xt)
      x = xt + x
    return _mask(x, x_mask)


class Decoder(nn.Module):
  """The HiFi-GAN decoder `dec` (official class `Generator`; names `conv_pre`, `ups_i`,
  `resblocks_k`, `conv_post`, `cond`).

  Attributes:
    resblock: '1' or '2'.
    resblock_kernel_sizes, resblock_dilation_sizes: one residual block per entry, per stage.
    upsample_rates, upsample_kernel_sizes: transposed conv strides and widths; their product
      is the hop length.
    upsample_initial_channel: width after `conv_pre`; halved at every stage.
    gin_channels: speaker conditioning width (0 = none).
  """
  resblock: str
  resblock_kernel_sizes: Sequence[int]
  resblock_dilation_sizes: Sequence[Sequence[int]]
  upsample_rates: Sequence[int]
  upsample_initial_channel: int
  upsample_kernel_sizes: Sequence[int]
  gin_channels: int = 0
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array, g: Optional[jax.Array] = None,
               x_mask: Optional[jax.Array] = None, margin: int = 0) -> jax.Array:
    """Decodes latent frames.

    Args:
      x: [B, T, inter_channels] latent frames.
      g: [B, 1, gin] speaker embedding or None.
      x_mask: [B, T, 1] valid frames, or None (no masking, as the official decoder).
      margin: frames at each end of `x` that are context only (static; at least
        `receptive.decoder_reach`): the output leaves them out, and after each stage the
        part of them that the later stages cannot see is dropped, so the later, wider
        stages work on little more than the core. The core's samples are those of decoding
        all of `x`.

    Returns:
      [B, (T - 2 * margin) * prod(upsample_rates), 1] waveform in [-1, 1] (float32).
    """
    if str(self.resblock) not in ("1", "2"):
      raise ValueError(f"resblock must be '1' or '2', got {self.resblock!r}")
    block = ResBlock1 if str(self.resblock) == "1" else ResBlock2
    num_kernels = len(self.resblock_kernel_sizes)
    dtype = self.dtype or x.dtype
    cuts = receptive.decoder_crops(self, margin)   # (all 0 without a margin)

    x = Conv1d(self.upsample_initial_channel, 7, padding=3, dtype=dtype, name="conv_pre")(
        _mask(x, x_mask))
    if g is not None and self.gin_channels:
      x = x + Conv1d(self.upsample_initial_channel, 1, dtype=dtype, name="cond")(g)
    x = _mask(x, x_mask)
    x, x_mask = _crop(x, cuts[0]), _crop(x_mask, cuts[0])
    for i, (u, k) in enumerate(zip(self.upsample_rates, self.upsample_kernel_sizes)):
      ch = self.upsample_initial_channel // (2 ** (i + 1))
      x = nn.leaky_relu(x, LRELU_SLOPE)
      x = ConvTranspose1d(ch, k, stride=u, padding=(k - u) // 2, weight_norm=True,
                          dtype=dtype, name=f"ups_{i}")(x)
      if x_mask is not None:
        x_mask = commons.upsample_mask(x_mask, u, x.shape[1])
      x = _mask(x, x_mask)
      xs = None
      for j, (rk, rd) in enumerate(zip(self.resblock_kernel_sizes,
                                       self.resblock_dilation_sizes)):
        y = block(ch, rk, tuple(rd), dtype=dtype, name=f"resblocks_{i * num_kernels + j}")(
            x, x_mask)
        xs = y if xs is None else xs + y
      x = xs / num_kernels
      x, x_mask = _crop(x, cuts[i + 1]), _crop(x_mask, cuts[i + 1])
    # torch's F.leaky_relu default slope (0.01) here, not LRELU_SLOPE: as official.
    x = nn.leaky_relu(x, 0.01)
    x = Conv1d(1, 7, padding=3, use_bias=False, dtype=dtype, name="conv_post")(x)
    x = _mask(jnp.tanh(x.astype(jnp.float32)), x_mask)
    return _crop(x, cuts[-1])
