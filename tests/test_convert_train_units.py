"""Fast checks that a mutation audit of the checkpoint converters (torch checkpoints, HF and
Piper voices, voice sources) and of the training code (the step's discriminator state,
metrics, resume warnings, the validation batch) found missing: each test kills a small
change to the code that every other test let through. Expectations are written out
independently of the code under test (torch's byte-order record, what the HF `VitsConfig`
fields mean, the shapes a Piper graph stores, plain arithmetic, stand-in models)."""

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
HIGH = FIXTURES / "piper_tiny_high.onnx"


# ------------------------------------------------------------------ torch checkpoints
def _as_big_endian(src: Path, dst: Path) -> None:
  """The zip checkpoint `src` as a big-endian machine's `torch.save` writes it: the
  `byteorder` record says "big" and every storage holds big-endian values (`data.pkl` is
  the same: pickle's own numbers have a fixed byte order)."""
  with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
    for info in zin.infolist():
      data = zin.read(info.filename)
      if info.filename.endswith("/byteorder"):
        data = b"big"
      elif "/data/" in info.filename:
        data = np.frombuffer(data, "<f4").astype(">f4").tobytes()   # (float32 storages only)
      zout.writestr(info.filename, data)


def test_a_big_endian_torch_checkpoint_reads_the_same_values(tmp_path):
  from vits_jax.convert import official_pth
  emb = (np.arange(12, dtype=np.float32) - 5.5).reshape(4, 3) / 7
  proj = np.linspace(-2, 3, 10, dtype=np.float32).reshape(2, 5, 1)
  little = tmp_path / "little.pth"
  official_pth.save_torch_checkpoint(little, {"model": {"enc_p.emb.weight": emb,
                                                        "enc_p.proj.weight": proj},
                                              "iteration": 3})
  big = tmp_path / "G_3.pth"
  _as_big_endian(little, big)
  with zipfile.ZipFile(big) as z:   # (the file really is the other byte order)
    assert z.read("archive/byteorder") == b"big"
    assert z.read("archive/data/0") == emb.astype(">f4").tobytes()
  state, iteration = official_pth.load_official_checkpoint(big)
  assert iteration == 3
  np.testing.assert_array_equal(state["enc_p.emb.weight"], emb)
  np.testing.assert_array_equal(state["enc_p.proj.weight"], proj)


def test_a_checkpoints_own_json_is_its_config(tmp_path):
  """Without a `config.json` beside it, `G_5.pth` reads its hparams from `G_5.json`; a
  `config.json` there comes first."""
  from vits_jax.convert import official_pth
  ckpt = tmp_path / "G_5.pth"
  ckpt.write_bytes(b"")
  (tmp_path / "G_5.json").write_text("{}")
  assert official_pth.find_config(ckpt) == tmp_path / "G_5.json"
  (tmp_path / "config.json").write_text("{}")
  assert official_pth.find_config(ckpt) == tmp_path / "config.json"
  (tmp_path / "config.json").unlink()
  (tmp_path / "G_5.json").unlink()
  with pytest.raises(FileNotFoundError, match="no config.json next to"):
    official_pth.find_config(ckpt)


# ------------------------------------------------------------------ HF VitsConfig
def _hf_config(**changes):
  config = json.loads((FIXTURES / "hf_tiny" / "config.json").read_text())
  config.update(changes)
  for key in [k for k, v in changes.items() if v is None]:
    del config[key]
  return config


def test_hf_config_fields_mean_what_transformers_says():
  """`spectrogram_bins` is n_fft // 2 + 1 (VitsConfig's default 513 is n_fft 1024, MMS's
  window); `speaking_rate` divides the duration (length_scale = 1 / rate); with no
  `speaker_embedding_size` a voice has no speaker conditioning (transformers' default 0)."""
  from vits_jax.convert import hf
  config = hf.config_from_hf(_hf_config(spectrogram_bins=513, speaking_rate=2.0))
  assert config.data.filter_length == 1024 and config.data.win_length == 1024
  assert config.infer.length_scale == 0.5
  config = hf.config_from_hf(_hf_config(spectrogram_bins=33, speaking_rate=0.8,
                                        speaker_embedding_size=None))
  assert config.data.filter_length == 64 and config.data.win_length == 64
  assert config.infer.length_scale == pytest.approx(1.25)
  assert config.model.gin_channels == 0


