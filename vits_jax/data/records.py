"""The on-disk format of prepared data: records, shard names, the manifest and its checks.

A prepared directory (written by `data_prep/prepare.py`) holds, per split (`train`,
`validation`):

    {split}-00000-of-00003.array_record   ArrayRecord shards; one msgpack record per clip
    {split}-lengths.npy                   int32 [N, 2]: (n_tokens, n_samples) per record,
                                          in the shards' concatenated order
    manifest.json                         written last; names every file with its size and
                                          sha256, so a reader can tell a complete file from a
                                          half-written or replaced one

A record is a msgpack map (msgpack ships with flax) whose arrays are raw little-endian
bytes, so decoding is two `np.frombuffer` calls and no copy of the audio:

    id       str    clip id (e.g. 'LJ001-0001', 'p225_001')
    speaker  str    speaker name ('ljspeech' for LJSpeech)
    sid      int    speaker id (index into manifest['speakers'])
    text     str    the transcript that was phonemized
    tokens   bytes  int32 token ids from the text frontend
    audio    bytes  int16 mono PCM at manifest['sample_rate']

This module imports neither jax nor grain, so the data-prep CLI stays light.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
from typing import Any

import msgpack
import numpy as np

FORMAT = "vits_jax.prepared/1"
MANIFEST = "manifest.json"
SPLITS = ("train", "validation")


def encode_record(clip_id: str, speaker: str, sid: int, text: str, tokens, audio) -> bytes:
  """Serializes one clip.

  Args:
    clip_id: clip id.
    speaker: speaker name.
    sid: integer speaker id.
    text: transcript.
    tokens: [T_text] integer token ids.
    audio: [T_audio] int16 PCM.

  Returns:
    The record bytes.
  """
  audio = np.asarray(audio)
  if audio.dtype != np.int16 or audio.ndim != 1:
    raise ValueError(f"audio must be 1-D int16, got {audio.dtype} {audio.shape}")
  return msgpack.packb({
      "id": clip_id,
      "speaker": speaker,
      "sid": int(sid),
      "text": text,
      "tokens": np.asarray(tokens, dtype="<i4").tobytes(),
      "audio": audio.astype("<i2", copy=False).tobytes(),
  })


def decode_record(data: bytes) -> dict[str, Any]:
  """Inverse of `encode_record`: tokens as int32 [T_text], audio as int16 [T_audio]."""
  rec = msgpack.unpackb(data)
  rec["tokens"] = np.frombuffer(rec["tokens"], dtype="<i4")
  rec["audio"] = np.frombuffer(rec["audio"], dtype="<i2")
  return rec


def shard_name(split: str, index: int, count: int, run: str = "") -> str:
  """A shard's file name; `run` tags the files of one preparation run, so a new run never
  overwrites files an older manifest still names."""
  tag = f"{run}-" if run else ""
  return f"{split}-{tag}{index:05d}-of-{count:05d}.array_record"


def lengths_name(split: str, run: str = "") -> str:
  tag = f"-{run}" if run else ""
  return f"{split}{tag}-lengths.npy"


def sha256_file(path: str, chunk: int = 1 << 22) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(chunk):
      h.update(block)
  return h.hexdigest()


def file_entry(path: str) -> dict[str, Any]:
  """What the manifest records about a finished file: its name, size and checksum."""
  return {"file": os.path.basename(path), "bytes": os.path.getsize(path),
          "sha256": sha256_file(path)}


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes JSON to a temporary name, fsyncs, then renames: readers see all or nothing."""
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(obj, f, indent=1, ensure_ascii=False)
      f.write("\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:   # a full disk, Ctrl-C: no temporary left behind
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def manifest_files(manifest: dict[str, Any]) -> list[dict[str, Any]]:
  """Every file entry the manifest vouches for (shards and length tables)."""
  entries = []
  for split in manifest["splits"].values():
    entries.extend(split["shards"])
    entries.append(split["lengths"])
  return entries


# What a corpus folder (LJSpeech or VCTK layout) holds where prepared data has a manifest.
CORPUS_MARKERS = ("metadata.csv", "wavs", "txt", "wav48_silence_trimmed", "wav48")


def load_manifest(data_dir: str, checksums: bool = False) -> dict[str, Any]:
  """Reads `data_dir/manifest.json` and checks that every file it names is complete.

  Args:
    data_dir: a directory written by `data_prep/prepare.py`.
    checksums: also compare sha256 (reads every byte); sizes are always compared.

  Returns:
    The manifest dict.

  Raises:
    FileNotFoundError: no manifest (never prepared, or a run was interrupted).
    ValueError: the manifest is not ours, or a file is missing, truncated or changed.
  """
  path = os.path.join(data_dir, MANIFEST)
  if not os.path.isfile(path) and any(
      os.path.exists(os.path.join(data_dir, n)) for n in CORPUS_MARKERS):
    raise FileNotFoundError(
        f"{data_dir} is a corpus, not prepared data: run data_prep/prepare.py --src "
        f"{shlex.quote(str(data_dir))} --out <a new folder>, and train on that folder")
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"{path} not found: run data_prep/prepare.py --out {shlex.quote(str(data_dir))} (an "
        "interrupted run leaves no manifest)")
  from vits_jax.files import parse_json  # pylint: disable=import-outside-toplevel
  try:
    with open(path, "rb") as f:
      manifest = parse_json(f.read().decode("utf-8"))
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON ({e}); re-run data_prep/prepare.py") from None
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
    raise ValueError(f"{path} has format {got!r}, expected {FORMAT!r}")
  problem = _structure_problem(manifest)
  if problem:
    raise ValueError(f"{path} is damaged ({problem}); re-run data_prep/prepare.py --out "
                     f"{data_dir}")
  for entry in manifest_files(manifest):
    problem = check_file(data_dir, entry, checksums)
    if problem:
      raise ValueError(f"{problem}; re-run data_prep/prepare.py --out "
                       f"{shlex.quote(str(data_dir))}")
  return manifest


