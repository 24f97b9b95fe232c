"""Text to speech over HTTP, with the endpoints of Piper's `piper.http_server`.

    python serve.py                              # the bundled voice 'joe' on port 5000
    python serve.py --voice path/to/voice.onnx --host 127.0.0.1 --port 8080
    curl -X POST -H 'Content-Type: application/json' -d '{"text": "Hello there."}' \\
        localhost:5000/synthesize -o hello.wav

Endpoints:
- `POST /synthesize`: JSON `{"text": ..., "speaker" or "speaker_id", "length_scale",
  "noise_scale", "noise_w_scale", "sentence_silence", "volume", "normalize", "seed"}` (all
  but `text` optional; `--length-scale` etc. set the server's defaults) -> a 16-bit WAV.
  With `"stream": true` the WAV is sent as it is made (chunked; the header's sizes are
  0xFFFFFFFF): the first audio leaves before the sentence is done.
- `POST /` with the text as the body, or `GET /?text=...` (what Piper's first server
  took) -> the same WAV with the server's defaults.
- `GET /voices`, `GET /info`: the voice (name, sample rate, speakers).

A request the server cannot serve (bad JSON, empty text, an unknown speaker or key, a knob
out of range) gets status 400 and `{"error": "<one line>"}`; the server keeps running.
Syntheses run one at a time (each uses every core); requests that arrive together with the
same options share one batched call (`--max-batch`, `--batch-wait-ms`), each answered as
soon as its own audio is done.
"""

import argparse
import concurrent.futures
import http.server
import io
import itertools
import json
import os
import queue
import signal
import socket
import struct
import sys
import threading
import time
import urllib.parse
import warnings
import wave

