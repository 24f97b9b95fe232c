"""One VITS training step: update the discriminator, then the generator, as the official
`train.py` does, in a single jitted function.

Per step (the official order):
  1. Spectrograms of the batch's audio, computed on device.
  2. Generator forward (MAS inside, under stop_gradient): a random window of `segment_size`
     samples is decoded; `y_hat` [B, segment_size, 1].
  3. Discriminator update on (real window, y_hat detached): LSGAN loss.
  4. Generator update against the *updated* discriminator: LSGAN + feature matching + mel L1
     on the window + KL + duration NLL, weighted by `config.loss`.

The generator's forward pass runs once: `jax.vjp` keeps it for step 4, so the cost is one G
forward + backward and two D forward/backward passes, like the PyTorch code. In step 4 the
discriminator scores generated and real audio in separate passes, so its backward pass
covers the generated half only (the real features are targets).

A step whose losses, gradients or new params are not all finite changes nothing but the step
counter and the non-finite counters (the caller stops after several in a row): the new
state is chosen by one `lax.cond`, and the generator's optimizer update runs inside it.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vits_jax import audio
from vits_jax import losses
from vits_jax.models import commons
from vits_jax.training import state as state_lib

Batch = dict


def waveform(batch: Batch, data: ml_collections.ConfigDict) -> jax.Array:
  """The batch's audio as float `[B, T]` in [-1, 1] (shards store int16)."""
  wav = batch["audio"]
  if jnp.issubdtype(wav.dtype, jnp.integer):
    wav = wav.astype(jnp.float32) / data.max_wav_value
  return wav.astype(jnp.float32)


def step_rngs(rng: jax.Array, step: jax.Array) -> dict:
  """The named RNG streams of step `step`: fold_in(rng, step) split three ways."""
  keys = jax.random.split(jax.random.fold_in(rng, step), 3)
  return {"dropout": keys[0], "noise": keys[1], "slice": keys[2]}


def _with_lr(opt_state, lr):
  hparams = dict(opt_state.hyperparams)
  hparams["learning_rate"] = jnp.asarray(lr, jnp.asarray(hparams["learning_rate"]).dtype)
  return opt_state._replace(hyperparams=hparams)


# The generator's top-level modules (`SynthesizerTrn`): text encoder, posterior encoder,
# flow, decoder, duration predictor (speaker embedding `emb_g` when multi-speaker).
GENERATOR_MODULES = ("enc_p", "enc_q", "flow", "dec", "dp")


def frozen_modules(config: ml_collections.ConfigDict) -> frozenset:
  """The generator's top-level modules that `train.freeze` names (comma-separated, e.g.
  'enc_p,dp'): they keep their starting weights for the whole run."""
  names = [n.strip() for n in str(config.train.get("freeze", "") or "").split(",")]
  names = frozenset(n for n in names if n)
  known = set(GENERATOR_MODULES) | ({"emb_g"} if int(config.model.n_speakers) > 1 else set())
  unknown = sorted(names - known)
  if unknown:
    raise ValueError(f"train.freeze: unknown module(s) {', '.join(unknown)}; the generator's "
                     f"modules are {', '.join(sorted(known))}")
  return names


