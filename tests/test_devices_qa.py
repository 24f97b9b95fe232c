"""QA pins for synthesis over several devices and processes, and the compile cache.

- Several processes of one job (`JAX_COORDINATOR_ADDRESS`, `--input`) sharing one compile
  cache: each process's compiled executable is bound to its own devices (CPU ids 0, 2048,
  4096, ...), and all of them were stored under one file name, so a process loaded another's
  executable ("Expected args to execute_sharded_on_local_devices to have 1 shards, got:
  [0, 0, ...]") and, racing the others to replace it, died with that traceback (a rerun of
  the same 3-process job on its own cache failed every time; a fresh cache passed).
- A JAX cache the user configured (JAX_COMPILATION_CACHE_DIR) is used, and nothing is written
  to ~/.cache/vits_jax.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import train_utils as tu

REPO = Path(__file__).resolve().parents[1]
MULTI = REPO / "tests" / "fixtures" / "piper_tiny_multi.onnx"
LINES = ["Yes.", "", "The birch canoe slid on the smooth planks.", "\U0001F600", "?",
         "It is easy to tell the depth of a well.", "   ", "Hello there.", "Okay then."]


def _env(**extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(name, None)
  env.update(extra)
  return env


def _infer(args, env, **kwargs):
  return subprocess.Popen([sys.executable, str(REPO / "infer.py"), "--voice", str(MULTI),
                           "--speaker", "bob", *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _files(folder):
  return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


def test_executable_tag_names_the_local_devices(monkeypatch):
  """Unit pin of the cause: the stored executable's name depends on the process's devices
  (another process of the same job, devices 2048.., must not load device 0's)."""
  import jax
  from vits_jax import inference

  class Fake:
    id = 2048
  inference._machine_tag.cache_clear()   # pylint: disable=protected-access
  try:
    base = inference._machine_tag()   # pylint: disable=protected-access
    inference._machine_tag.cache_clear()   # pylint: disable=protected-access
    monkeypatch.setattr(jax, "local_devices", lambda *a, **k: [Fake()])
    assert inference._machine_tag() != base   # pylint: disable=protected-access
  finally:
    monkeypatch.undo()
    inference._machine_tag.cache_clear()   # pylint: disable=protected-access


def test_three_processes_on_a_used_cache_write_one_processs_files(tmp_path):
  """A one-process run fills the cache; then a 3-process run of the same lines on that
  cache: every process exits 0 and the union of their files is the one-process run's, byte
  for byte. (Before the fix: a JaxRuntimeError traceback from a process that loaded another
  process's executable.)"""
  lines = tmp_path / "lines.txt"
  lines.write_text("\n".join(LINES) + "\n")
  cache = str(tmp_path / "cache")
  one = _infer(["--input", str(lines), "--out-dir", str(tmp_path / "one")],
               _env(VITS_JAX_XLA_CACHE=cache))
  _, err = one.communicate(timeout=300)
  assert one.returncode == 0, err[-2000:]
  port = tu.free_port()
  procs = [_infer(["--input", str(lines), "--out-dir", str(tmp_path / "three")],
                  _env(VITS_JAX_XLA_CACHE=cache, JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                       JAX_NUM_PROCESSES="3", JAX_PROCESS_ID=str(i))) for i in range(3)]
  outs = [p.communicate(timeout=300) for p in procs]
  for i, (p, (_, err)) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, (i, err[-1500:])
    assert "Traceback" not in err, (i, err[-1500:])
  assert _files(tmp_path / "three") == _files(tmp_path / "one")
  assert sorted(_files(tmp_path / "one")) == ["0001.wav", "0002.wav", "0005.wav", "0006.wav",
                                             "0007.wav"]


def test_a_jax_cache_configured_by_environment_is_used(tmp_path):
  """JAX_COMPILATION_CACHE_DIR set, VITS_JAX_XLA_CACHE unset: load_voice keeps that cache
  (its stored programs go there too) and writes nothing under ~/.cache/vits_jax."""
  home, users = tmp_path / "home", tmp_path / "users"
  home.mkdir()
  env = _env(HOME=str(home), JAX_COMPILATION_CACHE_DIR=str(users))
  env.pop("VITS_JAX_XLA_CACHE", None)
  code = ("import jax, vits_jax\n"
          f"v = vits_jax.load_voice({str(MULTI)!r})\n"
          "v.synthesize('Hello there.', speaker='bob')\n"
          "print(jax.config.jax_compilation_cache_dir)\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == str(users)
  assert not (home / ".cache" / "vits_jax").exists()
  assert list((users / "programs").glob("*.xlaexe"))