# The largest request body read (text and options); a larger one gets status 413.
MAX_BODY_BYTES = 1 << 20
# How much of a larger body is read and dropped before answering 413 (past it the client may
# see the connection close instead).
DRAIN_BYTES = 16 << 20
# The longest text answered with a whole WAV (about 2 hours of speech, held in memory until
# sent); longer texts are refused unless streamed, which holds one window at a time.
MAX_WAV_TEXT_CHARS = 100_000
# Seconds between checks, while a whole-WAV request waits for its audio, that its client is
# still there (one that left stops its synthesis at the next window instead of holding the
# server for the rest of the text).
GONE_POLL_SECONDS = 0.5
# Most connections open at once; one more is answered 503 and closed.
MAX_CONNECTIONS = 256
# Seconds a connection may stay silent before the server drops it.
IDLE_SECONDS = 120


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--voice", default="joe", help="voice name or path (default: joe)")
  p.add_argument("--host", default="127.0.0.1",
                 help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
  p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
  p.add_argument("--speaker", default=None, help="default speaker id or name")
  p.add_argument("--length-scale", type=float, default=None,
                 help="default: the voice's own, 1.0 for most")
  p.add_argument("--noise-scale", type=float, default=None,
                 help="default: the voice's own, 0.667 for most")
  p.add_argument("--noise-w-scale", "--noise-scale-w", dest="noise_w_scale", type=float,
                 default=None, help="default: the voice's own, 0.8 for most")
  p.add_argument("--sentence-silence", type=float, default=0.0)
  p.add_argument("--volume", type=float, default=1.0)
  p.add_argument("--normalize", action="store_true",
                 help="scale each sentence to full scale, as Piper does by default")
  p.add_argument("--max-batch", type=int, default=16,
                 help="most requests synthesized together (default 16; 1: one at a time)")
  p.add_argument("--batch-wait-ms", type=float, default=10.0,
                 help="how long a request waits for others to share its batch (default 10)")
  return p.parse_args(argv)


class TextToSpeech:
  """What the endpoints do, apart from HTTP: request fields -> WAV bytes.

  Requests that arrive together with the same options are synthesized in one
  `Voice.iter_batch` call (each text's audio is the same as alone; each request is answered
  as soon as its own audio is done): a worker thread takes a request, waits up to
  `batch_wait` seconds for more, up to `max_batch` texts.

  Args:
    voice: a loaded `vits_jax.voice.Voice`.
    defaults: `Voice.synthesize` keywords for the fields a request leaves out.
    max_batch: most texts per synthesis call (1: one request at a time).
    batch_wait: seconds the first request of a batch waits for others.
  """

  def __init__(self, voice, defaults, max_batch=16, batch_wait=0.01):
    self.voice = voice
    # What clients see the voice called: a path's last part (the folder or file), so a
    # server open to the network does not show where its files are.
    self.name = os.path.basename(voice.name.rstrip("/" + os.sep)) or voice.name
    self.defaults = dict(defaults)
    self.max_batch = max(1, int(max_batch))
    self.batch_wait = float(batch_wait)
    self.batches = 0   # synthesis calls made for whole-WAV requests
    self.abandoned = 0   # of them, stopped because every client waiting on it had left
    self._lock = threading.Lock()   # one synthesis at a time (each uses every core)
    self._queue = queue.Queue()
    self._worker = None
    self._start_lock = threading.Lock()

  def info(self):
    v = self.voice
    speakers = {name: sid for name, sid in v.speaker_names.items()}
    return {"name": self.name, "sample_rate": v.sample_rate, "num_speakers": v.num_speakers,
            "speaker_id_map": speakers}

  def request(self, fields):
    """One request's text and `Voice.synthesize` keywords (ValueError names what is wrong:
    `vits_jax.request.parse`, plus the server's own fields `voice` and `stream`)."""
    from vits_jax import request
    text, knobs = request.parse(fields, self.voice, self.defaults, extra=("voice", "stream"))
    if not isinstance(fields.get("stream", False), bool):
      raise ValueError(f"stream must be true or false, got {fields['stream']!r}")
    voice = fields.get("voice")   # Piper's clients name a voice without '.onnx'
    if voice not in (None, "", self.voice.name, self.name, self.name.removesuffix(".onnx")):
      raise ValueError(f"this server speaks with voice {self.name!r}, not {voice!r}")
    return text, knobs

  def synthesize(self, fields, gone=None):
    """WAV bytes for one request's fields (waits for its batch; ValueError for a bad
    request: the voice checks the knobs' ranges and the text).

    `gone`, when given, is asked every GONE_POLL_SECONDS while the request waits: once it
    returns True (the client has left), the request no longer holds its batch's synthesis
    (which stops after the current window when none of its requests is waited for) and
    ClientGone is raised."""
    text, knobs = self.request(fields)
    # (a slower length_scale makes the same text's WAV that much longer)
    if len(text) * max(1.0, knobs["length_scale"]) > MAX_WAV_TEXT_CHARS:
      raise ValueError(f"text too long for one WAV ({len(text)} characters at length_scale "
                       f"{knobs['length_scale']:g}, at most {MAX_WAV_TEXT_CHARS} at 1): "
                       "split it, or ask for \"stream\": true")
    done = concurrent.futures.Future()
    with self._start_lock:
      if self._worker is None:
        self._worker = threading.Thread(target=self._serve_queue, daemon=True)
        self._worker.start()
    left = threading.Event()
    self._queue.put((tuple(sorted(knobs.items())), text, done, left))
    while gone is not None:
      try:
        return wav_bytes(done.result(timeout=GONE_POLL_SECONDS), self.voice.sample_rate)
      except concurrent.futures.TimeoutError:
        if gone():
          left.set()
          raise ClientGone() from None
    return wav_bytes(done.result(), self.voice.sample_rate)

  def _serve_queue(self):
    waiting = []   # requests taken while a batch of other options was being gathered
    while True:
      first = waiting.pop(0) if waiting else self._queue.get()
      batch = [first] + [r for r in waiting if r[0] == first[0]][:self.max_batch - 1]
      waiting = [r for r in waiting if r not in batch]
      deadline = time.monotonic() + self.batch_wait
      while len(batch) < self.max_batch:
        try:
          item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
          break
        (batch if item[0] == first[0] else waiting).append(item)
      self._run(batch)

  def _run(self, batch):
    from vits_jax import inference
    texts = [text for _, text, _, _ in batch]
    abandoned = lambda: all(left.is_set() for _, _, done, left in batch if not done.done())
    try:
      with self._lock:
        self.batches += 1
        results = self.voice.iter_batch(texts, batch_size=self.max_batch,
                                        skip_unsayable=True, stop=abandoned,
                                        **dict(batch[0][0]))
        for (_, text, done, _), (audio, why) in zip(batch, results):
          if audio.size:
            done.set_result(audio)
          elif isinstance(why, inference.SentenceTooLong):   # this request's alone
            done.set_exception(ValueError(str(why)))
          else:
            done.set_exception(ValueError(
                f"text has nothing to say for this voice: {text[:50]!r}"))
        if not all(done.done() for _, _, done, _ in batch):   # stopped: nobody waits
          self.abandoned += 1
          for _, _, done, _ in batch:
            if not done.done():
              done.set_exception(ClientGone())
    except Exception as e:  # pylint: disable=broad-except  (the requests' error, not ours)
      for _, _, done, _ in batch:
        if not done.done():
          done.set_exception(e)

  def stream(self, fields):
    """A streamed WAV for one request's fields: its header, then 16-bit samples as
    `Voice.stream` makes them (a generator; a bad request raises on the first item)."""
    from vits_jax.files import pcm16
    text, knobs = self.request(fields)
    chunks = self.voice.stream(text, **knobs)
    # The lock is held while a window is computed, not while its bytes are sent: a client
    # that reads slowly (or not at all) holds up only itself.
    with self._lock:
      first = next(chunks, None)   # the text and knobs are checked before any byte is sent
    yield stream_header(self.voice.sample_rate)
    while first is not None:
      yield pcm16(first).tobytes()
      with self._lock:
        first = next(chunks, None)


class ClientGone(Exception):
  """The client of a whole-WAV request left before its audio was made."""


def peer_state(sock) -> str:
  """What the peer of connected socket `sock` has done: "open", "eof" (it closed, or only
  half-closed its sending side) or "reset" (or the socket is closed here). A request's body is
  read whole before synthesis, so nothing else is pending there; a pipelined next request
  reads as data, that is "open"."""
  import select  # pylint: disable=import-outside-toplevel
  try:
    poll = select.poll()   # (select.select refuses descriptors past 1023)
    poll.register(sock, select.POLLIN)
    if not poll.poll(0):
      return "open"
    if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b"":
      return "open"
    # (after the peer's FIN, recv reads as at its end even once a reset has come: the
    # reset shows as the socket's pending error)
    return "reset" if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) else "eof"
  except BlockingIOError:
    return "open"
  except (OSError, ValueError):   # reset, or closed here
    return "reset"


