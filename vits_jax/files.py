"""Files the CLIs touch: output folders made or refused, audio files read whole or refused,
each with one clear message, and the 16-bit samples they write."""

import contextlib
import io
import os
import re
import struct
import sys
import tempfile
from typing import Callable, Optional, Tuple

import numpy as np


def warning_line(message, category, filename, lineno, file=None, line=None):
  """`warnings.showwarning` for the command-line programs: `warning: <message>`, one line
  on stderr, not Python's file, line and source excerpt."""
  del category, filename, lineno, file, line
  print(f"warning: {message}", file=sys.stderr)


def writable_folder(path: str, flag: str, create: bool = True) -> None:
  """Creates folder `path` if needed and checks that it can be written.

  Args:
    flag: how the user named it (e.g. '--out-dir'), for the message.
    create: False checks only that it could be made and written, making nothing (a run
      that checks its arguments before it fails on others leaves no folder behind).

  Raises:
    ValueError: `path` is a file, cannot be created, or cannot be written.
  """
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"{flag} {path} exists and is not a folder")
  if not create and not os.path.exists(path):
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):   # the nearest folder that exists: where it is made
      parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
      raise ValueError(f"cannot create {flag} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK):
      raise ValueError(f"cannot create {flag} {path}: permission denied")
    return
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise ValueError(f"cannot create {flag} {path}: {e.strerror}") from None
  try:   # a file made and dropped: a read-only mount or an immutable folder fail here even
    # for root, whom `os.access` always answers yes
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as e:
    raise ValueError(f"{flag} {path} cannot be written ({e.strerror or e})") from None


def lock_folder(folder: str, flag: str, program: str, lock_file: Optional[str] = None):
  """An exclusive lock on `folder` for this process's run, held until the returned handle is
  closed (or the process ends). With `lock_file`, the lock is that file in `folder`, which
  names the holder's pid; without, the folder itself (no file left in it). A second run into
  the same folder wrote the same files or deleted the first one's temporaries.

  Args:
    flag, program: how the user named the folder ('--workdir') and which program holds it
      ('train.py'), for the message.

  Returns:
    A handle whose close() releases the lock, or None where the file system has no locks
    (some network mounts), which then go unguarded.

  Raises:
    ValueError: another process holds the lock.
  """
  import fcntl  # pylint: disable=import-outside-toplevel
  if lock_file is None:
    fd = os.open(folder, os.O_RDONLY)
  else:
    fd = os.open(os.path.join(folder, lock_file), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = os.read(fd, 32).decode("ascii", "replace").strip() if lock_file else ""
    os.close(fd)
    raise ValueError(f"{flag} {folder} is in use by another {program}"
                     + (f" (pid {holder})" if holder.isdigit() else "")
                     + f": wait for it to end, or use another {flag}") from None
  except OSError:   # no locks here
    os.close(fd)
    return None
  if lock_file is not None:
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
  return _Lock(fd)


class _Lock:
  """What `lock_folder` holds: closing it releases the lock."""

  def __init__(self, fd: int):
    self._fd = fd

  def close(self) -> None:
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None


def one_line(name: str) -> str:
  """`name` as it can be shown on one line: JSON-escaped where it holds control characters
  (a newline, a tab, a terminal escape code), else as it is."""
  import json  # pylint: disable=import-outside-toplevel
  if any(ord(c) < 32 or c in _RAW_IN_JSON for c in name):
    # (JSON leaves DEL and the line breaks beyond ASCII, which str.splitlines counts, as
    # they are)
    shown = json.dumps(name, ensure_ascii=False)[1:-1]
    for c in _RAW_IN_JSON:
      shown = shown.replace(c, f"\\u{ord(c):04x}")
    return shown
  return name


# Characters JSON leaves raw: DEL (a control) and NEL, LS, PS (line breaks to str.splitlines).
_RAW_IN_JSON = "\x7f\x85\u2028\u2029"


def parse_json(text: str):
  """The value of a JSON text (a voice config, a --json-input line, a request body).

  Raises:
    ValueError: one line saying why it is not JSON we read: a syntax error, nesting too
      deep for Python's parser (`[` * 100000), or an integer too long to convert.
  """
  import json
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
  except RecursionError:
    raise ValueError("not JSON we read (nested too deeply)") from None
  except ValueError as e:   # e.g. an integer of more than 4300 digits
    raise ValueError(f"not JSON we read ({str(e).split(':')[0].split(';')[0]})") from None


def pcm16(audio: np.ndarray) -> np.ndarray:
  """Float audio in [-1, 1] -> 16-bit little-endian samples (rounded, clipped): what every
  output of the CLIs and the server holds."""
  return np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")


# The sampling rates of recorded speech that we read (a voice conversion's input, a corpus
# clip): below 4 kHz nothing of speech is left to learn from or convert.
MIN_SPEECH_RATE, MAX_SPEECH_RATE = 4000, 384000

# The most audio `read_audio` takes from a pipe (a file it reads as libsndfile streams it).
MAX_PIPED_AUDIO_BYTES = 1 << 30


class CutShortError(ValueError):
  """An audio file holds fewer samples than its header says (a copy or download cut off)."""


def read_audio(path: str, check: Optional[Callable[[int, float], None]] = None
               ) -> Tuple[np.ndarray, int]:
  """Decodes an audio file (WAV, FLAC, OGG...: libsndfile) to float32 [T, C] and its rate.

  Args:
    check: called with (sample rate, seconds) from the header before any sample is decoded;
      it raises ValueError to refuse the file (a hostile header can promise hours of audio,
      gigabytes once decoded).

  Raises:
    ValueError: the file cannot be decoded.
    CutShortError (a ValueError): a WAV, AIFF, OGG or MP3 file cut short (libsndfile
      would return the samples that are there and say nothing).
  """
  import soundfile as sf  # pylint: disable=import-outside-toplevel
  # (bytes: soundfile encodes a str name strictly, and a name that is not UTF-8, legal on
  # Linux, failed with a UnicodeEncodeError)
  source = os.fsencode(path)
  if not os.path.isfile(path):   # a pipe (`<(...)`): read once, into memory
    try:
      with open(path, "rb") as f:
        blob = f.read(MAX_PIPED_AUDIO_BYTES + 1)
    except OSError as e:
      raise ValueError(f"cannot read {path}: {e.strerror}") from None
    if len(blob) > MAX_PIPED_AUDIO_BYTES:
      raise ValueError(f"{path} holds more than {MAX_PIPED_AUDIO_BYTES >> 20} MiB of audio")
    source = io.BytesIO(blob)
  try:
    with sf.SoundFile(source) as f:
      promised, rate, kind = f.frames, f.samplerate, f.format
      if check is not None:
        check(rate, promised / max(rate, 1))
      data = _read_blocks(f) if promised > _BLOCK_FRAMES else f.read(dtype="float32",
                                                                       always_2d=True)
  except (RuntimeError, sf.LibsndfileError) as e:  # (LibsndfileError is a RuntimeError)
    raise ValueError(f"cannot read {path}: {_libsndfile_reason(e)}") from None
  short = wav_shortfall(source)
  if short:
    raise CutShortError(f"{path} is cut short: its header promises {short[0]} bytes of "
                        f"samples, the file holds {short[1]}")
  if (kind == "OGG" or kind == "MP3" and _mp3_counts_its_frames(source)) and (
      0 < data.shape[0] < promised):
    # (a cut file decodes fewer samples than its header counts, without an error)
    raise CutShortError(f"{path} is cut short: its header promises {promised} samples, "
                        f"{data.shape[0]} decode")
  if kind == "OGG" and data.shape[0] == 0 and _ogg_cut_short(source):
    # (libsndfile finds no length in an Ogg cut before its last page, and decodes nothing)
    raise CutShortError(f"{path} is cut short: its last Ogg page is missing or incomplete")
  return data, rate


# Frames decoded at a time from a file whose header promises more (soundfile would size one
# array by the header: a FLAC header can promise 2**36 samples in a file of a few bytes).
_BLOCK_FRAMES = 1 << 20


def _read_blocks(f) -> np.ndarray:
  """All of an open SoundFile's samples as float32 [T, C], decoded block by block, so
  memory follows the samples that are there, not the count the header gives."""
  blocks = []
  while True:
    block = f.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
    if not len(block):
      break
    blocks.append(block)
  return np.concatenate(blocks) if blocks else np.zeros((0, f.channels), np.float32)


def _ogg_cut_short(source) -> bool:
  """Whether an Ogg file's pages stop early: a page runs past the end of the file, or
  the last page does not carry the end-of-stream flag."""
  if isinstance(source, io.BytesIO):
    size, opened = len(source.getbuffer()), contextlib.nullcontext(source)
  else:
    size, opened = os.path.getsize(source), open(source, "rb")
  flags, pos = None, 0
  with opened as f:
    while pos < size:
      f.seek(pos)
      head = f.read(27)   # capture pattern, version, flags, ..., segment count
      if len(head) < 27 or head[:4] != b"OggS":
        return True
      lacing = f.read(head[26])
      if len(lacing) < head[26]:
        return True
      flags, pos = head[5], pos + 27 + len(lacing) + sum(lacing)
  return pos > size or flags is None or not flags & 0x04


def _libsndfile_reason(e: BaseException) -> str:
  """libsndfile's reason for an error, without the file's name that soundfile puts first
  ("Error opening b'/x.wav': ...", or a BytesIO's repr for a pipe) and with its internal
  words for a header that makes no sense said as such."""
  lines = str(e).splitlines()
  reason = lines[0] if lines else type(e).__name__
  opening = re.match(r"Error opening (?:b?'.*'|<.*>): (.+)$", reason)
  if opening:
    reason = opening.group(1)
  if "SF_INFO" in reason or reason.strip() == "System error.":
    reason = "its header is damaged, or it is not audio"
  return reason


def _mp3_counts_its_frames(source) -> bool:
  """Whether an MP3 states its length (a Xing/Info or VBRI header in its first frame, which
  encoders write): without one, libsndfile's length is mpg123's estimate from the file's
  size, which a tag or a variable bit rate makes longer than the audio."""
  def read(offset: int, n: int) -> bytes:
    if isinstance(source, io.BytesIO):
      return source.getbuffer()[offset:offset + n].tobytes()
    with open(source, "rb") as f:
      f.seek(offset)
      return f.read(n)
  head, start = read(0, 10), 0
  if head[:3] == b"ID3" and len(head) == 10:   # an ID3v2 tag first: its size is syncsafe
    for b in head[6:10]:
      start = (start << 7) | (b & 0x7F)
    start += 10
  frame = read(start, 256)
  return any(tag in frame[:200] for tag in (b"Xing", b"Info")) or b"VBRI" in frame[:64]


def wav_shortfall(path) -> Optional[Tuple[int, int]]:
  """(bytes the sample chunk's header promises, bytes the file holds) of a RIFF/WAVE (its
  `data` chunk) or AIFF/AIFF-C (its `SSND` chunk) file cut short; None for a whole file, a
  file of another kind, or a streamed file whose size field was never filled in (0 or
  0xFFFFFFFF)."""
  if isinstance(path, io.BytesIO):
    size, opened = len(path.getbuffer()), contextlib.nullcontext(path)
  else:
    size, opened = os.path.getsize(path), open(path, "rb")
  with opened as f:
    f.seek(0)
    head = f.read(12)
    if len(head) < 12:
      return None
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
      order, samples = "<", b"data"
    elif head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
      order, samples = ">", b"SSND"
    else:
      return None
    offset = 12
    while offset + 8 <= size:
      f.seek(offset)
      chunk, length = struct.unpack(order + "4sI", f.read(8))
      if chunk == samples:
        held = size - offset - 8
        if length in (0, 0xFFFFFFFF) or held >= length:
          return None
        return length, held
      offset += 8 + length + (length & 1)   # chunks are padded to an even length
  return None
