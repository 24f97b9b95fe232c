"""Fuzzing of the text-shaped inputs: serve.py's HTTP requests, infer.py's --input /
--json-input lines and flags, prepare.py's metadata.csv rows and VCTK transcripts, and the
training config's values.

Every case must end in success or one clear line: through a CLI's `main`, exit 0, or exit 2
with exactly one `error:` line (`warning:` lines allowed) and no traceback; a skipped row is
counted; the server answers 4xx with a one-line JSON error and then still answers a good
request. The first tests pin the distinct failures a fuzzing run found (minimal
reproductions); the loops after them replay a compact, deterministic share of that run.
"""

import contextlib
import copy
import importlib.util
import io
import json
import os
import random
import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT))
import infer  # noqa: E402  (the CLI at the repo root)
import serve  # noqa: E402  (the server at the repo root)

MULTI = FIX / "piper_tiny_multi.onnx"
HIGH = FIX / "piper_tiny_high.onnx"


# ------------------------------------------------------------------ helpers
def _infer(argv):
  """infer.main(argv) -> (outcome, stderr): 'success', 'handled' (exit 2, one `error:` line,
  nothing but `error:`/`warning:` lines, no traceback), or 'BAD ...'. An exception escaping
  main fails the test."""
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    code = infer.main([str(a) for a in argv])
  text = err.getvalue()
  # (only '\n' ends a line on a terminal; a progress bar's lines hold 'utt')
  lines = [l for l in text.split("\n") if l.strip()]
  errors = [l for l in lines if l.startswith("error: ")]
  if code == 0:
    return "success", text
  if (code == 2 and len(errors) == 1 and "Traceback" not in text
      and all(l.startswith(("error: ", "warning: ")) or "utt" in l for l in lines)):
    return "handled", text
  return f"BAD exit {code}", text


def _json_input(tmp_path, lines, voice=MULTI):
  inp = tmp_path / "in.jsonl"
  inp.write_bytes(lines if isinstance(lines, bytes) else
                  "\n".join(json.dumps(l) for l in lines).encode("utf-8", "surrogatepass"))
  return _infer(["--input", inp, "--json-input", "--out-dir", tmp_path / "out",
                 "--voice", voice])


# ------------------------------------------------------------------ the server
@pytest.fixture(scope="module")
def server():
  from vits_jax.voice import load_voice
  voice = load_voice(str(MULTI))
  defaults = dict(length_scale=1.0, noise_scale=0.667, noise_scale_w=0.8,
                  sentence_silence=0.0, volume=1.0, normalize=False, seed=0, speaker=1)
  httpd = serve.serve(serve.TextToSpeech(voice, defaults), "127.0.0.1", 0)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield httpd.server_address[1]
  httpd.shutdown()
  httpd.server_close()


