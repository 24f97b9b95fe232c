"""Read and write PyTorch checkpoints (`torch.save` files) without torch; official VITS loading.

`torch.save` (PyTorch >= 1.6) writes a zip archive holding `<name>/data.pkl` (the pickled
object tree, tensors replaced by persistent ids) and one raw buffer per storage under
`<name>/data/`. `read_torch_checkpoint` reads that format, and the legacy (pre-1.6, non-zip)
one, with `pickle` + numpy: no PyTorch, and nothing in the file is ever run. The reader is
meant for downloaded files, so it trusts nothing in them:

* only these pickle globals load: `torch._utils._rebuild_tensor_v2` / `_rebuild_tensor` /
  `_rebuild_parameter` / `_rebuild_parameter_with_state`, the `torch.*Storage` classes,
  `collections.OrderedDict`, `builtins.set` / `frozenset` and `_codecs.encode` (latin-1, how
  protocol 2 pickles bytes); any other global is refused by name, never imported;
* a tensor's offset, size and stride must be plain ints, not negative, and its last element
  must lie inside its storage; a storage record must exist, be stored uncompressed, and hold
  exactly `numel * element size` bytes of a known dtype; declared sizes are checked against
  the file's length before anything is allocated, and copies of strided views are budgeted;
* anything wrong is a one-line `ValueError` naming the file.

`save_torch_checkpoint` writes the zip format (pickle protocol 2, 64-byte aligned records)
from numpy arrays and plain Python containers, loadable by `torch.load(path)` with the
default `weights_only=True`.

The official checkpoint is `{'model': state_dict, 'iteration', 'optimizer', 'learning_rate'}`;
`state_dict` uses the official names our converters are keyed on.
"""

import collections
import io
import json
import math
import os
import pickle
import secrets
import struct
import zipfile
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import numpy as np

PathLike = Union[str, Path]

# torch storage class -> numpy dtype of its elements (little-endian file order), and the
# element size in the file. bfloat16 (no numpy dtype) is decoded to float32.
_STORAGES = {
    "FloatStorage": ("f4", 4), "DoubleStorage": ("f8", 8), "HalfStorage": ("f2", 2),
    "BFloat16Storage": ("bf16", 2), "LongStorage": ("i8", 8), "IntStorage": ("i4", 4),
    "ShortStorage": ("i2", 2), "CharStorage": ("i1", 1), "ByteStorage": ("u1", 1),
    "BoolStorage": ("b1", 1), "ComplexFloatStorage": ("c8", 8),
    "ComplexDoubleStorage": ("c16", 16),
}
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c  # torch.serialization.MAGIC_NUMBER
_LEGACY_PROTOCOL = 1001
_MAX_DIM = 1 << 48  # no real tensor has a size, stride or offset near this
_MAX_NDIM = 32


class _Refused(Exception):
  """A check failed; `read_torch_checkpoint` re-raises it as a ValueError naming the file."""


def _is_int(x) -> bool:
  return type(x) is int  # not bool, not an int subclass


def _int_tuple(x, what: str) -> Tuple[int, ...]:
  if not isinstance(x, (tuple, list)) or len(x) > _MAX_NDIM:
    raise _Refused(f"tensor {what} {_short(x)} is not a tuple of at most {_MAX_NDIM} ints")
  for v in x:
    if not _is_int(v) or not 0 <= v <= _MAX_DIM:
      raise _Refused(f"tensor {what} {_short(x)} holds {_short(v)}, not an int in "
                     f"[0, 2**48]")
  return tuple(x)


def _name(x) -> str:
  """A pickle global's module or name, printable on one line."""
  return x if isinstance(x, str) and x.isprintable() and len(x) <= 60 else _short(x, 60)


def _short(x, limit: int = 80) -> str:
  text = " ".join(repr(x).split())
  return text if len(text) <= limit else text[:limit] + "..."


class _StorageType:
  """What a `torch.<X>Storage` global unpickles to: a name, never called."""
  __slots__ = ("name",)

  def __init__(self, name: str):
    self.name = name


