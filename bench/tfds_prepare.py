"""Peak memory and time of `prepare.py --tfds` on a mocked VCTK, next to the folder path.

    python bench/tfds_prepare.py                     # 200 and 2000 examples, --workers 2
    python bench/tfds_prepare.py --sizes 200 1000 --workers 1

Needs `pip install -r requirements-tfds.txt`. Each run is a fresh child process; its peak
memory is that process's ru_maxrss: the process that reads the split, feeds the pool and
writes the shards (the pool's workers hold one chunk of clips each; their own ru_maxrss is not
shown, as a spawned process inherits its parent's peak from before its exec). The examples
come from `tfds.testing.mock_data` over the real `vctk/mic1` builder, with its random
5-49-sample audio replaced by 48 kHz tones of --seconds (default 1.5-3.5 s; the generator is
seeded: the same examples every time). "open s" is the part of the tfds time spent before the
first example (importing TensorFlow Datasets and TensorFlow, building the builder).

Rows:
  tfds N          prepare.py --tfds, streaming (peak should not grow with N)
  tfds N, listed  the same with the stream turned into a list first (what a reader that
                  returns every example, as before, costs)
  folder N        the same examples written as a VCTK-Corpus-0.92 folder (FLAC), prepared
                  with --src
Ratios: peak(largest N) / peak(smallest N) for the streamed runs, and tfds / folder time
(whole, and without "open s").
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _mocked(n, lo, hi):
  """Enters mock_data for n examples with lo..hi-second tones; returns the context."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from tensorflow_datasets.testing import mocking  # pylint: disable=import-outside-toplevel
  original = mocking.RandomFakeGenerator._generate_random_obj  # pylint: disable=protected-access

  def generate(self, feature, tensor_info, rng):
    if isinstance(feature, tfds.features.Audio):
      rate = feature.sample_rate
      t = np.arange(int(rng.uniform(lo, hi) * rate)) / rate
      return np.round(12000 * np.sin(2 * np.pi * rng.uniform(150, 650) * t)).astype(np.int16)
    return original(self, feature, tensor_info, rng)

  mocking.RandomFakeGenerator._generate_random_obj = generate  # pylint: disable=protected-access
  return tfds.testing.mock_data(num_examples=n, policy=tfds.testing.MockPolicy.USE_CODE)


def child(argv):
  """One measured run; prints a JSON line."""
  p = argparse.ArgumentParser()
  p.add_argument("mode", choices=["tfds", "listed", "write-folder", "folder"])
  p.add_argument("--n", type=int, required=True)
  p.add_argument("--dir", required=True)
  p.add_argument("--workers", type=int, default=2)
  p.add_argument("--seconds", type=float, nargs=2, default=(1.5, 3.5))
  a = p.parse_args(argv)
  from data_prep import prepare  # pylint: disable=import-outside-toplevel
  start = time.perf_counter()
  out = os.path.join(a.dir, f"out_{a.mode}")
  common = ["--out", out, "--workers", str(a.workers), "--force"]
  info = {}
  if a.mode in ("tfds", "listed"):
    from data_prep import tfds_reader  # pylint: disable=import-outside-toplevel
    real_open = tfds_reader.read_tfds

    def timed_open(*args, **kwargs):
      t = time.perf_counter()
      clips = real_open(*args, **kwargs)
      info["open_s"] = round(time.perf_counter() - t, 2)
      return clips

    tfds_reader.read_tfds = timed_open
    with _mocked(a.n, *a.seconds):
      if a.mode == "listed":
        real = prepare.read_clips
        prepare.read_clips = lambda args: list(real(args))
      rc = prepare.main(["--dataset", "vctk", "--tfds", "--data-dir", a.dir, *common])
  elif a.mode == "write-folder":
    import numpy as np  # pylint: disable=import-outside-toplevel
    import soundfile as sf  # pylint: disable=import-outside-toplevel
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    from tensorflow_datasets.testing import mocking  # pylint: disable=import-outside-toplevel
    with _mocked(a.n, *a.seconds):
      features = tfds.builder("vctk/mic1").info.features
      names = features["speaker"].names
      gen = mocking.RandomFakeGenerator(features, a.n)
      samples = 0
      for k in range(a.n):  # what the mocked data source serves, in its order
        ex = gen[k]
        spk = names[int(ex["speaker"])]
        cid = f"{spk}_{k:05d}"
        for sub in ("wav48_silence_trimmed", "txt"):
          os.makedirs(os.path.join(a.dir, "VCTK", sub, spk), exist_ok=True)
        sf.write(os.path.join(a.dir, "VCTK", "wav48_silence_trimmed", spk, f"{cid}_mic1.flac"),
                 np.asarray(ex["speech"]), 48000, subtype="PCM_16")
        with open(os.path.join(a.dir, "VCTK", "txt", spk, f"{cid}.txt"), "w",
                  encoding="utf-8") as f:
          f.write(str(ex["text"]).strip() + "\n")
        samples += len(ex["speech"])
    info["int16_mb"] = round(samples * 2 / 2**20, 1)
    rc = 0
  else:
    rc = prepare.main(["--dataset", "vctk", "--src", os.path.join(a.dir, "VCTK"), *common])
  wall = time.perf_counter() - start
  if rc != 0:
    raise SystemExit(f"{a.mode} run failed ({rc})")
  if a.mode != "write-folder":
    with open(os.path.join(out, "manifest.json"), encoding="utf-8") as f:
      manifest = json.load(f)
    info.update(kept=manifest["counts"]["kept"], prepare_s=manifest["seconds"])
    shutil.rmtree(out)
  info.update(wall_s=round(wall, 2),
              peak_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
  print(json.dumps(info))


def _run(mode, n, tmp, args):
  cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--n", str(n), "--dir",
         tmp, "--workers", str(args.workers), "--seconds", *map(str, args.seconds)]
  env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
  res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
  if res.returncode != 0:
    raise SystemExit(f"{mode} {n}: {res.stderr[-2000:]}")
  return json.loads(res.stdout.strip().splitlines()[-1])


