"""VITS generator: the conditional VAE with flow prior, duration predictor and HiFi-GAN decoder.

`SynthesizerTrn` mirrors the official class (same constructor fields, submodule names and
outputs) in channels-last layout. Methods:

- `__call__`: training forward (posterior z, monotonic alignment, duration loss, decoder on a
  random z window);
- `encode_text` (text side: ids -> durations and per-token prior statistics) and
  `decode_latent` (latent side: prior sample -> reverse flow -> decoder, on a window of
  frames): the two halves every inference path is built from;
- `infer`: text -> waveform, batch-consistent (per-item noise seeds, masks everywhere);
- `encode_audio` + `voice_conversion`: re-synthesize a spectrogram with another speaker.

Methods return `(output, aux)`, aux a dict of named intermediates.
"""

import dataclasses
import math
from typing import Any, Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import flax.linen as nn

from vits_jax.models import commons
from vits_jax.models import receptive
from vits_jax.models.duration import DurationPredictor, StochasticDurationPredictor
from vits_jax.models.flow import ResidualCouplingBlock
from vits_jax.models.decoder import Decoder
from vits_jax.models.modules import Embedding
from vits_jax.models.posterior_encoder import PosteriorEncoder
from vits_jax.models.text_encoder import TextEncoder

Dtype = Any


def _is_zero(value) -> bool:
  """True for a Python number equal to 0 (so no noise needs drawing), False if traced."""
  return isinstance(value, (int, float)) and value == 0


def neg_cross_entropy(z_p: jax.Array, m_p: jax.Array, logs_p: jax.Array) -> jax.Array:
  """log N(z_p[t_y] | m_p[t_x], exp(logs_p[t_x])^2) summed over channels, for all pairs.

  Args:
    z_p: [B, T_y, C]; m_p, logs_p: [B, T_x, C].

  Returns:
    [B, T_y, T_x] float32, the value maximized by monotonic alignment search.
  """
  z_p, m_p, logs_p = (a.astype(jnp.float32) for a in (z_p, m_p, logs_p))
  s_p_sq_r = jnp.exp(-2 * logs_p)
  hi = jax.lax.Precision.HIGHEST
  nc1 = jnp.sum(-0.5 * jnp.log(2 * jnp.pi) - logs_p, axis=-1)[:, None, :]
  nc2 = jnp.einsum("byc,bxc->byx", -0.5 * z_p ** 2, s_p_sq_r, precision=hi)
  nc3 = jnp.einsum("byc,bxc->byx", z_p, m_p * s_p_sq_r, precision=hi)
  nc4 = jnp.sum(-0.5 * m_p ** 2 * s_p_sq_r, axis=-1)[:, None, :]
  return nc1 + nc2 + nc3 + nc4


