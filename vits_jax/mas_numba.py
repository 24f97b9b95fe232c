"""Monotonic alignment search with numba: the test reference and a CPU fallback.

A line-by-line port of the official algorithm (jaywalnut310/vits, monotonic_align/core.pyx),
including its float32 arithmetic, its -1e9 stand-in for "unreachable", and its tie rule, so
that its paths equal the Cython build's bit for bit.
"""

import numba
import numpy as np

_NEG = np.float32(-1e9)


@numba.njit(nogil=True, cache=False)
def _maximum_path_each(path, value, t_y, t_x):
  """Fills path[:t_y, :t_x] for one item; `value` [T_frames, T_text] float32 is overwritten."""
  zero = np.float32(0.0)
  # Forward: value[y, x] becomes the best score of a monotonic path ending at (y, x), computed
  # only inside the band of cells that can lie on a path from (0, 0) to (t_y - 1, t_x - 1).
  for y in range(t_y):
    for x in range(max(0, t_x + y - t_y), min(t_x, y + 1)):
      v_cur = _NEG if x == y else value[y - 1, x]
      if x == 0:
        v_prev = zero if y == 0 else _NEG
      else:
        v_prev = value[y - 1, x - 1]
      value[y, x] = value[y, x] + max(v_prev, v_cur)
  # Backtrack from the last cell; step to the previous token when it scored strictly higher
  # (a tie stays on the same token) or when the diagonal forces it.
  index = t_x - 1
  for y in range(t_y - 1, -1, -1):
    path[y, index] = 1
    if index != 0 and (index == y or value[y - 1, index] < value[y - 1, index - 1]):
      index -= 1


@numba.njit(nogil=True, cache=False)
def _maximum_path_batch(paths, values, t_ys, t_xs):
  for b in range(paths.shape[0]):
    # The official code indexes out of bounds when t_x > t_y (no monotonic path exists); such an
    # item gets no path here, as in vits_jax.mas.maximum_path.
    if 0 < t_xs[b] <= t_ys[b]:
      _maximum_path_each(paths[b], values[b], t_ys[b], t_xs[b])


def maximum_path_numba(value, mask):
  """Official MAS on the host.

  Args:
    value: [B, T_frames, T_text] float array, the log-likelihood of each frame under each text
      token (the official `neg_cent`). Not modified.
    mask: [B, T_frames, T_text] 0/1 array; lengths are read as in the official code:
      `t_y` = nonzeros of `mask[:, :, 0]`, `t_x` = nonzeros of `mask[:, 0, :]`.

  Returns:
    path: [B, T_frames, T_text] numpy array of 0/1 in value's dtype (float32 for non-float
    input); each item with 1 <= t_x <= t_y has exactly one 1 per frame below t_y.
  """
  value = np.asarray(value)
  mask = np.asarray(mask)
  if value.ndim != 3 or value.shape != mask.shape:
    raise ValueError(
        f"value and mask must both be [B, T_frames, T_text], got {value.shape} and {mask.shape}")
  work = np.array(value, dtype=np.float32, order="C", copy=True)
  paths = np.zeros(value.shape, np.int32)
  t_ys = np.ascontiguousarray((mask[:, :, 0] > 0).sum(1), dtype=np.int32)
  t_xs = np.ascontiguousarray((mask[:, 0, :] > 0).sum(1), dtype=np.int32)
  _maximum_path_batch(paths, work, t_ys, t_xs)
  out_dtype = value.dtype if np.issubdtype(value.dtype, np.floating) else np.float32
  return paths.astype(out_dtype)
