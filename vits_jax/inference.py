"""Synthesis in fixed-size frame windows: token ids -> waveforms, whole or streamed.

Built from the model's two inference halves (`SynthesizerTrn.encode_text` and
`decode_latent`), each jitted once per input shape:

- the **text side** runs per batch of sentences, ids padded to a power-of-two bucket
  (`TEXT_BUCKETS`), batch padded to a fixed size per call: per-token prior statistics and
  integer durations come back to the host;
- the host expands them along the durations and lays the sentences end to end on a
  **tape** of frames, separated by `isolation_gap` masked frames (every conv input is
  masked, so sentences on a tape cannot see each other);
- the **latent side** (prior sample -> reverse flow -> decoder) runs over fixed windows of
  `WINDOW_FRAMES` tape frames with margins of the flow's and decoder's receptive fields on
  each side (`SynthesizerTrn.latent_margins`), so each window's output equals the same
  frames of a whole-utterance decode. The prior noise of a frame depends only on (key, the
  sentence's seed, the frame's position in its sentence). One decoder program per window
  batch size, whatever the utterance lengths; inside it, a window whose sentences end
  early (a sentence's or a job's last window) runs on the smallest of a few core sizes
  that holds them (`TAIL_FRACTIONS`, a `lax.switch`), so a short line pays for the frames
  it has rather than for a whole window.

Windows come out in tape order, so audio is delivered sentence by sentence and window by
window inside a sentence (`stream_ids`), with memory bounded by the windows in flight; a
stream whose first sentence is long starts with a shorter window (`LEAD_FRAMES`), so its
first audio waits for less.
Window batches are sharded over a 1-D mesh of all local devices (data parallel). Compiled
programs live at module level keyed on the (hashable) model, so every voice of the same
architecture shares them.
"""

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import itertools
import os
import threading
import weakref
from pathlib import Path
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence,
                    Tuple)

import numpy as np

# Id buckets: powers of two up to 256 ids keep the programs of ordinary lines few (the text
# side of a short line costs little: 64 ids, not 32, is the smallest); from there half
# octaves, and quarter octaves past 512, cut the padding of long sentences (attention is
# quadratic), whose whole text side runs before their first audio. Measured on the joe
# voice, 2 CPU cores: the text side of 313 ids takes 80 ms at 384, 108 ms at 512; the first
# streamed audio of a 565-id sentence 88 ms at 640 against 104 ms at 768 (82 at 576).
TEXT_BUCKETS = (64, 128, 256, 384, 512, 640, 768, 896, 1024, 1280, 1536, 1792, 2048)
# Sentences longer than this many ids are cut at word boundaries (`vits_jax.voice`).
MAX_IDS = TEXT_BUCKETS[-1]
# Core frames of one decoder window (~3 s at 22.05 kHz / hop 256). Each window also decodes
# its margins: measured on the joe voice on 2 CPU cores, 0.71 / 0.58 / 0.54 ms per output
# frame at 128 / 256 / 512 frames, against 0.49 for a whole-utterance decode.
WINDOW_FRAMES = 256
# Core frames of a stream's first window when its first sentence is longer than a window
# (`stream_ids(lead=...)`, used by `Voice.stream`): the first audio then waits for a
# 32-frame window (~0.37 s of audio) instead of a 256-frame one. Shorter first sentences
# keep one window size, so a short line compiles and loads no extra program.
LEAD_FRAMES = 32
# Core sizes, as fractions of a full window, that the latent program can decode a window
# at (one program: a `lax.switch` on the extent of the window's content, found on the host).
# A window whose sentences end early in it (a sentence's or a job's last window) runs the
# smallest size that holds them instead of a whole window of empty frames. Measured on the
# joe voice, 2 CPU cores: the 7.2 s sentence of `bench/infer_speed.py` (622 frames) 0.345
# vs 0.394 s, a one-line CLI call 1.64 vs 1.92 s warm; the price is compilation, 16.4 vs
# 13.4 s for that call with an empty cache. The output is the same to the bit.
TAIL_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
# Most frames one sentence may last (about 12 minutes at 22.05 kHz, hop 256): more comes
# only from an extreme length_scale or noise_scale_w, and is refused before it is expanded.
MAX_SENTENCE_FRAMES = 2 ** 16
# Most sentences per text-side call and windows per decoder call, by backend. On CPU both
# halves are compute-bound at batch 1 (per-row time falls < 20% at batch 16), so padding rows
# would only waste work; accelerators take `batch_size`.
MAX_TEXT_BATCH = {"cpu": 1}
MAX_WINDOW_BATCH = {"cpu": 1}
MAX_BATCH_DEFAULT = 64
# Sentences whose text side is computed ahead of the decoder, per text-side batch.
TEXT_GROUP_BATCHES = 4
# Decoder windows computed at once (`decode_tokens`): each in a thread of its own, delivered
# in order. XLA:CPU runs one program's ops one after another, each split over the cores, and
# leaves cores idle between and inside small ops; a second window (or the next sentence's
# text side) fills them. A window's audio does not depend on what runs beside it.
WINDOWS_IN_FLIGHT = 2


@dataclasses.dataclass(frozen=True)
class Plan:
  """Window geometry of a model: core frames, margins (frames) and the isolation gap."""
  window: int
  flow_margin: int
  dec_margin: int
  gap: int
  hop: int
  lead: int = 0  # core frames of the tape's first window (0: `window`, like the others)

  @property
  def margin(self) -> int:
    return self.flow_margin + self.dec_margin

  @property
  def span(self) -> int:
    """Input frames of one window."""
    return self.window + 2 * self.margin


def plan_for(model, window: Optional[int] = None) -> Plan:
  flow_margin, dec_margin = model.latent_margins()
  return Plan(int(window or WINDOW_FRAMES), flow_margin, dec_margin, model.isolation_gap(),
              int(model.hop_length))


