"""infer.py / serve.py: what a mutation audit of the two command lines found untested (each
test kills mutants that the rest of the suite let through), in-process on the tiny voices."""

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))
import infer  # noqa: E402
import serve  # noqa: E402
from test_infer_cli import _run  # noqa: E402
from test_cli_units import _Stdout, vc_voice  # noqa: E402,F401  (vc_voice: module-scoped)
from vits_jax import files  # noqa: E402
from vits_jax.voice import load_voice  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
TINY = str(FIXTURES / "piper_tiny_multi.onnx")
TINY_SINGLE = str(FIXTURES / "piper_tiny_high.onnx")


@pytest.fixture(scope="module")
def single():
  return load_voice(TINY_SINGLE)


# ---------------------------------------------------------------------------------- infer.py


def test_cluster_detection_reads_each_variable(monkeypatch):
  """A multi-host job is one with a coordinator, more than one TPU worker or more than one
  SLURM task; one worker or one task (or an empty variable) is a plain run."""
  for name in ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "SLURM_NTASKS"):
    monkeypatch.delenv(name, raising=False)
  assert not infer._in_cluster()   # pylint: disable=protected-access
  for name, value, want in (("TPU_WORKER_HOSTNAMES", "host-0", False),
                            ("TPU_WORKER_HOSTNAMES", "host-0,", False),
                            ("TPU_WORKER_HOSTNAMES", "host-0,host-1", True),
                            ("SLURM_NTASKS", "1", False), ("SLURM_NTASKS", "", False),
                            ("SLURM_NTASKS", "4", True), ("SLURM_NTASKS", "n/a", False),
                            ("SLURM_NTASKS", "\u00b2", False),
                            ("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234", True)):
    monkeypatch.setenv(name, value)
    assert infer._in_cluster() == want, (name, value)   # pylint: disable=protected-access
    monkeypatch.delenv(name)


def test_only_file_output_joins_a_cluster(tmp_path, capsys, monkeypatch, single):
  """In a cluster, --input --out-dir joins the job (to split the lines); --output-raw is one
  stream every host writes whole, and joins nothing."""
  from vits_jax.training import parallel
  joined = []
  monkeypatch.setattr(infer, "_in_cluster", lambda: True)
  monkeypatch.setattr(parallel, "initialize_distributed", lambda *a, **k: joined.append(1))
  lines = tmp_path / "l.txt"
  lines.write_text("Hi.\n")
  out, real = _Stdout(), sys.stdout
  monkeypatch.setattr(sys, "stdout", out)
  code, err = _run(["--input", str(lines), "--output-raw", "--voice", TINY_SINGLE], capsys)
  assert code == 0 and joined == [], err
  np.testing.assert_array_equal(np.frombuffer(out.buffer.getvalue(), "<i2"),
                                files.pcm16(single.synthesize("Hi.")))
  monkeypatch.setattr(sys, "stdout", real)
  code, err = _run(["--input", str(lines), "--out-dir", str(tmp_path / "o"), "--voice",
                    TINY_SINGLE], capsys)
  assert code == 0 and joined == [1], err


def test_a_host_whose_share_is_all_unsayable_is_no_error(tmp_path, capsys, monkeypatch):
  """On host 1 of 2, a share of lines with nothing to say is a warning, exit 0: the other
  host says its own (only a single run with nothing said fails); other files already in
  --out-dir are warned of by host 0 alone (not once per host)."""
  from vits_jax import inference
  monkeypatch.setattr(inference, "process_share", lambda: (1, 2))
  out = tmp_path / "o"
  out.mkdir()
  (out / "notes.txt").write_text("mine")
  code, err = _run(["--input", "-", "--out-dir", str(out), "--voice", TINY_SINGLE],
                   capsys, "First line.\n\U0001F600\n", monkeypatch)
  assert code == 0, err
  assert os.listdir(out) == ["notes.txt"] and "wrote 0 files" in err, err
  assert "skipped 1 line(s) with nothing to say" in err and "process 1 of 2" in err, err
  assert "already holds" not in err, err


