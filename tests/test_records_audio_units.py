"""Mutation audit of the prepared-data format (vits_jax/data/records.py, buckets.py), the
spectrogram wrappers (vits_jax/audio.py) and the file helpers (vits_jax/files.py): each test
pins down a behaviour that an off-by-one or a dropped check changed without any other test
noticing."""

import hashlib
import json
import os
import struct
import threading

import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

from configs import base
from vits_jax import audio, files
from vits_jax.data import buckets as buckets_lib
from vits_jax.data import records


# ------------------------------------------------------------------------------ audio
def test_spectrogram_from_config_uses_the_window_length():
  """win_length != filter_length (a 50 ms window in a 1024-point FFT): the config wrapper
  passes the window length through, not the FFT size."""
  data = base.get_config().data
  data.win_length = 800
  y = jnp.asarray(np.random.default_rng(0).uniform(-0.5, 0.5, (1, 4096)), jnp.float32)
  got = np.asarray(audio.spectrogram_from_config(y, data))
  want = np.asarray(audio.spectrogram(y, 1024, 256, 800))
  np.testing.assert_array_equal(got, want)
  assert not np.allclose(got, np.asarray(audio.spectrogram(y, 1024, 256, 1024)), rtol=1e-3)


def test_dynamic_range_compression_takes_its_clip_value():
  x = jnp.array([1e-7, 1e-4, 1e-2, 1.0])
  np.testing.assert_allclose(np.asarray(audio.dynamic_range_compression(x, clip_val=1e-3)),
                             np.log([1e-3, 1e-3, 1e-2, 1.0]), rtol=1e-6)


# ---------------------------------------------------------------------------- records
def test_file_names_are_the_documented_format():
  assert records.shard_name("train", 0, 3) == "train-00000-of-00003.array_record"
  assert records.shard_name("validation", 2, 3, "r1") == "validation-r1-00002-of-00003.array_record"
  assert records.lengths_name("train") == "train-lengths.npy"
  assert records.lengths_name("validation", "r1") == "validation-r1-lengths.npy"


def test_record_round_trip_and_audio_must_be_one_channel():
  tokens = np.array([1, 70000, -3], np.int64)    # (needs 32 bits)
  pcm = np.array([-32768, 0, 32767, 5], np.int16)
  rec = records.decode_record(records.encode_record("a", "s", 7, "hi", tokens, pcm))
  assert (rec["id"], rec["speaker"], rec["sid"], rec["text"]) == ("a", "s", 7, "hi")
  np.testing.assert_array_equal(rec["tokens"], tokens)
  np.testing.assert_array_equal(rec["audio"], pcm)
  assert rec["tokens"].dtype == np.int32 and rec["audio"].dtype == np.int16
  with pytest.raises(ValueError, match="1-D int16"):
    records.encode_record("a", "s", 0, "hi", tokens, np.zeros((4, 2), np.int16))
  with pytest.raises(ValueError, match="1-D int16"):
    records.encode_record("a", "s", 0, "hi", tokens, np.zeros(4, np.float32))


def test_sha256_file_is_the_files_sha256_across_chunks(tmp_path):
  blob = np.random.default_rng(0).bytes(10_001)
  path = tmp_path / "f"
  path.write_bytes(blob)
  want = hashlib.sha256(blob).hexdigest()
  assert records.sha256_file(str(path)) == want
  assert records.sha256_file(str(path), chunk=1000) == want   # a last, partial chunk
  assert records.file_entry(str(path)) == {"file": "f", "bytes": 10_001, "sha256": want}


def test_write_json_atomic_leaves_only_the_file(tmp_path):
  path = tmp_path / "m.json"
  records.write_json_atomic(str(path), {"a": [1, "é"]})
  assert json.loads(path.read_text("utf-8")) == {"a": [1, "é"]}
  assert os.listdir(tmp_path) == ["m.json"]
  # A value json cannot write fails midway: the old file stands whole, no temporary left.
  with pytest.raises(TypeError):
    records.write_json_atomic(str(path), {"a": 1, "b": object()})
  assert json.loads(path.read_text("utf-8")) == {"a": [1, "é"]}
  assert os.listdir(tmp_path) == ["m.json"]


def test_write_json_atomic_replaces_by_rename(tmp_path, monkeypatch):
  """The new content arrives by os.replace (one rename), never by a copy a reader could
  see half-written."""
  path = tmp_path / "m.json"
  path.write_text("{}")
  calls = []
  real = os.replace
  monkeypatch.setattr(os, "replace", lambda a, b: (calls.append((a, b)), real(a, b))[1])
  records.write_json_atomic(str(path), {"x": 1})
  assert len(calls) == 1 and calls[0][1] == str(path)
  assert json.loads(path.read_text()) == {"x": 1}


