"""Unit tests of data preparation and the training data pipeline, written from a mutation
audit: each pins a behaviour whose breaking no other test noticed (clips silently dropped
from evaluation, a lengths table out of step with its records, a speaker id past the speaker
table, buckets that do not grow, ...). Small, fast, no phonemizer unless stated."""

import json
import os
import shutil

import numpy as np
import pytest

from data_prep import writer
from test_loader import _row_ids, _write_prepared
from vits_jax.data import buckets as buckets_lib
from vits_jax.data import loader, records


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  out = tmp_path_factory.mktemp("units_prepared")
  clips = _write_prepared(out)
  return str(out), clips


# ------------------------------------------------------------------------------- buckets
def test_default_buckets_text_bounds_grow_when_long_audio_has_short_text():
  """Long clips with little text after short clips with much text: the running max keeps
  the text bound growing (else check_buckets refuses the default buckets)."""
  lengths = np.array([[100, 1000]] * 4 + [[5, 50_000]] * 4)
  bks = buckets_lib.default_buckets(lengths, num_buckets=2, audio_multiple=2048)
  assert bks == [(104, 2048), (104, 51_200)]
  assert (buckets_lib.assign_buckets(lengths, bks) >= 0).all()


def test_check_buckets_refuses_a_shrinking_text_bound():
  """A clip that fits bucket k must fit bucket k+1: a smaller text bound breaks that."""
  with pytest.raises(ValueError, match="grow"):
    buckets_lib.check_buckets([(64, 4096), (32, 8192)])
  with pytest.raises(ValueError, match="grow"):
    buckets_lib.check_buckets([(32, 4096), (64, 4096)])
  assert buckets_lib.check_buckets([(32, 4096), (32, 8192)]) == [(32, 4096), (32, 8192)]


def test_default_buckets_are_at_least_min_audio_len():
  """Clips shorter than the training segment are padded up to it (one bucket here: equal
  audio bounds keep the widest text)."""
  lengths = np.array([[3, 100], [9, 300], [12, 700], [20, 1000]])
  assert buckets_lib.default_buckets(lengths, num_buckets=4, audio_multiple=256,
                                     min_audio_len=8192) == [(24, 8192)]


# ------------------------------------------------------------------------------- loaders
def test_eval_loader_keeps_clips_longer_in_audio_only_than_the_train_buckets(prepared):
  """Given training buckets whose text bound is ample but audio bound too small, the eval
  loader adds a bucket: no validation clip is silently left out."""
  data_dir, clips = prepared
  val_ids = sorted(c for c in clips if c.startswith("validation"))
  ev = loader.make_eval_loader(data_dir, 4, buckets=[(200, 1024)], process_index=0,
                               process_count=1, audio_multiple=512)
  assert len(ev.buckets) == 2 and ev.buckets[0] == (200, 1024)
  assert ev.buckets[1][0] >= 200 and ev.buckets[1][1] >= 9000 - 512
  assert ev.buckets[1][1] % 512 == 0
  # Text too long, audio not: the added bucket's audio is still whole multiples (it was the
  # last bound + 1 sample, 16385, neither a multiple of audio_multiple nor of the hop).
  ev = loader.make_eval_loader(data_dir, 4, buckets=[(8, 16384)], process_index=0,
                               process_count=1, audio_multiple=2048)
  assert ev.buckets[0] == (8, 16384) and ev.buckets[1][1] == 16384 + 2048, ev.buckets
  real = []
  for batch in ev:
    real += [c for c, w in zip(_row_ids(batch, clips), batch["weight"]) if w == 1]
  assert sorted(real) == val_ids


def test_eval_loader_weights_follow_each_hosts_rows(prepared):
  """Two hosts: each gets its own half of every batch's weights, so the filler copies
  count 0 on whichever host reads them and every clip counts once overall."""
  data_dir, clips = prepared
  val_ids = sorted(c for c in clips if c.startswith("validation"))
  hosts = [loader.make_eval_loader(data_dir, 4, process_index=p, process_count=2,
                                   audio_multiple=512) for p in (0, 1)]
  real, total = [], 0.0
  for i in range(len(hosts[0])):
    for h in hosts:
      batch = h.dataset[i]
      assert batch["weight"].shape == (2,) == batch["sid"].shape
      real += [c for c, w in zip(_row_ids(batch, clips), batch["weight"]) if w == 1]
      total += float(batch["weight"].sum())
  assert sorted(real) == val_ids and total == len(val_ids)


