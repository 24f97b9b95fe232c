"""Duration predictors: the stochastic one (SDP, a flow over log-durations trained by
variational dequantization) and the deterministic one of `use_sdp=False`.

Both read the text encoder output with gradients stopped (as in the official code), so the
duration loss does not shape the text encoder.
"""

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from vits_jax.models.layers import Conv1d, LayerNorm
from vits_jax.models.modules import ConvFlow, DDSConv, ElementwiseAffine, Flip, Log

Dtype = Any
_LOG_2PI = math.log(2 * math.pi)


def _flow_list(n_flows, filter_channels, kernel_size, dtype):
  """[ElementwiseAffine, (ConvFlow, Flip) * n_flows] as in the official `flows` lists."""
  flows = [ElementwiseAffine(2)]
  for _ in range(n_flows):
    flows.append(ConvFlow(2, filter_channels, kernel_size, n_layers=3, dtype=dtype))
    flows.append(Flip())
  return flows


class StochasticDurationPredictor(nn.Module):
  """Official `StochasticDurationPredictor`.

  Training (`reverse=False`) returns the per-item negative variational lower bound of
  log p(w | text) for the given durations w; synthesis (`reverse=True`) samples log-durations
  by running the flow backwards from Gaussian noise scaled by `noise_scale`.

  Attributes:
    in_channels: text encoder width. The official code uses it as `filter_channels` too
      (its `filter_channels` argument is overridden), and so do we.
    kernel_size, p_dropout, n_flows, gin_channels: as official (3, 0.5, 4, gin).
  """
  in_channels: int
  filter_channels: int
  kernel_size: int
  p_dropout: float
  n_flows: int = 4
  gin_channels: int = 0
  dtype: Optional[Dtype] = None

  def setup(self):
    fc = self.in_channels  # the official override
    self.log_flow = Log()
    self.flows = _flow_list(self.n_flows, fc, self.kernel_size, self.dtype)
    self.post_pre = Conv1d(fc, 1, dtype=self.dtype)
    self.post_proj = Conv1d(fc, 1, dtype=self.dtype)
    self.post_convs = DDSConv(fc, self.kernel_size, n_layers=3, p_dropout=self.p_dropout,
                              dtype=self.dtype)
    # The posterior flows always have 4 (ConvFlow, Flip) pairs in the official code.
    self.post_flows = _flow_list(4, fc, self.kernel_size, self.dtype)
    self.pre = Conv1d(fc, 1, dtype=self.dtype)
    self.proj = Conv1d(fc, 1, dtype=self.dtype)
    self.convs = DDSConv(fc, self.kernel_size, n_layers=3, p_dropout=self.p_dropout,
                         dtype=self.dtype)
    if self.gin_channels:
      self.cond = Conv1d(fc, 1, dtype=self.dtype)

  def __call__(self, x: jax.Array, x_mask: jax.Array, w: Optional[jax.Array] = None,
               g: Optional[jax.Array] = None, reverse: bool = False,
               noise_scale: float = 1.0, noise: Optional[jax.Array] = None,
               train: bool = False) -> jax.Array:
    """Duration NLL (training) or sampled log-durations (synthesis).

    Args:
      x: [B, T, in_channels] text encoder output.
      x_mask: [B, T, 1].
      w: [B, T, 1] durations in frames (training only).
      g: [B, 1, gin] speaker embedding or None.
      reverse: sample instead of scoring.
      noise_scale: multiplies the sampling noise (reverse only; 0 = deterministic).
      noise: [B, T, 2] standard normal noise (posterior noise e_q in training, prior noise in
        synthesis); drawn from the 'noise' stream if None.
      train: enables dropout (rng stream 'dropout').

    Returns:
      training: [B] float32 nll + log q (sum over tokens); reverse: logw [B, T, 1].
    """
    x = jax.lax.stop_gradient(x)
    x = self.pre(x)
    if g is not None and self.gin_channels:
      x = x + self.cond(jax.lax.stop_gradient(g))
    x = self.convs(x, x_mask, train=train)
    x = (self.proj(x) * x_mask).astype(jnp.float32)
    shape = x.shape[:2] + (2,)

    if reverse:
      if noise is None:
        if isinstance(noise_scale, (int, float)) and noise_scale == 0:
          noise = jnp.zeros(shape, jnp.float32)
        else:
          noise = jax.random.normal(self.make_rng("noise"), shape, jnp.float32)
      z = noise * noise_scale
      flows = list(reversed(self.flows))
      flows = flows[:-2] + [flows[-1]]  # drop the first ConvFlow: it only acts on z1
      for flow in flows:
        z, _ = flow(z, x_mask, g=x, reverse=True)
      return z[..., :1]

    assert w is not None, "durations w are required in training mode"
    w = w.astype(jnp.float32)
    h_w = self.post_pre(w)
    h_w = self.post_convs(h_w, x_mask, train=train)
    h_w = (self.post_proj(h_w) * x_mask).astype(jnp.float32)
    if noise is None:
      noise = jax.random.normal(self.make_rng("noise"), shape, jnp.float32)
    e_q = noise * x_mask
    # Variational dequantization: q(u, z1 | w, text) through the posterior flows.
    z_q = e_q
    logdet_tot_q = jnp.zeros((x.shape[0],), jnp.float32)
    for flow in self.post_flows:
      z_q, logdet_q = flow(z_q, x_mask, g=x + h_w)
      logdet_tot_q = logdet_tot_q + logdet_q
    z_u, z1 = z_q[..., :1], z_q[..., 1:]
    u = jax.nn.sigmoid(z_u) * x_mask
    z0 = (w - u) * x_mask
    logdet_tot_q += jnp.sum(
        (jax.nn.log_sigmoid(z_u) + jax.nn.log_sigmoid(-z_u)) * x_mask, axis=(1, 2))
    logq = jnp.sum(-0.5 * (_LOG_2PI + e_q ** 2) * x_mask, axis=(1, 2)) - logdet_tot_q

    z0, logdet_tot = self.log_flow(z0, x_mask)
    z = jnp.concatenate([z0, z1], axis=-1)
    for flow in self.flows:
      z, logdet = flow(z, x_mask, g=x)
      logdet_tot = logdet_tot + logdet
    nll = jnp.sum(0.5 * (_LOG_2PI + z ** 2) * x_mask, axis=(1, 2)) - logdet_tot
    return nll + logq


class DurationPredictor(nn.Module):
  """Official deterministic `DurationPredictor`: two conv-ReLU-LayerNorm blocks -> log w."""
  in_channels: int
  filter_channels: int
  kernel_size: int
  p_dropout: float
  gin_channels: int = 0
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array, x_mask: jax.Array, g: Optional[jax.Array] = None,
               train: bool = False) -> jax.Array:
    """x: [B, T, in], x_mask: [B, T, 1], g: [B, 1, gin] -> logw [B, T, 1] (masked)."""
    drop = nn.Dropout(self.p_dropout, deterministic=not train)
    x = jax.lax.stop_gradient(x)
    if g is not None and self.gin_channels:
      x = x + Conv1d(self.in_channels, 1, dtype=self.dtype, name="cond")(
          jax.lax.stop_gradient(g))
    pad = self.kernel_size // 2
    for i in (1, 2):
      x = Conv1d(self.filter_channels, self.kernel_size, padding=pad, dtype=self.dtype,
                 name=f"conv_{i}")(x * x_mask)
      x = drop(LayerNorm(name=f"norm_{i}")(jax.nn.relu(x)))
    x = Conv1d(1, 1, dtype=self.dtype, name="proj")(x * x_mask)
    return (x * x_mask).astype(jnp.float32)
