"""data_prep/prepare.py on tiny corpora built here: synthetic tones with short transcripts,
plus the broken rows real corpora have (corrupt, empty and missing audio, empty transcripts,
transcripts of symbols the frontend drops). Uses the real 'vits' and 'piper' frontends.
"""

import json
import os
import subprocess
import sys

import librosa
import numpy as np
import pytest
import soundfile as sf

import prep_utils  # noqa: E402  (tests/ is on sys.path)
from data_prep import prepare, process, tfds_reader
from vits_jax.data import loader, records
from vits_jax.text import get_frontend

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = ["The cat sat on the mat.", "A quick brown fox.", "Hello there, old friend.",
         "It was a bright cold day.", "Numbers are spelled out.", "She sells sea shells."]


def _tone(seconds, rate, freq=440.0, channels=1):
  t = np.arange(int(seconds * rate)) / rate
  wav = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
  return np.stack([wav, 0.5 * wav], 1) if channels == 2 else wav


def _ljspeech(root, rate=16000):
  """Six good clips (one stereo) and six bad rows, LJSpeech-1.1 layout."""
  os.makedirs(os.path.join(root, "wavs"))
  rows = []
  for i, text in enumerate(TEXTS, 1):
    cid = f"LJ-{i:04d}"
    sf.write(os.path.join(root, "wavs", cid + ".wav"),
             _tone(0.6 + 0.1 * i, rate, 200.0 + 100 * i, channels=2 if i == 6 else 1), rate,
             subtype="PCM_16")
    rows.append(f"{cid}|{text.upper()}|{text}")
  with open(os.path.join(root, "wavs", "LJ-0007.wav"), "wb") as f:
    f.write(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk" + bytes(range(40)))  # corrupt
  open(os.path.join(root, "wavs", "LJ-0008.wav"), "wb").close()  # empty
  for cid in ("LJ-0010", "LJ-0011", "LJ-0012"):
    seconds = 0.1 if cid == "LJ-0012" else 1.0
    sf.write(os.path.join(root, "wavs", cid + ".wav"), _tone(seconds, rate), rate)
  cut = os.path.join(root, "wavs", "LJ-0013.wav")   # a copy cut off halfway
  sf.write(cut, _tone(1.0, rate), rate, subtype="PCM_16")
  os.truncate(cut, os.path.getsize(cut) // 2)
  rows += ["LJ-0007|Corrupt file.|Corrupt file.",
           "LJ-0008|Empty file.|Empty file.",
           "LJ-0009|Missing file.|Missing file.",       # no wav at all
           "LJ-0010||",                                 # empty transcript
           "LJ-0011|\u266a \U0001F600 \u266a|\u266a \U0001F600 \u266a",  # only dropped symbols
           "LJ-0012|Too short.|Too short.",
           "LJ-0013|Cut short.|Cut short."]
  with open(os.path.join(root, "metadata.csv"), "w", encoding="utf-8") as f:
    f.write("\n".join(rows) + "\n")


BAD = {"LJ-0007": "unreadable audio", "LJ-0008": "empty audio file",
       "LJ-0009": "missing audio", "LJ-0010": "empty transcript",
       "LJ-0011": "no speakable text", "LJ-0012": "too short",
       "LJ-0013": "audio cut short"}


@pytest.fixture(scope="module")
def ljs_src(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("LJSpeech-1.1"))
  _ljspeech(root)
  return root


_run = prep_utils.run_prepare
_all_records = prep_utils.all_records
peak_hz = prep_utils.peak_hz


def test_ljspeech_bad_rows_are_skipped_counted_and_listed(ljs_src, tmp_path, capsys):
  out = tmp_path / "ljs"
  rc, stdout, _ = _run(capsys, "--dataset", "ljspeech", "--src", ljs_src, "--out", out,
                       "--workers", 1, "--val-size", 2)
  assert rc == 0
  assert len(stdout.strip().splitlines()) == 1 and stdout.startswith("prepared 6 clips")
  manifest = records.load_manifest(str(out), checksums=True)
  assert {s["id"]: s["reason"] for s in manifest["skipped"]} == BAD
  assert manifest["counts"]["skipped_by_reason"] == {r: 1 for r in BAD.values()}
  counts = {k: manifest["counts"][k] for k in ("rows", "kept", "skipped", "train", "validation")}
  assert counts == {"rows": 13, "kept": 6, "skipped": 7, "train": 4, "validation": 2}
  assert manifest["speakers"] == {"ljspeech": 0} and manifest["sample_rate"] == 22050
  assert manifest["frontend"]["kind"] == "vits" and manifest["frontend"]["n_vocab"] == 178

  frontend = get_frontend("vits")
  recs = _all_records(str(out))
  assert sorted(recs) == [f"LJ-{i:04d}" for i in range(1, 7)]
  for i, text in enumerate(TEXTS, 1):
    _, rec = recs[f"LJ-{i:04d}"]
    assert rec["text"] == text  # the normalized column
    np.testing.assert_array_equal(rec["tokens"], frontend.text_to_ids(text))
    src, rate = sf.read(os.path.join(ljs_src, "wavs", f"LJ-{i:04d}.wav"), dtype="float32",
                        always_2d=True)
    mono = src.mean(1)
    resampled = librosa.resample(mono, orig_sr=rate, target_sr=22050, res_type="soxr_hq")
    want = np.clip(np.round(resampled * 32768.0), -32768, 32767).astype(np.int16)
    np.testing.assert_array_equal(rec["audio"], want)
    # Independent of the resampler: the tone's frequency survives at the new rate.
    assert abs(peak_hz(rec["audio"]) - (200.0 + 100 * i)) < 3.0


def test_rerun_verifies_and_a_damaged_shard_forces_a_rebuild(ljs_src, tmp_path, capsys):
  out = str(tmp_path / "ljs")
  argv = ["--dataset", "ljspeech", "--src", ljs_src, "--out", out, "--workers", 1,
          "--val-size", 2]
  assert _run(capsys, *argv)[0] == 0
  first = records.load_manifest(out)
  rc, stdout, _ = _run(capsys, *argv)
  assert rc == 0 and stdout.startswith("already prepared")
  shard = os.path.join(out, first["splits"]["train"]["shards"][0]["file"])
  with open(shard, "r+b") as f:  # same size, one byte flipped: only sha256 notices
    f.seek(200)
    b = f.read(1)
    f.seek(200)
    f.write(bytes([b[0] ^ 1]))
  rc, stdout, _ = _run(capsys, *argv)
  assert rc == 0 and stdout.startswith("prepared")
  again = records.load_manifest(out, checksums=True)
  # Deterministic contents (each run's files carry their own run tag in the name).
  strip = lambda m: [{k: v for k, v in e.items() if k != "file"} for e in records.manifest_files(m)]
  assert strip(again) == strip(first)
  assert not os.path.exists(shard)   # the damaged run's files are gone
  # Different settings are a different dataset: rebuilt, not reused; here many small
  # shards, whose records read back the same.
  rc, stdout, _ = _run(capsys, *argv, "--shard-mb", 0.02)
  assert rc == 0 and stdout.startswith("prepared")
  many = records.load_manifest(out)
  assert len(many["splits"]["train"]["shards"]) == 4  # one clip each
  assert _all_records(out).keys() == {f"LJ-{i:04d}" for i in range(1, 7)}
  rc, stdout, _ = _run(capsys, *argv[:-1], 3)
  assert rc == 0 and stdout.startswith("prepared") and "validation 3" in stdout
  # The small shards of the previous run are gone; only the manifest's files remain.
  assert sorted(n for n in os.listdir(out) if n != records.MANIFEST) == sorted(
      e["file"] for e in records.manifest_files(records.load_manifest(out)))


def _files(m):
  """Manifest entries without file names (each run tags its files)."""
  return [{k: v for k, v in e.items() if k != "file"} for e in records.manifest_files(m)]


def test_interrupted_run_keeps_the_previous_dataset(ljs_src, tmp_path, capsys, monkeypatch):
  out = str(tmp_path / "ljs")
  argv = ["--dataset", "ljspeech", "--src", ljs_src, "--out", out, "--workers", 1,
          "--val-size", 2]
  assert _run(capsys, *argv)[0] == 0
  first = records.load_manifest(out, checksums=True)
  calls = []

  def crash(self, *args):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt
    return original(self, *args)

  original = prepare.writer.SplitWriter.add
  monkeypatch.setattr(prepare.writer.SplitWriter, "add", crash)
  rc, _, err = _run(capsys, *argv, "--force")
  assert rc == 130 and err == f"error: interrupted; the previous prepared data in {out} is intact\n"
  # The old manifest and every shard it names are untouched until a new run completes.
  assert records.load_manifest(out, checksums=True) == first
  assert not [n for n in os.listdir(out) if ".tmp-" in n]
  assert loader.make_train_loader(out, 2, 0, process_index=0, process_count=1)


def test_bad_src_or_metadata_never_touches_a_prepared_dir(ljs_src, tmp_path, capsys):
  out = str(tmp_path / "ljs")
  argv = ["--dataset", "ljspeech", "--out", out, "--workers", 1, "--val-size", 2]
  assert _run(capsys, "--src", ljs_src, *argv)[0] == 0
  first = records.load_manifest(out, checksums=True)
  listing = sorted(os.listdir(out))
  rc, _, err = _run(capsys, "--src", tmp_path / "typo", *argv, "--force")
  assert rc == 2 and err.strip().startswith("error: --src") and "Traceback" not in err
  assert sorted(os.listdir(out)) == listing and records.load_manifest(out) == first
  empty = tmp_path / "empty"
  (empty / "wavs").mkdir(parents=True)
  (empty / "metadata.csv").write_text("")
  rc, _, err = _run(capsys, "--src", empty, *argv, "--force")
  assert rc == 2 and "no clips" in err and sorted(os.listdir(out)) == listing


def test_metadata_with_bad_bytes_and_unsafe_ids_is_skipped_and_counted(ljs_src, tmp_path,
                                                                       capsys):
  import shutil
  src = tmp_path / "corpus"
  shutil.copytree(ljs_src, src)
  outside = tmp_path / "secret.wav"
  shutil.copy(next((src / "wavs").iterdir()), outside)
  meta = (src / "metadata.csv").read_bytes()
  meta += b"LJ-bad|caf\xe9 au lait|caf\xe9 au lait\n../../secret|Read me.|Read me.\n"
  (src / "metadata.csv").write_bytes(meta)
  out = str(tmp_path / "o")
  rc, stdout, _ = _run(capsys, "--dataset", "ljspeech", "--src", src, "--out", out,
                       "--workers", 1, "--val-size", 0)
  assert rc == 0, stdout
  m = records.load_manifest(out)
  reasons = m["counts"]["skipped_by_reason"]
  assert reasons.get("bad encoding") == 1 and reasons.get("unsafe clip id") == 1
  assert "../../secret" not in _all_records(out)


def test_a_piper_dataset_prepares_as_it_is(tmp_path, capsys):
  """Piper's own LJSpeech-style datasets: audio in wav/ and ids that name their file
  ('JOE-0001.wav|text'): every clip was 'missing audio' before."""
  src = tmp_path / "piper_ds"
  (src / "wav").mkdir(parents=True)
  rows = []
  for i, text in enumerate(TEXTS[:4], 1):
    sf.write(src / "wav" / f"JOE-{i:04d}.wav", _tone(0.7, 16000, 200.0 + 50 * i), 16000)
    rows.append(f"JOE-{i:04d}{'.wav' if i % 2 else ''}|{text}")
  (src / "metadata.csv").write_text("\n".join(rows + ["JOE-0009.wav|Not there."]) + "\n")
  out = tmp_path / "o"
  rc, stdout, _ = _run(capsys, "--dataset", "ljspeech", "--src", src, "--out", out,
                       "--workers", 1, "--val-size", 1)
  assert rc == 0, stdout
  recs = _all_records(str(out))
  assert sorted(recs) == [f"JOE-{i:04d}" for i in range(1, 5)]
  for cid, (_, rec) in recs.items():
    assert abs(peak_hz(rec["audio"]) - (200.0 + 50 * int(cid[-1]))) < 3.0
  manifest = records.load_manifest(str(out))
  assert {s["id"]: s["reason"] for s in manifest["skipped"]} == {"JOE-0009": "missing audio"}
  # None found: the error names the first file it looked for.
  (src / "wav").rename(src / "elsewhere")
  rc, _, err = _run(capsys, "--dataset", "ljspeech", "--src", src, "--out", tmp_path / "p",
                    "--workers", 1, "--val-size", 1)
  assert rc == 2 and f"the first: {src / 'wavs' / 'JOE-0001.wav'} does not exist" in err, err


def test_vctk_layout_speakers_mics_and_missing_text(tmp_path, capsys):
  src = tmp_path / "VCTK-Corpus-0.92"
  for spk, n in (("p226", 3), ("p225", 3), ("p315", 2)):  # p315: audio but no text
    os.makedirs(src / "wav48_silence_trimmed" / spk)
    if spk != "p315":
      os.makedirs(src / "txt" / spk)
    for i in range(1, n + 1):
      cid = f"{spk}_{i:03d}"
      for mic in ("mic1", "mic2"):
        sf.write(src / "wav48_silence_trimmed" / spk / f"{cid}_{mic}.flac",
                 _tone(0.7, 48000, 300.0 if mic == "mic1" else 1200.0), 48000)
      if spk != "p315":
        (src / "txt" / spk / f"{cid}.txt").write_text(TEXTS[i] + "\n")
  (src / "txt" / "p226" / "p226_009.txt").write_text("No audio for this one.\n")
  out = tmp_path / "vctk"
  rc, stdout, _ = _run(capsys, "--dataset", "vctk", "--src", src, "--out", out,
                       "--workers", 1, "--val-size", 1)
  assert rc == 0, stdout
  manifest = records.load_manifest(str(out))
  assert manifest["speakers"] == {"p225": 0, "p226": 1} and manifest["n_speakers"] == 2
  assert {s["id"]: s["reason"] for s in manifest["skipped"]} == {
      "p226_009": "missing audio", "p315_001": "no transcript", "p315_002": "no transcript"}
  recs = _all_records(str(out))
  assert len(recs) == 6 and sum(s == "validation" for s, _ in recs.values()) == 1
  for cid, (_, rec) in recs.items():
    assert rec["sid"] == manifest["speakers"][cid[:4]] and rec["speaker"] == cid[:4]
    assert len(rec["audio"]) == round(0.7 * 22050)
    assert abs(peak_hz(rec["audio"]) - 300.0) < 3.0  # mic1 only

  # A given speaker map (e.g. the one a checkpoint was trained with) replaces sorted order;
  # speakers it does not name are skipped.
  (tmp_path / "map.json").write_text(json.dumps({"p226": 7}))
  rc, _, _ = _run(capsys, "--dataset", "vctk", "--src", src, "--out", out, "--workers", 1,
                  "--val-size", 1, "--speaker-map", tmp_path / "map.json")
  assert rc == 0
  manifest = records.load_manifest(str(out))
  assert manifest["speakers"] == {"p226": 7} and manifest["n_speakers"] == 8
  assert [s["reason"] for s in manifest["skipped"]].count("unknown speaker") == 3
  assert {r["sid"] for _, r in _all_records(str(out)).values()} == {7}


def test_workers_give_identical_shards(ljs_src, tmp_path, capsys):
  outs = []
  for workers in (1, 2):
    out = str(tmp_path / f"w{workers}")
    assert _run(capsys, "--dataset", "ljspeech", "--src", ljs_src, "--out", out,
                "--workers", workers, "--val-size", 2)[0] == 0
    outs.append(records.load_manifest(out))
  assert _files(outs[0]) == _files(outs[1])
  assert outs[0]["skipped"] == outs[1]["skipped"]


def test_piper_frontend_and_length_filters(ljs_src, tmp_path, capsys):
  out = str(tmp_path / "piper")
  rc, stdout, _ = _run(capsys, "--dataset", "ljspeech", "--src", ljs_src, "--out", out,
                       "--workers", 1, "--val-size", 0, "--frontend", "piper",
                       "--max-seconds", 1.0, "--max-tokens", 52)
  assert rc == 0, stdout
  manifest = records.load_manifest(out)
  voice = manifest["frontend"]["voice_config"]
  with open(voice, encoding="utf-8") as f:
    frontend = get_frontend("piper", config=json.load(f))
  assert manifest["frontend"]["n_vocab"] == frontend.n_vocab
  n_ids = [len(frontend.text_to_ids(t)) for t in TEXTS]
  reasons = {s["id"]: s["reason"] for s in manifest["skipped"]}
  for i, n in enumerate(n_ids, 1):  # clip i lasts 0.6 + 0.1 i seconds
    want = ("too many tokens" if n > 52 else "too long" if i > 4 else None)
    assert reasons.get(f"LJ-{i:04d}") == want, (i, n)
  recs = _all_records(out)
  assert len(recs) == sum(n <= 52 and i <= 4 for i, n in enumerate(n_ids, 1)) > 0
  for _, rec in recs.values():
    np.testing.assert_array_equal(rec["tokens"], frontend.text_to_ids(rec["text"]))


def test_length_filters_keep_clips_exactly_at_their_limits(ljs_src, tmp_path, capsys):
  """--min-seconds, --max-seconds and --max-tokens keep a clip exactly at the limit (each
  was off by one unnoticed: no clip sat at a limit)."""
  rc, stdout, _ = _run(capsys, "--dataset", "ljspeech", "--src", ljs_src, "--out",
                       tmp_path / "all", "--workers", 1, "--val-size", 0)
  assert rc == 0, stdout
  tokens = {cid: len(rec["tokens"])
            for cid, (_, rec) in _all_records(str(tmp_path / "all")).items()}
  seconds = {cid: sf.info(os.path.join(ljs_src, "wavs", cid + ".wav")).frames / 16000
             for cid in tokens}
  low, high = "LJ-0002", "LJ-0003"   # 0.8 and 0.9 s: at the two limits
  most = max(tokens[low], tokens[high])   # (one of them at the token limit)
  limits = ["--min-seconds", repr(seconds[low]), "--max-seconds", repr(seconds[high]),
            "--max-tokens", most]
  rc, stdout, _ = _run(capsys, "--dataset", "ljspeech", "--src", ljs_src, "--out",
                       tmp_path / "at", "--workers", 1, "--val-size", 0, *limits)
  assert rc == 0, stdout
  want = sorted(c for c in tokens
                if seconds[low] <= seconds[c] <= seconds[high] and tokens[c] <= most)
  assert sorted(_all_records(str(tmp_path / "at"))) == want and {low, high} <= set(want)


def test_cli_errors_are_one_line_and_exit_2(tmp_path):
  def cli(*argv):
    return subprocess.run([sys.executable, os.path.join(REPO, "data_prep", "prepare.py"),
                           *map(str, argv)], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)

  res = cli("--dataset", "ljspeech", "--src", tmp_path / "nope", "--out", tmp_path / "o")
  assert res.returncode == 2 and res.stderr.strip().count("\n") == 0
  assert res.stderr.startswith("error: ") and "nope" in res.stderr
  bad = tmp_path / "bad"
  os.makedirs(bad / "wavs")
  (bad / "metadata.csv").write_text("X-1|Missing.|Missing.\nX-2||\n")
  res = cli("--dataset", "ljspeech", "--src", bad, "--out", tmp_path / "o", "--workers", 1)
  assert res.returncode == 2 and res.stderr.strip().count("\n") == 0, res.stderr
  assert "missing audio 1" in res.stderr and "empty transcript 1" in res.stderr
  assert not os.path.exists(tmp_path / "o" / records.MANIFEST)


def test_tfds_missing_is_one_clear_error(tmp_path, capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
  rc, _, err = _run(capsys, "--dataset", "ljspeech", "--tfds", "--out", tmp_path / "o")
  assert rc == 2 and err.strip() == "error: " + tfds_reader.MISSING
  assert not os.path.exists(tmp_path / "o" / records.MANIFEST)
  # The TFDS path itself, and a TFRecord copy without TensorFlow: tests/test_tfds.py.


@pytest.mark.parametrize("n,rate,target", [(12345, 16000, 22050), (7, 44100, 22050),
                                           (100001, 48000, 22050), (999, 22050, 16000)])
def test_resample_equals_librosa_soxr_hq(n, rate, target):
  x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
  np.testing.assert_array_equal(
      process.resample(x, rate, target),
      librosa.resample(x, orig_sr=rate, target_sr=target, res_type="soxr_hq"))


# ------------------------------------------------------------- write failures, bad samples
def _small_corpus(root, good=4, bad=0, rate=16000, extra_rows=()):
  """`good` clips that prepare, then `bad` rows whose audio is missing (found only when
  processed, so they stay validation candidates), then `extra_rows`."""
  os.makedirs(os.path.join(root, "wavs"))
  rows = []
  for i in range(good):
    cid = f"G-{i:03d}"
    sf.write(os.path.join(root, "wavs", cid + ".wav"), _tone(0.6, rate, 200.0 + 50 * i), rate)
    rows.append(f"{cid}|{TEXTS[i % len(TEXTS)]}|{TEXTS[i % len(TEXTS)]}")
  rows += [f"M-{i:03d}|Missing audio.|Missing audio." for i in range(bad)]
  rows += list(extra_rows)
  with open(os.path.join(root, "metadata.csv"), "w", encoding="utf-8") as f:
    f.write("\n".join(rows) + "\n")
  return root


def _one_line_error(rc, err, *needles):
  assert rc == 2 and err.count("\n") == 1 and err.startswith("error: "), err
  assert "Traceback" not in err
  for needle in needles:
    assert needle in err, (needle, err)


def test_shard_writer_reports_array_record_failures_as_os_errors(tmp_path):
  """array_record cannot create a shard (here: --out under a file, which stops root too) and
  says so as a RuntimeError at the first write: the writer raises an OSError naming it."""
  import errno
  from data_prep import writer
  (tmp_path / "afile").write_text("x")
  w = writer.SplitWriter(str(tmp_path / "afile" / "out"), "train", 1 << 20)
  with pytest.raises(writer.ShardWriteError) as err:
    w.add("a", "s", 0, "t", np.ones(3, np.int32), np.ones(10, np.int16))
  assert isinstance(err.value, OSError) and err.value.strerror == "Not a directory"
  assert err.value.filename.startswith(str(tmp_path / "afile" / "out" / ".train-00000.tmp-"))
  w.abort()
  # The RuntimeError -> OSError mapping, for array_record's messages only.
  e = writer.shard_error(RuntimeError("open() failed: Read-only file system; opening "
                                      "ro/.train-00000.tmp-7; Failed to create the file header"))
  assert (e.strerror, e.filename, e.errno) == ("Read-only file system",
                                               "ro/.train-00000.tmp-7", errno.EROFS)
  assert writer.shard_error(RuntimeError("some bug")) is None


def test_read_only_out_is_one_line_error(tmp_path, capsys, monkeypatch):
  """An existing --out where no file can be created (a read-only mount): one line naming the
  file and the reason, not array_record's RuntimeError traceback."""
  from data_prep import writer
  src = _small_corpus(str(tmp_path / "src"))
  out = tmp_path / "ro"
  out.mkdir()

  class ReadOnly:   # array_record on a read-only file system: the open fails at write()
    def __init__(self, path, options):
      self.path = path

    def write(self, data):
      raise RuntimeError(f"open() failed: Read-only file system; opening {self.path}; "
                         "Failed to create the file header")

    def close(self):
      raise RuntimeError("Failed to close chunk_writer")

  monkeypatch.setattr(writer.array_record_module, "ArrayRecordWriter", ReadOnly)
  rc, _, err = _run(capsys, "--dataset", "ljspeech", "--src", src, "--out", out,
                    "--workers", 1, "--val-size", 1)
  _one_line_error(rc, err, "cannot write the prepared data", "Read-only file system",
                  str(out / ".train-00000.tmp-"))
  assert "open() failed" not in err and not os.listdir(out)
  # A RuntimeError of array_record's that escapes the writer is mapped the same way; any
  # other RuntimeError is a bug and is not hidden.
  monkeypatch.undo()
  for message, expected in (("open() failed: Permission denied; opening /x/y; more", True),
                            ("an internal bug", False)):
    def add(self, *args, message=message):
      raise RuntimeError(message)
    monkeypatch.setattr(writer.SplitWriter, "add", add)
    if expected:
      rc, _, err = _run(capsys, "--dataset", "ljspeech", "--src", src, "--out", out,
                        "--workers", 1, "--val-size", 1)
      _one_line_error(rc, err, "(/x/y): Permission denied;")
    else:
      with pytest.raises(RuntimeError, match="an internal bug"):
        prepare.main(["--dataset", "ljspeech", "--src", src, "--out", str(out),
                      "--workers", "1", "--val-size", "1"])


def test_clips_with_nan_or_inf_samples_are_skipped_without_warnings(tmp_path, capsys):
  """NaN/inf samples, and float samples at another scale (16-bit values stored as floats:
  clipped, they were kept as noise), are skipped and counted; a float clip with a small over
  of full scale is kept."""
  import warnings
  src = _small_corpus(str(tmp_path / "src"), extra_rows=[
      "NAN|A clip with a NaN sample.|A clip with a NaN sample.",
      "INF|A clip with an infinite sample.|A clip with an infinite sample.",
      "BIG|A clip in sixteen bit scale.|A clip in sixteen bit scale.",
      "HOT|A clip a little over full scale.|A clip a little over full scale."])
  for cid, value in (("NAN", np.nan), ("INF", -np.inf)):
    wav = _tone(0.6, 16000)
    wav[10] = value
    sf.write(os.path.join(src, "wavs", cid + ".wav"), wav, 16000, subtype="FLOAT")
  tone = _tone(0.6, 16000)
  sf.write(os.path.join(src, "wavs", "BIG.wav"), tone * 32768.0 / np.abs(tone).max() * 0.5,
           16000, subtype="FLOAT")
  sf.write(os.path.join(src, "wavs", "HOT.wav"), tone * 1.3 / np.abs(tone).max(), 16000,
           subtype="FLOAT")
  out = str(tmp_path / "o")
  with warnings.catch_warnings():
    warnings.simplefilter("error")   # numpy's "invalid value encountered in cast" was leaked
    rc, stdout, err = _run(capsys, "--dataset", "ljspeech", "--src", src, "--out", out,
                           "--workers", 1, "--val-size", 1)
  assert rc == 0 and not err, err
  assert "non-finite samples 2" in stdout and "samples out of range 1" in stdout, stdout
  m = records.load_manifest(out)
  assert {s["id"]: s["reason"] for s in m["skipped"]} == {
      "NAN": "non-finite samples", "INF": "non-finite samples", "BIG": "samples out of range"}
  assert "sample 10" in m["skipped"][0]["detail"]
  assert "reach 1.638e+04" in m["skipped"][2]["detail"], m["skipped"][2]
  assert sorted(_all_records(out)) == [f"G-{i:03d}" for i in range(4)] + ["HOT"]


@pytest.mark.parametrize("rate", [0, 1, 7999, 192001, -5])
def test_sample_rate_out_of_range_is_refused(rate, tmp_path, capsys):
  src = _small_corpus(str(tmp_path / "src"), good=1)
  rc, _, err = _run(capsys, "--dataset", "ljspeech", "--src", src, "--out", tmp_path / "o",
                    "--workers", 1, "--sample-rate", rate)
  _one_line_error(rc, err, f"--sample-rate must be 8000..192000 Hz, got {rate}")
  assert not os.path.exists(tmp_path / "o")


@pytest.mark.parametrize("seed", range(4))
def test_val_size_is_met_when_bad_rows_rank_first(seed, tmp_path, capsys):
  """Most validation candidates turn out bad only when processed (missing audio): validation
  still gets --val-size clips, the first good ones of the seeded order."""
  from data_prep import readers
  src = _small_corpus(str(tmp_path / "src"), good=5, bad=20)
  out = str(tmp_path / "o")
  rc, stdout, _ = _run(capsys, "--dataset", "ljspeech", "--src", src, "--out", out,
                       "--workers", 1, "--val-size", 2, "--seed", seed)
  assert rc == 0 and "validation 2," in stdout, stdout
  clips = readers.read_ljspeech(src)
  candidates = prepare.validation_candidates(clips)
  ranked, n = prepare.rank_validation(candidates, 2, seed)
  # The seeded order is numpy's permutation of the candidates (written out here: a rank
  # that ignored the seed passed when the test took its order from rank_validation).
  assert n == 2 and ranked == [candidates[i] for i in
                               np.random.default_rng(seed).permutation(len(candidates))]
  assert ranked != candidates
  want = [clips[p].clip_id for p in ranked if clips[p].clip_id.startswith("G-")][:n]
  recs = _all_records(out)
  assert sorted(recs) == [f"G-{i:03d}" for i in range(5)]
  assert sorted(cid for cid, (split, _) in recs.items() if split == "validation") == sorted(want)
  # Fewer good clips than asked for: at most half of them, and the summary says so.
  rc, stdout, _ = _run(capsys, "--dataset", "ljspeech", "--src", src, "--out", out,
                       "--workers", 1, "--val-size", 4, "--seed", seed, "--force")
  assert rc == 0 and "validation 2 of --val-size 4: at most half the usable clips" in stdout


def test_validation_pick_holds_the_best_ranked_good_clips():
  """Offered in corpus order, the clips kept are the first n good ones in rank order, and
  no more than 3n are ever held."""
  rng = np.random.default_rng(0)
  for trial in range(50):
    size, n = int(rng.integers(1, 40)), int(rng.integers(1, 6))
    ranked = [int(p) for p in rng.permutation(size)]
    good = {p for p in range(size) if rng.random() < 0.4}
    pick = prepare.ValidationPick(ranked, n)
    to_train = []
    for pos in range(size):
      if pos in good:
        released = pick.offer(pos, pos)
        if released is not None:
          to_train.append(released)
      assert len(pick.held) <= 3 * n
    validation, rest = pick.split(n)
    assert validation == [p for p in ranked if p in good][:n], trial
    assert sorted(validation + rest + to_train) == sorted(good)


def test_metadata_empty_id_and_utf16_are_named(tmp_path, capsys):
  src = _small_corpus(str(tmp_path / "src"), extra_rows=["|Empty id.|Empty id.", "NoFields"])
  out = str(tmp_path / "o")
  rc, _, _ = _run(capsys, "--dataset", "ljspeech", "--src", src, "--out", out,
                  "--workers", 1, "--val-size", 1)
  assert rc == 0
  details = [s["detail"] for s in records.load_manifest(out)["skipped"]]
  assert details == ["metadata.csv line 5 has an empty clip id",
                     "metadata.csv line 6 has no '|' fields"]
  meta = os.path.join(src, "metadata.csv")
  text = open(meta, encoding="utf-8").read()
  for encoding, name in (("utf-16", "UTF-16"), ("utf-16-le", "UTF-16"), ("utf-32", "UTF-32")):
    with open(meta, "wb") as f:
      f.write(text.encode(encoding))
    rc, _, err = _run(capsys, "--dataset", "ljspeech", "--src", src, "--out", out,
                      "--workers", 1, "--val-size", 1, "--force")
    _one_line_error(rc, err, f"metadata.csv is {name}", "not UTF-8")
  assert records.load_manifest(out)["counts"]["kept"] == 4   # left as it was


def test_a_changed_corpus_is_prepared_again_and_another_corpus_needs_force(tmp_path, capsys):
  """A re-run on an unchanged corpus only verifies; after the corpus was edited it prepares
  again and says so (it kept the old records before); an --out holding another corpus is
  kept unless --force (a VCTK run pointed at an LJSpeech --out replaced it)."""
  src = _small_corpus(str(tmp_path / "src"))
  out = tmp_path / "out"
  argv = ["--dataset", "ljspeech", "--out", out, "--workers", 1, "--val-size", 1]
  assert _run(capsys, "--src", src, *argv)[0] == 0
  rc, stdout, _ = _run(capsys, "--src", src, *argv)
  assert rc == 0 and stdout.startswith("already prepared")
  meta = os.path.join(src, "metadata.csv")
  with open(meta, encoding="utf-8") as f:
    rows = f.read().replace(TEXTS[0], "An edited transcript.")
  with open(meta, "w", encoding="utf-8") as f:
    f.write(rows)
  rc, stdout, _ = _run(capsys, "--src", src, *argv)
  assert rc == 0 and stdout.startswith("prepared") and "the corpus files changed" in stdout
  assert _all_records(str(out))["G-000"][1]["text"] == "An edited transcript."
  # An edit that keeps the file's size, of the transcript or of a clip's audio, too.
  with open(meta, "w", encoding="utf-8") as f:
    f.write(rows.replace("An edited transcript.", "An edited transcripT."))
  rc, stdout, _ = _run(capsys, "--src", src, *argv)
  assert rc == 0 and "the corpus files changed" in stdout, stdout
  assert _all_records(str(out))["G-000"][1]["text"] == "An edited transcripT."
  wav = os.path.join(src, "wavs", "G-001.wav")
  size = os.path.getsize(wav)
  sf.write(wav, _tone(0.6, 16000, 900.0), 16000)
  assert os.path.getsize(wav) == size
  rc, stdout, _ = _run(capsys, "--src", src, *argv)
  assert rc == 0 and "the corpus files changed" in stdout, stdout
  assert abs(peak_hz(_all_records(str(out))["G-001"][1]["audio"]) - 900.0) < 3.0
  other = _small_corpus(str(tmp_path / "other"), good=3)
  listing = sorted(os.listdir(out))
  rc, _, err = _run(capsys, "--src", other, *argv)
  _one_line_error(rc, err, f"--out {out} holds ljspeech prepared from {src}", "--force")
  assert sorted(os.listdir(out)) == listing
  rc, stdout, _ = _run(capsys, "--src", other, *argv, "--force")
  assert rc == 0 and len(_all_records(str(out))) == 3


def test_the_older_vctk_layout_pairs_its_wavs(tmp_path, capsys):
  """VCTK-Corpus 0.80 (wav48/pXXX/pXXX_NNN.wav, no mic suffix) prepares like 0.92."""
  src = tmp_path / "VCTK-Corpus"
  for spk in ("p225", "p226"):
    os.makedirs(src / "wav48" / spk)
    os.makedirs(src / "txt" / spk)
    for i in (1, 2):
      sf.write(src / "wav48" / spk / f"{spk}_{i:03d}.wav", _tone(0.6, 48000), 48000)
      (src / "txt" / spk / f"{spk}_{i:03d}.txt").write_text(TEXTS[i] + "\n")
  rc, stdout, _ = _run(capsys, "--dataset", "vctk", "--src", src, "--out", tmp_path / "o",
                       "--workers", 1, "--val-size", 1)
  assert rc == 0, stdout
  recs = _all_records(str(tmp_path / "o"))
  assert sorted(recs) == ["p225_001", "p225_002", "p226_001", "p226_002"]
  assert all(rec["text"] == TEXTS[int(cid[-1])] for cid, (_, rec) in recs.items())


def _vctk_five_and_one(src):
  """A VCTK layout under `src`: p225 with 5 clips, p226 with 1 (half-second tones)."""
  for spk, n in (("p225", 5), ("p226", 1)):
    os.makedirs(src / "wav48_silence_trimmed" / spk)
    os.makedirs(src / "txt" / spk)
    for i in range(1, n + 1):
      cid = f"{spk}_{i:03d}"
      sf.write(src / "wav48_silence_trimmed" / spk / f"{cid}_mic1.flac", _tone(0.5, 16000),
               16000)
      (src / "txt" / spk / f"{cid}.txt").write_text(TEXTS[i] + "\n")


def test_a_speaker_with_one_clip_keeps_it_in_train(tmp_path, capsys):
  """Whatever the validation draw, a speaker's only clip trains (drawn for validation, the
  speaker was listed by the voice but never trained); the others' clips fill validation."""
  src = tmp_path / "VCTK-Corpus-0.92"
  _vctk_five_and_one(src)
  moved = 0
  for seed in range(6):
    out = tmp_path / f"o{seed}"
    rc, stdout, _ = _run(capsys, "--dataset", "vctk", "--src", src, "--out", out,
                         "--workers", 1, "--val-size", 3, "--seed", seed)
    assert rc == 0, stdout
    splits = {cid: split for cid, (split, _) in _all_records(str(out)).items()}
    assert splits["p226_001"] == "train", (seed, splits)
    validation = sorted(c for c, s in splits.items() if s == "validation")
    assert len(validation) == 3 and all(c.startswith("p225") for c in validation), seed
    drawn, _ = prepare.rank_validation(list(range(6)), 3, seed)
    moved += 5 in drawn[:3]   # (p226_001 is the corpus' last clip)
  assert moved   # some draws took it, and another clip took its place


def test_unreadable_vctk_transcripts_are_skipped_and_counted(tmp_path, capsys):
  """A transcript that cannot be read (a dangling link, a folder) or is not UTF-8 is a
  skipped clip, as a bad metadata.csv line is: it stopped the run, or was kept with
  replacement characters."""
  src = tmp_path / "VCTK-Corpus-0.92"
  os.makedirs(src / "wav48_silence_trimmed" / "p225")
  os.makedirs(src / "txt" / "p225")
  for i in range(1, 7):
    sf.write(src / "wav48_silence_trimmed" / "p225" / f"p225_{i:03d}_mic1.flac",
             _tone(0.7, 48000), 48000)
  txt = src / "txt" / "p225"
  (txt / "p225_001.txt").write_text(TEXTS[0] + "\n")
  (txt / "p225_002.txt").write_bytes("\ufeff".encode() + TEXTS[1].encode())  # a BOM: fine
  os.symlink(tmp_path / "nowhere.txt", txt / "p225_003.txt")
  (txt / "p225_004.txt").mkdir()
  (txt / "p225_005.txt").write_bytes("caf\u00e9 au lait.".encode("latin-1"))
  (txt / "p225_006.txt").write_bytes(TEXTS[2].encode("utf-16"))
  out = tmp_path / "vctk"
  rc, stdout, _ = _run(capsys, "--dataset", "vctk", "--src", src, "--out", out,
                       "--workers", 1, "--val-size", 0)
  assert rc == 0, stdout
  manifest = records.load_manifest(str(out))
  assert {s["id"]: s["reason"] for s in manifest["skipped"]} == {
      "p225_003": "unreadable transcript", "p225_004": "unreadable transcript",
      "p225_005": "bad encoding", "p225_006": "bad encoding"}
  assert {cid: r["text"] for cid, (_, r) in _all_records(str(out)).items()} == {
      "p225_001": TEXTS[0], "p225_002": TEXTS[1]}


def test_speaker_map_ids_are_checked(tmp_path, capsys):
  """-1 would index the last speaker's embedding (another speaker's voice), 1e8 would make
  1e8 of them, `true` is not an id: each is one error line."""
  src = _small_corpus(str(tmp_path / "src"))
  for mapping, needle in (({"ljspeech": -1}, "ids must be 0..99999"),
                          ({"ljspeech": 10 ** 8}, "ids must be 0..99999"),
                          ({"ljspeech": True}, "{name: int id}"), ({}, "{name: int id}")):
    (tmp_path / "map.json").write_text(json.dumps(mapping))
    rc, _, err = _run(capsys, "--dataset", "ljspeech", "--src", src, "--out", tmp_path / "o",
                      "--workers", 1, "--speaker-map", tmp_path / "map.json")
    _one_line_error(rc, err, needle)
    assert not (tmp_path / "o").exists()


def test_audio_that_is_silent_slow_or_too_long_in_its_header(tmp_path, capsys, monkeypatch):
  """Channels in opposite phase are silence once mixed; a 1 kHz recording has no speech
  band left; a clip whose header says it is too long is skipped without decoding it (an
  hour of 48 kHz stereo took 2.5 GB to find that out). A row skipped for its own reason
  does not claim its id from a later good row."""
  rows = ["P-000|Opposite phase.|Opposite phase.", "S-000|Slow rate.|Slow rate.",
          "L-000|Too long.|Too long.", "G-000||", "G-000|Kept after all.|Kept after all."]
  src = _small_corpus(str(tmp_path / "src"), good=2, extra_rows=rows)
  tone = _tone(0.8, 16000)
  sf.write(os.path.join(src, "wavs", "P-000.wav"), np.stack([tone, -tone], 1), 16000)
  sf.write(os.path.join(src, "wavs", "S-000.wav"), _tone(0.8, 1000, 200.0), 1000)
  long_wav = os.path.join(src, "wavs", "L-000.wav")
  sf.write(long_wav, _tone(25.0, 8000), 8000)
  real = process.load_audio
  def load_audio(path):
    assert path != long_wav, "decoded a clip its header shows is too long"
    return real(path)
  monkeypatch.setattr(process, "load_audio", load_audio)
  out = tmp_path / "out"
  rc, stdout, _ = _run(capsys, "--dataset", "ljspeech", "--src", src, "--out", out,
                       "--workers", 1, "--val-size", 0)
  assert rc == 0, stdout
  skipped = {s["id"]: s["reason"] for s in records.load_manifest(str(out))["skipped"]}
  assert skipped["P-000"] == "silent audio" and skipped["S-000"] == "unusable sample rate"
  assert skipped["L-000"] == "too long" and "G-000" in _all_records(str(out))


def test_a_failed_run_leaves_no_files_of_its_own(tmp_path, capsys, monkeypatch):
  """A run that fails after its train split is complete (a full disk while the validation
  split is written) removes what it wrote: the shards took the space a retry needs. The
  message says whether earlier prepared data is there."""
  import errno
  src = _small_corpus(str(tmp_path / "src"))
  out = tmp_path / "out"
  argv = ["--dataset", "ljspeech", "--src", src, "--out", out, "--workers", 1,
          "--val-size", 1]
  real = prepare.writer.SplitWriter.finish
  def finish(self):
    if self.split == "validation":
      raise OSError(errno.ENOSPC, "No space left on device", str(out / "v.npy"))
    return real(self)
  monkeypatch.setattr(prepare.writer.SplitWriter, "finish", finish)
  rc, _, err = _run(capsys, *argv)
  _one_line_error(rc, err, "No space left on device", f"no prepared data was written to {out}")
  assert os.listdir(out) == []
  monkeypatch.undo()
  assert _run(capsys, *argv)[0] == 0
  listing = sorted(os.listdir(out))
  monkeypatch.setattr(prepare.writer.SplitWriter, "finish", finish)
  rc, _, err = _run(capsys, *argv, "--force")
  _one_line_error(rc, err, f"the previous prepared data in {out} is intact")
  assert sorted(os.listdir(out)) == listing and records.load_manifest(str(out), checksums=True)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_interrupt_stops_the_worker_pool_with_one_line(tmp_path, sig):
  """Ctrl-C (or a SIGTERM) reaches every process of the group: with --workers 2 the run
  hung for good in 5 of 7 tries, or printed tracebacks of every process. Now it stops, exit
  130, one line, and the earlier prepared data stays."""
  import signal
  import time
  src = _small_corpus(str(tmp_path / "src"), good=2)
  tone = _tone(0.6, 16000)
  with open(os.path.join(src, "metadata.csv"), "a", encoding="utf-8") as f:
    for i in range(400):
      sf.write(os.path.join(src, "wavs", f"X-{i:03d}.wav"), tone, 16000)
      f.write(f"X-{i:03d}|{TEXTS[i % len(TEXTS)]}|{TEXTS[i % len(TEXTS)]}\n")
  out = tmp_path / "out"
  proc = subprocess.Popen(
      [sys.executable, os.path.join(REPO, "data_prep", "prepare.py"), "--dataset", "ljspeech",
       "--src", src, "--out", str(out), "--workers", "2", "--val-size", "1"],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
      env={**os.environ, "PYTHONPATH": REPO})
  deadline = time.time() + 240
  while not any(n.startswith(".train-") for n in (os.listdir(out) if out.exists() else [])):
    assert proc.poll() is None and time.time() < deadline, proc.communicate()
    time.sleep(0.05)
  os.killpg(proc.pid, getattr(signal, sig))
  try:
    _, err = proc.communicate(timeout=60)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"prepare.py still running 60 s after {sig}")
  assert proc.returncode == 130 and err == (
      f"error: interrupted; no prepared data was written to {out}\n"), err
  assert os.listdir(out) == []


def test_one_run_at_a_time_writes_an_out_folder(tmp_path, capsys):
  """A second prepare.py into an --out being written is refused (it deleted the first
  one's temporaries); the lock is on the folder itself, so nothing of it stays behind."""
  import fcntl
  src = _small_corpus(str(tmp_path / "src"))
  out = tmp_path / "out"
  out.mkdir()
  fd = os.open(out, os.O_RDONLY)
  fcntl.flock(fd, fcntl.LOCK_EX)   # as a running prepare.py holds it
  try:
    rc, _, err = _run(capsys, "--dataset", "ljspeech", "--src", src, "--out", out,
                      "--workers", 1)
  finally:
    os.close(fd)
  _one_line_error(rc, err, f"--out {out} is in use by another prepare.py")
  assert os.listdir(out) == []
  rc, _, _ = _run(capsys, "--dataset", "ljspeech", "--src", src, "--out", out, "--workers", 1)
  assert rc == 0 and sorted(os.listdir(out))[0] == records.MANIFEST


def test_vctk_names_pair_within_a_speaker_and_names_not_utf8_are_skipped(tmp_path, capsys):
  """A corpus of its own in the VCTK layout may reuse clip names across speakers ('001'):
  each pairs with its own speaker's transcript (another speaker's clip took its text, and one
  of the two vanished uncounted), ids stay unique; a file name that is not UTF-8 is a skipped
  clip (it was a traceback when its record was written)."""
  src = tmp_path / "own"
  for spk, freq in (("anna", 300.0), ("bert", 900.0)):
    os.makedirs(src / "wav48_silence_trimmed" / spk)
    os.makedirs(src / "txt" / spk)
    for i in (1, 2):
      sf.write(src / "wav48_silence_trimmed" / spk / f"{i:03d}_mic1.flac",
               _tone(0.7, 48000, freq), 48000)
  (src / "txt" / "anna" / "001.txt").write_text(TEXTS[0] + "\n")
  (src / "txt" / "anna" / "002.txt").write_text(TEXTS[1] + "\n")
  (src / "txt" / "bert" / "002.txt").write_text(TEXTS[2] + "\n")   # bert's 001: no text
  bad = os.path.join(os.fsencode(src / "wav48_silence_trimmed" / "anna"), b"\xff03_mic1.flac")
  sf.write(bad, _tone(0.7, 48000), 48000, format="FLAC")
  with open(os.path.join(os.fsencode(src / "txt" / "anna"), b"\xff03.txt"), "w") as f:
    f.write(TEXTS[3])
  out = tmp_path / "out"
  rc, stdout, _ = _run(capsys, "--dataset", "vctk", "--src", src, "--out", out,
                       "--workers", 1, "--val-size", 0)
  assert rc == 0, stdout
  manifest = records.load_manifest(str(out))
  reasons = sorted((s["reason"], s["id"]) for s in manifest["skipped"])
  assert reasons == [("file name not UTF-8", "anna_\ufffd03.txt"),
                     ("file name not UTF-8", "anna_\ufffd03_mic1.flac"),
                     ("no transcript", "bert_001")], reasons
  recs = _all_records(str(out))
  assert {cid: (r["speaker"], r["text"]) for cid, (_, r) in recs.items()} == {
      "anna_001": ("anna", TEXTS[0]), "anna_002": ("anna", TEXTS[1]),
      "bert_002": ("bert", TEXTS[2])}
  for cid, (_, rec) in recs.items():   # each clip's own audio
    want = 300.0 if cid.startswith("anna") else 900.0
    assert abs(peak_hz(rec["audio"]) - want) < 3.0, cid


def test_odd_rows_paths_and_files_of_an_ljspeech_corpus(tmp_path, capsys, monkeypatch):
  """A row with more '|' fields than id|text|normalized is skipped as malformed (its text was
  cut to one field); an MP3 cut short is skipped as such (it was kept, shorter than its
  transcript); a corpus file that cannot be read is a read error, not 'cannot write'; a
  --src or --out that is not UTF-8 is one line; a failed manifest write leaves no temporary."""
  src = _small_corpus(tmp_path / "c", good=4, extra_rows=["X-1|One part|Two|Three"])
  mp3 = src / "wavs" / "G-003.wav"   # MP3 content behind a .wav name, as corpora have
  import io
  blob = io.BytesIO()
  sf.write(blob, _tone(2.0, 16000), 16000, format="MP3")
  mp3.write_bytes(blob.getvalue()[:len(blob.getvalue()) // 2])
  out = tmp_path / "out"
  rc, stdout, _ = _run(capsys, "--dataset", "ljspeech", "--src", src, "--out", out,
                       "--workers", 1, "--val-size", 0)
  assert rc == 0, stdout
  skipped = {s["id"]: s["reason"] for s in records.load_manifest(str(out))["skipped"]}
  assert skipped == {"X-1": "malformed metadata", "G-003": "audio cut short"}, skipped
  for flag in ("--src", "--out"):
    argv = {"--src": src, "--out": tmp_path / "o2"}
    argv[flag] = os.fsdecode(os.fsencode(tmp_path) + b"/\xff")
    rc, _, err = _run(capsys, "--dataset", "ljspeech", "--src", argv["--src"], "--out",
                      argv["--out"])
    _one_line_error(rc, err, f"{flag} ", "is not a UTF-8 path")

  real_open = open

  def failing_open(path, *args, **kwargs):
    if str(path).endswith("metadata.csv"):
      raise OSError(5, "Input/output error", str(path))
    return real_open(path, *args, **kwargs)
  import builtins
  monkeypatch.setattr(builtins, "open", failing_open)
  rc, _, err = _run(capsys, "--dataset", "ljspeech", "--src", src, "--out", tmp_path / "o3")
  monkeypatch.undo()
  _one_line_error(rc, err, "cannot read the corpus", "metadata.csv", "Input/output error")

  def full_disk(obj, f, **kwargs):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(records.json, "dump", full_disk)
  rc, _, err = _run(capsys, "--dataset", "ljspeech", "--src", src, "--out", tmp_path / "o4",
                    "--workers", 1, "--val-size", 0)
  monkeypatch.undo()
  _one_line_error(rc, err, "No space left on device")
  assert not [p for p in os.listdir(tmp_path / "o4") if ".tmp-" in p], os.listdir(
      tmp_path / "o4")


def test_a_tfds_example_without_samples_is_skipped():
  from data_prep.readers import Clip
  frontend = get_frontend("vits")
  settings = process.Settings()
  for empty in (np.zeros(0, np.int16), np.zeros((0, 2), np.float32)):
    got = process.process_clip(Clip("t", "s", TEXTS[0], audio=empty, audio_rate=16000),
                               settings, frontend)
    assert got["skip"] == "no audio samples", got
