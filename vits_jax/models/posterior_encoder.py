"""Posterior encoder q(z | x_lin): linear spectrogram -> WN stack -> N(m_q, exp(logs_q)^2)."""

from typing import Any, Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from vits_jax.models import commons
from vits_jax.models.layers import Conv1d
from vits_jax.models.modules import WN

Dtype = Any


class PosteriorEncoder(nn.Module):
  """Official `PosteriorEncoder` (names `pre`, `enc`, `proj`).

  Attributes:
    out_channels: latent width (inter_channels).
    hidden_channels: WN width.
    kernel_size, dilation_rate, n_layers: WN shape (official: 5, 1, 16).
    gin_channels: speaker conditioning width (0 = none).
  """
  out_channels: int
  hidden_channels: int
  kernel_size: int
  dilation_rate: int
  n_layers: int
  gin_channels: int = 0
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, y: jax.Array, y_lengths: jax.Array, g: Optional[jax.Array] = None,
               noise: Optional[jax.Array] = None, train: bool = False):
    """Samples z ~ q(z | y) by reparameterization.

    Args:
      y: [B, T, spec_channels] linear spectrogram.
      y_lengths: [B] int valid frame counts.
      g: [B, 1, gin] speaker embedding or None.
      noise: [B, T, out] standard normal noise; drawn from the 'noise' stream if None.

    Returns:
      (z, m_q, logs_q) each [B, T, out] and y_mask [B, T, 1].
    """
    y_mask = commons.sequence_mask(y_lengths, y.shape[1])[..., None].astype(jnp.float32)
    h = Conv1d(self.hidden_channels, 1, dtype=self.dtype, name="pre")(y) * y_mask
    h = WN(self.hidden_channels, self.kernel_size, self.dilation_rate, self.n_layers,
           gin_channels=self.gin_channels, dtype=self.dtype, name="enc")(h, y_mask, g, train)
    stats = Conv1d(self.out_channels * 2, 1, dtype=self.dtype, name="proj")(h) * y_mask
    stats = stats.astype(jnp.float32)
    m, logs = stats[..., :self.out_channels], stats[..., self.out_channels:]
    if noise is None:
      noise = jax.random.normal(self.make_rng("noise"), m.shape, m.dtype)
    z = (m + noise * jnp.exp(logs)) * y_mask
    return z, m, logs, y_mask
