"""VITS generator: the conditional VAE with flow prior, duration predictor and HiFi-GAN decoder.

`SynthesizerTrn` mirrors the official class (same constructor fields, submodule names and
outputs) in channels-last layout. Methods:

- `__call__`: training forward (posterior z, monotonic alignment, duration loss, decoder on a
  random z window);
- `infer`: text -> waveform, batch-consistent (per-item noise seeds, masks everywhere);
- `voice_conversion`: re-synthesize a spectrogram with another speaker.
"""

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from vits_jax.models import commons
from vits_jax.models.duration import DurationPredictor, StochasticDurationPredictor
from vits_jax.models.flow import ResidualCouplingBlock
from vits_jax.models.generator import Generator
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
    segment_size: decoder training window in frames (train.segment_size // hop_length).
    inter_channels .. upsample_kernel_sizes: official hps.model sizes.
    n_speakers: > 1 adds the speaker table `emb_g` (gin_channels wide).
    gin_channels: speaker conditioning width for enc_q, flow, dp and dec.
    use_sdp: stochastic (True) or deterministic duration predictor.
    dtype: compute dtype (None/'float32', or 'bfloat16'); params stay float32.
    n_layers_enc_q: posterior WN depth (16 in the official code, which hard-codes it).
  """
  n_vocab: int
  spec_channels: int
  segment_size: int
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

  def setup(self):
    dtype = None if self.dtype in (None, "float32") else jnp.dtype(self.dtype)
    gin = self.gin_channels
    self.enc_p = TextEncoder(self.n_vocab, self.inter_channels, self.hidden_channels,
                             self.filter_channels, self.n_heads, self.n_layers,
                             self.kernel_size, self.p_dropout, dtype=dtype)
    self.dec = Generator(str(self.resblock), tuple(self.resblock_kernel_sizes),
                         tuple(tuple(d) for d in self.resblock_dilation_sizes),
                         tuple(self.upsample_rates), self.upsample_initial_channel,
                         tuple(self.upsample_kernel_sizes), gin_channels=gin, dtype=dtype)
    self.enc_q = PosteriorEncoder(self.inter_channels, self.hidden_channels, 5, 1,
                                  self.n_layers_enc_q, gin_channels=gin, dtype=dtype)
    self.flow = ResidualCouplingBlock(self.inter_channels, self.hidden_channels, 5, 1, 4,
                                      gin_channels=gin, dtype=dtype)
    if self.use_sdp:
      self.dp = StochasticDurationPredictor(self.hidden_channels, 192, 3, 0.5, 4,
                                            gin_channels=gin, dtype=dtype)
    else:
      self.dp = DurationPredictor(self.hidden_channels, 256, 3, 0.5, gin_channels=gin,
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
      (o [B, segment_size * hop, 1], l_length [B], attn [B, T_y, T_x], ids_slice [B],
       x_mask [B, T_x, 1], y_mask [B, T_y, 1], (z, z_p, m_p, logs_p, m_q, logs_q)), the
      prior statistics expanded to frames ([B, T_y, inter_channels]).
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
        self.make_rng("slice"), z, y_lengths, self.segment_size)
    o = self.dec(z_slice, g=g)
    return o, l_length, attn, ids_slice, x_mask, y_mask, (z, z_p, m_p, logs_p, m_q, logs_q)

  def infer(self, x, x_lengths, sid=None, noise_scale=1.0, length_scale=1.0,
            noise_scale_w=1.0, max_len: Optional[int] = None, seeds=None):
    """Text -> waveform.

    Noise is drawn per item and per position (`commons.per_item_normal` with `seeds`), and
    every layer re-applies masks, so each item's output in a padded batch equals its output
    alone. Zero `noise_scale` / `noise_scale_w` (Python numbers) need no 'noise' rng.

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

    Returns:
      (o [B, T_y * hop, 1], attn [B, T_y, T_x], y_mask [B, T_y, 1], (z, z_p, m_p, logs_p)
       each [B, T_y, inter_channels]). Item b has `y_mask[b].sum() * hop` valid samples.
    """
    b, t_x = x.shape
    h, m_p, logs_p, x_mask = self.enc_p(x, x_lengths)
    g = self._speaker(sid)
    seeds = jnp.zeros((b,), jnp.int32) if seeds is None else jnp.asarray(seeds, jnp.int32)

    if self.use_sdp:
      noise_w = (jnp.zeros((b, t_x, 2), jnp.float32) if _is_zero(noise_scale_w) else
                 commons.per_item_normal(self.make_rng("noise"), seeds, (t_x, 2)))
      logw = self.dp(h, x_mask, g=g, reverse=True, noise_scale=noise_scale_w, noise=noise_w)
    else:
      logw = self.dp(h, x_mask, g=g)
    w_ceil = jnp.ceil(jnp.exp(logw) * x_mask * length_scale)
    y_lengths = jnp.maximum(jnp.sum(w_ceil, axis=(1, 2)), 1).astype(jnp.int32)
    if max_len is None:
      try:
        t_y = int(jnp.max(y_lengths))
      except jax.errors.ConcretizationTypeError:
        raise ValueError("infer under jit needs a static max_len (frames to decode)") from None
    else:
      t_y = int(max_len)
      y_lengths = jnp.minimum(y_lengths, t_y)
    y_mask = commons.sequence_mask(y_lengths, t_y)[..., None].astype(jnp.float32)
    attn = commons.generate_path(w_ceil[..., 0], y_mask * jnp.swapaxes(x_mask, 1, 2))

    hi = jax.lax.Precision.HIGHEST
    m_p = jnp.einsum("byx,bxc->byc", attn, m_p, precision=hi)
    logs_p = jnp.einsum("byx,bxc->byc", attn, logs_p, precision=hi)
    if _is_zero(noise_scale):
      z_p = m_p
    else:
      eps = commons.per_item_normal(self.make_rng("noise"), seeds, (t_y, m_p.shape[-1]))
      z_p = m_p + eps * jnp.exp(logs_p) * noise_scale
    z, _ = self.flow(z_p, y_mask, g=g, reverse=True)
    o = self.dec(z * y_mask, g=g, x_mask=y_mask)
    return o, attn, y_mask, (z, z_p, m_p, logs_p)

  def voice_conversion(self, y, y_lengths, sid_src, sid_tgt):
    """Re-synthesizes spectrograms of speaker `sid_src` with the voice of `sid_tgt`.

    Args:
      y: [B, T_y, spec_channels]; y_lengths: [B]; sid_src, sid_tgt: [B] int.

    Returns:
      (o_hat [B, T_y * hop, 1], y_mask [B, T_y, 1], (z, z_p, z_hat)). Uses the 'noise' rng
      (posterior sample).
    """
    if self.n_speakers <= 1:
      raise ValueError("voice conversion needs a multi-speaker model (n_speakers > 1)")
    g_src, g_tgt = self._speaker(sid_src), self._speaker(sid_tgt)
    z, _, _, y_mask = self.enc_q(y, y_lengths, g=g_src)
    z_p, _ = self.flow(z, y_mask, g=g_src)
    z_hat, _ = self.flow(z_p, y_mask, g=g_tgt, reverse=True)
    o_hat = self.dec(z_hat * y_mask, g=g_tgt, x_mask=y_mask)
    return o_hat, y_mask, (z, z_p, z_hat)


def init_params(model: SynthesizerTrn, rng: jax.Array):
  """Randomly initialized params (`variables['params']`) of every submodule.

  Runs the training forward once on a dummy batch (jitted), so all of enc_p, enc_q, flow,
  dp, dec and emb_g are created.
  """
  t_y = max(model.segment_size, 8)
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
  """`jax.ShapeDtypeStruct` pytree of the params, without allocating or computing them."""
  return jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0)))


def build_synthesizer(config, **overrides) -> SynthesizerTrn:
  """SynthesizerTrn from a full config (`data`, `model`, `train` sections).

  spec_channels = data.filter_length // 2 + 1 and segment_size = train.segment_size //
  data.hop_length. `overrides` replace any constructor field.
  """
  m, d = config.model, config.data
  kwargs = dict(
      n_vocab=m.n_vocab,
      spec_channels=d.filter_length // 2 + 1,
      segment_size=config.train.segment_size // d.hop_length,
      inter_channels=m.inter_channels,
      hidden_channels=m.hidden_channels,
      filter_channels=m.filter_channels,
      n_heads=m.n_heads,
      n_layers=m.n_layers,
      kernel_size=m.kernel_size,
      p_dropout=m.p_dropout,
      resblock=str(m.resblock),
      resblock_kernel_sizes=tuple(m.resblock_kernel_sizes),
      resblock_dilation_sizes=tuple(tuple(x) for x in m.resblock_dilation_sizes),
      upsample_rates=tuple(m.upsample_rates),
      upsample_initial_channel=m.upsample_initial_channel,
      upsample_kernel_sizes=tuple(m.upsample_kernel_sizes),
      n_speakers=int(m.get("n_speakers", 0) or 0),
      gin_channels=m.gin_channels,
      use_sdp=bool(m.use_sdp),
      dtype=m.get("dtype", None),
      n_layers_enc_q=m.get("n_layers_enc_q", 16),
  )
  kwargs.update(overrides)
  return SynthesizerTrn(**kwargs)
