"""The training and validation input pipelines: grain over prepared ArrayRecord shards.

    loader = make_train_loader(config.data.dir, batch_size=64, seed=1234)
    it = iter(loader)              # a grain DatasetIterator (prefetching threads)
    batch = next(it)               # dict of numpy arrays, see `collate`
    state = it.get_state()         # {'next_index': k}: save it with the checkpoint ...
    it = loader.iterator(state)    # ... and continue from exactly the same batch

Batch `i` of the stream is a pure function of (data, seed, i): batch i belongs to epoch
`i // batches_per_epoch`, whose plan (`buckets.EpochPlanner`) is computed from the seed and
the epoch number. So the pipeline is a `grain.MapDataset` indexed by batch number,
`to_iter_dataset` adds threaded prefetch, and the iterator state is a single integer.

Hosts: the plan is made of *global* batches, identical on every host; host p reads rows
[p * B_host, (p + 1) * B_host) of each, so all hosts step through the same buckets (equal
shapes for the global array) and the same number of batches, and read disjoint clips.

Spectrograms are not computed here; the train step computes them on device from `audio`.
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Any

import grain
import numpy as np

from vits_jax.data import buckets as buckets_lib
from vits_jax.data import records

Batch = dict[str, np.ndarray]


class PreparedSplit:
  """One split of a prepared directory: its shards as a grain data source, and lengths.

  Args:
    data_dir: written by data_prep/prepare.py.
    split: 'train' or 'validation'.
    checksums: verify sha256 of every file (sizes are always verified).
  """

  def __init__(self, data_dir: str, split: str = "train", checksums: bool = False):
    self.manifest = records.load_manifest(data_dir, checksums=checksums)
    if split not in self.manifest["splits"]:
      raise ValueError(f"{data_dir} has no split {split!r}")
    entry = self.manifest["splits"][split]
    self.data_dir = data_dir
    self.paths = [os.path.join(data_dir, s["file"]) for s in entry["shards"]]
    counts = [s.get("records") for s in entry["shards"]]
    # First record index of each shard, to name the shard a failed read came from.
    self._starts = (np.cumsum([0] + counts[:-1]) if all(isinstance(c, int) for c in counts)
                    else None)
    lengths_path = os.path.join(data_dir, entry["lengths"]["file"])
    try:
      self.lengths = np.load(lengths_path)
    except (ValueError, EOFError, OSError) as e:
      raise ValueError(_unreadable(lengths_path, e, data_dir)) from None
    if self.lengths.ndim != 2 or self.lengths.shape[1:] != (2,):
      raise ValueError(f"{lengths_path} holds an array of shape {self.lengths.shape}, not "
                       "[clips, 2]; re-run data_prep/prepare.py --out "
                       f"{shlex.quote(str(data_dir))} --force")
    self.source = self._open(self.paths) if self.paths else None
    n = len(self.source) if self.source is not None else 0
    if n != len(self.lengths):
      raise ValueError(f"{data_dir}: {split} has {n} records but {len(self.lengths)} lengths; "
                       "re-run data_prep/prepare.py")

  def __len__(self) -> int:
    return len(self.lengths)

  def _open(self, paths):
    """The shards as one grain data source; a shard whose structure is damaged (same size,
    other bytes: the manifest's size check passes) is one ValueError naming it."""
    try:
      return grain.sources.ArrayRecordDataSource(paths)
    except Exception as e:  # pylint: disable=broad-except  (array_record: RuntimeError)
      error = e
    for path in paths:   # which one: opening a shard reads only its footer
      try:
        grain.sources.ArrayRecordDataSource([path])
      except Exception as e:  # pylint: disable=broad-except
        raise ValueError(_unreadable(path, e, self.data_dir)) from None
    raise ValueError(_unreadable(self.data_dir, error, self.data_dir)) from None

  def _shard_of(self, index: int) -> str:
    if self._starts is None or not self.paths:
      return self.data_dir
    return self.paths[max(0, int(np.searchsorted(self._starts, index, side="right")) - 1)]

  def read(self, indices) -> list[dict[str, Any]]:
    """Decoded records (see `records.decode_record`) for the given record indices.

    Raises:
      ValueError: a record cannot be read or decoded (a corrupted shard); names the shard.
    """
    out = []
    for i in indices:
      try:
        out.append(records.decode_record(self.source[int(i)]))
      except MemoryError:
        raise
      except Exception as e:  # pylint: disable=broad-except  (any damage to the bytes)
        raise ValueError(_unreadable(self._shard_of(int(i)), e, self.data_dir,
                                     f"record {int(i)}")) from None
    return out


def _unreadable(path: str, error: BaseException, data_dir: str, what: str = "") -> str:
  """One line: which prepared file failed, why, and the fix."""
  cause = " ".join(str(error).split())[:300] or type(error).__name__
  what = f" ({what})" if what else ""
  return (f"{path}{what}: cannot read the prepared data, the file is corrupt or unreadable "
          f"({cause}); re-run data_prep/prepare.py --out {shlex.quote(str(data_dir))} --force")


def collate(recs: list[dict[str, Any]], bucket: tuple[int, int],
            weight: np.ndarray | None = None) -> Batch:
  """Pads decoded records to one bucket's shape.

  Args:
    recs: B decoded records.
    bucket: (max_text_len, max_audio_len).
    weight: float [B], 0 for filler rows of a validation batch; default all ones.

  Returns:
    text int32 [B, T_text] (0-padded), text_lengths int32 [B], audio int16 [B, T_audio]
    (the shards' PCM, 0-padded: half the host-to-device bytes of float32; the step scales
    it by `data.max_wav_value` on device), audio_lengths int32 [B], sid int32 [B], weight
    float32 [B].
  """
  t_max, a_max = bucket
  bsz = len(recs)
  text = np.zeros((bsz, t_max), np.int32)
  audio = np.zeros((bsz, a_max), np.int16)
  text_lengths = np.zeros(bsz, np.int32)
  audio_lengths = np.zeros(bsz, np.int32)
  sid = np.zeros(bsz, np.int32)
  for b, rec in enumerate(recs):
    tok, wav = rec["tokens"], rec["audio"]
    if len(tok) > t_max or len(wav) > a_max:
      raise ValueError(f"clip {rec['id']} ({len(tok)} tokens, {len(wav)} samples) does not "
                       f"fit bucket {bucket}")
    text[b, :len(tok)] = tok
    audio[b, :len(wav)] = wav
    text_lengths[b], audio_lengths[b], sid[b] = len(tok), len(wav), rec["sid"]
  weight = np.ones(bsz, np.float32) if weight is None else np.asarray(weight, np.float32)
  return {"text": text, "text_lengths": text_lengths, "audio": audio,
          "audio_lengths": audio_lengths, "sid": sid, "weight": weight}


def host_share(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=import-outside-toplevel  # only for the host topology
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  return process_index, process_count


class Loader:
  """A stream of padded batches: `dataset[i]` is batch i; iterate for prefetched batches.

  Attributes:
    dataset: grain.MapDataset of batches (random access, length = num_batches).
    buckets: the padded shapes, [(max_text_len, max_audio_len)].
    batches_per_epoch: batches in one pass over the split.
    host_batch_size: rows per batch on this host (global batch / process count).
    excluded: clips that fit no bucket (never yielded).
  """

  def __init__(self, dataset: grain.MapDataset, buckets, batches_per_epoch: int,
               host_batch_size: int, excluded: int, read_options: grain.ReadOptions,
               bucket_of_batch=None):
    self.dataset, self.buckets = dataset, buckets
    self._bucket_of_batch = bucket_of_batch
    self.batches_per_epoch, self.host_batch_size = batches_per_epoch, host_batch_size
    self.excluded = excluded
    self._read_options = read_options

  def __len__(self) -> int:
    return len(self.dataset)

  def iterator(self, state: dict[str, Any] | None = None) -> grain.DatasetIterator:
    """A prefetching iterator, positioned by a state from `get_state()` if given."""
    it = iter(self.dataset.to_iter_dataset(self._read_options))
    if state is not None:
      it.set_state(state)
    return it

  def __iter__(self):
    return self.iterator()

  def buckets_in_order(self, start: int, stop: int) -> list[tuple[int, int]]:
    """The buckets batches [start, stop) use, in the order of their first use (known from
    the plan, so every program a run needs can be compiled before it is reached). Looks at
    most 3 epochs ahead."""
    per_epoch = max(self.batches_per_epoch, 1)
    order, i = [], int(start)
    stop = min(int(stop), (int(start) // per_epoch + 3) * per_epoch)
    while i < stop and len(order) < len(self.buckets):
      epoch, pos = divmod(i, per_epoch)
      which = self._bucket_of_batch(epoch)
      for b in which[pos:pos + (stop - i)]:
        if self.buckets[b] not in order:
          order.append(self.buckets[b])
      i = (epoch + 1) * per_epoch
    return order

  def position(self, state: dict[str, Any]) -> tuple[int, int]:
    """(epoch, batch within the epoch) of the next batch an iterator in `state` yields."""
    return divmod(int(state["next_index"]), max(self.batches_per_epoch, 1))


def _resolve_buckets(lengths, buckets, num_buckets, text_multiple, audio_multiple,
                     min_audio_len):
  if buckets is not None:
    return buckets_lib.check_buckets(buckets)
  return buckets_lib.default_buckets(lengths, num_buckets, text_multiple, audio_multiple,
                                     min_audio_len)


def make_train_loader(data_dir: str, batch_size: int, seed: int, *, buckets=None,
                      num_buckets: int = 4, num_epochs: int | None = None,
                      process_index: int | None = None, process_count: int | None = None,
                      text_multiple: int = 8, audio_multiple: int = 2048,
                      min_audio_len: int = 0, num_threads: int | None = None,
                      prefetch: int = 8, checksums: bool = False) -> Loader:
  """Shuffled, bucketed training batches; same seed, same batches in the same order.

  Args:
    data_dir: prepared directory.
    batch_size: GLOBAL batch size (all hosts); divisible by the process count.
    seed: shuffle seed (epoch e uses (seed, e)).
    buckets: [(max_text_len, max_audio_len)] growing in both; default: `num_buckets`
      audio-length quantiles of the training split (deterministic from the data).
    num_buckets: see above.
    num_epochs: None streams forever.
    process_index, process_count: this host's share; default jax.process_index/count().
    text_multiple, audio_multiple, min_audio_len: rounding of default buckets; keep
      audio_multiple a multiple of the hop length, min_audio_len >= the segment size.
    num_threads, prefetch: grain read threads and prefetch buffer (batches). Default threads:
      half the cores, at most 4 (on 2 busy cores one thread was fastest: batching is
      memory-bound and holds the GIL part of the time).
    checksums: verify every shard's sha256 first.

  Returns:
    A `Loader`.
  """
  pidx, pcount = host_share(process_index, process_count)
  if batch_size <= 0 or batch_size % pcount:
    raise ValueError(f"batch_size {batch_size} must be a positive multiple of the "
                     f"{pcount} host(s)")
  split = PreparedSplit(data_dir, "train", checksums)
  bks = _resolve_buckets(split.lengths, buckets, num_buckets, text_multiple, audio_multiple,
                         min_audio_len)
  ids = buckets_lib.assign_buckets(split.lengths, bks)
  planner = buckets_lib.EpochPlanner(ids, len(bks), batch_size, seed)
  per_epoch = planner.batches_per_epoch
  if per_epoch == 0:
    raise ValueError(f"{data_dir}: {int((ids >= 0).sum())} training clips fit the buckets, "
                     f"fewer than one batch of {batch_size}")
  host_bsz = batch_size // pcount
  rows = slice(pidx * host_bsz, (pidx + 1) * host_bsz)

  def get_batch(i: int) -> Batch:
    epoch, pos = divmod(int(i), per_epoch)
    plan, which = planner.plan(epoch)
    return collate(split.read(plan[pos, rows]), bks[which[pos]])

  if num_threads is None:
    num_threads = max(1, min(4, (os.cpu_count() or 2) // 2))
  total = sys.maxsize if num_epochs is None else per_epoch * num_epochs
  dataset = grain.MapDataset.range(total).map(get_batch)
  return Loader(dataset, bks, per_epoch, host_bsz, int((ids < 0).sum()),
                grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch),
                bucket_of_batch=lambda epoch: planner.plan(epoch)[1])


def make_eval_loader(data_dir: str, batch_size: int, *, buckets=None, split: str = "validation",
                     process_index: int | None = None, process_count: int | None = None,
                     num_threads: int = 2, prefetch: int = 4, text_multiple: int = 8,
                     audio_multiple: int = 2048, min_audio_len: int = 0) -> Loader:
  """Every clip of a split once, in a fixed order, for evaluation.

  Clips go bucket by bucket in record order; a bucket's last batch is filled up with copies
  of its first clip whose `weight` is 0, so no clip is dropped and shapes stay fixed.

  Args:
    data_dir: prepared directory.
    batch_size: GLOBAL batch size; divisible by the process count.
    buckets: padded shapes; pass the training loader's buckets to reuse its compilations
      (a bucket big enough for the longest clip is added when they do not cover it).
    split: usually 'validation'.
    Other args: as `make_train_loader`.

  Returns:
    A `Loader` of `len(loader)` batches (iterate it again for another pass).
  """
  pidx, pcount = host_share(process_index, process_count)
  if batch_size <= 0 or batch_size % pcount:
    raise ValueError(f"batch_size {batch_size} must be a positive multiple of the "
                     f"{pcount} host(s)")
  data = PreparedSplit(data_dir, split)
  if len(data) == 0:
    raise ValueError(f"{data_dir}: split {split!r} is empty")
  lengths = data.lengths
  if buckets is None:
    bks = buckets_lib.default_buckets(lengths, 4, text_multiple, audio_multiple, min_audio_len)
  else:
    bks = buckets_lib.check_buckets(buckets)
    t_need, a_need = lengths[:, 0].max(), lengths[:, 1].max()
    if t_need > bks[-1][0] or a_need > bks[-1][1]:
      bks = bks + [(max(bks[-1][0], buckets_lib.round_up(t_need, text_multiple)),
                    buckets_lib.round_up(max(bks[-1][1] + 1, a_need), audio_multiple))]
  ids = buckets_lib.assign_buckets(lengths, bks)
  plan, which, weights = [], [], []
  for b in range(len(bks)):
    members = np.flatnonzero(ids == b)
    for start in range(0, len(members), batch_size):
      chunk = members[start:start + batch_size]
      fill = batch_size - len(chunk)
      plan.append(np.concatenate([chunk, np.full(fill, chunk[0])]))
      weights.append(np.concatenate([np.ones(len(chunk)), np.zeros(fill)]))
      which.append(b)
  host_bsz = batch_size // pcount
  rows = slice(pidx * host_bsz, (pidx + 1) * host_bsz)

  def get_batch(i: int) -> Batch:
    return collate(data.read(plan[i][rows]), bks[which[i]], weights[i][rows])

  dataset = grain.MapDataset.range(len(plan)).map(get_batch)
  return Loader(dataset, bks, len(plan), host_bsz, 0,
                grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