def text_bucket(n: int) -> int:
  """Smallest text bucket holding `n` ids (multiples of the largest beyond it)."""
  for b in TEXT_BUCKETS:
    if n <= b:
      return b
  return -(-n // TEXT_BUCKETS[-1]) * TEXT_BUCKETS[-1]


def batch_bucket(n: int) -> int:
  """`n` rounded up to a power of two."""
  return 1 << max(0, (n - 1).bit_length())


def _round_up(n: int, k: int) -> int:
  return -(-n // k) * k


# ----------------------------------------------------------------------- the tape
@dataclasses.dataclass
class _Segment:
  index: int          # the sentence's index in the caller's list
  start: int          # first tape frame
  m: np.ndarray       # [L, C] per-frame prior mean
  logs: np.ndarray    # [L, C]
  seed: int
  durations: np.ndarray  # [n_ids] int frames per id

  @property
  def end(self) -> int:
    return self.start + len(self.m)


class _Tape:
  """Sentences laid end to end as frames, cut into decoder windows (host side)."""

  def __init__(self, plan: Plan, channels: int):
    self.plan = plan
    self.channels = channels
    self.segments: List[_Segment] = []
    self.end = 0          # first free frame (after the last sentence's gap)
    self.next_window = 0  # index of the next window to hand out

  def bounds(self, k: int) -> Tuple[int, int]:
    """Core frames [lo, hi) of window k."""
    p = self.plan
    if not p.lead:
      return k * p.window, (k + 1) * p.window
    if k == 0:
      return 0, p.lead
    return p.lead + (k - 1) * p.window, p.lead + k * p.window

  def _windows_before(self, frames: int, covering: bool) -> int:
    """Windows whose cores cover [0, frames) (`covering`), or that end at or before it."""
    p = self.plan
    first = p.lead or p.window
    if frames <= 0 or (not covering and frames < first):
      return 0
    rest = frames - first
    return 1 + (-(-rest // p.window) if covering else rest // p.window)

  def append(self, index, m_tokens, logs_tokens, durations, seed):
    durations = np.asarray(durations, np.int64)
    token = np.repeat(np.arange(len(durations)), durations)
    n = max(int(token.size), 1)
    m = np.zeros((n, self.channels), np.float32)
    logs = np.zeros((n, self.channels), np.float32)
    m[:token.size] = m_tokens[token]
    logs[:token.size] = logs_tokens[token]
    self.segments.append(_Segment(index, self.end, m, logs, int(seed), durations))
    self.end += n + self.plan.gap

  def ready(self, final: bool) -> int:
    """Windows whose input no later sentence can change (all of them when `final`)."""
    if final:
      total = self._windows_before(self.segments[-1].end if self.segments else 0, True)
    else:
      total = self._windows_before(self.end - self.plan.margin, False)
    return max(0, total - self.next_window)

  def take(self, n: int):
    """Inputs of the next `n` windows: dict of [n, span, ...] arrays, and their indices."""
    p = self.plan
    ks = list(range(self.next_window, self.next_window + n))
    self.next_window += n
    cores = {self.bounds(k)[1] - self.bounds(k)[0] for k in ks}
    assert len(cores) == 1, "windows of one call must have one size"
    span = cores.pop() + 2 * p.margin
    inputs = _latent_inputs(n, span, self.channels)
    m, logs, mask, seeds, pos = (inputs[name] for name in _LATENT_INPUTS)
    extent = 0
    for r, k in enumerate(ks):
      core_lo, core_hi = self.bounds(k)
      lo = core_lo - p.margin
      hi = lo + span
      for seg in self.segments:
        if seg.start < core_hi and seg.end > core_lo:   # content in the core
          extent = max(extent, min(seg.end, core_hi) - core_lo)
        a, b = max(lo, seg.start), min(hi, seg.end)
        if a >= b:
          continue
        m[r, a - lo:b - lo] = seg.m[a - seg.start:b - seg.start]
        logs[r, a - lo:b - lo] = seg.logs[a - seg.start:b - seg.start]
        mask[r, a - lo:b - lo] = 1.0
        seeds[r, a - lo:b - lo] = seg.seed
        pos[r, a - lo:b - lo] = np.arange(a - seg.start, b - seg.start)
    inputs["extent"] = extent   # core frames up to the last one with content, over rows
    return inputs, ks

  def deliver(self, k: int, audio: np.ndarray):
    """Splits window k's core audio [window * hop] among its sentences.

    Yields (sentence index, samples, segment or None): the segment once its last samples
    are delivered. Drops finished segments.
    """
    p = self.plan
    lo, hi = self.bounds(k)
    for seg in self.segments:
      a, b = max(lo, seg.start), min(hi, seg.end)
      if a >= b:
        continue
      piece = audio[(a - lo) * p.hop:(b - lo) * p.hop]
      yield seg.index, piece, (seg if seg.end <= hi else None)
    # Segments that end before the next window's input starts are no longer needed.
    keep_from = hi - p.margin
    self.segments = [s for s in self.segments if s.end > keep_from]


_LATENT_INPUTS = ("m", "logs", "mask", "seeds", "positions")


def _latent_inputs(n: int, span: int, channels: int) -> Dict[str, np.ndarray]:
  """Zeroed host inputs of `n` latent windows of `span` frames (`_Tape.take` fills them)."""
  return dict(m=np.zeros((n, span, channels), np.float32),
              logs=np.zeros((n, span, channels), np.float32),
              mask=np.zeros((n, span, 1), np.float32),
              seeds=np.zeros((n, span), np.int32),
              positions=np.zeros((n, span), np.int32))


# ----------------------------------------------------------------------- synthesis
# The sampling knobs of a voice whose files name none (Piper's and the official code's
# defaults). A voice's own (a Piper `.onnx.json`'s "inference", an HF config's
# `noise_scale`, `noise_scale_duration`, `speaking_rate`) replace them (`Voice.defaults`).
DEFAULT_KNOBS = dict(noise_scale=0.667, noise_scale_w=0.8, length_scale=1.0)


@dataclasses.dataclass
class Options:
  """Sampling knobs of one synthesis call."""
  speaker_id: Optional[int] = None
  noise_scale: float = DEFAULT_KNOBS["noise_scale"]
  noise_scale_w: float = DEFAULT_KNOBS["noise_scale_w"]
  length_scale: float = DEFAULT_KNOBS["length_scale"]
  seed: int = 0
  batch_size: int = 16


def stream_ids(model, params, sentences: Iterable[Tuple[Sequence[int], int]],
               options: Options, text_batch: Optional[int] = None,
               window: Optional[int] = None, lead: Optional[int] = None,
               lengths: Optional[Sequence[int]] = None
               ) -> Iterator[Tuple[int, np.ndarray, Any]]:
  """Token id sequences -> their audio, window by window, in order.

  Args:
    model, params: a `SynthesizerTrn` and its 'params' collection.
    sentences: (ids, noise seed) per sentence; consumed lazily, `TEXT_GROUP_BATCHES` text
      batches ahead of the decoder (one sentence at a time when `text_batch` is 1).
    options: knobs; the noise key is `PRNGKey(options.seed)`.
    text_batch: sentences per text-side call (default `batch_bucket(batch_size)`; 1
      streams with the least latency).
    window: decoder window core frames (default `WINDOW_FRAMES`).
    lead: core frames of the first window when the first sentence is longer than a window
      (earlier first audio, one more program); None or 0: every window is `window` long.
      With a lead the first window is also computed alone, not beside the next
      (`WINDOWS_IN_FLIGHT`).
    lengths: the id counts of `sentences`, where the caller knows them: the stored
      programs they will run start loading at once, in background threads (`_preload`);
      otherwise the first sentence is read now and its programs start loading.

  Yields:
    (sentence index, float32 samples, durations): consecutive pieces of each sentence's
    waveform, sentences in order; `durations` (int frames per id) on a sentence's last
    piece, else None.
  """
  import jax
  key = noise_key(options.seed)
  scales = _scales(options)
  backend = jax.default_backend()
  tb = min(batch_bucket(max(1, int(text_batch or options.batch_size))),
           MAX_TEXT_BATCH.get(backend, MAX_BATCH_DEFAULT))
  tb = _round_up(tb, _device_count())
  group_size = tb * (TEXT_GROUP_BATCHES if tb > 1 else 1)
  if not lengths:   # a lazy source: its first sentence says which programs come first
    source = iter(sentences)
    first = next(source, None)
    lengths = [] if first is None else [len(first[0])]
    sentences = itertools.chain([] if first is None else [first], source)
  if lengths:
    _preload(model, params, lengths, options, tb, window)

  def groups():
    source = iter(enumerate(sentences))
    while True:
      group = [item for _, item in zip(range(group_size), source)]
      if not group:
        return
      yield [(i, tokens, seed) for i, tokens, seed in _text_side(
          model, params, group, options.speaker_id, scales, key, tb)]

  return decode_tokens(model, params, groups(), options, window, lead)


def decode_tokens(model, params, groups: Iterable[List[Tuple[int, Tuple, int]]],
                  options: Options, window: Optional[int] = None, lead: Optional[int] = None
                  ) -> Iterator[Tuple[int, np.ndarray, Any]]:
  """The latent side of `stream_ids`: per-token prior statistics -> audio, in windows.

  Args:
    groups: lists of (sentence index, (m_p [n, C], logs_p [n, C], durations [n] int),
      seed), consumed one list at a time as the decoder needs more frames.
    window, lead: as `stream_ids`.

  Yields:
    as `stream_ids`.
  """
  plan = plan_for(model, window)
  devices = _device_count()
  key = noise_key(options.seed)
  scales = _scales(options)
  wb = _window_batch(options)
  tape = _Tape(plan, int(model.inter_channels))
  lead = int(lead or 0)
  streaming = lead > 0   # a stream's first window is computed alone: its audio comes first
  source = iter(groups)
  exhausted = False
  in_flight: collections.deque = collections.deque()   # (future of [n, samples], indices)

  def deliver_oldest():
    future, ks = in_flight.popleft()
    audio = future.result()
    for r, k in enumerate(ks):
      for i, piece, seg in tape.deliver(k, audio[r]):
        yield i, piece, (None if seg is None else seg.durations)

  while True:
    if not exhausted:
      group = next(source, None)
      if group is None:
        exhausted = True
      else:
        for i, (m_p, logs_p, dur), seed in group:
          tape.append(i, m_p, logs_p, dur, seed)
        if (lead and 0 < lead < plan.window and tape.next_window == 0 and
            len(tape.segments[0].m) > plan.window):
          tape.plan = dataclasses.replace(plan, lead=lead)  # a long first sentence
        lead = 0
    while True:
      ready = tape.ready(final=exhausted)
      first_alone = tape.plan.lead and tape.next_window == 0
      if ready == 0 or (ready < wb and not exhausted and not first_alone):
        break
      n = 1 if first_alone else min(ready, wb)
      inputs, ks = tape.take(n)
      # A job's last, partial call is padded to the job's window batch: one latent program
      # per batch size (a bucket per remainder would compile up to four more on an
      # accelerator). A stream's lead window runs alone, at its own size.
      batch = _round_up(batch_bucket(n), devices) if first_alone else wb
      in_flight.append((_latent_pool(WINDOWS_IN_FLIGHT, os.getpid()).submit(
          _latent_side, model, params, plan, inputs, batch, options.speaker_id, scales,
          key), ks))
      while len(in_flight) >= (1 if streaming and ks[0] == 0 else WINDOWS_IN_FLIGHT):
        yield from deliver_oldest()
    if exhausted and tape.ready(final=True) == 0:
      while in_flight:
        yield from deliver_oldest()
      return


@functools.lru_cache(maxsize=None)
def _latent_pool(workers: int, pid: int) -> concurrent.futures.ThreadPoolExecutor:
  """The window threads (per process: a forked child has none of its parent's threads)."""
  del pid
  return concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="window")


def _window_batch(options: Options) -> int:
  """Windows per latent-side call."""
  import jax
  cap = MAX_WINDOW_BATCH.get(jax.default_backend(), MAX_BATCH_DEFAULT)
  return _round_up(min(batch_bucket(max(1, int(options.batch_size))), cap), _device_count())


def noise_key(seed: int) -> np.ndarray:
  """The raw threefry key `jax.random.PRNGKey(seed)` makes with JAX's default flags, the
  pair (0, seed mod 2**32), built on the host whatever the host's flags (`jax_enable_x64`
  made seeds outside [0, 2**31) other keys, `jax_default_prng_impl` another kind of key);
  the model reads it as a threefry key. (`PRNGKey` itself also compiles and runs two small
  programs, a cost every fresh process paid before its first sentence.)"""
  return np.array([0, int(seed) % 2 ** 32], np.uint32)


def _scales(options: Options) -> np.ndarray:
  return np.asarray([options.noise_scale, options.noise_scale_w, options.length_scale],
                    np.float32)


def synthesize_ids(model, params, ids_list: Sequence[Sequence[int]],
                   speaker_id: Optional[int] = None,
                   noise_scale: float = DEFAULT_KNOBS["noise_scale"],
                   noise_scale_w: float = DEFAULT_KNOBS["noise_scale_w"],
                   length_scale: float = DEFAULT_KNOBS["length_scale"], seed: int = 0,
                   seeds: Optional[Sequence[int]] = None, batch_size: int = 16,
                   on_done: Optional[Callable[[int], None]] = None) -> List[np.ndarray]:
  """Token id sequences -> one float32 waveform each (`stream_ids`, collected).

  Args:
    ids_list: one id list per sentence; seeds: per-sentence noise seeds (default 0).
    on_done: called with each sentence's index once its audio is complete.
  """
  seeds = [0] * len(ids_list) if seeds is None else list(seeds)
  options = Options(speaker_id, noise_scale, noise_scale_w, length_scale, seed, batch_size)
  pieces: Dict[int, List[np.ndarray]] = {}
  out: List[Optional[np.ndarray]] = [None] * len(ids_list)
  for i, piece, durations in stream_ids(model, params, list(zip(ids_list, seeds)), options,
                                        text_batch=min(batch_size, len(ids_list)),
                                        lengths=[len(ids) for ids in ids_list]):
    pieces.setdefault(i, []).append(piece)
    if durations is not None:
      out[i] = np.concatenate(pieces.pop(i)).astype(np.float32)
      if on_done is not None:
        on_done(i)
  return out  # type: ignore[return-value]


def convert_audio(model, params, audio: np.ndarray, source_id: int, target_id: int,
                  noise_scale: float = 0.0, seed: int = 0,
                  window: Optional[int] = None) -> np.ndarray:
  """Voice conversion of one waveform (official `voice_conversion`): the posterior of its
  spectrogram with the source speaker, through the flow into the prior space, then the
  latent side with the target speaker (no prior noise), in windows as text synthesis.

  Args:
    audio: float32 [T] at the model's rate, T a multiple of the hop length.

  Returns:
    float32 [T] waveform.
  """
  plan = plan_for(model, window)
  hop = plan.hop
  frames = len(audio) // hop
  n_fft = 2 * (int(model.spec_channels) - 1)
  padded = _round_up(frames, plan.window)  # posterior programs per window multiple
  wav = np.zeros((1, padded * hop), np.float32)
  wav[0, :frames * hop] = audio[:frames * hop]
  key = noise_key(seed)
  _note(model, ("audio", wav.shape))
  z_p = np.asarray(_run(_audio_program, model, (n_fft,), params, wav,
                       np.asarray([frames * hop], np.int32),
                       np.asarray([source_id], np.int32), np.float32(noise_scale),
                       key))[0, :frames]
  # One frame per "token": the latent side as text synthesis runs it, with no prior noise.
  group = [(0, (z_p, np.zeros_like(z_p), np.ones(frames, np.int64)), 0)]
  options = Options(target_id, noise_scale=0.0, noise_scale_w=0.0, length_scale=1.0,
                    seed=seed, batch_size=1)
  pieces = [piece for _, piece, _ in decode_tokens(model, params, [group], options, window)]
  return np.concatenate(pieces).astype(np.float32)


class SentenceTooLong(ValueError):
  """A sentence whose durations add up to more than `MAX_SENTENCE_FRAMES` (found by its text
  side, so possibly after earlier sentences' audio). `index`: the sentence's index in the
  `stream_ids` call."""

  def __init__(self, message: str, index: int):
    super().__init__(message)
    self.index = index


def _text_side(model, params, group, sid, scales, key, batch):
  """Text side of `group` [(index, (ids, seed))] in batches of similar length.

  Yields (index, (m_p [n, C], logs_p [n, C], durations [n] int), seed) in group order.
  """
  for _, (ids, _) in group:
    if len(ids) == 0:
      raise ValueError("empty id sequence")
  results = {}
  order = sorted(range(len(group)), key=lambda j: -len(group[j][1][0]))
  while order:
    t = text_bucket(len(group[order[0]][1][0]))
    rows = [j for j in order if text_bucket(len(group[j][1][0])) == t][:batch]
    taken = set(rows)
    order = [j for j in order if j not in taken]
    padded = rows + [rows[0]] * (batch - len(rows))
    x, lengths, sids, seeds = _text_inputs(batch, t, sid)
    for r, j in enumerate(padded):
      ids, seed = group[j][1]
      x[r, :len(ids)] = ids
      lengths[r] = len(ids)
      seeds[r] = seed
    _note(model, ("text", x.shape, sid is None))
    m_p, logs_p, w_ceil = (np.asarray(a) for a in _run(
        _text_program, model, (), params, *_shard((x, lengths, sids, seeds)), scales, key))
    for r, j in enumerate(rows):
      n = int(lengths[r])
      w = w_ceil[r, :n]
      if not (np.all(np.isfinite(w)) and float(w.sum()) <= MAX_SENTENCE_FRAMES):
        raise SentenceTooLong(
            f"a sentence would last more than {MAX_SENTENCE_FRAMES} frames (length_scale "
            f"{scales[2]:g}, noise_scale_w {scales[1]:g}): lower them", group[j][0])
      results[j] = (m_p[r, :n], logs_p[r, :n], w.astype(np.int64))
  for j, (i, (_, seed)) in enumerate(group):
    yield i, results[j], seed


def _text_inputs(batch: int, t: int, sid: Optional[int]):
  """Zeroed host inputs of a text-side call: ids [batch, t], lengths, speaker ids (None
  for a single-speaker voice), seeds."""
  return (np.zeros((batch, t), np.int32), np.zeros((batch,), np.int32), _sids(batch, sid),
          np.zeros((batch,), np.int32))


def _sids(batch: int, sid: Optional[int]) -> Optional[np.ndarray]:
  """Speaker ids of a call's rows (None for a single-speaker voice)."""
  return None if sid is None else np.full((batch,), sid, np.int32)


def _latent_side(model, params, plan, inputs, batch, sid, scales, key):
  """Decodes `n` windows (padded to `batch` rows); returns [n, window * hop] float32."""
  n = inputs["m"].shape[0]
  arrays = []
  for name in _LATENT_INPUTS:
    a = inputs[name]
    if batch > n:
      a = np.concatenate([a, np.zeros((batch - n,) + a.shape[1:], a.dtype)])
    arrays.append(a)
  sids = _sids(batch, sid)
  _note(model, ("latent", arrays[0].shape, sid is None))
  sizes = tail_cores(plan, arrays[0].shape[1] - 2 * plan.margin)
  branch = np.int32(next(i for i, c in enumerate(sizes) if c >= inputs["extent"]))
  o = _run(_latent_program, model, (plan.flow_margin, plan.dec_margin, sizes), params,
           *_shard(tuple(arrays) + (sids,)), scales, key, branch)
  return np.asarray(o)[:n, :, 0]


# ------------------------------------------------------------------- devices
def process_share() -> Tuple[int, int]:
  """(this process's index, process count): a multi-host job splits its inputs by these."""
  import jax
  return jax.process_index(), jax.process_count()


def _device_count() -> int:
  import jax
  return jax.local_device_count()


@functools.lru_cache(maxsize=4)
def _batch_sharding(n_devices: int):
  import jax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  mesh = Mesh(np.asarray(jax.local_devices()), ("data",))
  return NamedSharding(mesh, PartitionSpec("data"))


def _shard(arrays):
  """Puts batch-major host arrays on all local devices, split along the batch."""
  n = _device_count()
  if n == 1:
    return arrays
  import jax
  sharding = _batch_sharding(n)
  return tuple(None if a is None else jax.device_put(a, sharding) for a in arrays)


def replicate(params):
  """Params on every local device (one device: plain `device_put`)."""
  import jax
  n = _device_count()
  if n == 1:
    return jax.device_put(params)
  from jax.sharding import NamedSharding, PartitionSpec
  mesh = _batch_sharding(n).mesh
  return jax.device_put(params, NamedSharding(mesh, PartitionSpec()))


# ------------------------------------------------------------------- jitted parts
_TRACES: Dict[Any, int] = {}
_SHAPES: Dict[Any, set] = {}  # shape buckets each model ran with


def trace_count(model) -> int:
  """Programs built so far for `model` (traced, or loaded from the exported-program cache):
  tests assert that a repeated call builds none."""
  return _TRACES.get(model, 0)


def programs_used(model) -> int:
  """Distinct (program, shape) pairs `model` has run: after warm-up `trace_count` must not
  grow beyond it."""
  return len(_SHAPES.get(model, ()))


def _note(model, shape_key):
  _SHAPES.setdefault(model, set()).add(shape_key)
  for used in _RECORDERS:
    used.add((id(model),) + shape_key)


_RECORDERS: List[set] = []


@contextlib.contextmanager
def record_programs():
  """Collects the distinct programs (model, kind, input shapes) run inside the block:

      with inference.record_programs() as used:
        voice.synthesize_batch(lines)
      print(len(used))
  """
  used: set = set()
  _RECORDERS.append(used)
  try:
    yield used
  finally:
    _RECORDERS.remove(used)


def _count_trace(model):
  _TRACES[model] = _TRACES.get(model, 0) + 1


# ------------------------------------------------------------------- programs
_PROGRAMS: Dict[Any, Callable] = {}
# id(params) -> (weak references to its leaves, its signature): a voice dropped by its user
# is freed (holding the params themselves kept every voice ever loaded alive). Every leaf is
# checked, not only the first: a dict freed and another made at its address around some of
# the same arrays (a voice with its decoder swapped or cast) has another signature.
_SIGNATURES: Dict[int, Tuple[Any, Any]] = {}


def _signature(tree) -> Tuple:
  import jax
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  return str(treedef), tuple((tuple(np.shape(a)), str(np.asarray(a).dtype) if not hasattr(
      a, "dtype") else str(a.dtype)) for a in leaves)


def _params_signature(params) -> Tuple:
  import jax
  leaves = jax.tree_util.tree_leaves(params)
  entry = _SIGNATURES.get(id(params))
  if entry is not None and len(entry[0]) == len(leaves) and all(
      ref() is leaf for ref, leaf in zip(entry[0], leaves)):
    return entry[1]
  signature = _signature(params)
  if not leaves:
    return signature
  try:   # (the entry goes with the first leaf)
    refs = (weakref.ref(leaves[0], lambda _, key=id(params): _SIGNATURES.pop(key, None)),
            *(weakref.ref(leaf) for leaf in leaves[1:]))
  except TypeError:   # a leaf that cannot be weakly referenced: not cached
    return signature
  _SIGNATURES[id(params)] = (refs, signature)
  return signature


def _run(fn, model, static: Tuple, params, *args):
  """`fn(model, *static, params, *args)` as a compiled program, built once per model,
  static values and argument shapes (`trace_count` counts the builds).

  With the persistent cache on (`vits_jax.xla_cache`) and one device, the program is kept
  in `<cache>/programs/`, keyed by the model, the shapes, the jax version and a hash of this
  package's model code: its compiled executable (`.xlaexe`, also keyed by jaxlib, the
  platform, the CPU's features and XLA_FLAGS), which a later process loads and runs with
  no tracing, lowering or compilation, and its exported form (`.jaxexport`), which a process
  that cannot load the executable lowers instead of tracing the model again (XLA's cache
  then supplies the compiled code).
  """
  key = _program_key(fn, model, static, params, args)
  with standard_jax():
    program = _PROGRAMS.get(key)
    if program is not None:
      return program(params, *args)
    with _PENDING_LOCK:
      building = _BUILDING.setdefault(key, threading.Lock())
    with building:   # windows in flight: the first of them builds, the others wait for it
      program = _PROGRAMS.get(key)
      if program is not None:
        return program(params, *args)
      return _first_run(fn, model, static, params, args, key)


def standard_jax() -> contextlib.ExitStack:
  """JAX's default behaviour for the library's own tracing and programs, whatever the host
  application has set: jit on (`jax.disable_jit()` is for the host's own code; stored
  programs cannot run without it), standard dtype promotion, rank promotion allowed (a
  host's 'strict' or 'raise' failed our tracing, so only with a cold cache)."""
  import jax
  stack = contextlib.ExitStack()
  stack.enter_context(jax.disable_jit(False))
  stack.enter_context(jax.numpy_dtype_promotion("standard"))
  stack.enter_context(jax.numpy_rank_promotion("allow"))
  return stack


_BUILDING: Dict[Any, threading.Lock] = {}


def _first_run(fn, model, static, params, args, key):
  """Builds (or takes the preloaded) program of `key`, runs it and keeps it."""
  with _PENDING_LOCK:
    pending = _PENDING.pop(key, None)
  program = pending.result() if pending is not None else None
  if program is None:
    program = _build(fn, model, static, params, args, key)
  _count_trace(model)
  import jax
  try:
    out = jax.block_until_ready(program(params, *args))   # (errors surface here)
  except Exception:  # pylint: disable=broad-except
    stored = _export_path(key)
    if stored is None or not _executable_path(stored).is_file():
      raise
    # A stored executable that loads but does not run (one saved by an older version split
    # into several objects: "Function ... not found"): build afresh without it, and drop
    # it only when the fresh program runs (an error of the call itself keeps it).
    exe = _executable_path(stored)
    aside = exe.with_name(exe.name + f".failed-{os.getpid()}")
    os.replace(exe, aside)
    try:
      program = _build(fn, model, static, params, args, key)
      out = jax.block_until_ready(program(params, *args))
    except BaseException:
      if exe.exists():   # (rebuilt and stored again: the call itself fails)
        aside.unlink(missing_ok=True)
      else:
        os.replace(aside, exe)
      raise
    aside.unlink(missing_ok=True)
  _PROGRAMS[key] = program
  return out


def _program_key(fn, model, static: Tuple, params, args) -> Tuple:
  import jax
  return (fn.__name__, model, static, _params_signature(params), _signature(args),
          _device_count(), jax.default_backend())


# Stored programs being loaded ahead of their first call (`_preload`), by `_run`'s key.
_PENDING: Dict[Any, concurrent.futures.Future] = {}
_PENDING_LOCK = threading.Lock()
_LOADERS: List[concurrent.futures.ThreadPoolExecutor] = []


def _preload(model, params, lengths: Sequence[int], options: Options, text_batch: int,
             window: Optional[int]) -> int:
  """Starts preparing the programs that sentences of these id counts will run (their
  text-side buckets and the latent window program), in order of first use, on two
  background threads: a stored executable is loaded (XLA deserializes outside the GIL,
  about 0.3 s per text program here), one not stored yet is traced, compiled and stored
  (XLA compiles outside the GIL too), so the first sentence's text program and the latent
  program build side by side and beside the first sentence's work instead of each
  stalling the first call that needs it. With the persistent cache off nothing is queued
  (each program is built on first use). Returns the number queued."""
  if _device_count() != 1:
    return 0
  plan = plan_for(model, window)
  sid = options.speaker_id
  scales, key = _scales(options), noise_key(options.seed)
  wb = _window_batch(options)
  latent = tuple(_latent_inputs(wb, plan.span, int(model.inter_channels))[name]
                 for name in _LATENT_INPUTS)
  latent = latent + (_sids(wb, sid),)
  calls, seen = [], set()
  for n in lengths:
    t = text_bucket(max(1, int(n)))
    if t not in seen:
      seen.add(t)
      calls.append((_text_program, (), _text_inputs(text_batch, t, sid), ()))
      if len(seen) == 1:
        calls.append((_latent_program, (plan.flow_margin, plan.dec_margin,
                                        tail_cores(plan, plan.window)), latent,
                      (np.int32(0),)))
  queued = 0
  for fn, static, arrays, extra in calls:
    args = tuple(arrays) + (scales, key) + extra
    pkey = _program_key(fn, model, static, params, args)
    path = _export_path(pkey)
    if pkey in _PROGRAMS or path is None:
      continue
    with _PENDING_LOCK:
      if pkey in _PENDING:
        continue
      if not _LOADERS:
        _LOADERS.append(concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="load"))
      # (JAX's configuration contexts are per thread: the loader enters its own)
      if _executable_path(path).is_file():
        _PENDING[pkey] = _LOADERS[0].submit(_in_standard_jax, _load_executable,
                                            _executable_path(path), params, args)
      else:
        _PENDING[pkey] = _LOADERS[0].submit(_in_standard_jax, _build_ahead, fn, model,
                                            static, params, args, pkey)
    queued += 1
  return queued


def _in_standard_jax(fn, *args):
  with standard_jax():
    return fn(*args)


def _build_ahead(fn, model, static, params, args, key):
  """`_build` on a loader thread; None where it fails (the first call then builds on its
  own thread, where the error, if it recurs, reaches the caller)."""
  try:
    return _build(fn, model, static, params, args, key)
  except Exception:  # pylint: disable=broad-except
    return None


def _build(fn, model, static, params, args, key):
  import jax
  jitted = jax.jit(functools.partial(fn, model, *static))
  path = _export_path(key)
  if path is None:
    return jitted
  exe_path = _executable_path(path)
  loaded = _load_executable(exe_path, params, args)
  if loaded is not None:
    return loaded
  from jax import export
  specs = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype),
                                 (params,) + tuple(args))
  program = None
  if path.is_file():
    try:   # (checked: a damaged module otherwise fails at its first call, or runs wrong)
      blob, _ = _unsealed(path.read_bytes(), _EXPORT_MAGIC)
      program = jax.jit(export.deserialize(bytearray(blob)).call)
    except Exception:  # pylint: disable=broad-except  (unreadable entry: rebuild it)
      program = None
  if program is None:
    try:
      exported = export.export(jitted)(*specs)
      blob = exported.serialize()
    except Exception:  # pylint: disable=broad-except  (not exportable here: plain jit)
      return jitted
    _write_atomic(path, _sealed(_EXPORT_MAGIC, blob))
    program = jax.jit(exported.call)
  return _save_executable(exe_path, program, specs) or program


