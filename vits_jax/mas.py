"""Monotonic alignment search (MAS) on the device, inside the jitted train step.

VITS aligns text to frames with the most likely monotonic path through the matrix of
log-likelihoods `value[b, y, x]` of frame y under text token x: every frame takes one token,
the path starts at (0, 0), ends at (t_y - 1, t_x - 1), and each frame either stays on the
token of the previous frame or moves to the next one. This module returns exactly the path of
the official Cython code (jaywalnut310/vits, monotonic_align/core.pyx), ties included, with
no host round trip.

How it is laid out (all static shapes, one compiled loop for any T):

- Forward: a `fori_loop` over frames. The carry is one DP row `[B, T_text]` (text axis
  contiguous, batch vectorized); each step is one shift, one max and one add per cell, exactly
  the official float32 arithmetic. No float copy of the DP matrix is kept: each step stores one
  bit per cell, whether the previous row scored strictly higher one token to the left
  (`V[y-1, x] < V[y-1, x-1]`, the official backtrack test), packed 8 frames to a byte.
- Backtrack: a `fori_loop` over frames in reverse carrying the token index per item; each step
  gathers one byte per item from its frame group's `[B, T_text]` bytes. The path is then the
  one-hot of each frame's token.

Scratch memory is T_frames * T_text / 8 bytes per item for the bits plus a few rows, against
4 bytes per cell for the path itself.

The DP rows are computed over the whole `[B, T_text]` rectangle, not the official band of
reachable cells, which vectorizes across a batch of different lengths; the result is the same
because a cell inside the band only ever reads cells inside the band, and the backtrack only
visits cells inside the band. So the padding (frames >= t_y, tokens >= t_x) can hold anything,
even NaN or huge values, and never leaks into a path.
"""

import jax
import jax.numpy as jnp
from jax import lax

# The official code's stand-in for "unreachable" (its `max_neg_val`). Keeping the same finite
# constant, rather than -inf, reproduces its arithmetic exactly, also for very negative values.
_NEG = -1e9
_WORD = 8  # frames per packed byte of direction bits


def maximum_path(value: jax.Array, mask: jax.Array) -> jax.Array:
  """Most likely monotonic alignment, equal to the official `monotonic_align.maximum_path`.

  Jittable, no host callback; the graph size does not depend on the lengths. No gradient flows
  through it (the input is wrapped in `stop_gradient`), so it can sit inside a differentiated
  loss.

  Args:
    value: [B, T_frames, T_text] float, the official `neg_cent`: log-likelihood of each frame
      under each text token. Computed in float32, as the official code does.
    mask: [B, T_frames, T_text] 0/1, valid frame x valid token. Lengths are read as in the
      official code: `t_y = mask[:, :, 0].sum(1)` frames, `t_x = mask[:, 0, :].sum(1)` tokens.

  Returns:
    path: [B, T_frames, T_text] 0/1 in value's dtype, one 1 per frame below t_y (at the
    frame's token), zeros elsewhere. An item with t_x > t_y has no monotonic path (the official
    code reads out of bounds there) and gets all zeros, as does an empty item.
  """
  if value.ndim != 3 or value.shape != mask.shape:
    raise ValueError(
        f"value and mask must both be [B, T_frames, T_text], got {value.shape} and {mask.shape}")
  _, t_frames, t_text = value.shape
  v = lax.stop_gradient(value).astype(jnp.float32)
  mask = lax.stop_gradient(mask)
  t_y = jnp.sum(mask[:, :, 0] > 0, axis=1, dtype=jnp.int32)
  t_x = jnp.sum(mask[:, 0, :] > 0, axis=1, dtype=jnp.int32)

  bits = _forward_bits(v)
  token = _backtrack(bits, t_y, t_x, t_frames)  # [B, T_frames], -1 off the path
  return (token[:, :, None] == jnp.arange(t_text)).astype(value.dtype)


