"""Small, fast checks of voice import/export and audio I/O details that the end-to-end tests
do not pin down (each found by a mutation audit: a change to the code that every other
test let through)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
HIGH = FIXTURES / "piper_tiny_high.onnx"        # ResBlock1, single speaker, 16 kHz
MULTI = FIXTURES / "piper_tiny_multi.onnx"      # ResBlock2, 3 speakers, 16 kHz


def _json(path):
  return json.loads(Path(str(path) + ".json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def multi():
  from vits_jax.voice import load_voice
  return load_voice(MULTI)


@pytest.fixture(scope="module")
def high():
  from vits_jax.voice import load_voice
  return load_voice(HIGH)


# ------------------------------------------------------------------ Piper .onnx.json
def test_piper_json_inference_is_the_voices_own_knobs(multi):
  """The exported `inference` section holds the voice's knobs (Piper's names), not the ones
  of the config it starts from: a voice whose knobs were changed (a fine-tune's config)
  speaks in Piper as in vits_jax."""
  from vits_jax.export import piper as export
  saved = dict(multi.defaults)
  try:
    multi.defaults = dict(noise_scale=0.31, noise_scale_w=0.42, length_scale=1.7)
    for base in (None, _json(MULTI)):
      config = export.voice_json(multi, base)
      assert config["inference"] == {"noise_scale": 0.31, "length_scale": 1.7,
                                     "noise_w": 0.42}
  finally:
    multi.defaults = saved


def test_piper_json_audio_and_language_come_from_the_voice(multi):
  """sample_rate is the model's even where the base config says otherwise; a missing
  quality and language are filled as Piper's trainer names them."""
  from vits_jax.export import piper as export
  base = _json(MULTI)
  base["audio"] = {"sample_rate": 22050}
  base.pop("language", None)
  config = export.voice_json(multi, base)
  assert config["audio"]["sample_rate"] == multi.sample_rate == 16000
  assert config["audio"]["quality"] == "low"            # ResBlock2 at 16 kHz
  assert config["language"] == {"code": "en_US", "family": "en", "region": "US"}
  assert config["num_speakers"] == 3
  assert config["speaker_id_map"] == {"alice": 0, "bob": 1, "carol": 2}


def test_piper_json_refuses_a_speaker_id_past_the_last(multi):
  """A base config whose speaker_id_map names id num_speakers (one past the last) is
  refused: Piper would index past the speaker table."""
  from vits_jax.export import piper as export
  saved = multi.speaker_names
  try:
    multi.speaker_names = {}
    base = _json(MULTI)
    base["speaker_id_map"] = {"alice": 0, "zed": 3}
    with pytest.raises(ValueError, match="out of range"):
      export.voice_json(multi, base)
    base["speaker_id_map"] = {"alice": 0, "zed": 2}
    assert export.voice_json(multi, base)["speaker_id_map"] == {"alice": 0, "zed": 2}
  finally:
    multi.speaker_names = saved


def test_piper_json_single_speaker_has_no_speaker_map(high):
  """A one-speaker voice is written with num_speakers 1 and an empty speaker_id_map, even
  from a base config that names speakers (Piper would offer a speaker it cannot use)."""
  from vits_jax.export import piper as export
  base = _json(HIGH)
  base["speaker_id_map"] = {"someone": 0}
  config = export.voice_json(high, base)
  assert config["num_speakers"] == 1 and config["speaker_id_map"] == {}


def test_piper_graph_reads_noise_w_from_scales(high):
  """scales = (noise_scale, length_scale, noise_w): with noise_scale 0 and noise_w > 0 the
  durations vary with the seed-free graph noise; with noise_w 0 they do not (and
  noise_scale alone never changes durations)."""
  import onnxruntime as ort
  from vits_jax.convert import torch_names
  from vits_jax.export import piper as export
  sd = torch_names.flax_to_torch(high.params, fold_weight_norm=True)
  model = export.build_graph(sd, export.hparams_of(high.model))
  # Expose the durations (Piper's alignment patch does the same).
  import onnx
  ceil, = [n for n in model.graph.node if n.op_type == "Ceil"]
  info = onnx.ValueInfoProto()
  info.name = ceil.output[0]
  model.graph.output.append(info)
  opts = ort.SessionOptions()
  opts.intra_op_num_threads = 1
  sess = ort.InferenceSession(model.SerializeToString(), opts,
                              providers=["CPUExecutionProvider"])
  ids = high.frontend.text_to_ids("Hello there, how are you today?")
  feed = {"input": np.asarray([ids], np.int64),
          "input_lengths": np.asarray([len(ids)], np.int64)}

  def durations(scales):
    feed["scales"] = np.asarray(scales, np.float32)
    return [sess.run(None, feed)[1].reshape(-1) for _ in range(4)]

  ref = durations((0.0, 1.0, 0.0))[0]
  for d in durations((1.0, 1.0, 0.0)):     # noise_scale only: the prior, not durations
    np.testing.assert_array_equal(d, ref)
  assert any(not np.array_equal(d, ref) for d in durations((0.0, 1.0, 1.0)))


def test_weight_normed_state_dict_exports_the_same_graph(multi):
  """`build_graph` folds `weight_g` / `weight_v` pairs as torch's weight_norm(dim=0) does:
  a state dict with the pairs gives the same waveform as the folded one."""
  import onnxruntime as ort
  from vits_jax.convert import torch_names
  from vits_jax.export import piper as export
  sd = torch_names.flax_to_torch(multi.params, fold_weight_norm=True)
  rng = np.random.RandomState(0)
  unfolded = dict(sd)
  modules = ["dec.conv_pre", "dec.ups.0", "dec.resblocks.0.convs.0",
             "flow.flows.0.enc.in_layers.0", "dp.cond", "dec.cond"]
  for m in modules:
    w = np.asarray(unfolded.pop(f"{m}.weight"), np.float64)
    scale = rng.uniform(0.3, 3.0, size=(w.shape[0],) + (1,) * (w.ndim - 1))
    unfolded[f"{m}.weight_v"] = (w * scale).astype(np.float32)
    unfolded[f"{m}.weight_g"] = np.sqrt(np.sum(w * w, axis=tuple(range(1, w.ndim)),
                                               keepdims=True)).astype(np.float32)
  hp = export.hparams_of(multi.model)
  ids = multi.frontend.text_to_ids("Hello there.")
  feed = {"input": np.asarray([ids], np.int64), "input_lengths": np.asarray([len(ids)]),
          "scales": np.asarray([0.0, 1.0, 0.0], np.float32), "sid": np.asarray([1])}
  outs = []
  for d in (sd, unfolded):
    sess = ort.InferenceSession(export.build_graph(d, hp).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    outs.append(sess.run(None, feed)[0])
  assert outs[0].shape == outs[1].shape
  assert np.abs(outs[0] - outs[1]).max() < 1e-4


# ------------------------------------------------------------------ converted-voice cache
def test_cache_entry_changes_with_the_file_size(tmp_path, monkeypatch):
  """An edited voice file names a new entry even where its modification time was kept
  (`cp -p`, `rsync -a`, an archive extracted over it)."""
  from vits_jax.convert import cache
  monkeypatch.setenv("VITS_JAX_XLA_CACHE", str(tmp_path / "cache"))
  f = tmp_path / "v.onnx"
  f.write_bytes(b"\0" * 100)
  os.utime(f, ns=(10**18, 10**18))
  first = cache.entry_path([f])
  f.write_bytes(b"\0" * 200)
  os.utime(f, ns=(10**18, 10**18))
  second = cache.entry_path([f])
  assert first != second
  # (one voice, one prefix: the new entry replaces the old one)
  assert first.name.split("-")[0] == second.name.split("-")[0]


# ------------------------------------------------------------------ audio out
def test_pcm16_full_scale_does_not_wrap():
  from vits_jax.files import pcm16
  got = pcm16(np.asarray([1.0, -1.0, 1.5, -1.5, 0.0, 0.5, -0.5], np.float32))
  assert got.dtype == np.dtype("<i2")
  assert got.tolist() == [32767, -32767, 32767, -32767, 0, 16384, -16384]


# ------------------------------------------------------------------ HF export config
def test_hf_config_keeps_the_sample_rate_and_knobs():
  from vits_jax.convert import source as source_lib
  from vits_jax.export import hf as hf_export
  src = source_lib.load_source(HIGH)
  knobs = {"noise_scale": 0.5, "noise_w": 0.7, "length_scale": 1.25}
  src.config.infer.noise_scale = knobs["noise_scale"]
  src.config.infer.noise_scale_w = knobs["noise_w"]
  src.config.infer.length_scale = knobs["length_scale"]
  config = hf_export.hf_config(src.config)
  assert config["sampling_rate"] == 16000 == src.config.data.sampling_rate
  assert config["noise_scale"] == pytest.approx(knobs["noise_scale"])
  assert config["noise_scale_duration"] == pytest.approx(knobs["noise_w"])
  assert config["speaking_rate"] == pytest.approx(1.0 / knobs["length_scale"])
  assert config["num_speakers"] == 1
  src.config.model.n_speakers = 4   # a multi-speaker ResBlock1 voice (VCTK's)
  assert hf_export.hf_config(src.config)["num_speakers"] == 4


# ------------------------------------------------------------------ text frontends
def test_piper_frontend_vocab_without_num_symbols():
  """Without num_symbols the vocabulary is the largest id in the map plus one (an id is an
  index into the embedding)."""
  from vits_jax.text.frontend import PiperFrontend
  config = _json(MULTI)
  top = max(i for ids in config["phoneme_id_map"].values() for i in ids)
  del config["num_symbols"]
  assert PiperFrontend(config).n_vocab == top + 1
  config["num_symbols"] = top + 10
  assert PiperFrontend(config).n_vocab == top + 10


def test_piper_punctuation_alone_has_nothing_to_say(multi):
  """Phonemes that are only punctuation and spaces (a raw phoneme block, a 'text' voice's
  marks) are NothingToSay, not a sentence of BOS/PAD/'?' ids decoded into noise."""
  from vits_jax.text.frontend import NothingToSay, PiperFrontend
  config = _json(MULTI)
  text_voice = dict(config, phoneme_type="text")
  for frontend, text in ((multi.frontend, "[[ ?! ]]"), (multi.frontend, "[[ , . ]]"),
                         (PiperFrontend(text_voice), "?!")):
    with pytest.raises(NothingToSay):
      frontend.text_to_sentence_ids(text)
    with pytest.raises(NothingToSay):
      frontend.text_to_ids(text)
  assert PiperFrontend(text_voice).text_to_ids("a?") == [1, 0, 14, 0, 13, 0, 2]


def test_typographic_punctuation_is_transliterated_as_unidecode():
  """Word processors' quotes and dashes keep their ASCII forms (unidecode's spellings):
  "don’t" must not become "dont" before phonemization."""
  from vits_jax.text import cleaners
  assert cleaners.convert_to_ascii("Don’t ‘quote’ “me” — ok… ‚x„ ‛y‟ 5′ 6″ «a» ‹b› 1–2 3−4") == (
      "Don't 'quote' \"me\" -- ok... ,x,, 'y\" 5' 6\" <<a>> <b> 1-2 3-4")


def test_spectrogram_refuses_audio_no_longer_than_its_padding():
  """torch's reflect padding needs pad < length: audio of exactly `pad` samples is refused
  (not reflected twice over into made-up frames)."""
  import jax.numpy as jnp
  from vits_jax import audio
  pad = (1024 - 256) // 2
  with pytest.raises(ValueError, match="too short"):
    audio.spectrogram(jnp.ones((1, pad)), 1024, 256, 1024)
  assert audio.spectrogram(jnp.ones((1, pad + 1)), 1024, 256, 1024).shape == (1, 1, 513)


def test_piper_export_force_over_a_json_folder_keeps_the_pair(tmp_path, high):
  """--force replaces files only: where NAME.onnx.json is a folder nothing is written, so
  the old NAME.onnx is not replaced by a model whose json could not be."""
  from vits_jax.export import piper as export
  onnx_path = tmp_path / "x.onnx"
  onnx_path.write_bytes(b"old")
  (tmp_path / "x.onnx.json").mkdir()
  with pytest.raises(FileExistsError, match="folder"):
    export.export_piper(high, onnx_path, force=True)
  assert onnx_path.read_bytes() == b"old"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["x.onnx", "x.onnx.json"]


# ------------------------------------------------------------------ Piper json checks
def test_piper_id_map_past_the_vocabulary_is_refused():
  """An id equal to n_vocab indexes past the embedding (JAX would clamp it silently into
  another phoneme's row): refused when the voice loads."""
  from vits_jax.convert import source as source_lib
  source_lib._check_id_map({"_": [0], "a": [9]}, 10, "v.onnx.json")
  with pytest.raises(ValueError, match="uses id 10"):
    source_lib._check_id_map({"_": [0], "a": [10]}, 10, "v.onnx.json")
  with pytest.raises(ValueError, match="uses id -1"):
    source_lib._check_id_map({"_": [0], "a": [-1]}, 10, "v.onnx.json")


def test_piper_json_without_a_sample_rate_is_22050():
  """Piper's trainer default, where an old config leaves audio.sample_rate out."""
  from vits_jax.convert import source as source_lib
  assert source_lib.piper_data({}, "v.onnx.json")["sampling_rate"] == 22050
  assert source_lib.piper_data({"audio": {"sample_rate": 16000}}, "v")["sampling_rate"] == 16000


# ------------------------------------------------------------------ audio in
def test_read_audio_check_gets_rate_and_seconds(tmp_path):
  """The `check` hook sees (sample rate, seconds) from the header, before decoding."""
  import soundfile as sf
  from vits_jax.files import read_audio
  path = tmp_path / "a.wav"
  sf.write(str(path), np.zeros(24000, np.float32), 16000, subtype="PCM_16")
  seen = []
  data, rate = read_audio(str(path), check=lambda r, s: seen.append((r, s)))
  assert seen == [(16000, 1.5)] and rate == 16000 and data.shape == (24000, 1)

  def refuse(r, s):
    raise ValueError(f"{s} s is too long")
  with pytest.raises(ValueError, match="1.5 s is too long"):
    read_audio(str(path), check=refuse)
