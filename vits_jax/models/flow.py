"""Prior flow f: z (posterior latent) <-> z_p (text-conditioned prior latent).

Alternating mean-only residual coupling layers and channel flips, volume preserving. Indices
follow the official `flows` list: coupling layers at even indices (`flows_0`, `flows_2`,
...), parameter-free `Flip` at odd ones.
"""

from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp
import flax.linen as nn

from vits_jax.models import receptive
from vits_jax.models.modules import Flip, ResidualCouplingLayer

Dtype = Any


class ResidualCouplingBlock(nn.Module):
  """Official `ResidualCouplingBlock`.

  Attributes:
    channels: latent width (inter_channels).
    hidden_channels: WN width.
    kernel_size, dilation_rate, n_layers: WN shape of each coupling layer (official: 5, 1, 4).
    n_flows: number of (coupling, flip) pairs.
    gin_channels: speaker conditioning width.
  """
  channels: int
  hidden_channels: int
  kernel_size: int
  dilation_rate: int
  n_layers: int
  n_flows: int = 4
  gin_channels: int = 0
  dtype: Optional[Dtype] = None

  def setup(self):
    flows = []
    for i in range(self.n_flows):
      flows.append(ResidualCouplingLayer(
          self.channels, self.hidden_channels, self.kernel_size, self.dilation_rate,
          self.n_layers, gin_channels=self.gin_channels, mean_only=True, dtype=self.dtype))
      flows.append(Flip())
    self.flows = flows  # auto-named flows_0, flows_1, ... as the official list

  def __call__(self, x: jax.Array, x_mask: jax.Array, g: Optional[jax.Array] = None,
               reverse: bool = False, train: bool = False,
               margin: int = 0) -> Tuple[jax.Array, jax.Array]:
    """Maps z -> z_p (reverse=False) or z_p -> z (reverse=True).

    Args:
      x: [B, T, channels]; x_mask: [B, T, 1]; g: [B, 1, gin] or None.
      margin: frames at each end of `x` that are context only (static; at least
        `receptive.flow_reach`): the output leaves them out, and each coupling layer drops
        the context the later ones cannot see. The other frames are those of mapping all
        of `x`.

    Returns:
      (y [B, T - 2 * margin, channels], logdet [B]) with logdet the log|det| of the map
      applied (over the frames each layer saw).
    """
    reach = receptive.coupling_reach(self.kernel_size, self.dilation_rate, self.n_layers)
    logdet = jnp.zeros((x.shape[0],), jnp.float32)
    later = self.n_flows   # coupling layers still to come
    for flow in (reversed(self.flows) if reverse else self.flows):
      x, ld = flow(x, x_mask, g=g, reverse=reverse, train=train)
      logdet = logdet + ld
      if margin and isinstance(flow, ResidualCouplingLayer):
        later -= 1
        cut = margin - later * reach
        if cut > 0:
          margin -= cut
          x, x_mask = x[:, cut:x.shape[1] - cut], x_mask[:, cut:x_mask.shape[1] - cut]
    if margin:
      x = x[:, margin:x.shape[1] - margin]
    return x, logdet
