"""infer.py / serve.py / export.py: what a user of the command lines sees, flag by flag (exit
codes, which knob a flag sets, file formats, HTTP framing), in-process and on tiny voices."""

import io
import json
import os
import socket
import struct
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))
import infer  # noqa: E402
import serve  # noqa: E402
from test_infer_cli import _run  # noqa: E402
from test_serve import server  # noqa: E402,F401  (its module-scoped server, one per module)
from vits_jax import files  # noqa: E402
from vits_jax.voice import load_voice  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
TINY = str(FIXTURES / "piper_tiny_multi.onnx")
TINY_SINGLE = str(FIXTURES / "piper_tiny_high.onnx")
OFFICIAL = str(FIXTURES / "official_tiny" / "G_7.pth")   # 3 speakers, with a posterior
TEXT = "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background."


class _Stdout:
  """Stands in for sys.stdout: a text stream with a bytes `buffer`."""

  def __init__(self, buffer=None):
    self.buffer = buffer if buffer is not None else io.BytesIO()
    self.text = []

  def write(self, text):
    self.text.append(text)
    return len(text)

  def flush(self):
    pass


@pytest.fixture(scope="module")
def tiny():
  return load_voice(TINY)


# ---------------------------------------------------------------------------------- infer.py


def test_ctrl_c_exits_130(capsys, monkeypatch):
  """An interrupted run says so and exits 130 (128 + SIGINT), as shells expect."""
  def interrupted(args):
    raise KeyboardInterrupt
  monkeypatch.setattr(infer, "run", interrupted)
  code = infer.main(["--text", "Hi.", "--voice", TINY])
  assert code == 130 and capsys.readouterr().err.strip() == "interrupted"


@pytest.mark.parametrize("flags, knobs", [
    (["--noise-scale", "0.5", "--noise-scale-w", "0"], dict(noise_scale=0.5, noise_scale_w=0.0)),
    (["--noise-w-scale", "0.1"], dict(noise_scale_w=0.1)),
    (["--seed", "7"], dict(seed=7)),
    (["--sentence-silence", "0.25"], dict(sentence_silence=0.25)),
    (["--length-scale", "1.3"], dict(length_scale=1.3)),
    (["--volume", "0.5"], dict(volume=0.5)),
    (["--normalize"], dict(normalize=True)),
    (["--speaker", "carol"], dict(speaker=2)),
])
def test_each_flag_sets_its_own_knob(flags, knobs, tmp_path, capsys, tiny):
  """--text --out with one flag writes exactly `Voice.synthesize` with that keyword (and
  differs from the defaults: the flag did act)."""
  out = tmp_path / "a.wav"
  code, err = _run(["--text", TEXT, "--voice", TINY, "--out", str(out)] + flags, capsys)
  assert code == 0, err
  written, rate = sf.read(out, dtype="int16")
  assert rate == tiny.sample_rate and sf.info(out).subtype == "PCM_16"
  np.testing.assert_array_equal(written, files.pcm16(tiny.synthesize(TEXT, **knobs)))
  plain = files.pcm16(tiny.synthesize(TEXT))
  assert written.shape != plain.shape or np.any(written != plain)


def test_wrote_line_goes_to_stderr_and_formats_are_real(tmp_path, capsys, tiny):
  """Status lines go to stderr (stdout stays clean for `--out /dev/stdout` and pipes); a
  .flac --out and a --json-input .flac output_file are FLAC files, not WAV renamed."""
  code = infer.main(["--text", "Hi.", "--voice", TINY, "--out", str(tmp_path / "a.flac")])
  captured = capsys.readouterr()
  assert code == 0 and captured.out == "" and "wrote" in captured.err
  assert sf.info(tmp_path / "a.flac").format == "FLAC"
  src = tmp_path / "l.jsonl"
  src.write_text(json.dumps({"text": "Hi.", "output_file": "x.flac"}) + "\n")
  code, err = _run(["--input", str(src), "--json-input", "--out-dir", str(tmp_path / "o"),
                    "--voice", TINY], capsys)
  assert code == 0, err
  assert sf.info(tmp_path / "o" / "x.flac").format == "FLAC"
  for name in ("a.wav", "a.ogg"):
    code, err = _run(["--text", "Hi.", "--voice", TINY, "--out", str(tmp_path / name)], capsys)
    assert code == 0, err
  assert sf.info(tmp_path / "a.wav").subtype == "PCM_16"
  assert sf.info(tmp_path / "a.ogg").format == "OGG"


