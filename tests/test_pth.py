"""The torch-free PyTorch checkpoint reader (hardened against malicious files) and writer.

No torch here: malicious files are crafted with zipfile + hand-written pickle opcodes;
`fixtures/pth/*.pth` were written by real torch (see fixtures/make_pth_checks.py, which also
loads our writer's files in torch with weights_only=True).
"""

import collections
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from vits_jax.convert.official_pth import (load_official_checkpoint, read_torch_checkpoint,
                                           save_torch_checkpoint)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
TORCH_TINY = FIXTURES / "pth" / "torch_tiny.pth"
LEGACY_TINY = FIXTURES / "pth" / "legacy_tiny.pth"
TINY_OBJ_ARRAYS = {"w": np.arange(6, dtype=np.float32).reshape(2, 3),
                   "n": np.array([1, -2], dtype=np.int64)}


# --- crafting ------------------------------------------------------------------------------

def _v(x) -> bytes:
  """Pickle opcodes for a plain value (no PROTO / STOP), to splice into crafted pickles."""
  return pickle.dumps(x, protocol=2)[2:-1]


def _tensor(storage=b"FloatStorage", key="0", numel=4, offset=0, size=(4,), stride=(1,)):
  """Opcodes of `_rebuild_tensor_v2(persistent storage id, offset, size, stride, ...)`;
  each field may be raw opcode bytes instead of a value."""
  raw = lambda x: x if isinstance(x, bytes) else _v(x)  # noqa: E731
  pid = b"(" + _v("storage") + b"ctorch\n" + storage + b"\n" + raw(key) + _v("cpu") + raw(
      numel) + b"tQ"
  return (b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + raw(offset) + raw(size)
          + raw(stride) + b"\x89ccollections\nOrderedDict\n)Rt" + b"R")


def _dict(**entries: bytes) -> bytes:
  """A protocol-2 pickle of a dict whose values are the given opcode fragments."""
  body = b"".join(_v(k) + v for k, v in entries.items())
  return b"\x80\x02}(" + body + b"u."


def _zip(path: Path, pkl: bytes, records=None, compress=zipfile.ZIP_STORED) -> Path:
  records = {"0": np.arange(4, dtype=np.float32).tobytes()} if records is None else records
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pkl, compress_type=compress)
    for key, data in records.items():
      z.writestr(f"archive/data/{key}", data, compress_type=compress)
    z.writestr("archive/version", b"3\n")
  return path


def _refused(path: Path, *fragments: str) -> str:
  with pytest.raises(ValueError) as info:
    read_torch_checkpoint(path)
  msg = str(info.value)
  assert str(path) in msg and "\n" not in msg, msg
  for fragment in fragments:
    assert fragment in msg, msg
  return msg


# --- writer -> reader ----------------------------------------------------------------------

def _sample():
  import ml_dtypes
  rng = np.random.default_rng(1)
  shared = rng.standard_normal((2, 2)).astype(np.float32)
  model = {
      "f32": rng.standard_normal((2, 3, 4)).astype(np.float32),
      "f64": rng.standard_normal(3), "f16": rng.standard_normal((3, 1)).astype(np.float16),
      "bf16": rng.standard_normal(5).astype(ml_dtypes.bfloat16),
      "i64": np.array([-2**63, 0, 2**63 - 1]), "i32": np.arange(6, dtype=np.int32),
      "i16": np.array([-32768, 32767], np.int16), "i8": np.array([-128, 127], np.int8),
      "u8": np.array([0, 255], np.uint8), "bool": np.array([[True, False]]),
      "c64": np.array([1 + 2j], np.complex64), "c128": np.array([3 - 4j]),
      "scalar": np.array(2.5, np.float32), "empty": np.zeros((0, 2), np.float32),
      "transposed": rng.standard_normal((3, 2)).astype(np.float32).T,
      "sliced": np.arange(10, dtype=np.int64)[1::3],
      "big_endian": np.arange(3, dtype=">f4"),
      "shared_a": shared, "shared_b": shared,
  }
  return {
      "model": model, "iteration": 42,
      "optimizer": {"state": {0: {"step": np.array(3.0, np.float32)}},
                    "param_groups": [{"lr": 1e-3, "betas": (0.8, 0.99), "params": [0],
                                      "foreach": None, "amsgrad": False}]},
      "learning_rate": np.float64(2e-4),
      "misc": [2**80, -2**70, -1, 2**31, -2**31 - 1, "héllo", b"\x00\xff", b"", (), (1,),
               (1, 2, 3, 4), [], {}, float("inf"), True, None],
  }


