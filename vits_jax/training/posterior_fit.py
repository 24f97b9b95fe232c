"""A fresh posterior encoder fitted to the voice's own latents before fine-tuning.

A voice exported for inference only (every Piper `.onnx`) has no posterior encoder `enc_q`,
so fine-tuning from it starts with a random one: the decoder is then trained on latents it
has never seen, and for many steps it forgets how to make speech from any latent (what it
makes buzzes at the frame rate, sample_rate / hop, whatever the speaker's pitch). The
voice itself says what `enc_q` should do: synthesis draws a latent z, decodes it to audio,
and `enc_q` maps that audio's linear spectrogram back to q(z | spec). `fit_posterior`
synthesizes the training transcripts with the source voice, then fits `enc_q` alone by the
Gaussian negative log-likelihood of z under (m_q, logs_q) on random frame crops, so training
starts with a posterior in the decoder's own latent space. (It fits only the pitch range the
voice speaks in: a new speaker far above it, p902 at 212 Hz against joe's 92, still gets
latents the decoder renders as the frame-rate buzz until the decoder learns that pitch,
which `loss.stft` makes happen within a 30-minute CPU run; README, fine-tuning.)
"""

import logging
from typing import Any, Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vits_jax import audio

# Sentences synthesized per batch, frames per training crop, crops per update.
SYNTH_BATCH = 4
CROP_FRAMES = 128
CROPS_PER_STEP = 8
# Sentences synthesized at most (the pairs are reused across the updates).
MAX_SENTENCES = 48


def _round_up(n: int, k: int) -> int:
  return -(-int(n) // k) * k


def synthesize_pairs(model, params, tokens: Sequence[Sequence[int]], sids: Sequence[int],
                     data_cfg, seed: int, noise_scale: float = 0.667,
                     noise_scale_w: float = 0.8) -> Dict[str, np.ndarray]:
  """The voice's (spectrogram, latent) pairs for `tokens`: dict of `spec` [N, T, F],
  `z` [N, T, C], `lengths` [N] and `sid` [N], padded to one frame count T."""
  n = len(tokens)
  t_x = _round_up(max(len(t) for t in tokens), 8)
  ids = np.zeros((_round_up(n, SYNTH_BATCH), t_x), np.int32)
  x_len = np.ones((ids.shape[0],), np.int32)
  for i, t in enumerate(tokens):
    ids[i, :len(t)], x_len[i] = t, len(t)
  sid = np.zeros((ids.shape[0],), np.int32)
  sid[:n] = np.asarray(sids, np.int32)
  multi = model.n_speakers > 1
  key = jax.random.PRNGKey(seed)
  seeds = np.arange(ids.shape[0], dtype=np.int32)

  # params are arguments, not closed-over constants (which XLA would fold into the program).
  @jax.jit
  def durations(p, x, xl, s, sd):
    w, _ = model.apply({"params": p}, x, xl, s if multi else None,
                       noise_scale_w=noise_scale_w, seeds=sd, key=key,
                       method=model.encode_text)
    return jnp.sum(w, axis=1)

  rows = [slice(i, i + SYNTH_BATCH) for i in range(0, ids.shape[0], SYNTH_BATCH)]
  frames = np.concatenate([np.asarray(durations(params, ids[r], x_len[r], sid[r], seeds[r]))
                           for r in rows])
  t_y = _round_up(max(1, int(frames.max())), 32)
  hop = int(data_cfg.hop_length)

  @jax.jit
  def pair(p, x, xl, s, sd):
    o, aux = model.apply({"params": p}, x, xl, s if multi else None,
                         noise_scale=noise_scale, noise_scale_w=noise_scale_w,
                         max_len=t_y, seeds=sd, key=key, method=model.infer)
    lengths = jnp.sum(aux["y_mask"][..., 0], axis=1).astype(jnp.int32)
    spec = audio.spectrogram_from_config(o[..., 0], data_cfg, lengths * hop)
    return spec, aux["z"], lengths

  out = [jax.device_get(pair(params, ids[r], x_len[r], sid[r], seeds[r])) for r in rows]
  spec, z, lengths = (np.concatenate(parts)[:n] for parts in zip(*out))
  return dict(spec=spec, z=z, lengths=lengths, sid=sid[:n])


def _crops(pairs: Dict[str, np.ndarray], rng: np.random.Generator, crop: int, count: int):
  """`count` random crops of `crop` frames (zero-padded where an utterance is shorter)."""
  n, t = pairs["lengths"].shape[0], pairs["spec"].shape[1]
  items = rng.integers(0, n, count)
  spec = np.zeros((count, crop, pairs["spec"].shape[2]), np.float32)
  z = np.zeros((count, crop, pairs["z"].shape[2]), np.float32)
  lengths = np.zeros((count,), np.int32)
  for j, i in enumerate(items):
    length = int(pairs["lengths"][i])
    start = int(rng.integers(0, max(1, length - crop + 1)))
    stop = min(start + crop, length, t)
    spec[j, :stop - start] = pairs["spec"][i, start:stop]
    z[j, :stop - start] = pairs["z"][i, start:stop]
    lengths[j] = stop - start
  return spec, z, lengths, pairs["sid"][items]


def posterior_nll(model, params, spec, z, lengths, sid) -> jax.Array:
  """Mean per-value Gaussian negative log-likelihood of `z` under `enc_q`'s (m_q, logs_q)
  of `spec` (constant dropped), over valid frames."""
  multi = model.n_speakers > 1

  def encode(m, y, yl, s):
    return m.enc_q(y, yl, g=m._speaker(s) if multi else None,
                   noise=jnp.zeros(y.shape[:2] + (m.inter_channels,), jnp.float32))
  _, m_q, logs_q, mask = model.apply({"params": params}, spec, lengths, sid, method=encode)
  nll = logs_q + 0.5 * jnp.square(z - m_q) * jnp.exp(-2.0 * logs_q)
  return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask) * z.shape[-1], 1.0)


