"""Tests from a mutation audit of the data-preparation input side (data_prep/ and
vits_jax/data/loader.py, buckets.py): each pins a behaviour whose breaking no other test
noticed (the metadata.csv column read, --mic, the frontend flags, hours in the manifest, what a
re-run compares, int16 scaling, the TFDS split and config asked for, ...). Small corpora, the
real 'vits' frontend where tokens are compared."""

import os
import sys
import types

import numpy as np
import pytest
import soundfile as sf

import prep_utils  # noqa: E402  (tests/ is on sys.path)
from data_prep import prepare, process, readers, tfds_reader
from test_data_prep import TEXTS, _small_corpus, _tone, _vctk_five_and_one
from vits_jax.data import records
from vits_jax.text import get_frontend

_run = prep_utils.run_prepare


class _Frontend:
  """Stands in for the phonemizer: one id per character."""
  n_vocab = 256

  def text_to_ids(self, text):
    return [ord(c) % 255 + 1 for c in text]


# ------------------------------------------------------------------------------- readers
def test_ljspeech_reader_bom_empty_normalized_column_and_padded_ids(tmp_path):
  """A metadata.csv saved with a UTF-8 byte-order mark keeps its first id; an empty normalized
  column falls back to the text column (not an empty transcript); ids are stripped."""
  (tmp_path / "wavs").mkdir()
  (tmp_path / "metadata.csv").write_bytes(
      "\ufeffA-1|Raw one.|Norm one.\nA-2|Raw two.|\nA-3|Raw three.| \n B-4 |Raw four.|Norm four.\n"
      .encode("utf-8"))
  clips = readers.read_ljspeech(str(tmp_path))
  assert [(c.clip_id, c.text, c.skip) for c in clips] == [
      ("A-1", "Norm one.", None), ("A-2", "Raw two.", None), ("A-3", "Raw three.", None),
      ("B-4", "Norm four.", None)]
  assert [c.path for c in clips] == [str(tmp_path / "wavs" / f"{i}.wav")
                                     for i in ("A-1", "A-2", "A-3", "B-4")]


def _vctk_two_mics(src):
  for spk in ("p225", "p226"):
    os.makedirs(src / "wav48_silence_trimmed" / spk)
    os.makedirs(src / "txt" / spk)
    for i in (1, 2):
      cid = f"{spk}_{i:03d}"
      for mic, freq in (("mic1", 300.0), ("mic2", 1200.0)):
        sf.write(src / "wav48_silence_trimmed" / spk / f"{cid}_{mic}.flac",
                 _tone(0.6, 16000, freq), 16000)
      (src / "txt" / spk / f"{cid}.txt").write_text(TEXTS[i] + "\n")


def test_vctk_mic2_and_what_a_rerun_compares(tmp_path, capsys):
  """--mic mic2 reads the mic2 files (only mic1 was ever prepared by the tests); switching the
  mic, or editing a transcript, prepares again rather than keeping the old records."""
  src = tmp_path / "VCTK-Corpus-0.92"
  _vctk_two_mics(src)
  clips = readers.read_vctk(str(src), mic="mic2")
  assert len(clips) == 4 and all(c.path.endswith("_mic2.flac") for c in clips)
  out = str(tmp_path / "o")
  argv = ["--dataset", "vctk", "--src", src, "--out", out, "--workers", 1, "--val-size", 1]
  for mic, freq in (("mic2", 1200.0), ("mic1", 300.0)):
    rc, stdout, _ = _run(capsys, *argv, "--mic", mic)
    assert rc == 0 and stdout.startswith("prepared "), stdout
    recs = prep_utils.all_records(out)
    assert len(recs) == 4 and records.load_manifest(out)["settings"]["mic"] == mic
    for cid, (_, rec) in recs.items():
      assert abs(prep_utils.peak_hz(rec["audio"]) - freq) < 3.0, (mic, cid)
  rc, stdout, _ = _run(capsys, *argv, "--mic", "mic1")
  assert rc == 0 and stdout.startswith("already prepared"), stdout
  (src / "txt" / "p225" / "p225_001.txt").write_text("An edited transcript, longer.\n")
  rc, stdout, _ = _run(capsys, *argv, "--mic", "mic1")
  assert rc == 0 and "the corpus files changed" in stdout, stdout
  assert prep_utils.all_records(out)["p225_001"][1]["text"] == "An edited transcript, longer."


