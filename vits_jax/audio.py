"""Linear and mel spectrograms in jnp, matching the official VITS `mel_processing.py`.

The official code computes

    pad = (n_fft - hop) // 2, reflect-padded on both sides
    X = torch.stft(y, n_fft, hop, win, hann_window(win), center=False)   # periodic Hann
    spec = sqrt(re(X)^2 + im(X)^2 + 1e-6)                                 # linear, [B, F, T]
    mel = log(clamp(mel_basis @ spec, 1e-5))                              # librosa Slaney basis

Everything here is jittable and channels-last: audio `[B, T]` float in [-1, 1], outputs
`[B, frames, bins]` with `frames = T // hop` (the padding makes that exact). The mel basis is
`librosa.filters.mel` computed once in numpy per parameter set and baked in as a constant.

`lengths` (optional, samples per item) makes the right-hand reflection happen at each item's
own end instead of the batch's, so on a zero-padded batch the first `lengths // hop` frames of
every item equal the spectrogram of that item alone -- what the official data loader computes
per file.
"""

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import librosa
import numpy as np

# Official `dynamic_range_compression_torch` clip value and the magnitude epsilon.
CLIP_VAL = 1e-5
MAG_EPS = 1e-6


@functools.lru_cache(maxsize=32)
def mel_basis(sampling_rate: int, n_fft: int, num_mels: int, fmin: float,
              fmax: Optional[float]) -> np.ndarray:
  """Slaney-normalized mel filterbank, `[n_fft // 2 + 1, num_mels]` float32 (read-only).

  The transpose of `librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax)`, so a channels-last
  spectrogram maps to mels with `spec @ mel_basis(...)`.
  """
  basis = librosa.filters.mel(sr=sampling_rate, n_fft=n_fft, n_mels=num_mels, fmin=fmin,
                              fmax=fmax).T.astype(np.float32)
  basis.setflags(write=False)
  return basis


@functools.lru_cache(maxsize=32)
def _window(n_fft: int, win_size: int) -> np.ndarray:
  """Periodic Hann window of `win_size`, zero-padded to `n_fft` in the middle (torch.stft)."""
  if win_size > n_fft:
    raise ValueError(f"win_size ({win_size}) must be <= n_fft ({n_fft})")
  n = np.arange(win_size)
  win = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_size)
  left = (n_fft - win_size) // 2
  out = np.zeros(n_fft, np.float64)
  out[left:left + win_size] = win
  return out.astype(np.float32)


def _reflect_pad(y: jax.Array, pad: int, lengths: Optional[jax.Array]) -> jax.Array:
  """Reflect-pads `[B, T]` by `pad` on both sides; the right side at `lengths` if given."""
  t = y.shape[1]
  if pad >= t:
    raise ValueError(f"audio of {t} samples is too short for reflect padding of {pad}")
  if lengths is None:
    return jnp.pad(y, ((0, 0), (pad, pad)), mode="reflect")
  # Index map of a reflection at each item's end: src = 2 (L - 1) - src past L - 1, and
  # zeros beyond the reflected region (those frames are past the item's length anyway).
  lengths = jnp.asarray(lengths, jnp.int32)[:, None]
  src = jnp.arange(t + 2 * pad)[None, :] - pad
  src = jnp.abs(src)
  src = jnp.where(src >= lengths, 2 * (lengths - 1) - src, src)
  valid = (src >= 0) & (src < t)
  out = jnp.take_along_axis(y, jnp.clip(src, 0, t - 1), axis=1)
  return jnp.where(valid, out, 0.0).astype(y.dtype)


def _frames(y: jax.Array, n_fft: int, hop: int) -> jax.Array:
  """Overlapping frames `[B, n_frames, n_fft]` of `[B, T]` (no padding)."""
  n_frames = 1 + (y.shape[1] - n_fft) // hop
  if n_fft % hop == 0:
    # n_fft = k * hop: a frame is k consecutive hop-sized blocks; slicing + concat avoids
    # a gather, which is slower on TPU.
    k = n_fft // hop
    blocks = y[:, :(n_frames + k - 1) * hop].reshape(y.shape[0], n_frames + k - 1, hop)
    return jnp.concatenate([blocks[:, i:i + n_frames] for i in range(k)], axis=-1)
  idx = jnp.arange(n_frames)[:, None] * hop + jnp.arange(n_fft)[None, :]
  return y[:, idx]


