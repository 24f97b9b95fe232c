"""Prior text encoder: token embedding, relative-position Transformer, projection to the
per-token prior N(m_p, exp(logs_p)^2) over the latent z."""

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from vits_jax.models import attentions, commons
from vits_jax.models.layers import Conv1d
from vits_jax.models.modules import Embedding

Dtype = Any


class TextEncoder(nn.Module):
  """Official `TextEncoder` (names `emb`, `encoder`, `proj`).

  Attributes:
    n_vocab: number of token ids.
    out_channels: latent width (inter_channels).
    hidden_channels, filter_channels, n_heads, n_layers, kernel_size, p_dropout: Transformer
      sizes (kernel_size is the FFN conv width).
  """
  n_vocab: int
  out_channels: int
  hidden_channels: int
  filter_channels: int
  n_heads: int
  n_layers: int
  kernel_size: int
  p_dropout: float
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array, x_lengths: jax.Array, train: bool = False):
    """Encodes token ids.

    Args:
      x: [B, T] int token ids.
      x_lengths: [B] int valid lengths.
      train: enables dropout (rng stream 'dropout').

    Returns:
      (h [B, T, hidden], m_p [B, T, out], logs_p [B, T, out], x_mask [B, T, 1]); all zero at
      padded positions.
    """
    x_mask = commons.sequence_mask(x_lengths, x.shape[1])[..., None].astype(jnp.float32)
    h = Embedding(self.n_vocab, self.hidden_channels, init_std=self.hidden_channels ** -0.5,
                  name="emb")(x) * math.sqrt(self.hidden_channels)
    h = attentions.Encoder(self.hidden_channels, self.filter_channels, self.n_heads,
                           self.n_layers, self.kernel_size, self.p_dropout, dtype=self.dtype,
                           name="encoder")(h.astype(self.dtype or h.dtype), x_mask, train)
    stats = Conv1d(self.out_channels * 2, 1, dtype=self.dtype, name="proj")(h) * x_mask
    stats = stats.astype(jnp.float32)
    m, logs = stats[..., :self.out_channels], stats[..., self.out_channels:]
    return h, m, logs, x_mask