# ----------------------------------------------------------------------------- prepare.py
def test_frontend_flags_reach_the_tokens(tmp_path, capsys):
  """--no-add-blank and --cleaners change the token ids written (and the manifest says so):
  no test prepared with anything but the defaults."""
  src = _small_corpus(str(tmp_path / "src"), good=3)
  out = str(tmp_path / "o")
  rc, stdout, _ = _run(capsys, "--dataset", "ljspeech", "--src", src, "--out", out,
                       "--workers", 1, "--val-size", 0, "--no-add-blank",
                       "--cleaners", "english_cleaners")
  assert rc == 0, stdout
  front = records.load_manifest(out)["frontend"]
  assert front["add_blank"] is False and front["cleaners"] == ["english_cleaners"]
  frontend = get_frontend("vits", cleaners=["english_cleaners"], add_blank=False)
  default = get_frontend("vits")
  recs = prep_utils.all_records(out)
  assert len(recs) == 3
  for _, rec in recs.values():
    want = frontend.text_to_ids(rec["text"])
    assert want != default.text_to_ids(rec["text"])
    np.testing.assert_array_equal(rec["tokens"], want)


def test_manifest_hours_are_the_samples_written(tmp_path, capsys):
  """Each split's hours and the total are its records' samples at --sample-rate (the rate
  asked for, not 22050), validation included in the total."""
  src = _small_corpus(str(tmp_path / "src"), good=6)
  out = str(tmp_path / "o")
  rc, stdout, _ = _run(capsys, "--dataset", "ljspeech", "--src", src, "--out", out,
                       "--val-size", 2, "--sample-rate", 16000)
  assert rc == 0, stdout
  m = records.load_manifest(out)
  assert m["workers"] == 1   # the default: one per started 1000 clips (none was 0 workers)
  samples = {s: 0 for s in records.SPLITS}
  for split, rec in prep_utils.all_records(out).values():
    samples[split] += len(rec["audio"])
  assert samples["train"] == 4 * 9600 and samples["validation"] == 2 * 9600  # 0.6 s each
  for split in records.SPLITS:
    assert m["splits"][split]["hours"] == round(samples[split] / 16000 / 3600, 4), split
  assert m["hours"] == round(sum(samples.values()) / 16000 / 3600, 4) == 0.001


@pytest.mark.parametrize("flag,value,key", [("--max-tokens", 300, "max_tokens"),
                                            ("--min-seconds", 0.4, "min_seconds")])
def test_a_changed_filter_prepares_again(flag, value, key, tmp_path, capsys):
  """Every setting that can change which clips are kept is part of what a re-run compares:
  a changed filter prepares again and records the new value."""
  src = _small_corpus(str(tmp_path / "src"), good=2)
  argv = ["--dataset", "ljspeech", "--src", src, "--out", tmp_path / "o", "--workers", 1,
          "--val-size", 0]
  assert _run(capsys, *argv)[0] == 0
  rc, stdout, _ = _run(capsys, *argv, flag, value)
  assert rc == 0 and stdout.startswith("prepared ") and key in stdout, stdout
  assert records.load_manifest(str(tmp_path / "o"))["settings"][key] == value


def test_a_speakers_only_clip_drawn_for_validation_is_counted(tmp_path, capsys):
  """The manifest counts the drawn validation clips that stayed in train as their speaker's
  only clip (the summary's explanation of a short validation split reads it)."""
  seed = next(s for s in range(50)
              if 5 in prepare.rank_validation(list(range(6)), 3, s)[0][:3])
  src = tmp_path / "VCTK-Corpus-0.92"
  _vctk_five_and_one(src)
  out = str(tmp_path / "o")
  rc, stdout, _ = _run(capsys, "--dataset", "vctk", "--src", src, "--out", out,
                       "--workers", 1, "--val-size", 3, "--seed", seed)
  assert rc == 0, stdout
  counts = records.load_manifest(out)["counts"]
  assert counts["validation"] == 3 and counts["validation_kept_in_train"] == 1


# ------------------------------------------------------------------------ per-clip work
def _clip(audio, rate, text="Hello there."):
  return readers.Clip("C-1", "ljspeech", text, audio=np.asarray(audio), audio_rate=rate)


def test_int16_samples_are_read_at_full_scale():
  """TFDS's int16 PCM is scaled by 1/32768: a loud clip at the target rate comes out as the
  same int16 samples (1/32767 moved every sample above 16384 by one step)."""
  pcm = np.round(_tone(0.8, 22050, 300.0) / 0.5 * 30000).astype(np.int16)
  pcm[100], pcm[101] = 32767, -32768
  res = process.process_clip(_clip(pcm, 22050), process.Settings(), _Frontend())
  assert "skip" not in res, res
  np.testing.assert_array_equal(res["audio"], pcm)