@pytest.mark.parametrize("argv, needle", [
    (["--text", "Hi.", "--out-dir", "OUT"], "--out-dir goes with --input"),
    (["--input", "LINES", "--out-dir", "OUT", "--out", "OUT/x.wav"], "--out goes with --text"),
    (["--input", "LINES", "--out", "OUT/x.wav"], "--out goes with --text"),
    (["--convert", "WAV", "--speaker", "1", "--source-speaker", "0", "--output-raw"],
     "--convert writes a file"),
    (["--list-speakers", "--output-raw"], "--list-speakers prints to stdout"),
    (["--text", "Hi.", "--source-speaker", "0", "--out", "OUT/x.wav"],
     "--source-speaker goes with --convert"),
])
def test_flags_that_do_not_go_together_are_refused(argv, needle, tmp_path, capsys,
                                                   monkeypatch):
  monkeypatch.chdir(tmp_path)   # (where a default out.wav would land)
  (tmp_path / "l.txt").write_text("Hi.\n")
  sf.write(tmp_path / "in.wav", np.zeros(4000, np.float32), 16000)
  (tmp_path / "o").mkdir()
  subst = {"OUT": str(tmp_path / "o"), "OUT/x.wav": str(tmp_path / "o" / "x.wav"),
           "LINES": str(tmp_path / "l.txt"), "WAV": str(tmp_path / "in.wav")}
  code, err = _run([subst.get(a, a) for a in argv] + ["--voice", TINY], capsys)
  assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
  assert needle in err, err
  assert os.listdir(tmp_path / "o") == [] and not (tmp_path / "out.wav").exists()


def test_raw_lines_from_an_empty_stdin_are_an_error(capsys, monkeypatch):
  """`--input - --output-raw` with nothing but blank lines in stdin is an error (exit 2),
  as with --out-dir, not a silent success."""
  out = _Stdout()
  monkeypatch.setattr(sys, "stdout", out)
  for stdin in ("", "\n  \n"):
    code, err = _run(["--input", "-", "--output-raw", "--voice", TINY_SINGLE], capsys, stdin,
                     monkeypatch)
    assert code == 2 and err.strip() == "error: no text in stdin", err
  assert out.buffer.getvalue() == b""


def test_lines_all_unsayable_or_too_long_write_nothing_and_fail(tmp_path, capsys,
                                                                monkeypatch):
  """Every line skipped, some for nothing to say and some for a sentence too long: no file,
  exit 2 (it exited 0 with 'wrote 0 files')."""
  from vits_jax import inference
  voice = load_voice(TINY_SINGLE)
  short = "Hi."
  frames = int(sum(d.sum() for d in voice.synthesize(short, with_durations=True)[1]))
  monkeypatch.setattr(inference, "MAX_SENTENCE_FRAMES", frames - 1)
  out = tmp_path / "o"
  code, err = _run(["--input", "-", "--out-dir", str(out), "--voice", TINY_SINGLE], capsys,
                   "\U0001F600\n" + short + "\n", monkeypatch)
  assert code == 2 and err.splitlines()[-1].startswith("error: "), err
  assert list(out.iterdir()) == []


