"""kill -9 at random moments: training and data preparation survive and end where a clean
run ends.

    python bench/faults.py --kills 10 --prepare-kills 5

Training: `configs/tiny.py:micro` on a small synthetic corpus (gliding tones, 2 length
buckets so several programs compile), `--steps` steps, a checkpoint every 2 steps and an
evaluation every 3. One uninterrupted reference run, then a run that is SIGKILLed at a
random moment (uniform in a window that covers start-up, compilation, steps, saves and
evaluations), restarted, killed again, ... `--kills` times, then allowed to finish. Checked:
its final losses equal the reference's bitwise (same per-step keys, same data order), every
checkpoint left behind restores, metrics.jsonl parses and holds each step once.

Preparation: prepare.py on a corpus of `--clips` clips, SIGKILLed `--prepare-kills` times
at random moments, then run to completion; its records equal a clean run's (ids, tokens,
audio) and the directory holds no temporaries.

Prints the kills survived, when each kill landed, and the work lost (steps redone beyond
the last checkpoint). CPU only; takes about as long as `--kills + 2` short runs.
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


_CACHE = None   # this run's compile cache (in its temporary folder: every run starts cold,
# so the first kill lands during compilation, as the docstring says)


def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
              VITS_JAX_XLA_CACHE=str(_CACHE))


def _train_cmd(workdir, data, steps):
  return [sys.executable, str(REPO / "train.py"), "--config",
          f"{REPO / 'configs' / 'tiny.py'}:micro", "--workdir", str(workdir),
          f"--config.data.dir={data}", f"--config.train.num_steps={steps}",
          "--config.train.checkpoint_every=2", "--config.train.eval_every=3",
          "--config.train.log_every=1", "--config.train.max_to_keep=100"]


def _rows(workdir):
  rows = {}
  with open(workdir / "metrics.jsonl") as f:
    for line in f:
      row = json.loads(line)          # every line must parse
      if "loss/g/total" in row:
        assert row["step"] not in rows, f"step {row['step']} logged twice"
        rows[row["step"]] = row
  return rows


def _progress(workdir, since):
  """The last step this run logged (rows written after `since`; half-written lines skipped)."""
  best = 0
  try:
    with open(workdir / "metrics.jsonl", "rb") as f:
      lines = f.read().split(b"\n")
  except FileNotFoundError:
    return 0
  for line in lines:
    try:
      row = json.loads(line)
    except ValueError:
      continue
    if "loss/g/total" in row and row.get("time", 0) >= since:
      best = max(best, int(row["step"]))
  return best


def _losses(row):
  return {k: v for k, v in row.items() if k.startswith("loss/")}


def train_faults(root, kills, steps, rng):
  import train_utils as tu
  corpus = tu.make_corpus(root / "corpus", n_clips=16, seconds=1.0)
  data = tu.prepare(corpus, root / "data")
  ref = root / "ref"
  t0 = time.time()
  subprocess.run(_train_cmd(ref, data, steps), check=True, env=_env(), capture_output=True)
  clean_s = time.time() - t0
  print(f"reference run: {steps} steps in {clean_s:.0f} s")
  run = root / "killed"
  landed = []
  redone = 0
  for k in range(kills):
    proc = subprocess.Popen(_train_cmd(run, data, steps), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # Kill k lands after a random logged step (0 = during start-up and compilation) plus a
    # random fraction of a step, so kills fall in compilation, steps, saves and evaluations.
    target = rng.randrange(0, steps - 1) if k else 0
    extra = rng.uniform(0.0, 2.0)
    start = time.time() - 1.0
    while proc.poll() is None and _progress(run, start) < target:
      time.sleep(0.05)
    if proc.poll() is not None:
      landed.append(f"kill {k + 1}: run ended first")
      continue
    time.sleep(extra)
    before = _progress(run, start)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    ckpts = sorted(int(p.name) for p in (run / "checkpoints").iterdir()
                   if p.name.isdigit()) if (run / "checkpoints").exists() else []
    last = ckpts[-1] if ckpts else 0
    redone += max(0, before - last)
    landed.append(f"kill {k + 1} {time.time() - start:.1f} s into the run: logged step "
                  f"{before}, last checkpoint {last}")
  final = subprocess.run(_train_cmd(run, data, steps), env=_env(), capture_output=True,
                         text=True)
  if final.returncode:
    for line in landed:
      print("  " + line)
    print(f"the resumed run failed ({final.returncode}):\n{final.stderr[-4000:]}")
    return False
  want, got = _rows(ref), _rows(run)
  assert sorted(got) == sorted(want), (sorted(got), sorted(want))
  same = all(_losses(got[s]) == _losses(want[s]) for s in want)
  from vits_jax.convert.source import load_source
  restorable = 0
  for p in (run / "checkpoints").iterdir():
    if p.name.isdigit():
      load_source(run, step=int(p.name))
      restorable += 1
  for line in landed:
    print("  " + line)
  print(f"training: {len(landed)} kills, final losses bitwise equal to the clean run: "
        f"{same}; {restorable} checkpoints restore; steps redone after kills (work lost "
        f"beyond the last checkpoint): {redone}")
  return same


def prepare_faults(root, kills, n_clips, rng):
  import train_utils as tu
  corpus = tu.make_corpus(root / "pcorpus", n_clips=n_clips, seconds=1.0, seed=3)
  cmd = lambda out: [sys.executable, str(REPO / "data_prep" / "prepare.py"), "--dataset",
                     "ljspeech", "--src", str(corpus), "--out", str(out), "--workers", "2",
                     "--shard-mb", "0.05", "--force"]
  t0 = time.time()
  subprocess.run(cmd(root / "pclean"), check=True, env=_env(), capture_output=True)
  clean_s = time.time() - t0
  out = root / "pkilled"
  for _ in range(kills):
    proc = subprocess.Popen(cmd(out), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(rng.uniform(0.5, clean_s))
    os.killpg(proc.pid, signal.SIGKILL)   # the workers too
    proc.wait()
  subprocess.run(cmd(out), check=True, env=_env(), capture_output=True)
  from vits_jax.data import loader, records
  def recs(d):
    out = {}
    for split in records.SPLITS:
      s = loader.PreparedSplit(str(d), split)
      for r in s.read(range(len(s))):
        out[r["id"]] = (split, r["tokens"].tolist(), r["audio"].tobytes())
    return out
  same = recs(out) == recs(root / "pclean")
  leftovers = [p.name for p in out.iterdir() if ".tmp-" in p.name]
  print(f"prepare: {kills} kills, records equal to a clean run: {same}; temporaries left: "
        f"{leftovers}")
  return same and not leftovers


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--kills", type=int, default=10)
  p.add_argument("--prepare-kills", type=int, default=5)
  p.add_argument("--steps", type=int, default=12)
  p.add_argument("--clips", type=int, default=200)
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args()
  rng = random.Random(a.seed)
  if a.steps < 2:
    sys.exit("error: --steps must be at least 2 (a kill lands between logged steps)")
  root = Path(tempfile.mkdtemp(prefix="vits_jax_faults_"))
  global _CACHE
  _CACHE = root / "xla"
  try:
    ok = prepare_faults(root, a.prepare_kills, a.clips, rng)
    ok = train_faults(root, a.kills, a.steps, rng) and ok
  finally:
    shutil.rmtree(root, ignore_errors=True)
  sys.exit(0 if ok else 1)


if __name__ == "__main__":
  main()
