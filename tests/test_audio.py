"""vits_jax.audio matches the official torch spectrogram setup and librosa."""

import pathlib

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest

from configs import base
from vits_jax import audio

GOLDEN = pathlib.Path(__file__).parent / "fixtures" / "audio_golden.npz"
# name: (sampling_rate, n_fft, hop, win, n_mels, fmin, fmax), as in make_audio_golden.py.
SETUPS = {
    "ljs": (22050, 1024, 256, 1024, 80, 0.0, None),
    "odd": (16000, 512, 192, 400, 40, 50.0, 7000.0),
}


@pytest.fixture(scope="module")
def golden():
  return dict(np.load(GOLDEN))


def _rel(a, b):
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("name", SETUPS)
def test_spectrogram_matches_torch(golden, name):
  sr, n_fft, hop, win, n_mels, fmin, fmax = SETUPS[name]
  y = golden[f"{name}/y"]
  spec = np.asarray(jax.jit(audio.spectrogram, static_argnums=(1, 2, 3))(y, n_fft, hop, win))
  ref = golden[f"{name}/spec"].transpose(0, 2, 1)       # torch [B, F, T] -> ours [B, T, F]
  assert spec.shape == ref.shape == (2, y.shape[1] // hop, n_fft // 2 + 1)
  assert _rel(spec, ref) < 1e-5
  np.testing.assert_allclose(spec, ref, rtol=1e-3, atol=2e-5)


@pytest.mark.parametrize("name", SETUPS)
def test_mel_matches_torch(golden, name):
  sr, n_fft, hop, win, n_mels, fmin, fmax = SETUPS[name]
  y = golden[f"{name}/y"]
  ref = golden[f"{name}/mel"].transpose(0, 2, 1)
  from_spec = audio.spec_to_mel(jnp.asarray(golden[f"{name}/spec"].transpose(0, 2, 1)),
                                n_fft, n_mels, sr, fmin, fmax)
  from_audio = audio.mel_spectrogram(jnp.asarray(y), n_fft, n_mels, sr, hop, win, fmin, fmax)
  assert from_audio.shape == ref.shape == (2, y.shape[1] // hop, n_mels)
  np.testing.assert_allclose(np.asarray(from_spec), ref, atol=1e-4, rtol=0)
  # Linear mel: relative to its peak, as for the spectrogram.
  assert _rel(np.exp(np.asarray(from_audio)), np.exp(ref)) < 1e-5
  # Log domain, elementwise: in near-silent bins float32 FFT rounding is amplified by the
  # log; there torch itself is ~2e-4 away from a float64 computation, and so are we.
  np.testing.assert_allclose(np.asarray(from_audio), ref, atol=1e-3, rtol=0)
  assert np.mean(np.abs(np.asarray(from_audio) - ref)) < 1e-5


@pytest.mark.parametrize("name", SETUPS)
def test_lengths_give_each_item_its_own_spectrogram(golden, name):
  """With `lengths`, a zero-padded batch reproduces per-file spectrograms."""
  sr, n_fft, hop, win, *_ = SETUPS[name]
  y = golden[f"{name}/y"].copy()
  n = y.shape[1]
  lengths = np.array([n - 700, n - 1400])
  for b, length in enumerate(lengths):
    y[b, length:] = 0.0
  spec = np.asarray(audio.spectrogram(jnp.asarray(y), n_fft, hop, win, jnp.asarray(lengths)))
  for b, length in enumerate(lengths):
    ref = golden[f"{name}/spec_item{b}"][0].T
    assert ref.shape[0] == length // hop
    assert _rel(spec[b, :length // hop], ref) < 1e-4
  # Without lengths the last frames of the shorter item see the zero padding instead.
  plain = np.asarray(audio.spectrogram(jnp.asarray(y), n_fft, hop, win))
  last = lengths[1] // hop - 1
  assert not np.allclose(plain[1, last], spec[1, last], rtol=1e-3)


@pytest.mark.parametrize("name", SETUPS)
def test_spectrogram_matches_librosa_stft(golden, name):
  sr, n_fft, hop, win, *_ = SETUPS[name]
  y = golden[f"{name}/y"]
  pad = (n_fft - hop) // 2
  padded = np.pad(y, ((0, 0), (pad, pad)), mode="reflect")
  x = librosa.stft(padded, n_fft=n_fft, hop_length=hop, win_length=win, window="hann",
                   center=False)                            # [B, F, T] complex64
  ref = np.sqrt(np.abs(x) ** 2 + 1e-6).transpose(0, 2, 1)
  spec = np.asarray(audio.spectrogram(jnp.asarray(y), n_fft, hop, win))
  assert _rel(spec, ref) < 1e-4


def test_dynamic_range_compression_clamps():
  x = jnp.array([0.0, 1e-7, 1e-5, 1.0, np.e])
  np.testing.assert_allclose(np.asarray(audio.dynamic_range_compression(x)),
                             np.log([1e-5, 1e-5, 1e-5, 1.0, np.e]), rtol=1e-6)


def test_mel_basis_is_librosa_slaney():
  basis = audio.mel_basis(22050, 1024, 80, 0.0, None)
  ref = librosa.filters.mel(sr=22050, n_fft=1024, n_mels=80, fmin=0.0, fmax=None,
                            htk=False, norm="slaney")
  assert basis.shape == (513, 80)
  np.testing.assert_array_equal(basis, ref.T)
  assert audio.mel_basis(22050, 1024, 80, 0.0, None) is basis   # computed once


def test_config_wrappers_and_jit_shapes():
  data = base.get_config().data
  y = jnp.asarray(np.random.default_rng(0).uniform(-0.5, 0.5, (3, 8192)), jnp.float32)
  spec = jax.jit(lambda a: audio.spectrogram_from_config(a, data))(y)
  mel = jax.jit(lambda a: audio.mel_from_config(a, data))(y)
  assert spec.shape == (3, 32, 513) and mel.shape == (3, 32, 80)
  np.testing.assert_allclose(np.asarray(audio.spec_to_mel_from_config(spec, data)),
                             np.asarray(mel), atol=1e-5)


def test_bad_input_is_a_clear_error():
  with pytest.raises(ValueError, match="expected audio"):
    audio.spectrogram(jnp.zeros((8192,)), 1024, 256, 1024)
  with pytest.raises(ValueError, match="too short"):
    audio.spectrogram(jnp.zeros((1, 100)), 1024, 256, 1024)
  with pytest.raises(ValueError, match="win_size"):
    audio.spectrogram(jnp.zeros((1, 4096)), 512, 128, 1024)
  with pytest.raises(ValueError, match="bins"):
    audio.spec_to_mel(jnp.zeros((1, 4, 100)), 1024, 80, 22050, 0.0, None)
