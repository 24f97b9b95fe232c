"""The train state: generator and discriminator params, their AdamW states, the RNG.

Layout (this is what a checkpoint's `state` item holds, and what `vits_jax.voice` reads):

    TrainState.step               int32 []      steps taken (skipped non-finite steps count)
    TrainState.params             {'generator': SynthesizerTrn params,
                                   'discriminator': MultiPeriodDiscriminator params}
                                  (the contents of each model's 'params' collection)
    TrainState.model_state        {'discriminator': other D collections, e.g. spectral-norm `u`}
    TrainState.opt_state          {'generator': ..., 'discriminator': ...} optax states
    TrainState.rng                uint32 [2]    base key; step k uses fold_in(rng, k)
    TrainState.nonfinite_streak   int32 []      consecutive skipped (non-finite) steps
    TrainState.nonfinite_total    int32 []      all skipped steps
"""

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

Pytree = Any


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Pytree
  model_state: Pytree
  opt_state: Pytree
  rng: jax.Array
  nonfinite_streak: jax.Array
  nonfinite_total: jax.Array


def make_optimizer(train: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW as `torch.optim.AdamW` in the official code; the learning rate is injected per step.

  torch's AdamW decays every parameter by `lr * weight_decay` (default 0.01, which the
  official code keeps) and adds `eps` after the square root, exactly like `optax.adamw`.
  """
  b1, b2 = train.betas
  return optax.inject_hyperparams(optax.adamw)(
      learning_rate=train.learning_rate, b1=b1, b2=b2, eps=train.eps,
      weight_decay=train.weight_decay)


def learning_rate_fn(train: ml_collections.ConfigDict,
                     steps_per_epoch: int) -> Callable[[jax.Array], jax.Array]:
  """The official schedule: `ExponentialLR(gamma=lr_decay)` stepped once per epoch.

  Expressed per step: lr(step) = learning_rate * lr_decay ** (step // steps_per_epoch), so
  a run's learning rate matches the official one at every step given the same epoch length.
  (`warmup_epochs` / `init_lr_ratio` are in the official configs but unused by its train.py.)
  """
  steps_per_epoch = max(int(steps_per_epoch), 1)
  lr0, decay = float(train.learning_rate), float(train.lr_decay)

  def lr(step):
    epoch = (jnp.asarray(step, jnp.int32) // steps_per_epoch).astype(jnp.float32)
    return lr0 * jnp.power(jnp.float32(decay), epoch)

  return lr


def create_train_state(rng: jax.Array, gen_variables: Pytree, disc_variables: Pytree,
                       tx_g: optax.GradientTransformation,
                       tx_d: optax.GradientTransformation) -> TrainState:
  """Builds a fresh state from initialized model variables.

  Args:
    rng: base PRNG key for the training randomness (dropout, noise, slices).
    gen_variables: `SynthesizerTrn.init(...)` output ({'params': ...}).
    disc_variables: `MultiPeriodDiscriminator.init(...)` output.
    tx_g, tx_d: the two optimizers.
  """
  params = {"generator": gen_variables["params"], "discriminator": disc_variables["params"]}
  d_rest = {k: v for k, v in disc_variables.items() if k != "params"}
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      model_state={"discriminator": d_rest},
      opt_state={"generator": tx_g.init(params["generator"]),
                 "discriminator": tx_d.init(params["discriminator"])},
      rng=jnp.asarray(rng),
      nonfinite_streak=jnp.zeros((), jnp.int32),
      nonfinite_total=jnp.zeros((), jnp.int32),
  )