def fit_posterior(model, params: Dict[str, Any], tokens: Sequence[Sequence[int]],
                  sids: Sequence[int], data_cfg, steps: int, seed: int,
                  learning_rate: float = 1e-3) -> Dict[str, Any]:
  """`params` with `enc_q` fitted to the voice's own latents (see the module docstring).

  Args:
    model: the `SynthesizerTrn`; params: its generator params (the source voice's, with a
      fresh `enc_q`).
    tokens, sids: transcripts (id sequences) to synthesize and their speakers; at most
      `MAX_SENTENCES` are used.
    data_cfg: `config.data` (the spectrogram's STFT parameters).
    steps: Adam updates of `enc_q`; seed: synthesis noise and crop order.

  Returns:
    (params with the fitted `enc_q`, (first update's loss, mean of the last ten)).
  """
  tokens, sids = list(tokens)[:MAX_SENTENCES], list(sids)[:MAX_SENTENCES]
  pairs = synthesize_pairs(model, params, tokens, sids, data_cfg, seed)
  rng = np.random.default_rng(seed)
  tx = optax.adam(learning_rate)
  rest = jax.device_put({k: v for k, v in params.items() if k != "enc_q"})  # copied once

  def loss_fn(enc_q, rest, batch):
    return posterior_nll(model, {**rest, "enc_q": enc_q}, *batch)

  @jax.jit
  def update(enc_q, opt, rest, batch):
    loss, grads = jax.value_and_grad(loss_fn)(enc_q, rest, batch)
    updates, opt = tx.update(grads, opt, enc_q)
    return optax.apply_updates(enc_q, updates), opt, loss

  enc_q = params["enc_q"]
  opt = tx.init(enc_q)
  losses = []
  for _ in range(int(steps)):
    enc_q, opt, loss = update(enc_q, opt, rest,
                              _crops(pairs, rng, CROP_FRAMES, CROPS_PER_STEP))
    losses.append(loss)
  losses = [float(x) for x in jax.device_get(losses)] or [float("nan")]
  logging.info("posterior fit: %d sentences, %d steps, nll %.3f -> %.3f", len(tokens),
               steps, losses[0], losses[-1])
  return {**params, "enc_q": enc_q}, (losses[0], float(np.mean(losses[-10:])))
