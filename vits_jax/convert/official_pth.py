"""Load an official jaywalnut310/vits generator checkpoint (`G_*.pth` + its `config.json`).

`torch.save` (PyTorch >= 1.6) writes a zip archive holding `data.pkl` (the pickled object
tree, tensors replaced by persistent ids) and one raw little-endian buffer per storage under
`data/`. We read that format with `pickle` + numpy, so importing a checkpoint needs no
PyTorch. Checkpoints in the legacy (pre-1.6, non-zip) format fall back to `torch.load`,
imported only then.

The official checkpoint is `{'model': state_dict, 'iteration', 'optimizer', 'learning_rate'}`;
`state_dict` uses the official names our converters are keyed on.
"""

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import numpy as np

PathLike = Union[str, Path]

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": None,  # decoded by hand below: numpy has no bfloat16
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _Opaque:
  """Stands in for any class we do not need (optimizer internals, custom objects)."""

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def __setstate__(self, state):
    del state


def _rebuild_tensor(storage, offset, size, stride, *unused):
  """torch._utils._rebuild_tensor_v2 on a numpy storage (strides counted in elements)."""
  del unused
  if not size:
    return storage[offset:offset + 1].reshape(()).copy()
  itemsize = storage.itemsize
  view = np.lib.stride_tricks.as_strided(
      storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride))
  return np.ascontiguousarray(view)


def _rebuild_parameter(data, *unused):
  del unused
  return data


class _ZipUnpickler(pickle.Unpickler):
  """Unpickles a torch zip checkpoint, turning tensors into numpy arrays."""

  def __init__(self, archive: zipfile.ZipFile, prefix: str, data: bytes):
    import io
    super().__init__(io.BytesIO(data))
    self._archive = archive
    self._prefix = prefix
    self._storages: Dict[str, np.ndarray] = {}

  def find_class(self, module, name):
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "torch" and name in _STORAGE_DTYPES:
      return name
    if module == "collections" and name == "OrderedDict":
      import collections
      return collections.OrderedDict
    if module in ("builtins", "__builtin__") and name in ("set", "frozenset", "slice"):
      import builtins
      return getattr(builtins, name)
    # Never import arbitrary modules from a downloaded file: anything else is inert.
    return _Opaque

  def persistent_load(self, pid):
    kind, storage_type, key, _location, numel = pid[:5]
    if kind != "storage":
      raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
    if key not in self._storages:
      raw = self._archive.read(f"{self._prefix}data/{key}")
      if storage_type == "BFloat16Storage":
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        arr = bits.view(np.float32)
      else:
        dtype = _STORAGE_DTYPES.get(storage_type)
        if dtype is None:
          raise pickle.UnpicklingError(f"unsupported tensor storage {storage_type}")
        arr = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
      self._storages[key] = arr[:numel] if numel else arr
    return self._storages[key]


def read_torch_checkpoint(path: PathLike) -> Any:
  """Reads a `torch.save` file into Python objects with numpy arrays for tensors."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"checkpoint not found: {path}")
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
      pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
      if not pkl:
        raise ValueError(f"{path}: a zip file but not a torch checkpoint (no data.pkl)")
      prefix = pkl[0][:-len("data.pkl")]
      return _ZipUnpickler(archive, prefix, archive.read(pkl[0])).load()
  try:  # Legacy format: let torch itself read it.
    import torch
  except ImportError:
    raise ValueError(f"{path} uses PyTorch's legacy (pre-1.6) format, which needs torch "
                     "installed to read; or re-save it with torch>=1.6") from None
  obj = torch.load(str(path), map_location="cpu", weights_only=False)
  return _to_numpy(obj)


def _to_numpy(obj):
  if hasattr(obj, "detach") and hasattr(obj, "numpy"):
    return obj.detach().cpu().float().numpy() if obj.is_floating_point() else obj.numpy()
  if isinstance(obj, dict):
    return {k: _to_numpy(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_to_numpy(v) for v in obj)
  return obj


def load_official_checkpoint(path: PathLike) -> Tuple[Dict[str, np.ndarray], int]:
  """Reads the generator state dict of an official `G_*.pth`.

  Returns:
    `(state_dict, iteration)`: official names -> float32 arrays (channels-first), and the
    training step the checkpoint was saved at (-1 if absent).
  """
  ckpt = read_torch_checkpoint(path)
  if isinstance(ckpt, dict) and "model" in ckpt:
    state, iteration = ckpt["model"], int(ckpt.get("iteration", -1) or -1)
  elif isinstance(ckpt, dict):
    state, iteration = ckpt, -1
  else:
    raise ValueError(f"{path}: not a VITS checkpoint (expected a dict with a 'model' entry)")
  out = {}
  for name, value in state.items():
    if not isinstance(value, np.ndarray):
      continue
    name = name[len("module."):] if name.startswith("module.") else name
    out[name] = value.astype(np.float32) if value.dtype.kind == "f" else value
  if "enc_p.emb.weight" not in out:
    raise ValueError(f"{path}: not a VITS generator checkpoint (no enc_p.emb.weight; "
                     "D_*.pth files hold the discriminator)")
  return out, iteration


def load_official_config(path: PathLike) -> Dict[str, Any]:
  """Reads an official hparams `config.json` (sections train, data, model)."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"config not found: {path}")
  with open(path, encoding="utf-8") as f:
    hps = json.load(f)
  for section in ("data", "model"):
    if section not in hps:
      raise ValueError(f"{path}: not a VITS config (no '{section}' section)")
  return hps


def find_config(checkpoint: PathLike) -> Path:
  """The `config.json` next to a checkpoint (the official training layout)."""
  checkpoint = Path(checkpoint)
  for candidate in (checkpoint.parent / "config.json", checkpoint.with_suffix(".json")):
    if candidate.is_file():
      return candidate
  raise FileNotFoundError(f"no config.json next to {checkpoint} (the official training "
                          "writes it into the model directory)")
