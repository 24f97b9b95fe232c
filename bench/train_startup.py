"""How soon does training start? A cold run and a warm restart of train.py, timed.

    python bench/train_startup.py                      # configs/tiny.py on 48 clips
    python bench/train_startup.py --config configs/ljs_base.py --steps 2 --more 1 \
        --config.train.batch_size=4

Builds an LJSpeech-layout corpus of the first `--clips` clips of `--src`, prepares it, then
runs `python train.py` twice with a compile cache of its own (empty at the start):

  first    a fresh workdir, `--steps` steps, an evaluation at step 0 and at the end
  restart  the same workdir continued for `--more` steps (cache and program store warm)

and prints, for each, the wall time of the whole process, the time to its first step
(from the process start to the metrics row of that step, logged every step) and the steady
steps per second (the median over the run's later steps). `--cache` reuses a cache
directory instead (e.g. to time a warm first run).
"""

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_corpus(src: str, out: str, clips: int) -> int:
  rows = []
  with open(os.path.join(src, "metadata.csv"), encoding="utf-8") as f:
    for line in f:
      name = line.split("|", 1)[0]
      if line.strip() and os.path.isfile(os.path.join(src, "wavs", f"{name}.wav")):
        rows.append(line.rstrip("\n"))
      if len(rows) == clips:
        break
  os.makedirs(os.path.join(out, "wavs"), exist_ok=True)
  for row in rows:
    name = row.split("|", 1)[0]
    shutil.copy(os.path.join(src, "wavs", f"{name}.wav"), os.path.join(out, "wavs"))
  with open(os.path.join(out, "metadata.csv"), "w", encoding="utf-8") as f:
    f.write("\n".join(rows) + "\n")
  return len(rows)


def timed_run(cmd: list, env: dict, workdir: str, label: str):
  start = time.time()
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
  wall = time.time() - start
  if proc.returncode != 0:
    tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
    sys.exit(f"error: train.py ({label}) exited {proc.returncode}: {tail[0]}")
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  steps = [r for r in rows if "loss/g/total" in r and r["time"] >= start]
  first = steps[0]["time"] - start if steps else float("nan")
  later = [r["steps_per_sec"] for r in steps[len(steps) // 2:]]
  steady = statistics.median(later) if later else float("nan")
  last = steps[-1] if steps else {}
  print(f"{label:8s} wall {wall:6.1f} s   first step {first:6.1f} s   "
        f"steady {steady:5.2f} steps/s   ({len(steps)} steps; step programs "
        f"{last.get('jit/train_step_traces', '?')}, programs loaded from the store "
        f"{last.get('jit/programs_loaded', '?')})", flush=True)
  return wall, first


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--src", default=os.path.join(REPO, "..", "shared", "data", "ljs_joe_mini"),
                 help="LJSpeech-layout corpus")
  p.add_argument("--clips", type=int, default=48)
  p.add_argument("--config", default="configs/tiny.py")
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--more", type=int, default=10, help="steps of the restarted run")
  p.add_argument("--cache", default=None, help="compile cache dir (default: a new empty one)")
  p.add_argument("overrides", nargs="*", help="extra --config.a.b=value flags")
  from flags import parse_with_overrides  # bench/ is on sys.path
  args = parse_with_overrides(p)
  if args.clips < 3:
    p.error(f"--clips {args.clips}: need at least 3 (2 are held out for evaluation)")
  if not os.path.isfile(os.path.join(args.src, "metadata.csv")):
    sys.exit(f"error: --src {args.src}: no metadata.csv (an LJSpeech-layout corpus)")

  tmp = tempfile.mkdtemp(prefix="train_startup_")
  try:
    n = build_corpus(args.src, os.path.join(tmp, "corpus"), args.clips)
    if n < 3:
      sys.exit(f"error: {n} usable clips in {args.src}; need at least 3")
    data = os.path.join(tmp, "data")
    prep = subprocess.run([sys.executable, os.path.join(REPO, "data_prep", "prepare.py"),
                           "--dataset", "ljspeech", "--src", os.path.join(tmp, "corpus"),
                           "--out", data, "--val-size", "2"], capture_output=True, text=True)
    if prep.returncode != 0:
      tail = prep.stderr.strip().splitlines()[-1:] or ["(no output)"]
      sys.exit(f"error: prepare.py exited {prep.returncode}: {tail[0]}")
    cache = args.cache or os.path.join(tmp, "cache")
    env = dict(os.environ, VITS_JAX_XLA_CACHE=cache, PYTHONPATH=REPO)
    print(f"{args.config}, {n} clips, cache {'given' if args.cache else 'empty at start'}")
    workdir = os.path.join(tmp, "run")
    base = [sys.executable, os.path.join(REPO, "train.py"), "--config", args.config,
            "--workdir", workdir, f"--config.data.dir={data}", "--config.train.log_every=1",
            f"--config.train.eval_every={args.steps}", *args.overrides]
    timed_run(base + [f"--config.train.num_steps={args.steps}"], env, workdir, "first")
    timed_run(base + [f"--config.train.num_steps={args.steps + args.more}"], env, workdir,
              "restart")
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
