"""Listen-free measures of synthesized speech: pitch, spectral distance, intelligibility.

- `median_f0`: median fundamental frequency of the voiced frames (`librosa.pyin`), the
  simplest sign of whose voice it is (a fine-tuned voice moves towards its speaker's).
- `mel_cepstral_distance`: MCD in dB between two signals with the same timing (e.g. speech
  decoded along the real clip's alignment, against that clip): frame-by-frame distance of
  the mel-cepstra (librosa's MFCC, c0 left out), 10 / ln 10 * sqrt(2 * sum_d (c_d - c'_d)^2)
  averaged over frames. 0 for identical signals.
- `word_error_rate`: word-level Levenshtein distance over the reference's word count.
- `Recognizer`: an offline English recognizer (`pocketsphinx` and its bundled model, an
  optional extra: `pip install pocketsphinx`); `Recognizer.available()` says whether it is.
"""

import re
from typing import Optional

import numpy as np

F0_MIN, F0_MAX = 60.0, 500.0
N_CEPSTRA = 25


def median_f0(audio: np.ndarray, sample_rate: int) -> float:
  """Median F0 (Hz) of the voiced frames; NaN if nothing is voiced."""
  import librosa
  audio = np.asarray(audio, np.float32)
  if len(audio) < 2048:
    return float("nan")
  f0, voiced, _ = librosa.pyin(audio, fmin=F0_MIN, fmax=F0_MAX, sr=int(sample_rate),
                               frame_length=2048)
  f0 = f0[voiced & np.isfinite(f0)]
  return float(np.median(f0)) if len(f0) else float("nan")


def mel_cepstra(audio: np.ndarray, sample_rate: int) -> np.ndarray:
  """[frames, N_CEPSTRA - 1] mel-cepstral coefficients c1.. (c0, the energy, left out), of
  the natural-log amplitude as MCD expects (librosa's MFCCs are of dB power: x ln10 / 20)."""
  import librosa
  c = librosa.feature.mfcc(y=np.asarray(audio, np.float32), sr=int(sample_rate),
                           n_mfcc=N_CEPSTRA, n_fft=1024, hop_length=256, n_mels=80)
  return c[1:].T * (np.log(10.0) / 20.0)


def mel_cepstral_distance(a: np.ndarray, b: np.ndarray, sample_rate: int) -> float:
  """MCD (dB) of two signals with the same timing (the shorter length is compared)."""
  n = min(len(a), len(b))
  if n == 0:
    raise ValueError("mel_cepstral_distance of an empty signal")
  ca, cb = mel_cepstra(a[:n], sample_rate), mel_cepstra(b[:n], sample_rate)
  d = np.sqrt(2.0 * np.sum((ca - cb) ** 2, axis=1))
  return float(10.0 / np.log(10.0) * d.mean())


def _words(text: str) -> list:
  return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
  """(substitutions + deletions + insertions) / reference words, on lower-cased words
  without punctuation."""
  ref, hyp = _words(reference), _words(hypothesis)
  if not ref:
    return float(len(hyp) > 0)
  prev = list(range(len(hyp) + 1))
  for i, r in enumerate(ref, 1):
    cur = [i] + [0] * len(hyp)
    for j, h in enumerate(hyp, 1):
      cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
    prev = cur
  return prev[-1] / len(ref)


class Recognizer:
  """Offline English speech recognition (pocketsphinx's default US English model)."""

  RATE = 16000

  def __init__(self):
    from pocketsphinx import Decoder
    self._decoder = Decoder(samprate=self.RATE, loglevel="FATAL")

  @staticmethod
  def available() -> bool:
    try:
      import pocketsphinx  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
      return True
    except ImportError:
      return False

  def transcribe(self, audio: np.ndarray, sample_rate: int) -> str:
    import librosa
    audio = np.asarray(audio, np.float32)
    if int(sample_rate) != self.RATE:
      audio = librosa.resample(audio, orig_sr=int(sample_rate), target_sr=self.RATE)
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    d = self._decoder
    d.start_utt()
    d.process_raw(pcm, full_utt=True)
    d.end_utt()
    hyp = d.hyp()
    return hyp.hypstr if hyp is not None else ""


_RECOGNIZER: Optional[Recognizer] = None


def recognizer() -> Optional[Recognizer]:
  """A shared Recognizer, or None when pocketsphinx is not installed."""
  global _RECOGNIZER
  if _RECOGNIZER is None and Recognizer.available():
    _RECOGNIZER = Recognizer()
  return _RECOGNIZER
