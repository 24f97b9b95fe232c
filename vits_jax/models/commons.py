"""Sequence helpers shared by the VITS modules: masks, alignment paths, segment slicing.

Channels-last throughout: sequences are `[B, T, C]`, masks `[B, T, 1]` float.
"""

from typing import Optional, Tuple

import jax
import jax.numpy as jnp

LRELU_SLOPE = 0.1


def sequence_mask(lengths: jax.Array, max_length: Optional[int] = None) -> jax.Array:
  """Boolean mask of valid positions.

  Args:
    lengths: [B] int, valid length of each item.
    max_length: static length T; defaults to max(lengths) (only outside jit).

  Returns:
    [B, T] bool, True where position < length.
  """
  if max_length is None:
    max_length = int(jnp.max(lengths))
  return jnp.arange(max_length)[None, :] < lengths[:, None]


def generate_path(duration: jax.Array, mask: jax.Array) -> jax.Array:
  """Hard monotonic alignment from integer durations.

  Token t covers frames [cum[t-1], cum[t]) where cum is the running sum of durations.

  Args:
    duration: [B, T_x] (float or int), per-token durations in frames.
    mask: [B, T_y, T_x], valid (frame, token) pairs.

  Returns:
    [B, T_y, T_x] float path (1 where frame y is spoken by token x), times `mask`.
  """
  t_y = mask.shape[1]
  cum = jnp.cumsum(duration, axis=-1)                           # [B, T_x]
  frames = jnp.arange(t_y, dtype=cum.dtype)[None, :, None]     # [1, T_y, 1]
  below_end = (frames < cum[:, None, :]).astype(mask.dtype)     # frame < cum[t]
  below_start = jnp.pad(below_end, ((0, 0), (0, 0), (1, 0)))[:, :, :-1]  # frame < cum[t-1]
  return (below_end - below_start) * mask


def slice_segments(x: jax.Array, ids_str: jax.Array, segment_size: int) -> jax.Array:
  """Cuts `segment_size` steps starting at `ids_str[b]` out of each item.

  Args:
    x: [B, T, C].
    ids_str: [B] int start positions (clipped so the window stays inside T).
    segment_size: static window length.

  Returns:
    [B, segment_size, C].
  """
  if x.shape[1] < segment_size:  # too short for one window: zero-pad (as masked frames)
    x = jnp.pad(x, ((0, 0), (0, segment_size - x.shape[1]), (0, 0)))
  ids = jnp.clip(ids_str, 0, x.shape[1] - segment_size)
  return jax.vmap(
      lambda xb, i: jax.lax.dynamic_slice_in_dim(xb, i, segment_size, axis=0))(x, ids)


def rand_slice_segments(rng: jax.Array, x: jax.Array, x_lengths: Optional[jax.Array],
                        segment_size: int) -> Tuple[jax.Array, jax.Array]:
  """Random window of `segment_size` steps inside each item's valid length.

  The start is uniform on [0, length - segment_size], as in the official code; items shorter
  than the window start at 0.

  Args:
    rng: PRNG key.
    x: [B, T, C].
    x_lengths: [B] int valid lengths, or None for T.
    segment_size: static window length.

  Returns:
    ([B, segment_size, C] slices, [B] int32 start positions).
  """
  b, t = x.shape[:2]
  if x_lengths is None:
    x_lengths = jnp.full((b,), t)
  ids_str_max = jnp.maximum(x_lengths - segment_size + 1, 1)
  ids_str = (jax.random.uniform(rng, (b,)) * ids_str_max).astype(jnp.int32)
  ids_str = jnp.clip(ids_str, 0, jnp.maximum(x_lengths - segment_size, 0))
  return slice_segments(x, ids_str, segment_size), ids_str


def upsample_mask(mask: jax.Array, factor: int, length: int) -> jax.Array:
  """Repeats a frame mask `factor` times and pads/crops it to `length` steps.

  Args:
    mask: [B, T, 1].
    factor: upsampling factor.
    length: output length (a transposed conv may give T * factor + a few steps).

  Returns:
    [B, length, 1].
  """
  up = jnp.repeat(mask, factor, axis=1)
  if up.shape[1] >= length:
    return up[:, :length]
  return jnp.pad(up, ((0, 0), (0, length - up.shape[1]), (0, 0)))


def threefry_key(key):
  """A raw uint32[2] key (`jax.random.PRNGKey(seed)` with JAX's default flags) as a typed
  threefry key, so the noise of a seed does not depend on the host's
  `jax_default_prng_impl`; a typed key, or the raw key of another kind (a training run's
  under the host's implementation), is returned as it is."""
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) or key.shape[-1:] != (2,):
    return key
  return jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32), impl="threefry2x32")


def frame_normal(key: jax.Array, seeds: jax.Array, length: int, channels: int,
                 positions: Optional[jax.Array] = None, dtype=jnp.float32) -> jax.Array:
  """Standard normal noise drawn independently per item (seed) and per position.

  The noise at a position comes from `fold_in(fold_in(key, seed), position)` only, so an
  item gets the same noise alone, inside any padded batch, and in any window of frames.

  Args:
    key: PRNG key.
    seeds: [B] per-item seeds, or [B, T] per-position seeds.
    length: T; channels: C.
    positions: [B, T] int positions (default 0..T-1 for every item).

  Returns:
    [B, T, C] noise.
  """
  seeds = jnp.asarray(seeds, jnp.int32)
  b = seeds.shape[0]
  if seeds.ndim == 1:
    seeds = jnp.broadcast_to(seeds[:, None], (b, length))
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32)[None], (b, length))
  positions = jnp.maximum(jnp.asarray(positions, jnp.int32), 0)

  def one(seed, position):
    k = jax.random.fold_in(jax.random.fold_in(key, seed), position)
    return jax.random.normal(k, (channels,), dtype)

  return jax.vmap(jax.vmap(one))(seeds, positions)