def _structure_problem(manifest: dict[str, Any]) -> str | None:
  """What a manifest of the right format lacks for reading its data, or None."""
  def file_entry_ok(e):
    return (isinstance(e, dict) and isinstance(e.get("file"), str) and e["file"]
            and os.path.basename(e["file"]) == e["file"]
            and isinstance(e.get("bytes"), int) and isinstance(e.get("sha256"), str))
  splits = manifest.get("splits")
  if not isinstance(splits, dict):
    return "'splits' is not an object of splits"
  for name, split in splits.items():
    if not (isinstance(split, dict) and isinstance(split.get("shards"), list)
            and all(file_entry_ok(e) for e in split["shards"])
            and file_entry_ok(split.get("lengths"))):
      return f"split {name!r} does not list its shards and lengths files"
  counts = manifest.get("counts", {})
  if not isinstance(counts, dict) or not all(
      isinstance(counts.get(k, 0), int) for k in ("train", "validation")):
    return "'counts' is not an object of clip counts"
  rate = manifest.get("sample_rate", 1)
  if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
    return f"'sample_rate' is {rate!r}"
  speakers = manifest.get("speakers", {})
  if not isinstance(speakers, dict):
    return "'speakers' is not an object"
  n_speakers = manifest.get("n_speakers", 0) or 0
  if not isinstance(n_speakers, int) or isinstance(n_speakers, bool) or n_speakers < 0:
    return f"'n_speakers' is {n_speakers!r}"
  outside = {k: v for k, v in speakers.items() if not (
      isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n_speakers)}
  if n_speakers > 1 and outside:   # (a voice trained on them could not be loaded: its
    # names would name no speaker; a single-speaker model reads no speaker id at all)
    return (f"'speakers' holds ids outside 0..{n_speakers - 1} "
            f"({dict(list(outside.items())[:3])})")
  front = manifest.get("frontend") or {}
  if not isinstance(front, dict):
    return "'frontend' is not an object"
  n_vocab = front.get("n_vocab")
  if n_vocab is not None and (not isinstance(n_vocab, int) or isinstance(n_vocab, bool)
                              or n_vocab < 1):
    return f"'frontend.n_vocab' is {n_vocab!r}"
  cleaners = front.get("cleaners", [])
  if not (isinstance(cleaners, list) and all(isinstance(c, str) for c in cleaners)):
    return "'frontend.cleaners' is not a list of names"
  if not isinstance(front.get("kind", ""), str):
    return "'frontend.kind' is not a name"
  return None


