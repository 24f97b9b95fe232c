"""Per-clip work: decode audio, mono, resample (soxr HQ, as librosa), filter, phonemize.

`process_clip` is what the worker pool runs. It never raises for bad data: every failure is
returned as a `(reason, detail)` skip, so one broken file cannot stop a 13k-clip run. Reason
codes are stable strings (they are counted in the manifest):

  missing audio       the audio file does not exist
  empty audio file    the file has zero bytes
  unreadable audio    the decoder rejected it (corrupt header, ...)
  audio cut short     a WAV (or MP3, OGG) file holding fewer samples than its header says
  no audio samples    it decodes to zero samples
  non-finite samples  a float file holding NaN or infinite samples
  samples out of range  a float file whose samples go past twice full scale (+6 dBFS): written
                      at another scale (e.g. 16-bit values as floats), clipping makes noise
  silent audio        every sample is zero, or the 16-bit peak is below -72 dBFS
  unusable sample rate  a rate below 4 kHz (or above 384 kHz)
  no transcript       the corpus has no text for it
  empty transcript    the text is empty or only whitespace
  no speakable text   the frontend drops every symbol of the text
  too short / too long / too many tokens   the length filters
"""

from __future__ import annotations

import dataclasses
import os
import signal
from typing import Any

import numpy as np

from data_prep.readers import Clip
from vits_jax import files