class _Storage:
  """One storage: its declared type and element count, and once read its 1-D array."""
  __slots__ = ("type_name", "numel", "array")

  def __init__(self, type_name: str, numel: int):
    self.type_name, self.numel, self.array = type_name, numel, None


def _decode_storage(raw: bytes, type_name: str, byteorder: str) -> np.ndarray:
  code, _ = _STORAGES[type_name]
  if code == "bf16":
    bits = np.frombuffer(raw, dtype=byteorder + "u2").astype(np.uint32) << 16
    return bits.view(np.float32)
  if code == "b1":
    return np.frombuffer(raw, dtype=np.uint8) != 0
  return np.frombuffer(raw, dtype=np.dtype(byteorder + code))


def _codecs_encode(text, encoding="utf-8", errors="strict"):
  """`_codecs.encode` as protocol-2 pickles use it for bytes: latin-1 only."""
  if type(text) is not str or encoding not in ("latin1", "latin-1") or errors != "strict":
    raise _Refused("_codecs.encode is allowed only as latin-1 bytes")
  return text.encode("latin-1")


def _refuse_build(unpickler):
  state = unpickler.stack.pop()
  inst = unpickler.stack[-1]
  # `Module.state_dict()` is an OrderedDict with a `_metadata` attribute, pickled as BUILD
  # with a dict; we have no use for it. BUILD on anything else could call __setstate__.
  if type(inst) is collections.OrderedDict and isinstance(state, dict):
    return
  raise _Refused(f"pickle sets the state of a {type(inst).__name__}, which is not allowed")


class _SafeUnpickler(pickle._Unpickler):  # pylint: disable=protected-access
  """Pure-Python unpickler: allow-listed globals only, checked tensors, guarded BUILD.

  (The pure-Python class lets us replace the BUILD opcode; the C unpickler would call
  `__setstate__` on whatever object a malicious stream names.)
  """
  dispatch = dict(pickle._Unpickler.dispatch)  # pylint: disable=protected-access
  dispatch[pickle.BUILD[0]] = _refuse_build

  def __init__(self, file, reader: "_Reader"):
    super().__init__(file, encoding="utf-8")
    self._reader = reader

  def find_class(self, module, name):
    r = self._reader
    allowed = {
        ("torch._utils", "_rebuild_tensor_v2"): r.rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): r.rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): r.rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): r.rebuild_parameter,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
        ("__builtin__", "set"): set, ("__builtin__", "frozenset"): frozenset,
        ("_codecs", "encode"): _codecs_encode,
    }
    if (module, name) in allowed:
      return allowed[(module, name)]
    if module == "torch" and name in _STORAGES:
      return _StorageType(name)
    if module == "torch" and name.endswith("Storage"):
      raise _Refused(f"unsupported tensor storage torch.{_name(name)}")
    raise _Refused(f"refusing to load global {_name(module)}.{_name(name)} (only "
                   "tensors, storages and plain containers are allowed; nothing is run)")

  def persistent_load(self, pid):
    return self._reader.storage(pid)


class _BareUnpickler(pickle._Unpickler):  # pylint: disable=protected-access
  """For the legacy format's plain records (magic number, sys info, storage keys)."""
  dispatch = _SafeUnpickler.dispatch

  def find_class(self, module, name):
    raise _Refused(f"refusing to load global {_name(module)}.{_name(name)}")

  def persistent_load(self, pid):
    raise _Refused("unexpected persistent id")