def _write_atomic(path: Path, blob: bytes) -> None:
  tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(blob)
    os.replace(tmp, path)
  except OSError:   # a read-only or full cache: run without saving (and leave no tmp file)
    try:
      tmp.unlink(missing_ok=True)
    except OSError:
      pass


# Compiled executables: a header line (magic, sha256 of the payload, output arity) and the
# payload of `jax.experimental.serialize_executable.serialize`.
_EXE_MAGIC = b"vits_jax-xlaexe-1"
# Exported programs: a header line (magic, sha256 of the payload) and `Exported.serialize()`.
_EXPORT_MAGIC = b"vits_jax-jaxexport-1"


def _sealed(magic: bytes, payload: bytes, *fields: bytes) -> bytes:
  """A stored program's bytes: a header line (`magic`, the sha256 of `payload`, `fields`)
  and `payload`."""
  import hashlib
  return b" ".join([magic, hashlib.sha256(payload).hexdigest().encode(), *fields]) + \
      b"\n" + payload


def _unsealed(data: bytes, magic: bytes):
  """`(payload, fields)` of `_sealed` bytes; ValueError where they are another format or
  damaged (the payload's sha256 differs)."""
  import hashlib
  header, _, payload = data.partition(b"\n")
  got, digest, *fields = header.split(b" ") + [b""]
  if got != magic or digest != hashlib.sha256(payload).hexdigest().encode():
    raise ValueError("not a whole stored program")
  return payload, fields[:-1]


