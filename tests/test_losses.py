"""vits_jax.losses against straightforward numpy versions of the official losses.py/train.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vits_jax import losses

RNG = np.random.default_rng(0)


def _fmaps(shapes, rng):
  return [[rng.standard_normal(s).astype(np.float32) for s in d] for d in shapes]


# Per discriminator, feature-map shapes (the official MPD has 6 discriminators).
FMAP_SHAPES = [[(2, 50, 4), (2, 13, 8), (2, 13, 1)], [(2, 17, 3, 4), (2, 6, 3, 8), (2, 6, 3, 1)]]


def np_feature_loss(fmap_r, fmap_g):
  loss = 0.0
  for dr, dg in zip(fmap_r, fmap_g):
    for rl, gl in zip(dr, dg):
      loss += np.mean(np.abs(rl.astype(np.float64) - gl))
  return 2 * loss


def np_discriminator_loss(real, gen):
  r = [np.mean((1 - dr.astype(np.float64)) ** 2) for dr in real]
  g = [np.mean(dg.astype(np.float64) ** 2) for dg in gen]
  return sum(r) + sum(g), r, g


def np_generator_loss(gen):
  terms = [np.mean((1 - dg.astype(np.float64)) ** 2) for dg in gen]
  return sum(terms), terms


def np_kl_loss(z_p, logs_q, m_p, logs_p, z_mask):
  z_p, logs_q, m_p, logs_p, z_mask = (a.astype(np.float64)
                                      for a in (z_p, logs_q, m_p, logs_p, z_mask))
  kl = logs_p - logs_q - 0.5 + 0.5 * (z_p - m_p) ** 2 * np.exp(-2.0 * logs_p)
  return np.sum(kl * z_mask) / np.sum(z_mask)


def test_feature_loss():
  fr, fg = _fmaps(FMAP_SHAPES, RNG), _fmaps(FMAP_SHAPES, RNG)
  np.testing.assert_allclose(float(losses.feature_loss(fr, fg)), np_feature_loss(fr, fg),
                             rtol=1e-5)
  assert float(losses.feature_loss(fr, fr)) == 0.0


def test_feature_loss_gradient_only_through_generated():
  fr, fg = _fmaps(FMAP_SHAPES, RNG), _fmaps(FMAP_SHAPES, RNG)
  g_r, g_g = jax.grad(losses.feature_loss, argnums=(0, 1))(fr, fg)
  assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree_util.tree_leaves(g_r))
  # d/dg mean|r - g| = sign(g - r) / n, times 2.
  np.testing.assert_allclose(np.asarray(g_g[1][0]),
                             2 * np.sign(fg[1][0] - fr[1][0]) / fr[1][0].size, rtol=1e-6)


def test_discriminator_and_generator_losses():
  real = [RNG.standard_normal((2, n)).astype(np.float32) for n in (7, 12, 30)]
  gen = [RNG.standard_normal((2, n)).astype(np.float32) for n in (7, 12, 30)]
  loss, r, g = losses.discriminator_loss(real, gen)
  ref, ref_r, ref_g = np_discriminator_loss(real, gen)
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
  np.testing.assert_allclose(np.array(r), ref_r, rtol=1e-5)
  np.testing.assert_allclose(np.array(g), ref_g, rtol=1e-5)
  loss_g, terms = losses.generator_loss(gen)
  ref_g_total, ref_terms = np_generator_loss(gen)
  np.testing.assert_allclose(float(loss_g), ref_g_total, rtol=1e-5)
  np.testing.assert_allclose(np.array(terms), ref_terms, rtol=1e-5)
  # LSGAN targets: a perfect discriminator (real -> 1, fake -> 0) has zero loss.
  ones, zeros = [jnp.ones((2, 5))] * 3, [jnp.zeros((2, 5))] * 3
  assert float(losses.discriminator_loss(ones, zeros)[0]) == 0.0
  assert float(losses.generator_loss(ones)[0]) == 0.0
  assert float(losses.generator_loss(zeros)[0]) == 3.0


def test_losses_are_float32_for_bfloat16_inputs():
  gen = [jnp.asarray(RNG.standard_normal((2, 9)), jnp.bfloat16)]
  assert losses.generator_loss(gen)[0].dtype == jnp.float32
  assert losses.discriminator_loss(gen, gen)[0].dtype == jnp.float32
  assert losses.feature_loss([gen], [gen]).dtype == jnp.float32


def test_kl_loss():
  b, t, c = 3, 11, 4
  z_p, logs_q, m_p = (RNG.standard_normal((b, t, c)).astype(np.float32) for _ in range(3))
  logs_p = (0.5 * RNG.standard_normal((b, t, c))).astype(np.float32)
  lengths = np.array([11, 6, 1])
  z_mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)[..., None]
  got = float(losses.kl_loss(z_p, logs_q, m_p, logs_p, z_mask))
  np.testing.assert_allclose(got, np_kl_loss(z_p, logs_q, m_p, logs_p, z_mask), rtol=1e-5)
  # The normaliser counts frames (sum of the [B, T, 1] mask), not frames * channels.
  kl_elem = logs_p - logs_q - 0.5 + 0.5 * (z_p - m_p) ** 2 * np.exp(-2 * logs_p)
  np.testing.assert_allclose(got, np.sum(kl_elem * z_mask) / lengths.sum(), rtol=1e-5)
  # Padded frames do not matter.
  z_p2 = np.where(z_mask > 0, z_p, 1e3)
  np.testing.assert_allclose(float(losses.kl_loss(z_p2, logs_q, m_p, logs_p, z_mask)), got,
                             rtol=1e-6)


def test_kl_loss_is_zero_when_posterior_equals_prior_at_mean():
  """At z_p = m_p with logs_q = logs_p: kl = -0.5 per element (the official estimator)."""
  m = RNG.standard_normal((2, 5, 3)).astype(np.float32)
  logs = RNG.standard_normal((2, 5, 3)).astype(np.float32)
  mask = np.ones((2, 5, 1), np.float32)
  np.testing.assert_allclose(float(losses.kl_loss(m, logs, m, logs, mask)), -0.5 * 3, rtol=1e-6)


def test_mel_loss():
  a = RNG.standard_normal((2, 32, 80)).astype(np.float32)
  b = RNG.standard_normal((2, 32, 80)).astype(np.float32)
  np.testing.assert_allclose(float(losses.mel_loss(a, b)),
                             np.mean(np.abs(a.astype(np.float64) - b)), rtol=1e-5)
  with pytest.raises(ValueError, match="mel shapes differ"):
    losses.mel_loss(a, b[:, :16])


def test_duration_loss_is_batch_normalised_sum():
  """Official: l_length_b = nll_b / sum(x_mask) (whole batch); loss_dur = sum_b l_length_b."""
  b, t = 3, 9
  lengths = np.array([9, 4, 2])
  x_mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)[..., None]
  logw = RNG.standard_normal((b, t, 1)).astype(np.float32)
  logw_ = RNG.standard_normal((b, t, 1)).astype(np.float32)
  # The deterministic duration predictor's l_length, as the official SynthesizerTrn forms it.
  l_length = np.sum((logw - logw_) ** 2 * x_mask, axis=(1, 2)) / np.sum(x_mask)
  np.testing.assert_allclose(float(losses.duration_loss(l_length)),
                             np.sum((logw - logw_) ** 2 * x_mask) / lengths.sum(), rtol=1e-5)
  assert losses.duration_loss(l_length).shape == ()


def _voice(f0, n=8192, sr=22050, shift=0):
  """A harmonic 'voice' (10 harmonics, 1/k amplitudes) at `f0` Hz, delayed `shift` samples."""
  t = (np.arange(n) - shift) / sr
  return sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 11)).astype(np.float32) * 0.2


def test_stft_loss_known_answers():
  y = jnp.asarray(np.stack([_voice(212.0), _voice(150.0)]))
  assert float(losses.stft_loss(y, y)) == 0.0
  # Half the amplitude of noise (every bin far above the magnitude floor): spectral
  # convergence 1/2 and |log S - log S'| = log 2 at every resolution.
  y = jnp.asarray(RNG.standard_normal((2, 8192)).astype(np.float32) * 0.2)
  np.testing.assert_allclose(float(losses.stft_loss(y, 0.5 * y)), 0.5 + np.log(2.0),
                             rtol=2e-3)
  with pytest.raises(ValueError, match="audio shapes differ"):
    losses.stft_loss(y, y[:, :4096])


def test_stft_loss_cares_about_pitch_not_phase():
  """A voice at the frame rate (22050 / 256 Hz, the buzz a failing decoder makes) costs
  several times what the same voice delayed by a third of a period does."""
  y = jnp.asarray(_voice(212.0)[None])
  delayed = jnp.asarray(_voice(212.0, shift=35)[None])
  buzz = jnp.asarray(_voice(22050 / 256)[None])
  assert float(losses.stft_loss(y, buzz)) > 4 * float(losses.stft_loss(y, delayed))