class _Reader:
  """State shared by the unpickler callbacks: storages, and how they are fetched."""

  def __init__(self, file_size: int, fetch=None, byteorder: str = "<"):
    self.storages: Dict[str, _Storage] = {}
    self.fetch = fetch  # key, _Storage -> 1-D array (zip); None: legacy, filled later
    self.byteorder = byteorder
    # Bytes that copies of non-contiguous views may allocate in all (contiguous views are
    # views of the storages, which are no larger than the file).
    self.budget = 4 * file_size + (64 << 20)

  def storage(self, pid) -> _Storage:
    if not isinstance(pid, tuple) or len(pid) not in (5, 6):
      raise _Refused(f"unknown persistent id {_short(pid)}")
    kind = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
    if kind != "storage":
      raise _Refused(f"unknown persistent id {_short(pid)}")
    stype, key, _location, numel = pid[1:5]
    if isinstance(key, bytes):
      key = key.decode("ascii", "replace")
    if not isinstance(stype, _StorageType):
      raise _Refused(f"storage {_name(key)}: type {_short(stype)} is not a torch storage")
    if not isinstance(key, str) or not 0 < len(key) <= 64:
      raise _Refused(f"bad storage key {_short(key)}")
    if not _is_int(numel) or not 0 <= numel <= _MAX_DIM:
      raise _Refused(f"storage {_name(key)}: element count {_short(numel)} is not a valid int")
    if len(pid) == 6 and pid[5] is not None:
      raise _Refused(f"storage {_name(key)}: storage views (PyTorch < 0.4) are not supported")
    have = self.storages.get(key)
    if have is not None:
      if have.type_name != stype.name or have.numel != numel:
        raise _Refused(f"storage {_name(key)} is declared both as {have.numel} x {have.type_name} "
                       f"and as {numel} x {stype.name}")
      return have
    storage = _Storage(stype.name, numel)
    if self.fetch is not None:
      storage.array = self.fetch(key, storage)
    self.storages[key] = storage
    return storage

  def rebuild_tensor(self, storage, offset, size, stride, *unused):
    """torch._utils._rebuild_tensor_v2 on a numpy storage (strides counted in elements)."""
    del unused
    if not isinstance(storage, _Storage):
      raise _Refused(f"tensor rebuilt from {type(storage).__name__}, not a storage")
    if not _is_int(offset) or not 0 <= offset <= _MAX_DIM:
      raise _Refused(f"tensor storage offset {_short(offset)} is not a non-negative int")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size) != len(stride):
      raise _Refused(f"tensor size {size} and stride {stride} differ in length")
    numel = math.prod(size)
    if numel == 0:
      if offset > storage.numel:
        raise _Refused(f"tensor offset {offset} lies beyond its {storage.numel}-element "
                       "storage")
    else:
      last = offset + sum((n - 1) * s for n, s in zip(size, stride))
      if last >= storage.numel:
        raise _Refused(f"tensor of size {size}, stride {stride}, offset {offset} reaches "
                       f"element {last} of a {storage.numel}-element {storage.type_name}")
    data = storage.array
    if data is None:  # legacy format, first pass: storages not read yet
      return None
    if numel == 0:
      return np.zeros(size, dtype=data.dtype)
    itemsize = data.itemsize
    view = np.lib.stride_tricks.as_strided(
        data[offset:], shape=size,
        strides=tuple(s * itemsize if n > 1 else 0 for n, s in zip(size, stride)))
    if view.flags.c_contiguous:
      return view
    self.budget -= numel * itemsize
    if self.budget < 0:
      raise _Refused("strided tensor views would copy more than 4x the file's size "
                     "(refused before allocating)")
    return np.ascontiguousarray(view)

  def rebuild_parameter(self, data, *unused):
    del unused
    if data is not None and not isinstance(data, np.ndarray):
      raise _Refused(f"parameter rebuilt from {type(data).__name__}, not a tensor")
    return data


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def read_torch_checkpoint(path: PathLike) -> Any:
  """Reads a `torch.save` file into Python objects with numpy arrays for tensors.

  Tensors come back as numpy arrays (bfloat16 as float32); contiguous ones are read-only
  views of the file's buffers.

  Raises:
    FileNotFoundError: nothing at `path`.
    ValueError: `path` is not a checkpoint we can read safely (message names the file).
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"checkpoint not found: {path}")
  try:
    with open(path, "rb") as f:
      size = os.fstat(f.fileno()).st_size
      head = f.read(512)
      f.seek(0)
      if not head:
        raise _Refused("empty file")
      if head[:4] == b"PK\x03\x04":
        return _read_zip(f, size)
      if head[:1] == b"\x80":
        return _read_legacy(f, size)
      if head[257:262] == b"ustar":
        raise _Refused("legacy tar-format PyTorch checkpoint (PyTorch < 0.4) is not "
                       "supported; re-save it with torch.save in a current PyTorch")
      raise _Refused("not a PyTorch checkpoint (neither a zip archive nor a pickle)")
  except _Refused as e:
    raise ValueError(f"{path}: {e}") from None
  except Exception as e:  # pylint: disable=broad-except  (any malformed input)
    raise ValueError(f"{path}: not a readable PyTorch checkpoint ({_one_line(e)})") from None


def _read_zip(f, size: int) -> Any:
  try:
    archive = zipfile.ZipFile(f)
  except zipfile.BadZipFile as e:
    raise _Refused(f"corrupt or truncated zip archive ({_one_line(e)})") from None
  with archive:
    infos = archive.infolist()
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
      raise _Refused("zip archive has duplicate record names")
    for info in infos:
      if info.flag_bits & 0x1:
        raise _Refused(f"record {_name(info.filename)} is encrypted")
      if info.compress_type != zipfile.ZIP_STORED:
        raise _Refused(f"record {_name(info.filename)} is compressed (torch.save stores "
                       "records uncompressed)")
      if info.file_size != info.compress_size or info.header_offset + info.file_size > size:
        raise _Refused(f"record {_name(info.filename)} declares {info.file_size} bytes, "
                       "more than the file holds (truncated or forged)")
    pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
      raise _Refused("a zip file but not a torch checkpoint (no data.pkl)" if not pkl else
                     "zip archive holds more than one data.pkl")
    prefix = pkl[0][:-len("data.pkl")]
    byteorder = "<"
    if prefix + "byteorder" in names:
      mark = archive.read(prefix + "byteorder")
      if mark not in (b"little", b"big"):
        raise _Refused(f"unknown byteorder record {_short(mark)}")
      byteorder = "<" if mark == b"little" else ">"

    def fetch(key: str, storage: _Storage) -> np.ndarray:
      name = f"{prefix}data/{key}"
      if name not in names:
        raise _Refused(f"storage {_name(key)}: record {_name(name)} is missing")
      if storage.type_name not in _STORAGES:
        raise _Refused(f"unsupported tensor storage torch.{storage.type_name}")
      want = storage.numel * _STORAGES[storage.type_name][1]
      have = archive.getinfo(name).file_size
      if have != want:
        raise _Refused(f"storage {_name(key)}: record holds {have} bytes, but {storage.numel} x "
                       f"{storage.type_name} needs {want}")
      return _decode_storage(archive.read(name), storage.type_name, byteorder)

    reader = _Reader(size, fetch, byteorder)
    return _SafeUnpickler(io.BytesIO(archive.read(pkl[0])), reader).load()


def _read_legacy(f, size: int) -> Any:
  """The pre-1.6 format: pickles (magic, protocol, sys info, object, storage keys), then
  each storage as an int64 element count and its raw bytes, in key order.

  Read in two passes over the object pickle: the first declares the storages (and checks
  every tensor against them), the second rebuilds tensors once the data is in.
  """
  bare = _BareUnpickler(f)
  try:
    magic = bare.load()
  except (_Refused, pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError,
          struct.error):
    magic = None
  if not _is_int(magic) or magic != _LEGACY_MAGIC:
    raise _Refused("not a PyTorch checkpoint (a pickle without torch's magic number)")
  version = bare.load()
  if not _is_int(version) or version != _LEGACY_PROTOCOL:
    raise _Refused(f"legacy PyTorch format with unknown protocol version {_short(version)}")
  info = bare.load()
  little = info.get("little_endian", True) if isinstance(info, dict) else None
  if type(little) is not bool:
    raise _Refused("legacy PyTorch format with malformed sys info")
  byteorder = "<" if little else ">"
  start = f.tell()
  reader = _Reader(size, None, byteorder)
  _SafeUnpickler(f, reader).load()
  end = f.tell()
  keys = _BareUnpickler(f).load()
  if (not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)
      or len(set(keys)) != len(keys) or set(keys) != set(reader.storages)):
    raise _Refused("legacy PyTorch format: storage key list does not match the storages")
  for key in keys:
    storage = reader.storages[key]
    itemsize = _STORAGES[storage.type_name][1]
    count = f.read(8)
    if len(count) != 8:
      raise _Refused(f"truncated: storage {_name(key)} is missing")
    (numel,) = struct.unpack(byteorder + "q", count)
    if numel != storage.numel:
      raise _Refused(f"storage {_name(key)}: file holds {numel} elements, pickle declares "
                     f"{storage.numel}")
    nbytes = numel * itemsize
    if nbytes > size - f.tell():
      raise _Refused(f"truncated: storage {_name(key)} declares {nbytes} bytes, more than the file "
                     "holds")
    storage.array = _decode_storage(f.read(nbytes), storage.type_name, byteorder)
  f.seek(start)
  obj = _SafeUnpickler(f, reader).load()
  if f.tell() != end:
    raise _Refused("legacy PyTorch format: the object pickle read differently twice")
  return obj


def load_official_checkpoint(path: PathLike) -> Tuple[Dict[str, np.ndarray], int]:
  """Reads the generator state dict of an official `G_*.pth`.

  Returns:
    `(state_dict, iteration)`: official names -> float32 arrays (channels-first), and the
    training step the checkpoint was saved at (-1 if absent).
  """
  ckpt = read_torch_checkpoint(path)
  if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
    state = ckpt["model"]
    iteration = ckpt.get("iteration", -1)
    try:
      iteration = int(iteration) if iteration is not None else -1
    except (TypeError, ValueError, OverflowError):
      iteration = -1
  elif isinstance(ckpt, dict) and "model" not in ckpt:
    state, iteration = ckpt, -1
  else:
    raise ValueError(f"{path}: not a VITS checkpoint (expected a dict with a 'model' entry)")
  from vits_jax.convert import check_parameter_count  # pylint: disable=import-outside-toplevel
  arrays = {name: value for name, value in state.items()
            if isinstance(value, np.ndarray) and isinstance(name, str)}
  check_parameter_count(sum(v.size for v in arrays.values()), path)   # (before any copy)
  out = {}
  for name, value in arrays.items():
    name = name[len("module."):] if name.startswith("module.") else name
    out[name] = np.asarray(value, np.float32) if value.dtype.kind == "f" else value
  if "enc_p.emb.weight" not in out:
    raise ValueError(f"{path}: not a VITS generator checkpoint (no enc_p.emb.weight; "
                     "D_*.pth files hold the discriminator)")
  return out, iteration


def load_official_config(path: PathLike) -> Dict[str, Any]:
  """Reads an official hparams `config.json` (sections train, data, model)."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"config not found: {path}")
  from vits_jax.convert.source import read_json  # pylint: disable=import-outside-toplevel
  hps = read_json(path)
  for section in ("data", "model"):
    if not isinstance(hps.get(section), dict):
      raise ValueError(f"{path}: not a VITS config (no '{section}' section)")
  for section in ("train", "infer", "vits_jax"):
    if section in hps and not isinstance(hps[section], dict):
      raise ValueError(f"{path}: its '{section}' section is not a JSON object")
  return hps