def _rewrite_lengths(data_dir, split, lengths):
  manifest = json.load(open(os.path.join(data_dir, records.MANIFEST)))
  entry = manifest["splits"][split]["lengths"]
  path = os.path.join(data_dir, entry["file"])
  np.save(path, np.asarray(lengths, np.int32))
  manifest["splits"][split]["lengths"] = records.file_entry(path)
  records.write_json_atomic(os.path.join(data_dir, records.MANIFEST), manifest)


def test_a_lengths_table_out_of_step_with_the_records_is_refused(prepared, tmp_path):
  """More records than lengths (or fewer) is one error: bucketing by the wrong table puts
  clips in buckets they do not fit, or never reads some."""
  data_dir, _ = prepared
  for cut in (slice(0, -1), slice(None)):
    copy = tmp_path / f"d{cut.stop}"
    shutil.copytree(data_dir, copy)
    lengths = loader.PreparedSplit(str(copy), "train").lengths
    table = lengths[cut] if cut.stop else np.concatenate([lengths, lengths[:1]])
    _rewrite_lengths(str(copy), "train", table)
    with pytest.raises(ValueError, match="records but"):
      loader.PreparedSplit(str(copy), "train")


def test_lengths_table_matches_the_records(tmp_path):
  """The writer's lengths table is exactly (n_tokens, n_samples) of each record, in order:
  buckets are made from it, and a clip one sample longer than its table entry may not fit
  its bucket."""
  clips = _write_prepared(tmp_path, n_train=12, n_val=3)
  for split in records.SPLITS:
    data = loader.PreparedSplit(str(tmp_path), split)
    recs = data.read(range(len(data)))
    want = [(len(r["tokens"]), len(r["audio"])) for r in recs]
    assert data.lengths.dtype == np.int32
    np.testing.assert_array_equal(data.lengths, want)
    for r in recs:
      tokens, audio, sid = clips[r["id"]]
      np.testing.assert_array_equal(r["audio"], audio)
      assert r["sid"] == sid


def test_a_speaker_id_equal_to_n_speakers_is_refused(prepared, tmp_path):
  """Ids run 0..n_speakers-1: id n_speakers has no embedding row."""
  data_dir, _ = prepared
  copy = tmp_path / "d"
  shutil.copytree(data_dir, copy)
  manifest = json.loads((copy / records.MANIFEST).read_text())
  manifest.update({"n_speakers": 2, "speakers": {"a": 0, "b": 2}})
  (copy / records.MANIFEST).write_text(json.dumps(manifest))
  with pytest.raises(ValueError, match="ids outside 0..1"):
    records.load_manifest(str(copy))
  manifest["speakers"] = {"a": 0, "b": 1}
  (copy / records.MANIFEST).write_text(json.dumps(manifest))
  records.load_manifest(str(copy))


# ------------------------------------------------------------------------ per-clip work
class _Frontend:
  """Stands in for the phonemizer: one id per character."""
  n_vocab = 256

  def text_to_ids(self, text):
    return [ord(c) % 255 + 1 for c in text]


def _clip(audio, rate, cid="C-1", speaker="ljspeech", text="Hello."):
  from data_prep import readers
  return readers.Clip(cid, speaker, text, audio=np.asarray(audio), audio_rate=rate)


def _tone(seconds, rate, freq=440.0, amp=0.5):
  t = np.arange(int(round(seconds * rate))) / rate
  return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("target", [16000, 24000, 44100])
def test_clips_are_resampled_to_the_requested_rate(target):
  """--sample-rate other than 22050: the samples are at that rate (length and pitch)."""
  from data_prep import process
  import prep_utils
  settings = process.Settings(sample_rate=target)
  res = process.process_clip(_clip(_tone(0.8, 16000, 500.0), 16000), settings, _Frontend())
  assert "skip" not in res, res
  assert len(res["audio"]) == int(np.ceil(0.8 * 16000 * target / 16000))
  assert abs(prep_utils.peak_hz(res["audio"], target) - 500.0) < 3.0


@pytest.mark.parametrize("peak,kept", [(7, False), (8, True), (33, True), (330, True),
                                       (3300, True)])