def test_convert_normalizes_and_needs_both_speakers(vc_voice, tmp_path, capsys,
                                                   monkeypatch):
  """--convert --normalize scales the conversion to full scale before --volume, and the
  'wrote' line gives its length at the voice's rate (the recording's is another); without
  --source-speaker or --speaker it is refused, naming both; the knobs of timing that it
  cannot use are refused, --noise-scale-w among them."""
  from vits_jax import voice as voice_module
  from vits_jax.voice import loudness
  voice, wav, rate = vc_voice
  monkeypatch.setattr(voice_module, "load_voice", lambda *a, **k: voice)
  in_rate = 2 * rate   # (the voice resamples it to its own)
  sf.write(tmp_path / "in.wav", np.tile(wav, 20), in_rate, subtype="FLOAT")
  out = tmp_path / "out.wav"
  base = ["--convert", str(tmp_path / "in.wav"), "--voice", "vc", "--out", str(out)]
  code, err = _run(base + ["--source-speaker", "1", "--speaker", "2", "--normalize",
                           "--volume", "0.5"], capsys)
  assert code == 0, err
  audio, got_rate = files.read_audio(str(tmp_path / "in.wav"))
  assert got_rate == in_rate != voice.sample_rate
  converted = voice.convert(audio.mean(axis=1), in_rate, 1, 2)
  written, written_rate = sf.read(out, dtype="int16")
  assert written_rate == voice.sample_rate
  np.testing.assert_array_equal(written, files.pcm16(loudness(converted, 0.5, True)))
  assert np.abs(written).max() == 16384   # its peak at half of full scale
  assert err.strip().splitlines()[-1] == (
      f"wrote {out} ({len(written) / voice.sample_rate:.2f} s)"), err
  os.remove(out)
  for flags in (["--speaker", "2"], ["--source-speaker", "1"]):
    code, err = _run(base + flags, capsys)
    assert code == 2 and err.strip() == ("error: --convert needs --source-speaker and "
                                         "--speaker (the target)"), err
  code, err = _run(base + ["--source-speaker", "1", "--speaker", "2", "--noise-scale-w",
                           "0.5"], capsys)
  assert code == 2 and "--noise-scale-w does not apply" in err, err
  assert not out.exists()


def test_a_reader_that_closes_the_pipe_ends_the_stream_quietly(tmp_path, capsys,
                                                              monkeypatch):
  """`infer.py --output-raw | head -c N`: the reader closing the pipe ends the run, exit 0,
  no error line (it is not a write failure), and stdout is pointed at /dev/null."""
  class _Closed:
    def write(self, data):
      raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
      pass

  fd = os.open(tmp_path / "stdout", os.O_WRONLY | os.O_CREAT)
  stdout = _Stdout(_Closed())
  stdout.fileno = lambda: fd
  monkeypatch.setattr(sys, "stdout", stdout)
  try:
    code, err = _run(["--text", "Hi.", "--output-raw", "--voice", TINY_SINGLE], capsys)
    assert code == 0 and "error" not in err, err
    assert os.path.samestat(os.fstat(fd), os.stat(os.devnull))
  finally:
    os.close(fd)


def test_blank_text_or_no_recording_is_refused_before_the_voice_loads(tmp_path, capsys,
                                                                     monkeypatch):
  """A --text of blanks, or a --convert recording that does not exist, is refused before any
  voice is loaded (a voice that does not exist is not even looked at)."""
  from vits_jax import voice as voice_module
  loaded = []
  monkeypatch.setattr(voice_module, "load_voice", lambda *a, **k: loaded.append(a))
  code, err = _run(["--text", " \t\n", "--voice", "/no/such/voice.onnx", "--out",
                    str(tmp_path / "x.wav")], capsys)
  assert code == 2 and err.strip() == "error: text is empty" and loaded == [], err
  missing = tmp_path / "none.wav"
  code, err = _run(["--convert", str(missing), "--voice", "/no/such/voice.onnx",
                    "--source-speaker", "0", "--speaker", "1", "--out", str(tmp_path / "x.wav")],
                   capsys)
  assert code == 2 and err.strip() == f"error: --convert recording not found: {missing}", err
  assert loaded == []


def test_stdin_of_exactly_the_limit_is_read(tmp_path, capsys, monkeypatch, single):
  """MAX_TEXT_BYTES is the most read, not one less: stdin of exactly that size is spoken."""
  text = "Hello there. "
  monkeypatch.setattr(infer, "MAX_TEXT_BYTES", len(text.encode()))
  code, err = _run(["--text", "-", "--voice", TINY_SINGLE, "--out", str(tmp_path / "a.wav")],
                   capsys, text, monkeypatch)
  assert code == 0, err
  np.testing.assert_array_equal(sf.read(tmp_path / "a.wav", dtype="int16")[0],
                                files.pcm16(single.synthesize(text)))


def test_a_stdin_line_of_exactly_the_limit_is_spoken(capsys, monkeypatch, single):
  """`--input - --output-raw` refuses a line longer than MAX_TEXT_BYTES, not one of exactly
  that many bytes (its newline counted)."""
  line = "Hi there.\n"
  monkeypatch.setattr(infer, "MAX_TEXT_BYTES", len(line))
  out = _Stdout()
  monkeypatch.setattr(sys, "stdout", out)
  code, err = _run(["--input", "-", "--output-raw", "--voice", TINY_SINGLE], capsys, line,
                   monkeypatch)
  assert code == 0, err
  np.testing.assert_array_equal(np.frombuffer(out.buffer.getvalue(), "<i2"),
                                files.pcm16(single.synthesize("Hi there.")))