def _manifest(tmp_path, file_name):
  entry = {"file": file_name, "bytes": 0, "sha256": ""}
  return {"format": records.FORMAT,
          "splits": {"train": {"shards": [entry], "lengths": dict(entry)}}}


def test_a_manifest_naming_a_file_outside_its_folder_is_damaged(tmp_path):
  (tmp_path / "x.array_record").write_bytes(b"")
  records.write_json_atomic(str(tmp_path / records.MANIFEST),
                            _manifest(tmp_path, "x.array_record"))
  records.load_manifest(str(tmp_path))   # (a well-formed one passes)
  for name in ("../x.array_record", "sub/x.array_record", ""):
    records.write_json_atomic(str(tmp_path / records.MANIFEST), _manifest(tmp_path, name))
    with pytest.raises(ValueError, match="is damaged"):
      records.load_manifest(str(tmp_path))


def test_a_vocabulary_one_id_past_the_model_is_refused():
  from configs import tiny
  config = tiny.get_config()
  n = int(config.model.n_vocab)
  manifest = {"frontend": {"kind": "vits", "n_vocab": n,
                           "add_blank": bool(config.data.add_blank),
                           "cleaners": list(config.data.text_cleaners)}}
  records.check_manifest(manifest, config, "d")
  manifest["frontend"]["n_vocab"] = n + 1
  with pytest.raises(ValueError, match=f"{n + 1} token ids but model.n_vocab is {n}"):
    records.check_manifest(manifest, config, "d")


# ---------------------------------------------------------------------------- buckets
def test_round_up_keeps_exact_multiples():
  assert buckets_lib.round_up(4096, 2048) == 4096
  assert buckets_lib.round_up(4097, 2048) == 6144
  assert buckets_lib.round_up(1, 8) == 8
  assert buckets_lib.default_buckets(np.array([[8, 4096]]), num_buckets=1,
                                     audio_multiple=2048) == [(8, 4096)]


# ------------------------------------------------------------------------------ files
def _wav(tmp_path, n=1000, extra_chunk=b""):
  """A 16-bit mono WAV, with `extra_chunk` (a raw chunk) before its data chunk."""
  pcm = (np.arange(n) % 200 - 100).astype("<i2").tobytes()
  fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, 16000, 32000, 2, 16)
  data = struct.pack("<4sI", b"data", len(pcm)) + pcm
  body = b"WAVE" + fmt + extra_chunk + data
  path = tmp_path / "a.wav"
  path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
  return path


def test_a_wav_one_sample_short_is_cut_short(tmp_path):
  path = _wav(tmp_path)
  assert files.read_audio(str(path))[0].shape == (1000, 1)
  path.write_bytes(path.read_bytes()[:-1])   # (half a sample gone)
  assert files.wav_shortfall(str(path)) == (2000, 1999)
  with pytest.raises(files.CutShortError, match="promises 2000 bytes of samples, the file "
                     "holds 1999"):
    files.read_audio(str(path))


def test_an_odd_chunk_before_the_samples_is_skipped_with_its_pad_byte(tmp_path):
  odd = struct.pack("<4sI", b"LIST", 5) + b"INFOx" + b"\0"   # 5 bytes + 1 pad byte
  path = _wav(tmp_path, extra_chunk=odd)
  assert files.read_audio(str(path))[0].shape == (1000, 1)
  path.write_bytes(path.read_bytes()[:-100])
  assert files.wav_shortfall(str(path)) == (2000, 1900)


def _mp3(tmp_path, id3_padding=0):
  """A 2 s MP3 (its encoder writes a Xing header), after an ID3v2 tag of `id3_padding`
  bytes when given."""
  y = (0.5 * np.sin(np.arange(44100) * 0.05)).astype(np.float32)
  sf.write(tmp_path / "plain.mp3", y, 22050, format="MP3")
  blob = (tmp_path / "plain.mp3").read_bytes()
  if id3_padding:
    size = bytes([(id3_padding >> s) & 0x7F for s in (21, 14, 7, 0)])   # syncsafe
    blob = b"ID3\x04\x00\x00" + size + b"\0" * id3_padding + blob
  path = tmp_path / "a.mp3"
  path.write_bytes(blob)
  return path


def test_an_mp3_cut_short_is_refused(tmp_path):
  path = _mp3(tmp_path)
  assert files.read_audio(str(path))[0].shape[0] == 44100
  path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
  with pytest.raises(files.CutShortError, match="header promises 44100 samples"):
    files.read_audio(str(path))


