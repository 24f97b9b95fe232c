"""Receptive fields of the latent side, from a model's fields alone (no flax needed): how
many frames a window's margins must hold (`SynthesizerTrn.latent_margins`) and how many
masked frames keep two utterances on one tape apart (`isolation_gap`).

`model` is anything with the `SynthesizerTrn` fields as attributes.
"""

import math


def coupling_reach(kernel_size: int, dilation_rate: int, n_layers: int) -> int:
  """Frames one coupling layer's WN looks to either side."""
  return sum((kernel_size - 1) * dilation_rate ** i // 2 for i in range(n_layers))


def flow_reach(model, total: bool) -> int:
  """Frames the reverse flow looks to either side (whole block, or its widest conv)."""
  k, r, n = model.flow_kernel_size, model.flow_dilation_rate, model.flow_n_layers
  if not total:
    return max((k - 1) * r ** i // 2 for i in range(n))
  return model.flow_n_flows * coupling_reach(k, r, n)


def _decoder_stages(model):
  """(rate, transposed conv kernel, per residual block its convs' one-sided reaches in
  samples) of each upsampling stage."""
  rate = 1
  for u, k in zip(model.upsample_rates, model.upsample_kernel_sizes):
    rate *= u
    convs = []
    for rk, rd in zip(model.resblock_kernel_sizes, model.resblock_dilation_sizes):
      half = (rk - 1) // 2
      if str(model.resblock) == "1":
        convs.append([half * d for d in rd] + [half] * len(rd))
      else:
        convs.append([half * d for d in rd])
    yield rate, k, convs


def decoder_stage_reaches(model) -> list:
  """Frames (float) the decoder looks to either side, per stage: conv_pre, then each
  upsampling stage (transposed conv and its residual blocks, which run side by side), then
  conv_post."""
  stages = [3.0]  # conv_pre, kernel 7, at frame rate
  rate = 1
  for rate, k, convs in _decoder_stages(model):
    # transposed conv: at most k samples at its output rate
    stages.append(k / rate + max(sum(c) for c in convs) / rate)
  stages.append(3.0 / rate)  # conv_post, kernel 7, at the output rate
  return stages


def decoder_crops(model, margin: int) -> list:
  """Samples a decode with `margin` context frames a side can drop at each end after
  conv_pre, after each upsampling stage and after conv_post: all of the context the later
  stages cannot see."""
  reaches = decoder_stage_reaches(model)
  cuts, context, rate = [], int(margin), 1
  for p, u in enumerate([1, *model.upsample_rates, 1]):
    rate, context = rate * u, context * u
    cut = max(context - int(math.ceil(sum(reaches[p + 1:]) * rate)), 0)
    cuts.append(cut)
    context -= cut
  return cuts


def decoder_reach(model, total: bool) -> int:
  """Frames the decoder looks to either side (whole network, or its widest conv)."""
  if total:
    return int(math.ceil(sum(decoder_stage_reaches(model))))
  reaches = [3.0]
  rate = 1
  for rate, k, convs in _decoder_stages(model):
    reaches += [k / rate, max(max(c) for c in convs) / rate]
  reaches.append(3.0 / rate)
  return int(math.ceil(max(reaches)))


def isolation_gap(model) -> int:
  """Masked frames that make two utterances laid end to end independent: every conv input
  is masked, so a gap wider than the widest single conv's reach cuts them apart."""
  return max(flow_reach(model, total=False), decoder_reach(model, total=False)) + 1
