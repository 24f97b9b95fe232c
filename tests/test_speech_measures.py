"""Listen-free speech measures on signals with known answers (training/speech_measures.py)."""

import numpy as np
import pytest

from vits_jax.training import speech_measures as sm

SR = 22050


def _tone(f0, seconds=1.5, sr=SR):
  t = np.arange(int(seconds * sr)) / sr
  return (0.3 * sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 5))).astype(np.float32)


@pytest.mark.parametrize("f0", [110.0, 196.0, 320.0])
def test_median_f0_of_a_harmonic_tone(f0):
  assert abs(sm.median_f0(_tone(f0), SR) - f0) / f0 < 0.02


def test_median_f0_of_silence_or_noise_is_nan():
  assert np.isnan(sm.median_f0(np.zeros(SR, np.float32), SR))
  assert np.isnan(sm.median_f0(np.zeros(100, np.float32), SR))   # too short to say


def test_mel_cepstral_distance():
  a = _tone(150.0)
  noise = np.random.RandomState(0).randn(len(a)).astype(np.float32)
  assert sm.mel_cepstral_distance(a, a, SR) == 0.0
  d = [sm.mel_cepstral_distance(a, a + s * noise, SR) for s in (0.001, 0.01, 0.1)]
  assert 0 < d[0] < d[1] < d[2]
  assert sm.mel_cepstral_distance(a + 0.01 * noise, a, SR) == pytest.approx(d[1])
  # Another pitch is farther than the same pitch slightly louder.
  assert sm.mel_cepstral_distance(a, 1.1 * a, SR) < sm.mel_cepstral_distance(a, _tone(300.0), SR)
  with pytest.raises(ValueError):
    sm.mel_cepstral_distance(a[:0], a, SR)
  # A gain moves only c0 (the energy), which MCD leaves out: louder is no farther.
  assert sm.mel_cepstral_distance(a + 0.01 * noise, 2.0 * (a + 0.01 * noise), SR) < 1e-3
  # The value, computed another way: scipy's orthonormal DCT of librosa's log-mel power (dB),
  # c1..c24 in natural-log amplitude, 10 / ln10 * mean over frames of sqrt(2 * sum d^2).
  import librosa
  import scipy.fft

  def cepstra(x):
    mel = librosa.feature.melspectrogram(y=x, sr=SR, n_fft=1024, hop_length=256, n_mels=80)
    c = scipy.fft.dct(librosa.power_to_db(mel), type=2, norm="ortho", axis=0)
    return c[1:25] * np.log(10) / 20

  b = a + 0.1 * noise
  diff = cepstra(a) - cepstra(b)
  want = 10 / np.log(10) * np.mean(np.sqrt(2 * np.sum(diff ** 2, axis=0)))
  assert sm.mel_cepstral_distance(a, b, SR) == pytest.approx(want, rel=1e-4)


def test_word_error_rate():
  assert sm.word_error_rate("The cat, sat.", "the cat sat") == 0.0
  assert sm.word_error_rate("a b c", "a x c") == pytest.approx(1 / 3)      # substitution
  assert sm.word_error_rate("a b c", "a c") == pytest.approx(1 / 3)        # deletion
  assert sm.word_error_rate("a b", "a b c d") == pytest.approx(1.0)        # insertions
  assert sm.word_error_rate("a b c", "") == 1.0
  assert sm.word_error_rate("", "") == 0.0


def test_word_error_rate_reads_numbers_as_words():
  """Recognizers write digits where transcripts spell them out: both read as words."""
  assert sm.word_error_rate("Chapter eight. Part two.", "Chapter 8: Part 2") == 0.0
  assert sm.word_error_rate("five point one five and seven seconds", "5.15 and 7 seconds") == 0.0
  assert sm.word_error_rate("October nine, nineteen sixty-two", "October 9, 1962") == 0.0
  assert sm.word_error_rate("the twenty first of one thousand", "the 21st of 1,000") == 0.0
  assert sm.word_error_rate("chapter nine", "chapter 8") == pytest.approx(0.5)


@pytest.fixture(scope="module")
def joe_voice():
  from vits_jax import load_voice
  return load_voice("joe")


# How well each recognizer must read joe (pocketsphinx is the weaker one).
_READS_JOE = {"moonshine": 0.0, "pocketsphinx": 0.34}