def spectrogram(y: jax.Array, n_fft: int, hop_size: int, win_size: int,
                lengths: Optional[jax.Array] = None) -> jax.Array:
  """Linear magnitude spectrogram, the official `spectrogram_torch(center=False)`.

  Args:
    y: `[B, T]` float audio in [-1, 1].
    n_fft, hop_size, win_size: STFT size, hop and Hann window length (samples).
    lengths: optional `[B]` int, samples per item (see the module docstring).

  Returns:
    `[B, T // hop_size, n_fft // 2 + 1]` float32, `sqrt(|X|^2 + 1e-6)`.
  """
  if y.ndim != 2:
    raise ValueError(f"expected audio [B, T], got shape {y.shape}")
  y = y.astype(jnp.float32)
  pad = (n_fft - hop_size) // 2
  frames = _frames(_reflect_pad(y, pad, lengths), n_fft, hop_size)
  x = jnp.fft.rfft(frames * _window(n_fft, win_size), axis=-1)
  return jnp.sqrt(jnp.real(x) ** 2 + jnp.imag(x) ** 2 + MAG_EPS)


def dynamic_range_compression(x: jax.Array, clip_val: float = CLIP_VAL) -> jax.Array:
  """`log(max(x, clip_val))`, the official `spectral_normalize_torch`."""
  return jnp.log(jnp.maximum(x, clip_val))


def spec_to_mel(spec: jax.Array, n_fft: int, num_mels: int, sampling_rate: int,
                fmin: float, fmax: Optional[float]) -> jax.Array:
  """Log-mel from a linear spectrogram, the official `spec_to_mel_torch`.

  Args:
    spec: `[B, frames, n_fft // 2 + 1]` linear magnitudes.
    n_fft, num_mels, sampling_rate, fmin, fmax: mel filterbank parameters (fmax None =
      sampling_rate / 2).

  Returns:
    `[B, frames, num_mels]` float32 log-mel.
  """
  basis = mel_basis(int(sampling_rate), int(n_fft), int(num_mels), float(fmin),
                    None if fmax is None else float(fmax))
  if spec.shape[-1] != basis.shape[0]:
    raise ValueError(f"spectrogram has {spec.shape[-1]} bins, n_fft={n_fft} needs "
                     f"{basis.shape[0]}")
  # HIGHEST: TPUs would otherwise run this matmul in bfloat16 and shift the mel loss.
  mel = jnp.matmul(spec.astype(jnp.float32), basis, precision=jax.lax.Precision.HIGHEST)
  return dynamic_range_compression(mel)


def mel_spectrogram(y: jax.Array, n_fft: int, num_mels: int, sampling_rate: int,
                    hop_size: int, win_size: int, fmin: float, fmax: Optional[float],
                    lengths: Optional[jax.Array] = None) -> jax.Array:
  """Log-mel from audio, the official `mel_spectrogram_torch(center=False)`.

  Args:
    y: `[B, T]` float audio.
    lengths: optional `[B]` samples per item (see the module docstring).

  Returns:
    `[B, T // hop_size, num_mels]` float32.
  """
  spec = spectrogram(y, n_fft, hop_size, win_size, lengths)
  return spec_to_mel(spec, n_fft, num_mels, sampling_rate, fmin, fmax)


# Config-driven wrappers: `data` is `config.data` (filter_length, hop_length, ...).

def spectrogram_from_config(y: jax.Array, data: Any,
                            lengths: Optional[jax.Array] = None) -> jax.Array:
  """`spectrogram` with the STFT parameters of `config.data`."""
  return spectrogram(y, data.filter_length, data.hop_length, data.win_length, lengths)


def spec_to_mel_from_config(spec: jax.Array, data: Any) -> jax.Array:
  """`spec_to_mel` with the mel parameters of `config.data`."""
  return spec_to_mel(spec, data.filter_length, data.n_mel_channels, data.sampling_rate,
                     data.mel_fmin, data.mel_fmax)


def mel_from_config(y: jax.Array, data: Any,
                    lengths: Optional[jax.Array] = None) -> jax.Array:
  """`mel_spectrogram` with the parameters of `config.data`."""
  return mel_spectrogram(y, data.filter_length, data.n_mel_channels, data.sampling_rate,
                         data.hop_length, data.win_length, data.mel_fmin, data.mel_fmax,
                         lengths)
