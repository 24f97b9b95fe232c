"""The grain input pipeline over prepared shards (vits_jax/data).

The prepared directories here are written directly with data_prep's shard writer and random
clips (no phonemizer needed: the loader only sees token ids and samples).
"""

import os

import numpy as np
import pytest

from data_prep import writer
from vits_jax.data import buckets as buckets_lib
from vits_jax.data import loader, records


def _write_prepared(out, n_train=37, n_val=7, n_speakers=3, seed=0, shard_bytes=40_000):
  """Random clips (1..60 tokens, 500..9000 samples) in several small shards per split."""
  rng = np.random.default_rng(seed)
  os.makedirs(out, exist_ok=True)
  clips = {}
  splits = {}
  for split, n in (("train", n_train), ("validation", n_val)):
    w = writer.SplitWriter(str(out), split, shard_bytes)
    for i in range(n):
      n_samples = int(rng.integers(500, 9000))
      # Text length loosely follows audio length, as in speech.
      n_tok = int(np.clip(n_samples // 150 + rng.integers(-5, 6), 1, 70))
      tokens = rng.integers(1, 100, n_tok).astype(np.int32)
      audio = rng.integers(-32768, 32767, n_samples).astype(np.int16)
      clip_id = f"{split}_{i:03d}"
      sid = int(rng.integers(0, n_speakers))
      w.add(clip_id, f"s{sid}", sid, f"text {i}", tokens, audio)
      clips[clip_id] = (tokens, audio, sid)
    splits[split] = w.finish()
  manifest = {"format": records.FORMAT, "splits": splits,
              "counts": {"train": n_train, "validation": n_val}}
  records.write_json_atomic(os.path.join(out, records.MANIFEST), manifest)
  return clips


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  out = tmp_path_factory.mktemp("prepared")
  clips = _write_prepared(out)
  return str(out), clips


def _train(data_dir, **kw):
  kw = {"batch_size": 4, "seed": 0, "process_index": 0, "process_count": 1,
        "audio_multiple": 512, **kw}
  return loader.make_train_loader(data_dir, **kw)


def _row_ids(batch, clips):
  """Identifies each row of a batch by matching its audio against the clips."""
  by_key = {(len(a), int(a[0]), int(a[-1])): cid for cid, (_, a, _) in clips.items()}
  ids = []
  for row, n in zip(batch["audio"], batch["audio_lengths"]):
    pcm = row[:n].astype(np.int64)
    ids.append(by_key[(int(n), int(pcm[0]), int(pcm[-1]))])
  return ids


def test_batches_hold_the_records_padded(prepared):
  data_dir, clips = prepared
  ld = _train(data_dir)
  assert ld.dataset.__len__() > 10**12  # streams forever by default
  for i in range(5):
    batch = ld.dataset[i]
    assert set(batch) == {"text", "text_lengths", "audio", "audio_lengths", "sid", "weight"}
    assert batch["text"].dtype == np.int32 and batch["audio"].dtype == np.int16
    assert (batch["text"].shape[1], batch["audio"].shape[1]) in ld.buckets
    for b, cid in enumerate(_row_ids(batch, clips)):
      tokens, audio, sid = clips[cid]
      n_t, n_a = batch["text_lengths"][b], batch["audio_lengths"][b]
      np.testing.assert_array_equal(batch["text"][b, :n_t], tokens)
      assert not batch["text"][b, n_t:].any() and not batch["audio"][b, n_a:].any()
      np.testing.assert_array_equal(batch["audio"][b, :n_a], audio)   # int16 PCM as stored
      assert batch["sid"][b] == sid and n_a == len(audio)


def test_host_share_defaults_to_jax_process(prepared):
  data_dir, _ = prepared
  default = loader.make_train_loader(data_dir, 4, 0, audio_multiple=512)  # jax: 1 process
  explicit = _train(data_dir)
  assert default.host_batch_size == 4
  for key, value in explicit.dataset[3].items():
    np.testing.assert_array_equal(default.dataset[3][key], value)


def test_same_seed_same_batches_in_same_order(prepared):
  data_dir, _ = prepared
  per_epoch = _train(data_dir).batches_per_epoch
  n = 2 * per_epoch + 3  # crosses two epoch boundaries

  def run(seed):
    it = iter(_train(data_dir, seed=seed))
    return [next(it) for _ in range(n)]

  a, b, c = run(7), run(7), run(8)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert any(not np.array_equal(x["audio_lengths"], y["audio_lengths"]) for x, y in zip(a, c))
  # Epochs are reshuffled: epoch 1 is not a replay of epoch 0.
  assert any(not np.array_equal(a[i]["audio_lengths"], a[i + per_epoch]["audio_lengths"])
             for i in range(per_epoch))
  # ... both ways: other clips share a batch (each bucket's clips are shuffled), and the
  # batches come in an order that is not their buckets' (the batches are shuffled).
  _, clips = prepared
  groups = [{frozenset(_row_ids(batch, clips)) for batch in a[e * per_epoch:(e + 1) * per_epoch]}
            for e in (0, 1)]
  assert groups[0] != groups[1]
  shapes = [batch["audio"].shape[1] for batch in a[:per_epoch]]
  assert len(set(shapes)) > 1 and shapes not in (sorted(shapes), sorted(shapes)[::-1]), shapes


def test_epoch_uses_each_clip_once_and_never_mixes_buckets(prepared):
  data_dir, clips = prepared
  ld = _train(data_dir)
  n_train = sum(cid.startswith("train") for cid in clips)
  assert ld.batches_per_epoch == n_train // 4 and ld.excluded == 0
  seen = []
  for i in range(ld.batches_per_epoch):
    batch = ld.dataset[i]
    t_max, a_max = batch["text"].shape[1], batch["audio"].shape[1]
    assert (t_max, a_max) in ld.buckets
    assert batch["text_lengths"].max() <= t_max and batch["audio_lengths"].max() <= a_max
    seen += _row_ids(batch, clips)
  assert len(seen) == len(set(seen)) == ld.batches_per_epoch * 4
  assert n_train - len(seen) < 4  # only the last remainder is left out


def test_buckets_in_order_are_the_shapes_the_stream_meets_first(prepared):
  """The loop compiles these ahead; they must be exactly the shapes of batches [start, stop)
  in order of first appearance."""
  data_dir, _ = prepared
  ld = _train(data_dir)
  assert len(ld.buckets) > 1
  per_epoch = ld.batches_per_epoch
  for start, stop in ((0, 1), (0, 3), (per_epoch - 1, per_epoch + 2), (5, 3 * per_epoch)):
    want = []
    for i in range(start, stop):
      batch = ld.dataset[i]
      shape = (batch["text"].shape[1], batch["audio"].shape[1])
      if shape not in want:
        want.append(shape)
    assert ld.buckets_in_order(start, stop) == want, (start, stop)


def test_iterator_state_restores_the_exact_stream(prepared):
  data_dir, _ = prepared
  ld = _train(data_dir, num_threads=3, prefetch=5)
  it = iter(ld)
  k = ld.batches_per_epoch + 2
  for _ in range(k):
    next(it)
  state = it.get_state()
  assert ld.position(state) == (1, 2)
  expected = [next(it) for _ in range(4)]
  resumed = _train(data_dir, num_threads=1, prefetch=2).iterator(state)  # a fresh process
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_hosts_read_disjoint_halves_of_the_same_global_batches(prepared):
  data_dir, clips = prepared
  single = _train(data_dir, batch_size=4)
  hosts = [_train(data_dir, batch_size=4, process_index=p, process_count=2) for p in (0, 1)]
  assert hosts[0].host_batch_size == 2
  for i in range(single.batches_per_epoch + 1):
    whole = single.dataset[i]
    parts = [h.dataset[i] for h in hosts]
    assert parts[0]["audio"].shape == parts[1]["audio"].shape == (2, whole["audio"].shape[1])
    ids = _row_ids(parts[0], clips) + _row_ids(parts[1], clips)
    assert ids == _row_ids(whole, clips)
  with pytest.raises(ValueError, match="multiple"):
    _train(data_dir, batch_size=3, process_index=0, process_count=2)


def test_eval_loader_covers_every_clip_once_in_a_fixed_order(prepared):
  data_dir, clips = prepared
  train = _train(data_dir)
  ev = loader.make_eval_loader(data_dir, 4, buckets=train.buckets, process_index=0,
                               process_count=1, audio_multiple=512)
  first = list(ev)
  second = list(ev)
  real = []
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a["audio"], b["audio"])
    ids = _row_ids(a, clips)
    real += [cid for cid, w in zip(ids, a["weight"]) if w == 1]
  val_ids = sorted(cid for cid in clips if cid.startswith("validation"))
  assert sorted(real) == val_ids and len(real) == len(set(real))
  assert sum(float(b["weight"].sum()) for b in first) == len(val_ids)
  assert len(first) == len(ev) and len(ev) >= -(-len(val_ids) // 4)


def test_default_buckets_hold_every_clip_and_grow():
  rng = np.random.default_rng(1)
  lengths = np.stack([rng.integers(1, 200, 500), rng.integers(1000, 300_000, 500)], 1)
  bks = buckets_lib.default_buckets(lengths, num_buckets=4, audio_multiple=256,
                                    min_audio_len=8192)
  assert 1 <= len(bks) <= 4
  assert all(a % 256 == 0 and a >= 8192 for _, a in bks)
  ids = buckets_lib.assign_buckets(lengths, bks)
  assert (ids >= 0).all()
  for (t, a), b in zip(lengths, ids):  # the smallest bucket that fits
    assert t <= bks[b][0] and a <= bks[b][1]
    assert b == 0 or t > bks[b - 1][0] or a > bks[b - 1][1]
  # Exactly at a bucket's bounds fits it; one more token or sample needs the next.
  bks = [(8, 4096), (16, 8192)]
  np.testing.assert_array_equal(buckets_lib.assign_buckets(
      [[8, 4096], [8, 4097], [9, 4096], [16, 8192], [17, 8192], [16, 8193]], bks),
      [0, 1, 1, 1, -1, -1])


def test_user_buckets_are_validated_and_oversized_clips_excluded(prepared):
  data_dir, _ = prepared
  with pytest.raises(ValueError, match="grow"):
    _train(data_dir, buckets=[(64, 8192), (32, 4096)])
  ld = _train(data_dir, buckets=[(40, 4096), (80, 6144)])
  lengths = loader.PreparedSplit(data_dir).lengths
  too_big = int(((lengths[:, 0] > 80) | (lengths[:, 1] > 6144)).sum())
  assert too_big > 0 and ld.excluded == too_big
  for i in range(ld.batches_per_epoch):
    assert ld.dataset[i]["audio"].shape[1] in (4096, 6144)


def test_truncated_or_missing_files_are_not_trusted(tmp_path):
  _write_prepared(tmp_path, n_train=9, n_val=2)
  manifest = records.load_manifest(str(tmp_path), checksums=True)
  shard = os.path.join(tmp_path, manifest["splits"]["train"]["shards"][0]["file"])
  with open(shard, "r+b") as f:
    f.truncate(os.path.getsize(shard) - 10)
  with pytest.raises(ValueError, match="bytes"):
    _train(str(tmp_path))
  # Same size, different bytes: only the checksum notices.
  _write_prepared(tmp_path, n_train=9, n_val=2)
  with open(shard, "r+b") as f:
    f.seek(100)
    byte = f.read(1)
    f.seek(100)
    f.write(bytes([byte[0] ^ 0xFF]))
  _train(str(tmp_path))  # sizes match
  with pytest.raises(ValueError, match="sha256"):
    _train(str(tmp_path), checksums=True)
  os.remove(os.path.join(tmp_path, records.MANIFEST))
  with pytest.raises(FileNotFoundError, match="prepare.py"):
    _train(str(tmp_path))


def _flip(path, offset):
  with open(path, "r+b") as f:
    f.seek(offset)
    byte = f.read(1)
    f.seek(offset)
    f.write(bytes([byte[0] ^ 0xFF]))


def test_shard_corrupted_without_size_change_is_one_line_naming_it(tmp_path):
  """Bit rot that keeps a shard's size passes the manifest's size check; reading it is then a
  one-line ValueError naming the shard and the fix, not array_record's RuntimeError."""
  _write_prepared(tmp_path, n_train=9, n_val=2)
  shards = records.load_manifest(str(tmp_path))["splits"]["train"]["shards"]
  assert len(shards) == 2 and shards[0]["records"] > 0
  second = os.path.join(tmp_path, shards[1]["file"])
  # The footer (read when the shard is opened): the loader cannot even start.
  _flip(second, os.path.getsize(second) // 2)
  with pytest.raises(ValueError) as err:
    _train(str(tmp_path))
  message = str(err.value)
  assert message.startswith(f"{second}: cannot read the prepared data"), message
  assert message.endswith(f"re-run data_prep/prepare.py --out {tmp_path} --force")
  assert "Riegeli" in message and "\n" not in message
  # A record's chunk (read when its batch is made): the batch names the shard and record.
  _write_prepared(tmp_path, n_train=9, n_val=2)
  _flip(second, 300)
  ld = _train(str(tmp_path), num_epochs=1)
  with pytest.raises(ValueError) as err:
    for i in range(len(ld)):
      ld.dataset[i]
  message = str(err.value)
  first_of_second = shards[0]["records"]
  assert message.startswith(f"{second} (record {first_of_second}): cannot read the prepared "
                            "data"), message
  assert "--force" in message and "\n" not in message
  # A lengths table that is not one.
  _write_prepared(tmp_path, n_train=9, n_val=2)
  lengths = records.load_manifest(str(tmp_path))["splits"]["train"]["lengths"]["file"]
  path = os.path.join(tmp_path, lengths)
  size = os.path.getsize(path)
  with open(path, "wb") as f:
    f.write(b"x" * size)
  with pytest.raises(ValueError, match=f"{lengths}: cannot read the prepared data"):
    _train(str(tmp_path))

# ------------------------------------------------------------------ HF voice weights
def test_truncated_or_garbage_hf_safetensors_is_one_line_value_error(tmp_path):
  """An interrupted download of an HF voice's model.safetensors is named, not a traceback."""
  import shutil

  from vits_jax.convert import hf

  fixture = os.path.join(os.path.dirname(__file__), "fixtures", "hf_tiny")
  weights = open(os.path.join(fixture, "model.safetensors"), "rb").read()
  for name, data in (("truncated", weights[:len(weights) // 2]), ("garbage", weights[:1000]),
                     ("empty", b""), ("random", os.urandom(4096))):
    folder = tmp_path / name
    shutil.copytree(fixture, folder)
    (folder / "model.safetensors").write_bytes(data)
    with pytest.raises(ValueError) as err:
      hf.load_hf(str(folder))
    message = str(err.value)
    assert message.startswith(f"{folder / 'model.safetensors'}: corrupt or truncated "
                              "safetensors file (SafetensorError: "), message
    assert "\n" not in message


def test_clips_shorter_than_the_training_window_are_counted(prepared):
  """train.py warns of training clips shorter than `train.segment_size` (their windows take
  in the padding after them), counting them from the split's lengths."""
  import ml_collections
  from vits_jax.training import input_pipeline
  data_dir, clips = prepared
  lengths = loader.PreparedSplit(data_dir, "train").lengths[:, 1]
  config = ml_collections.ConfigDict({"data": {"dir": data_dir, "sampling_rate": 22050},
                                      "train": {"segment_size": int(lengths.min())}})
  assert input_pipeline.short_clips_note(config) is None
  config.train.segment_size = int(np.median(lengths)) + 1
  short = int((lengths < config.train.segment_size).sum())
  assert 0 < short < len(lengths)
  assert input_pipeline.short_clips_note(config).startswith(
      f"{short} of {len(lengths)} training clips are shorter than train.segment_size "
      f"({config.train.segment_size} samples, ")


@pytest.mark.parametrize("edit,problem", [
    ({"frontend": "vits"}, "'frontend' is not an object"),
    ({"frontend": {"kind": "vits", "n_vocab": [178]}}, "'frontend.n_vocab' is [178]"),
    ({"frontend": {"kind": "vits", "cleaners": 5}}, "'frontend.cleaners' is not a list"),
    # a speaker id past n_speakers: the voice trained on it could not be loaded
    ({"n_speakers": 3, "speakers": {"a": 0, "b": 1, "c": 2, "d": 7}},
     "'speakers' holds ids outside 0..2 ({'d': 7})"),
    ({"n_speakers": -1}, "'n_speakers' is -1"),
])
def test_a_manifest_with_a_damaged_frontend_is_one_error(prepared, tmp_path, edit, problem):
  """A hand-damaged frontend entry was a traceback in train.py (AttributeError); a speaker
  table out of step with n_speakers trained a voice that would not load."""
  import json
  import shutil
  data_dir, _ = prepared
  copy = tmp_path / "d"
  shutil.copytree(data_dir, copy)
  manifest = json.loads((copy / records.MANIFEST).read_text())
  manifest.update(edit)
  (copy / records.MANIFEST).write_text(json.dumps(manifest))
  with pytest.raises(ValueError, match="is damaged") as e:
    records.load_manifest(str(copy))
  assert problem in str(e.value)