def test_skip_counts_name_each_cause_once(tmp_path, capsys, monkeypatch):
  """One line with nothing to say and one with a sentence too long, among sayable lines: each
  warning counts its own line, and the files written are the others'."""
  from vits_jax import inference
  voice = load_voice(TINY_SINGLE)
  lines = ["Hi.", "\U0001F600", "Hi there, all of you, my good old friends.", "Ho."]
  frames = [int(sum(d.sum() for d in voice.synthesize(t, with_durations=True)[1]))
            for t in (lines[0], lines[2], lines[3])]
  monkeypatch.setattr(inference, "MAX_SENTENCE_FRAMES", max(frames[0], frames[2]))
  out = tmp_path / "o"
  code, err = _run(["--input", "-", "--out-dir", str(out), "--voice", TINY_SINGLE], capsys,
                   "\n".join(lines) + "\n", monkeypatch)
  assert code == 0, err
  assert sorted(os.listdir(out)) == ["0001.wav", "0004.wav"]
  assert "wrote 2 files" in err
  assert "skipped 1 line(s) with a sentence that would last" in err and "no 0003.wav" in err
  assert "skipped 1 line(s) with nothing to say for this voice, so no 0002.wav" in err
  monkeypatch.setattr(sys, "stdout", _Stdout())
  code, err = _run(["--input", "-", "--output-raw", "--voice", TINY_SINGLE], capsys,
                   "\n".join(lines) + "\n", monkeypatch)
  assert code == 0, err
  assert "skipped 1 line(s) with a sentence that would last too long" in err
  assert "skipped 1 line(s) with nothing to say" in err and "cut" not in err


def test_a_name_of_exactly_the_longest_length_is_written(tmp_path, capsys):
  name = "n" * (infer.MAX_NAME_BYTES - 4) + ".wav"
  code, err = _run(["--text", "Hi.", "--voice", TINY, "--out", str(tmp_path / name)], capsys)
  assert code == 0 and (tmp_path / name).exists(), err
  code, err = _run(["--text", "Hi.", "--voice", TINY, "--out", str(tmp_path / ("n" + name))],
                   capsys)
  assert code == 2 and "over 230 bytes" in err


def test_an_out_file_that_may_not_be_written_is_refused_before_synthesis(tmp_path, capsys,
                                                                        monkeypatch):
  """An existing --out the user may not write (a read-only file: `os.replace` would swap it
  out all the same, its folder being writable) is refused, and kept."""
  out = tmp_path / "kept.wav"
  out.write_bytes(b"mine")
  real = os.access
  monkeypatch.setattr(os, "access", lambda p, mode, **k: False if os.fspath(p) == str(out)
                      and mode == os.W_OK else real(p, mode, **k))
  code, err = _run(["--text", "Hi.", "--voice", TINY, "--out", str(out)], capsys)
  assert code == 2 and "cannot be written (permission denied)" in err, err
  assert out.read_bytes() == b"mine"


def test_input_batches_write_each_line_to_its_own_file(tmp_path, capsys, monkeypatch, tiny):
  """--input with a batch smaller than the lines: file k holds line k's audio alone."""
  lines = ["One.", "Two words here.", "Three.", "Four, a longer line than the rest.", "Five."]
  out = tmp_path / "o"
  code, err = _run(["--input", "-", "--out-dir", str(out), "--voice", TINY, "--speaker", "1",
                    "--batch-size", "2"], capsys, "\n".join(lines) + "\n", monkeypatch)
  assert code == 0, err
  for k, line in enumerate(lines):
    written, _ = sf.read(out / f"{k + 1:04d}.wav", dtype="int16")
    np.testing.assert_array_equal(written, files.pcm16(tiny.synthesize(line, speaker=1)))


@pytest.fixture(scope="module")
def vc_voice():
  """A 3-speaker voice with a posterior encoder (the official golden's), and a recording."""
  from test_synthesis import _official_voice
  voice, golden = _official_voice()
  return voice, np.asarray(golden["wav"], np.float32), int(golden["rate"])


@pytest.mark.parametrize("flags, noise, seed, volume", [
    ([], 0.0, 0, 1.0), (["--noise-scale", "0.5", "--seed", "3"], 0.5, 3, 1.0),
    (["--volume", "0.5"], 0.0, 0, 0.5)])