class SynthesizerTrn(nn.Module):
  """VITS generator (official `SynthesizerTrn`).

  Attributes:
    n_vocab: number of token ids.
    spec_channels: linear spectrogram bins (filter_length // 2 + 1).
    segment_frames: decoder training window in frames (train.segment_size // hop_length;
      the official `segment_size` argument).
    inter_channels .. upsample_kernel_sizes: official hps.model sizes.
    n_speakers: > 1 adds the speaker table `emb_g` (gin_channels wide).
    gin_channels: speaker conditioning width for enc_q, flow, dp and dec.
    use_sdp: stochastic (True) or deterministic duration predictor.
    dtype: compute dtype (None/'float32', or 'bfloat16'); params stay float32.
    n_layers_enc_q .. dp_p_dropout: sizes the official code hard-codes (official
      defaults): posterior encoder WN depth, kernel and dilation; the prior flow's coupling
      layers, WN layers per coupling, kernel and dilation; the stochastic duration
      predictor's kernel, dropout and flows (its width is hidden_channels, as the official
      code overrides its filter_channels); the deterministic one's filter
      channels, kernel and dropout.
  """
  n_vocab: int
  spec_channels: int
  segment_frames: int
  inter_channels: int
  hidden_channels: int
  filter_channels: int
  n_heads: int
  n_layers: int
  kernel_size: int
  p_dropout: float
  resblock: str
  resblock_kernel_sizes: Sequence[int]
  resblock_dilation_sizes: Sequence[Sequence[int]]
  upsample_rates: Sequence[int]
  upsample_initial_channel: int
  upsample_kernel_sizes: Sequence[int]
  n_speakers: int = 0
  gin_channels: int = 0
  use_sdp: bool = True
  dtype: Optional[Any] = None
  n_layers_enc_q: int = 16
  enc_q_kernel_size: int = 5
  enc_q_dilation_rate: int = 1
  flow_n_flows: int = 4
  flow_n_layers: int = 4
  flow_kernel_size: int = 5
  flow_dilation_rate: int = 1
  sdp_kernel_size: int = 3
  sdp_p_dropout: float = 0.5
  sdp_n_flows: int = 4
  dp_filter_channels: int = 256
  dp_kernel_size: int = 3
  dp_p_dropout: float = 0.5

  def setup(self):
    dtype = None if self.dtype in (None, "float32") else jnp.dtype(self.dtype)
    gin = self.gin_channels
    self.enc_p = TextEncoder(self.n_vocab, self.inter_channels, self.hidden_channels,
                             self.filter_channels, self.n_heads, self.n_layers,
                             self.kernel_size, self.p_dropout, dtype=dtype)
    self.dec = Decoder(str(self.resblock), tuple(self.resblock_kernel_sizes),
                         tuple(tuple(d) for d in self.resblock_dilation_sizes),
                         tuple(self.upsample_rates), self.upsample_initial_channel,
                         tuple(self.upsample_kernel_sizes), gin_channels=gin, dtype=dtype)
    self.enc_q = PosteriorEncoder(self.inter_channels, self.hidden_channels,
                                  self.enc_q_kernel_size, self.enc_q_dilation_rate,
                                  self.n_layers_enc_q, gin_channels=gin, dtype=dtype)
    self.flow = ResidualCouplingBlock(self.inter_channels, self.hidden_channels,
                                      self.flow_kernel_size, self.flow_dilation_rate,
                                      self.flow_n_layers, n_flows=self.flow_n_flows,
                                      gin_channels=gin, dtype=dtype)
    if self.use_sdp:
      self.dp = StochasticDurationPredictor(
          self.hidden_channels, self.hidden_channels, self.sdp_kernel_size,
          self.sdp_p_dropout, self.sdp_n_flows, gin_channels=gin, dtype=dtype)
    else:
      self.dp = DurationPredictor(self.hidden_channels, self.dp_filter_channels,
                                  self.dp_kernel_size, self.dp_p_dropout, gin_channels=gin,
                                  dtype=dtype)
    if self.n_speakers > 1:
      self.emb_g = Embedding(self.n_speakers, gin)

  @property
  def hop_length(self) -> int:
    hop = 1
    for u in self.upsample_rates:
      hop *= u
    return hop

  def _speaker(self, sid: Optional[jax.Array]) -> Optional[jax.Array]:
    """Speaker embedding g [B, 1, gin] (None for single-speaker models)."""
    if self.n_speakers <= 1:
      return None
    if sid is None:
      raise ValueError("this is a multi-speaker model: pass sid (speaker ids)")
    return self.emb_g(jnp.asarray(sid, jnp.int32))[:, None, :]

  def __call__(self, x, x_lengths, y, y_lengths, sid=None, *, train: bool = True,
               maximum_path: Optional[Callable] = None):
    """Training forward.

    Args:
      x: [B, T_x] int32 token ids; x_lengths: [B].
      y: [B, T_y, spec_channels] linear spectrogram; y_lengths: [B].
      sid: [B] int speaker ids (multi-speaker models).
      train: enables dropout (rng stream 'dropout'). Streams 'noise' (posterior and SDP
        noise) and 'slice' (decoder window) are always used.
      maximum_path: (value [B, T_y, T_x], mask [B, T_y, T_x]) -> 0/1 monotonic path;
        defaults to `vits_jax.mas.maximum_path`.

    Returns:
      (o [B, segment_frames * hop, 1], aux) with aux a dict: `l_length` [B], `attn`
      [B, T_y, T_x], `ids_slice` [B], `x_mask` [B, T_x, 1], `y_mask` [B, T_y, 1], and `z`,
      `z_p`, `m_p`, `logs_p`, `m_q`, `logs_q`, the prior statistics expanded to frames
      ([B, T_y, inter_channels]).
    """
    if maximum_path is None:
      from vits_jax import mas  # imported lazily: only the training forward needs it
      maximum_path = mas.maximum_path
    h, m_p, logs_p, x_mask = self.enc_p(x, x_lengths, train=train)
    g = self._speaker(sid)
    z, m_q, logs_q, y_mask = self.enc_q(y, y_lengths, g=g, train=train)
    z_p, _ = self.flow(z, y_mask, g=g, train=train)

    value = jax.lax.stop_gradient(neg_cross_entropy(z_p, m_p, logs_p))
    attn_mask = y_mask * jnp.swapaxes(x_mask, 1, 2)                     # [B, T_y, T_x]
    attn = jax.lax.stop_gradient(
        maximum_path(value, attn_mask).astype(jnp.float32) * attn_mask)

    w = jnp.sum(attn, axis=1)[..., None]                                 # [B, T_x, 1]
    if self.use_sdp:
      l_length = self.dp(h, x_mask, w, g=g, train=train) / jnp.sum(x_mask)
    else:
      logw_ = jnp.log(w + 1e-6) * x_mask
      logw = self.dp(h, x_mask, g=g, train=train)
      l_length = jnp.sum((logw - logw_) ** 2, axis=(1, 2)) / jnp.sum(x_mask)

    # Expand the prior to frames along the alignment.
    m_p = jnp.einsum("byx,bxc->byc", attn, m_p)
    logs_p = jnp.einsum("byx,bxc->byc", attn, logs_p)

    z_slice, ids_slice = commons.rand_slice_segments(
        self.make_rng("slice"), z, y_lengths, self.segment_frames)
    o = self.dec(z_slice, g=g)
    return o, dict(l_length=l_length, attn=attn, ids_slice=ids_slice, x_mask=x_mask,
                   y_mask=y_mask, z=z, z_p=z_p, m_p=m_p, logs_p=logs_p, m_q=m_q,
                   logs_q=logs_q)

  # ------------------------------------------------------------------ inference halves
  def _noise_key(self, key, *scales):
    """The inference noise key: `key` if given (a raw uint32[2] key read as threefry's,
    whatever `jax_default_prng_impl` says), else one draw of the 'noise' stream; None when
    every scale is a Python zero (nothing to draw)."""
    if key is not None:
      return commons.threefry_key(key)
    if all(_is_zero(s) for s in scales):
      return None
    return self.make_rng("noise")

  def encode_text(self, x, x_lengths, sid=None, noise_scale_w=1.0, length_scale=1.0,
                  seeds=None, key=None):
    """Text side of inference: ids -> integer durations and per-token prior statistics.

    The duration noise of item b at token t is `frame_normal(fold_in(key, 0), seeds[b],
    t)`: the same alone, in any padded batch and in any bucket.

    Args:
      x: [B, T_x] int32 ids; x_lengths: [B]; sid: [B] speaker ids (multi-speaker).
      noise_scale_w: SDP noise scale; length_scale: duration multiplier.
      seeds: [B] int per-item seeds (default 0).
      key: noise key (default: the 'noise' rng stream, unless the noise is a Python 0).

    Returns:
      (w_ceil [B, T_x] float frames per token, 0 past each length; aux dict with `m_p`,
       `logs_p` [B, T_x, C], `x_mask` [B, T_x, 1], `logw` [B, T_x, 1]).
    """
    b, t_x = x.shape
    h, m_p, logs_p, x_mask = self.enc_p(x, x_lengths)
    g = self._speaker(sid)
    seeds = _seeds(seeds, b)
    if self.use_sdp:
      key = self._noise_key(key, noise_scale_w)
      noise_w = (jnp.zeros((b, t_x, 2), jnp.float32) if key is None else
                 commons.frame_normal(jax.random.fold_in(key, 0), seeds, t_x, 2))
      logw = self.dp(h, x_mask, g=g, reverse=True, noise_scale=noise_scale_w, noise=noise_w)
    else:
      logw = self.dp(h, x_mask, g=g)
    w_ceil = jnp.ceil(jnp.exp(logw) * x_mask * length_scale)[..., 0]
    return w_ceil, dict(m_p=m_p, logs_p=logs_p, x_mask=x_mask, logw=logw)

  def decode_latent(self, m, logs, y_mask, sid=None, noise_scale=1.0, seeds=None,
                    positions=None, key=None, flow_margin: int = 0, dec_margin: int = 0):
    """Latent side of inference on a window of frames: prior sample -> reverse flow ->
    decoder.

    The prior noise of a frame is `frame_normal(fold_in(key, 1), seed, position)`: with
    `seeds` and `positions` per frame, a window of a longer utterance (or of several
    utterances laid end to end, `vits_jax.inference`) draws exactly the noise that
    utterance draws when decoded whole. The flow maps all T frames to frames
    [flow_margin, T - flow_margin) (`ResidualCouplingBlock`'s `margin`: each coupling drops
    the context the later ones cannot see), the decoder runs on those, and its output
    leaves out `dec_margin` frames at each end (`Decoder`'s `margin`, likewise stage by
    stage): with margins no smaller than the receptive fields (`latent_margins`), the
    output equals the same frames of a whole decode.

    Args:
      m, logs: [B, T, C] per-frame prior statistics; y_mask: [B, T, 1] valid frames.
      sid: [B] speaker ids (multi-speaker).
      noise_scale: prior noise scale.
      seeds: [B] or [B, T] int seeds (default 0); positions: [B, T] int frame positions in
        their utterance (default 0..T-1).
      key: noise key (default: the 'noise' rng stream, unless noise_scale is a Python 0).
      flow_margin, dec_margin: static frame margins (see above).

    Returns:
      (o [B, (T - 2 * (flow_margin + dec_margin)) * hop, 1] float32 waveform, aux dict with
       `z_p` [B, T, C] and `z` [B, T - 2 * flow_margin, C]).
    """
    b, t, c = m.shape
    g = self._speaker(sid)
    key = self._noise_key(key, noise_scale)
    if key is None:
      z_p = m
    else:
      eps = commons.frame_normal(jax.random.fold_in(key, 1), _seeds(seeds, b), t, c,
                                 positions)
      z_p = m + eps * jnp.exp(logs) * noise_scale
    z, _ = self.flow(z_p, y_mask, g=g, reverse=True, margin=flow_margin)
    md = y_mask[:, flow_margin:t - flow_margin]
    o = self.dec(z * md, g=g, x_mask=md, margin=dec_margin)
    return o, dict(z_p=z_p, z=z)

  def infer(self, x, x_lengths, sid=None, noise_scale=1.0, length_scale=1.0,
            noise_scale_w=1.0, max_len: Optional[int] = None, seeds=None, key=None):
    """Text -> waveform: `encode_text`, the hard alignment, `decode_latent` on all frames.

    Noise is drawn per item and per position from `key` (or one draw of the 'noise' rng
    stream), so each item's output in a padded batch equals its output alone, and equals
    `vits_jax.Voice` synthesis with the same key (`PRNGKey(seed)`) and seeds. Zero
    `noise_scale` / `noise_scale_w` (Python numbers) need no rng.

    Args:
      x: [B, T_x] int32 token ids; x_lengths: [B].
      sid: [B] int speaker ids (multi-speaker models).
      noise_scale: prior noise scale (0.667 is the usual choice).
      length_scale: duration multiplier (> 1 is slower speech).
      noise_scale_w: SDP noise scale (0.8 usual).
      max_len: static number of frames to decode. Required under jit (output shapes must be
        static): items shorter than it are zero-padded, longer ones cropped. None decodes
        max(lengths) frames and only works outside jit.
      seeds: [B] int per-item noise seeds (default zeros).
      key: noise key.

    Returns:
      (o [B, T_y * hop, 1], aux dict: `attn` [B, T_y, T_x], `y_mask` [B, T_y, 1], `w_ceil`
       [B, T_x], and `z`, `z_p`, `m_p`, `logs_p` each [B, T_y, inter_channels]). Item b has
       `y_mask[b].sum() * hop` valid samples.
    """
    key = self._noise_key(key, noise_scale, noise_scale_w)
    w_ceil, text = self.encode_text(
        x, x_lengths, sid, noise_scale_w=noise_scale_w, length_scale=length_scale,
        seeds=seeds, key=None if _is_zero(noise_scale_w) else key)
    y_lengths = jnp.maximum(jnp.sum(w_ceil, axis=1), 1).astype(jnp.int32)
    if max_len is None:
      try:
        t_y = int(jnp.max(y_lengths))
      except jax.errors.ConcretizationTypeError:
        raise ValueError("infer under jit needs a static max_len (frames to decode)") from None
    else:
      t_y = int(max_len)
      y_lengths = jnp.minimum(y_lengths, t_y)
    y_mask = commons.sequence_mask(y_lengths, t_y)[..., None].astype(jnp.float32)
    attn = commons.generate_path(w_ceil, y_mask * jnp.swapaxes(text["x_mask"], 1, 2))
    hi = jax.lax.Precision.HIGHEST
    m_p = jnp.einsum("byx,bxc->byc", attn, text["m_p"], precision=hi)
    logs_p = jnp.einsum("byx,bxc->byc", attn, text["logs_p"], precision=hi)
    o, lat = self.decode_latent(m_p, logs_p, y_mask, sid, noise_scale, seeds,
                                key=None if _is_zero(noise_scale) else key)
    return o, dict(attn=attn, y_mask=y_mask, w_ceil=w_ceil, z=lat["z"], z_p=lat["z_p"],
                   m_p=m_p, logs_p=logs_p)

  def encode_audio(self, y, y_lengths, sid=None, noise_scale=1.0, seeds=None, key=None):
    """Spectrogram -> prior-space latent z_p = flow(posterior sample) for speaker `sid`.

    The posterior noise of a frame is `frame_normal(fold_in(key, 2), seed, position)`.

    Returns:
      (z_p [B, T_y, C], aux dict with `z`, `y_mask` [B, T_y, 1]).
    """
    b, t = y.shape[:2]
    g = self._speaker(sid)
    key = self._noise_key(key, noise_scale)
    c = self.inter_channels
    noise = (jnp.zeros((b, t, c), jnp.float32) if key is None else
             noise_scale * commons.frame_normal(jax.random.fold_in(key, 2), _seeds(seeds, b),
                                                t, c))
    z, _, _, y_mask = self.enc_q(y, y_lengths, g=g, noise=noise)
    z_p, _ = self.flow(z, y_mask, g=g)
    return z_p, dict(z=z, y_mask=y_mask)

  def voice_conversion(self, y, y_lengths, sid_src, sid_tgt, noise_scale=1.0, seeds=None,
                       key=None):
    """Re-synthesizes spectrograms of speaker `sid_src` with the voice of `sid_tgt`
    (official `voice_conversion`): `encode_audio` with the source speaker, then
    `decode_latent` of z_p with the target speaker and no prior noise.

    Args:
      y: [B, T_y, spec_channels]; y_lengths: [B]; sid_src, sid_tgt: [B] int.
      noise_scale: posterior sample noise (1 as official; 0 takes the posterior mean).

    Returns:
      (o_hat [B, T_y * hop, 1], aux dict: `y_mask`, `z`, `z_p`, `z_hat`).
    """
    if self.n_speakers <= 1:
      raise ValueError("voice conversion needs a multi-speaker model (n_speakers > 1)")
    z_p, enc = self.encode_audio(y, y_lengths, sid_src, noise_scale, seeds, key)
    y_mask = enc["y_mask"]
    o_hat, lat = self.decode_latent(z_p, jnp.zeros_like(z_p), y_mask, sid_tgt, 0.0)
    return o_hat, dict(y_mask=y_mask, z=enc["z"], z_p=z_p, z_hat=lat["z"])

  # ------------------------------------------------------------------ receptive fields
  def latent_margins(self) -> Tuple[int, int]:
    """(flow, decoder) one-sided receptive fields in frames, rounded up: the margins
    `decode_latent` needs so that a window's output equals a whole decode."""
    return receptive.flow_reach(self, total=True), receptive.decoder_reach(self, total=True)

  def isolation_gap(self) -> int:
    """Masked frames that make two utterances laid end to end independent: every conv
    input is masked, so a gap wider than the widest single conv's reach cuts them apart."""
    return receptive.isolation_gap(self)


