"""prepare.py --tfds over the real TFDS `ljspeech` and `vctk` builders, mocked.

`tfds.testing.mock_data` makes examples from each builder's real feature spec without
downloading anything: `download_and_prepare` becomes a no-op and `as_data_source` (the
ArrayRecord path) or `as_dataset` (the tf.data path, for a TFRecord copy) serve random
examples, deterministically. Its random audio is 5-49 samples long, which every length filter
rejects, so the generator's audio and text are replaced here (`_controlled`): tones whose
length is drawn from the same seeded stream (mostly 0.6-1.2 s, some too short or too long),
and now and then an empty text. The expected outcome of every example is worked out from the
same generator.

Needs `pip install -r requirements-tfds.txt` (CI installs it); skipped without it.
"""

import collections
import os
import sys

import numpy as np
import pytest
import soundfile as sf

tfds = pytest.importorskip(
    "tensorflow_datasets",
    reason="tensorflow-datasets is not installed (pip install -r requirements-tfds.txt)")
from tensorflow_datasets.testing import mocking  # pylint: disable=wrong-import-position

import prep_utils  # noqa: E402  (tests/ is on sys.path)
from data_prep import prepare, tfds_reader  # pylint: disable=wrong-import-position
from vits_jax.data import loader, records  # pylint: disable=wrong-import-position
from vits_jax.text import get_frontend  # pylint: disable=wrong-import-position

BUILDERS = {"ljspeech": "ljspeech", "vctk": "vctk/mic1"}
N = 30  # examples per mocked builder
MAX_SECONDS = 1.5  # --max-seconds of these runs; LONG clips exceed it
SHORT, LONG = 0.3, 1.8
ARGS = ["--workers", 1, "--val-size", 3, "--max-seconds", MAX_SECONDS]


@pytest.fixture
def controlled(monkeypatch):
  """mock_data's generator with speech-like lengths: tones, some too short or too long."""
  original = mocking.RandomFakeGenerator._generate_random_obj  # pylint: disable=protected-access

  def generate(self, feature, tensor_info, rng):
    if isinstance(feature, tfds.features.Audio):
      u = rng.random()
      seconds = SHORT if u < 0.1 else LONG if u < 0.2 else 0.6 + 0.6 * rng.random()
      rate = feature.sample_rate
      freq = 150.0 + 500.0 * rng.random()
      t = np.arange(int(seconds * rate)) / rate
      return np.round(12000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)
    if isinstance(feature, tfds.features.Text) and rng.random() < 0.1:
      return ""
    return original(self, feature, tensor_info, rng)

  monkeypatch.setattr(mocking.RandomFakeGenerator, "_generate_random_obj", generate)


def _mock(n=N, **kw):
  return tfds.testing.mock_data(num_examples=n, policy=tfds.testing.MockPolicy.USE_CODE, **kw)


def _examples(name, n=N, data_source=True):
  """What mock_data serves: a data source is indexed (seed + i), tf.data iterates one rng."""
  gen = mocking.RandomFakeGenerator(tfds.builder(name).info.features, n)
  return [gen[i] for i in range(n)] if data_source else list(gen)


def _s(v):
  return v.decode() if isinstance(v, bytes) else str(v)


def _expected(dataset, examples, speaker_names=None):
  """{id: (speaker, text, skip reason or None, speech)} as the pipeline must see them."""
  rate = {"ljspeech": 22050, "vctk": 48000}[dataset]
  out = {}
  for ex in examples:
    speech = np.asarray(ex["speech"])
    if dataset == "ljspeech":
      speaker = "ljspeech"
      text = _s(ex["text_normalized"]).strip() or _s(ex["text"]).strip()
      reason = None if text else "empty transcript"
    else:
      speaker = speaker_names[int(ex["speaker"])]
      text = _s(ex["text"]).strip()
      reason = None if text else "no transcript"
    seconds = len(speech) / rate
    if reason is None and seconds < 0.5:
      reason = "too short"
    elif reason is None and seconds > MAX_SECONDS:
      reason = "too long"
    out[_s(ex["id"])] = (speaker, text, reason, speech)
  return out


_run = prep_utils.run_prepare
_all_records = prep_utils.all_records


_peak_hz = prep_utils.peak_hz


def _prepare_mocked(tmp_path, capsys, dataset, *extra, n=N, **mock_kw):
  out = str(tmp_path / f"tfds_{dataset}")
  with _mock(n, **mock_kw):
    rc, stdout, err = _run(capsys, "--dataset", dataset, "--tfds", "--data-dir",
                           tmp_path / "tfds", "--out", out, *ARGS, *extra)
  return rc, stdout, err, out


