"""serve.py: Piper's HTTP endpoints speak what `Voice.synthesize` says, and bad requests get
status 400 with a one-line error while the server goes on serving."""

import io
import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))
import serve  # noqa: E402  (the server module at the repo root)
from vits_jax import files  # noqa: E402
from vits_jax.voice import load_voice  # noqa: E402

TINY = str(ROOT / "tests" / "fixtures" / "piper_tiny_multi.onnx")


@pytest.fixture(scope="module")
def server():
  voice = load_voice(TINY)
  defaults = dict(length_scale=1.0, noise_scale=0.667, noise_scale_w=0.8,
                  sentence_silence=0.0, volume=1.0, normalize=False, seed=0, speaker=1)
  tts = serve.TextToSpeech(voice, defaults)
  httpd = serve.serve(tts, "127.0.0.1", 0)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield voice, f"http://127.0.0.1:{httpd.server_address[1]}", tts
  httpd.shutdown()
  httpd.server_close()


def _call(url, data=None, content_type="application/json"):
  request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type})
  try:
    with urllib.request.urlopen(request, timeout=300) as response:
      return response.status, response.headers.get("Content-Type"), response.read()
  except urllib.error.HTTPError as e:
    return e.code, e.headers.get("Content-Type"), e.read()


def _samples(wav_bytes):
  audio, rate = sf.read(io.BytesIO(wav_bytes), dtype="int16")
  return audio, rate


def test_synthesize_equals_the_voice(server):
  voice, url, _ = server
  fields = {"text": "Hello there. How are you?", "speaker": "carol", "noise_scale": 0.3,
            "seed": 4, "sentence_silence": 0.1, "volume": 0.5, "normalize": True}
  status, kind, body = _call(url + "/synthesize", json.dumps(fields).encode())
  assert status == 200 and kind == "audio/wav"
  audio, rate = _samples(body)
  expected = voice.synthesize(fields["text"], speaker=2, noise_scale=0.3, seed=4,
                              sentence_silence=0.1, volume=0.5, normalize=True)
  assert rate == voice.sample_rate
  np.testing.assert_array_equal(audio, files.pcm16(expected))
  # The voice may be named as Piper's clients do; speaker_id wins over speaker; the server's default speaker (1) where neither is given.
  _, _, by_id = _call(url + "/synthesize", json.dumps(
      {"text": "Hi.", "speaker_id": 0, "speaker": "carol",
       "voice": Path(voice.name).stem}).encode())
  np.testing.assert_array_equal(_samples(by_id)[0], files.pcm16(voice.synthesize("Hi.", speaker=0)))
  # ... but a null speaker_id leaves the speaker named.
  _, _, by_name = _call(url + "/synthesize", json.dumps(
      {"text": "Hi.", "speaker_id": None, "speaker": "carol"}).encode())
  np.testing.assert_array_equal(_samples(by_name)[0],
                                files.pcm16(voice.synthesize("Hi.", speaker=2)))
  # Piper's first server: the text as the body, or ?text= -- the server's defaults.
  default = files.pcm16(voice.synthesize("Hi.", speaker=1))
  status, _, plain = _call(url + "/", "Hi.".encode(), "text/plain")
  assert status == 200
  np.testing.assert_array_equal(_samples(plain)[0], default)
  # A JSON body to "/" is read as JSON whatever the case of its media type (RFC 9110).
  status, _, as_json = _call(url + "/", json.dumps({"text": "Hi.", "speaker": "carol"}).encode(),
                             "Application/JSON; charset=utf-8")
  assert status == 200
  np.testing.assert_array_equal(_samples(as_json)[0], _samples(by_name)[0])
  status, _, got = _call(url + "/?text=" + urllib.request.quote("Hi."))
  assert status == 200
  np.testing.assert_array_equal(_samples(got)[0], default)
  # "stream": the same samples, sent chunk by chunk behind a header of unknown length.
  request = urllib.request.Request(url + "/synthesize", data=json.dumps(
      dict(fields, stream=True)).encode(), headers={"Content-Type": "application/json"})
  with urllib.request.urlopen(request, timeout=300) as response:
    assert response.headers.get("Transfer-Encoding") == "chunked"
    streamed = response.read()
  assert streamed[:4] == b"RIFF" and streamed[40:44] == b"\xff\xff\xff\xff"
  assert streamed[24:28] == voice.sample_rate.to_bytes(4, "little")
  np.testing.assert_array_equal(np.frombuffer(streamed[44:], "<i2"), files.pcm16(expected))
  status, _, info = _call(url + "/voices")
  (name, entry), = json.loads(info).items()
  assert status == 200 and name == Path(voice.name).name and entry["num_speakers"] == 3
  assert str(ROOT) not in info.decode()   # where the server's files are is not shown
  status, _, body = _call(url + "/synthesize", b'{"text": "Hi.", "speaker": "nobody"}')
  assert status == 400 and str(ROOT) not in body.decode() and Path(voice.name).name in \
      body.decode(), body
  assert entry["speaker_id_map"]["carol"] == 2 and entry["sample_rate"] == voice.sample_rate