def test_round_trip_bitwise(tmp_path):
  obj = _sample()
  path = tmp_path / "ck.pth"
  save_torch_checkpoint(path, obj)
  got = read_torch_checkpoint(path)
  assert set(got) == set(obj)
  assert isinstance(got["model"], collections.OrderedDict)  # a state dict, as torch's
  assert list(got["model"]) == list(obj["model"])
  for name, want in obj["model"].items():
    have = got["model"][name]
    if name == "bf16":  # numpy has no bfloat16: decoded exactly to float32
      want = want.astype(np.float32)
    want = np.array(want, dtype=want.dtype.newbyteorder("="), order="C")
    assert have.dtype == want.dtype and have.shape == want.shape, name
    assert have.tobytes() == want.tobytes(), name
  assert np.shares_memory(got["model"]["shared_a"], got["model"]["shared_b"])
  assert got["iteration"] == 42 and type(got["learning_rate"]) is float
  assert got["learning_rate"] == 2e-4
  assert got["misc"] == obj["misc"]
  assert got["optimizer"]["param_groups"] == obj["optimizer"]["param_groups"]
  assert type(got["optimizer"]) is dict and got["optimizer"]["state"][0]["step"] == 3.0


def test_round_trip_official_checkpoint(tmp_path):
  src = FIXTURES / "official_tiny" / "G_7.pth"
  state, step = load_official_checkpoint(src)
  ckpt = read_torch_checkpoint(src)
  path = tmp_path / "G_7.pth"
  save_torch_checkpoint(path, {"model": state, "iteration": step,
                               "optimizer": ckpt["optimizer"], "learning_rate": 2e-4})
  again, step2 = load_official_checkpoint(path)
  assert step2 == 7 and list(again) == list(state)
  for k in state:
    assert again[k].tobytes() == state[k].tobytes(), k
  assert read_torch_checkpoint(path)["optimizer"] == ckpt["optimizer"]


def _local_data_offsets(path: Path):
  """Record name -> offset of its data, from the local headers (what mmap readers use)."""
  blob = path.read_bytes()
  out = {}
  with zipfile.ZipFile(path) as z:
    for info in z.infolist():
      h = info.header_offset
      assert blob[h:h + 4] == b"PK\x03\x04"
      n, m = struct.unpack("<HH", blob[h + 26:h + 30])
      out[info.filename] = (h + 30 + n + m, info)
  return out