@pytest.mark.parametrize("peak,kept", [(1.5, True), (2.0, True), (2.5, False), (6.0, False)])
def test_float_samples_past_twice_full_scale_are_skipped(peak, kept):
  """The documented bound is +6 dBFS (2.0): a peak of 2.5 is another scale, not an over."""
  wav = _tone(0.8, 22050, 300.0) / 0.5 * peak
  res = process.process_clip(_clip(wav.astype(np.float32), 22050), process.Settings(),
                             _Frontend())
  if kept:
    assert "skip" not in res, res
    want = np.clip(np.round(wav.astype(np.float32) * 32768.0), -32768, 32767).astype(np.int16)
    np.testing.assert_array_equal(res["audio"], want)
  else:
    assert res["skip"] == "samples out of range", res


# -------------------------------------------------------------------------- tfds_reader
class _Split:
  num_examples = 3


class _FakeBuilder:
  """What read_tfds uses of a TFDS builder, recording the split and config asked for."""
  names = ["p226", "p225"]

  def __init__(self, name, data_dir, calls, tfrecord):
    self.name, self.data_dir_root, self.calls, self.tfrecord = name, data_dir, calls, tfrecord
    self.info = types.SimpleNamespace(
        features={"speaker": types.SimpleNamespace(names=self.names)},
        splits={"train": _Split()})

  def download_and_prepare(self, file_format=None):
    self.calls.append(("prepare", file_format))

  def _examples(self, split):
    if split != "train":
      raise ValueError(f"no split {split!r}")
    return [{"id": f"{self.names[k % 2]}_{k:03d}".encode(), "speech": np.ones(5, np.int16),
             "text": f"Text {k}.".encode(), "speaker": np.int64(k % 2)} for k in range(3)]

  def as_data_source(self, split):
    self.calls.append(("data_source", split))
    if self.tfrecord:
      raise NotImplementedError("prepared as TFRecord")
    return self._examples(split)

  def as_dataset(self, split, shuffle_files):
    self.calls.append(("dataset", split))
    examples = self._examples(split)
    return types.SimpleNamespace(cardinality=lambda: -1, examples=examples)


@pytest.mark.parametrize("tfrecord", [False, True])
def test_read_tfds_asks_for_the_mic_config_and_the_train_split(tfrecord, monkeypatch):
  """vctk/mic2 for --mic mic2, the single 'train' split, the split's recorded size when
  tf.data does not know it (TFRecord copy), and the builder's speaker ids sorted."""
  calls, built = [], []

  def builder(name, data_dir=None):
    built.append(name)
    return _FakeBuilder(name, data_dir, calls, tfrecord)

  fake = types.ModuleType("tensorflow_datasets")
  fake.builder = builder
  fake.as_numpy = lambda ds: iter(ds.examples)
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
  monkeypatch.setitem(sys.modules, "tensorflow", types.ModuleType("tensorflow"))
  clips = tfds_reader.read_tfds("vctk", "/nowhere", mic="mic2")
  assert built == ["vctk/mic2"] and clips.name == "vctk/mic2"
  assert ("prepare", "array_record") in calls
  assert [c for c in calls if c[0] != "prepare"] == (
      [("data_source", "train"), ("dataset", "train")] if tfrecord else
      [("data_source", "train")])
  assert len(clips) == 3 and clips.source == ("tf.data" if tfrecord else "data_source")
  assert clips.speaker_map() == {"p225": 0, "p226": 1}
  got = [(c.clip_id, c.speaker, c.text, c.audio_rate) for c in clips]
  assert got == [("p226_000", "p226", "Text 0.", 48000), ("p225_001", "p225", "Text 1.", 48000),
                 ("p226_002", "p226", "Text 2.", 48000)]
  assert tfds_reader.read_tfds("ljspeech", "/nowhere").name == "ljspeech"


# ------------------------------------------------------------------------------- loader
def test_num_epochs_bounds_the_stream_and_eval_buckets_honour_min_audio_len(tmp_path):
  """num_epochs=k is exactly k epochs of batches; the eval loader's own buckets are padded
  to at least min_audio_len as the train loader's are (clips shorter than the segment)."""
  from test_loader import _write_prepared
  from vits_jax.data import loader
  _write_prepared(tmp_path, n_train=13, n_val=5)
  for epochs in (1, 2):
    ld = loader.make_train_loader(str(tmp_path), 4, 0, num_epochs=epochs, process_index=0,
                                  process_count=1, audio_multiple=512)
    assert ld.batches_per_epoch == 3 and len(ld) == 3 * epochs
    assert len(list(ld)) == 3 * epochs
  ev = loader.make_eval_loader(str(tmp_path), 2, process_index=0, process_count=1,
                               audio_multiple=512, min_audio_len=16384)
  assert ev.buckets and all(a >= 16384 for _, a in ev.buckets), ev.buckets
  assert all(b["audio"].shape[1] >= 16384 for b in ev)
