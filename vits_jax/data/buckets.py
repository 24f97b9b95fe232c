"""Length buckets and the per-epoch batch plan (pure numpy, deterministic).

jit compiles once per input shape, so batches are padded to one of a few fixed shapes
(`max_text_len`, `max_audio_len`) -- the buckets -- and a batch never mixes buckets. The plan
for an epoch is a function of (seed, epoch) and the prepared data alone, so every host computes
the same plan and a restarted job continues exactly where it stopped.
"""

from __future__ import annotations

import functools
import threading

import numpy as np

Bucket = tuple[int, int]  # (max_text_len, max_audio_len)


def round_up(x: int, multiple: int) -> int:
  return -(-int(x) // multiple) * multiple


def default_buckets(lengths: np.ndarray, num_buckets: int = 4, text_multiple: int = 8,
                    audio_multiple: int = 2048, min_audio_len: int = 0) -> list[Bucket]:
  """Buckets at audio-length quantiles, each wide enough for every clip it is meant to hold.

  Args:
    lengths: int [N, 2] (n_tokens, n_samples) of the training split.
    num_buckets: how many shapes (compilations) to allow.
    text_multiple: round text lengths up to a multiple of this.
    audio_multiple: round audio lengths up to a multiple of this (keep it a multiple of the
      hop length so padded audio is a whole number of frames).
    min_audio_len: smallest padded audio length (e.g. the training segment size).

  Returns:
    Buckets sorted by audio length; the last one holds every clip.
  """
  lengths = np.asarray(lengths).reshape(-1, 2)
  if len(lengths) == 0:
    raise ValueError("no clips to make buckets from")
  order = np.argsort(lengths[:, 1], kind="stable")
  buckets = []
  for part in np.array_split(order, min(num_buckets, len(order))):
    if len(part) == 0:
      continue
    buckets.append((round_up(lengths[part, 0].max(), text_multiple),
                    max(round_up(lengths[part, 1].max(), audio_multiple), min_audio_len)))
  # A running max of the text bounds: every clip of slice k then fits bucket k (its audio is
  # at most the slice's longest, its text at most the longest text so far), and a clip that
  # fits bucket k also fits every larger one.
  by_audio: dict[int, int] = {}
  text_max = 0
  for t, a in buckets:
    text_max = max(text_max, t)
    by_audio[a] = text_max  # equal audio bounds after rounding: keep one (the widest)
  return check_buckets([(by_audio[a], a) for a in sorted(by_audio)])


def check_buckets(buckets) -> list[Bucket]:
  """Validates user buckets: both bounds must grow, so a clip that fits one fits the next."""
  out = [(int(t), int(a)) for t, a in buckets]
  if not out:
    raise ValueError("buckets must not be empty")
  for (t0, a0), (t1, a1) in zip(out, out[1:]):
    if not (t0 <= t1 and a0 < a1):
      raise ValueError(f"buckets must grow in both text and audio length, got {out}")
  return out


def assign_buckets(lengths: np.ndarray, buckets: list[Bucket]) -> np.ndarray:
  """Index of the smallest (first) bucket each clip fits in, or -1 when none does.

  Args:
    lengths: int [N, 2] (n_tokens, n_samples).
    buckets: from `check_buckets` (growing in both lengths).

  Returns:
    int [N] bucket index per clip.
  """
  lengths = np.asarray(lengths).reshape(-1, 2)
  out = np.full(len(lengths), -1, dtype=np.int64)
  for b in reversed(range(len(buckets))):
    t, a = buckets[b]
    fits = (lengths[:, 0] <= t) & (lengths[:, 1] <= a)
    out[fits] = b
  return out


class EpochPlanner:
  """Shuffled, bucketed global batches for any epoch.

  In an epoch each bucket's clips are shuffled and cut into global batches; the few clips
  left over in a bucket move up into the next (larger) bucket rather than being dropped, so
  an epoch has exactly floor(n_clips / global_batch) batches and only the largest bucket's
  last remainder (< global_batch clips, a different set each epoch) is left out. Batch order
  is then shuffled across buckets.

  Args:
    bucket_ids: int [N] from `assign_buckets` (-1 = excluded).
    num_buckets: len(buckets).
    global_batch: clips per batch across all hosts.
    seed: shuffle seed (non-negative); epoch e draws from (seed, e).
  """

  def __init__(self, bucket_ids: np.ndarray, num_buckets: int, global_batch: int, seed: int):
    self.members = [np.flatnonzero(bucket_ids == b) for b in range(num_buckets)]
    self.global_batch, self.seed = global_batch, seed
    n = sum(len(m) for m in self.members)
    self.batches_per_epoch = n // global_batch
    self._lock = threading.Lock()

  def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (clip indices int [n_batches, global_batch], bucket int [n_batches])."""
    with self._lock:  # grain reads batches from several threads
      return self._plan(epoch)

  @functools.lru_cache(maxsize=4)
  def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([self.seed, epoch])
    bsz = self.global_batch
    rows, which = [], []
    carry = np.zeros(0, dtype=np.int64)
    for b, members in enumerate(self.members):
      pool = np.concatenate([carry, rng.permutation(members)])
      n_full = len(pool) // bsz
      rows.extend(pool[:n_full * bsz].reshape(n_full, bsz))
      which.extend([b] * n_full)
      carry = pool[n_full * bsz:]
    rows = np.asarray(rows, dtype=np.int64).reshape(-1, bsz)
    which = np.asarray(which, dtype=np.int64)
    order = rng.permutation(len(rows))
    return rows[order], which[order]