def test_raw_stdin_lines_that_are_not_utf8_are_refused(capsys, monkeypatch):
  """A stdin line that is not UTF-8 is a one-line error naming its line (not spoken with
  replacement characters)."""
  monkeypatch.setattr(sys, "stdout", _Stdout())
  monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"Hi.\ncaf\xe9\n")))
  code, err = _run(["--input", "-", "--output-raw", "--voice", TINY_SINGLE], capsys)
  assert code == 2 and "Traceback" not in err, err
  assert err.strip().splitlines()[-1] == ("error: stdin is not UTF-8 text (invalid "
                                          "continuation byte in line 2)"), err


def test_a_text_that_cannot_all_be_said_is_an_error_on_stdout_too(tmp_path, capsys,
                                                                  monkeypatch, single):
  """--text --output-raw is one text: a sentence too long, found after its first sentences
  went out, fails the run (exit 2), as --out does (it is not one skipped line of many);
  a text with nothing to say is the same error as with --out."""
  from vits_jax import inference
  short = " ".join(["Hi.", "Ho."] * 5)
  long = "Hi there, all of you, my good old friends."
  frames = [int(sum(d.sum() for d in single.synthesize(t, with_durations=True)[1]))
            for t in ("Hi.", "Ho.", long)]
  monkeypatch.setattr(inference, "MAX_SENTENCE_FRAMES", max(frames[:2]))
  out = _Stdout()
  monkeypatch.setattr(sys, "stdout", out)
  code, err = _run(["--text", short + " " + long, "--output-raw", "--voice", TINY_SINGLE],
                   capsys)
  assert code == 2 and err.startswith("error: ") and "frames" in err, err
  assert "warning" not in err and len(err.strip().splitlines()) == 1, err
  monkeypatch.undo()
  monkeypatch.setattr(sys, "stdout", _Stdout())
  code, raw_err = _run(["--text", "\U0001F600", "--output-raw", "--voice", TINY_SINGLE],
                       capsys)
  monkeypatch.undo()
  code2, file_err = _run(["--text", "\U0001F600", "--voice", TINY_SINGLE, "--out",
                          str(tmp_path / "x.wav")], capsys)
  assert code == code2 == 2 and raw_err.splitlines()[-1] == file_err.splitlines()[-1], (
      raw_err, file_err)


def test_the_wrote_line_gives_seconds_at_the_voices_rate(tmp_path, capsys, single):
  out = tmp_path / "a.wav"
  code, err = _run(["--text", "Hello there.", "--voice", TINY_SINGLE, "--out", str(out)],
                   capsys)
  assert code == 0, err
  n = sf.info(out).frames
  assert single.sample_rate != 22050 and n == single.synthesize("Hello there.").size
  assert err.strip() == f"wrote {out} ({n / single.sample_rate:.2f} s)", err


def test_skipped_lines_are_named_up_to_five(tmp_path, capsys, monkeypatch):
  """The skip warning names the files not written (up to five, then '...')."""
  lines = ["\U0001F600"] * 6 + ["Hi."]
  code, err = _run(["--input", "-", "--out-dir", str(tmp_path / "o"), "--voice", TINY_SINGLE],
                   capsys, "\n".join(lines) + "\n", monkeypatch)
  assert code == 0 and os.listdir(tmp_path / "o") == ["0007.wav"], err
  assert ("skipped 6 line(s) with nothing to say for this voice, so no 0001.wav, 0002.wav, "
          "0003.wav, 0004.wav, 0005.wav ... (the first: ") in err, err
  assert "wrote 1 file to" in err, err


def test_an_output_under_a_file_stops_the_run_before_any_audio(tmp_path, capsys):
  """A --json-input output_file under a name that is a file in --out-dir (it cannot be a
  folder) stops the run before any file is written, naming both."""
  out = tmp_path / "o"
  out.mkdir()
  (out / "f").write_text("mine")
  src = tmp_path / "l.jsonl"
  src.write_text(json.dumps({"text": "Hi.", "output_file": "x.wav"}) + "\n"
                 + json.dumps({"text": "Ho.", "output_file": "f/y.wav"}) + "\n")
  code, err = _run(["--input", str(src), "--json-input", "--out-dir", str(out), "--voice",
                    TINY_SINGLE], capsys)
  assert code == 2 and err.strip().splitlines()[-1] == (
      f"error: cannot write {out / 'f' / 'y.wav'}: {out / 'f'} is a file, not a folder"), err
  assert sorted(p.name for p in out.iterdir()) == ["f"]