@pytest.mark.parametrize("path,data,needle", [
    ("/synthesize", b"{not json", "not valid JSON"),
    ("/synthesize", b"[" * 100000, "nested too deeply"),
    ("/synthesize", b'{"text": "Hi.", "seed": ' + b"9" * 5000 + b"}", "not JSON we read"),
    ("/synthesize", b'["a list"]', "JSON object"),
    ("/synthesize", b'{"text": "  "}', "no text"),
    ("/synthesize", b'{"text": "Hi.", "speaker": "nobody"}', "unknown speaker"),
    ("/synthesize", b'{"text": "Hi.", "speaker_id": 7}', "out of range"),
    ("/synthesize", b'{"text": "Hi.", "speaker": 1.5}', "speaker must be"),
    ("/synthesize", b'{"text": "Hi.", "seed": 1.0}', "seed must be an integer, got 1.0"),
    ("/synthesize", b'{"text": "Hi.", "volume": -1}', "volume"),
    ("/synthesize", b'{"text": "Hi.", "length_scale": "fast"}', "length_scale"),
    ("/synthesize", b'{"text": "Hi.", "normalize": 1}', "normalize"),
    ("/synthesize", b'{"text": "Hi.", "colour": "blue"}', "unknown field"),
    ("/synthesize", b'{"text": "Hi.", "stream": "yes"}', "stream must be"),
    ("/synthesize", '{"text": "\U0001F600", "stream": true}'.encode(), "nothing to say"),
    ("/synthesize", b'{"text": "Hi.", "voice": "someone-else"}', "speaks with voice"),
    ("/synthesize", '{"text": "\U0001F600"}'.encode(), "nothing to say"),
    ("/", b"\xff\xfe", "UTF-8"),
])
def test_bad_requests_are_400_with_one_line(server, path, data, needle):
  _, url, _ = server
  status, kind, body = _call(url + path, data)
  assert status == 400 and kind == "application/json"
  error = json.loads(body)["error"]
  assert needle in error and "\n" not in error
  status, _, _ = _call(url + "/synthesize", b'{"text": "Still here."}')
  assert status == 200


