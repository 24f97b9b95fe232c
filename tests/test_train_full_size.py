"""The full-size configs train: configs/ljs_base.py and configs/vctk.py are traced through
initialization and the real jitted step (D then G, MAS, every loss), every shape and dtype
checked by JAX, without paying a full-size XLA compilation here (the vctk step took 274 s of
a cold CI run on 2 cores). A full-size step is compiled and run on this CPU by the README's
fine-tuning command (the Piper medium model, tests/test_readme.py) and timed by
`bench/train_step.py` (ljs_base); the speaker embedding's update rule (rows of the batch's
speakers learn, the others only decay) is checked on the micro config's real run
(tests/test_train.py).

Random tokens and noise audio of fixed shapes (60 tokens, 120 frames); for vctk, two
different speakers.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


@pytest.mark.parametrize("name", ["ljs_base", "vctk"])
def test_full_size_config_traces_through_init_and_the_step(name):
  config, init, step, batch = _setup({"ljs_base": ljs_base, "vctk": vctk}[name].get_config)
  state = jax.eval_shape(init, jax.random.PRNGKey(0))
  gen = state.params["generator"]
  if name == "vctk":                                         # 109 speakers, 256-dim table
    assert gen["emb_g"]["weight"].shape == (config.model.n_speakers, config.model.gin_channels)
  else:
    assert "emb_g" not in gen                                # single speaker
  n_gen = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(gen))
  assert 30e6 < n_gen < 45e6, n_gen                          # the official models' size
  new_state, metrics = jax.eval_shape(step, state, batch)
  assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)
  for a, b in zip(jax.tree_util.tree_leaves(new_state), jax.tree_util.tree_leaves(state)):
    assert (a.shape, a.dtype) == (b.shape, b.dtype)
  for k in ("loss/d/total", "loss/g/mel", "loss/g/kl", "loss/g/dur", "loss/g/fm",
            "loss/g/adv", "loss/g/total", "grad_norm/g", "grad_norm/d"):
    assert metrics[k].shape == () and metrics[k].dtype == jnp.float32, k
