"""VITS training losses, as the official `losses.py` and `train.py` compute them.

Generator objective (official train.py, weights from `config.loss`):

    loss_g = adv * generator_loss + fm * feature_loss + mel * mel_loss
           + dur * duration_loss + kl * kl_loss

and the discriminator minimises `discriminator_loss` (least-squares GAN). Every loss is
computed in float32 whatever the compute dtype, as the official code does with `.float()`
under autocast. Feature maps and scores may be channels-last or channels-first: the losses
only take means over whole arrays.
"""

from typing import List, Sequence, Tuple

import jax
import jax.numpy as jnp

from vits_jax import audio

Array = jax.Array


def _f32(x: Array) -> Array:
  return jnp.asarray(x, jnp.float32)


def feature_loss(fmap_r: Sequence[Sequence[Array]], fmap_g: Sequence[Sequence[Array]]) -> Array:
  """Feature matching: `2 * sum_d sum_l mean|r - g|`, gradients only through `fmap_g`.

  Args:
    fmap_r: per discriminator, the list of feature maps of real audio.
    fmap_g: same structure for generated audio.

  Returns:
    Scalar float32.
  """
  loss = jnp.float32(0.0)
  for dr, dg in zip(fmap_r, fmap_g, strict=True):
    for rl, gl in zip(dr, dg, strict=True):
      # Real features are targets: the official code detaches them.
      rl = jax.lax.stop_gradient(_f32(rl))
      loss = loss + jnp.mean(jnp.abs(rl - _f32(gl)))
  return loss * 2.0


def discriminator_loss(disc_real_outputs: Sequence[Array], disc_generated_outputs: Sequence[Array]
                       ) -> Tuple[Array, List[Array], List[Array]]:
  """LSGAN discriminator loss: `sum_d mean((1 - D(y))^2) + mean(D(y_hat)^2)`.

  Args:
    disc_real_outputs: per discriminator, scores of real audio (`y_d_rs`).
    disc_generated_outputs: per discriminator, scores of generated audio (`y_d_gs`).

  Returns:
    `(loss, r_losses, g_losses)`: the scalar total and the per-discriminator terms (arrays,
    where the official code returns Python floats).
  """
  loss = jnp.float32(0.0)
  r_losses, g_losses = [], []
  for dr, dg in zip(disc_real_outputs, disc_generated_outputs, strict=True):
    r_loss = jnp.mean(jnp.square(1.0 - _f32(dr)))
    g_loss = jnp.mean(jnp.square(_f32(dg)))
    loss = loss + r_loss + g_loss
    r_losses.append(r_loss)
    g_losses.append(g_loss)
  return loss, r_losses, g_losses


def generator_loss(disc_outputs: Sequence[Array]) -> Tuple[Array, List[Array]]:
  """LSGAN generator loss: `sum_d mean((1 - D(y_hat))^2)`.

  Returns:
    `(loss, gen_losses)`: scalar total and per-discriminator terms.
  """
  loss = jnp.float32(0.0)
  gen_losses = []
  for dg in disc_outputs:
    g_loss = jnp.mean(jnp.square(1.0 - _f32(dg)))
    gen_losses.append(g_loss)
    loss = loss + g_loss
  return loss, gen_losses


def kl_loss(z_p: Array, logs_q: Array, m_p: Array, logs_p: Array, z_mask: Array) -> Array:
  """KL(q(z|x) || p(z|c)) estimated at the flowed posterior sample, per unmasked element.

  `sum(mask * (logs_p - logs_q - 0.5 + 0.5 (z_p - m_p)^2 exp(-2 logs_p))) / sum(mask)`.

  Args:
    z_p: `[B, T, C]` posterior sample mapped through the flow.
    logs_q: `[B, T, C]` posterior log-std.
    m_p, logs_p: `[B, T, C]` prior mean / log-std expanded to frames by the alignment.
    z_mask: `[B, T, 1]` frame mask.

  Returns:
    Scalar float32. Note the normaliser counts frames, not frames * channels (official).
  """
  z_p, logs_q, m_p, logs_p, z_mask = map(_f32, (z_p, logs_q, m_p, logs_p, z_mask))
  kl = logs_p - logs_q - 0.5
  kl = kl + 0.5 * jnp.square(z_p - m_p) * jnp.exp(-2.0 * logs_p)
  return jnp.sum(kl * z_mask) / jnp.sum(z_mask)


def mel_loss(y_mel: Array, y_hat_mel: Array) -> Array:
  """Mean absolute error between log-mels of the real and generated slices (`F.l1_loss`).

  Unweighted; train.py multiplies by `config.loss.mel` (the official c_mel = 45).

  Args:
    y_mel: `[B, frames, n_mels]` log-mel of the real audio, sliced at `ids_slice`.
    y_hat_mel: `[B, frames, n_mels]` log-mel of the generated segment.
  """
  if y_mel.shape != y_hat_mel.shape:
    raise ValueError(f"mel shapes differ: {y_mel.shape} vs {y_hat_mel.shape}")
  return jnp.mean(jnp.abs(_f32(y_mel) - _f32(y_hat_mel)))


# (n_fft, hop, window) of `stft_loss`: Parallel WaveGAN's three resolutions.
STFT_RESOLUTIONS = ((512, 128, 512), (1024, 256, 1024), (2048, 512, 2048))


def stft_loss(y: Array, y_hat: Array, resolutions=STFT_RESOLUTIONS) -> Array:
  """Multi-resolution STFT loss (Yamamoto et al., Parallel WaveGAN, 2020): per resolution,
  spectral convergence ||S - S'||_F / ||S||_F plus the mean |log S - log S'|, averaged over
  the resolutions. Not in the official VITS; `config.loss.stft` weights it (0: off). Unlike
  the 80-band mel loss, its 2048-point resolution resolves the harmonics of a voice, so
  speech with the wrong pitch costs it much more.

  Args:
    y, y_hat: `[B, T]` real and generated audio segments.
  """
  if y.shape != y_hat.shape:
    raise ValueError(f"audio shapes differ: {y.shape} vs {y_hat.shape}")
  total = 0.0
  for n_fft, hop, win in resolutions:
    s, s_hat = (audio.spectrogram(_f32(a), n_fft, hop, win) for a in (y, y_hat))
    sc = jnp.linalg.norm((s - s_hat).ravel()) / jnp.linalg.norm(s.ravel())
    total = total + sc + jnp.mean(jnp.abs(jnp.log(s) - jnp.log(s_hat)))
  return total / len(resolutions)


def duration_loss(l_length: Array) -> Array:
  """Duration term: `sum(l_length)` over the batch (official `loss_dur`).

  The synthesizer's `l_length` is already per item divided by `sum(x_mask)` over the whole
  batch, as in the official `SynthesizerTrn.forward` (SDP negative log-likelihood, or the
  squared log-duration error of the deterministic predictor), so the sum over items is
  `sum_b nll_b / sum(x_mask)`.

  Args:
    l_length: `[B]` per-item duration loss from `SynthesizerTrn.__call__`.
  """
  return jnp.sum(_f32(l_length))