def manifest_validation(out):
  return records.load_manifest(out)["counts"]["validation"]


@pytest.mark.parametrize("dataset", ["ljspeech", "vctk"])
def test_builder_end_to_end(dataset, controlled, tmp_path, capsys):
  name = BUILDERS[dataset]
  with _mock():
    names = list(tfds.builder(name).info.features["speaker"].names) if dataset == "vctk" else None
    want = _expected(dataset, _examples(name), names)
  rc, stdout, err, out = _prepare_mocked(tmp_path, capsys, dataset)
  assert rc == 0, err
  good = {cid: w for cid, w in want.items() if w[2] is None}
  bad = {cid: w[2] for cid, w in want.items() if w[2] is not None}
  # The mocked data exercises every kind of skip, and leaves enough to train on.
  kinds = {"too short", "too long", "empty transcript" if dataset == "ljspeech"
           else "no transcript"}
  assert set(bad.values()) == kinds and len(good) >= N // 2
  assert len(stdout.strip().splitlines()) == 1
  # Validation: 3 clips, but never a speaker's only one (the mocked VCTK speakers have
  # one or two clips each, and only so many clips are held back for it while streaming).
  speakers = collections.Counter(w[0] for w in good.values())
  n_val = 3 if dataset == "ljspeech" else manifest_validation(out)
  assert 1 <= n_val <= 3
  assert stdout.startswith(f"prepared {len(good)} clips (train {len(good) - n_val}, "
                           f"validation {n_val}")

  manifest = records.load_manifest(out, checksums=True)
  assert manifest["dataset"] == dataset and manifest["sample_rate"] == 22050
  assert manifest["settings"]["source"] == f"tfds:{tmp_path / 'tfds'}"
  counts = {k: manifest["counts"][k] for k in ("rows", "kept", "skipped", "train", "validation")}
  assert counts == {"rows": N, "kept": len(good), "skipped": len(bad),
                    "train": len(good) - n_val, "validation": n_val}
  assert manifest["counts"]["skipped_by_reason"] == dict(collections.Counter(bad.values()))
  assert {s["id"]: s["reason"] for s in manifest["skipped"]} == bad
  if dataset == "vctk":
    # Known before streaming: the builder's 110 speakers in sorted order.
    assert len(names) == 110 and manifest["n_speakers"] == 110
    assert manifest["speakers"] == {s: i for i, s in enumerate(sorted(names))}
  else:
    assert manifest["speakers"] == {"ljspeech": 0} and manifest["n_speakers"] == 0

  frontend = get_frontend("vits")
  recs = _all_records(out)
  assert sorted(recs) == sorted(good)
  assert sum(split == "validation" for split, _ in recs.values()) == n_val
  trained = collections.Counter(rec["speaker"] for split, rec in recs.values()
                                if split == "train")
  assert all(trained[rec["speaker"]] for split, rec in recs.values()), speakers
  for cid, (_, rec) in recs.items():
    speaker, text, _, speech = good[cid]
    assert rec["text"] == text and rec["speaker"] == speaker
    assert rec["sid"] == manifest["speakers"][speaker]
    np.testing.assert_array_equal(rec["tokens"], frontend.text_to_ids(text))
    if dataset == "ljspeech":  # already at 22050 Hz: int16 in, the same int16 out
      np.testing.assert_array_equal(rec["audio"], speech)
    else:  # 48 kHz resampled to 22050: the length scales, the tone stays
      assert len(rec["audio"]) == int(np.ceil(len(speech) * 22050 / 48000))
      assert abs(_peak_hz(rec["audio"], 22050) - _peak_hz(speech, 48000)) < 2.0

  # The TFDS output loads like the folder path's: shuffled bucketed batches, evaluation.
  train = loader.make_train_loader(out, 4, 0, process_index=0, process_count=1,
                                   audio_multiple=512)
  batch = next(iter(train))
  assert batch["audio"].shape[0] == 4 and batch["text"].shape[0] == 4
  by_len = {(len(r["audio"]), len(r["tokens"])): r for _, r in recs.values()}
  for row in range(4):
    rec = by_len[(int(batch["audio_lengths"][row]), int(batch["text_lengths"][row]))]
    assert batch["sid"][row] == rec["sid"]
    np.testing.assert_array_equal(batch["text"][row, :len(rec["tokens"])], rec["tokens"])
    pcm = batch["audio"][row, :len(rec["audio"])]
    if pcm.dtype.kind == "f":  # float batches carry int16 / 32768
      pcm = np.round(pcm * 32768.0).astype(np.int16)
    np.testing.assert_array_equal(pcm, rec["audio"])
  val = loader.make_eval_loader(out, 2, process_index=0, process_count=1)
  assert sum(float(b["weight"].sum()) for b in val) == n_val