def test_writer_layout_matches_torch(tmp_path):
  """Same records, same pickle tree (globals, persistent ids, args) as torch.save writes;
  data 64-byte aligned and stored uncompressed like torch's."""
  ours = tmp_path / "ours.pth"
  save_torch_checkpoint(ours, {"model": dict(TINY_OBJ_ARRAYS), "iteration": 3,
                               "learning_rate": 0.5})
  layouts = {}
  for path in (ours, TORCH_TINY):
    offsets = _local_data_offsets(path)
    prefix = next(iter(offsets)).split("/")[0] + "/"
    assert next(iter(offsets)) == prefix + "data.pkl"  # torch reads the prefix off it
    with zipfile.ZipFile(path) as z:
      records = {name[len(prefix):]: z.read(name) for name in offsets}
    for name, (offset, info) in offsets.items():
      assert info.compress_type == zipfile.ZIP_STORED
      if "/data/" in name:
        assert offset % 64 == 0, (path, name, offset)
    layouts[path] = records
  mine, theirs = layouts[ours], layouts[TORCH_TINY]
  # torch 2.x adds bookkeeping records that loading does not need
  assert set(theirs) - set(mine) == {".format_version", ".storage_alignment",
                                     ".data/serialization_id"}
  assert set(mine) <= set(theirs)
  for name in ("version", "byteorder", "data/0", "data/1"):
    assert mine[name] == theirs[name], name

  class Recorder(pickle.Unpickler):  # trusted input: turns globals into comparable tuples
    def find_class(self, module, name):
      if (module, name) == ("collections", "OrderedDict"):
        return collections.OrderedDict
      if module == "torch":
        return f"torch.{name}"
      return lambda *args: (f"{module}.{name}",) + args

    def persistent_load(self, pid):
      return ("pid",) + tuple(pid)

  import io
  trees = [Recorder(io.BytesIO(layouts[p]["data.pkl"])).load() for p in (ours, TORCH_TINY)]
  assert trees[0] == trees[1]
  assert trees[0]["model"]["w"] == (
      "torch._utils._rebuild_tensor_v2", ("pid", "storage", "torch.FloatStorage", "0", "cpu",
                                          6), 0, (2, 3), (3, 1), False,
      collections.OrderedDict())
  assert type(trees[0]["model"]) is collections.OrderedDict


def test_torch_written_fixtures_read():
  for path in (TORCH_TINY, LEGACY_TINY):  # zip, and the legacy (pre-1.6) format
    got = read_torch_checkpoint(path)
    assert got["iteration"] == 3 and got["learning_rate"] == 0.5
    assert isinstance(got["model"], collections.OrderedDict)
    for k, want in TINY_OBJ_ARRAYS.items():
      assert got["model"][k].dtype == want.dtype
      np.testing.assert_array_equal(got["model"][k], want)


def test_writer_is_atomic(tmp_path):
  path = tmp_path / "G_1.pth"
  save_torch_checkpoint(path, {"a": np.ones(3, np.float32)})
  before = path.read_bytes()
  with pytest.raises(TypeError, match="object"):
    save_torch_checkpoint(path, {"a": object()})
  with pytest.raises(TypeError, match="uint32"):
    save_torch_checkpoint(path, {"a": np.ones(2, np.uint32)})
  cyclic = []
  cyclic.append(cyclic)
  with pytest.raises(ValueError, match="cyclic"):
    save_torch_checkpoint(path, cyclic)
  assert path.read_bytes() == before
  save_torch_checkpoint(path, {"a": np.zeros(3, np.float32)})
  assert sorted(p.name for p in tmp_path.iterdir()) == ["G_1.pth"]  # no temp files left
  assert read_torch_checkpoint(path)["a"].tolist() == [0, 0, 0]


# --- malicious and broken files ------------------------------------------------------------

@pytest.mark.parametrize("tensor, fragments", [
    (_tensor(size=(64,)), ["reaches element 63 of a 4-element FloatStorage"]),
    (_tensor(offset=-1), ["offset -1"]),
    (_tensor(offset=4), ["offset 4 reaches element 7"]),
    (_tensor(size=(2, 2), stride=(3, 1)), ["reaches element 4"]),
    (_tensor(size=(-1,)), ["size"]),
    (_tensor(stride=(-1,)), ["stride"]),
    (_tensor(stride=(1.0,)), ["stride (1.0,)"]),
    (_tensor(size=(True,)), ["size"]),
    (_tensor(offset="0"), ["offset '0'"]),
    (_tensor(size=4), ["size 4 is not a tuple"]),
    (_tensor(size=(2, 2), stride=(1,)), ["differ in length"]),
    (_tensor(size=(2**62,)), ["size"]),
    (_tensor(numel=2**40), ["record holds 16 bytes", "needs"]),  # huge: refused unallocated
    (_tensor(numel=3), ["record holds 16 bytes"]),
    (_tensor(numel=-4), ["element count -4"]),
    (_tensor(key="1"), ["record archive/data/1 is missing"]),
    (_tensor(key=7), ["bad storage key 7"]),
    (_tensor(storage=b"QInt8Storage"), ["unsupported tensor storage torch.QInt8Storage"]),
    (_tensor(storage=b"DoubleStorage"), ["record holds 16 bytes", "needs 32"]),
    # a stride-0 view of 2**30 elements would copy 4 GiB: refused before allocating
    (_tensor(size=(2**30,), stride=(0,)), ["strided tensor views"]),
])
def test_bad_tensor_refused(tmp_path, tensor, fragments):
  _refused(_zip(tmp_path / "bad.pth", _dict(w=tensor)), *fragments)


