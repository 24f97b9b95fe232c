"""A cache of converted voices: a second `load_voice` of a Piper voice reads arrays.

Reading a Piper `.onnx` means parsing the protobuf, recovering the hyperparameters from the
graph, converting ~600 tensors to our layout and checking them against the model: about a
second each time a process starts. What inference needs from that -- the config, the
frontend description and the params with weight norm folded (`torch_names.
fold_weight_norm`) -- is stored once as one `.npz` under `<compile cache>/voices/` (beside
the compiled programs; `VITS_JAX_XLA_CACHE=''` turns both off). An entry is named by the
voice file's path, size and modification time and by the converter's code, so an edited
voice or a new version of this package never reads a stale entry; an unreadable entry is
ignored and rewritten. Only a file this process wrote completely is ever read (written to a
temporary name, then renamed).
"""

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

FORMAT = 1
_META = "__meta__"


def entry_path(files) -> Optional[Path]:
  """The cache file for a voice read from `files` (paths), or None if caching is off."""
  from vits_jax import xla_cache
  root = xla_cache.cache_dir()
  if not root:
    return None
  h = hashlib.sha256(repr((FORMAT, _code_hash())).encode())
  for f in files:
    f = Path(f).resolve()
    st = f.stat()
    h.update(repr((str(f), st.st_size, st.st_mtime_ns)).encode())
  return Path(root) / "voices" / f"{h.hexdigest()[:32]}.npz"


def read(path: Optional[Path]) -> Optional[Dict[str, Any]]:
  """{'meta': dict, 'params': nested dict} of an entry, or None (absent or unreadable)."""
  if path is None or not path.is_file():
    return None
  try:
    with np.load(path, allow_pickle=False) as z:
      meta = json.loads(str(z[_META]))
      params: Dict[str, Any] = {}
      for key in z.files:
        if key == _META:
          continue
        node = params
        *parents, leaf = key.split("/")
        for p in parents:
          node = node.setdefault(p, {})
        node[leaf] = z[key]
    return {"meta": meta, "params": params}
  except Exception:  # pylint: disable=broad-except  (a damaged entry: convert again)
    return None


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
        flat[f"{prefix}{k}"] = np.asarray(v)
  walk(params, "")
  flat[_META] = np.array(json.dumps(meta))
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as f:
      np.savez(f, **flat)
    os.replace(tmp, path)
  except OSError:
    try:
      os.remove(tmp)
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