@functools.lru_cache(maxsize=1)
def _machine_tag() -> str:
  """What a compiled executable depends on beyond the program: jaxlib, the platform's
  version, the CPU's features and XLA_FLAGS."""
  import hashlib
  import platform
  import jax
  import jaxlib
  flags = ""
  try:
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
      flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
  except OSError:
    flags = platform.processor()
  device = jax.devices()[0]
  # The executable is bound to the devices it was compiled for: in a multi-process run each
  # process has its own (ids 0, 2048, 4096, ... on CPU), so one process's executable does
  # not run in another, and sharing one file made them race to replace it.
  parts = (jaxlib.__version__, device.platform, device.client.platform_version,
           getattr(device, "device_kind", ""), platform.machine(), flags,
           os.environ.get("XLA_FLAGS", ""), tuple(d.id for d in jax.local_devices()))
  return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _executable_path(export_path: Path) -> Path:
  return export_path.with_name(f"{export_path.stem}-{_machine_tag()}.xlaexe")


def _load_executable(path: Path, params, args):
  """The compiled program saved at `path`, or None (absent, damaged, not loadable here)."""
  import jax
  try:
    data = path.read_bytes()
  except OSError:
    return None
  try:
    payload, (n_out,) = _unsealed(data, _EXE_MAGIC)
    from jax.experimental import serialize_executable
    in_tree = jax.tree_util.tree_structure(((params,) + tuple(args), {}))
    n_out = int(n_out)
    out_tree = jax.tree_util.tree_structure(0 if n_out < 0 else (0,) * n_out)
    compiled = serialize_executable.deserialize_and_load(payload, in_tree, out_tree)
  except Exception:  # pylint: disable=broad-except  (another jaxlib or machine: rebuild)
    return None
  return compiled


