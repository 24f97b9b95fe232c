"""Training pieces in isolation, cheap to run: what the train step does with its step number
and non-finite gradients, what the program store's key holds, the posterior fit's output and
crops, the second Ctrl-C (tests/test_train.py runs train.py end to end)."""

import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np

import test_train as tt
from vits_jax.training import posterior_fit
from vits_jax.training import programs
from vits_jax.training import state as state_lib
from vits_jax.training import step as step_lib


class _NanGradSynth(tt._FakeSynth):
  """Finite losses, non-finite generator gradients (d sqrt(x)/dx at 0, times 0)."""

  def __call__(self, *args, **kwargs):
    o, aux = super().__call__(*args, **kwargs)
    return o, dict(aux, l_length=jnp.sqrt(0.0 * aux["l_length"]))


def test_nonfinite_gradients_with_finite_losses_are_skipped():
  config, _, disc, tx_g, tx_d, lr_fn, state = tt._fake_setup()
  config.model.n_speakers = 0
  step = jax.jit(step_lib.make_train_step(config, _NanGradSynth(), disc, tx_g, tx_d, lr_fn))
  before = jax.device_get(state.params)
  state, m = step(state, tt._batch(np.random.default_rng(1)))
  assert np.isfinite(float(m["loss/g/total"])) and not np.isfinite(float(m["grad_norm/g"]))
  assert int(m["nonfinite/skipped"]) == 1
  chex.assert_trees_all_equal(jax.device_get(state.params), before)


def test_step_randomness_and_learning_rate_follow_the_step():
  """Dropout, noise and slice keys differ from step to step; both optimizers' learning
  rates decay with the epoch (step 0 alone, as the reference test runs, shows neither)."""
  config, gen, disc, tx_g, tx_d, _, state = tt._fake_setup()
  config.model.n_speakers = 0
  config.train.lr_decay = 0.5
  lr_fn = state_lib.learning_rate_fn(config.train, 10)
  step = jax.jit(step_lib.make_train_step(config, gen, disc, tx_g, tx_d, lr_fn))
  batch = tt._batch(np.random.default_rng(2))
  kernel = lambda s: jax.device_get(s.params["generator"]["dec"]["kernel"])
  a, _ = step(state, batch)
  b, _ = step(state.replace(step=jnp.int32(5)), batch)   # same epoch, same rate
  assert not np.array_equal(kernel(a), kernel(b))
  c, _ = step(state.replace(step=jnp.int32(25)), batch)  # epoch 2: the rate / 4
  assert float(lr_fn(25)) == float(lr_fn(0)) / 4
  for part in ("generator", "discriminator"):
    np.testing.assert_allclose(float(c.opt_state[part].hyperparams["learning_rate"]),
                               float(lr_fn(25)), rtol=1e-6)


def test_program_store_key_follows_what_the_programs_bake_in(monkeypatch, tmp_path):
  """A stored step program is found again only by runs whose step computes the same thing:
  a bfloat16 run must not load a float32 run's program."""
  from vits_jax import xla_cache
  monkeypatch.setattr(xla_cache, "cache_dir", lambda: str(tmp_path))
  args = (jax.ShapeDtypeStruct((2,), jnp.float32),)

  def path(name, **changes):
    config = tt.tu_config()
    for key, value in changes.items():
      section, field = key.split("__")
      config[section][field] = value
    return programs.ExecutableStore.for_run(config, steps_per_epoch=3).path(name, args)
  for key, value in dict(model__dtype="bfloat16", train__learning_rate=1e-3,
                         train__lr_decay=0.5, train__freeze="dp", loss__mel=1.0).items():
    assert path("step", **{key: value}) != path("step"), key
  for key, value in dict(train__num_steps=7, train__seed=3, data__dir="/x").items():
    assert path("step", **{key: value}) == path("step"), key
  assert path("init", model__dtype="bfloat16") == path("init")


