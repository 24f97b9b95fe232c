"""Batched, bucketed synthesis: token ids -> waveforms with a `SynthesizerTrn`.

`SynthesizerTrn.infer` runs here as two jitted programs with the alignment expansion on the
host in between:

- `encode` (text encoder + duration predictor) per (batch, ids bucket): prior statistics
  per token and integer durations;
- `decode` (prior sample + reverse flow + decoder) per (batch, frame bucket), on the
  per-frame statistics.

So the encoder runs once per sentence, the frame count is known before the decoder is
compiled, and each program compiles once per bucket of its own input size: ids padded to
`TEXT_BUCKETS` (4 per octave), frames to 8 sizes per octave, batches to powers of two,
decoder batches formed from sentences of similar length. Masks make an item's output
independent of its padding and batch; its noise comes from (key, its seed) only. Tests check
this equals `model.infer`. Compiled programs live at module level keyed on the (hashable)
model, so every voice of the same architecture shares them.
"""

import functools
import math
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

# Ids buckets: 4 per octave from 128 (the text encoder's cost grows with the padded length).
TEXT_BUCKETS = (32, 64, 96) + tuple(
    o * k // 4 for o in (128, 256, 512, 1024) for k in range(4, 8)) + (2048,)
# Sentences longer than this many ids are cut at word boundaries (attention is quadratic).
MAX_IDS = TEXT_BUCKETS[-1]
# Frame buckets per octave of length: more = less padding, more programs to compile.
FRAME_STEPS_PER_OCTAVE = 8
# A batch only holds items within this fraction of its longest one's bucket (decoder; the
# cheaper encoder tolerates more padding for fewer calls).
MAX_DECODE_PADDING = 0.25
MAX_ENCODE_PADDING = 0.5
# Bound on batch * frames per decoder call. On CPU, big batches only add memory traffic (the
# convs already fill the cores at batch 1), so they stay small there.
MAX_BATCH_FRAMES = {"cpu": 2048}
MAX_BATCH_FRAMES_DEFAULT = 16384


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
  """`n` rounded up to a power of two."""
  return 1 << max(0, (n - 1).bit_length())


def synthesize_ids(model, params, ids_list: Sequence[Sequence[int]],
                   speaker_id: Optional[int] = None, noise_scale: float = 0.667,
                   noise_scale_w: float = 0.8, length_scale: float = 1.0, seed: int = 0,
                   seeds: Optional[Sequence[int]] = None, batch_size: int = 16,
                   on_done: Optional[Callable[[int], None]] = None) -> List[np.ndarray]:
  """Token id sequences -> one float32 waveform each (the model's raw output).

  Args:
    model, params: a `SynthesizerTrn` and its 'params' collection.
    ids_list: one id list per sentence.
    speaker_id: speaker id (multi-speaker models) or None.
    noise_scale, noise_scale_w, length_scale: as `SynthesizerTrn.infer`.
    seed: the noise key is `PRNGKey(seed)`.
    seeds: per-sentence noise seeds (default all 0).
    batch_size: most sentences per encoder call.
    on_done: called with each sentence's index once its audio is ready.

  Returns:
    list of float32 [samples] arrays, in the order of `ids_list`.
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
  lengths = np.asarray([len(ids) for ids in ids_list])
  for group in similar_groups(lengths, text_bucket, max(1, int(batch_size)),
                              max_padding=MAX_ENCODE_PADDING):
    for chunk in _run_group(model, params, group, ids_list, seeds, speaker_id, scales,
                            key):
      for i, wav in chunk:
        out[i] = wav
        if on_done is not None:
          on_done(i)
  return out  # type: ignore[return-value]


def trace_count(model) -> int:
  """Programs traced so far for `model` (tests assert no retrace)."""
  return _TRACES.get(model, 0)


def programs_used(model) -> int:
  """Distinct (program, shape bucket) pairs `model` has run: after warm-up `trace_count`
  must not grow beyond it."""
  return len(_SHAPES.get(model, ()))


def _arrays(group, ids_list, seeds, speaker_id):
  """Encoder inputs for `group`: ids padded to their bucket, batch padded with copies."""
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


def _run_group(model, params, group, ids_list, seeds, speaker_id, scales, key):
  """Encodes `group`, then decodes it in batches of similar length (`similar_groups`).
  Yields lists of (index, waveform)."""
  x, lengths, sid, item_seeds = _arrays(group, ids_list, seeds, speaker_id)
  _note(model, ("encode", x.shape, sid is None))
  m_p, logs_p, w_ceil = (np.asarray(a) for a in _encode_jit(
      model, params, x, lengths, sid, scales, item_seeds, key))
  frames = np.maximum(w_ceil.sum(axis=1), 1).astype(np.int64)
  hop = int(np.prod(model.upsample_rates))
  max_frames = MAX_BATCH_FRAMES.get(jax_backend(), MAX_BATCH_FRAMES_DEFAULT)
  for part in similar_groups(frames[:len(group)], frame_bucket, len(group), max_frames,
                             MAX_DECODE_PADDING):
    rows = list(part)
    yield _decode_rows(model, params, rows, group, m_p, logs_p, w_ceil, frames, sid,
                       item_seeds, scales, key, hop)


def _decode_rows(model, params, rows, group, m_p, logs_p, w_ceil, frames, sid, seeds, scales,
                 key, hop):
  """Decodes items `rows` of an encoded group; returns [(index in ids_list, waveform)]."""
  f_bucket = frame_bucket(int(frames[rows].max()))
  b = batch_bucket(len(rows))
  padded = rows + [rows[0]] * (b - len(rows))
  m_y, logs_y = expand_to_frames(m_p[padded], logs_p[padded], w_ceil[padded], f_bucket)
  sid_b = None if sid is None else sid[padded]
  _note(model, ("decode", m_y.shape, sid is None))
  o = np.asarray(_decode_jit(model, params, m_y, logs_y,
                             frames[padded].astype(np.int32), sid_b, seeds[padded], scales,
                             key))
  return [(group[r], o[k, :int(frames[r]) * hop, 0].copy()) for k, r in enumerate(rows)]


def _note(model, shape_key):
  _SHAPES.setdefault(model, set()).add(shape_key)


def similar_groups(lengths: np.ndarray, bucket: Callable[[int], int], max_batch: int,
                   max_total: Optional[int] = None,
                   max_padding: float = MAX_DECODE_PADDING) -> List[List[int]]:
  """Splits items into batches of similar length.

  Longest first: a batch takes the longest item left, whose `bucket` sets the padded
  length, and the next ones in the same bucket or within `max_padding` of it; at most
  `max_batch` items and `max_total` padded positions, and a power-of-two count of them (so
  no batch rows are wasted on padding copies).

  Returns:
    lists of item indices, covering every item once.
  """
  order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
  groups = []
  while order:
    longest = bucket(int(lengths[order[0]]))
    fits = order[:1] + [i for i in order[1:max_batch]
                        if lengths[i] >= (1 - max_padding) * longest
                        or bucket(int(lengths[i])) == longest]
    n = len(fits) if max_total is None else max(1, min(len(fits), max_total // longest))
    n = 1 << (n.bit_length() - 1)
    groups.append(fits[:n])
    taken = set(fits[:n])
    order = [i for i in order if i not in taken]
  return groups


def jax_backend() -> str:
  import jax
  return jax.default_backend()


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