@pytest.mark.parametrize("backend", sorted(_READS_JOE))
def test_recognizer_reads_the_bundled_voice(backend, joe_voice):
  """The WER path end to end on speech it can read: the joe voice."""
  if not sm.Recognizer.available(backend):
    pytest.skip(f"{backend} not installed")
  recognizer = sm.Recognizer(backend)
  text = "The quick brown fox jumps over the lazy dog, twice."
  heard = recognizer.transcribe(joe_voice.synthesize(text, seed=0), joe_voice.sample_rate)
  assert sm.word_error_rate(text, heard) <= _READS_JOE[backend], heard
  silence = recognizer.transcribe(np.zeros(SR, np.float32), SR)
  assert sm.word_error_rate(text, silence) >= 0.9, silence


def test_recognizer_prefers_moonshine():
  if not sm.Recognizer.available("moonshine"):
    pytest.skip("moonshine-cpp not installed")
  assert sm.Recognizer().name == "moonshine-base"


def test_evaluation_measures_read_the_right_audio(monkeypatch):
  """`Evaluator.speech_measures` on outputs with known answers: F0 of the inferred audio up
  to its own length (not its padding), MCD of the teacher-timed audio against the real clip
  (identical here: 0), WER of the inferred audio and, once, of the real clips."""
  import ml_collections
  from vits_jax.training import evaluation
  hop, scale = 256, 32768.0
  real = [_tone(150.0, 1.0), _tone(200.0, 1.2)]
  width = 3 * SR
  audio = np.zeros((2, width), np.int16)
  for b, r in enumerate(real):
    audio[b, :len(r)] = np.round(r * scale)
  evaluator = object.__new__(evaluation.Evaluator)
  evaluator.config = ml_collections.ConfigDict({"data": {"max_wav_value": scale},
                                                "train": {"eval_recognizer": "auto"}})
  evaluator.sample_rate, evaluator.hop = SR, hop
  evaluator.texts = ["hello world", "good morning"]
  evaluator.batch_np = {"audio": audio, "audio_lengths": np.array([len(r) for r in real])}
  evaluator._real_f0 = evaluator._real_wer = None
  said = _tone(300.0, 0.8)            # the inferred speech; its padding is another tone
  frames = len(said) // hop
  wav_inf = np.tile(_tone(100.0, 3.0)[:width], (2, 1))
  wav_inf[:, :frames * hop] = said[:frames * hop]
  wav_tf = wav_inf.copy()
  for b in range(2):                  # decoded along the true timing: the real clip itself
    wav_tf[b, :len(real[b])] = audio[b, :len(real[b])] / scale
  out = {"inf_frames": np.array([frames, frames]), "wav_inf": wav_inf, "wav_tf": wav_tf}

  class Recognizer:   # hears the texts in the real clips, nothing in the rest
    def transcribe(self, a, sr):
      matches = [t for t, r in zip(evaluator.texts, real) if len(a) == len(r)]
      return matches[0] if matches else ""

  asked = []
  monkeypatch.setattr(sm, "recognizer", lambda backend: asked.append(backend) or (
      Recognizer() if backend != "none" else None))
  got = evaluator.speech_measures(out)
  assert abs(got["val/f0_median"] - 300.0) < 6.0, got
  assert abs(got["val/f0_median_real"] - 175.0) < 4.0, got   # the median of 150 and 200
  assert got["val/mcd"] < 1e-3, got
  assert got["val/wer"] == 1.0 and got["val/wer_real"] == 0.0, got
  evaluator.config.train.eval_recognizer = "none"   # the config's choice reaches it
  got = evaluator.speech_measures(out)
  assert asked == ["auto", "none"] and "val/wer" not in got and "val/mcd" in got, got


def test_recognizer_falls_back_when_one_does_not_load(monkeypatch):
  """An installed recognizer whose library fails to load gives way to the next; with none
  left, evaluation leaves WER out with a warning instead of failing the run."""
  if not sm.Recognizer.available("pocketsphinx"):
    pytest.skip("pocketsphinx not installed")

  def broken():
    raise OSError("libmoonshine.so: cannot open shared object file")
  backends = dict(sm.Recognizer.BACKENDS)
  backends["moonshine"] = ("pocketsphinx", broken)   # "installed", fails to load
  monkeypatch.setattr(sm.Recognizer, "BACKENDS", backends)
  assert sm.Recognizer().name == "pocketsphinx"
  backends["pocketsphinx"] = ("pocketsphinx", broken)
  with pytest.raises(ImportError, match="cannot open shared object"):
    sm.Recognizer()
  monkeypatch.setattr(sm, "_RECOGNIZERS", {})
  with pytest.warns(UserWarning, match="no offline recognizer could be loaded"):
    assert sm.recognizer() is None
  with pytest.warns(UserWarning, match="cannot open shared object"):
    assert sm.recognizer("pocketsphinx") is None   # asked for by name: the same
  assert sm.recognizer("none") is None