def describe(manifest: dict[str, Any], data_dir: str) -> str:
  """One line on what a run trains on: clips per split, hours, speakers, and what the
  preparation skipped (listed with reasons in the manifest)."""
  counts = manifest.get("counts", {})
  speakers = len(set((manifest.get("speakers") or {}).values())) or 1
  hours = manifest.get("hours")
  skipped = counts.get("skipped", 0)
  return (f"data {data_dir}: {counts.get('train', 0)} training and "
          f"{counts.get('validation', 0)} validation clips"
          + (f", {hours:.2f} h" if isinstance(hours, (int, float)) else "")
          + f", {speakers} speaker(s)"
          + (f"; {skipped} clips were skipped when it was prepared (listed with their "
             f"reasons in {os.path.join(data_dir, MANIFEST)})" if skipped else ""))


def check_file(data_dir: str, entry: dict[str, Any], checksums: bool) -> str | None:
  """Returns why `entry`'s file cannot be trusted, or None when it matches the manifest."""
  fpath = os.path.join(data_dir, entry["file"])
  if not os.path.isfile(fpath):
    return f"{fpath} is missing"
  size = os.path.getsize(fpath)
  if size != entry["bytes"]:
    return f"{fpath} has {size} bytes, the manifest says {entry['bytes']}"
  if checksums and sha256_file(fpath) != entry["sha256"]:
    return f"{fpath} does not match its sha256 in the manifest"
  return None


def check_manifest(manifest: dict[str, Any], config, data_dir: str = "") -> None:
  """Checks that prepared data fits the config it is about to train (at start-up, so a
  mismatch is one clear error instead of garbage or a failure deep in a step).

  Compared (where the manifest records them): the sample rate, the text frontend (kind,
  cleaners and add_blank for 'vits'), the vocabulary (every id must have an embedding row)
  and the speakers (every speaker id must have a row of the speaker table).

  Raises:
    ValueError: naming the field, both values and the fix.
  """
  d, m = config.data, config.model
  where = f"{data_dir or d.dir}: the prepared data does not match the config"
  rate = manifest.get("sample_rate")
  if rate is not None and int(rate) != int(d.sampling_rate):
    raise ValueError(f"{where}: sample rate {rate} Hz vs data.sampling_rate "
                     f"{d.sampling_rate} (prepare with --sample-rate {d.sampling_rate} or set "
                     f"--config.data.sampling_rate={rate})")
  front = manifest.get("frontend") or {}
  kind = front.get("kind")
  if kind is not None and kind != d.get("frontend", "vits"):
    start = (config.get("train") or {}).get("init_from")
    if start:   # the voice it starts from reads text one way: the data must be read so
      raise ValueError(f"{where}: the clips were prepared with the {kind!r} frontend, and "
                       f"train.init_from={start} reads text with the "
                       f"{d.get('frontend', 'vits')!r} one: prepare them with "
                       f"data_prep/prepare.py --frontend {d.get('frontend', 'vits')}")
    raise ValueError(f"{where}: frontend {kind!r} vs data.frontend "
                     f"{d.get('frontend', 'vits')!r} (set --config.data.frontend={kind})")
  if kind == "vits":
    if "add_blank" in front and bool(front["add_blank"]) != bool(d.add_blank):
      raise ValueError(f"{where}: add_blank {bool(front['add_blank'])} vs data.add_blank "
                       f"{bool(d.add_blank)}")
    if "cleaners" in front and list(front["cleaners"]) != list(d.text_cleaners):
      raise ValueError(f"{where}: cleaners {list(front['cleaners'])} vs data.text_cleaners "
                       f"{list(d.text_cleaners)}")
  n_vocab = front.get("n_vocab")
  if n_vocab is not None and int(n_vocab) > int(m.n_vocab):
    raise ValueError(f"{where}: the frontend has {n_vocab} token ids but model.n_vocab is "
                     f"{m.n_vocab} (set --config.model.n_vocab={n_vocab})")
  speakers = int(manifest.get("n_speakers", 0) or 0)
  model_speakers = int(m.get("n_speakers", 0) or 0)
  if speakers > 1 and speakers > model_speakers:
    raise ValueError(f"{where}: {speakers} speakers but the model has "
                     f"{model_speakers if model_speakers > 1 else 'one'} (set "
                     f"--config.data.n_speakers={speakers} and a model.gin_channels > 0)")