def _seeds(seeds, b):
  return jnp.zeros((b,), jnp.int32) if seeds is None else jnp.asarray(seeds, jnp.int32)


def init_params(model: SynthesizerTrn, rng: jax.Array):
  """Randomly initialized params (`variables['params']`) of every submodule.

  Runs the training forward once on a dummy batch (jitted), so all of enc_p, enc_q, flow,
  dp, dec and emb_g are created.
  """
  t_y = max(model.segment_frames, 8)
  x, x_lengths = jnp.ones((1, 4), jnp.int32), jnp.array([4])
  y, y_lengths = jnp.zeros((1, t_y, model.spec_channels)), jnp.array([t_y])
  sid = jnp.zeros((1,), jnp.int32) if model.n_speakers > 1 else None

  def init(rng):
    keys = jax.random.split(rng, 4)
    rngs = dict(zip(("params", "noise", "slice", "dropout"), keys))
    return model.init(rngs, x, x_lengths, y, y_lengths, sid, train=False,
                      maximum_path=lambda value, mask: mask)["params"]

  return jax.jit(init)(rng)


def param_shapes(model: SynthesizerTrn):
  """`jax.ShapeDtypeStruct` pytree of the params, without allocating or computing them
  (traced once per distinct model)."""
  key = repr(model)
  if key not in _PARAM_SHAPES:
    _PARAM_SHAPES[key] = jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0)))
  return _PARAM_SHAPES[key]


