"""The README's commands, copied as written into a fresh shell at the repository root, work.

Every ```bash block of README.md is split into commands; the ones that need what a test
machine cannot have (an install, a cloud account, a dataset or voice at a placeholder path, a
second concurrent process) are skipped by the explicit rules below, each with its reason, and
everything else runs, in README order, with `bash -e` in a copy of the checkout (tracked files
only, so nothing a developer left around helps). The ```python block runs there too. Then the
files the commands promise are checked: real speech WAVs of the right count and rate, a
prepared corpus, a training run with finite losses and a checkpoint, and the fine-tuned run.
"""

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import train_utils as tu

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# (pattern, reason) -- a command matching any pattern is not run here.
SKIP = [
    (r"^pip install|^python3 -m venv", "installs: CI installed requirements-dev.txt already"),
    (r"python -m pytest", "the test command itself"),
    (r"^gcloud |^git clone|^# on the VM", "needs a Google Cloud account / network"),
    (r"path/to/", "placeholder path to a voice or dataset the user downloads"),
    (r"data/ljs\b|data/vctk\b|~/tensorflow_datasets", "needs LJSpeech / VCTK (GBs)"),
    (r"--coordinator_address", "two processes that must run at the same time"),
    (r"^tensorboard ", "a server"),
    (r"^python serve\.py |localhost:5000", "a server and its client (tests/test_serve.py runs both)"),
]
# Commands that must run, so a README edit cannot make this test check nothing.
MUST_RUN = [
    'python infer.py --text "Hello there." --out hello.wav',
    "python infer.py --input lines.txt --out-dir wavs/ --batch-size 16",
    "python train.py --config configs/tiny.py --workdir runs/demo",
    "python infer.py --voice runs/demo",
    "--config.train.init_from=",
    "python export.py --voice joe --to piper",
    "python -m piper -m voices/joe.onnx",
    "python export.py --voice runs/demo --to official",
]


def _bash_commands():
  """(command, skip reason or None) for every line of every ```bash block."""
  text = README.read_text()
  out = []
  for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
    for line in block.splitlines():
      line = line.strip()
      if not line or line.startswith("#") and not line.startswith("# on the VM"):
        continue
      # "pip install -r requirements.txt && python infer.py ...": CI installed; run the rest.
      line = re.sub(r"^pip install -r requirements(-dev)?\.txt && ", "", line)
      reason = next((r for p, r in SKIP if re.search(p, line)), None)
      out.append((line, reason))
  return out


