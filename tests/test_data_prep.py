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
    want = process.to_int16(librosa.resample(mono, orig_sr=rate, target_sr=22050,
                                             res_type="soxr_hq"))
    np.testing.assert_array_equal(rec["audio"], want)
    # Independent of the resampler: the tone's frequency survives at the new rate.
    spectrum = np.abs(np.fft.rfft(rec["audio"].astype(np.float64)))
    peak_hz = np.argmax(spectrum) * 22050 / len(rec["audio"])
    assert abs(peak_hz - (200.0 + 100 * i)) < 3.0


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
  with pytest.raises(KeyboardInterrupt):
    prepare.main([str(a) for a in argv] + ["--force"])
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
    spectrum = np.abs(np.fft.rfft(rec["audio"].astype(np.float64)))
    assert abs(np.argmax(spectrum) * 22050 / len(rec["audio"]) - 300.0) < 3.0  # mic1 only

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
