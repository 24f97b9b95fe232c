"""HiFi-GAN discriminators used by VITS: multi-period (MPD) plus one scale discriminator.

`MultiPeriodDiscriminator` is the official VITS `MultiPeriodDiscriminator`: one
`DiscriminatorS` on the raw waveform (`discriminators_0`) and a `DiscriminatorP` for each of
the periods 2, 3, 5, 7, 11 (`discriminators_1..5`), which folds the waveform into
`[T / p, p]` and convolves along time only, so each column sees every p-th sample.

Parameter names follow the official code (`convs_i`, `conv_post`, `weight_g`/`weight_v`), so
a torch state dict converts with `vits_jax.convert.torch_names`. With weight norm the official
MPD has exactly 46,747,132 parameters.

`channel_div` divides every conv width (and group count) by a power of two: 1 is the official
network; tiny configs use 8 so a CPU can train the GAN. `build_discriminator(config)` reads
`config.model.use_spectral_norm` and the optional `config.discriminator` section.
"""

from typing import Any, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import flax.linen as nn

from vits_jax.models import layers

LRELU_SLOPE = 0.1
PERIODS = (2, 3, 5, 7, 11)


class _SpectralConv1d(nn.Module):
  """Conv1d with `torch.nn.utils.spectral_norm` (layers.Conv1d has weight norm only).

  Params as `layers.Conv1d`: `weight` `[K, Cin/groups, Cout]`, `bias`; `u` in `spectral`.
  """
  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  groups: int = 1
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array, update_stats: bool = False) -> jax.Array:
    cin = x.shape[-1]
    fan_in = cin // self.groups * self.kernel_size
    w = self.param("weight", layers._torch_uniform(fan_in),
                   (self.kernel_size, cin // self.groups, self.features))
    w = layers._spectral_normalize(self, w, update_stats)
    dtype = self.dtype or x.dtype
    y = layers.conv_time(x.astype(dtype), w.astype(dtype), self.stride,
                         padding=(self.padding, self.padding), groups=self.groups)
    b = self.param("bias", layers._torch_uniform(fan_in), (self.features,))
    return y + b.astype(dtype)


def _check_div(channel_div: int):
  # Every width below (the smallest is 16) and every group count must stay an integer.
  if channel_div not in (1, 2, 4, 8, 16):
    raise ValueError(f"discriminator channel_div must be 1, 2, 4, 8 or 16, got {channel_div}")


class DiscriminatorP(nn.Module):
  """Period discriminator: waveform folded to `[B, T/p, p, 1]`, (5, 1) convs, stride 3.

  Attributes:
    period: fold period p.
    use_spectral_norm: spectral norm instead of weight norm.
    channel_div: width divisor (1 = official 32, 128, 512, 1024, 1024).
  """
  period: int
  kernel_size: int = 5
  stride: int = 3
  use_spectral_norm: bool = False
  channel_div: int = 1
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array, update_stats: bool = False
               ) -> Tuple[jax.Array, List[jax.Array]]:
    """Scores a waveform.

    Args:
      x: `[B, T, 1]` waveform.
      update_stats: advance spectral-norm power iterations (needs mutable 'spectral').

    Returns:
      `(score [B, H * p], fmaps)`: score flattened in torch order (rows, then period
      phase), H = rows after four stride-3 convs; fmaps `[B, H_i, p, C_i]` after every conv
      (post-activation) and conv_post.
    """
    _check_div(self.channel_div)
    b, t, _ = x.shape
    if t % self.period:
      # The official pads with a reflection at the end so T is a multiple of the period.
      x = jnp.pad(x, ((0, 0), (0, self.period - t % self.period), (0, 0)), mode="reflect")
    x = x.reshape(b, x.shape[1] // self.period, self.period, 1)

    pad = (self.kernel_size - 1) // 2   # official get_padding(5, 1)
    widths = [c // self.channel_div for c in (32, 128, 512, 1024, 1024)]
    strides = [self.stride] * 4 + [1]

    def conv(features, kernel, stride, padding, name):
      return layers.Conv2d(features, (kernel, 1), (stride, 1), (padding, 0),
                           weight_norm=not self.use_spectral_norm,
                           spectral_norm=self.use_spectral_norm, dtype=self.dtype, name=name)

    fmap = []
    for i, (c, s) in enumerate(zip(widths, strides)):
      x = conv(c, self.kernel_size, s, pad, f"convs_{i}")(x, update_stats)
      x = nn.leaky_relu(x, LRELU_SLOPE)
      fmap.append(x)
    x = conv(1, 3, 1, 1, "conv_post")(x, update_stats)
    fmap.append(x)
    return x.reshape(b, -1), fmap


class DiscriminatorS(nn.Module):
  """Scale discriminator on the raw waveform: grouped strided Conv1d stack.

  Attributes:
    use_spectral_norm: spectral norm instead of weight norm.
    channel_div: width divisor (1 = official 16, 64, 256, 1024, 1024, 1024).
  """
  use_spectral_norm: bool = False
  channel_div: int = 1
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array, update_stats: bool = False
               ) -> Tuple[jax.Array, List[jax.Array]]:
    """Scores a waveform.

    Args:
      x: `[B, T, 1]` waveform.
      update_stats: advance spectral-norm power iterations (needs mutable 'spectral').

    Returns:
      `(score [B, T'], fmaps)` with fmaps `[B, T_i, C_i]`.
    """
    _check_div(self.channel_div)
    d = self.channel_div
    # (out channels, kernel, stride, groups, padding) of the official convs.
    specs = [(16, 15, 1, 1, 7), (64, 41, 4, 4, 20), (256, 41, 4, 16, 20),
             (1024, 41, 4, 64, 20), (1024, 41, 4, 256, 20), (1024, 5, 1, 1, 2)]

    def conv(features, kernel, stride, groups, padding, name):
      if self.use_spectral_norm:
        m = _SpectralConv1d(features, kernel, stride, padding, groups, dtype=self.dtype,
                            name=name)
        return lambda h: m(h, update_stats)
      return layers.Conv1d(features, kernel, stride, padding=padding, groups=groups,
                           weight_norm=True, dtype=self.dtype, name=name)

    fmap = []
    for i, (c, k, s, g, p) in enumerate(specs):
      x = conv(c // d, k, s, max(1, g // d), p, f"convs_{i}")(x)
      x = nn.leaky_relu(x, LRELU_SLOPE)
      fmap.append(x)
    x = conv(1, 3, 1, 1, 1, "conv_post")(x)
    fmap.append(x)
    return x.reshape(x.shape[0], -1), fmap


class MultiPeriodDiscriminator(nn.Module):
  """The official VITS discriminator: `DiscriminatorS` + one `DiscriminatorP` per period.

  Attributes:
    use_spectral_norm: spectral norm instead of weight norm (official: False).
    periods: the DiscriminatorP periods.
    channel_div: width divisor, 1 = official.
    dtype: compute dtype (scores and fmaps are returned as float32).
  """
  use_spectral_norm: bool = False
  periods: Sequence[int] = PERIODS
  channel_div: int = 1
  dtype: Optional[Any] = None

  @nn.compact
  def score(self, x: jax.Array, update_stats: bool = False):
    """Scores one batch of waveforms `[B, T, 1]`.

    Returns `(scores, fmaps)`: per discriminator, the scores `[B, n]` (float32) and the list
    of its feature maps (float32, channels-last). `__call__` is this on `[y; y_hat]`.
    """
    discs = [DiscriminatorS(self.use_spectral_norm, self.channel_div, self.dtype,
                            name="discriminators_0")]
    discs += [DiscriminatorP(p, use_spectral_norm=self.use_spectral_norm,
                             channel_div=self.channel_div, dtype=self.dtype,
                             name=f"discriminators_{i + 1}")
              for i, p in enumerate(self.periods)]
    scores, fmaps = [], []
    for disc in discs:
      score, fmap = disc(x, update_stats)
      scores.append(score.astype(jnp.float32))
      fmaps.append([f.astype(jnp.float32) for f in fmap])
    return scores, fmaps

  def __call__(self, y: jax.Array, y_hat: jax.Array, update_stats: bool = False):
    """Scores real and generated audio.

    Args:
      y: `[B, T, 1]` real waveform.
      y_hat: `[B, T, 1]` generated waveform.
      update_stats: advance spectral-norm power iterations (apply with mutable=['spectral']).

    Returns:
      `(y_d_rs, y_d_gs, fmap_rs, fmap_gs)`: per discriminator, the real/generated scores
      `[B, n]` and lists of feature maps, as the official code returns them (channels-last).
    """
    if y.shape != y_hat.shape:
      raise ValueError(f"y {y.shape} and y_hat {y_hat.shape} must have the same shape")
    b = y.shape[0]
    # One pass over [y; y_hat] per discriminator: same result, half the kernel launches.
    scores, fmaps = self.score(jnp.concatenate([y, y_hat], axis=0), update_stats)
    return ([s[:b] for s in scores], [s[b:] for s in scores],
            [[f[:b] for f in fm] for fm in fmaps], [[f[b:] for f in fm] for fm in fmaps])


def build_discriminator(config) -> MultiPeriodDiscriminator:
  """MPD from a full config (`model.use_spectral_norm`, optional `discriminator` section)."""
  disc = config.get("discriminator", None) or {}
  dtype = config.model.get("dtype", None)
  return MultiPeriodDiscriminator(
      use_spectral_norm=bool(config.model.use_spectral_norm),
      periods=tuple(disc.get("periods", PERIODS)),
      channel_div=int(disc.get("channel_div", 1)),
      dtype=None if dtype in (None, "float32") else jnp.dtype(dtype))
