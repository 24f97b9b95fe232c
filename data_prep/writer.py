"""Writes one split's records into ArrayRecord shards, atomically.

Shards are written under temporary names (`.{split}-00000.tmp-PID`) and renamed to their
final names only once the split is complete, when the shard count is known. The manifest,
written after every rename, is the only thing that makes a prepared directory valid, so an
interrupted run leaves nothing a reader will trust.
"""

from __future__ import annotations

import os

import numpy as np
from array_record.python import array_record_module

from vits_jax.data import records

# group_size:1 makes every record its own chunk: random access (grain's shuffled reads)
# decompresses only the record asked for.
_OPTIONS = "group_size:1"


class SplitWriter:
  """Streams records of one split into size-capped shards.

  Args:
    out_dir: the output directory.
    split: 'train' or 'validation'.
    shard_bytes: start a new shard once the current one holds this many bytes.
  """

  def __init__(self, out_dir: str, split: str, shard_bytes: int, run: str = ""):
    self.out_dir, self.split, self.shard_bytes = out_dir, split, shard_bytes
    self.run = run
    self._tmp_paths: list[str] = []
    self._counts: list[int] = []
    self._writer = None
    self._bytes = 0
    self.lengths: list[tuple[int, int]] = []  # (n_tokens, n_samples) per record
    self.sids: list[int] = []
    self.samples = 0

  def add(self, clip_id: str, speaker: str, sid: int, text: str, tokens, audio) -> None:
    data = records.encode_record(clip_id, speaker, sid, text, tokens, audio)
    if self._writer is None or self._bytes >= self.shard_bytes:
      self._open_next()
    self._writer.write(data)
    self._bytes += len(data)
    self._counts[-1] += 1
    self.lengths.append((len(tokens), len(audio)))
    self.sids.append(sid)
    self.samples += len(audio)

  def _open_next(self) -> None:
    self._close_current()
    path = os.path.join(self.out_dir,
                        f".{self.split}-{len(self._tmp_paths):05d}.tmp-{os.getpid()}")
    self._writer = array_record_module.ArrayRecordWriter(path, _OPTIONS)
    self._tmp_paths.append(path)
    self._counts.append(0)
    self._bytes = 0

  def _close_current(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def finish(self) -> dict:
    """Closes, renames shards to their final names, writes the lengths table.

    Returns:
      The split's manifest entry: shards and lengths files (name, bytes, sha256), clip count.
    """
    self._close_current()
    n = len(self._tmp_paths)
    shards = []
    for i, (tmp, count) in enumerate(zip(self._tmp_paths, self._counts)):
      final = os.path.join(self.out_dir, records.shard_name(self.split, i, n, self.run))
      _fsync(tmp)
      os.replace(tmp, final)
      shards.append({**records.file_entry(final), "records": count})
    lengths_path = os.path.join(self.out_dir, records.lengths_name(self.split, self.run))
    tmp = os.path.join(self.out_dir,
                       f".{records.lengths_name(self.split, self.run)}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
      np.save(f, np.asarray(self.lengths, dtype=np.int32).reshape(-1, 2))
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, lengths_path)
    return {"clips": len(self.lengths), "shards": shards,
            "lengths": records.file_entry(lengths_path)}

  def abort(self) -> None:
    """Removes this run's temporaries, also where closing the open one fails (full disk)."""
    try:
      self._close_current()
    except Exception:  # pylint: disable=broad-except
      self._writer = None
    for path in self._tmp_paths:
      if os.path.exists(path):
        os.remove(path)


def _fsync(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)