def test_same_clips_as_the_folder_path(controlled, tmp_path, capsys):
  """The mocked VCTK written out as a VCTK-Corpus-0.92 folder prepares to the same clips."""
  with _mock():
    names = list(tfds.builder("vctk/mic1").info.features["speaker"].names)
    examples = _examples("vctk/mic1")
  src = tmp_path / "VCTK-Corpus-0.92"
  folder_id = {}
  for k, ex in enumerate(examples):
    spk = names[int(ex["speaker"])]
    cid = f"{spk}_{k:03d}"
    folder_id[_s(ex["id"])] = cid
    os.makedirs(src / "wav48_silence_trimmed" / spk, exist_ok=True)
    sf.write(src / "wav48_silence_trimmed" / spk / f"{cid}_mic1.flac", ex["speech"], 48000,
             subtype="PCM_16")
    text = _s(ex["text"]).strip()
    if text:  # the builder's empty text is a missing transcript file
      os.makedirs(src / "txt" / spk, exist_ok=True)
      (src / "txt" / spk / f"{cid}.txt").write_text(text + "\n")
  rc, _, err, out = _prepare_mocked(tmp_path, capsys, "vctk")
  assert rc == 0, err
  folder_out = str(tmp_path / "folder")
  rc, _, err = _run(capsys, "--dataset", "vctk", "--src", src, "--out", folder_out, *ARGS)
  assert rc == 0, err

  tfds_recs, folder_recs = _all_records(out), _all_records(folder_out)
  assert sorted(folder_id[c] for c in tfds_recs) == sorted(folder_recs)
  for cid, (_, rec) in tfds_recs.items():
    other = folder_recs[folder_id[cid]][1]
    assert (rec["speaker"], rec["text"]) == (other["speaker"], other["text"])
    np.testing.assert_array_equal(rec["tokens"], other["tokens"])
    np.testing.assert_array_equal(rec["audio"], other["audio"])
  skips = lambda m: sorted((s["reason"]) for s in m["skipped"])
  assert skips(records.load_manifest(out)) == skips(records.load_manifest(folder_out))


def test_streams_through_the_worker_pool(controlled, tmp_path, capsys, monkeypatch):
  """--workers 2 gives the shards of --workers 1, and reads the split only as far ahead as
  the pool's window: the examples are never all held."""
  n = 64
  real_read, real_results = prepare.read_clips, prepare._results  # pylint: disable=protected-access
  reads, consumed, ahead = [0], [0], []

  class Counted:
    def __init__(self, clips):
      self.clips = clips
      assert isinstance(clips, tfds_reader.TfdsClips) and clips.source == "data_source"

    def __len__(self):
      return len(self.clips)

    def speaker_map(self):
      return self.clips.speaker_map()

    def __iter__(self):
      for clip in self.clips:
        reads[0] += 1
        yield clip

  def results(clips, settings, workers):
    for res in real_results(clips, settings, workers):
      ahead.append(reads[0] - consumed[0])
      consumed[0] += 1
      yield res

  monkeypatch.setattr(prepare, "read_clips", lambda args: Counted(real_read(args)))
  monkeypatch.setattr(prepare, "_results", results)
  outs = {}
  for workers in (1, 2):
    reads[0] = consumed[0] = 0
    ahead.clear()
    rc, _, err, out = _prepare_mocked(tmp_path / f"w{workers}", capsys, "vctk", "--workers",
                                      workers, n=n)
    assert rc == 0, err
    assert reads[0] == consumed[0] == n
    window = 1 if workers == 1 else prepare.CHUNKS_IN_FLIGHT_PER_WORKER * workers * prepare.CHUNK
    assert max(ahead) <= window < n
    outs[workers] = records.load_manifest(out)
  strip = lambda m: [{k: v for k, v in e.items() if k != "file"}
                     for e in records.manifest_files(m)]   # names carry a run tag
  assert strip(outs[1]) == strip(outs[2])
  assert outs[1]["skipped"] == outs[2]["skipped"] and outs[2]["workers"] == 2


def _no_data_source(self, *args, **kwargs):
  raise NotImplementedError(f"{self.name} was prepared as TFRecord")