def test_convert_writes_the_voice_conversion(flags, noise, seed, volume, vc_voice, tmp_path,
                                             capsys, monkeypatch):
  """--convert IN --source-speaker S --speaker T writes `Voice.convert(S -> T)` (the
  posterior's mean unless --noise-scale), at --volume."""
  from vits_jax import voice as voice_module
  from vits_jax.voice import loudness
  voice, wav, rate = vc_voice
  monkeypatch.setattr(voice_module, "load_voice", lambda *a, **k: voice)
  sf.write(tmp_path / "in.wav", wav, rate, subtype="FLOAT")
  out = tmp_path / "out.wav"
  code, err = _run(["--convert", str(tmp_path / "in.wav"), "--voice", "vc",
                    "--source-speaker", "1", "--speaker", "2", "--out", str(out)] + flags,
                   capsys)
  assert code == 0, err
  audio, _ = files.read_audio(str(tmp_path / "in.wav"))
  want = loudness(voice.convert(audio.mean(axis=1), rate, 1, 2, noise_scale=noise, seed=seed),
                  volume)
  written, _ = sf.read(out, dtype="int16")
  np.testing.assert_array_equal(written, files.pcm16(want))
  swapped = voice.convert(audio.mean(axis=1), rate, 2, 1, noise_scale=noise, seed=seed)
  assert swapped.shape != want.shape or np.abs(swapped - want).max() > 1e-3


# ---------------------------------------------------------------------------------- serve.py


def _raw(url, request, timeout=60):
  """All the server at `url` sends back on one connection until it closes it."""
  port = int(url.rsplit(":", 1)[1])
  with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
    c.sendall(request)
    reply = b""
    while chunk := c.recv(65536):
      reply += chunk
  return reply


def _responses(reply):
  """(status line, headers dict, body) of each response in `reply` (Content-Length framed)."""
  out = []
  while reply:
    head, _, rest = reply.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (l.partition(":") for l in lines)}
    n = int(headers.get("content-length", len(rest)))
    out.append((status, headers, rest[:n]))
    reply = rest[n:]
  return out


def test_stream_header_describes_16_bit_mono(server):
  """The streamed WAV's header: PCM, 1 channel, the voice's rate, byte rate 2 * rate, block
  align 2, 16 bits (players compute time and seek from these)."""
  voice = server[0]
  header = serve.stream_header(voice.sample_rate)
  assert len(header) == 44 and header[:4] == b"RIFF" and header[8:16] == b"WAVEfmt "
  size, fmt, channels, rate, byte_rate, align, bits = struct.unpack("<IHHIIHH", header[16:36])
  assert (size, fmt, channels, rate, byte_rate, align, bits) == (
      16, 1, 1, voice.sample_rate, 2 * voice.sample_rate, 2, 16)
  assert header[36:40] == b"data"
  # The same fields as the whole WAV's header.
  whole = serve.wav_bytes(np.zeros(10, np.float32), voice.sample_rate)
  assert header[12:40] == whole[12:40]