# Compiler options of every executable saved to disk (here and `training.programs`): one
# object file. XLA:CPU may split a program's code into several, and such an executable
# serializes and loads but fails when run ("Function ... not found").
SAVED_EXECUTABLE_OPTIONS = {"xla_cpu_parallel_codegen_split_count": 1}


# A compiler option that only matters when dumping HLO: set to this value it gives a program
# a cache key of its own, under which `compile_fresh` writes no entry (see there).
_FRESH = 987654321


def compile_fresh(lowered, compiler_options: Optional[dict] = None):
  """`lowered.compile()` for an executable to be saved (`SAVED_EXECUTABLE_OPTIONS`), compiled
  afresh: one that XLA's persistent cache supplied serializes into one that loads but fails
  when run ('Function ... not found'). The `_FRESH` option gives the program a cache key of
  its own, and this thread writes no cache entry (a per-thread setting), so XLA's cache never
  supplies it; other threads compile and use the cache meanwhile."""
  from jax._src import config as jax_config  # thread-local settings
  options = dict(compiler_options or {}, xla_dump_max_hlo_modules=_FRESH,
                 **SAVED_EXECUTABLE_OPTIONS)
  with jax_config.persistent_cache_min_compile_time_secs(float("inf")):
    return lowered.compile(compiler_options=options)