@pytest.mark.parametrize("kept", [0.6, 0.9, 0.999])
def test_an_ogg_cut_before_its_last_page_is_cut_short_and_an_empty_one_is_not(tmp_path, kept):
  """libsndfile finds no length in an Ogg Vorbis file cut before its last page and decodes
  nothing, without an error: the page walk says so. A whole file with no samples is fine."""
  wave = (0.5 * np.sin(np.arange(44100) * 0.05)).astype(np.float32)
  whole = tmp_path / "whole.ogg"
  sf.write(whole, wave, 22050, format="OGG", subtype="VORBIS")
  assert files.read_audio(str(whole))[0].shape == (44100, 1)
  blob = whole.read_bytes()
  cut = tmp_path / "cut.ogg"
  cut.write_bytes(blob[:int(len(blob) * kept)])
  with pytest.raises(files.CutShortError, match="cut short"):
    files.read_audio(str(cut))
  empty = tmp_path / "empty.ogg"
  sf.write(empty, np.zeros(0, np.float32), 22050, format="OGG", subtype="VORBIS")
  assert files.read_audio(str(empty))[0].shape == (0, 1)


def test_an_mp3s_frame_count_is_found_after_an_id3_tag(tmp_path):
  path = _mp3(tmp_path, id3_padding=1000)
  assert files._mp3_counts_its_frames(str(path))
  assert files._mp3_counts_its_frames(__import__("io").BytesIO(path.read_bytes()))
  path.write_bytes(b"ID3\x04\x00\x00\x00\x00\x07\x68" + b"\0" * 1000 + b"\xff" * 300)
  assert not files._mp3_counts_its_frames(str(path))


def test_a_header_that_makes_no_sense_says_so_in_plain_words(tmp_path):
  """A WAV whose sample rate is 0: libsndfile's words for it name its internal SF_INFO."""
  fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, 0, 0, 2, 16)
  body = b"WAVE" + fmt + struct.pack("<4sI", b"data", 4) + b"\0" * 4
  path = tmp_path / "a.wav"
  path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
  with pytest.raises(ValueError) as e:
    files.read_audio(str(path))
  assert str(e.value) == f"cannot read {path}: its header is damaged, or it is not audio"


def test_piped_audio_over_the_limit_is_refused(tmp_path, monkeypatch):
  monkeypatch.setattr(files, "MAX_PIPED_AUDIO_BYTES", 100)
  fifo = tmp_path / "pipe"
  os.mkfifo(fifo)

  def feed(n):
    with open(fifo, "wb") as f:
      f.write(b"\0" * n)

  for n, refused in ((101, True), (100, False)):
    writer = threading.Thread(target=feed, args=(n,))
    writer.start()
    try:
      with pytest.raises(ValueError) as e:   # 100 zero bytes are no audio either
        files.read_audio(str(fifo))
    finally:
      writer.join()
    assert ("holds more than" in str(e.value)) == refused, e.value


def test_writable_folder_without_create_makes_nothing(tmp_path):
  target = tmp_path / "a" / "b"
  files.writable_folder(str(target), "--out", create=False)
  assert not (tmp_path / "a").exists()
  (tmp_path / "f").write_text("")
  with pytest.raises(ValueError, match="is not a folder"):
    files.writable_folder(str(tmp_path / "f" / "b"), "--out", create=False)
  files.writable_folder(str(target), "--out")
  assert target.is_dir() and os.listdir(target) == []


def test_one_line_escapes_every_control_character():
  assert files.one_line("plain name.wav") == "plain name.wav"
  assert files.one_line("a\nb") == "a\\nb"
  assert files.one_line("a\x1b[31mb") == "a\\u001b[31mb"
  assert files.one_line("a\x7fb") == "a\\u007fb"          # DEL, which JSON leaves as is
  assert files.one_line("tab\tand\x7f") == "tab\\tand\\u007f"


# -------------------------------------------------------------------------- xla_cache
def test_a_jax_cache_the_user_configured_stands(tmp_path, monkeypatch):
  import jax
  from vits_jax import xla_cache
  before = jax.config.jax_compilation_cache_dir
  monkeypatch.setenv("VITS_JAX_XLA_CACHE", str(tmp_path / "ours"))
  assert xla_cache.cache_dir() == str(tmp_path / "ours")
  try:
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "users"))
    xla_cache.enable()
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "users")
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
  monkeypatch.setenv("VITS_JAX_XLA_CACHE", "")
  assert xla_cache.cache_dir() == ""