_PARAM_SHAPES = {}


def synthesizer_kwargs(config, **overrides) -> dict:
  """The SynthesizerTrn constructor fields of a full config (`data`, `model`, `train`
  sections).

  Every `config.model` key that is a constructor field is passed (a field the config lacks,
  e.g. in an older run's config.json, keeps its official default); spec_channels =
  data.filter_length // 2 + 1 and segment_frames = train.segment_size // data.hop_length.
  `overrides` replace any constructor field.

  Raises:
    ValueError: data.hop_length is not the product of model.upsample_rates.
  """
  m, d = config.model, config.data
  hop = math.prod(m.upsample_rates)
  if int(d.hop_length) != hop:
    raise ValueError(f"config: data.hop_length {d.hop_length} is not the product of "
                     f"model.upsample_rates {list(m.upsample_rates)} ({hop})")
  fields = {f.name for f in dataclasses.fields(SynthesizerTrn)} - {"parent", "name"}
  kwargs = {k: m[k] for k in m.keys() if k in fields}
  kwargs.update(
      spec_channels=int(d.filter_length) // 2 + 1,
      segment_frames=int(config.train.segment_size) // hop,
      resblock=str(m.resblock),
      resblock_kernel_sizes=tuple(m.resblock_kernel_sizes),
      resblock_dilation_sizes=tuple(tuple(x) for x in m.resblock_dilation_sizes),
      upsample_rates=tuple(m.upsample_rates),
      upsample_kernel_sizes=tuple(m.upsample_kernel_sizes),
      n_speakers=int(m.get("n_speakers", 0) or 0),
      use_sdp=bool(m.use_sdp),
      dtype=m.get("dtype", None),
  )
  kwargs.update(overrides)
  return kwargs


def build_synthesizer(config, **overrides) -> SynthesizerTrn:
  """`SynthesizerTrn(**synthesizer_kwargs(config, **overrides))`: the one place a model is
  constructed (training, every voice source, export)."""
  return SynthesizerTrn(**synthesizer_kwargs(config, **overrides))