class ClientWatch:
  """`gone()` for a whole-WAV request: whether its client has left, asked while it waits.

  End of input alone does not say so: HTTP lets a client half-close its side once its
  request is sent (`nc -N`, socat) and still read the answer. At the first end of input an
  interim `102 Processing` goes out (an HTTP/1.1 client must accept 1xx answers before the
  final one); a client that had closed answers it with a reset, seen at the next poll, and
  one that half-closed reads on and is kept. HTTP/1.0 has no 1xx: there end of input is gone."""

  def __init__(self, handler):
    self.handler = handler
    self.probed = False

  def __call__(self) -> bool:
    state = peer_state(self.handler.connection)
    if state == "open":
      return False
    if state == "reset" or self.handler.request_version != "HTTP/1.1":
      return True
    if self.probed:   # half-closed: it took the interim answer without a reset
      return False
    try:
      self.handler.wfile.write(b"HTTP/1.1 102 Processing\r\n\r\n")
      self.handler.wfile.flush()
    except OSError:
      return True
    self.probed = True
    return False


def stream_header(sample_rate):
  """A 16-bit mono WAV header whose sizes are 0xFFFFFFFF: the length is not known yet
  (players and libsndfile read such a stream to its end)."""
  rate = int(sample_rate)
  return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt "
          + struct.pack("<IHHIIHH", 16, 1, 1, rate, 2 * rate, 2, 16)
          + b"data" + struct.pack("<I", 0xFFFFFFFF))


