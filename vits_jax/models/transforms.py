"""Monotonic piecewise rational-quadratic spline (Durkan et al. 2019, "Neural Spline Flows").

Used by `ConvFlow` in the stochastic duration predictor. Inside `[-tail_bound, tail_bound]`
the map is a K-bin rational-quadratic spline; outside it is the identity ('linear' tails),
with boundary derivatives fixed to 1 so the two pieces join smoothly.

Everything is element-wise and branch-free (`jnp.where` instead of boolean indexing), so it
jits with static shapes and gives finite gradients for inputs in the tails.
"""

from typing import Tuple

import numpy as np
import jax
import jax.numpy as jnp

DEFAULT_MIN_BIN_WIDTH = 1e-3
DEFAULT_MIN_BIN_HEIGHT = 1e-3
DEFAULT_MIN_DERIVATIVE = 1e-3


def piecewise_rational_quadratic_transform(
    inputs: jax.Array,
    unnormalized_widths: jax.Array,
    unnormalized_heights: jax.Array,
    unnormalized_derivatives: jax.Array,
    inverse: bool = False,
    tail_bound: float = 5.0,
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
) -> Tuple[jax.Array, jax.Array]:
  """Spline with linear tails, applied element-wise.

  Args:
    inputs: [...] values to transform.
    unnormalized_widths: [..., K] bin width logits.
    unnormalized_heights: [..., K] bin height logits.
    unnormalized_derivatives: [..., K - 1] interior knot derivative pre-activations.
    inverse: compute the inverse map.
    tail_bound: half-width of the spline interval.

  Returns:
    (outputs [...], logabsdet [...]): the mapped values and log|d out / d in| of the map
    applied (for `inverse=True`, the log-derivative of the inverse map).
  """
  dtype = inputs.dtype
  inputs = inputs.astype(jnp.float32)
  inside = (inputs >= -tail_bound) & (inputs <= tail_bound)
  # Knot derivatives at the interval ends equal 1 (softplus(constant) + min_derivative = 1).
  constant = float(np.log(np.exp(1 - min_derivative) - 1))
  pad = [(0, 0)] * (unnormalized_derivatives.ndim - 1) + [(1, 1)]
  unnormalized_derivatives = jnp.pad(
      unnormalized_derivatives.astype(jnp.float32), pad, constant_values=constant)
  # Evaluate the spline on clipped inputs so tail positions never produce NaNs.
  out, logabsdet = rational_quadratic_spline(
      jnp.clip(inputs, -tail_bound, tail_bound),
      unnormalized_widths.astype(jnp.float32),
      unnormalized_heights.astype(jnp.float32),
      unnormalized_derivatives,
      inverse=inverse, left=-tail_bound, right=tail_bound, bottom=-tail_bound,
      top=tail_bound, min_bin_width=min_bin_width, min_bin_height=min_bin_height,
      min_derivative=min_derivative)
  out = jnp.where(inside, out, inputs)
  logabsdet = jnp.where(inside, logabsdet, 0.0)
  return out.astype(dtype), logabsdet.astype(dtype)


def _knots(unnormalized: jax.Array, lo: float, hi: float, min_size: float):
  """Bin edges [..., K + 1] (exactly lo and hi at the ends) and sizes [..., K]."""
  num_bins = unnormalized.shape[-1]
  sizes = jax.nn.softmax(unnormalized, axis=-1)
  sizes = min_size + (1 - min_size * num_bins) * sizes
  cum = jnp.cumsum(sizes, axis=-1)
  cum = jnp.pad(cum, [(0, 0)] * (cum.ndim - 1) + [(1, 0)])
  cum = (hi - lo) * cum + lo
  cum = cum.at[..., 0].set(lo).at[..., -1].set(hi)
  return cum, cum[..., 1:] - cum[..., :-1]


def _gather(values: jax.Array, idx: jax.Array) -> jax.Array:
  return jnp.take_along_axis(values, idx[..., None], axis=-1)[..., 0]


def rational_quadratic_spline(
    inputs, unnormalized_widths, unnormalized_heights, unnormalized_derivatives,
    inverse=False, left=0., right=1., bottom=0., top=1.,
    min_bin_width=DEFAULT_MIN_BIN_WIDTH, min_bin_height=DEFAULT_MIN_BIN_HEIGHT,
    min_derivative=DEFAULT_MIN_DERIVATIVE):
  """Rational-quadratic spline on [left, right] -> [bottom, top] (inputs must lie inside).

  `unnormalized_derivatives` has K + 1 entries (one per knot).
  """
  num_bins = unnormalized_widths.shape[-1]
  if min_bin_width * num_bins > 1.0 or min_bin_height * num_bins > 1.0:
    raise ValueError("minimal bin width/height too large for the number of bins")

  cumwidths, widths = _knots(unnormalized_widths, left, right, min_bin_width)
  cumheights, heights = _knots(unnormalized_heights, bottom, top, min_bin_height)
  derivatives = min_derivative + jax.nn.softplus(unnormalized_derivatives)

  # Bin search: the last edge is nudged up so an input equal to the right end lands in
  # the last bin, as in the reference implementation.
  locations = cumheights if inverse else cumwidths
  locations = locations.at[..., -1].add(1e-6)
  bin_idx = jnp.sum(inputs[..., None] >= locations, axis=-1) - 1
  bin_idx = jnp.clip(bin_idx, 0, num_bins - 1)

  in_cumwidths = _gather(cumwidths, bin_idx)
  in_widths = _gather(widths, bin_idx)
  in_cumheights = _gather(cumheights, bin_idx)
  delta = heights / widths
  in_delta = _gather(delta, bin_idx)
  in_deriv = _gather(derivatives, bin_idx)
  in_deriv_plus_one = _gather(derivatives[..., 1:], bin_idx)
  in_heights = _gather(heights, bin_idx)
  slope_sum = in_deriv + in_deriv_plus_one - 2 * in_delta

  if inverse:
    # Solve the bin's rational quadratic for theta (the numerically stable root).
    rel = inputs - in_cumheights
    a = rel * slope_sum + in_heights * (in_delta - in_deriv)
    b = in_heights * in_deriv - rel * slope_sum
    c = -in_delta * rel
    discriminant = jnp.maximum(b ** 2 - 4 * a * c, 0.0)
    theta = (2 * c) / (-b - jnp.sqrt(discriminant))
    outputs = theta * in_widths + in_cumwidths
  else:
    theta = (inputs - in_cumwidths) / in_widths
    t1mt = theta * (1 - theta)
    numerator = in_heights * (in_delta * theta ** 2 + in_deriv * t1mt)
    outputs = in_cumheights + numerator / (in_delta + slope_sum * t1mt)

  t1mt = theta * (1 - theta)
  denominator = in_delta + slope_sum * t1mt
  derivative_numerator = in_delta ** 2 * (
      in_deriv_plus_one * theta ** 2 + 2 * in_delta * t1mt + in_deriv * (1 - theta) ** 2)
  logabsdet = jnp.log(derivative_numerator) - 2 * jnp.log(denominator)
  return outputs, (-logabsdet if inverse else logabsdet)
