"""Does it learn? Trains a config for a fixed wall-clock time and prints validation curves.

    python bench/train_curve.py --src ../shared/data/ljs_joe_mini --minutes 20

Prepares `--src` (LJSpeech layout) with data_prep/prepare.py unless `--data` is already
prepared, runs `train.py` (default configs/tiny.py) for `--minutes`, stops it with SIGTERM
(the preemption path: it saves a checkpoint and exits 0), and prints, for each evaluation, the
validation measures of `vits_jax/training/evaluation.py`:

  mel_l1      log-mel L1 of speech synthesized from the text with the true timing
              (MAS alignment), vs the real clip; falls as the model learns
  diag        alignment diagonality, 1 = on the diagonal, ~0 = piled on one end
  band        fraction of frames within 10% of the diagonal
  len_ratio   predicted / true number of frames (duration predictor)

next to the training mel L1 (of the decoded training windows) at that step.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--src", default=os.path.join(REPO, "..", "shared", "data", "ljs_joe_mini"),
                 help="LJSpeech-layout corpus")
  p.add_argument("--data", default=None, help="prepared dir (default: <workdir>/data)")
  p.add_argument("--workdir", default="runs/train_curve")
  p.add_argument("--config", default="configs/tiny.py")
  p.add_argument("--minutes", type=float, default=20.0)
  p.add_argument("--eval-every", type=int, default=200)
  p.add_argument("--fresh", action="store_true", help="delete an existing workdir first")
  p.add_argument("overrides", nargs="*", help="extra --config.a.b=value flags")
  from flags import parse_with_overrides  # bench/ is on sys.path
  args = parse_with_overrides(p)

  workdir = os.path.abspath(args.workdir)
  if args.fresh and os.path.isdir(os.path.join(workdir, "checkpoints")):
    import shutil
    shutil.rmtree(workdir)
  data = os.path.abspath(args.data or os.path.join(workdir, "data"))
  os.makedirs(workdir, exist_ok=True)
  t0 = time.time()
  subprocess.run([sys.executable, os.path.join(REPO, "data_prep", "prepare.py"), "--dataset",
                  "ljspeech", "--src", args.src, "--out", data, "--val-size", "8"],
                 check=True)
  print(f"data ready in {time.time() - t0:.0f} s: {data}", flush=True)

  cmd = [sys.executable, os.path.join(REPO, "train.py"), "--config", args.config,
         "--workdir", workdir, f"--config.data.dir={data}",
         "--config.train.num_steps=100000000", f"--config.train.eval_every={args.eval_every}",
         "--config.train.log_every=20", "--config.train.checkpoint_every=1000",
         *args.overrides]
  start = time.time()
  proc = subprocess.Popen(cmd, cwd=REPO)
  try:
    proc.wait(timeout=args.minutes * 60)
  except subprocess.TimeoutExpired:
    proc.send_signal(signal.SIGTERM)
    proc.wait()
  print(f"\ntrain.py exited {proc.returncode} after {(time.time() - start) / 60:.1f} min")
  report(workdir, start)


def report(workdir: str, start: float):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  train = [r for r in rows if "loss/g/mel" in r]
  val = [r for r in rows if "val/mel_l1" in r]
  if not val:
    print("no evaluation yet")
    return
  print(f"{'min':>6s}{'step':>7s}{'mel_l1':>9s}{'diag':>7s}{'band':>7s}{'len_ratio':>10s}"
        f"{'train_mel':>10s}{'steps/s':>9s}")
  for r in val:
    near = [t for t in train if t["step"] <= r["step"]]
    t = near[-1] if near else {}
    minutes = (r.get("time", start) - start) / 60
    print(f"{minutes:6.1f}{r['step']:7d}{r['val/mel_l1']:9.3f}{r['val/diagonality']:7.3f}"
          f"{r['val/diag_band']:7.3f}{r['val/len_ratio']:10.2f}"
          f"{t.get('loss/g/mel', float('nan')):10.3f}{t.get('steps_per_sec', float('nan')):9.2f}")
  first, last = val[0], val[-1]
  print(f"val mel L1 {first['val/mel_l1']:.3f} -> {last['val/mel_l1']:.3f} "
        f"({last['val/mel_l1'] / first['val/mel_l1']:.2f}x); diagonality "
        f"{first['val/diagonality']:.3f} -> {last['val/diagonality']:.3f} over "
        f"{last['step']} steps")


if __name__ == "__main__":
  main()