def main():
  if len(sys.argv) > 1 and sys.argv[1] == "--child":
    return child(sys.argv[2:])
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--sizes", type=int, nargs="+", default=[200, 2000])
  p.add_argument("--workers", type=int, default=2)
  p.add_argument("--seconds", type=float, nargs=2, default=(1.5, 3.5),
                 help="clip length range (default: %(default)s)")
  p.add_argument("--no-listed", action="store_true", help="skip the 'listed' contrast run")
  args = p.parse_args()
  sizes = sorted(args.sizes)
  rows = {}
  print(f"mocked vctk/mic1, {args.seconds[0]}-{args.seconds[1]} s clips at 48 kHz, "
        f"--workers {args.workers}")
  print(f"{'run':<22}{'clips kept':>11}{'int16 MB':>10}{'peak MB':>9}{'prepare s':>10}"
        f"{'open s':>8}{'wall s':>8}")
  for n in sizes:
    tmp = tempfile.mkdtemp(prefix="tfds_bench_")
    try:
      folder = _run("write-folder", n, tmp, args)
      modes = ["tfds", "folder"] + (["listed"] if n == sizes[-1] and not args.no_listed else [])
      for mode in modes:
        r = rows[(mode, n)] = {**_run(mode, n, tmp, args), "int16_mb": folder["int16_mb"]}
        label = {"tfds": "tfds", "listed": "tfds, listed", "folder": "folder"}[mode]
        print(f"{label + ' ' + str(n):<22}{r['kept']:>11}{r['int16_mb']:>10}{r['peak_mb']:>9}"
              f"{r['prepare_s']:>10}{r.get('open_s', ''):>8}{r['wall_s']:>8}", flush=True)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  lo, hi = sizes[0], sizes[-1]
  print(f"peak memory, tfds {hi} / tfds {lo}: "
        f"{rows[('tfds', hi)]['peak_mb'] / rows[('tfds', lo)]['peak_mb']:.2f}x "
        f"(examples: {hi / lo:.0f}x)")
  if ("listed", hi) in rows:
    print(f"peak memory, listed {hi} / streamed {hi}: "
          f"{rows[('listed', hi)]['peak_mb'] / rows[('tfds', hi)]['peak_mb']:.2f}x")
  for n in sizes:
    t, f = rows[("tfds", n)], rows[("folder", n)]
    print(f"time, tfds / folder at {n}: prepare {t['prepare_s'] / f['prepare_s']:.2f}x, "
          f"without open {(t['prepare_s'] - t['open_s']) / f['prepare_s']:.2f}x")
  return 0


if __name__ == "__main__":
  sys.exit(main())