def test_head_sends_no_body_and_get_info(server):
  """HEAD answers the headers alone (a body there would be read as the next response on a
  kept-alive connection); GET /info is {"voice": info}, /voices {name: info}."""
  voice, url, tts = server
  reply = _raw(url, b"HEAD /info HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
  head, _, rest = reply.partition(b"\r\n\r\n")
  assert head.startswith(b"HTTP/1.1 200 ")
  length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0]
               .split(b":")[1])
  assert rest.startswith(b"HTTP/1.1 200 "), rest[:80]   # the GET's answer comes next
  (status, headers, body), = _responses(rest)
  assert int(headers["content-length"]) == length == len(body)
  assert json.loads(body) == {"voice": tts.info()}
  reply = _raw(url, b"GET /voices HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
  (status, headers, body), = _responses(reply)
  assert headers["content-type"] == "application/json"
  assert json.loads(body) == {tts.name: tts.info()}


def test_info_names_the_voice_without_its_path(server):
  """A voice known by its path is shown by its last part (a server open to the network does
  not say where its files are)."""
  import copy
  voice = copy.copy(server[0])
  voice.name = "/srv/secret/voices/en_US-x.onnx"
  tts = serve.TextToSpeech(voice, server[2].defaults)
  assert tts.info()["name"] == "en_US-x.onnx" and "/srv" not in json.dumps(tts.info())
  with pytest.raises(ValueError, match="speaks with voice 'en_US-x.onnx', not 'other'"):
    tts.request({"text": "Hi.", "voice": "other"})
  assert tts.request({"text": "Hi.", "voice": "en_US-x"})[0] == "Hi."


def test_post_to_an_unknown_endpoint_closes_the_connection(server):
  """Its body is not read, so the connection is closed after the 404 (left open, the body
  was read as a next request: a second answer)."""
  _, url, _ = server
  body = b'{"text": "Hi."}'
  reply = _raw(url, b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body, timeout=20)
  (status, headers, got), = _responses(reply)
  assert status.startswith("HTTP/1.1 404 ") and "no such endpoint: /nope" in got.decode()


@pytest.mark.parametrize("length", [b"abc", b"-5"])
def test_a_content_length_that_is_no_size_is_400(server, length):
  _, url, _ = server
  reply = _raw(url, b"POST /synthesize HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nContent-Length: " + length + b"\r\n\r\n{}",
               timeout=20)
  (status, headers, body), = _responses(reply)
  assert status.startswith("HTTP/1.1 400 ") and "request body must be" in body.decode()


def test_503_is_framed_by_its_content_length(server, monkeypatch):
  """The answer past MAX_CONNECTIONS says its body's true length (one more and an HTTP client
  waits for a byte that never comes, then fails)."""
  monkeypatch.setattr(serve, "MAX_CONNECTIONS", 1)
  small = serve.serve(server[2], "127.0.0.1", 0)
  threading.Thread(target=small.serve_forever, daemon=True).start()
  try:
    url = f"http://127.0.0.1:{small.server_address[1]}"
    with socket.create_connection(("127.0.0.1", small.server_address[1]), timeout=60):
      reply = _raw(url, b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n")
  finally:
    small.shutdown()
    small.server_close()
  head, _, body = reply.partition(b"\r\n\r\n")
  assert head.startswith(b"HTTP/1.1 503 ")
  length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0]
               .split(b":")[1])
  assert length == len(body) and "1 connections open" in json.loads(body)["error"]


def test_a_port_taken_is_one_error_line_and_exit_2(capsys):
  with socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    code = serve.main(["--voice", TINY_SINGLE, "--port", str(port)])
  err = capsys.readouterr().err
  assert code == 2 and err.strip() == f"error: cannot listen on 127.0.0.1:{port}: Address " \
      "already in use", err


def test_text_posted_to_root_in_any_media_type_but_json_is_the_text(server):
  """`curl -d 'Hello' host:5000/` sends form-urlencoded; no Content-Type at all is also
  text: both are spoken with the server's defaults (only JSON is read as fields)."""
  voice, url, _ = server
  want = files.pcm16(voice.synthesize("Hi.", speaker=1))
  for kind in (b"Content-Type: application/x-www-form-urlencoded\r\n", b""):
    reply = _raw(url, b"POST / HTTP/1.1\r\nHost: x\r\n" + kind +
                 b"Content-Length: 3\r\nConnection: close\r\n\r\nHi.")
    (status, headers, body), = _responses(reply)
    assert status.startswith("HTTP/1.1 200 ") and headers["content-type"] == "audio/wav"
    np.testing.assert_array_equal(sf.read(io.BytesIO(body), dtype="int16")[0], want)


