"""Fine-tune the bundled joe voice on a new speaker with configs/finetune.py, and watch it move.

    python bench/finetune.py --minutes 30              # speaker p902 of vctk_mini

Builds an LJSpeech-layout corpus of one VCTK speaker (default p902 of
`../shared/data/vctk_mini`, an espeak-ng `en-us+f3` voice, higher than joe), prepares it with
the Piper frontend (4 clips held out as the validation split), runs
`train.py --config configs/finetune.py` (init_from=joe) for `--minutes` of wall time, stops it
with SIGTERM (it saves and exits 0), and prints every evaluation of the run on the held-out
clips: median F0 of the inferred speech vs the real clips' (the target), mel-cepstral
distance of teacher-timed speech to the real clips, the recognizer's WER (Moonshine base
where `moonshine-cpp` is installed, else pocketsphinx),
and mel L1. The evaluation at step 0 is joe itself (before any update).
"""

import argparse
import glob
import json
import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_corpus(src: str, speaker: str, out: str, sample_rate: int = 22050) -> int:
  import librosa
  import numpy as np
  import soundfile as sf
  os.makedirs(os.path.join(out, "wavs"), exist_ok=True)
  lines = []
  for flac in sorted(glob.glob(os.path.join(src, "wav48_silence_trimmed", speaker, "*.flac"))):
    clip = os.path.basename(flac).split("_mic")[0]
    txt = os.path.join(src, "txt", speaker, f"{clip}.txt")
    if not os.path.isfile(txt):
      continue
    audio, rate = sf.read(flac, dtype="float32")
    audio = librosa.resample(audio, orig_sr=rate, target_sr=sample_rate)
    sf.write(os.path.join(out, "wavs", f"{clip}.wav"), np.clip(audio, -1, 1), sample_rate,
             subtype="PCM_16")
    text = open(txt, encoding="utf-8").read().strip()
    lines.append(f"{clip}|{text}|{text}")
  with open(os.path.join(out, "metadata.csv"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  return len(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--src", default=os.path.join(REPO, "..", "shared", "data", "vctk_mini"))
  p.add_argument("--speaker", default="p902")
  p.add_argument("--workdir", default="runs/bench_finetune")
  p.add_argument("--minutes", type=float, default=30.0)
  p.add_argument("--eval-every", type=int, default=None, help="default: the config's")
  p.add_argument("--val-seed", type=int, default=1234,
                 help="prepare.py's --seed: which 4 clips are held out (default: its default)")
  p.add_argument("overrides", nargs="*", help="extra --config.a.b=value flags")
  from flags import parse_with_overrides  # bench/ is on sys.path
  args = parse_with_overrides(p)

  workdir = os.path.abspath(args.workdir)
  corpus, data = os.path.join(workdir, "corpus"), os.path.join(workdir, "data")
  start = time.time()
  n = build_corpus(args.src, args.speaker, corpus)
  if n == 0:
    sys.exit(f"error: no clips of speaker {args.speaker!r} under {args.src} (a VCTK layout: "
             "wav48_silence_trimmed/SPEAKER/*.flac and txt/SPEAKER/*.txt)")
  subprocess.run([sys.executable, os.path.join(REPO, "data_prep", "prepare.py"), "--dataset",
                  "ljspeech", "--src", corpus, "--out", data, "--frontend", "piper",
                  "--val-size", "4", "--seed", str(args.val_seed)], check=True)
  print(f"{n} clips of {args.speaker} ready in {time.time() - start:.0f} s", flush=True)
  run = os.path.join(workdir, "run")
  cmd = [sys.executable, os.path.join(REPO, "train.py"), "--config",
         os.path.join(REPO, "configs", "finetune.py"), "--workdir", run,
         f"--config.data.dir={data}", "--config.train.num_steps=100000000", *args.overrides]
  if args.eval_every:
    cmd.append(f"--config.train.eval_every={args.eval_every}")
  t0 = time.time()
  proc = subprocess.Popen(cmd, cwd=REPO)
  try:
    proc.wait(timeout=args.minutes * 60)
  except subprocess.TimeoutExpired:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=600)
  minutes = (time.time() - t0) / 60
  metrics = os.path.join(run, "metrics.jsonl")
  if proc.returncode or not os.path.isfile(metrics):
    sys.exit(f"error: train.py exited with status {proc.returncode} before logging an "
             "evaluation (its message is above)")
  rows = []
  with open(metrics) as f:
    for line in f:
      if line.strip():
        r = json.loads(line)
        if "val/mel_l1" in r:
          rows.append(r)
  print(f"\n{minutes:.1f} minutes of training; held-out clips of {args.speaker}:")
  print("| step | F0 median (Hz) | target F0 | MCD (dB) | WER | target WER | mel L1 | "
        "predicted / true length |")
  print("|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['step']} | {r.get('val/f0_median', float('nan')):.0f} | "
          f"{r.get('val/f0_median_real', float('nan')):.0f} | {r.get('val/mcd', float('nan')):.2f} | "
          f"{r.get('val/wer', float('nan')):.2f} | {r.get('val/wer_real', float('nan')):.2f} | "
          f"{r['val/mel_l1']:.3f} | {r.get('val/len_ratio', float('nan')):.2f} |")
  sys.path.insert(0, REPO)
  from vits_jax.training import speech_measures
  with open(os.path.join(run, "config.json")) as f:   # the run's choice (an override too)
    judge = speech_measures.recognizer(json.load(f)["train"].get("eval_recognizer", "auto"))
  print(f"(WER: {judge.name if judge else 'no recognizer'}; target WER: the recognizer on "
        "the speaker's real held-out clips, the score of the voice the run moves to)")


if __name__ == "__main__":
  main()
