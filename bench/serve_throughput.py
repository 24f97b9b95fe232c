"""Server throughput: many clients at once, requests batched vs served one at a time.

    python bench/serve_throughput.py [--clients 16] [--requests 48] [--rounds 3]

Runs `serve.py`'s server in this process on the bundled voice (joe), and `--clients`
threads post the lines of `bench/lines60.txt` to `/synthesize` (same options, so they may
share batches). Each round runs the batched server (`--max-batch 16`, 10 ms wait) and the
one-at-a-time server (`max_batch=1`) back to back, alternating which goes first. Prints
seconds of audio served per second of wall time for both and their ratio (median of the
rounds), and the synthesis calls the batched server made.
"""

import argparse
import io
import json
import os
import statistics
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--clients", type=int, default=16)
  p.add_argument("--requests", type=int, default=48)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--threads", type=int, default=2)
  args = p.parse_args()
  sys.path.insert(0, os.path.join(ROOT, "bench"))
  from infer_speed import set_threads
  set_threads(args.threads)
  import soundfile as sf
  import serve
  from vits_jax import xla_cache
  from vits_jax.voice import load_voice
  xla_cache.enable()
  voice = load_voice("joe")
  with open(os.path.join(ROOT, "bench", "lines60.txt"), encoding="utf-8") as f:
    lines = [line.strip() for line in f if line.strip()][:args.requests]
  defaults = serve.request_defaults(serve.parse_args([]), voice)   # the server's own

  def run(max_batch):
    tts = serve.TextToSpeech(voice, defaults, max_batch=max_batch, batch_wait=0.01)
    httpd = serve.serve(tts, "127.0.0.1", 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/synthesize"

    def post(text):
      request = urllib.request.Request(url, json.dumps({"text": text}).encode(),
                                       {"Content-Type": "application/json"})
      with urllib.request.urlopen(request, timeout=600) as response:
        audio, rate = sf.read(io.BytesIO(response.read()))
      return len(audio) / rate

    start = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
      seconds = sum(pool.map(post, lines))
    wall = time.perf_counter() - start
    httpd.shutdown()
    httpd.server_close()
    return seconds / wall, tts.batches

  run(16)   # warm-up: compile or load every program the lines need
  run(1)
  batched, single, calls = [], [], []
  for r in range(args.rounds):
    order = (16, 1) if r % 2 == 0 else (1, 16)
    for max_batch in order:
      rate, n = run(max_batch)
      (batched if max_batch > 1 else single).append(rate)
      if max_batch > 1:
        calls.append(n)
  b, s = statistics.median(batched), statistics.median(single)
  print(f"{len(lines)} requests from {args.clients} clients, joe voice, {args.threads} threads")
  print(f"  batched (max 16):   {b:6.1f} s of audio per s   ({calls} synthesis calls)")
  print(f"  one at a time:      {s:6.1f} s of audio per s   ({len(lines)} calls)")
  print(f"  batched / one at a time: {b / s:.2f}x throughput")


if __name__ == "__main__":
  main()