def test_storage_declared_with_two_dtypes(tmp_path):
  pkl = _dict(a=_tensor(), b=_tensor(storage=b"IntStorage"))
  _refused(_zip(tmp_path / "mix.pth", pkl), "storage 0 is declared both as 4 x FloatStorage "
           "and as 4 x IntStorage")
  odd = _zip(tmp_path / "odd.pth", _dict(a=_tensor(numel=1)), records={"0": b"\0" * 6})
  _refused(odd, "record holds 6 bytes, but 1 x FloatStorage needs 4")


def test_offsets_and_strides_are_read_as_torch_views(tmp_path):
  """A tensor that is a view of its storage (an offset, strides other than C order, a
  shared storage) reads as torch would index it: storage[offset + sum(i_k * stride_k)]."""
  pkl = _dict(tail=_tensor(offset=1, size=(3,)), t=_tensor(size=(2, 2), stride=(1, 2)),
              whole=_tensor(), row=_tensor(offset=2, size=(1, 2), stride=(2, 1)))
  got = read_torch_checkpoint(_zip(tmp_path / "views.pth", pkl))   # storage: 0, 1, 2, 3
  np.testing.assert_array_equal(got["tail"], [1, 2, 3])
  np.testing.assert_array_equal(got["t"], [[0, 2], [1, 3]])
  np.testing.assert_array_equal(got["whole"], [0, 1, 2, 3])
  np.testing.assert_array_equal(got["row"], [[2, 3]])


def test_huge_stride_does_not_crash_the_process(tmp_path):
  """Unchecked, as_strided with this stride reads far outside the buffer: SIGSEGV (rc 139)."""
  path = _zip(tmp_path / "stride.pth", _dict(w=_tensor(size=(2, 2), stride=(2**40, 1))))
  code = ("import sys\nfrom vits_jax.convert.official_pth import read_torch_checkpoint\n"
          "try:\n  read_torch_checkpoint(sys.argv[1])\nexcept ValueError as e:\n"
          "  sys.exit(f'error: {e}')\nprint('loaded')\n")
  proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                        text=True, timeout=120, cwd=ROOT,
                        env={**os.environ, "PYTHONPATH": str(ROOT)})
  assert proc.returncode == 1, (proc.returncode, proc.stderr)
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: {path}:"), proc.stderr
  assert "reaches element 1099511627777" in lines[0]


def _code_running_pickles(marker: Path):
  cmd = _v(f"touch {marker}")
  return {
      "os.system": (b"\x80\x02cos\nsystem\n" + cmd + b"\x85R.", "os.system"),
      "posix.system": (b"\x80\x02cposix\nsystem\n" + cmd + b"\x85R.", "posix.system"),
      "eval": (b"\x80\x02cbuiltins\neval\n" + _v(f"open({str(marker)!r}, 'w')") + b"\x85R.",
               "builtins.eval"),
      "getattr": (b"\x80\x02cbuiltins\ngetattr\n" + _v(1) + _v("real") + b"\x86R.",
                  "builtins.getattr"),
      # protocol 4 STACK_GLOBAL and the INST opcode go through the same allow-list
      "stack_global": (b"\x80\x04\x8c\x02os\x8c\x06system\x93" + cmd + b"\x85R.", "os.system"),
      "inst": (b"\x80\x02(" + cmd + b"ios\nsystem\n.", "os.system"),
      # a global nested deep inside an otherwise valid checkpoint
      "nested": (_dict(model=b"}(" + _v("w") + _tensor() + _v("x") + b"csubprocess\nPopen\n"
                       + _v(["touch", str(marker)]) + b"\x85Ru"), "subprocess.Popen"),
      "torch_module": (_dict(m=b"ctorch.nn.modules.linear\nLinear\n)R"),
                       "torch.nn.modules.linear.Linear"),
  }