def test_quiet_but_audible_clips_are_kept(peak, kept):
  """Only a 16-bit peak below 8 (-72 dBFS) is silence; a quiet recording (-40..-20 dBFS)
  is speech to keep, at its own level."""
  from data_prep import process
  pcm = np.round(_tone(0.8, 22050, 300.0, 1.0) * peak).astype(np.int16)
  assert np.abs(pcm).max() == peak
  res = process.process_clip(_clip(pcm, 22050), process.Settings(), _Frontend())
  if kept:
    assert "skip" not in res, res
    np.testing.assert_array_equal(res["audio"], pcm)   # int16 in, same int16 out
  else:
    assert res["skip"] == "silent audio"


# ------------------------------------------------------------------- speakers, validation
def test_tfds_speaker_ids_are_the_names_in_sorted_order():
  """Speaker ids do not depend on the order a builder lists its speakers in (the folder
  reader numbers them sorted too, so both give a clip the same id)."""
  from data_prep import tfds_reader
  clips = tfds_reader.TfdsClips("vctk", "vctk/mic1", [], 0, ["p227", "p225", "p226"],
                                "data_source")
  assert clips.speaker_map() == {"p225": 0, "p226": 1, "p227": 2}
  assert tfds_reader.TfdsClips("ljspeech", "ljspeech", [], 0, None,
                               "data_source").speaker_map() == {"ljspeech": 0}


def test_rank_validation_never_asks_for_more_than_half_the_candidates():
  from data_prep import prepare
  ranked, n = prepare.rank_validation(list(range(10, 15)), 4, 0)
  assert n == 2 and sorted(ranked) == list(range(10, 15))
  assert prepare.rank_validation([3], 100, 0)[1] == 0
  assert prepare.rank_validation(list(range(6)), 0, 0) == ([], 0)


def test_validation_candidates_are_the_rows_the_reader_did_not_skip():
  from data_prep import prepare, readers
  clips = [readers.Clip("a", "s", "Text.", path="a.wav"),
           readers.Clip("b", "s", None, skip="malformed metadata"),
           readers.Clip("c", "s", "", path="c.wav"),
           readers.Clip("d", "s", "More.", path="d.wav")]
  assert prepare.validation_candidates(clips) == [0, 3]


# ------------------------------------------------------------- prepare.py (real frontend)
def test_skipped_rows_are_counted_one_by_one(tmp_path, capsys):
  """Three rows skipped for the same reason count 3 (not one per reason)."""
  import prep_utils
  from test_data_prep import _small_corpus
  src = _small_corpus(str(tmp_path / "src"), good=4, bad=3)
  out = str(tmp_path / "o")
  rc, stdout, _ = prep_utils.run_prepare(capsys, "--dataset", "ljspeech", "--src", src,
                                         "--out", out, "--workers", 1, "--val-size", 1)
  assert rc == 0, stdout
  counts = records.load_manifest(out)["counts"]
  assert counts["skipped"] == 3 and counts["skipped_by_reason"] == {"missing audio": 3}
  assert counts["rows"] == 7 and counts["kept"] == 4
  assert "skipped 3 (missing audio 3)" in stdout


def test_another_seed_draws_the_validation_split_again(tmp_path, capsys):
  """--seed changes the output: a re-run with another seed prepares again (it was taken for
  'already prepared' and kept the old validation clips)."""
  import prep_utils
  from test_data_prep import _small_corpus
  src = _small_corpus(str(tmp_path / "src"), good=6)
  out = str(tmp_path / "o")
  argv = ["--dataset", "ljspeech", "--src", src, "--out", out, "--workers", 1,
          "--val-size", 2]
  val = {}
  for seed in (0, 1, 2, 3):
    rc, stdout, _ = prep_utils.run_prepare(capsys, *argv, "--seed", seed)
    assert rc == 0 and stdout.startswith("prepared "), stdout
    recs = prep_utils.all_records(out)
    val[seed] = sorted(c for c, (split, _) in recs.items() if split == "validation")
    assert len(val[seed]) == 2 and len(recs) == 6
    assert records.load_manifest(out)["settings"]["seed"] == seed
  assert len({tuple(v) for v in val.values()}) > 1
  rc, stdout, _ = prep_utils.run_prepare(capsys, *argv, "--seed", 3)
  assert rc == 0 and stdout.startswith("already prepared"), stdout
