"""The loading layer: every voice source through `convert.source.load_source`, warm start from
all of them, config and params validation, and the prepared-data contract."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import traverse_util

from configs import presets, tiny
from vits_jax.convert import source as source_lib
from vits_jax.data import records
from vits_jax.models.synthesizer import build_synthesizer, param_shapes
from vits_jax.training import warm_start

FIXTURES = Path(__file__).parent / "fixtures"
MULTI = FIXTURES / "piper_tiny_multi.onnx"
HF = FIXTURES / "hf_tiny"
OFFICIAL = FIXTURES / "official_tiny" / "G_7.pth"


def _zeros(config):
  return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype),
                                param_shapes(build_synthesizer(config)))


def _n_leaves(tree):
  return len(traverse_util.flatten_dict(tree))


@pytest.mark.parametrize("path,kind,frontend", [
    (MULTI, "piper", "piper"), (HF, "hf", "hf"), (OFFICIAL, "official", "vits"),
    ("joe", "piper", "piper")])
def test_every_source_gives_config_params_frontend(path, kind, frontend):
  src = source_lib.load_source(path)
  assert src.kind == kind and src.frontend["kind"] == frontend
  want = traverse_util.flatten_dict(param_shapes(build_synthesizer(src.config)), sep="/")
  have = traverse_util.flatten_dict(src.params, sep="/")
  assert set(have) <= set(want)
  assert all(have[k].shape == want[k].shape for k in have)
  absent = set(want) - set(have)
  assert all(k.startswith(source_lib.INFERENCE_ONLY_ABSENT) for k in absent)
  import math
  assert src.config.data.hop_length == math.prod(src.config.model.upsample_rates)


def test_warm_start_from_joe_and_hf():
  """`train.init_from` takes what load_voice takes: the bundled voice by name, HF folders."""
  params, name, notes = warm_start.load_source_params("joe")
  assert name.startswith("piper ") and notes == []
  target = _zeros(presets.get_config("medium"))
  merged, copied, kept = warm_start.merge_params(target, params, name)
  assert copied == _n_leaves(params) and kept == _n_leaves(target) - copied
  flat = traverse_util.flatten_dict(merged, sep="/")
  src = traverse_util.flatten_dict(params, sep="/")
  k = "dec/conv_pre/weight"
  np.testing.assert_array_equal(flat[k], src[k])

  hf = source_lib.load_source(HF)
  params, name, _ = warm_start.load_source_params(str(HF))
  merged, copied, kept = warm_start.merge_params(_zeros(hf.config), params, name)
  assert copied == _n_leaves(params) > 0 and kept == 0   # HF folders hold enc_q too
  # A source made for other data is said: joe (22.05 kHz, Piper's phonemes) on data
  # prepared at 16 kHz with the official symbols.
  config = presets.get_config("medium")
  config.data.frontend = "piper"
  assert warm_start.load_source_params("joe", config)[2] == []
  config.data.sampling_rate, config.data.frontend = 16000, "vits"
  notes = warm_start.load_source_params("joe", config)[2]
  assert len(notes) == 2 and "22050 Hz and the data is at 16000 Hz" in notes[0], notes
  assert "data.frontend='vits'" in notes[1], notes


def test_warm_start_errors_name_the_source(tmp_path):
  with pytest.raises(FileNotFoundError, match="train.init_from: voice not found"):
    warm_start.load_source_params(str(tmp_path / "nothing.onnx"))
  (tmp_path / "x.txt").write_text("hi")
  with pytest.raises(ValueError, match="train.init_from: .*is not a voice"):
    warm_start.load_source_params(str(tmp_path / "x.txt"))


def test_check_params_names_the_problem():
  config = tiny.get_config("micro")
  params = _zeros(config)
  assert source_lib.check_params(params, config, "w") is not None
  flat = traverse_util.flatten_dict(params, sep="/")
  bad = dict(flat)
  bad["dec/conv_pre/weight"] = np.zeros((1, 2, 3), np.float32)
  with pytest.raises(ValueError, match=r"w: .*wrong shape: dec/conv_pre/weight"):
    source_lib.check_params(traverse_util.unflatten_dict(bad, sep="/"), config, "w")
  extra = dict(flat, **{"dec/extra/weight": np.zeros(3, np.float32)})
  with pytest.raises(ValueError, match="unexpected: dec/extra/weight"):
    source_lib.check_params(traverse_util.unflatten_dict(extra, sep="/"), config, "w")
  less = {k: v for k, v in flat.items() if not k.startswith("enc_q/")}
  with pytest.raises(ValueError, match="missing: enc_q"):
    source_lib.check_params(traverse_util.unflatten_dict(less, sep="/"), config, "w")
  source_lib.check_params(traverse_util.unflatten_dict(less, sep="/"), config, "w",
                          inference_only=True)
  less = {k: v for k, v in flat.items() if not k.startswith("flow/")}
  with pytest.raises(ValueError, match="missing: flow/"):
    source_lib.check_params(traverse_util.unflatten_dict(less, sep="/"), config, "w",
                            inference_only=True)


@pytest.mark.parametrize("field,value,message", [
    ("upsample_rates", 8, "model.upsample_rates must be a list"),
    ("hidden_channels", "192", "model.hidden_channels must be"),
    ("hidden_channels", 0, "model.hidden_channels must be a positive integer"),
    ("resblock", "3", "model.resblock must be '1' or '2'"),
    ("resblock_dilation_sizes", [[1, 3]], "model.resblock_dilation_sizes must hold one list"),
    ("n_heads", 5, "model.hidden_channels 16 is not divisible by n_heads 5"),
    ("use_sdp", "yes", "model.use_sdp must be true or false"),
])
def test_hparams_are_validated(field, value, message):
  model = dict(source_lib.load_source(MULTI).config.model.to_dict())
  model[field] = value
  with pytest.raises(ValueError, match=f"here: {message}"):
    source_lib.config_from_hparams(model, where="here")


def _copy(tmp_path, *files):
  for f in files:
    shutil.copy(f, tmp_path / Path(f).name)
  return tmp_path


def test_piper_json_with_bad_audio_is_one_error(tmp_path):
  _copy(tmp_path, MULTI, str(MULTI) + ".json")
  meta = json.loads((tmp_path / "piper_tiny_multi.onnx.json").read_text())
  meta["audio"] = "16000"
  (tmp_path / "piper_tiny_multi.onnx.json").write_text(json.dumps(meta))
  with pytest.raises(ValueError, match=r"onnx\.json: 'audio' must be an object"):
    source_lib.load_source(tmp_path / "piper_tiny_multi.onnx")


def test_official_config_that_does_not_match_its_checkpoint(tmp_path):
  _copy(tmp_path, OFFICIAL, OFFICIAL.parent / "config.json")
  hps = json.loads((tmp_path / "config.json").read_text())
  hps["model"]["filter_channels"] = hps["model"]["filter_channels"] * 2
  (tmp_path / "config.json").write_text(json.dumps(hps))
  with pytest.raises(ValueError, match=r"G_7.pth \(with .*config.json\): parameters do not "
                                       r"match its config \(wrong shape: "):
    source_lib.load_source(tmp_path / "G_7.pth")
  hps["model"]["filter_channels"] //= 2
  hps["data"]["hop_length"] = 200
  (tmp_path / "config.json").write_text(json.dumps(hps))
  with pytest.raises(ValueError, match="hop_length 200 is not the product"):
    source_lib.load_source(tmp_path / "G_7.pth")


def test_hf_config_with_scalar_upsample_rates(tmp_path):
  _copy(tmp_path, *HF.iterdir())
  cfg = json.loads((tmp_path / "config.json").read_text())
  cfg["upsample_rates"] = 8
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match=r"config.json: upsample_rates must be a list"):
    source_lib.load_source(tmp_path)


# --------------------------------------------------------------------------- data contract
def _manifest(**over):
  m = {"sample_rate": 22050, "n_speakers": 0,
       "frontend": {"kind": "vits", "n_vocab": 178, "add_blank": True,
                    "cleaners": ["english_cleaners2"]}}
  front = over.pop("frontend", {})
  m.update(over)
  m["frontend"].update(front)
  return m


def test_manifest_that_fits_passes():
  records.check_manifest(_manifest(), tiny.get_config(), "d")
  records.check_manifest({"splits": {}}, tiny.get_config(), "d")   # nothing recorded


@pytest.mark.parametrize("over,message", [
    (dict(sample_rate=16000), "sample rate 16000 Hz vs data.sampling_rate 22050"),
    (dict(frontend={"kind": "piper"}), "frontend 'piper' vs data.frontend 'vits'"),
    (dict(frontend={"add_blank": False}), "add_blank False vs data.add_blank True"),
    (dict(frontend={"cleaners": ["basic_cleaners"]}), "cleaners"),
    (dict(frontend={"n_vocab": 256}), "256 token ids but model.n_vocab is 178"),
    (dict(n_speakers=109), "109 speakers but the model has one"),
])
def test_manifest_mismatch_is_one_error(over, message):
  with pytest.raises(ValueError, match="d: the prepared data does not match the config: .*"
                     + message.replace("(", r"\(")):
    records.check_manifest(_manifest(**over), tiny.get_config(), "d")


def test_a_fine_tune_on_data_read_by_another_frontend_says_how_to_prepare_it():
  """configs/finetune.py (init_from joe, a Piper voice) on clips prepared with the official
  frontend: one line that says to prepare them with --frontend piper (the hints led from
  data.frontend to add_blank to a list of cleaners no flag can set, and could not work)."""
  from configs import finetune
  with pytest.raises(ValueError, match=r"prepared with the 'vits' frontend, and "
                     r"train.init_from=joe reads text with the 'piper' one: prepare them "
                     r"with data_prep/prepare.py --frontend piper"):
    records.check_manifest(_manifest(), finetune.get_config(), "d")


def test_more_speakers_than_the_table():
  config = tiny.get_config("micro")   # 3 speakers
  records.check_manifest(_manifest(n_speakers=3, frontend={"n_vocab": 256}), config, "d")
  with pytest.raises(ValueError, match="4 speakers but the model has 3"):
    records.check_manifest(_manifest(n_speakers=4), config, "d")


def test_an_official_run_folder_loads_its_latest_checkpoint_by_step(tmp_path):
  """A folder of G_*.pth loads the highest step, not the last name in string order
  (G_9000 sorts after G_10000)."""
  import shutil
  shutil.copy(OFFICIAL.parent / "config.json", tmp_path / "config.json")
  for step in (9, 10, 100):
    shutil.copy(OFFICIAL, tmp_path / f"G_{step}.pth")
  assert source_lib.load_source(tmp_path).step == 100
  (tmp_path / "G_100.pth").unlink()
  assert source_lib.load_source(tmp_path).step == 10