def find_config(checkpoint: PathLike) -> Path:
  """The `config.json` next to a checkpoint (the official training layout)."""
  checkpoint = Path(checkpoint)
  for candidate in (checkpoint.parent / "config.json", checkpoint.with_suffix(".json")):
    if candidate.is_file():
      return candidate
  raise FileNotFoundError(f"no config.json next to {checkpoint} (the official training "
                          "writes it into the model directory)")


# ----------------------------------------------------------------------------------------
# Writer


_DTYPE_STORAGES = {
    "float32": "FloatStorage", "float64": "DoubleStorage", "float16": "HalfStorage",
    "bfloat16": "BFloat16Storage", "int64": "LongStorage", "int32": "IntStorage",
    "int16": "ShortStorage", "int8": "CharStorage", "uint8": "ByteStorage",
    "bool": "BoolStorage", "complex64": "ComplexFloatStorage",
    "complex128": "ComplexDoubleStorage",
}
_ALIGN = 64  # torch.save aligns each record's data to 64 bytes (mmap-friendly)


def _is_array(obj) -> bool:
  return isinstance(obj, np.ndarray) or (
      hasattr(obj, "__array__") and hasattr(obj, "shape") and hasattr(obj, "dtype")
      and not isinstance(obj, np.generic))


class _TorchPickler:
  """Emits the protocol-2 pickle torch.save would, for plain containers and arrays."""

  def __init__(self):
    self._out = io.BytesIO()
    self.storages = []  # contiguous little-endian arrays, key = index
    self._seen: Dict[int, Tuple[Any, str]] = {}  # id(array) -> (array, key): shared storage
    self._open = set()  # ids of containers being written (cycle check)

  def dump(self, obj) -> bytes:
    self._out.write(b"\x80\x02")
    self._save(obj)
    self._out.write(b".")
    return self._out.getvalue()

  def _w(self, data: bytes):
    self._out.write(data)

  def _global(self, module: str, name: str):
    self._w(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

  def _int(self, v: int):
    if 0 <= v < 0x100:
      self._w(b"K" + bytes([v]))
    elif 0 <= v < 0x10000:
      self._w(b"M" + struct.pack("<H", v))
    elif -0x80000000 <= v < 0x80000000:
      self._w(b"J" + struct.pack("<i", v))
    else:
      n = (v.bit_length() >> 3) + 1
      raw = v.to_bytes(n, "little", signed=True)
      if v < 0 and n > 1 and raw[-1] == 0xff and raw[-2] & 0x80:
        raw = raw[:-1]
      self._w((b"\x8a" + bytes([len(raw)]) if len(raw) < 256
               else b"\x8b" + struct.pack("<i", len(raw))) + raw)

  def _str(self, s: str):
    data = s.encode("utf-8", "surrogatepass")
    self._w(b"X" + struct.pack("<I", len(data)) + data)

  def _ordered_dict_start(self):
    self._global("collections", "OrderedDict")
    self._w(b")R")

  def _save(self, obj):
    if obj is None:
      self._w(b"N")
    elif obj is True or obj is False:
      self._w(b"\x88" if obj else b"\x89")
    elif isinstance(obj, int) and not isinstance(obj, bool):
      self._int(int(obj))
    elif isinstance(obj, float):
      self._w(b"G" + struct.pack(">d", obj))
    elif isinstance(obj, str):
      self._str(obj)
    elif isinstance(obj, (bytes, bytearray)):  # protocol 2 spells bytes this way
      self._global("_codecs", "encode")
      self._str(bytes(obj).decode("latin-1"))
      self._str("latin1")
      self._w(b"\x86R")
    elif isinstance(obj, np.generic) and not _is_array(obj):
      self._save(obj.item())
    elif _is_array(obj):
      self._tensor(obj)
    elif isinstance(obj, (dict, list, tuple)):
      if id(obj) in self._open:
        raise ValueError("cannot save a cyclic structure in a torch checkpoint")
      self._open.add(id(obj))
      try:
        self._container(obj)
      finally:
        self._open.discard(id(obj))
    else:
      raise TypeError(f"cannot save a {type(obj).__name__} in a torch checkpoint (numpy "
                      "arrays, dict, list, tuple, str, int, float, bool, bytes, None only)")

  def _container(self, obj):
    if isinstance(obj, dict):
      state_dict = (bool(obj) and all(isinstance(k, str) for k in obj)
                    and all(_is_array(v) for v in obj.values()))
      if isinstance(obj, collections.OrderedDict) or state_dict:
        self._ordered_dict_start()
      else:
        self._w(b"}")
      if obj:
        self._w(b"(")
        for k, v in obj.items():
          self._save(k)
          self._save(v)
        self._w(b"u")
    elif isinstance(obj, list):
      self._w(b"]")
      if obj:
        self._w(b"(")
        for v in obj:
          self._save(v)
        self._w(b"e")
    elif not obj:
      self._w(b")")
    elif len(obj) <= 3:
      for v in obj:
        self._save(v)
      self._w(b"\x85\x86\x87"[len(obj) - 1:len(obj)])
    else:
      self._w(b"(")
      for v in obj:
        self._save(v)
      self._w(b"t")

  def _tensor(self, obj):
    arr = np.asarray(obj)
    storage = _DTYPE_STORAGES.get(arr.dtype.name)
    if storage is None:
      raise TypeError(f"cannot save a {arr.dtype} array in a torch checkpoint (supported: "
                      f"{', '.join(_DTYPE_STORAGES)})")
    seen = self._seen.get(id(obj))
    if seen is not None:
      key = seen[1]
    else:
      if arr.dtype.name == "bfloat16":
        data = arr.view(np.uint16).astype("<u2", order="C", copy=False)
      else:
        data = arr.astype(arr.dtype.newbyteorder("<"), order="C", copy=False)
      key = str(len(self.storages))
      self.storages.append(data)
      self._seen[id(obj)] = (obj, key)
    strides, acc = [], 1
    for n in reversed(arr.shape):
      strides.append(acc)
      acc *= max(n, 1)
    self._global("torch._utils", "_rebuild_tensor_v2")
    self._w(b"((")
    self._str("storage")
    self._global("torch", storage)
    self._str(key)
    self._str("cpu")
    self._int(arr.size)
    self._w(b"tQ")  # TUPLE, BINPERSID
    self._int(0)  # storage offset
    self._container(tuple(int(n) for n in arr.shape))
    self._container(tuple(reversed(strides)))
    self._w(b"\x89")  # requires_grad=False
    self._ordered_dict_start()  # backward_hooks
    self._w(b"tR")


def _add_record(zf: zipfile.ZipFile, pos: int, name: str, data) -> int:
  """Writes one stored record with its data 64-byte aligned (as torch does: the padding is
  an 'FB' extra field of 'Z's); returns the offset after it."""
  flat = np.ascontiguousarray(data).reshape(-1).view(np.uint8) if isinstance(
      data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
  nbytes = flat.size
  zip64 = nbytes * 1.05 > zipfile.ZIP64_LIMIT  # what ZipFile.open would pick itself
  encoded = name.encode("utf-8")
  header = 30 + len(encoded) + 4 + (20 if zip64 else 0)
  pad = -(pos + header) % _ALIGN
  info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
  info.compress_type = zipfile.ZIP_STORED
  info.file_size = nbytes
  info.external_attr = 0o644 << 16
  info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # id b"FB"
  chunk = 1 << 26
  with zf.open(info, "w", force_zip64=zip64) as w:
    for i in range(0, nbytes, chunk):
      w.write(memoryview(flat[i:i + chunk]))
  return pos + header + pad + nbytes


def save_torch_checkpoint(path: PathLike, obj: Any) -> None:
  """Writes `obj` in PyTorch's zip checkpoint format, as `torch.save(obj, path)` would.

  No torch needed. `obj` nests dict / list / tuple / str / int / float / bool / bytes / None
  with numpy (or array-like, e.g. jax) arrays as tensors: float32/64/16, bfloat16, int64/32/
  16/8, uint8, bool, complex64/128. Numpy scalars are written as Python numbers. A dict whose
  keys are all str and values all arrays (a state dict) is written as
  `collections.OrderedDict`, as `Module.state_dict()` returns; an array object that appears
  twice shares one storage. The official trainer's layout is
  `{'model': state_dict, 'iteration': int, 'optimizer': ..., 'learning_rate': float}`.

  The file loads with `torch.load(path, map_location='cpu')` (default `weights_only=True`)
  and with `read_torch_checkpoint`. It is written to a temporary file next to `path` and
  moved into place, so a reader never sees half a checkpoint.

  Raises:
    TypeError: `obj` holds something other than the types above.
    ValueError: `obj` is cyclic.
  """
  path = Path(path)
  pickler = _TorchPickler()
  pickled = pickler.dump(obj)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(fd, "wb") as f:
      with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        pos = _add_record(zf, 0, "archive/data.pkl", pickled)
        pos = _add_record(zf, pos, "archive/byteorder", b"little")
        for key, data in enumerate(pickler.storages):
          pos = _add_record(zf, pos, f"archive/data/{key}", data)
        _add_record(zf, pos, "archive/version", b"3\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    try:
      os.unlink(tmp)
    except OSError:
      pass
    raise