def test_tfrecord_copy_reads_through_tf_data(controlled, tmp_path, capsys, monkeypatch):
  """A copy prepared as TFRecord has no data source: read with as_dataset, which needs
  TensorFlow; without it, one error line."""
  with _mock():
    want = _expected("ljspeech", _examples("ljspeech", data_source=False))
  good = {cid: w for cid, w in want.items() if w[2] is None}
  rc, stdout, err, out = _prepare_mocked(tmp_path, capsys, "ljspeech",
                                         as_data_source_fn=_no_data_source)
  assert rc == 0, err
  manifest = records.load_manifest(out)
  assert manifest["counts"]["rows"] == N and manifest["counts"]["kept"] == len(good)
  assert {s["id"]: s["reason"] for s in manifest["skipped"]} == {
      cid: w[2] for cid, w in want.items() if w[2] is not None}
  recs = _all_records(out)
  assert {cid: rec["text"] for cid, (_, rec) in recs.items()} == {
      cid: w[1] for cid, w in good.items()}
  for cid, (_, rec) in recs.items():
    np.testing.assert_array_equal(rec["audio"], good[cid][3])

  monkeypatch.setitem(sys.modules, "tensorflow", None)  # import fails
  rc, _, err, out = _prepare_mocked(tmp_path / "no_tf", capsys, "ljspeech",
                                    as_data_source_fn=_no_data_source)
  assert rc == 2 and err.strip() == "error: " + tfds_reader.MISSING
  assert not os.path.exists(os.path.join(out, records.MANIFEST))


def test_download_failure_is_one_error_line(tmp_path, capsys, monkeypatch):
  """No copy in --data-dir and no way to make one (here: no write access) is one line, and
  nothing is left in the system's temporary folder (a builder for data not prepared yet made
  an empty `tmp*tfds` folder there per run)."""
  import tempfile  # pylint: disable=import-outside-toplevel
  from unittest import mock  # pylint: disable=import-outside-toplevel
  system_tmp = tmp_path / "system_tmp"
  system_tmp.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))

  def refuse(self, **kwargs):
    raise PermissionError(f"403 Forbidden: no write access to {self.data_dir}\nmore detail")

  with _mock(), mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare", refuse):
    rc, _, err = _run(capsys, "--dataset", "vctk", "--tfds", "--data-dir", tmp_path / "ro",
                      "--out", tmp_path / "o")
  assert rc == 2 and err.count("\n") == 1, err
  assert err.startswith("error: TFDS could not download and prepare vctk/mic1 in ")
  assert "PermissionError: 403 Forbidden" in err and "more detail" in err
  assert not os.listdir(system_tmp) and tempfile.tempdir == str(system_tmp)

  def need_module(self, **kwargs):   # as TFDS wraps a missing module while encoding
    try:
      raise ModuleNotFoundError("No module named 'pydub'", name="pydub")
    except ModuleNotFoundError as e:
      raise RuntimeError("Failed to encode example:\n{'speech': ...}") from e

  with _mock(), mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare",
                                  need_module):
    rc, _, err = _run(capsys, "--dataset", "ljspeech", "--tfds", "--data-dir",
                      tmp_path / "d", "--out", tmp_path / "o")
  assert rc == 2 and err.count("\n") == 1, err
  assert "it needs the module 'pydub': pip install -r requirements-tfds.txt" in err, err


def test_tfds_shards_train(controlled, tmp_path, capsys):
  """The TFDS path's output trains like the folder path's: train.py, one step, micro config
  (one step compiles one length bucket's program; the compile cache is shared with the
  training tests)."""
  import json
  import subprocess
  import train_utils as tu
  rc, _, err, out = _prepare_mocked(tmp_path, capsys, "ljspeech")
  assert rc == 0, err
  proc = tu.run_train(tmp_path / "run", out, "--config.train.num_steps=1", check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = tu.train_rows(tmp_path / "run")
  assert sorted(rows) == [1]
  for row in rows.values():
    assert all(np.isfinite(v) for k, v in row.items() if k.startswith("loss/"))
  assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["dir"] == str(out)


def test_what_tfds_reads_before_a_download_imports():
  """A first `--tfds` run asks the builder for its code path before it downloads: TFDS
  4.9.10 imports `importlib_resources` there but declares it only for Python < 3.9, so
  without requirements-tfds.txt's pin every first run stopped with ModuleNotFoundError
  (the mocked runs above never get there)."""
  for name in BUILDERS:
    path = tfds.builder_cls(name).code_path
    assert path is not None and str(path).endswith(".py") and os.path.isfile(path)