def test_code_running_pickle_refused(tmp_path):
  marker = tmp_path / "PWNED"
  for name, (pkl, global_name) in _code_running_pickles(marker).items():
    msg = _refused(_zip(tmp_path / f"{name}.pth", pkl), f"refusing to load global "
                   f"{global_name}")
    assert "nothing is run" in msg
    assert not marker.exists(), name


def test_setstate_on_tensor_refused(tmp_path):
  """BUILD would call ndarray.__setstate__ (the C unpickler has no hook to stop it)."""
  state = _v((1, (2,), "f", False, b"\0" * 8))
  _refused(_zip(tmp_path / "build.pth", _dict(w=_tensor() + state + b"b")),
           "sets the state of a ndarray")


def test_other_bad_pickles_refused(tmp_path):
  cases = {
      "pid_module": (b"\x80\x02(" + _v("module") + _v("x") + b"tQ.", "unknown persistent id"),
      "pid_str": (b"\x80\x02" + _v("storage") + b"Q.", "unknown persistent id"),
      "pid_fake_type": (b"\x80\x02(" + _v("storage") + _v("FloatStorage") + _v("0") + _v("cpu")
                        + _v(4) + b"tQ.", "is not a torch storage"),
      "not_a_storage": (_dict(w=b"ctorch._utils\n_rebuild_tensor_v2\n(" + _v(5) + _v(0)
                              + _v((1,)) + _v((1,)) + b"tR"), "not a storage"),
      "garbage_pickle": (b"\x80\x02\xff\xfe", "not a readable PyTorch checkpoint"),
  }
  for name, (pkl, fragment) in cases.items():
    _refused(_zip(tmp_path / f"{name}.pth", pkl), fragment)


