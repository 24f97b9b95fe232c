"""Writes one split's records into ArrayRecord shards, atomically.

Shards are written under temporary names (`.{split}-00000.tmp-PID`) and renamed to their
final names only once the split is complete, when the shard count is known. The manifest,
written after every rename, is the only thing that makes a prepared directory valid, so an
interrupted run leaves nothing a reader will trust.
"""

from __future__ import annotations

import errno
import glob
import os
import re

import numpy as np
from array_record.python import array_record_module

from vits_jax.data import records

# group_size:1 makes every record its own chunk: random access (grain's shuffled reads)
# decompresses only the record asked for.
_OPTIONS = "group_size:1"

_ERRNO_OF = {os.strerror(code): code for code in errno.errorcode}


class ShardWriteError(OSError):
  """array_record could not create, write or close a shard. It reports every such failure
  (read-only folder, full disk, ...) as a RuntimeError like 'open() failed: Read-only file
  system; opening PATH; ...'; this is that failure as an OSError with `strerror` (the reason)
  and `filename` (the shard), so callers handle it like any other failed write."""


def shard_error(error: BaseException, path: str | None = None) -> ShardWriteError | None:
  """`error`, a RuntimeError of array_record's writer, as a `ShardWriteError`.

  Args:
    error: the RuntimeError.
    path: the shard being written; None when the caller does not know whether `error` came
      from array_record: then only its 'open() failed: ...'-style messages are converted
      (the file is taken from their '; opening PATH' part) and anything else gives None.
  """
  text = " ".join(str(error).split())
  failed = re.match(r"\w+\(\) failed: ([^;]*)", text)
  if failed is None and path is None:
    return None
  reason = (failed.group(1) if failed else text.split(";")[0]).strip() or type(error).__name__
  if path is None:
    where = re.search(r"; (?:opening|writing|closing|creating) ([^;]+)", text)
    path = where.group(1).strip() if where else None
  return ShardWriteError(_ERRNO_OF.get(reason, errno.EIO), reason, path)


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
    self._final_paths: list[str] = []   # renamed into place by `finish`
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
    try:
      self._writer.write(data)   # also where a failed open shows: the constructor never raises
    except RuntimeError as e:
      raise shard_error(e, self._tmp_paths[-1]) from None
    self._bytes += len(data)
    self._counts[-1] += 1
    self.lengths.append((len(tokens), len(audio)))
    self.sids.append(sid)
    self.samples += len(audio)

  def _open_next(self) -> None:
    self._close_current()
    path = os.path.join(self.out_dir,
                        f".{self.split}-{len(self._tmp_paths):05d}.tmp-{os.getpid()}")
    try:
      self._writer = array_record_module.ArrayRecordWriter(path, _OPTIONS)
    except RuntimeError as e:
      raise shard_error(e, path) from None
    self._tmp_paths.append(path)
    self._counts.append(0)
    self._bytes = 0

  def _close_current(self) -> None:
    if self._writer is not None:
      writer, self._writer = self._writer, None
      try:
        writer.close()   # flushes: a full disk may show only here
      except RuntimeError as e:
        raise shard_error(e, self._tmp_paths[-1]) from None

  def finish(self) -> dict:
    """Closes, renames shards to their final names, writes the lengths table.

    Returns:
      The split's manifest entry: shards and lengths files (name, bytes, sha256), clip count.

    Raises:
      OSError: a file could not be written (`ShardWriteError` for a shard).
    """
    self._close_current()
    n = len(self._tmp_paths)
    shards = []
    for i, (tmp, count) in enumerate(zip(self._tmp_paths, self._counts)):
      final = os.path.join(self.out_dir, records.shard_name(self.split, i, n, self.run))
      _fsync(tmp)
      os.replace(tmp, final)
      self._final_paths.append(final)
      shards.append({**records.file_entry(final), "records": count})
    lengths_path = os.path.join(self.out_dir, records.lengths_name(self.split, self.run))
    tmp = os.path.join(self.out_dir,
                       f".{records.lengths_name(self.split, self.run)}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
      np.save(f, np.asarray(self.lengths, dtype=np.int32).reshape(-1, 2))
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, lengths_path)
    self._final_paths.append(lengths_path)
    return {"clips": len(self.lengths), "shards": shards,
            "lengths": records.file_entry(lengths_path)}

  def abort(self) -> None:
    """Removes this run's files, temporaries and any `finish` renamed into place (no
    manifest names them yet), also where closing the open one fails (full disk): a failed
    run leaves the space it took free."""
    try:
      self._close_current()
    except Exception:  # pylint: disable=broad-except
      self._writer = None
    for path in self._tmp_paths + self._final_paths:
      if os.path.exists(path):
        os.remove(path)
    for path in glob.glob(os.path.join(self.out_dir, f".*.tmp-{os.getpid()}")):
      if os.path.basename(path).startswith(f".{self.split}"):
        os.remove(path)   # a lengths table whose write failed


def _fsync(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)
