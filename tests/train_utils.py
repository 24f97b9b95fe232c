"""Helpers for the training tests: a synthetic corpus, data prep, and `train.py` runs.

Every run goes through the real CLI in a subprocess (so flags, exit codes and multi-process
setup are tested too). They share one persistent XLA cache, so a program compiled by one run
(the same config and shapes) is loaded by the next in seconds.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONFIG = f"{REPO / 'configs' / 'tiny.py'}:micro"
# Shared by the test processes and kept between sessions: entries are keyed by a hash of the
# program, so a stale entry is never used for a different program.
XLA_CACHE = os.path.join(tempfile.gettempdir(), "vits_jax_test_xla_cache")

WORDS = ["hello", "world", "speech", "model", "train", "sound", "voice", "tiny", "quick",
         "test", "green", "river"]


def make_corpus(root: Path, n_clips: int = 12, seconds: float = 1.0, sr: int = 22050,
                seed: int = 0) -> Path:
  """An LJSpeech-layout corpus of gliding tones with short random sentences.

  All clips have the same duration, so the loader puts them in one length bucket and a run
  compiles its step exactly once.
  """
  import soundfile as sf
  rng = np.random.default_rng(seed)
  (root / "wavs").mkdir(parents=True, exist_ok=True)
  lines = []
  t = np.arange(int(seconds * sr)) / sr
  for i in range(n_clips):
    text = " ".join(rng.choice(WORDS, int(rng.integers(2, 5)))).capitalize() + "."
    f0 = 110 + 60 * rng.random()
    wav = 0.3 * np.sin(2 * np.pi * f0 * t * (1 + 0.2 * t)) * np.hanning(len(t))
    wav += 0.01 * rng.standard_normal(len(t))
    sf.write(root / "wavs" / f"S{i:03d}.wav", wav.astype(np.float32), sr, subtype="PCM_16")
    lines.append(f"S{i:03d}|{text}|{text}")
  (root / "metadata.csv").write_text("\n".join(lines) + "\n")
  return root


def prepare(src: Path, out: Path) -> Path:
  """Runs data_prep/prepare.py on `src` (2 validation clips)."""
  subprocess.run([sys.executable, str(REPO / "data_prep" / "prepare.py"), "--dataset",
                  "ljspeech", "--src", str(src), "--out", str(out), "--workers", "1",
                  "--val-size", "2"], check=True, capture_output=True, text=True,
                 env=_env())
  return out


# A test run compiles a train step and runs it a few times: XLA:CPU's LLVM optimizations
# cost more there than they save (the micro step compiles in 53 s instead of 78 s here).
# Every run of the tests uses it, so runs that are compared compiled alike.
XLA_FLAGS = "--xla_backend_optimization_level=0"


def xla_flags(more: str = "") -> str:
  """XLA_FLAGS above followed by `more` (the flags of every process the tests start that
  compiles a training program: train.py, the README's commands, the notebook)."""
  return " ".join(filter(None, [XLA_FLAGS, more.replace(XLA_FLAGS, "").strip()]))


def _env(**extra) -> dict:
  """The environment of a test's `train.py`: CPU, the shared cache, this checkout, and
  `xla_flags` of any `XLA_FLAGS` in `extra`."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", VITS_JAX_XLA_CACHE=XLA_CACHE,
             PYTHONPATH=str(REPO))
  env.update(extra, XLA_FLAGS=xla_flags(extra.pop("XLA_FLAGS", "")))
  return env


def train_cmd(workdir: Path, data_dir: Path, *overrides: str) -> list:
  return [sys.executable, str(REPO / "train.py"), "--config", str(CONFIG),
          "--workdir", str(workdir), f"--config.data.dir={data_dir}", *overrides]


def run_train(workdir: Path, data_dir: Path, *overrides: str, env=None, timeout: int = 900,
              check: bool = True) -> subprocess.CompletedProcess:
  """`python train.py --config configs/tiny.py:micro ...`; raises with its stderr on failure."""
  proc = subprocess.run(train_cmd(workdir, data_dir, *overrides), cwd=REPO,
                        env=_env(**(env or {})), capture_output=True, text=True,
                        timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"train.py exited {proc.returncode}:\n{proc.stderr[-4000:]}")
  return proc


def metrics(workdir: Path) -> list:
  with open(workdir / "metrics.jsonl") as f:
    return [json.loads(line) for line in f if line.strip()]


def train_rows(workdir: Path) -> dict:
  """step -> the training row (the one with losses) of metrics.jsonl."""
  return {r["step"]: r for r in metrics(workdir) if "loss/g/total" in r}


def losses(row: dict) -> dict:
  return {k: v for k, v in row.items() if k.startswith(("loss/", "grad_norm/"))}


def checkpoint_params(workdir: Path, step: int, part: str = "params") -> dict:
  """The full `params` ({'generator', 'discriminator'}) of a checkpoint, as numpy (or
  another `part` of the saved train state, e.g. 'opt_state')."""
  import orbax.checkpoint as ocp
  path = workdir / "checkpoints" / str(step) / "state"
  import jax
  import numpy as np
  with ocp.PyTreeCheckpointer() as ckptr:
    meta = ckptr.metadata(path)
    meta = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta.tree
    as_numpy = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
    tree = ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
  return tree[part]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]