def _save_executable(path: Path, program, specs):
  """Compiles `program` for `specs` afresh (not from XLA's cache: an executable XLA's cache
  supplied does not serialize into one that loads) and saves it; returns the compiled
  program, or None where this backend cannot serialize one."""
  import jax
  try:
    from jax.experimental import serialize_executable
    compiled = compile_fresh(program.lower(*specs))
    payload, _, out_tree = serialize_executable.serialize(compiled)
  except Exception:  # pylint: disable=broad-except
    return None
  leaves = out_tree.num_leaves
  n_out = -1 if out_tree == jax.tree_util.tree_structure(0) else leaves
  if n_out >= 0 and out_tree != jax.tree_util.tree_structure((0,) * leaves):
    return compiled  # an output structure the header cannot describe: run, don't save
  _write_atomic(path, _sealed(_EXE_MAGIC, payload, str(n_out).encode()))
  return compiled


def _export_path(key):
  """Where the exported program of `key` lives, or None (cache off, several devices)."""
  from vits_jax import xla_cache
  root = xla_cache.cache_dir()
  if not root or key[5] != 1:
    return None
  import hashlib
  import jax
  digest = hashlib.sha256(repr((key[0], repr(key[1]), key[2], key[3], key[4], key[6],
                                jax.__version__, _flax_version(), _code_hash())).encode())
  return Path(root) / "programs" / f"{key[0].strip('_')}-{digest.hexdigest()[:32]}.jaxexport"


