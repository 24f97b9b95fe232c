"""Receptive fields of the latent side, from a model's fields alone (no flax needed): how
many frames a window's margins must hold (`SynthesizerTrn.latent_margins`) and how many
masked frames keep two utterances on one tape apart (`isolation_gap`).

`model` is anything with the `SynthesizerTrn` fields as attributes.
"""

import math


def flow_reach(model, total: bool) -> int:
  """Frames the reverse flow looks to either side (whole block, or its widest conv)."""
  k, r, n = model.flow_kernel_size, model.flow_dilation_rate, model.flow_n_layers
  per_layer = [(k - 1) * r ** i // 2 for i in range(n)]
  if not total:
    return max(per_layer)
  return model.flow_n_flows * sum(per_layer)


def decoder_reach(model, total: bool) -> int:
  """Frames the decoder looks to either side (whole network, or its widest conv)."""
  reaches = [3.0]  # conv_pre, kernel 7, at frame rate
  rate = 1
  for u, k in zip(model.upsample_rates, model.upsample_kernel_sizes):
    rate *= u
    reaches.append(k / rate)  # transposed conv: at most k samples at its output rate
    convs = []
    for rk, rd in zip(model.resblock_kernel_sizes, model.resblock_dilation_sizes):
      half = (rk - 1) // 2
      if str(model.resblock) == "1":
        convs.append([half * d for d in rd] + [half] * len(rd))
      else:
        convs.append([half * d for d in rd])
    widest = max(max(c) for c in convs) / rate
    reaches.append(max(sum(c) for c in convs) / rate if total else widest)
  reaches.append(3.0 / rate)  # conv_post, kernel 7, at the output rate
  return int(math.ceil(sum(reaches) if total else max(reaches)))


def isolation_gap(model) -> int:
  """Masked frames that make two utterances laid end to end independent: every conv input
  is masked, so a gap wider than the widest single conv's reach cuts them apart."""
  return max(flow_reach(model, total=False), decoder_reach(model, total=False)) + 1
