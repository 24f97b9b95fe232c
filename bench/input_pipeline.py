"""How fast the input pipeline feeds batches, next to how fast training consumes them.

    python bench/input_pipeline.py --data /path/to/prepared      # a prepare.py output
    python bench/input_pipeline.py                               # synthetic LJSpeech-like shards

Prints batches/s of `vits_jax.data.make_train_loader` for the tiny config's batch (4) and the
official one (64), with 1 and 4 read threads, and the ratio to the tiny config's training speed
target (2 steps/s on 2 CPU cores; pass --train-steps-per-sec to compare with a measured one),
and the host bytes per batch (audio travels as int16 PCM, half of float32).
A ratio well above 1 means the host never makes the step wait. The reference row is the raw
rate of reading + decoding records with no batching, in the same process.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=wrong-import-position

from vits_jax.data import loader, records  # pylint: disable=wrong-import-position


def synthetic(out, n_clips=600, rate=22050, seed=0):
  """LJSpeech-like shards: 1-10 s clips, ~14 tokens/s with blanks, random content."""
  from data_prep import writer  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  w = writer.SplitWriter(out, "train", 64 << 20)
  for i in range(n_clips):
    seconds = rng.uniform(1.0, 10.0)
    n_tok = int(seconds * 28) | 1
    w.add(f"S{i:05d}", "ljspeech", 0, "", rng.integers(1, 178, n_tok),
          (rng.standard_normal(int(seconds * rate)) * 3000).astype(np.int16))
  empty = writer.SplitWriter(out, "validation", 64 << 20)
  records.write_json_atomic(os.path.join(out, records.MANIFEST), {
      "format": records.FORMAT, "splits": {"train": w.finish(), "validation": empty.finish()},
      "counts": {"train": n_clips, "validation": 0}})


def rate(it, n):
  """(batches/s, mean host bytes per batch: what goes to the device, of which int16 audio)."""
  next(it)  # first batch includes thread start-up
  start = time.perf_counter()
  nbytes = pcm = 0
  for _ in range(n):
    batch = next(it)
    nbytes += sum(np.asarray(v).nbytes for v in batch.values())
    pcm += sum(np.asarray(v).nbytes for v in batch.values() if np.asarray(v).dtype == np.int16)
  return n / (time.perf_counter() - start), nbytes / n, pcm / n


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", default=None, help="prepared directory (default: synthetic)")
  p.add_argument("--batches", type=int, default=100)
  p.add_argument("--train-steps-per-sec", type=float, default=2.0,
                 help="training speed to compare with (tiny config target on 2 CPU cores)")
  args = p.parse_args()

  tmp = None
  data = args.data
  if data is None:
    tmp = tempfile.TemporaryDirectory()
    data = tmp.name
    synthetic(data)
  try:
    split = loader.PreparedSplit(data)
  except (ValueError, FileNotFoundError) as e:   # not prepared data (a corpus folder, ...)
    sys.exit(f"error: {e}")
  print(f"data: {data} ({len(split)} training clips, "
        f"{split.lengths[:, 1].sum() / 22050 / 3600:.2f} h)")

  n = min(len(split), 300)
  for i in range(n):  # warm the page cache so every row below reads from memory
    split.source[i]
  start = time.perf_counter()
  for i in range(n):
    records.decode_record(split.source[i])
  ref = n / (time.perf_counter() - start)
  print(f"{'reference: read+decode one record':44s} {ref:9.1f} records/s")

  print(f"{'loader':30s} {'batch':>5s} {'threads':>7s} {'batches/s':>10s} "
        f"{'clips/s':>9s} {'x train':>8s} {'MB/batch':>9s}")
  for batch in (4, 64):
    for threads in (1, 4):
      ld = loader.make_train_loader(data, batch, seed=0, process_index=0, process_count=1,
                                    num_threads=threads, prefetch=2 * threads,
                                    min_audio_len=4096)
      n_batches = max(10, args.batches // (1 if batch == 4 else 8))
      bps, nbytes, pcm = rate(iter(ld), n_batches)
      ratio = bps / args.train_steps_per_sec
      print(f"{'make_train_loader':30s} {batch:5d} {threads:7d} {bps:10.1f} "
            f"{bps * batch:9.1f} {ratio:8.1f} {nbytes / 2**20:9.2f}")
      if threads == 1:   # the reference: the same batch's audio as float32 (it is int16)
        audio = pcm   # (float32 doubles the int16 audio's bytes)
        print(f"{'  audio as float32 instead':30s} {'':5s} {'':7s} {'':10s} {'':9s} {'':8s} "
              f"{(nbytes + audio) / 2**20:9.2f}  ({nbytes / (nbytes + audio):.2f}x)")
  if tmp is not None:
    tmp.cleanup()


if __name__ == "__main__":
  main()