@functools.lru_cache(maxsize=1)
def _flax_version() -> str:
  """Flax's version without importing it (a cached program runs without Flax)."""
  from importlib import metadata
  try:
    return metadata.version("flax")
  except metadata.PackageNotFoundError:
    import flax
    return flax.__version__


@functools.lru_cache(maxsize=1)
def _code_hash() -> str:
  """Hash of the model code an exported program was traced from (a change re-traces)."""
  import hashlib
  here = Path(__file__).resolve().parent
  h = hashlib.sha256()
  for path in sorted([here / "inference.py", here / "audio.py", *here.glob("models/*.py")]):
    h.update(path.read_bytes())
  return h.hexdigest()


def _text_program(model, params, x, lengths, sid, seeds, scales, key):
  w_ceil, aux = model.apply({"params": params}, x, lengths, sid, noise_scale_w=scales[1],
                            length_scale=scales[2], seeds=seeds, key=key,
                            method="encode_text")
  return aux["m_p"], aux["logs_p"], w_ceil


def tail_cores(plan: Plan, core: int) -> Tuple[int, ...]:
  """Core sizes, smallest first, that the latent program decodes a window of `core` frames
  at (`TAIL_FRACTIONS` of a full window; a lead window has its one size)."""
  if core != plan.window:
    return (core,)
  return tuple(sorted({max(1, int(round(core * f))) for f in TAIL_FRACTIONS} | {core}))


