"""The full-size configs train on a CPU: configs/vctk.py compiles the real jitted step (D then
G, MAS, every loss) and runs two steps at batch 2; configs/ljs_base.py, the same networks
without the speaker table and its conditioning, is traced through initialization and the
same step (every shape and dtype checked by JAX) without paying a second full-size
compilation (about 130 s of the test suite's CPU time).

Random tokens and noise audio of fixed shapes (60 tokens, 120 frames); for vctk, two
different speakers. Checked: every loss finite and of the size a fresh VITS gives, both
networks' params change, the speaker embedding rows of the batch's speakers get updated and
the others do not (their gradient is zero; AdamW's decoupled decay still shrinks them).
"""

import jax
import jax.numpy as jnp
import numpy as np

from configs import ljs_base, vctk
from vits_jax.training import loop
from vits_jax.training import state as state_lib
from vits_jax.training import step as step_lib


def _setup(get_config):
  config = get_config()
  config.train.batch_size = 2
  gen, disc = loop.build_models(config)
  tx_g, tx_d = state_lib.make_optimizer(config.train), state_lib.make_optimizer(config.train)
  init = loop.make_init_state(config, gen, disc, tx_g, tx_d)
  rng = np.random.default_rng(0)
  hop, frames, tokens = config.data.hop_length, 120, 60
  batch = {
      "text": jnp.asarray(rng.integers(1, config.model.n_vocab, (2, tokens)), jnp.int32),
      "text_lengths": jnp.array([tokens, tokens - 13], jnp.int32),
      "audio": jnp.asarray(rng.integers(-3000, 3000, (2, frames * hop)), jnp.int16),
      "audio_lengths": jnp.array([frames * hop, (frames - 20) * hop], jnp.int32),
      "sid": jnp.array([3, 7], jnp.int32),
  }
  step = step_lib.make_train_step(config, gen, disc, tx_g, tx_d,
                                  state_lib.learning_rate_fn(config.train, 100))
  return config, init, step, batch


def test_ljs_base_traces_through_init_and_the_step():
  config, init, step, batch = _setup(ljs_base.get_config)
  state = jax.eval_shape(init, jax.random.PRNGKey(0))
  assert "emb_g" not in state.params["generator"]           # single speaker
  n_gen = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(
      state.params["generator"]))
  assert 30e6 < n_gen < 45e6, n_gen                          # the official LJS model's size
  new_state, metrics = jax.eval_shape(step, state, batch)
  assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)
  for a, b in zip(jax.tree_util.tree_leaves(new_state), jax.tree_util.tree_leaves(state)):
    assert (a.shape, a.dtype) == (b.shape, b.dtype)
  for k in ("loss/d/total", "loss/g/mel", "loss/g/kl", "loss/g/dur", "loss/g/fm",
            "loss/g/adv", "loss/g/total", "grad_norm/g", "grad_norm/d"):
    assert metrics[k].shape == () and metrics[k].dtype == jnp.float32, k


def test_vctk_config_runs_two_steps_at_batch_2():
  config, init, step, batch = _setup(vctk.get_config)
  state = jax.jit(init, compiler_options=loop.init_compiler_options())(jax.random.PRNGKey(0))
  before = jax.device_get(state.params)
  # Two steps: LLVM's optimizations would cost more compile time than they save (as in
  # every train.py run of the tests, tests/train_utils.py).
  step = jax.jit(step, donate_argnums=0).lower(state, batch).compile(
      compiler_options={"xla_backend_optimization_level": 0})
  for _ in range(2):
    state, metrics = step(state, batch)
  metrics = jax.device_get(metrics)
  assert int(state.step) == 2 and int(metrics["nonfinite/total"]) == 0
  losses = {k: float(v) for k, v in metrics.items() if k.startswith("loss/")}
  assert all(np.isfinite(v) for v in losses.values()), losses
  # A fresh VITS: LSGAN terms near 1-2 per discriminator (6 of them), mel L1 of a few units.
  assert 0.5 < losses["loss/d/total"] < 20 and 0.3 < losses["loss/g/mel"] < 10, losses
  assert float(metrics["grad_norm/g"]) > 0 and float(metrics["grad_norm/d"]) > 0

  after = jax.device_get(state.params)
  for net in ("generator", "discriminator"):
    changed = [not np.array_equal(a, b) for a, b in zip(
        jax.tree_util.tree_leaves(before[net]), jax.tree_util.tree_leaves(after[net]))]
    assert np.mean(changed) > 0.95, (net, np.mean(changed))
  if int(config.model.n_speakers) > 1:
    emb0, emb1 = before["generator"]["emb_g"]["weight"], after["generator"]["emb_g"]["weight"]
    moved = np.abs(emb1 - emb0).max(axis=1)
    # Two steps of decoupled decay, lr * 0.01 * |w| each (plus float32 rounding of w).
    decay_only = np.abs(emb0 * config.train.learning_rate * 0.01 * 2).max(axis=1) * 1.5 + 1e-6
    assert moved[3] > 10 * decay_only[3] and moved[7] > 10 * decay_only[7]
    others = np.delete(np.arange(len(moved)), [3, 7])
    assert np.all(moved[others] <= decay_only[others]), moved[others].max()