# A clip whose 16-bit peak stays below this (-72 dBFS) holds no speech to learn from.
SILENT_PEAK = 8
# Float samples past this (+6 dBFS) are not overs of a full-scale recording but another scale
# (16-bit values stored as floats, say): clipped to 16 bits they would be noise.
MAX_FLOAT_PEAK = 2.0


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a run does to each clip (also recorded in the manifest)."""
  sample_rate: int = 22050
  min_seconds: float = 0.5
  max_seconds: float = 20.0
  max_tokens: int = 400
  frontend: str = "vits"
  frontend_kwargs: tuple = ()  # sorted (key, value) pairs, hashable and JSON-able

  def frontend_options(self) -> dict[str, Any]:
    return dict(self.frontend_kwargs)


_FRONTEND = None  # one per worker process, built by `init_worker`


def init_worker(settings: Settings) -> None:
  """Pool initializer: builds the text frontend once per process (espeak start-up is slow)."""
  global _FRONTEND
  # Ctrl-C (or a SIGTERM to the process group) reaches every process: the main process
  # stops the run and the pool, and a worker killed mid-task would leave the pool waiting
  # for its result. (prepare.py starts the workers with both ignored already.)
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  _FRONTEND = make_frontend(settings)


def make_frontend(settings: Settings):
  """The real text frontend (`vits_jax.text.get_frontend`) that `settings` names.

  'vits' takes `cleaners` and `add_blank`; 'piper' takes `voice_config`, the path of a
  voice's .onnx.json (read here, so settings stay small and hashable).
  """
  import json  # pylint: disable=import-outside-toplevel
  import warnings  # pylint: disable=import-outside-toplevel
  from vits_jax import text  # pylint: disable=import-outside-toplevel
  # Dropped characters are expected in real corpora; the skip list reports clips that lose
  # everything, and one warning per clip would bury the summary.
  warnings.filterwarnings("ignore", category=text.UnknownCharactersWarning)
  opts = settings.frontend_options()
  if settings.frontend == "piper":
    with open(opts["voice_config"], encoding="utf-8") as f:
      return text.get_frontend("piper", config=json.load(f))
  return text.get_frontend(settings.frontend, cleaners=list(opts.get("cleaners",
                                                                      ["english_cleaners2"])),
                           add_blank=bool(opts.get("add_blank", True)))


def load_audio(path: str) -> tuple[np.ndarray, int]:
  """Decodes an audio file to float32 [T, C] in [-1, 1] and its rate (soundfile: WAV,
  FLAC...); a WAV file cut short is a ValueError (`vits_jax.files.read_audio`)."""
  return files.read_audio(path)


def to_int16(audio: np.ndarray) -> np.ndarray:
  """float [-1, 1] -> int16, clipping overs (resampling can overshoot a full-scale peak)."""
  with np.errstate(over="ignore"):   # a huge finite float becomes inf, then clips
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)


def resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
  """`librosa.resample(audio, orig_sr=rate, target_sr=target, res_type='soxr_hq')`, sample
  for sample, without librosa's import and first-call cost (seconds per worker).

  librosa's soxr_hq path is soxr's HQ resampler followed by fixing the length to
  ceil(len * target / rate); the tests compare the two.
  """
  import soxr  # pylint: disable=import-outside-toplevel  # librosa's own resampling backend
  out = soxr.resample(audio, rate, target, quality="soxr_hq")
  n = int(np.ceil(len(audio) * target / rate))
  return out[:n] if len(out) >= n else np.pad(out, (0, n - len(out)))


def process_clips(clips: list[Clip], settings: Settings) -> list[dict[str, Any]]:
  """`process_clip` of each clip, with this worker's frontend (a pool's task)."""
  return [process_clip(clip, settings) for clip in clips]


def process_clip(clip: Clip, settings: Settings, frontend=None) -> dict[str, Any]:
  """Turns one clip into a record's fields, or a skip.

  Args:
    clip: from a reader.
    settings: target rate, filters, frontend.
    frontend: the text frontend; defaults to this worker's (see `init_worker`).

  Returns:
    {'id', 'speaker', 'text', 'tokens' int32 [T_text], 'audio' int16 [T_audio]} for a good
    clip, or {'id', 'speaker', 'skip': reason, 'detail': str}.
  """
  frontend = frontend if frontend is not None else _FRONTEND
  skip = lambda reason, detail="": {"id": clip.clip_id, "speaker": clip.speaker,
                                    "skip": reason, "detail": detail}
  if clip.skip:
    return skip(clip.skip, clip.detail)
  if clip.text is None:
    return skip("no transcript")
  if not clip.text.strip():
    return skip("empty transcript")

  # Text first: it is cheaper than audio, and a clip with nothing to say needs no decoding.
  try:
    tokens = np.asarray(frontend.text_to_ids(clip.text), dtype=np.int32)
  except ValueError as e:
    return skip("no speakable text", str(e))
  if tokens.size == 0:
    return skip("no speakable text", "the frontend returned no tokens")
  if tokens.size > settings.max_tokens:
    return skip("too many tokens", f"{tokens.size} > --max-tokens {settings.max_tokens}")

  if clip.audio is not None:
    audio = np.asarray(clip.audio)
    if audio.dtype.kind == "i":  # TFDS gives int16 PCM
      audio = audio.astype(np.float32) / float(np.iinfo(audio.dtype).max + 1)
    if audio.ndim == 0 or audio.shape[0] == 0:
      return skip("no audio samples")
    audio = audio.astype(np.float32).reshape(audio.shape[0], -1)
    rate = int(clip.audio_rate)
  else:
    if not os.path.isfile(clip.path):
      return skip("missing audio", f"{clip.path} does not exist")
    if os.path.getsize(clip.path) == 0:
      return skip("empty audio file", f"{clip.path} has 0 bytes")
    header = _header(clip.path)
    if header and header[0] / header[1] > settings.max_seconds:
      # Known from the header: a clip of an hour is not decoded (GBs) only to be skipped.
      return skip("too long", f"{header[0] / header[1]:.2f} s > --max-seconds "
                              f"{settings.max_seconds}")
    try:
      audio, rate = load_audio(clip.path)
    except files.CutShortError as e:
      return skip("audio cut short", str(e))
    except Exception as e:  # pylint: disable=broad-except  # libsndfile raises many kinds
      return skip("unreadable audio", f"{clip.path}: {str(e).splitlines()[0][:200]}")
  if audio.shape[0] == 0:
    return skip("no audio samples")
  if not files.MIN_SPEECH_RATE <= rate <= files.MAX_SPEECH_RATE:
    return skip("unusable sample rate", f"{rate} Hz (speech is read at "
                f"{files.MIN_SPEECH_RATE}..{files.MAX_SPEECH_RATE} Hz)")
  finite = np.isfinite(audio)
  if not finite.all():
    first = int(np.argmin(finite.all(axis=1)))
    return skip("non-finite samples", f"{int((~finite).sum())} NaN or infinite sample(s), "
                                      f"the first at sample {first}")
  peak = float(np.abs(audio).max())
  if peak > MAX_FLOAT_PEAK:
    return skip("samples out of range", f"float samples reach {peak:.4g}, full scale is 1.0 "
                "(rescale the file)")
  mono = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
  if not np.any(mono):
    return skip("silent audio")

  seconds = mono.shape[0] / rate
  if seconds < settings.min_seconds:
    return skip("too short", f"{seconds:.2f} s < --min-seconds {settings.min_seconds}")
  if seconds > settings.max_seconds:
    return skip("too long", f"{seconds:.2f} s > --max-seconds {settings.max_seconds}")
  if rate != settings.sample_rate:
    mono = resample(mono, rate, settings.sample_rate)
  pcm = to_int16(mono)
  peak = int(np.abs(pcm.astype(np.int32)).max())
  if peak < SILENT_PEAK:   # e.g. stereo channels in opposite phase, mixed to near nothing
    return skip("silent audio", f"its peak is {peak} of 32767 in 16 bits (below -72 dBFS)")
  return {"id": clip.clip_id, "speaker": clip.speaker, "text": clip.text,
          "tokens": tokens, "audio": pcm}


def _header(path: str) -> tuple[int, int] | None:
  """(frames, rate) as the file's header states them, or None where it cannot be read
  (decoding then says why)."""
  import soundfile as sf  # pylint: disable=import-outside-toplevel
  try:
    info = sf.info(os.fsencode(path))   # (a name that is not UTF-8 too)
  except Exception:  # pylint: disable=broad-except  # libsndfile raises many kinds
    return None
  return (int(info.frames), int(info.samplerate)) if info.samplerate > 0 else None