def _forward_bits(v: jax.Array) -> jax.Array:
  """Runs the DP over all frames and returns the packed direction bits.

  Args:
    v: [B, T_frames, T_text] float32.

  Returns:
    bits: [B, ceil(T_frames / 8), T_text] uint8; bit (y % 8) of `bits[b, y // 8, x]` is
    `V[y-1, x] < V[y-1, x-1]` (meaningless for x == 0 or y == 0, never read there).
  """
  batch, t_frames, t_text = v.shape
  neg = jnp.float32(_NEG)
  xs = jnp.arange(t_text)

  def step(y, carry):
    prev, bits = carry  # prev: V[y-1], [B, T_text]
    # Direction bits of row y come from row y-1 alone; OR them into the byte of this frame
    # group (the byte is fresh at the group's first frame).
    left_higher = jnp.pad(prev[:, 1:] < prev[:, :-1], ((0, 0), (1, 0)))
    shift = (y % _WORD).astype(jnp.uint8)
    old = lax.dynamic_index_in_dim(bits, y // _WORD, axis=1, keepdims=False)
    byte = jnp.where(shift == 0, jnp.uint8(0), old) | (left_higher.astype(jnp.uint8) << shift)
    bits = lax.dynamic_update_index_in_dim(bits, byte, y // _WORD, axis=1)
    # V[y, x] = value[y, x] + max(V[y-1, x-1], V[y-1, x]), with the official boundary values:
    # coming from "before the first token" scores 0 at frame 0 and -1e9 after it, and the
    # diagonal cell x == y cannot come from the same token (frame y-1 cannot be on token y).
    first = jnp.where(y == 0, jnp.float32(0.0), neg)
    from_left = jnp.concatenate([jnp.broadcast_to(first, (batch, 1)), prev[:, :-1]], axis=1)
    from_same = jnp.where(xs == y, neg, prev)
    row = lax.dynamic_index_in_dim(v, y, axis=1, keepdims=False)
    return row + jnp.maximum(from_left, from_same), bits

  init = (jnp.full((batch, t_text), neg),
          jnp.zeros((batch, -(-t_frames // _WORD), t_text), jnp.uint8))
  _, bits = lax.fori_loop(0, t_frames, step, init)
  return bits


def _backtrack(bits: jax.Array, t_y: jax.Array, t_x: jax.Array, t_frames: int) -> jax.Array:
  """Follows the direction bits back from (t_y - 1, t_x - 1).

  Args:
    bits: [B, ceil(T_frames / 8), T_text] uint8 from `_forward_bits`.
    t_y, t_x: [B] int32 frame and token counts.
    t_frames: T_frames.

  Returns:
    token: [B, T_frames] int32, the token of each frame on the path, -1 where there is none.
  """
  batch = bits.shape[0]
  has_path = (t_x >= 1) & (t_x <= t_y)

  def step(i, carry):
    index, token = carry
    y = t_frames - 1 - i
    on_path = has_path & (y < t_y)
    token = lax.dynamic_update_index_in_dim(token, jnp.where(on_path, index, -1), y, axis=0)
    # Slice this frame group's bytes first: a gather straight from the whole bit array is
    # costed as big enough to split across threads on CPU, a thread hop per frame.
    group = lax.dynamic_index_in_dim(bits, y // _WORD, axis=1, keepdims=False)  # [B, T_text]
    byte = jnp.take_along_axis(group, jnp.maximum(index, 0)[:, None], axis=1)[:, 0]
    left_higher = ((byte >> (y % _WORD).astype(jnp.uint8)) & 1).astype(bool)
    move = on_path & (index != 0) & ((index == y) | left_higher)
    return index - move.astype(jnp.int32), token

  # Frame-major token rows, so each step writes one contiguous row.
  init = (t_x - 1, jnp.full((t_frames, batch), -1, jnp.int32))
  _, token = lax.fori_loop(0, t_frames, step, init)
  return token.T


def maximum_path_numba(value, mask):
  """The official algorithm on the host with numba (numpy in, numpy out); see mas_numba."""
  from vits_jax.mas_numba import maximum_path_numba as impl  # numba is slow to import
  return impl(value, mask)