def _exchange(port, raw, timeout=60):
  """Sends `raw` on a fresh connection; the bytes received until the answer is complete
  (by its Content-Length, or chunked end), the server closes, or `timeout`."""
  with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
    try:
      s.sendall(raw)
    except (BrokenPipeError, ConnectionResetError):
      return b""
    data = b""
    try:
      while True:
        got = s.recv(65536)
        if not got:
          return data
        data += got
        while data.startswith((b"HTTP/1.1 100", b"HTTP/1.1 102")) and b"\r\n\r\n" in data:
          data = data.split(b"\r\n\r\n", 1)[1]
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
          lengths = [l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
          if lengths and len(body) >= int(lengths[0].split(b":")[1]):
            return data
          if b"chunked" in head.lower() and body.endswith(b"0\r\n\r\n"):
            return data
    except ConnectionResetError:
      return data


def _post(path, body, ctype=b"application/json", extra=b""):
  return (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: " + ctype
          + b"\r\nContent-Length: %d\r\n" % len(body) + extra
          + b"Connection: close\r\n\r\n" + body)


def _status(data):
  return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.") else None


def _check_answer(port, raw, case):
  """The answer to `raw` is a success or a refusal (not a 500) with a one-line JSON error,
  and the server still speaks afterwards."""
  data = _exchange(port, raw)
  status = _status(data)
  assert status is not None, (case, data[:200])
  assert status != 500, (case, data[:300])   # (500: an error of ours; 501/505 are fine)
  if status >= 400:
    body = data.split(b"\r\n\r\n", 1)[1]
    error = json.loads(body)["error"]
    assert error and "\n" not in error, (case, error)
  good = _exchange(port, _post(b"/synthesize", b'{"text": "Ok."}'))
  assert _status(good) == 200, (case, good[:200])


@pytest.mark.parametrize("request_line", [b"GET / HTTP/9.9", b"GET / HTTP/1.1 extra",
                                          b"POST /synthesize"])
def test_a_malformed_request_line_is_answered_with_a_status_line(server, request_line):
  """BUG: a request line the standard library refuses (an unknown HTTP version, a fourth
  word) is answered with the JSON error body alone, no status line and no headers: the
  refusal goes out as HTTP/0.9 (BaseHTTPRequestHandler's default_request_version, still set
  when parse_request fails), so an HTTP/1.x client sees a malformed response instead of a
  4xx/505 (serve.py's send_error -> _send -> send_response / end_headers skip the status line
  and headers for 'HTTP/0.9')."""
  data = _exchange(server, request_line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
  assert data.startswith(b"HTTP/1."), data[:200]
  assert 400 <= _status(data) < 600
  assert _status(_exchange(server, _post(b"/synthesize", b'{"text": "Ok."}'))) == 200


def test_fuzz_server_requests(server):
  """Hostile headers, bodies and query strings: each answered, the next good one too."""
  head = b"POST /synthesize HTTP/1.1\r\nHost: x\r\n"
  body = b'{"text": "Hi."}'
  cases = [head + h + b"Connection: close\r\n\r\n" + body for h in (
      b"Content-Length: 15\r\nContent-Length: 16\r\n", b"Content-Length: -1\r\n",
      b"Content-Length: abc\r\n", b"Content-Length: \xd9\xa1\xd9\xa5\r\n",
      b"Content-Length: 15\r\n fold\r\n", b"Transfer-Encoding: chunked\r\n",
      b"Content-Length: 15\r\nTransfer-Encoding: gzip, chunked\r\n",
      b"X-Big: " + b"a" * 70000 + b"\r\nContent-Length: 15\r\n",
      b"".join(b"X-%d: y\r\n" % i for i in range(150)) + b"Content-Length: 15\r\n",
      b"X-U: \xff\xfe\xc3\x28\r\nContent-Length: 15\r\n",
      b"Content-Type: application/json; charset=\xff\r\nContent-Length: 15\r\n",
      b"Expect: 100-continue\r\nContent-Length: 15\r\n", b"\x00: \x00\r\nContent-Length: 15\r\n")]
  cases += [head + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + c
            for c in (b"zz\r\n", b"-1\r\n", b"ffffffffffffffffffff\r\n")]
  cases += [line + b"\r\nHost: x\r\nConnection: close\r\n\r\n" for line in (
      b"GET /?text=%ff%fe HTTP/1.1", b"GET /?text=%00 HTTP/1.1", b"GET /?%ff HTTP/1.1",
      b"GET /?text=%ED%A0%80 HTTP/1.1", b"GET /?text=a&text=b&speaker=zz HTTP/1.1",
      b"GET /?text=%F0%9F%98%80 HTTP/1.1", b"GET /voices?x=\xff HTTP/1.1",
      b"GET /\xff\xfe HTTP/1.1", b"GET " + b"/" * 70000 + b" HTTP/1.1",
      b"BREW / HTTP/1.1", b"HEAD /?text=Hi. HTTP/1.1", b"GET /%2e%2e/etc/passwd HTTP/1.1")]
  raws = [b'{"text": "Hi.", "length_scale": NaN}', b'{"text": "Hi.", "volume": Infinity}',
          b'{"text": "Hi.", "seed": 1e999}', b'{"text": "Hi.", "seed": ' + b"9" * 4000 + b"}",
          b'{"text": "Hi.", "seed": -9223372036854775809}', b'{"text": "\\ud800"}',
          b'{"text": "Hi.", "speaker_id": 99999999999999999999999}', b'{"a":' * 20000,
          b'{"text": "Hi.", "speaker": "\xd9\xa1"}', b'{"text": "\xc3\x28"}', b"\xff\xfe{\x00",
          b"", b"null", b'"Hi."', b"text=Hi.&speaker=1", b'{"text": "\\u2028\\u2029Hi."}',
          b'{"text": "Hi.", "noise_w_scale": 0.5, "noise_scale_w": 0.5}']
  cases += [_post(path, r) for r in raws for path in (b"/synthesize", b"/")]
  cases += [_post(b"/", r, ctype=c) for c in (b"application/x-www-form-urlencoded", b"\xff")
            for r in (b"text=Hi.", b"\xff", b"\x00", b"   ")]
  rng = random.Random(0)
  values = [None, True, 0, -1, 1.5, 1e308, 10 ** 30, "x", "", [], {}, "\ud800"]
  for field in ("text", "speaker", "speaker_id", "length_scale", "noise_scale",
                "noise_w_scale", "sentence_silence", "volume", "normalize", "seed", "stream",
                "voice", "bogus"):
    for value in rng.sample(values, 3):
      cases.append(_post(b"/synthesize", json.dumps({"text": "Hi.", field: value}).encode()))
  keep_alive = _post(b"/synthesize", b"{bad").replace(b"Connection: close\r\n", b"")
  cases.append(keep_alive + _post(b"/synthesize", body))   # pipelined: bad, then good
  for k, raw in enumerate(cases):
    _check_answer(server, raw, (k, raw[:80]))


def test_fuzz_server_request_bodies(server):
  """Random byte edits of a good JSON body (its Content-Length kept right)."""
  rng = random.Random(1)
  base = b'{"text": "Hi there.", "speaker": "carol", "seed": 3, "volume": 0.5}'
  for k in range(40):
    data = bytearray(base)
    for _ in range(rng.randint(1, 4)):
      i = rng.randrange(len(data))
      op = rng.random()
      if op < 0.4:
        data[i] = rng.randrange(256)
      elif op < 0.7:
        del data[i:i + rng.randint(1, 5)]
      else:
        data[i:i] = rng.choice([b"\x00", b"\xff", b"9999", b"{", b'"', b"[", b"\\u"])
    _check_answer(server, _post(b"/synthesize", bytes(data)), (k, bytes(data)))


# ------------------------------------------------------------------ infer.py
def test_json_input_output_file_nested_a_thousand_folders_deep_is_one_error_line(tmp_path):
  """BUG: an output_file of 1000 nested folders (2 KB, within PATH_MAX) passes
  `_output_name` and reaches `_lines_to_files`' `os.makedirs`, which recurses once per
  missing folder: RecursionError escapes infer.main (a traceback, not one `error:` line)."""
  deep = "d/" * 1000 + "x.wav"
  outcome, text = _json_input(tmp_path, [{"text": "Hi.", "output_file": deep}])
  assert outcome in ("success", "handled"), text


def test_json_input_output_file_with_a_newline_is_one_error_line(tmp_path):
  """BUG: `_output_name` puts the output_file value into its message as it is, so a name
  holding a newline makes the `error:` message two lines (the second not `error:`)."""
  outcome, text = _json_input(tmp_path, [{"text": "Hi.", "output_file": "a\nb.txt"}])
  assert outcome == "handled", text


def test_out_with_a_newline_is_one_error_line(tmp_path):
  """BUG: `_check_args` puts --out into its message as it is: `--out 'a<LF>b.txt'` (an
  unknown format) or a missing folder whose name holds a newline (or U+2028, U+0085) is a
  two-line error."""
  for out in ("a\nb.txt", "no\ndir/x.wav", "x.wav\u2028", "x\u0085.txt", "y\u2029.ogg\x7f"):
    outcome, text = _infer(["--text", "Hi.", "--voice", MULTI, "--out", tmp_path / out])
    assert outcome == "handled", (out, text)
    # (str.splitlines also ends a line at NEL, LS and PS: a log reader may do the same)
    assert len([l for l in text.splitlines() if l.strip()]) == 1, (out, text)


def test_fuzz_json_input_fields(tmp_path):
  """Every field of a --json-input line given values of wrong types, odd numbers, unknown
  fields and output_file names that try to leave --out-dir."""
  rng = random.Random(2)
  values = [None, True, 0, -1, 1.5, 1e308, float("nan"), 10 ** 30, "x", "", [], {}, "\ud800",
            "1"]
  lines = []
  for field in ("text", "speaker", "speaker_id", "length_scale", "noise_scale",
                "noise_w_scale", "sentence_silence", "volume", "normalize", "seed",
                "output_file", "bogus"):
    lines += [{"text": "Hi.", field: v} for v in rng.sample(values, 3)]
  escapes = ["../x.wav", str(tmp_path / "abs.wav"), "a/../../x.wav", "a\0b.wav",
             "x" * 300 + ".wav", "..", "x.wav/", "x.txt", "\udcff.wav", "sub/x.wav/y.wav"]
  lines += [{"text": "Hi.", "output_file": o} for o in escapes]
  for k, fields in enumerate(lines):
    case = tmp_path / f"c{k}"
    case.mkdir()
    outcome, text = _json_input(case, [fields])
    assert outcome in ("success", "handled"), (fields, text)
  assert not (tmp_path / "x.wav").exists() and not (tmp_path / "abs.wav").exists()
  # Duplicate and clashing output names are refused before any audio.
  for pair in (["a.wav", "a.wav"], ["a.wav", "./a.wav"], ["a.wav", "a.wav/b.wav"],
               [None, "0001.wav"]):
    case = tmp_path / f"dup{pair[1].replace('/', '_')}"
    case.mkdir()
    lines = [{"text": "Hi."} if o is None else {"text": "Hi.", "output_file": o} for o in pair]
    outcome, text = _json_input(case, lines)
    assert outcome == "handled" and not (case / "out").exists(), (pair, text)


def test_fuzz_input_lines(tmp_path):
  """--input files (text and JSON) with CRLF, BOMs, NULs, lone surrogates, control and
  separator characters, bad encodings."""
  texts = [b"Hi.\r\nThere.\r\n", b"\xef\xbb\xbfHi.\n", b"Hi.\x00there.\n", b"\xed\xa0\x80\n",
           b"\xff\xfeH\x00i\x00", b"\n\n\n", b"\r\r\r", b"\x0c\x0b\x1c",
           "Hi.\u2028There.\u0085x".encode(), b"Hi.\n\xf0\x9f\x98\x80\n", b"\xc0\xaf",
           b"\x1b[31mHi\x1b[0m\n", "\u202eHi.\n".encode()]
  jsons = [b"not json", b"[1,2]", b'{"text": "Hi."} {}', b"[" * 100000,
           b'{"text": "Hi.", "volume": NaN}', b'\xef\xbb\xbf{"text": "Hi."}', b'{"text": "Hi."}\r',
           '{"text": "Hi.\u2028there"}'.encode(), b'{"text": "\\ud800"}', b'{"text": "\xff"}',
           b'\x00{"text": "Hi."}', b'{"text": "\\ud83d\\ude00"}\n{"text": "Hi."}']
  for k, data in enumerate(texts + jsons):
    case = tmp_path / f"c{k}"
    case.mkdir()
    (case / "in.txt").write_bytes(data)
    json_input = ["--json-input"] if k >= len(texts) else []
    outcome, text = _infer(["--input", case / "in.txt", "--out-dir", case / "out", "--voice",
                            MULTI, *json_input])
    assert outcome in ("success", "handled"), (data[:60], text)


def test_fuzz_infer_flags(tmp_path):
  """Every numeric flag with negative, NaN, infinite and huge values; odd --speaker and
  --out values (usage errors end in argparse's exit 2)."""
  rng = random.Random(3)
  cases = []
  for flag in ("--noise-scale", "--noise-scale-w", "--length-scale", "--sentence-silence",
               "--volume", "--batch-size", "--seed", "--step"):
    for value in rng.sample(["-1", "nan", "inf", "-inf", "1e308", "9" * 25, "0", "1e-320",
                             "0x10", "", "1_0", "\u0661"], 4):
      cases.append([flag, value])
  for speaker in ("-1", "3", "1e2", "", " 1 ", "CAROL", "\x00", "9" * 20, "1.0", "\u0663",
                  "+1", "\udcff"):
    cases += [["--speaker", speaker], ["--speaker", speaker, "--voice", HIGH]]
  for out in ("x.WAV", "x.txt", "x", ".wav", "nodir/x.wav", "", ".", "/", "x" * 300 + ".wav",
              "\udcff.wav", "x.wav/"):
    cases.append(["--out", str(tmp_path / out) if out not in ("", "/") else out])
  for k, extra in enumerate(cases):
    argv = ["--text", "Hi.", "--voice", MULTI]
    if "--out" not in extra:
      argv += ["--out", tmp_path / f"o{k}.wav"]
    try:
      outcome, text = _infer(argv + extra)
    except SystemExit as e:   # argparse's usage error (its own two-line message)
      assert e.code == 2, extra
      continue
    assert outcome in ("success", "handled"), (extra, text)


# ------------------------------------------------------------------ prepare.py
def _tone(rate=16000, freq=300.0):
  t = np.arange(int(0.6 * rate)) / rate
  return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _prepare(src, out, capsys, dataset="ljspeech"):
  from data_prep import prepare
  rc = prepare.main([str(a) for a in (
      "--dataset", dataset, "--src", src, "--out", out, "--workers", 1, "--val-size", 0,
      "--frontend", "piper", "--voice-config", f"{MULTI}.json")])
  stdout, err = capsys.readouterr()
  return rc, stdout, err


def test_fuzz_metadata_rows_are_kept_or_skipped_and_counted(tmp_path, capsys):
  """One LJSpeech corpus with every kind of hostile row: each row is kept or skipped and
  counted (rows = kept + skipped), never a traceback."""
  from vits_jax.data import records
  src = tmp_path / "ljs"
  wavs = src / "wavs"
  wavs.mkdir(parents=True)
  good = [b"G-000|The cat sat on the mat.|", b"G-001|A quick brown fox.|"]
  for i, name in enumerate(["G-000", "G-001", "N-1", "R-1", "S-1", "E-1", "W-1", "T-1",
                            "\u00e9-1"]):
    sf.write(str(wavs / f"{name}.wav"), _tone(freq=200 + 40 * i), 16000)
  (wavs / "D-1.wav").mkdir()
  os.symlink("L-1.wav", wavs / "L-1.wav")
  os.symlink("/nonexistent", wavs / "L-2.wav")
  os.mkfifo(wavs / "F-1.wav")
  os.symlink("/dev/zero", wavs / "Z-2.wav")
  hostile = [b'"Q-1"|"quoted ""text"""|"x"', b"C-1", b"C-2|a|b|c", b"|", b"C-3||",
             b"|" * 5000, b"N\x00-2|Hi.|Hi.", b"N-1|Hi.\x00there|Hi.\x00there", b"\x00" * 10,
             b"U-1|\xff\xfe bad|x", b"U-2|\xed\xa0\x80|\xed\xa0\x80", b"a/b|Hi.|Hi.",
             b"..|Hi.|Hi.", b"../../etc/passwd|Hi.|Hi.", b"a\\b|Hi.|Hi.", b"/etc/passwd|Hi.|Hi.",
             b"G-000|Again.|Again.", b" G-001 |Again.|Again.", b"G-000.wav|Again.|Again.",
             b"H-1|" + b"word " * 50000 + b"|", b"I" * 100000 + b"|Hi.|Hi.", b"M-1|Gone.|Gone.",
             b"D-1|Dir.|Dir.", b"L-1|Loop.|Loop.", b"L-2|Dangling.|Dangling.", b"F-1|Fifo.|",
             b"Z-2|Zero.|Zero.", b"R-1|Hi.|Hi.\r", b"\xef\xbb\xbfB-1|Hi.|Hi.",
             "S-1|Hi.\u2028there|".encode(), b"\t|Hi.|Hi.", b"\x1b[2J|Hi.|Hi.",
             "E-1|\U0001F600|".encode(), b"W-1|   |   ", b"T-1|" + b"a" * 50000 + b"|",
             b".wav|Hi.|Hi.", "\u00e9-1|Caf\u00e9.|".encode()]
  (src / "metadata.csv").write_bytes(b"\n".join(good + hostile) + b"\n")
  rc, stdout, err = _prepare(src, tmp_path / "out", capsys)
  assert rc == 0 and "Traceback" not in err, err
  counts = records.load_manifest(str(tmp_path / "out"))["counts"]
  assert counts["rows"] == len(good) + len(hostile), counts
  assert counts["rows"] == counts["kept"] + counts["skipped"], counts
  assert counts["kept"] >= len(good), counts
  # Whole files that are no metadata at all: one error line each.
  for k, data in enumerate([b"", b"\n\n", b"\x00" * 100, bytes(range(256)) * 4,
                            "G-000|Hi.|Hi.\n".encode("utf-16"),
                            "G-000|Hi.|Hi.\n".encode("utf-32")]):
    (src / "metadata.csv").write_bytes(data)
    rc, _, err = _prepare(src, tmp_path / f"bad{k}", capsys)
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: "), (data[:20], err)


def test_fuzz_vctk_transcripts_are_kept_or_skipped_and_counted(tmp_path, capsys):
  """VCTK transcripts in odd encodings, and a wav that is a folder or a link loop."""
  from vits_jax.data import records
  src = tmp_path / "vctk"
  transcripts = [b"The cat sat.", "Hi.".encode("utf-16"), "Caf\u00e9.".encode("latin-1"),
                 b"Hi.\x00", b"", b"\xef\xbb\xbfHi.", b"\x93Hi.\x94", b"\xed\xa0\x80",
                 b"word " * 20000, b"Hi.\r\n\r\n", bytes(range(256))]
  for k, raw in enumerate(transcripts):
    (src / "txt" / "p1").mkdir(parents=True, exist_ok=True)
    (src / "wav48" / "p1").mkdir(parents=True, exist_ok=True)
    (src / "txt" / "p1" / f"p1_{k:03d}.txt").write_bytes(raw)
    sf.write(str(src / "wav48" / "p1" / f"p1_{k:03d}.wav"), _tone(freq=200 + 20 * k), 16000)
  extra = {"p1_100": "dir", "p1_101": "loop", "p1_102": None}
  for name, kind in extra.items():
    (src / "txt" / "p1" / f"{name}.txt").write_text("Hello.")
    wav = src / "wav48" / "p1" / f"{name}.wav"
    if kind == "dir":
      wav.mkdir()
    elif kind == "loop":
      os.symlink(wav.name, wav)
  (src / "txt" / "p1" / "p1_103.txt").mkdir()   # a transcript that is a folder
  sf.write(str(src / "wav48" / "p1" / "p1_103.wav"), _tone(), 16000)
  rc, _, err = _prepare(src, tmp_path / "out", capsys, dataset="vctk")
  assert rc == 0 and "Traceback" not in err, err
  counts = records.load_manifest(str(tmp_path / "out"))["counts"]
  assert counts["rows"] == len(transcripts) + len(extra) + 1, counts
  assert counts["rows"] == counts["kept"] + counts["skipped"] and counts["kept"] >= 1, counts


# ------------------------------------------------------------------ training config
def test_fuzz_training_config_values_are_value_errors():
  """Each field of configs/tiny.py:micro set to what a `--config.a.b=value` override of its
  type may bring (NaN, infinities, negatives, zero, huge numbers, empty strings): the
  config check passes or raises a one-line ValueError, nothing else."""
  import ml_collections
  from vits_jax.training import loop
  spec = importlib.util.spec_from_file_location("_tiny_config", ROOT / "configs" / "tiny.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  base = module.get_config("micro")
  base.data.dir = "/nonexistent/prepared"

  def leaves(node, path=()):
    for key, value in node.items():
      if isinstance(value, ml_collections.ConfigDict):
        yield from leaves(value, path + (key,))
      else:
        yield path + (key,), value
  outcomes = {"ok": 0, "refused": 0}
  for path, value in leaves(base):
    if isinstance(value, bool):
      values = [not value]
    elif isinstance(value, int):
      values = [-1, 0, 10 ** 30, 2 ** 63]
    elif isinstance(value, float):
      values = [float("nan"), float("inf"), float("-inf"), -1.0, 0.0, 1e308]
    elif isinstance(value, str):
      values = ["", "abc", "\x00"]
    elif isinstance(value, (tuple, list)):
      values = [(), (float("nan"),) * len(value), (-1,) * len(value), (10 ** 30,) * len(value)]
    else:
      values = [0, -1, float("nan")]
    for new in values:
      config = copy.deepcopy(base)
      node = config
      for key in path[:-1]:
        node = node[key]
      try:
        node[path[-1]] = new
      except (TypeError, ValueError, KeyError):   # the override itself is refused
        continue
      try:
        loop.check_config(config)
        outcomes["ok"] += 1
      except ValueError as e:
        assert "\n" not in str(e).strip(), (path, new, str(e))
        outcomes["refused"] += 1
  assert outcomes["refused"] > 50, outcomes