def test_a_write_failure_says_the_disk_is_full(tmp_path, monkeypatch):
  """libsndfile's 'System error' on a folder with under 1 MiB free is called a full disk."""
  import collections
  import shutil
  usage = collections.namedtuple("usage", "total used free")
  monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(1 << 30, (1 << 30) - 4096, 4096))
  assert infer._write_failure(str(tmp_path)) == "the disk is full"   # pylint: disable=protected-access
  monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(1 << 30, 0, 1 << 29))
  assert infer._write_failure(str(tmp_path)) != "the disk is full"   # pylint: disable=protected-access


# ---------------------------------------------------------------------------------- serve.py


def test_serve_flags_reach_the_server_and_it_warms_up_first(capsys, monkeypatch):
  """--batch-wait-ms is milliseconds (the server waits that long for batch mates, not that
  many seconds), --max-batch its batch; one synthesis compiles the programs before the
  server listens; --max-batch 0 is refused."""
  made, order = [], []
  real = serve.TextToSpeech.synthesize

  def synthesize(self, fields, gone=None):
    order.append(("synthesize", fields))
    return real(self, fields, gone)

  def listen(tts, host, port):
    made.append(tts)
    order.append(("serve", host, port))
    raise OSError(98, "Address already in use")

  monkeypatch.setattr(serve.TextToSpeech, "synthesize", synthesize)
  monkeypatch.setattr(serve, "serve", listen)
  code = serve.main(["--voice", TINY_SINGLE, "--batch-wait-ms", "25", "--max-batch", "3",
                     "--port", "5999"])
  err = capsys.readouterr().err
  assert code == 2 and err.strip() == ("error: cannot listen on 127.0.0.1:5999: Address "
                                       "already in use"), err
  (tts,) = made
  assert tts.batch_wait == pytest.approx(0.025) and tts.max_batch == 3
  assert order == [("synthesize", {"text": "Ready."}), ("serve", "127.0.0.1", 5999)], order
  code = serve.main(["--voice", TINY_SINGLE, "--max-batch", "0"])
  err = capsys.readouterr().err
  assert code == 2 and "--max-batch must be >= 1" in err and len(made) == 1, err


def test_a_refusal_names_the_voice_without_its_path():
  """The voice's own messages name it by its path: the server's 400 shows the path's last
  part instead (a server open to the network does not say where its files are)."""
  import copy
  import threading
  import urllib.error
  import urllib.request
  voice = copy.copy(load_voice(TINY))
  voice.name = "/srv/secret/voices/en_US-x.onnx"
  tts = serve.TextToSpeech(voice, dict(length_scale=1.0, noise_scale=0.667, noise_scale_w=0.8,
                                       sentence_silence=0.0, volume=1.0, normalize=False,
                                       seed=0, speaker=0))
  httpd = serve.serve(tts, "127.0.0.1", 0)
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  try:
    request = urllib.request.Request(
        f"http://127.0.0.1:{httpd.server_address[1]}/synthesize",
        data=b'{"text": "Hi.", "speaker": "nobody"}',
        headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
      urllib.request.urlopen(request, timeout=60)
    assert e.value.code == 400
    error = json.loads(e.value.read())["error"]
  finally:
    httpd.shutdown()
    httpd.server_close()
  assert "/srv" not in error and "unknown speaker 'nobody'" in error, error
  assert "en_US-x.onnx" in error, error


def test_convert_reads_a_recording_piped_into_stdin(vc_voice, tmp_path, capsys, monkeypatch):
  """--convert - reads the recording from a pipe on stdin (read once, into memory): the
  same audio as the file itself gives."""
  import threading
  from vits_jax import voice as voice_module
  voice, wav, rate = vc_voice
  monkeypatch.setattr(voice_module, "load_voice", lambda *a, **k: voice)
  sf.write(tmp_path / "in.wav", wav, rate, subtype="PCM_16")
  data = (tmp_path / "in.wav").read_bytes()
  flags = ["--voice", "vc", "--source-speaker", "1", "--speaker", "2"]
  code, err = _run(["--convert", str(tmp_path / "in.wav"), "--out", str(tmp_path / "f.wav")]
                   + flags, capsys)
  assert code == 0, err
  read_end, write_end = os.pipe()
  saved = os.dup(0)

  def feed():
    with os.fdopen(write_end, "wb") as w:
      w.write(data)

  feeder = threading.Thread(target=feed)
  feeder.start()
  try:
    os.dup2(read_end, 0)
    os.close(read_end)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    code, err = _run(["--convert", "-", "--out", str(tmp_path / "p.wav")] + flags, capsys)
  finally:
    os.dup2(saved, 0)
    os.close(saved)
    feeder.join()
  assert code == 0, err
  piped, _ = sf.read(tmp_path / "p.wav", dtype="int16")
  whole, _ = sf.read(tmp_path / "f.wav", dtype="int16")
  assert len(piped) > 0
  np.testing.assert_array_equal(piped, whole)