def make_train_step(config: ml_collections.ConfigDict, generator, discriminator,
                    tx_g: optax.GradientTransformation, tx_d: optax.GradientTransformation,
                    lr_fn: Callable) -> Callable:
  """Builds `train_step(state, batch) -> (state, metrics)` (not yet jitted).

  Args:
    config: the full config.
    generator: a `SynthesizerTrn`.
    discriminator: a `MultiPeriodDiscriminator`.
    tx_g, tx_d: optimizers from `state.make_optimizer`.
    lr_fn: step -> learning rate.

  The batch holds `text` int32 [B, T_text], `text_lengths` [B], `audio` int16 [B, T_audio],
  `audio_lengths` [B] and, for multi-speaker configs, `sid` [B].
  """
  data = config.data
  hop = int(data.hop_length)
  segment = int(config.train.segment_size)
  segment_frames = segment // hop
  w = config.loss
  weights = {k: float(w[k]) for k in ("mel", "kl", "dur", "fm", "adv")}
  if float(w.get("stft", 0.0)):
    weights["stft"] = float(w.stft)
  multi_speaker = int(config.model.n_speakers) > 1
  frozen = frozen_modules(config)

  def d_apply(d_params, d_state, *inputs, update_stats=True, method=None):
    """The discriminator on `inputs` (`__call__`'s `y, y_hat`, or `method="score"`'s one
    batch); returns (outputs, new non-param collections, e.g. spectral-norm `u`)."""
    variables = {"params": d_params, **d_state}
    if d_state and update_stats:
      return discriminator.apply(variables, *inputs, update_stats=True,
                                 mutable=list(d_state), method=method)
    return discriminator.apply(variables, *inputs, method=method), d_state

  def train_step(state: state_lib.TrainState, batch: Batch):
    rngs = step_rngs(state.rng, state.step)
    lr = lr_fn(state.step)
    wav = waveform(batch, data)
    wav_lengths = batch["audio_lengths"]
    spec = audio.spectrogram_from_config(wav, data, wav_lengths)      # [B, T_frames, F]
    spec_lengths = wav_lengths // hop
    x, x_lengths = batch["text"], batch["text_lengths"]
    sid = batch["sid"] if multi_speaker else None
    g_params = state.params["generator"]
    d_params = state.params["discriminator"]
    d_state = state.model_state["discriminator"]

    # --- Generator forward (kept for the G update) ---------------------------------------
    def g_forward(params):
      # Frozen modules get no gradient (their backward pass is never computed).
      params = {k: jax.lax.stop_gradient(v) if k in frozen else v for k, v in params.items()}
      y_hat, aux = generator.apply(
          {"params": params}, x, x_lengths, spec, spec_lengths, sid, train=True, rngs=rngs)
      return ((y_hat, aux["l_length"], aux["z_p"], aux["logs_q"], aux["m_p"], aux["logs_p"]),
              (aux["attn"], aux["ids_slice"], aux["y_mask"]))

    g_out, g_vjp, (attn, ids_slice, z_mask) = jax.vjp(g_forward, g_params, has_aux=True)
    mel = audio.spec_to_mel_from_config(spec, data)
    y_mel = commons.slice_segments(mel, ids_slice, segment_frames)
    y = commons.slice_segments(wav[..., None], ids_slice * hop, segment)   # [B, segment, 1]

    # --- Discriminator update --------------------------------------------------------------
    y_hat_detached = jax.lax.stop_gradient(g_out[0]).astype(jnp.float32)

    def d_loss_fn(params):
      (d_real, d_fake, _, _), new_d_state = d_apply(params, d_state, y, y_hat_detached)
      loss, real_losses, fake_losses = losses.discriminator_loss(d_real, d_fake)
      return loss, (new_d_state, sum(real_losses), sum(fake_losses))

    (loss_d, (d_state_after_d, loss_d_real, loss_d_fake)), d_grads = jax.value_and_grad(
        d_loss_fn, has_aux=True)(d_params)
    d_updates, d_opt = tx_d.update(
        d_grads, _with_lr(state.opt_state["discriminator"], lr), d_params)
    new_d_params = optax.apply_updates(d_params, d_updates)

    # --- Generator update (against the updated discriminator) -----------------------------
    def g_loss_fn(outs):
      y_hat, l_length, z_p, logs_q, m_p, logs_p = outs
      y_hat = y_hat.astype(jnp.float32)
      y_hat_mel = audio.mel_from_config(y_hat[..., 0], data)
      # Generated and real audio in two passes (the D update runs them as one): only the
      # generated pass is differentiated, so the backward pass skips the real half. Both
      # start from the same spectral-norm state, so they use the same sigma as one pass.
      (d_fake, fmap_fake), new_state = d_apply(new_d_params, d_state_after_d, y_hat,
                                               method="score")
      (_, fmap_real), _ = d_apply(new_d_params, d_state_after_d, y, update_stats=False,
                                  method="score")
      terms = {
          "mel": losses.mel_loss(y_mel, y_hat_mel),
          "kl": losses.kl_loss(z_p.astype(jnp.float32), logs_q.astype(jnp.float32),
                               m_p.astype(jnp.float32), logs_p.astype(jnp.float32), z_mask),
          "dur": losses.duration_loss(l_length),
          "fm": losses.feature_loss(fmap_real, fmap_fake),
          "adv": losses.generator_loss(d_fake)[0],
      }
      if "stft" in weights:
        terms["stft"] = losses.stft_loss(y[..., 0], y_hat[..., 0])
      total = sum(weights[k] * v for k, v in terms.items())
      return total, (terms, new_state)

    (loss_g, (g_terms, d_state_after_g)), out_grads = jax.value_and_grad(
        g_loss_fn, has_aux=True)(g_out)
    (g_grads,) = g_vjp(out_grads)
    # --- Skip the whole update if anything is non-finite ---------------------------------
    # A global norm is finite iff every gradient element is; AdamW then keeps params finite.
    grad_norm_d, grad_norm_g = optax.global_norm(d_grads), optax.global_norm(g_grads)
    ok = (jnp.isfinite(loss_d) & jnp.isfinite(loss_g)
          & jnp.isfinite(grad_norm_d) & jnp.isfinite(grad_norm_g))

    def commit():
      g_updates, g_opt = tx_g.update(
          g_grads, _with_lr(state.opt_state["generator"], lr), g_params)
      new_g_params = optax.apply_updates(g_params, g_updates)
      # Weight decay would still shrink frozen weights: keep them bitwise.
      new_g_params = {k: g_params[k] if k in frozen else v for k, v in new_g_params.items()}
      return ({"generator": new_g_params, "discriminator": new_d_params},
              {"discriminator": d_state_after_g},
              {"generator": g_opt, "discriminator": d_opt})

    # One conditional (the generator's update runs only inside it) rather than an
    # element-wise select per leaf: a select over every param and optimizer moment was a
    # memory pass and ~2,800 small ops a step.
    new_params, new_model_state, new_opt = jax.lax.cond(
        ok, commit, lambda: (state.params, state.model_state, state.opt_state))
    new_state = state.replace(
        step=state.step + 1,
        params=new_params,
        model_state=new_model_state,
        opt_state=new_opt,
        nonfinite_streak=jnp.where(ok, 0, state.nonfinite_streak + 1),
        nonfinite_total=state.nonfinite_total + jnp.where(ok, 0, 1),
    )

    metrics = {
        "loss/d/total": loss_d,
        "loss/d/real": loss_d_real,
        "loss/d/fake": loss_d_fake,
        "loss/g/total": loss_g,
        **{f"loss/g/{k}": v for k, v in g_terms.items()},
        "grad_norm/d": grad_norm_d,
        "grad_norm/g": grad_norm_g,
        "lr": lr,
        "nonfinite/skipped": jnp.logical_not(ok).astype(jnp.int32),
        "nonfinite/streak": new_state.nonfinite_streak,
        "nonfinite/total": new_state.nonfinite_total,
    }
    return new_state, metrics

  return train_step