def test_unknown_endpoint_and_oversized_body(server):
  _, url, _ = server
  assert _call(url + "/nope")[0] == 404
  assert _call(url + "/nope", b"{}")[0] == 404
  status, _, body = _call(url + "/synthesize", b"x" * (serve.MAX_BODY_BYTES + 1))
  assert status == 413 and "bytes" in json.loads(body)["error"]
  # Exactly the limit is read (a JSON body padded with spaces: then refused for its text).
  exact = b'{"text": "  "}'.ljust(serve.MAX_BODY_BYTES)
  status, _, body = _call(url + "/synthesize", exact)
  assert status == 400 and "no text" in json.loads(body)["error"], body
  # A text longer than one WAV may hold is refused before any synthesis.
  long_text = json.dumps({"text": "Hi. " * (serve.MAX_WAV_TEXT_CHARS // 4 + 1)}).encode()
  status, _, body = _call(url + "/synthesize", long_text)
  assert status == 400 and "stream" in json.loads(body)["error"]


def test_real_server_process_speaks_and_stops_on_ctrl_c(tmp_path):
  """`python serve.py --port 0` prints where it listens, answers, and exits 0 on Ctrl-C;
  a bad start is one `error:` line and exit 2."""
  import os
  import signal
  import subprocess
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen([sys.executable, str(ROOT / "serve.py"), "--voice", TINY,
                           "--port", "0", "--speaker", "bob"],
                          cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
  try:
    line = ""
    while "serving" not in line:
      line = proc.stderr.readline()
      assert line, "the server exited before serving"
    url = line.split(" on ", 1)[1].split()[0]
    status, kind, body = _call(url + "/synthesize", b'{"text": "Hi.", "seed": 2}')
    assert status == 200 and kind == "audio/wav"
    voice = load_voice(TINY)
    np.testing.assert_array_equal(_samples(body)[0],
                                  files.pcm16(voice.synthesize("Hi.", speaker=1, seed=2)))
    # Ctrl-C while a long request is in flight: it aborted the process (SIGABRT, "terminate
    # called ...") when the interpreter shut down under the synthesis thread.
    threading.Thread(target=_call, args=(url + "/synthesize", json.dumps(
        {"text": "A long text to keep the server busy. " * 200}).encode()),
                     daemon=True).start()
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    err = proc.stderr.read()
    assert "Traceback" not in err and "terminate" not in err, err
  finally:
    proc.kill()
  # SIGTERM stops it the same way.
  proc = subprocess.Popen([sys.executable, str(ROOT / "serve.py"), "--voice", TINY,
                           "--port", "0"], cwd=tmp_path, env=env, stderr=subprocess.PIPE,
                          text=True)
  try:
    while "serving" not in proc.stderr.readline():
      assert proc.poll() is None, "the server exited before serving"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
  finally:
    proc.kill()
  for argv, needle in ((["--voice", "/no/such.onnx"], "not found"),
                       (["--voice", TINY, "--speaker", "nobody"], "unknown speaker"),
                       (["--volume", "-1"], "--volume"), (["--port", "70000"], "--port")):
    done = subprocess.run([sys.executable, str(ROOT / "serve.py")] + argv, cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.strip().startswith("error: "), done.stderr
    assert needle in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_requests_that_come_together_share_a_batch(server):
  """Concurrent requests with the same options are synthesized in one batched call, and
  each gets exactly its own text's audio alone; other options wait for their own batch."""
  from concurrent.futures import ThreadPoolExecutor
  voice, url, tts = server
  texts = ["One.", "Two words.", "Three little words.", "Four. With two sentences.",
           "Five is \U0001F600 here.", "Six."]
  calls = [(t, {}) for t in texts] + [("Other options.", {"length_scale": 1.3})]
  tts.batch_wait, before = 1.0, tts.batches
  try:
    with ThreadPoolExecutor(len(calls)) as pool:
      replies = list(pool.map(lambda c: _call(url + "/synthesize", json.dumps(
          dict(text=c[0], **c[1])).encode()), calls))
  finally:
    tts.batch_wait = 0.01
  assert tts.batches - before < len(calls)   # at least two requests shared a call
  for (text, knobs), (status, _, body) in zip(calls, replies):
    assert status == 200
    np.testing.assert_array_equal(
        _samples(body)[0], files.pcm16(voice.synthesize(text, speaker=1, **knobs)))


def test_a_batch_holds_at_most_max_batch_requests(server, monkeypatch):
  """Requests set aside while another batch was gathered (other options) make batches of
  at most `max_batch` too; each still gets its own audio."""
  import time
  from concurrent.futures import ThreadPoolExecutor
  voice, url, tts = server
  sizes = []
  real = voice.iter_batch
  monkeypatch.setattr(voice, "iter_batch", lambda texts, *args, **kw: (
      sizes.append(len(texts)), real(texts, *args, **kw))[1])
  # A1 opens a batch; B1-B3 (other options) are set aside while it gathers; A2 fills it.
  calls = [("One.", {}), ("Two.", {"length_scale": 1.2}), ("Three.", {"length_scale": 1.2}),
           ("Four.", {"length_scale": 1.2}), ("Five.", {})]
  tts.max_batch, tts.batch_wait = 2, 1.0
  try:
    with ThreadPoolExecutor(len(calls)) as pool:
      futures = []
      for text, knobs in calls:
        futures.append(pool.submit(_call, url + "/synthesize",
                                   json.dumps(dict(text=text, **knobs)).encode()))
        time.sleep(0.1)
      replies = [f.result(timeout=300) for f in futures]
  finally:
    tts.max_batch, tts.batch_wait = 16, 0.01
  assert sizes and max(sizes) <= 2 and sum(sizes) == len(calls), sizes
  monkeypatch.undo()
  for (text, knobs), (status, _, body) in zip(calls, replies):
    assert status == 200
    np.testing.assert_array_equal(
        _samples(body)[0], files.pcm16(voice.synthesize(text, speaker=1, **knobs)))


def test_a_stream_that_is_not_read_holds_up_no_other_request(server):
  """A streaming client that stops reading leaves its generator suspended between two
  pieces (as a blocked socket write would): other requests are still answered, and the
  stream then goes on to the same audio as alone."""
  voice, _, tts = server
  text = "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background."
  stream = tts.stream({"text": text, "speaker": 0})
  header, first = next(stream), next(stream)   # ... and the client reads no further
  done = []
  other = threading.Thread(target=lambda: done.append(tts.synthesize({"text": "Hi."})))
  other.start()
  other.join(timeout=300)   # a hang guard only: with the lock held it never finishes
  assert done and _samples(done[0])[0].size > 0
  body = header + first + b"".join(stream)
  assert header == serve.stream_header(voice.sample_rate)
  np.testing.assert_array_equal(np.frombuffer(body[len(header):], "<i2"),
                                files.pcm16(voice.synthesize(text, speaker=0)))


def test_head_chunked_body_and_query_that_is_not_utf8(server):
  _, url, _ = server
  request = urllib.request.Request(url + "/info", method="HEAD")
  with urllib.request.urlopen(request, timeout=60) as response:
    assert response.status == 200 and response.read() == b""
    assert int(response.headers["Content-Length"]) > 0
  status, _, body = _call(url + "/synthesize", b"\xef\xbb\xbf" + json.dumps(
      {"text": "Hi."}).encode())   # a BOM, as Windows editors write
  assert status == 200 and _samples(body)[0].size > 0
  slow = {"text": "Hi. " * (serve.MAX_WAV_TEXT_CHARS // 8 + 1), "length_scale": 2}
  status, _, body = _call(url + "/synthesize", json.dumps(slow).encode())
  assert status == 400 and "at length_scale 2" in json.loads(body)["error"]
  fast = {"text": "Hi. " * (serve.MAX_WAV_TEXT_CHARS // 4 + 1), "length_scale": 0.5}
  status, _, body = _call(url + "/synthesize", json.dumps(fast).encode())   # (counted at 1)
  assert status == 400 and '"stream": true' in json.loads(body)["error"], body
  status, _, body = _call(url + "/?text=%ff%fe")
  assert status == 400 and json.loads(body) == {"error": "the query is not UTF-8 text"}
  host, port = urllib.parse.urlsplit(url).netloc.split(":")
  with socket.create_connection((host, int(port)), timeout=60) as s:
    s.sendall(b"POST /synthesize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n10\r\n{\"text\": \"Hi.\"}\r\n0\r\n\r\n")
    reply = b""
    while True:
      got = s.recv(65536)
      if not got:
        break
      reply += got
  assert reply.startswith(b"HTTP/1.1 411 ")
  assert b"Content-Length" in reply.split(b"\r\n\r\n")[0] and reply.count(b"HTTP/1.1") == 1


def test_a_client_that_leaves_early_leaves_no_traceback(server, capfd):
  """A client that closes its connection while its answer streams (a player stopped) ends
  that answer quietly: no traceback in the server's log, and the server goes on."""
  import struct
  import time
  _, url, _ = server
  host, port = url.removeprefix("http://").split(":")
  body = json.dumps({"text": "One sentence. Another one. And a third one, a longer one.",
                     "stream": True}).encode()
  for _ in range(2):
    s = socket.create_connection((host, int(port)), timeout=300)
    s.sendall(b"POST /synthesize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert s.recv(1)   # the answer has started
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()          # reset: the server's next write fails
  assert _call(url + "/synthesize", b'{"text": "Still here."}')[0] == 200
  time.sleep(0.5)
  assert "Traceback" not in capfd.readouterr().err


def test_a_whole_wav_whose_client_left_stops_being_made(server):
  """A long whole-WAV request whose client closes its connection stops being synthesized
  at the next window (it held every later request for the rest of its text), and the
  server answers the next request."""
  import time
  _, url, tts = server
  host, port = url.removeprefix("http://").split(":")
  before = tts.abandoned
  body = json.dumps({"text": "Here is one more sentence to say. " * 600}).encode()
  with socket.create_connection((host, int(port)), timeout=300) as s:
    batches = tts.batches
    s.sendall(b"POST /synthesize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    deadline = time.monotonic() + 300   # hang guards only
    while tts.batches == batches and time.monotonic() < deadline:
      time.sleep(0.05)
  while tts.abandoned == before and time.monotonic() < deadline:
    time.sleep(0.05)
  assert tts.abandoned == before + 1
  assert _call(url + "/synthesize", b'{"text": "Still here."}')[0] == 200


def test_a_client_that_half_closes_still_gets_its_wav(server, monkeypatch):
  """HTTP lets a client shut its sending side once its request is out (`nc -N`, socat) and
  read the answer: the end of input it leaves is no sign it has gone. It gets an interim
  102 and then its WAV; a client that closes outright still stops its request (the test
  above)."""
  voice, url, tts = server
  monkeypatch.setattr(serve, "GONE_POLL_SECONDS", 0.01)   # polls while the text is made
  host, port = url.removeprefix("http://").split(":")
  before = tts.abandoned
  text = "Here is one more sentence to say. " * 8
  body = json.dumps({"text": text}).encode()
  with socket.create_connection((host, int(port)), timeout=300) as s:
    s.sendall(b"POST /synthesize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    s.shutdown(socket.SHUT_WR)
    reply = b""
    while chunk := s.recv(65536):
      reply += chunk
  interim = b"HTTP/1.1 102 Processing\r\n\r\n"
  assert reply.startswith(interim), reply[:80]
  head, wav = reply[len(interim):].split(b"\r\n\r\n", 1)
  assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head
  assert tts.abandoned == before
  np.testing.assert_array_equal(_samples(wav)[0],
                                files.pcm16(voice.synthesize(text, speaker=1)))


def test_a_client_that_leaves_does_not_stop_its_batch_mates(server):
  """A whole-WAV request whose client leaves while another request of its batch still waits
  goes on being made for that one, which gets its own audio (the batch stops only when
  nobody waits)."""
  import time
  from concurrent.futures import ThreadPoolExecutor
  voice, url, tts = server
  host, port = url.removeprefix("http://").split(":")
  before, batches = tts.abandoned, tts.batches
  body = json.dumps({"text": "Here is one more sentence to say. " * 40}).encode()
  tts.batch_wait = 2.0
  try:
    with ThreadPoolExecutor(1) as pool:
      with socket.create_connection((host, int(port)), timeout=300) as s:
        s.sendall(b"POST /synthesize HTTP/1.1\r\nHost: x\r\nContent-Type: "
                  b"application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        reply = pool.submit(_call, url + "/synthesize", b'{"text": "Still waiting."}')
        deadline = time.monotonic() + 300   # hang guard only
        while tts.batches == batches and time.monotonic() < deadline:
          time.sleep(0.05)
      status, _, wav = reply.result(timeout=300)
  finally:
    tts.batch_wait = 0.01
  seen = (tts.batches - batches, status, tts.abandoned - before)
  assert seen == (1, 200, 0), seen   # one batch for both; answered; not abandoned
  np.testing.assert_array_equal(_samples(wav)[0],
                                files.pcm16(voice.synthesize("Still waiting.", speaker=1)))


def test_iter_batch_stops_where_asked(server):
  """`iter_batch(stop=...)` ends after the window where `stop` first says so; what it
  yielded before is each text's audio alone."""
  voice = server[0]
  texts = ["One.", "Two, a little longer.", "Three. And four.", "Five."]
  asked = []
  out = list(voice.iter_batch(texts, batch_size=1, stop=lambda: asked.append(1) or
                              len(asked) > 2))
  assert 0 < len(out) < len(texts)
  for text, (audio, _) in zip(texts, out):
    np.testing.assert_array_equal(audio, voice.synthesize(text))


def test_ipv6_host_and_a_burst_of_clients(server):
  """`--host ::1` listens on IPv6 (it was refused: 'Address family not supported'); 40
  clients connecting at once are all answered (a backlog of 5 reset some of a burst)."""
  _, url, tts = server
  try:
    with socket.socket(socket.AF_INET6) as probe:
      probe.bind(("::1", 0))
  except OSError as e:   # a machine without IPv6
    pytest.skip(f"no IPv6 loopback here ({e})")
  httpd = serve.serve(tts, "::1", 0)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  try:
    with urllib.request.urlopen(f"http://[::1]:{httpd.server_address[1]}/voices",
                                timeout=60) as r:
      assert r.status == 200
  finally:
    httpd.shutdown()
    httpd.server_close()
  assert serve._Server.request_queue_size >= 64   # pylint: disable=protected-access
  barrier = threading.Barrier(40)
  answers = []

  def client():
    barrier.wait()
    try:
      with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=120) as c:
        c.sendall(b"GET /voices HTTP/1.0\r\n\r\n")
        answers.append(c.recv(12))
    except OSError as e:
      answers.append(repr(e).encode())
  threads = [threading.Thread(target=client) for _ in range(40)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=180)
  assert len(answers) == 40 and all(a[8:12] == b" 200" for a in answers), answers


def test_what_http_itself_refuses_is_json_too(server):
  """An unsupported method or a malformed request line, refused by the standard library
  before our handler runs, gets `{"error": ...}` like every other refusal (it was an HTML
  page)."""
  _, url, _ = server
  port = int(url.rsplit(":", 1)[1])
  for raw, status in ((b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 501),
                      (b"GET / HTTP/2.0\r\n\r\n", 505)):
    with socket.create_connection(("127.0.0.1", port), timeout=60) as c:
      c.sendall(raw)
      reply = b""
      while chunk := c.recv(65536):
        reply += chunk
    # (to a request line it cannot read the standard library answers as HTTP/0.9: a body
    # without a status line or headers)
    head, _, body = reply.rpartition(b"\r\n\r\n")
    assert not head or (head.startswith(f"HTTP/1.1 {status}".encode())
                        and b"application/json" in head), reply
    assert json.loads(body)["error"], reply


def _raw(port, request):
  with socket.create_connection(("127.0.0.1", port), timeout=60) as c:
    c.sendall(request)
    reply = b""
    while chunk := c.recv(65536):
      reply += chunk
  return reply


def test_content_lengths_that_differ_and_too_many_connections(server, monkeypatch):
  """Two Content-Length headers that differ are refused (which body is meant?); the same one
  twice is read. A connection past MAX_CONNECTIONS is answered 503 and closed at once, and
  one is served again once the others close."""
  _, url, _ = server
  port = int(url.rsplit(":", 1)[1])
  body = b'{"text": "Hi."}'
  head = b"POST /synthesize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
  reply = _raw(port, head + b"Content-Length: %d\r\nContent-Length: 4\r\n\r\n" % len(body)
               + body)
  assert reply.startswith(b"HTTP/1.1 400 ") and b"differ" in reply
  reply = _raw(port, head + b"Content-Length: %d\r\nContent-Length: %d\r\nConnection: "
               b"close\r\n\r\n" % (len(body), len(body)) + body)
  assert reply.startswith(b"HTTP/1.1 200 ") and b"audio/wav" in reply
  # The cap, shrunk to 3 for the test: the server's semaphore is made when it starts.
  monkeypatch.setattr(serve, "MAX_CONNECTIONS", 3)
  small = serve.serve(server[2], "127.0.0.1", 0)
  threading.Thread(target=small.serve_forever, daemon=True).start()
  try:
    port = small.server_address[1]
    held = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(3)]
    reply = _raw(port, b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 503 ") and b"3 connections" in reply
    for c in held:
      c.close()
    for _ in range(100):   # the handler threads see their clients leave
      reply = _raw(port, b"GET /info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      if not reply.startswith(b"HTTP/1.1 503 "):
        break
      time.sleep(0.05)
    assert reply.startswith(b"HTTP/1.1 200 ")
  finally:
    small.shutdown()
    small.server_close()


def test_a_sentence_too_long_fails_only_its_own_request(server, monkeypatch, capfd):
  """A sentence found too long (more than MAX_SENTENCE_FRAMES, known only once its text side
  has run) is its own request's 400, not its batch's: the requests beside it get their
  audio as alone. Streamed, it ends the stream short with one line in the log, no
  traceback."""
  import http.client
  from concurrent.futures import ThreadPoolExecutor
  from vits_jax import inference
  voice, url, tts = server
  long = "Hi there, all of you, my good old friends."
  # streamed: its first sentence, longer than a decoder window, sends a lead window before
  # the second's text side runs
  texts = ["Hi.", long, "Ho. Hey."]
  streamed = ("The birch canoe slid on the smooth planks, then it went down the long wide "
              "river to the sea. Glue the sheet to the dark blue background, and then again "
              "and again and again and again, all of it, my good old friend.")
  frames = [[int(d.sum()) for d in voice.synthesize(t, speaker=1, with_durations=True)[1]]
            for t in texts + [streamed]]   # per sentence
  assert frames[1][0] > max(frames[0] + frames[2])
  assert frames[3][1] > frames[3][0] > inference.WINDOW_FRAMES
  monkeypatch.setattr(inference, "MAX_SENTENCE_FRAMES", max(frames[0] + frames[2]))
  tts.batch_wait, before = 1.0, tts.batches
  try:
    with ThreadPoolExecutor(len(texts)) as pool:
      replies = list(pool.map(lambda t: _call(url + "/synthesize", json.dumps(
          {"text": t}).encode()), texts))
  finally:
    tts.batch_wait = 0.01
  assert tts.batches - before < len(texts)   # they shared a call
  assert replies[1][0] == 400 and "frames" in json.loads(replies[1][2])["error"], replies[1]
  for k in (0, 2):
    assert replies[k][0] == 200
    np.testing.assert_array_equal(_samples(replies[k][2])[0],
                                  files.pcm16(voice.synthesize(texts[k], speaker=1)))
  monkeypatch.setattr(inference, "MAX_SENTENCE_FRAMES", frames[3][0])
  host, port = url.removeprefix("http://").split(":")
  connection = http.client.HTTPConnection(host, int(port), timeout=300)
  connection.request("POST", "/synthesize", json.dumps({"text": streamed, "stream": True}),
                     {"Content-Type": "application/json"})
  response = connection.getresponse()
  assert response.status == 200
  with pytest.raises(http.client.IncompleteRead):
    response.read()
  connection.close()
  assert _call(url + "/synthesize", b'{"text": "Still here."}')[0] == 200
  err = capfd.readouterr().err
  assert "Traceback" not in err and "stopped mid-stream: a sentence would last more" in err, err


def test_an_unexpected_error_is_a_500_and_the_server_goes_on(server, monkeypatch, capfd):
  """A bug of ours while answering is a 500 with one JSON line (the connection was dropped
  with no answer), its traceback in the log; the next request is served."""
  _, url, tts = server
  def broken(fields, gone=None):
    raise KeyError("boom")
  monkeypatch.setattr(tts, "synthesize", broken)
  status, kind, body = _call(url + "/synthesize", b'{"text": "Hi."}')
  assert status == 500 and kind == "application/json"
  assert json.loads(body) == {"error": "internal error (KeyError); see the server's log"}
  assert "Traceback" in capfd.readouterr().err
  monkeypatch.undo()
  assert _call(url + "/synthesize", b'{"text": "Still here."}')[0] == 200
  # The benches' and the command line's defaults are one function's (a stale copy of the
  # key names in bench/serve_throughput.py failed every request).
  voice = tts.voice
  defaults = serve.request_defaults(serve.parse_args([]), voice)
  assert set(defaults) == set(tts.defaults)
  assert len(serve.TextToSpeech(voice, defaults).synthesize({"text": "Ho."})) > 44
  # Each flag is the default of its own knob; the scales left out are the voice's.
  flags = serve.parse_args(["--length-scale", "1.3", "--noise-scale", "0.2",
                            "--noise-w-scale", "0.4", "--volume", "0.5", "--sentence-silence",
                            "0.1", "--normalize", "--speaker", "bob"])
  assert serve.request_defaults(flags, voice) == dict(
      length_scale=1.3, noise_scale=0.2, noise_scale_w=0.4, sentence_silence=0.1, volume=0.5,
      normalize=True, seed=0, speaker=1)
  assert serve.request_defaults(serve.parse_args(["--noise-scale", "0.3"]), voice) == dict(
      defaults, noise_scale=0.3)
  assert {k: defaults[k] for k in voice.defaults} == voice.defaults