def test_broken_archives_refused(tmp_path):
  good = tmp_path / "good.pth"
  save_torch_checkpoint(good, {"model": dict(TINY_OBJ_ARRAYS)})
  blob = good.read_bytes()
  for cut in (len(blob) // 2, len(blob) - 10, 40):
    truncated = tmp_path / f"cut{cut}.pth"
    truncated.write_bytes(blob[:cut])
    _refused(truncated)
  # central directory claims a record far larger than the file: a zip bomb's first step
  forged = bytearray(blob)
  entry = blob.index(b"PK\x01\x02")  # data.pkl's central directory entry
  forged[entry + 20:entry + 28] = struct.pack("<II", 0x7fffffff, 0x7fffffff)
  (tmp_path / "forged.pth").write_bytes(bytes(forged))
  _refused(tmp_path / "forged.pth", "more than the file holds")
  deflated = _zip(tmp_path / "deflated.pth", _dict(w=_tensor()), compress=zipfile.ZIP_DEFLATED)
  _refused(deflated, "is compressed")
  with zipfile.ZipFile(tmp_path / "nopkl.pth", "w") as z:
    z.writestr("archive/version", b"3\n")
  _refused(tmp_path / "nopkl.pth", "no data.pkl")
  corrupt = bytearray(blob)
  corrupt[_local_data_offsets(good)["archive/data/0"][0]] ^= 0xff  # CRC mismatch
  (tmp_path / "crc.pth").write_bytes(bytes(corrupt))
  with pytest.raises(ValueError, match="crc.pth"):
    read_torch_checkpoint(tmp_path / "crc.pth")
  for name, data in {"empty.pth": b"", "text.pth": b"hello world\n",
                     "pickle.pth": pickle.dumps({"a": 1}, protocol=2)}.items():
    (tmp_path / name).write_bytes(data)
    _refused(tmp_path / name)
  with pytest.raises(FileNotFoundError):
    read_torch_checkpoint(tmp_path / "missing.pth")


def _legacy(obj_pkl: bytes, keys, storages, magic=0x1950a86a20f9469cfc6c) -> bytes:
  """The legacy (non-zip) format: magic, protocol, sys info, object, keys, storages."""
  keys = keys if isinstance(keys, bytes) else pickle.dumps(keys, 2)  # bytes: a raw pickle
  out = pickle.dumps(magic, 2) + pickle.dumps(1001, 2) + pickle.dumps(
      {"protocol_version": 1001, "little_endian": True,
       "type_sizes": {"short": 2, "int": 4, "long": 4}}, 2) + obj_pkl + keys
  for numel, data in storages:
    out += struct.pack("<q", numel) + data
  return out


def test_legacy_format(tmp_path):
  data = np.arange(4, dtype=np.float32).tobytes()
  good = tmp_path / "legacy.pth"
  good.write_bytes(_legacy(_dict(w=_tensor(key="94")), ["94"], [(4, data)]))
  np.testing.assert_array_equal(read_torch_checkpoint(good)["w"], np.arange(4))
  marker = tmp_path / "PWNED"
  cases = {
      "system": (_legacy(b"\x80\x02cos\nsystem\n" + _v(f"touch {marker}") + b"\x85R.", [],
                         []), "refusing to load global os.system"),
      "system_in_keys": (_legacy(_dict(w=_tensor(key="1")), b"\x80\x02cos\nsystem\n"
                                 + _v(f"touch {marker}") + b"\x85R.", []),
                         "refusing to load global os.system"),
      "oversized": (_legacy(_dict(w=_tensor(key="1", size=(64,))), ["1"], [(4, data)]),
                    "reaches element 63"),
      "truncated": (_legacy(_dict(w=_tensor(key="1")), ["1"], [(4, data[:9])]), "truncated"),
      "huge_numel": (_legacy(_dict(w=_tensor(key="1", numel=2**40, size=(1,))), ["1"],
                             [(2**40, data)]), "more than the file holds"),
      "count_mismatch": (_legacy(_dict(w=_tensor(key="1")), ["1"], [(3, data)]),
                         "file holds 3 elements"),
      "keys_mismatch": (_legacy(_dict(w=_tensor(key="1")), ["2"], [(4, data)]),
                        "storage key list"),
      "bad_magic": (_legacy(_dict(), [], [], magic=12345), "magic number"),
  }
  for name, (blob, fragment) in cases.items():
    path = tmp_path / f"{name}.pth"
    path.write_bytes(blob)
    _refused(path, fragment)
    assert not marker.exists(), name
  blob = LEGACY_TINY.read_bytes()
  (tmp_path / "cut.pth").write_bytes(blob[:-3])
  _refused(tmp_path / "cut.pth", "truncated")
  with open(tmp_path / "tar.pth", "wb") as f:
    f.write(b"\0" * 257 + b"ustar" + b"\0" * 250)
  _refused(tmp_path / "tar.pth", "tar-format")


def test_infer_cli_bad_pth_is_one_line_error(tmp_path):
  """A malicious G_*.pth given as --voice: one `error:` line, non-zero exit, nothing run."""
  folder = tmp_path / "voice"
  folder.mkdir()
  shutil.copy(FIXTURES / "official_tiny" / "config.json", folder / "config.json")
  marker = tmp_path / "PWNED"
  pkl = _dict(model=b"}(" + _v("enc_p.emb.weight") + _tensor(size=(64,)) + b"u",
              iteration=b"cos\nsystem\n" + _v(f"touch {marker}") + b"\x85R")
  bad = _zip(folder / "BAD.pth", pkl)
  proc = subprocess.run(
      [sys.executable, "infer.py", "--voice", str(bad), "--text", "hi", "--out",
       str(tmp_path / "x.wav")], capture_output=True, text=True, timeout=300, cwd=ROOT,
      env={**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"})
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0], lines
  assert not marker.exists() and not (tmp_path / "x.wav").exists()
