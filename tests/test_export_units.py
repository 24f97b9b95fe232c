"""Fast checks of the voice exporters (`vits_jax.export`) that the end-to-end export tests
let through in a mutation audit: the fields other runtimes read from an export's configs,
held against files those runtimes' own code wrote (the transformers-saved `hf_tiny`, the
official-format `official_tiny`) or against the voice itself, and the ONNX header."""

import json
import shutil
from pathlib import Path

import onnx
import pytest

from test_export_piper import FIXTURES, TINY

HF = FIXTURES / "hf_tiny"
OFFICIAL = FIXTURES / "official_tiny" / "G_7.pth"
# What transformers writes into config.json that is not a VitsConfig setting.
HF_BOOKKEEPING = {"dtype", "torch_dtype", "pad_token_id", "transformers_version"}


def _json_of_fixture(name):
  """The .onnx.json the Piper fixture `name` ships with."""
  return json.loads(Path(str(TINY[name]) + ".json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def multi():
  from vits_jax.voice import load_voice
  return load_voice(TINY["multi"])


# ------------------------------------------------------------------ HF
def test_hf_config_is_the_one_transformers_wrote(tmp_path):
  """Every VitsConfig field of the transformers-saved fixture comes back equal: a wrong
  activation, window size, epsilon or dropout loads silently in transformers and speaks
  wrongly there."""
  from vits_jax.export import export_voice
  export_voice(HF, "hf", tmp_path / "hf")
  got = json.loads((tmp_path / "hf" / "config.json").read_text(encoding="utf-8"))
  want = json.loads((HF / "config.json").read_text(encoding="utf-8"))
  for key in sorted(set(want) - HF_BOOKKEEPING):
    assert key in got, key
    assert got[key] == want[key], key


def test_hf_tokenizer_config_keeps_the_sources_settings(tmp_path):
  """tokenizer_config.json holds the source's own add_blank / normalize / language / pad
  and unk tokens (transformers' VitsTokenizer reads text with them), here with settings
  that differ from the fixture's and transformers' defaults."""
  from vits_jax.export import export_voice
  src = tmp_path / "src"
  shutil.copytree(HF, src)
  tok = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
  # (the second as MMS's: its id-0 letter 'k' is the pad token)
  for case in (dict(normalize=False, language="deu"),
               dict(normalize=True, pad_token="k", unk_token="k")):
    tok2 = {k: v for k, v in tok.items() if k != "language"}
    tok2.update(case)
    (src / "tokenizer_config.json").write_text(json.dumps(tok2), encoding="utf-8")
    out = tmp_path / f"hf_{case['normalize']}"
    export_voice(src, "hf", out)
    got = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert got["normalize"] is case["normalize"]
    assert got.get("language") == case.get("language")
    assert got["add_blank"] is tok["add_blank"] is True
    assert got["pad_token"] == case.get("pad_token", tok["pad_token"])
    assert got["unk_token"] == case.get("unk_token", tok["unk_token"])
    assert got["tokenizer_class"] == "VitsTokenizer"
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    assert vocab == json.loads((HF / "vocab.json").read_text(encoding="utf-8"))


# ------------------------------------------------------------------ official
def test_official_config_keeps_every_field_of_an_official_source(tmp_path):
  """Each data / model / train field of an official config.json comes back equal: the
  official code builds `SynthesizerTrn(n_vocab, spec_channels, ..., **hps.model)` and its
  data loader from them (a lost gin_channels or add_blank is a model that does not load
  or reads text wrongly)."""
  from vits_jax.export import export_voice
  export_voice(OFFICIAL, "official", tmp_path / "of")
  got = json.loads((tmp_path / "of" / "config.json").read_text(encoding="utf-8"))
  want = json.loads((OFFICIAL.parent / "config.json").read_text(encoding="utf-8"))
  for section in ("train", "data", "model"):
    for key, value in want[section].items():
      assert got[section].get(key, "<missing>") == value, f"{section}.{key}"
  assert got["data"]["n_vocab"] >= 1


def test_official_config_of_a_workdir_keeps_its_loss_weights(tmp_path):
  """A run's loss weights land under the official names (c_mel the mel weight, c_kl the
  KL weight), so the official train.py continues with the same losses."""
  from ml_collections import ConfigDict
  from vits_jax.convert import source as source_lib
  from vits_jax.export import official
  src = source_lib.load_source(TINY["multi"])
  config = ConfigDict(src.config.to_dict())
  config.loss = ConfigDict({"mel": 45.0, "kl": 1.5})
  hps = official.official_config(config)
  assert hps["train"]["c_mel"] == 45.0 and hps["train"]["c_kl"] == 1.5
  ckpt = official._checkpoint({"w": 0}, {"learning_rate": 1e-3})   # pylint: disable=protected-access
  assert ckpt["learning_rate"] == ckpt["optimizer"]["param_groups"][0]["lr"] == 1e-3


# ------------------------------------------------------------------ Piper
def test_piper_json_fixes_every_field_piper_reads_from_a_stale_base(multi):
  """A base config (e.g. the voice's original .onnx.json, or one edited by hand) that
  disagrees with the model: every field Piper's runtime reads is the model's own in the
  export (`voice_json`: "every field Piper reads filled or overridden from the model")."""
  from vits_jax.export import piper as export
  want = export.voice_json(multi)
  base = _json_of_fixture("multi")
  base["audio"]["sample_rate"] = 22050
  base["espeak"]["voice"] = "de"
  base["phoneme_type"] = "text"
  base["phoneme_id_map"] = {"a": [1]}
  base["num_speakers"] = 1
  base["num_symbols"] = 12
  base["speaker_id_map"] = {"zed": 0}
  base["hop_length"] = 1
  got = export.voice_json(multi, base)
  assert got["audio"]["sample_rate"] == multi.sample_rate == 16000
  assert got["espeak"]["voice"] == multi.frontend.voice == "en-us"
  assert got["phoneme_type"] == "espeak"
  assert got["phoneme_id_map"] == want["phoneme_id_map"] == {
      p: list(i) for p, i in multi.frontend.id_map.items()}
  assert got["num_speakers"] == 3 and got["num_symbols"] == 256 and got["hop_length"] == 256
  assert got["speaker_id_map"] == {"alice": 0, "bob": 1, "carol": 2}


def test_piper_json_read_by_piper_runtime(tmp_path, multi):
  """piper-tts's own config reader takes the exported json as the model's: sample rate,
  speakers, espeak voice, id map and the inference defaults."""
  piper = pytest.importorskip("piper")
  from vits_jax.export import piper as export
  config = export.voice_json(multi, _json_of_fixture("multi"))
  pc = piper.config.PiperConfig.from_dict(config)
  assert pc.sample_rate == 16000 and pc.num_speakers == 3
  assert pc.espeak_voice == "en-us"
  assert pc.phoneme_id_map == {p: list(i) for p, i in multi.frontend.id_map.items()}
  assert pc.noise_scale == pytest.approx(multi.defaults["noise_scale"])
  assert pc.noise_w_scale == pytest.approx(multi.defaults["noise_scale_w"])
  assert pc.length_scale == pytest.approx(multi.defaults["length_scale"])


@pytest.fixture(scope="module")
def high_graph():
  """The Piper graph of the single-speaker tiny voice, built in memory."""
  from vits_jax.convert import torch_names
  from vits_jax.export import piper as export
  from vits_jax.voice import load_voice
  voice = load_voice(TINY["high"])
  return voice, export.build_graph(
      torch_names.flax_to_torch(voice.params, fold_weight_norm=True),
      export.hparams_of(voice.model))


def test_piper_graph_header_is_opset_15_at_its_ir_version(high_graph):
  """Opset 15 with the IR version onnx assigns to it (8), as the docstring promises: a
  newer IR is refused by the older onnxruntime builds Piper ships with."""
  _, model = high_graph
  assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [15]
  assert model.ir_version == onnx.helper.find_min_ir_version_for(
      [onnx.helper.make_opsetid("", 15)]) == 8


def test_piper_graph_speaks_at_least_one_frame(high_graph):
  """Durations that all ceil to 0 (length_scale 0) still give one frame, as the official
  `y_lengths = clamp_min(sum(w_ceil), 1)`: one hop of samples, not an empty or failing
  run."""
  from test_export_piper import _feed, _session, _with_alignment
  voice, model = high_graph
  hop = 1
  for u in voice.model.upsample_rates:
    hop *= int(u)
  out, durations = _session(_with_alignment(model)).run(
      None, _feed([[1, 5, 9, 14, 2]], scales=(0.0, 0.0, 0.0)))
  assert durations.max() == 0
  assert out.shape == (1, 1, 1, hop)