def wav_bytes(audio, sample_rate):
  """16-bit mono WAV of float audio (the samples `infer.py` writes)."""
  from vits_jax.files import pcm16
  out = io.BytesIO()
  with wave.open(out, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(int(sample_rate))
    w.writeframes(pcm16(audio).tobytes())
  return out.getvalue()


def make_handler(tts):
  """The request handler class of a server for `tts` (a `TextToSpeech`)."""

  class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_SECONDS   # a client that sends nothing is dropped, not waited for

    def log_message(self, fmt, *args):   # one line per request on stderr
      sys.stderr.write(f"{self.address_string()} {fmt % args}\n")

    def _send(self, status, body, content_type):
      self.send_response(status)
      self.send_header("Content-Type", content_type)
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      if self.command != "HEAD":
        self.wfile.write(body)

    def _json(self, status, obj):
      self._send(status, json.dumps(obj).encode("utf-8"), "application/json")

    def send_error(self, code, message=None, explain=None):
      # What the standard library refuses itself (a bad request line, headers too long,
      # an unsupported method): `{"error": ...}` as every other refusal, not an HTML page.
      del explain
      self.close_connection = True
      words = str(getattr(self, "requestline", "")).split()
      if self.request_version == "HTTP/0.9" and not (len(words) == 2 and words[0] == "GET"):
        # (a request line refused before its version was read is taken for HTTP/0.9, whose
        # answers have no status line: only a real HTTP/0.9 request, `GET /path`, gets that)
        self.request_version = "HTTP/1.0"
      text = message or self.responses.get(code, ("",))[0] or f"HTTP {code}"
      self._send(code, json.dumps({"error": text}).encode("utf-8"), "application/json")

    def _speak(self, fields):
      stream = isinstance(fields, dict) and fields.get("stream") is True
      try:
        if stream:
          chunks = tts.stream(fields)
          header = next(chunks)
        else:
          wav = tts.synthesize(fields, gone=ClientWatch(self))
      except ClientGone:   # nobody to answer
        self.close_connection = True
        return None
      except ValueError as e:   # (the voice's messages name it by its path)
        message = str(e).splitlines()[0].replace(tts.voice.name, tts.name)
        return self._json(400, {"error": message})
      except Exception as e:  # pylint: disable=broad-except  (a bug of ours: a 500, not a
        # dropped connection; the traceback goes to the log)
        import traceback  # pylint: disable=import-outside-toplevel
        sys.stderr.write(traceback.format_exc())
        return self._json(500, {"error": f"internal error ({type(e).__name__}); see the "
                                         "server's log"})
      if not stream:
        try:
          return self._send(200, wav, "audio/wav")
        except (BrokenPipeError, ConnectionResetError):   # the client went away
          self.close_connection = True
          return None
      self.send_response(200)   # chunked: each piece goes out as soon as it is made
      self.send_header("Content-Type", "audio/wav")
      self.send_header("Transfer-Encoding", "chunked")
      self.end_headers()
      try:
        for piece in itertools.chain([header], chunks):
          self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
          self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
      except (BrokenPipeError, ConnectionResetError):   # the client went away
        self.close_connection = True
      except ValueError as e:   # a later sentence refused (too long): the 200 is out, so
        # the stream ends without its last chunk (the client sees it cut short) and the
        # reason goes to the log
        self.close_connection = True
        self.log_message('"%s" stopped mid-stream: %s', self.requestline,
                         str(e).splitlines()[0])
      finally:
        chunks.close()

    def _body(self):
      if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
        self._json(411, {"error": "send the body with a Content-Length (chunked request "
                                  "bodies are not read)"})
        self.close_connection = True   # its chunks are not read
        return None
      given = {v.strip() for v in self.headers.get_all("Content-Length") or []}
      if len(given) > 1:   # which body is meant? (a proxy in front may have read the other)
        self._json(400, {"error": "the request has Content-Length headers that differ"})
        self.close_connection = True
        return None
      try:
        length = int(given.pop() or 0) if given else 0
      except ValueError:
        length = -1
      if length < 0 or length > MAX_BODY_BYTES:
        # Read what was sent (up to a bound) so the client gets this answer, not a broken
        # pipe while it is still sending; the connection is closed after it.
        left = min(max(length, 0), DRAIN_BYTES)
        while left > 0:
          got = self.rfile.read(min(left, 1 << 16))
          if not got:
            break
          left -= len(got)
        self._json(413 if length > 0 else 400,
                   {"error": f"the request body must be 0 to {MAX_BODY_BYTES} bytes"})
        self.close_connection = True
        return None
      try:
        return self.rfile.read(length).decode("utf-8-sig")   # (a BOM is dropped)
      except UnicodeDecodeError:
        self._json(400, {"error": "the request body is not UTF-8 text"})
        return None

    def do_GET(self):
      url = urllib.parse.urlsplit(self.path)
      if url.path in ("/voices", "/info"):
        info = tts.info()
        return self._json(200, {info["name"]: info} if url.path == "/voices" else
                          {"voice": info})
      if url.path == "/":
        try:
          query = urllib.parse.parse_qs(url.query, errors="strict")
        except UnicodeDecodeError:
          return self._json(400, {"error": "the query is not UTF-8 text"})
        return self._speak({"text": query.get("text", [""])[0]})
      self._json(404, {"error": f"no such endpoint: {url.path}"})

    def do_HEAD(self):   # what GET would answer, without the body (`_send` leaves it out)
      self.do_GET()

    def do_POST(self):
      url = urllib.parse.urlsplit(self.path)
      if url.path not in ("/", "/synthesize"):
        self.close_connection = True   # its body is not read
        return self._json(404, {"error": f"no such endpoint: {url.path}"})
      body = self._body()
      if body is None:
        return None
      kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
      if url.path == "/" and kind != "application/json":
        return self._speak({"text": body})
      from vits_jax.files import parse_json
      try:
        fields = parse_json(body)
      except ValueError as e:
        return self._json(400, {"error": f"the request body is {e}"})
      return self._speak(fields)

  return Handler


class _Server(http.server.ThreadingHTTPServer):
  daemon_threads = True
  # Connections waiting to be accepted: the default 5 reset clients of a burst (4 of 20)
  # while synthesis kept the accepting thread from running.
  request_queue_size = 128

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self._open = threading.BoundedSemaphore(MAX_CONNECTIONS)

  def process_request(self, request, client_address):
    # A connection past MAX_CONNECTIONS is answered 503 at once and closed (each open one
    # holds a thread until its client leaves or goes silent for IDLE_SECONDS).
    if not self._open.acquire(blocking=False):
      try:
        body = json.dumps({"error": f"the server has {MAX_CONNECTIONS} connections open; "
                                    "try again later"}).encode()
        request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/"
                        b"json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
                        % len(body) + body)
      except OSError:
        pass
      self.shutdown_request(request)
      return
    super().process_request(request, client_address)

  def process_request_thread(self, request, client_address):
    try:
      super().process_request_thread(request, client_address)
    finally:
      self._open.release()

  def handle_error(self, request, client_address):
    if isinstance(sys.exc_info()[1], ConnectionError):
      return   # the client left before its answer was sent: nothing to report
    super().handle_error(request, client_address)