def test_a_streamed_answer_is_chunked_only(server):
  """A streamed WAV is framed by chunks alone (no Content-Length beside Transfer-Encoding,
  which RFC 9112 forbids and proxies refuse), ending with the last-chunk."""
  voice, url, _ = server
  body = json.dumps({"text": "Hi there.", "stream": True}).encode()
  reply = _raw(url, b"POST /synthesize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
  head, _, rest = reply.partition(b"\r\n\r\n")
  lines = head.lower().split(b"\r\n")
  assert lines[0].startswith(b"http/1.1 200 ") and b"transfer-encoding: chunked" in lines
  assert b"content-type: audio/wav" in lines, head
  assert not any(l.startswith(b"content-length") for l in lines), head
  data = b""
  while True:
    size, _, rest = rest.partition(b"\r\n")
    n = int(size, 16)
    data, rest = data + rest[:n], rest[n:]
    assert rest[:2] == b"\r\n"
    rest = rest[2:]
    if n == 0:
      break
  assert rest == b""
  assert data[:44] == serve.stream_header(voice.sample_rate)
  np.testing.assert_array_equal(np.frombuffer(data[44:], "<i2"),
                                files.pcm16(voice.synthesize("Hi there.", speaker=1)))


# --------------------------------------------------------------------------------- export.py


def test_export_prints_its_notes_and_names_an_unwritable_output(tmp_path, capsys):
  """What the export says of its result goes to stderr as `note:` lines, the files written
  to stdout; an --out where no file can be made is 'cannot write OUT' (not a read error)."""
  import export
  code = export.main(["--voice", TINY_SINGLE, "--to", "hf", "--out", str(tmp_path / "hf")])
  captured = capsys.readouterr()
  assert code == 0, captured.err
  assert "note: no vocab.json" in captured.err, captured.err
  assert "note: " in captured.err and "freshly initialized" in captured.err, captured.err
  assert f"wrote {tmp_path / 'hf' / 'config.json'}" in captured.out
  for out in ("/proc/x.onnx", "/proc/no/x.onnx"):
    code = export.main(["--voice", TINY_SINGLE, "--to", "piper", "--out", out])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: cannot write {out}: "), err
    assert err.count("\n") == 1


@pytest.mark.parametrize("error, want", [
    (PermissionError(13, "Permission denied", "/v/voice.onnx"),
     "error: cannot read /v/voice.onnx: Permission denied"),
    (FileNotFoundError(2, "No such file or directory", "/v/voice.onnx"),
     "error: [Errno 2] No such file or directory: '/v/voice.onnx'"),
    (OSError(28, "No space left on device", "OUT/.v.onnx.tmp"),
     "error: cannot write OUT/v.onnx: No space left on device (OUT/.v.onnx.tmp)"),
    (OSError(5, "Input/output error"), "error: cannot write OUT/v.onnx: Input/output error"),
    # A voice beside the output is read, not written (it was 'cannot write OUT/v.onnx').
    (PermissionError(13, "Permission denied", "OUT/voice.onnx"),
     "error: cannot read OUT/voice.onnx: Permission denied"),
    (PermissionError(13, "Permission denied", "OUT/.v.onnx.x1/model.onnx"),
     "error: cannot write OUT/v.onnx: Permission denied (OUT/.v.onnx.x1/model.onnx)"),
])
def test_export_errors_exit_2_and_say_which_side_failed(error, want, tmp_path, capsys,
                                                        monkeypatch):
  """Every failure is exit 2 with one line: an OSError reading the voice is 'cannot read
  VOICE', one about the output (its file, temp file or folder) 'cannot write OUT'."""
  import export
  from vits_jax import export as export_module
  if error.filename:
    error.filename = error.filename.replace("OUT", str(tmp_path))

  def failing(*args, **kwargs):
    raise error
  monkeypatch.setattr(export_module, "export_voice", failing)
  code = export.main(["--voice", TINY, "--to", "piper", "--out", str(tmp_path / "v.onnx")])
  assert code == 2 and capsys.readouterr().err == want.replace("OUT", str(tmp_path)) + "\n"


def test_a_chunked_request_gets_the_411_alone(server):
  """Its chunks are not read, so the connection closes after the 411: nothing of the body is
  answered as a request of its own."""
  _, url, _ = server
  reply = _raw(url, b"POST /synthesize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{\"text\": \"Hi.\"}\r\n"
                     b"0\r\n\r\n", timeout=20)
  (status, headers, body), = _responses(reply)
  assert status.startswith("HTTP/1.1 411 ") and "Content-Length" in json.loads(body)["error"]