def _python_blocks():
  return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_skip_rules_leave_the_runnable_commands():
  commands = _bash_commands()
  runnable = [c for c, reason in commands if reason is None]
  for needle in MUST_RUN:
    assert any(needle in c for c in runnable), f"README no longer runs: {needle}"
  # The skipped ones are skipped for a stated reason, and they are the minority.
  assert len(runnable) >= 15, runnable
  assert _python_blocks(), "README lost its Python example"


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
  """Runs the README in a copy of the checkout; returns (repo copy, transcript)."""
  tmp = tmp_path_factory.mktemp("readme")
  repo = tmp / "vits_jax"
  files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                         check=True).stdout.decode().split("\0")
  for name in filter(None, files):
    src = ROOT / name
    if src.is_file():
      dst = repo / name
      dst.parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(src, dst)
  env = dict(os.environ)
  # `python` in the README is this interpreter (the environment CI installed into); a
  # wrapper, not a symlink, so a virtual environment is still recognized.
  bindir = tmp / "bin"
  bindir.mkdir()
  (bindir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
  (bindir / "python").chmod(0o755)
  env["PATH"] = os.pathsep.join([str(bindir), env.get("PATH", "")])
  env["JAX_PLATFORMS"] = "cpu"
  env["HOME"] = str(tmp / "home")            # a fresh shell: no caches from earlier runs
  # As every train.py run of the tests: compile without LLVM's optimizations (the README's
  # two training runs take a few steps; their compilation is most of this test's time).
  env["XLA_FLAGS"] = tu.xla_flags(env.get("XLA_FLAGS", ""))
  env.pop("PYTHONPATH", None)
  transcript = []
  for command, reason in _bash_commands():
    if reason is not None:
      continue
    proc = subprocess.run(["bash", "-e", "-c", command], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=900,
                          stdin=subprocess.DEVNULL)
    transcript.append((command, proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:]))
    assert proc.returncode == 0, (
        f"README command failed ({proc.returncode}): {command}\n{proc.stderr[-3000:]}")
  for i, block in enumerate(_python_blocks()):
    script = repo / f"readme_block_{i}.py"
    script.write_text(block)
    proc = subprocess.run([sys.executable, script.name], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    transcript.append((f"python block {i}", proc.returncode, proc.stdout, proc.stderr))
    assert proc.returncode == 0, f"README Python block {i} failed:\n{proc.stderr[-3000:]}"
  return repo, transcript


def _speech(path: Path, rate: int = 22050, min_seconds: float = 0.3):
  audio, sr = sf.read(path, dtype="float32")
  assert sr == rate, (path, sr)
  assert audio.ndim == 1 and len(audio) >= min_seconds * sr, (path, audio.shape)
  rms = float(np.sqrt(np.mean(audio ** 2)))
  assert 0.01 < rms < 0.5, (path, rms)
  return audio


def test_synthesis_commands_write_speech(ran):
  repo, _ = ran
  hello = _speech(repo / "hello.wav")
  slow = _speech(repo / "slow.wav")
  same = _speech(repo / "same.wav")
  assert len(hello) > 0.8 * 22050      # "Hello there. How are you today?"
  assert len(slow) > len(same)         # length_scale 1.3 on a longer sentence than "Always..."
  assert sorted(p.name for p in (repo / "wavs").glob("*.wav")) == [
      "0001.wav", "0002.wav", "0003.wav"]
  for p in (repo / "wavs").glob("*.wav"):
    _speech(p)
  assert [p.name for p in (repo / "wavs_stdin").glob("*.wav")] == ["0001.wav"]
  assert len(_speech(repo / "stdin_text.wav")) > 1.5 * 22050   # both lines of stdin
  raw = np.frombuffer((repo / "hello.raw").read_bytes(), "<i2").astype(np.float32) / 32767
  assert raw.size > 1.0 * 22050 and 0.01 < float(np.sqrt(np.mean(raw ** 2))) < 0.5
  # --normalize: Piper's level, each sentence at full scale (the model's own peaks lower).
  assert np.abs(_speech(repo / "piper_level.wav")).max() > 0.99 > np.abs(hello).max()


def test_streaming_example_writes_what_it_says(ran):
  repo, transcript = ran
  out = [t for t in transcript if t[0] == "python block 1"][0][2]
  samples, ids, frames = out.strip().splitlines()[-1].split(" ", 2)
  raw = np.frombuffer((repo / "streamed.raw").read_bytes(), "<i2")
  assert raw.size > 22050 and int(samples) > 0
  assert int(frames) * 256 == int(samples)  # durations cover the audio exactly


def test_python_example_prints_rate_and_lengths(ran):
  repo, transcript = ran
  out = [t for t in transcript if t[0] == "python block 0"][0][2]
  rate, speakers, lengths = out.strip().splitlines()[-1].split(" ", 2)
  assert (int(rate), int(speakers)) == (22050, 1)
  lengths = json.loads(lengths)
  assert len(lengths) == 2 and lengths[1] > lengths[0] > 0
  _speech(repo / "hello.wav")


def test_training_quickstart_trains_and_speaks(ran):
  repo, _ = ran
  manifest = json.loads((repo / "data" / "demo" / "manifest.json").read_text())
  assert manifest["counts"]["train"] + manifest["counts"]["validation"] == 6, manifest["counts"]
  rows = [json.loads(l) for l in (repo / "runs" / "demo" / "metrics.jsonl").read_text()
          .splitlines() if l.strip()]
  steps = [r["step"] for r in rows if "loss/g/total" in r]
  assert steps and max(steps) == 20, steps
  for r in rows:
    for k, v in r.items():
      if k.startswith("loss/"):
        assert math.isfinite(v), (r["step"], k, v)
  assert any(p.name.isdigit() for p in (repo / "runs" / "demo" / "checkpoints").iterdir())
  demo, sr = sf.read(repo / "demo.wav", dtype="float32")
  assert sr == 22050 and len(demo) > 0 and np.all(np.isfinite(demo))


def test_fine_tune_from_the_bundled_voice_ran(ran):
  repo, _ = ran
  ckpts = [p for p in (repo / "runs" / "joe_ft" / "checkpoints").iterdir() if p.name.isdigit()]
  assert ckpts
  cfg = json.loads((repo / "runs" / "joe_ft" / "config.json").read_text())
  assert cfg["train"]["init_from"] == "joe"   # the bundled voice by name


def test_exports_were_written_and_the_piper_runtime_spoke(ran):
  repo, _ = ran
  meta = json.loads((repo / "voices" / "joe.onnx.json").read_text())
  assert meta["audio"]["sample_rate"] == 22050 and meta["num_symbols"] == 256
  _speech(repo / "piper_joe.wav", min_seconds=1.0)
  assert sorted(p.name for p in (repo / "voices" / "joe_official").iterdir()) == [
      "G_0.pth", "config.json"]
  demo = sorted(p.name for p in (repo / "voices" / "demo_official").iterdir())
  assert demo[0].startswith("G_") and demo[-1] == "config.json"