class _Server6(_Server):
  address_family = socket.AF_INET6


def serve(tts, host, port):
  """A running `ThreadingHTTPServer` for `tts` (call `serve_forever`, or use its port);
  an IPv6 `host` (`::1`, `::`) listens on IPv6."""
  return (_Server6 if ":" in (host or "") else _Server)((host, port), make_handler(tts))


def _stop_on_signals(server):
  """Ctrl-C and SIGTERM end `serve_forever` through `server.shutdown()`: no KeyboardInterrupt
  is raised into whatever the main thread runs at that moment (one escaping from the loop's
  own bookkeeping killed the process with SIGINT instead of exit 0, once in a CI run)."""
  def stop(signum, frame):
    del signum, frame
    threading.Thread(target=server.shutdown, daemon=True).start()   # it waits for the loop
  try:
    return {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
  except ValueError:   # not the main thread (an embedding program)
    return {}


def request_defaults(args, voice):
  """The `Voice.synthesize` keywords a request leaves out, from the command line's flags
  (`parse_args`) and, for the scales it leaves out, the voice's own."""
  defaults = dict(length_scale=args.length_scale, noise_scale=args.noise_scale,
                  noise_scale_w=args.noise_w_scale, sentence_silence=args.sentence_silence,
                  volume=args.volume, normalize=args.normalize, seed=0,
                  speaker=voice.speaker_id(args.speaker))
  defaults.update({k: v for k, v in voice.defaults.items() if defaults[k] is None})
  return defaults


def main(argv=None):
  args = parse_args(argv)
  from vits_jax.files import one_line, warning_line
  warnings.showwarning = warning_line
  try:
    if not 0 <= args.port <= 65535:
      raise ValueError(f"--port must be 0 to 65535, got {args.port}")
    from vits_jax import xla_cache
    from vits_jax.voice import check_flags, load_voice
    check_flags(noise_scale=args.noise_scale, noise_scale_w=args.noise_w_scale,
                length_scale=args.length_scale, sentence_silence=args.sentence_silence,
                volume=args.volume)
    xla_cache.enable()
    voice = load_voice(args.voice)
    defaults = request_defaults(args, voice)
    if args.max_batch < 1 or not 0 <= args.batch_wait_ms <= 10000:
      raise ValueError("--max-batch must be >= 1 and --batch-wait-ms 0 to 10000")
    tts = TextToSpeech(voice, defaults, args.max_batch, args.batch_wait_ms / 1000)
    tts.synthesize({"text": "Ready."})   # compiles (or loads) the programs before serving
    server = serve(tts, args.host, args.port)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {one_line(str(e))}", file=sys.stderr)
    return 2
  except OSError as e:   # the port is taken, or not ours to bind
    print(f"error: cannot listen on {args.host}:{args.port}: {e.strerror}", file=sys.stderr)
    return 2
  host, port = server.server_address[:2]
  previous = _stop_on_signals(server)   # (before the line that says it serves: a client may stop it then)
  shown = f"[{host}]" if ":" in host else host
  print(f"serving {voice.name} on http://{shown}:{port} (Ctrl-C stops)", file=sys.stderr)
  try:
    server.serve_forever()
  except KeyboardInterrupt:   # an embedding program's own Ctrl-C
    pass
  finally:
    server.server_close()
    for signum, handler in previous.items():
      signal.signal(signum, handler)
  return 0


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  code = main()
  # Requests still in flight run in daemon threads inside XLA: the interpreter's teardown
  # under them aborted the process (SIGABRT on Ctrl-C). Their clients see the connection
  # close; nothing of the server's is left to write.
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)   # pylint: disable=protected-access
