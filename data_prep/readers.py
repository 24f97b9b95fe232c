"""Readers that turn a corpus on disk into a list of clips to prepare.

Each reader returns `Clip`s in a deterministic (sorted) order. A reader does not open audio
files: decoding, resampling and phonemization happen in `data_prep/process.py`, in parallel.
Rows a reader can already tell are unusable (a metadata line without fields, a transcript
without audio) come back as clips with `skip` set, so they are counted and listed like the
rest. TFDS examples (samples already in memory) are converted one at a time by
`iter_clips_from_examples`, so a TFDS split streams instead of being listed.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

# The speaker name of single-speaker corpora (LJSpeech): one entry in the speaker map.
SINGLE_SPEAKER = "ljspeech"


@dataclasses.dataclass
class Clip:
  """One row of a corpus.

  Attributes:
    clip_id: unique id ('LJ001-0001', 'p225_001').
    speaker: speaker name (SINGLE_SPEAKER for single-speaker corpora).
    text: the transcript to phonemize; None when the corpus has none for this clip.
    path: audio file, or None when the samples are given in `audio`.
    audio: [T] or [T, C] samples (TFDS), or None.
    audio_rate: sampling rate of `audio`.
    skip: reason code when the reader already knows the clip is unusable.
    detail: human-readable detail for `skip`.
  """
  clip_id: str
  speaker: str
  text: str | None
  path: str | None = None
  audio: np.ndarray | None = None
  audio_rate: int | None = None
  skip: str | None = None
  detail: str = ""


def _safe_id(clip_id: str) -> bool:
  """A clip id names a file inside the corpus folder: no path separators, no '..', no NUL."""
  return not any(c in clip_id for c in ("/", "\\", "\0")) and clip_id not in (".", "..")


def _wide_encoding(raw: bytes) -> str | None:
  """'UTF-16'/'UTF-32' (with what gave it away) when `raw` is text in such an encoding: its
  byte-order mark, or NUL bytes in a share only wide encodings produce (a stray NUL in one
  line is left to the per-row checks)."""
  for bom, name in ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
                    (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16")):
    if raw.startswith(bom):
      return f"{name} (it starts with a {name} byte-order mark)"
  nuls = raw.count(b"\0")
  if raw and nuls * 4 >= len(raw):
    name = "UTF-32" if nuls * 4 >= len(raw) * 3 else "UTF-16"
    return f"{name} ({nuls} of its {len(raw)} bytes are NUL)"
  return None


def read_ljspeech(src: str) -> list[Clip]:
  """Reads the LJSpeech-1.1 layout: `metadata.csv` (`id|text|normalized`) and `wavs/ID.wav`
  (also as Piper's datasets have it: the audio in `wav/`, an id with its `.wav`).

  The normalized column is used (numbers and abbreviations spelled out); a two-column file
  (some LJSpeech-style corpora) falls back to the text column.

  Args:
    src: the corpus root (the folder holding metadata.csv).

  Returns:
    One `Clip` per metadata row, in file order.

  Raises:
    FileNotFoundError: src or metadata.csv missing.
    ValueError: metadata.csv is not UTF-8 text at all (UTF-16 or UTF-32).
  """
  meta = os.path.join(src, "metadata.csv")
  if not os.path.isfile(meta):
    raise FileNotFoundError(f"{meta} not found (expected the LJSpeech-1.1 layout)")
  clips = []
  # Audio in wavs/ (LJSpeech), or wav/ where only that exists (Piper's own datasets); a
  # metadata id may name its file with its extension ('JOE-0001.wav', as Piper's do).
  folder = "wavs" if os.path.isdir(os.path.join(src, "wavs")) or not os.path.isdir(
      os.path.join(src, "wav")) else "wav"
  with open(meta, "rb") as f:
    raw = f.read()
  if raw.startswith(b"\xef\xbb\xbf"):
    raw = raw[3:]
  wide = _wide_encoding(raw)
  if wide:
    raise ValueError(f"{meta} is {wide}, not UTF-8: re-save it as UTF-8 (e.g. iconv -f "
                     f"{wide.split()[0]} -t UTF-8)")
  for lineno, line_bytes in enumerate(raw.split(b"\n"), 1):
    try:
      line = line_bytes.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError as e:
      clips.append(Clip(f"line{lineno}", SINGLE_SPEAKER, None, skip="bad encoding",
                        detail=f"metadata.csv line {lineno} is not UTF-8 ({e.reason} at byte "
                               f"{e.start})"))
      continue
    if not line.strip():
      continue
    # LJSpeech quotes freely inside the text; '|' is the only separator, so no csv module.
    fields = line.split("|")
    clip_id = fields[0].strip()
    if not 2 <= len(fields) <= 3 or not clip_id:
      problem = ("has no '|' fields" if len(fields) < 2 else
                 f"has {len(fields)} '|' fields, not 2 or 3 (id|text|normalized)"
                 if len(fields) > 3 else "has an empty clip id")
      clips.append(Clip(clip_id or f"line{lineno}", SINGLE_SPEAKER, None,
                        skip="malformed metadata",
                        detail=f"metadata.csv line {lineno} {problem}"))
      continue
    if not _safe_id(clip_id):
      clips.append(Clip(f"line{lineno}", SINGLE_SPEAKER, None, skip="unsafe clip id",
                        detail=f"metadata.csv line {lineno}: clip id {clip_id[:40]!r} "
                               "would read a file outside wavs/"))
      continue
    # An empty normalized column falls back to the text column (as the TFDS reader does).
    text = fields[2] if len(fields) > 2 and fields[2].strip() else fields[1]
    path = os.path.join(src, folder, clip_id + ".wav")
    if not os.path.isfile(path) and clip_id.lower().endswith(".wav") and clip_id[:-4]:
      path = os.path.join(src, folder, clip_id)   # (Piper's own metadata names the file)
      clip_id = clip_id[:-4]
    clips.append(Clip(clip_id, SINGLE_SPEAKER, text.strip(), path=path))
  return clips


def read_vctk(src: str, mic: str = "mic1") -> list[Clip]:
  """Reads the VCTK-Corpus-0.92 layout.

  Audio: `wav48_silence_trimmed/pXXX/pXXX_NNN_{mic}.flac` (the other microphone is ignored);
  the older `wav48/pXXX/pXXX_NNN.wav` layout is read when the 0.92 folder is absent.
  Transcripts: `txt/pXXX/pXXX_NNN.txt`. Audio without a transcript (all of p315 in 0.92) and
  transcripts without audio become skipped clips.

  Args:
    src: the corpus root.
    mic: 'mic1' or 'mic2'.

  Returns:
    Clips sorted by clip id.

  Raises:
    FileNotFoundError: no audio folder under src.
  """
  if mic not in ("mic1", "mic2"):
    raise ValueError(f"mic must be mic1 or mic2, got {mic!r}")
  audio_root = os.path.join(src, "wav48_silence_trimmed")
  suffix, ext = f"_{mic}", ".flac"
  if not os.path.isdir(audio_root):
    audio_root, suffix, ext = os.path.join(src, "wav48"), "", ".wav"
    if not os.path.isdir(audio_root):
      raise FileNotFoundError(
          f"neither {src}/wav48_silence_trimmed nor {src}/wav48 exists (expected the "
          "VCTK-Corpus-0.92 layout)")
  txt_root = os.path.join(src, "txt")

  clips = []
  # Audio and transcripts pair by (speaker folder, name): a corpus of its own in this layout
  # may reuse names across speakers ('001'), which must not meet another speaker's clip.
  audio = _vctk_files(audio_root, suffix + ext, clips)
  texts = _vctk_files(txt_root, ".txt", clips) if os.path.isdir(txt_root) else {}
  for key in sorted(set(audio) | set(texts)):
    speaker, name = key
    # VCTK's names begin with their speaker (p225_001); others get it, so ids stay unique.
    clip_id = name if name.startswith(speaker + "_") else f"{speaker}_{name}"
    if key not in texts:
      clips.append(Clip(clip_id, speaker, None, path=audio[key], skip="no transcript",
                        detail=f"no txt/{speaker}/{name}.txt"))
    elif key not in audio:
      clips.append(Clip(clip_id, speaker, None, skip="missing audio",
                        detail=f"no {mic} audio for {speaker}/{name}"))
    else:
      text, problem = _read_transcript(texts[key])
      if problem:
        clips.append(Clip(clip_id, speaker, None, path=audio[key], skip=problem[0],
                          detail=f"txt/{speaker}/{name}.txt {problem[1]}"))
      else:
        clips.append(Clip(clip_id, speaker, text, path=audio[key]))
  return sorted(clips, key=lambda c: (c.clip_id, c.speaker))


def _vctk_files(root: str, ending: str, clips: list[Clip]) -> dict[tuple[str, str], str]:
  """(speaker folder, name without `ending`) -> path of the files in `root`'s speaker
  folders; a speaker folder or file whose name is not UTF-8 (it could not be recorded) is
  a skipped clip in `clips`."""
  found = {}
  for speaker in sorted(os.listdir(root)):
    sdir = os.path.join(root, speaker)
    if not os.path.isdir(sdir):
      continue
    for name in sorted(os.listdir(sdir)):
      if not name.endswith(ending):
        continue
      if not (utf8_name(speaker) and utf8_name(name)):
        shown = os.fsencode(os.path.join(speaker, name)).decode("utf-8", "replace")
        clips.append(Clip(shown.replace("/", "_"), "?", None, skip="file name not UTF-8",
                          detail=f"{os.path.basename(root)}/{shown}"))
        continue
      found[(speaker, name[:-len(ending)])] = os.path.join(sdir, name)
  return found


def utf8_name(name: str) -> bool:
  """Whether a name from `os.listdir` or `sys.argv` is UTF-8 text (else it holds surrogate
  escapes)."""
  try:
    name.encode("utf-8")
  except UnicodeEncodeError:
    return False
  return True


def _read_transcript(path: str) -> tuple[str | None, tuple[str, str] | None]:
  """(text, None) or (None, (skip reason, detail)) for a VCTK transcript file: one that
  cannot be read (a dangling link, a folder) or is not UTF-8 text is skipped and counted,
  as a bad metadata.csv line is, rather than stopping the run or read with replacement
  characters."""
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except OSError as e:
    return None, ("unreadable transcript", f"cannot be read ({e.strerror or e})")
  wide = _wide_encoding(raw)
  if wide:
    return None, ("bad encoding", f"is {wide}, not UTF-8")
  try:
    return raw.decode("utf-8-sig").strip(), None
  except UnicodeDecodeError as e:
    return None, ("bad encoding", f"is not UTF-8 ({e.reason} at byte {e.start})")


def iter_clips_from_examples(examples, dataset: str, speaker_names=None):
  """Turns TFDS-style examples into clips, one at a time (the TFDS reader's core).

  A generator: nothing is held beyond the example being converted, so a TFDS split streams
  through `prepare.py` in the order its data source yields it.

  Args:
    examples: iterable of dicts with numpy values as `tfds.as_numpy` or a TFDS data source
      yields them: 'id' (str/bytes), 'speech' (int16 or float [T] or [T, C]), 'text'
      (str/bytes), 'text_normalized' (ljspeech only; preferred over 'text'), 'speaker'
      (vctk only: a ClassLabel int, also as a 0-d array, or a name).
    dataset: 'ljspeech' or 'vctk'.
    speaker_names: for vctk, the ClassLabel names that map an int 'speaker' to a name.

  Yields:
    Clips with samples in memory (`audio`, `audio_rate`), in example order.
  """
  rate = {"ljspeech": 22050, "vctk": 48000}[dataset]
  for ex in examples:
    clip_id = _to_str(ex["id"])
    text = ex.get("text_normalized") if dataset == "ljspeech" else None
    if text is None or not _to_str(text).strip():
      text = ex.get("text")
    text = None if text is None else _to_str(text).strip()
    speaker = SINGLE_SPEAKER
    if dataset == "vctk":
      speaker = ex.get("speaker", "")
      if (speaker_names is not None and np.ndim(speaker) == 0
          and np.issubdtype(np.asarray(speaker).dtype, np.integer)):
        speaker = speaker_names[int(speaker)]  # a ClassLabel index
      speaker = _to_str(speaker)
      # The VCTK builder stores an empty text where the transcript is missing (p315).
      if not text:
        yield Clip(clip_id, speaker, None, skip="no transcript",
                   detail="TFDS example has an empty text")
        continue
    yield Clip(clip_id, speaker, text, audio=np.asarray(ex["speech"]),
               audio_rate=int(ex.get("sample_rate", rate)))


def clips_from_examples(examples, dataset: str, speaker_names=None) -> list[Clip]:
  """`iter_clips_from_examples` as a list sorted by clip id (holds every clip in memory)."""
  return sorted(iter_clips_from_examples(examples, dataset, speaker_names),
                key=lambda c: c.clip_id)


def _to_str(value: Any) -> str:
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  if isinstance(value, np.ndarray) and value.ndim == 0:
    return _to_str(value.item())
  return str(value)


def speaker_map(clips: list[Clip]) -> dict[str, int]:
  """Speaker name -> id, in sorted name order, over speakers that have a usable clip.

  Speakers whose every clip is already known to be unusable (no transcript) get no id, so
  VCTK-0.92's 110 folders give the official 109 speakers.
  """
  names = sorted({c.speaker for c in clips if c.skip is None})
  return {name: i for i, name in enumerate(names)}