def test_fit_posterior_returns_the_fitted_encoder():
  from vits_jax.convert.source import load_source
  from vits_jax.models.synthesizer import build_synthesizer, param_shapes
  from vits_jax.training import warm_start
  source = load_source(str(tt.PIPER_HIGH))
  model = build_synthesizer(source.config)
  rng = np.random.RandomState(0)
  fresh = jax.tree_util.tree_map(lambda s: rng.normal(0, 0.1, s.shape).astype(np.float32),
                                 param_shapes(model))
  params, _, _ = warm_start.merge_params(fresh, source.params, "x")
  tokens = [list(range(3, 3 + n)) for n in (9, 14, 11, 7)]
  fitted, _ = posterior_fit.fit_posterior(model, params, tokens, [0] * 4, source.config.data,
                                          40, 0)
  pairs = posterior_fit.synthesize_pairs(model, params, tokens, [0] * 4, source.config.data, 1)
  crops = posterior_fit._crops(pairs, np.random.default_rng(5), posterior_fit.CROP_FRAMES, 8)
  before = float(posterior_fit.posterior_nll(model, params, *crops))
  after = float(posterior_fit.posterior_nll(model, fitted, *crops))
  assert after < before - 0.3, (before, after)
  for name in params:
    if name != "enc_q":
      chex.assert_trees_all_equal(fitted[name], params[name])


def test_crops_keep_spectrogram_and_latent_frames_aligned():
  t = np.arange(40, dtype=np.float32)
  pairs = dict(spec=np.tile(t[None, :, None], (3, 1, 2)),
               z=np.tile(-t[None, :, None], (3, 1, 5)),
               lengths=np.array([40, 30, 6]), sid=np.array([0, 1, 2]))
  spec, z, lengths, _ = posterior_fit._crops(pairs, np.random.default_rng(0), 8, 64)
  assert spec[:, 0, 0].max() > 0                              # crops start past frame 0
  np.testing.assert_array_equal(spec[..., :1], -z[..., :1])   # the same frames
  assert set(lengths) == {8, 6}


SECOND_CTRL_C = """
import os, signal, time
from vits_jax.training import loop
p = loop._Preemption(exit_process=True)
p.stepped()                      # a step to save: the first Ctrl-C only asks to stop
os.kill(os.getpid(), signal.SIGINT); time.sleep(0.5)
assert p.is_set()
os.kill(os.getpid(), signal.SIGINT); time.sleep(5)
print("still alive")
"""


def test_a_second_ctrl_c_quits_at_once():
  proc = subprocess.run([sys.executable, "-c", SECOND_CTRL_C], capture_output=True, text=True,
                        timeout=120, cwd=tt.tu.REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 130 and "still alive" not in proc.stdout, proc.stderr
  assert "interrupted again: quitting without saving" in proc.stderr


def test_a_source_with_its_own_posterior_encoder_is_not_refitted(monkeypatch, capsys):
  """The posterior fit is for sources that lack `enc_q` (Piper voices); a source that has
  one (an official G_*.pth, a workdir) keeps its trained encoder."""
  from vits_jax.training import warm_start
  config = tt.tu_config()
  config.train.fit_posterior_steps = 300
  params = {"generator": {"enc_q": {"w": np.zeros(2, np.float32)},
                          "dec": {"w": np.ones(2, np.float32)}}, "discriminator": {}}
  state = state_lib.TrainState(step=0, params=params, model_state={}, opt_state=None,
                               rng=None, nonfinite_streak=0, nonfinite_total=0)
  fits = []
  monkeypatch.setattr(warm_start, "_fit_posterior", lambda *a: fits.append(a) or a[1])
  with_enc_q = {"enc_q/w": np.zeros(2), "dec/w": np.ones(2)}
  assert warm_start.after_init(state, with_enc_q, "G_1.pth", config, None, generator="g") \
      is state
  assert not fits
  warm_start.after_init(state, {"dec/w": np.ones(2)}, "voice.onnx", config, None,
                        generator="g")
  assert len(fits) == 1
  assert "2 generator tensors copied, 0 fresh" in capsys.readouterr().out
