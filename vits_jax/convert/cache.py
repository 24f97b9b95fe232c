"""A cache of converted voices: a second `load_voice` of a Piper voice reads arrays.

Reading a Piper `.onnx` means parsing the protobuf, recovering the hyperparameters from the
graph, converting ~600 tensors to our layout and checking them against the model: about a
second each time a process starts. What inference needs from that -- the config, the
frontend description and the params with weight norm folded (`torch_names.
fold_weight_norm`) -- is stored once as one `.voice` file under `<compile cache>/voices/`
(beside the compiled programs; `VITS_JAX_XLA_CACHE=''` turns both off): a header line, a
JSON index (meta, and each array's name, dtype, shape and offset) and the arrays' bytes at
64-byte aligned offsets, read with one read into one buffer that every array is a view of
(an `.npz` of the same params took 0.2 s to read, most of it parsing 350 array headers).
An entry is named by the voice file's path, size, mtime, ctime and inode and by the
converter's code, so an edited voice or a new version of this package never reads a stale
entry; an unreadable, truncated or damaged entry (its arrays' CRC-32 differs) is ignored
and rewritten. Only a file this process
wrote completely is ever read (written to a temporary name, then renamed). The cache stays
small: writing an entry removes the older entries of the same voice path (an edited voice,
an older version of the converter), and only the `MAX_ENTRIES` most recently used entries
are kept (a read marks an entry used).
"""

import functools
import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

FORMAT = 2
_MAGIC = b"vits_jax-voice-2"
_ALIGN = 64
# Voices kept converted (each about the size of its ONNX file: 62 MB for a medium voice).
MAX_ENTRIES = 8


def entry_path(files) -> Optional[Path]:
  """The cache file for a voice read from `files` (paths), or None if caching is off."""
  from vits_jax import xla_cache
  root = xla_cache.cache_dir()
  if not root:
    return None
  files = [Path(f).resolve() for f in files]
  where = hashlib.sha256(repr([str(f) for f in files]).encode())
  h = hashlib.sha256(repr((FORMAT, _code_hash())).encode())
  for f in files:
    st = f.stat()
    h.update(repr((str(f), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)).encode())
  # <the voice's paths>-<their sizes, times and the converter>: one voice, one prefix.
  return Path(root) / "voices" / f"{where.hexdigest()[:16]}-{h.hexdigest()[:16]}.voice"


def read(path: Optional[Path]) -> Optional[Dict[str, Any]]:
  """{'meta': dict, 'params': nested dict} of an entry, or None (absent or unreadable)."""
  if path is None or not path.is_file():
    return None
  try:
    with open(path, "rb") as f:
      magic, n_index = f.readline().split()
      if magic != _MAGIC:
        return None
      index = json.loads(f.read(int(n_index)))
      start = _round_up(f.tell(), _ALIGN)
      f.seek(start)
      data = np.fromfile(f, np.uint8)
    if data.size != index["size"] or index.get("crc32") != zlib.crc32(data):
      return None   # (cut short, or damaged in place: its weights would be wrong)
    _touch(path)
    params: Dict[str, Any] = {}
    for name, dtype, shape, offset in index["arrays"]:
      dtype = np.dtype(dtype)
      count = int(np.prod(shape, dtype=np.int64))
      if offset < 0 or offset + count * dtype.itemsize > data.size:
        return None
      node = params
      *parents, leaf = name.split("/")
      for p in parents:
        node = node.setdefault(p, {})
      node[leaf] = data[offset:offset + count * dtype.itemsize].view(dtype).reshape(shape)
    return {"meta": index["meta"], "params": params}
  except Exception:  # pylint: disable=broad-except  (a damaged entry: convert again)
    return None


def _round_up(n: int, k: int) -> int:
  return -(-int(n) // k) * k


def write(path: Optional[Path], meta: Dict[str, Any], params: Dict[str, Any]) -> None:
  """Stores an entry; a read-only or full disk only means no cache."""
  if path is None:
    return
  flat = {}

  def walk(node, prefix):
    for k, v in node.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}/")
      else:
        flat[f"{prefix}{k}"] = np.ascontiguousarray(np.asarray(v))
  walk(params, "")
  arrays, offset = [], 0
  for name, a in flat.items():
    arrays.append([name, a.dtype.str, list(a.shape), offset])
    offset = _round_up(offset + a.nbytes, _ALIGN)
  # (a CRC of the arrays' bytes as read back, padding included: 27 ms for joe's 63 MB
  # where sha256 took 47, on every load)
  crc = 0
  for (_, _, _, at), a in zip(arrays, flat.values()):
    crc = zlib.crc32(np.ascontiguousarray(a).view(np.uint8).reshape(-1), crc)
    crc = zlib.crc32(b"\0" * (_round_up(at + a.nbytes, _ALIGN) - at - a.nbytes), crc)
  index = json.dumps({"meta": meta, "arrays": arrays, "size": offset,
                      "crc32": crc}).encode()
  head = _MAGIC + b" " + str(len(index)).encode() + b"\n" + index
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as f:
      f.write(head + b"\0" * (_round_up(len(head), _ALIGN) - len(head)))
      for (_, _, _, at), a in zip(arrays, flat.values()):
        f.write(a.tobytes())
        f.write(b"\0" * (_round_up(at + a.nbytes, _ALIGN) - at - a.nbytes))
    os.replace(tmp, path)
  except OSError:
    try:
      os.remove(tmp)
    except OSError:
      pass
    return
  _prune(path)


def _touch(path: Path) -> None:
  try:
    os.utime(path)
  except OSError:
    pass


def _prune(path: Path) -> None:
  """Removes the other entries of `path`'s voice and all but the `MAX_ENTRIES` most
  recently used entries (another process may be removing them too: misses are fine)."""
  prefix = path.name.split("-")[0] + "-"
  entries = []
  for other in path.parent.glob("*.voice"):
    try:
      if other != path and other.name.startswith(prefix):
        other.unlink()
      else:
        entries.append((other.stat().st_mtime, other))
    except OSError:
      pass
  entries.sort(reverse=True)
  for _, old in entries[MAX_ENTRIES:]:
    try:
      old.unlink()
    except OSError:
      pass


@functools.lru_cache(maxsize=1)
def _code_hash() -> str:
  """The code that turns a voice file into what the cache holds."""
  here = Path(__file__).resolve().parent
  files = sorted([*here.glob("*.py"), here.parent / "models" / "layers.py",
                  here.parent.parent / "configs" / "base.py"])
  h = hashlib.sha256()
  for f in files:
    if f.is_file():
      h.update(f.read_bytes())
  return h.hexdigest()
