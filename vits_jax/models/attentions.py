"""Transformer encoder of the VITS text encoder: relative-position self-attention + conv FFN.

Self-attention uses learned relative position embeddings for keys and values (Shaw et al.
2018) within a window of +-`window_size` tokens, shared across heads (`emb_rel_k`,
`emb_rel_v`: `[1, 2 * window_size + 1, head_dim]`). Post-norm residual blocks with
channel LayerNorm, as in the official code. Channels-last: `x: [B, T, C]`.
"""

from typing import Any, Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from vits_jax.models.layers import Conv1d, LayerNorm

Dtype = Any


def _band_to_matrix(band: jax.Array) -> jax.Array:
  """[..., T, 2W+1] -> [..., T, T] with out[i, j] = band[i, j - i + W] where |j - i| <= W,
  else 0 (offsets beyond the window have no embedding: the official pad-and-slice of the
  embedding table amounts to that).

  The skew trick: rows padded to T + 2W + 1 and read back with rows of T + 2W put band[i, k]
  at column i + k, so no [T, T, 2W+1] one-hot is built or contracted (that took half the
  text encoder's time at 768 ids).
  """
  *lead, t, w = band.shape
  half = (w - 1) // 2
  flat = jnp.pad(band, [(0, 0)] * len(lead) + [(0, 0), (0, t)]).reshape(*lead, t * (t + w))
  skewed = flat[..., :t * (t + w - 1)].reshape(*lead, t, t + w - 1)
  return skewed[..., half:half + t]


def _matrix_to_band(matrix: jax.Array, window_size: int) -> jax.Array:
  """[..., T, T] -> [..., T, 2W+1]: out[i, k] = matrix[i, i + k - W], 0 outside [0, T)
  (the transpose of `_band_to_matrix`)."""
  *lead, t, _ = matrix.shape
  w = 2 * window_size + 1
  padded = jnp.pad(matrix, [(0, 0)] * len(lead) + [(0, 0), (window_size, window_size)])
  flat = jnp.pad(padded.reshape(*lead, t * (t + w - 1)), [(0, 0)] * len(lead) + [(0, t)])
  return flat.reshape(*lead, t, t + w)[..., :w]


class MultiHeadAttention(nn.Module):
  """Self-attention with windowed relative position embeddings (`window_size=None`: none)."""
  channels: int
  out_channels: int
  n_heads: int
  p_dropout: float = 0.0
  window_size: Optional[int] = None
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array, attn_mask: jax.Array, train: bool = False) -> jax.Array:
    """x: [B, T, C]; attn_mask: [B, 1, T, T] (query, key) validity -> [B, T, out_channels]."""
    assert self.channels % self.n_heads == 0
    b, t, _ = x.shape
    d = self.channels // self.n_heads

    def heads(y):  # [B, T, C] -> [B, H, T, D]; channel index = head * D + d, as in torch.
      return y.reshape(b, t, self.n_heads, d).transpose(0, 2, 1, 3).astype(jnp.float32)

    def proj(name):  # the official initializes the q, k, v kernels with Xavier's uniform
      return Conv1d(self.channels, 1, kernel_init=nn.initializers.xavier_uniform(),
                    dtype=self.dtype, name=name)(x)

    q = heads(proj("conv_q")) / jnp.sqrt(d)
    k = heads(proj("conv_k"))
    v = heads(proj("conv_v"))

    scores = jnp.einsum("bhid,bhjd->bhij", q, k)
    if self.window_size is not None:
      w = 2 * self.window_size + 1
      emb_init = nn.initializers.normal(d ** -0.5)
      emb_rel_k = self.param("emb_rel_k", emb_init, (1, w, d))
      emb_rel_v = self.param("emb_rel_v", emb_init, (1, w, d))
      rel_logits = jnp.einsum("bhid,kd->bhik", q, emb_rel_k[0])        # [B, H, T, W]
      scores = scores + _band_to_matrix(rel_logits)
    # A large finite negative (not -inf) so fully padded query rows stay finite.
    scores = jnp.where(attn_mask > 0, scores, -1e4)
    p_attn = jax.nn.softmax(scores, axis=-1)
    if self.p_dropout > 0:
      p_attn = nn.Dropout(self.p_dropout, deterministic=not train)(p_attn)
    out = jnp.einsum("bhij,bhjd->bhid", p_attn, v)
    if self.window_size is not None:
      rel_weights = _matrix_to_band(p_attn, self.window_size)          # [B, H, T, W]
      out = out + jnp.einsum("bhik,kd->bhid", rel_weights, emb_rel_v[0])
    out = out.transpose(0, 2, 1, 3).reshape(b, t, self.channels)
    return Conv1d(self.out_channels, 1, dtype=self.dtype, name="conv_o")(
        out.astype(self.dtype or x.dtype))


class FFN(nn.Module):
  """Position-wise feed-forward made of two 'same'-padded convs with ReLU."""
  out_channels: int
  filter_channels: int
  kernel_size: int
  p_dropout: float = 0.0
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array, x_mask: jax.Array, train: bool = False) -> jax.Array:
    """x: [B, T, C], x_mask: [B, T, 1] -> [B, T, out_channels] (masked)."""
    pad = ((self.kernel_size - 1) // 2, self.kernel_size // 2)
    x = Conv1d(self.filter_channels, self.kernel_size, padding=pad, dtype=self.dtype,
               name="conv_1")(x * x_mask)
    x = jax.nn.relu(x)
    if self.p_dropout > 0:
      x = nn.Dropout(self.p_dropout, deterministic=not train)(x)
    x = Conv1d(self.out_channels, self.kernel_size, padding=pad, dtype=self.dtype,
               name="conv_2")(x * x_mask)
    return x * x_mask


class Encoder(nn.Module):
  """Stack of post-norm (attention, FFN) blocks; padded positions are masked out."""
  hidden_channels: int
  filter_channels: int
  n_heads: int
  n_layers: int
  kernel_size: int = 1
  p_dropout: float = 0.0
  window_size: int = 4
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array, x_mask: jax.Array, train: bool = False) -> jax.Array:
    """x: [B, T, H], x_mask: [B, T, 1] -> [B, T, H]."""
    attn_mask = x_mask[:, None, :, :] * x_mask[:, None, :, 0][..., None, :]  # [B,1,T,T]
    drop = nn.Dropout(self.p_dropout, deterministic=not train)
    x = x * x_mask
    for i in range(self.n_layers):
      y = MultiHeadAttention(self.hidden_channels, self.hidden_channels, self.n_heads,
                             p_dropout=self.p_dropout, window_size=self.window_size,
                             dtype=self.dtype, name=f"attn_layers_{i}")(x, attn_mask, train)
      x = LayerNorm(name=f"norm_layers_1_{i}")(x + drop(y))
      y = FFN(self.hidden_channels, self.filter_channels, self.kernel_size,
              p_dropout=self.p_dropout, dtype=self.dtype, name=f"ffn_layers_{i}")(
                  x, x_mask, train)
      x = LayerNorm(name=f"norm_layers_2_{i}")(x + drop(y))
    return x * x_mask