def test_hf_folder_reads_add_blank_from_its_tokenizer_and_prefers_safetensors(tmp_path):
  from vits_jax.convert import hf, source
  folder = tmp_path / "hf"
  shutil.copytree(FIXTURES / "hf_tiny", folder)
  tok = json.loads((folder / "tokenizer_config.json").read_text())
  tok["add_blank"] = False
  (folder / "tokenizer_config.json").write_text(json.dumps(tok))
  src = source.load_source(folder)
  assert src.config.data.add_blank is False and src.frontend["add_blank"] is False
  # A folder holding both files (a re-save): model.safetensors is read, as transformers does.
  (folder / "pytorch_model.bin").write_bytes(b"not a checkpoint")
  assert hf.weights_file(folder) == str(folder / "model.safetensors")
  config, params = hf.load_hf(str(folder))
  assert config.data.add_blank is False


# ------------------------------------------------------------------ Piper graphs
def test_piper_hyperparameters_are_read_off_the_shapes_not_assumed():
  """Heads = hidden / the relative embedding's key width; the FFN kernel and width are the
  conv's; dilations are the convs' own (the fixtures happen to use VITS's 2 heads, kernel
  3, dilations 1 3 5: other voices differ)."""
  import onnx
  from vits_jax.convert import piper
  config = json.loads((FIXTURES / "piper_tiny_high.onnx.json").read_text())
  sd, attrs = piper._graph_state_dict(onnx.load(str(HIGH)).graph)   # pylint: disable=protected-access
  model = piper._hyperparameters(sd, attrs, config, "high")   # pylint: disable=protected-access
  assert (model["n_heads"], model["kernel_size"]) == (2, 3)
  assert model["resblock_dilation_sizes"] == [[1, 3, 5]] * 3
  hidden = sd["enc_p.emb.weight"].shape[1]
  sd = dict(sd)
  sd["enc_p.encoder.attn_layers.0.emb_rel_k"] = np.zeros((1, 9, hidden // 4), np.float32)
  sd["enc_p.encoder.ffn_layers.0.conv_1.weight"] = np.zeros((24, hidden, 5), np.float32)
  attrs = {k: dict(v) for k, v in attrs.items()}
  attrs["dec.resblocks.1.convs1.2"]["dilations"] = [7]
  model = piper._hyperparameters(sd, attrs, config, "high")   # pylint: disable=protected-access
  assert (model["n_heads"], model["kernel_size"], model["filter_channels"]) == (4, 5, 24)
  assert model["resblock_dilation_sizes"] == [[1, 3, 5], [1, 3, 7], [1, 3, 5]]


def test_a_piper_json_whose_speaker_count_is_not_the_graphs_is_refused(tmp_path):
  from vits_jax.convert import piper
  multi = FIXTURES / "piper_tiny_multi.onnx"
  config = json.loads((FIXTURES / "piper_tiny_multi.onnx.json").read_text())
  onnx = tmp_path / "v.onnx"
  shutil.copy(multi, onnx)
  for n, names in ((2, {"alice": 0, "bob": 1}), (4, dict(config["speaker_id_map"])), (1, {})):
    config.update(num_speakers=n, speaker_id_map=names)
    (tmp_path / "v.onnx.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"the JSON config says {n} speakers but the graph "
                       "has 3"):
      piper.load_piper(onnx)


# ------------------------------------------------------------------ sources
def test_speaker_count_of_official_hparams():
  """One speaker is no speaker table (0), as the model wants; `data.n_speakers` (where the
  official configs keep it) counts as well as the model's."""
  from vits_jax.convert import source
  assert source.config_from_hparams({"n_speakers": 1}).data.n_speakers == 0
  assert source.config_from_hparams({"n_speakers": 1}).model.n_speakers == 0
  multi = {"n_speakers": 0, "gin_channels": 16}
  assert source.config_from_hparams(multi, {"n_speakers": 3}).data.n_speakers == 3
  assert source.config_from_hparams(multi, {"n_speakers": 3}).model.n_speakers == 3


def test_a_voices_speaker_ids_are_its_speakers():
  """Speaker names map to ids 0 .. num_speakers - 1: id num_speakers (one past the last) is
  refused at load (it indexed past the speaker table, or took the last row, at synthesis)."""
  from vits_jax.convert import source
  assert source.checked_speaker_names({"a": 0, "b": "2"}, 3, "v") == {"a": 0, "b": 2}
  for bad in ({"a": 0, "b": 3}, {"a": -1}, {"a": True}):
    with pytest.raises(ValueError, match="out of range 0..2"):
      source.checked_speaker_names(bad, 3, "v")


def test_a_vits_frontend_needs_the_official_symbol_table():
  from vits_jax.convert import source
  from vits_jax.text import symbols
  source._check_frontend({"kind": "vits"}, len(symbols.SYMBOLS), "c.json")   # pylint: disable=protected-access
  with pytest.raises(ValueError, match="c.json: the checkpoint has 100 token ids, fewer than"):
    source._check_frontend({"kind": "vits"}, 100, "c.json")   # pylint: disable=protected-access


def test_a_piper_voice_loads_by_its_onnx_json_too():
  from vits_jax.convert import source
  by_json = source.load_source(str(HIGH) + ".json")
  by_onnx = source.load_source(HIGH)
  assert by_json.kind == by_onnx.kind == "piper"
  assert by_json.config.to_dict() == by_onnx.config.to_dict()


# ------------------------------------------------------------------ training
def test_step_threads_the_discriminators_own_state_as_spectral_norm_needs():
  """A discriminator with state (spectral norm's `u`, advanced by every training forward):
  the D update advances it, the generator's pass over the generated audio advances it
  again, the pass over the real audio does not (the official step runs D on both at once);
  both G-side passes use the state the D update left, and the step keeps the last one."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import test_train as tt
  from vits_jax import losses
  from vits_jax.models import commons
  from vits_jax.training import state as state_lib
  from vits_jax.training import step as step_lib

  class StatefulDisc(nn.Module):
    @nn.compact
    def score(self, x, update_stats=False):
      n = self.variable("spectral", "n", lambda: jnp.zeros((), jnp.float32))
      scale = 1.0 + n.value   # (the features depend on the state, as sigma does on u)
      if update_stats and not self.is_initializing():
        n.value = n.value + 1.0
      outs, fmaps = [], []
      for i in range(2):
        f = scale * nn.tanh(nn.Dense(4, name=f"d{i}_0")(x.reshape(x.shape[0], -1, 32)))
        outs.append(nn.Dense(1, name=f"d{i}_1")(f)[..., 0])
        fmaps.append([f])
      return outs, fmaps

    def __call__(self, y, y_hat, update_stats=False):
      outs, fmaps = self.score(jnp.concatenate([y, y_hat], 0), update_stats=update_stats)
      b = y.shape[0]
      return ([o[:b] for o in outs], [o[b:] for o in outs],
              [[f[:b] for f in fm] for fm in fmaps], [[f[b:] for f in fm] for fm in fmaps])

  config, gen, _, tx_g, tx_d, lr_fn, state = tt._fake_setup()   # pylint: disable=protected-access
  config.model.n_speakers = 0
  disc = StatefulDisc()
  dv = disc.init(jax.random.PRNGKey(0), jnp.zeros((2, 1024, 1)), jnp.zeros((2, 1024, 1)))
  state = state_lib.create_train_state(
      jax.random.PRNGKey(1), {"params": state.params["generator"]}, dv, tx_g, tx_d)
  assert float(state.model_state["discriminator"]["spectral"]["n"]) == 0.0
  batch = tt._batch(np.random.default_rng(2))   # pylint: disable=protected-access
  new_state, m = jax.jit(step_lib.make_train_step(config, gen, disc, tx_g, tx_d, lr_fn))(
      state, batch)
  assert int(m["nonfinite/skipped"]) == 0
  assert float(new_state.model_state["discriminator"]["spectral"]["n"]) == 2.0

  # The feature-matching term: real and generated features from the updated D at state 1.
  from vits_jax import audio
  rngs = step_lib.step_rngs(state.rng, state.step)
  wav = step_lib.waveform(batch, config.data)
  spec = audio.spectrogram_from_config(wav, config.data, batch["audio_lengths"])
  y_hat, aux = gen.apply({"params": state.params["generator"]}, batch["text"],
                         batch["text_lengths"], spec, batch["audio_lengths"] // 256,
                         train=True, rngs=rngs)
  y = commons.slice_segments(wav[..., None], aux["ids_slice"] * 256, 1024)
  after_d = {"params": new_state.params["discriminator"],
             "spectral": {"n": jnp.ones((), jnp.float32)}}
  _, f_real = disc.apply(after_d, y, method="score")
  _, f_fake = disc.apply(after_d, y_hat, method="score")
  np.testing.assert_allclose(m["loss/g/fm"], float(losses.feature_loss(f_real, f_fake)),
                             rtol=1e-5)


def test_metric_writer_sends_every_number_but_step_and_time_to_tensorboard(tmp_path):
  """The learning rate is a curve in TensorBoard too; `step` is its x axis and `time` is for
  metrics.jsonl only."""
  from vits_jax.training import metrics as metrics_lib
  w = metrics_lib.MetricWriter(str(tmp_path))
  sent = []
  real_tb = w._tb   # pylint: disable=protected-access

  class Recorder:
    def add_scalar(self, name, value, step):
      sent.append((name, value, step))
  w._tb = Recorder()   # pylint: disable=protected-access
  w.write_scalars(7, {"lr": np.float32(2e-4), "loss/g/total": 3.5, "devices": 1})
  w._tb = real_tb   # pylint: disable=protected-access
  w.close()
  assert sorted(n for n, _, _ in sent) == ["devices", "loss/g/total", "lr"]
  assert all(s == 7 for _, _, s in sent)
  assert dict((n, v) for n, v, _ in sent)["lr"] == pytest.approx(2e-4)


def test_a_resume_warns_only_about_data_settings_that_changed(tmp_path):
  """`data.key old -> new` for what the checkpoint recorded and the resume changes; a key an
  older checkpoint did not record is no change, nor is the same folder spelled otherwise."""
  import ml_collections
  from vits_jax.training import loop
  (tmp_path / "d").mkdir()
  saved = {"data": {"dir": str(tmp_path / "d"), "add_blank": True,
                    "text_cleaners": ["english_cleaners2"]}}
  config = ml_collections.ConfigDict({"data": {
      "dir": str(tmp_path / "x" / ".." / "d"), "add_blank": True, "sampling_rate": 16000,
      "text_cleaners": ("english_cleaners2",), "n_speakers": 4, "frontend": "vits"}})
  assert loop._data_changes(saved, config) == []   # pylint: disable=protected-access
  config.data.add_blank = False
  assert loop._data_changes(saved, config) == [   # pylint: disable=protected-access
      "data.add_blank True -> False"]


def test_validation_batch_is_the_first_validation_clips_at_least_one_window_long(tmp_path):
  """The evaluation's fixed batch: the first 4 clips of the validation split (training clips
  only where there is none), padded to at least `train.segment_size` samples so the
  training forward can take a decoder window from it."""
  from configs import tiny
  from test_loader import _row_ids, _write_prepared
  from vits_jax.training import input_pipeline
  clips = _write_prepared(tmp_path / "d", n_train=9, n_val=6)
  config = tiny.get_config("micro")
  config.data.dir = str(tmp_path / "d")
  config.train.segment_size = 32 * int(config.data.hop_length) * 8   # longer than any clip
  assert config.train.segment_size > 9000
  batch = input_pipeline.validation_batch(config)
  batch = {k: np.asarray(v) for k, v in batch.items()}
  assert _row_ids(batch, clips) == [f"validation_{i:03d}" for i in range(4)]
  assert batch["audio"].shape[1] == config.train.segment_size
  for row, cid in zip(range(4), _row_ids(batch, clips)):
    tokens, audio, sid = clips[cid]
    np.testing.assert_array_equal(batch["text"][row, :len(tokens)], tokens)
    assert batch["audio_lengths"][row] == len(audio) and batch["sid"][row] == sid
  # Without a validation split: the training clips.
  clips = _write_prepared(tmp_path / "t", n_train=5, n_val=0)
  config.data.dir = str(tmp_path / "t")
  batch = {k: np.asarray(v) for k, v in input_pipeline.validation_batch(config).items()}
  assert _row_ids(batch, clips) == [f"train_{i:03d}" for i in range(4)]