def _latent_program(model, flow_margin, dec_margin, sizes, params, m, logs, mask, seeds,
                    positions, sid, scales, key, branch):
  import jax
  import jax.numpy as jnp
  margin = flow_margin + dec_margin
  core = sizes[-1]
  hop = model.hop_length

  def at(size):   # the window's first `size` core frames and their margins
    def decode(operands):
      frames, sid = operands
      m, logs, mask, seeds, positions = (a[:, :size + 2 * margin] for a in frames)
      o, _ = model.apply({"params": params}, m, logs, mask, sid, noise_scale=scales[0],
                         seeds=seeds, positions=positions, key=key, flow_margin=flow_margin,
                         dec_margin=dec_margin, method="decode_latent")
      return jnp.pad(o, ((0, 0), (0, (core - size) * hop), (0, 0)))
    return decode

  operands = ((m, logs, mask, seeds, positions), sid)
  if len(sizes) == 1:
    return at(core)(operands)
  return jax.lax.switch(branch, [at(c) for c in sizes], operands)


def _audio_program(model, n_fft, params, wav, lengths, sid, noise_scale, key):
  from vits_jax import audio
  hop = model.hop_length
  spec = audio.spectrogram(wav, n_fft, hop, n_fft, lengths)
  z_p, _ = model.apply({"params": params}, spec, lengths // hop, sid, noise_scale=noise_scale,
                       key=key, method="encode_audio")
  return z_p
