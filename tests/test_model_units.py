"""Unit checks of the generator's training-only paths that the inference parity goldens do
not see: log-determinants of every flow layer against the Jacobian (forward and reverse,
padded positions excluded), the spline against an independent numpy formula, the MAS value
against log N in numpy, and the training forward's outputs against its parts run one by one
(speaker conditioning of the posterior encoder, flow, decoder and duration predictor)."""

import math

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from vits_jax import mas
from vits_jax.models import commons, modules
from vits_jax.models.synthesizer import neg_cross_entropy
from vits_jax.models.transforms import piecewise_rational_quadratic_transform

from test_model_properties import perturb, small_model


# ------------------------------------------------------------------ flow log-determinants
T, VALID = 5, 4   # one item of 5 frames, the last one padding


def _layer(name):
  if name == "coupling_affine":
    return modules.ResidualCouplingLayer(4, 8, 3, 1, 2, gin_channels=3), 4
  if name == "coupling_mean_only":
    return modules.ResidualCouplingLayer(4, 8, 3, 1, 2, gin_channels=3, mean_only=True), 4
  if name == "elementwise_affine":
    return modules.ElementwiseAffine(2), 2
  if name == "conv_flow":
    return modules.ConvFlow(2, 8, 3, n_layers=2), 2
  if name == "log":
    return modules.Log(), 2
  raise KeyError(name)


def _valid_jacobian_logdet(fn, x, c):
  """log|det| of d fn(x)[valid] / d x[valid] (the padded frame is neither input nor output)."""
  def inner(v):
    full = jnp.zeros((1, T, c)).at[0, :VALID].set(v.reshape(VALID, c))
    return fn(full)[0, :VALID].reshape(-1)
  jac = jax.jacfwd(inner)(x[0, :VALID].reshape(-1))
  sign, logabs = np.linalg.slogdet(np.asarray(jac, np.float64))
  assert sign != 0
  return logabs


@pytest.mark.parametrize("name", ["coupling_affine", "coupling_mean_only",
                                  "elementwise_affine", "conv_flow", "log"])
def test_flow_layer_logdet_is_the_log_jacobian_both_ways(name):
  """logdet of the forward map and of the reverse map each equal log|det J| of the map
  applied, over the valid frames only; reverse(forward(x)) = x."""
  layer, c = _layer(name)
  x_mask = commons.sequence_mask(jnp.array([VALID]), T)[..., None].astype(jnp.float32)
  key = jax.random.PRNGKey(0)
  if name == "log":
    x = jnp.exp(0.5 * jax.random.normal(key, (1, T, c)))
  else:
    x = 2.0 * jax.random.normal(key, (1, T, c))   # the spline's tails (|x| > 5) included
    x = x.at[0, 1, -1].set(6.0)
  x = x * x_mask
  if name.startswith("coupling"):
    g = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 3))
  elif name == "conv_flow":
    g = jax.random.normal(jax.random.PRNGKey(1), (1, T, 8))
  else:
    g = None
  if name == "log":
    variables = {}
  else:
    variables = perturb(layer.init(jax.random.PRNGKey(2), x, x_mask, g=g), seed=3, scale=0.4)

  def run(v, reverse):
    return layer.apply(variables, v, x_mask, g=g, reverse=reverse)

  y, ld = run(x, False)
  x_back, ld_inv = run(y, True)
  np.testing.assert_allclose(x_back * x_mask, x, atol=1e-4)
  want = _valid_jacobian_logdet(lambda v: run(v, False)[0], x, c)
  want_inv = _valid_jacobian_logdet(lambda v: run(v, True)[0], y, c)
  if name != "coupling_mean_only":
    assert abs(want) > 0.05, want   # the check is not vacuous
  np.testing.assert_allclose(float(ld[0]), want, atol=2e-3, rtol=1e-3)
  np.testing.assert_allclose(float(ld_inv[0]), want_inv, atol=2e-3, rtol=1e-3)


# ------------------------------------------------------------------ spline
def _softplus(x):
  return np.logaddexp(0.0, x)


def _np_spline(x, uw, uh, ud, tail_bound, min_w=1e-3, min_h=1e-3, min_d=1e-3):
  """Durkan et al.'s rational-quadratic spline with linear tails, forward, float64 numpy:
  boundary knot derivatives exactly 1, bins of size at least min_w / min_h."""
  k = uw.shape[-1]

  def knots(u, min_size):
    s = np.exp(u - u.max(-1, keepdims=True))
    s = s / s.sum(-1, keepdims=True)
    s = min_size + (1 - min_size * k) * s
    edges = np.concatenate([np.zeros(s.shape[:-1] + (1,)), np.cumsum(s, -1)], -1)
    edges = -tail_bound + 2 * tail_bound * edges
    edges[..., 0], edges[..., -1] = -tail_bound, tail_bound
    return edges

  cw, ch = knots(uw, min_w), knots(uh, min_h)
  d = np.concatenate([np.ones(ud.shape[:-1] + (1,)), min_d + _softplus(ud),
                      np.ones(ud.shape[:-1] + (1,))], -1)
  y, ld = np.array(x, np.float64), np.zeros_like(x, np.float64)
  for i in np.ndindex(x.shape):
    xi = x[i]
    if not -tail_bound <= xi <= tail_bound:
      continue
    j = min(int(np.searchsorted(cw[i], xi, side="right")) - 1, k - 1)
    w, h = cw[i][j + 1] - cw[i][j], ch[i][j + 1] - ch[i][j]
    s, d0, d1 = h / w, d[i][j], d[i][j + 1]
    th = (xi - cw[i][j]) / w
    den = s + (d1 + d0 - 2 * s) * th * (1 - th)
    y[i] = ch[i][j] + h * (s * th ** 2 + d0 * th * (1 - th)) / den
    ld[i] = np.log(s ** 2 * (d1 * th ** 2 + 2 * s * th * (1 - th) + d0 * (1 - th) ** 2)) \
        - 2 * np.log(den)
  return y, ld


def test_spline_matches_numpy_reference_and_joins_the_tails_smoothly():
  rng = np.random.RandomState(0)
  shape, k, tb = (4, 40), 10, 5.0
  x = rng.uniform(-6, 6, shape)
  x[0, :2] = [-tb, tb]                    # the interval's ends are spline points
  uw, uh = 1.5 * rng.randn(*shape, k), 1.5 * rng.randn(*shape, k)
  ud = rng.randn(*shape, k - 1)
  # One bin squeezed to the minimum width and height, so min_bin_* matter.
  uw[1, :, 3] = uh[1, :, 6] = -40.0
  y, ld = piecewise_rational_quadratic_transform(
      *(jnp.asarray(a, jnp.float32) for a in (x, uw, uh, ud)), tail_bound=tb)
  y_ref, ld_ref = _np_spline(x, uw, uh, ud, tb)
  np.testing.assert_allclose(y, y_ref, atol=2e-5)
  np.testing.assert_allclose(ld, ld_ref, atol=2e-4)
  # At the ends the slope is exactly the tails' slope 1: logdet 0, both ways.
  np.testing.assert_allclose(np.asarray(y)[0, :2], [-tb, tb], atol=1e-5)
  np.testing.assert_allclose(np.asarray(ld)[0, :2], 0.0, atol=2e-5)
  _, ld_inv = piecewise_rational_quadratic_transform(
      *(jnp.asarray(a, jnp.float32) for a in (x[:1, :2], uw[:1, :2], uh[:1, :2], ud[:1, :2])),
      inverse=True, tail_bound=tb)
  np.testing.assert_allclose(ld_inv, 0.0, atol=2e-5)


# ------------------------------------------------------------------ MAS value
def test_neg_cross_entropy_is_the_gaussian_log_density():
  rng = np.random.RandomState(0)
  z = rng.randn(2, 6, 3)
  m, logs = rng.randn(2, 4, 3), 0.5 * rng.randn(2, 4, 3)
  got = neg_cross_entropy(*(jnp.asarray(a, jnp.float32) for a in (z, m, logs)))
  d = z[:, :, None, :] - m[:, None, :, :]
  s = logs[:, None, :, :]
  want = np.sum(-0.5 * math.log(2 * math.pi) - s - 0.5 * d ** 2 * np.exp(-2 * s), -1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------ training forward
def _training_case(use_sdp):
  model, variables = small_model(n_speakers=3, gin_channels=4, use_sdp=use_sdp)
  rng = np.random.RandomState(4)
  x = jnp.asarray(rng.randint(1, 30, (2, 6)), jnp.int32)
  x_lengths = jnp.array([6, 4])
  y = jnp.asarray(np.abs(rng.randn(2, 16, 17)), jnp.float32)
  y_lengths = jnp.array([16, 11])
  sid = jnp.array([2, 1])
  rngs = {k: jax.random.PRNGKey(i) for i, k in enumerate(("noise", "slice", "dropout"))}
  return model, variables, (x, x_lengths, y, y_lengths, sid), rngs


@pytest.mark.parametrize("use_sdp", [True, False])
def test_training_forward_outputs_equal_its_parts_run_alone(use_sdp):
  """Each output of the training forward (dropout off) equals the submodule that makes it,
  run alone with the speaker embedding: the posterior statistics, z_p = flow(z, g), the
  alignment (MAS over numpy log N values), the expanded prior, o = dec(z window, g), and the
  duration loss (deterministic predictor: dp(h, g) against the alignment's log durations;
  SDP: its speaker `cond` layer gets a gradient)."""
  model, variables, (x, x_lengths, y, y_lengths, sid), rngs = _training_case(use_sdp)

  def forward(p):
    o, aux = model.apply({"params": p}, x, x_lengths, y, y_lengths, sid, train=False,
                         rngs=rngs)
    return jnp.sum(aux["l_length"]), (o, aux)

  if use_sdp:
    (_, (o, aux)), grads = jax.jit(jax.value_and_grad(forward, has_aux=True))(
        variables["params"])
    assert float(jnp.abs(grads["dp"]["cond"]["weight"]).max()) > 0
  else:
    _, (o, aux) = jax.jit(forward)(variables["params"])

  def parts(m, z, y_mask, ids_slice):
    g = m.emb_g(sid)[:, None, :]
    h, m_p, logs_p, x_mask = m.enc_p(x, x_lengths)
    _, m_q, logs_q, _ = m.enc_q(y, y_lengths, g=g, noise=jnp.zeros(z.shape))
    z_p, _ = m.flow(z, y_mask, g=g)
    z_slice = commons.slice_segments(z, ids_slice, m.segment_frames)
    logw = m.dp(h, x_mask, g=g) if not use_sdp else None
    return m_p, logs_p, m_q, logs_q, z_p, m.dec(z_slice, g=g), logw

  m_p, logs_p, m_q, logs_q, z_p, o_ref, logw = jax.jit(
      lambda v, *a: model.apply(v, *a, method=parts))(
          variables, aux["z"], aux["y_mask"], aux["ids_slice"])
  for got, want in ((aux["m_q"], m_q), (aux["logs_q"], logs_q), (aux["z_p"], z_p), (o, o_ref)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)
  # The alignment maximizes sum log N(z_p | token prior) over monotonic paths.
  zp, mp, lp = (np.asarray(a, np.float64) for a in (z_p, m_p, logs_p))
  d = zp[:, :, None, :] - mp[:, None, :, :]
  value = np.sum(-0.5 * math.log(2 * math.pi) - lp[:, None] - 0.5 * d ** 2
                 * np.exp(-2 * lp[:, None]), -1)
  x_mask = np.asarray(aux["x_mask"])
  mask = np.asarray(aux["y_mask"]) * np.swapaxes(x_mask, 1, 2)
  path = np.asarray(mas.maximum_path(jnp.asarray(value, jnp.float32), jnp.asarray(mask)))
  np.testing.assert_array_equal(aux["attn"], path * mask)
  np.testing.assert_allclose(aux["m_p"], np.einsum("byx,bxc->byc", path * mask, m_p),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(aux["logs_p"], np.einsum("byx,bxc->byc", path * mask, logs_p),
                             rtol=1e-5, atol=1e-5)
  if not use_sdp:
    logw_ = np.log(path.sum(1)[..., None] + 1e-6) * x_mask
    want = ((np.asarray(logw) - logw_) ** 2).sum((1, 2)) / x_mask.sum()
    np.testing.assert_allclose(aux["l_length"], want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ what the official training starts from
def test_spectral_norm_one_step_is_torchs_estimate():
  """One training-mode call of `torch.nn.utils.spectral_norm` (written out in numpy): v =
  normalize(W^T u), u' = normalize(W v), sigma = u' . W v with that same v; u' is stored."""
  import flax.linen as nn
  from vits_jax.models import layers

  class Normalized(nn.Module):
    @nn.compact
    def __call__(self, w, update_stats=False):
      return layers._spectral_normalize(self, w, update_stats)  # pylint: disable=protected-access

  w = jax.random.normal(jax.random.PRNGKey(3), (5, 6, 7))           # [K, Cin, Cout]
  variables = Normalized().init(jax.random.PRNGKey(0), w)
  used, state = Normalized().apply(variables, w, update_stats=True, mutable=["spectral"])
  mat = np.moveaxis(np.asarray(w, np.float64), -1, 0).reshape(7, -1)
  u = np.asarray(variables["spectral"]["u"], np.float64)
  v = mat.T @ u / np.linalg.norm(mat.T @ u)
  u_new = mat @ v / np.linalg.norm(mat @ v)
  sigma = u_new @ mat @ v
  assert abs(sigma - np.linalg.svd(mat, compute_uv=False)[0]) > 0.1   # (one step: not yet)
  np.testing.assert_allclose(np.asarray(state["spectral"]["u"]), u_new, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(used), np.asarray(w) / sigma, rtol=1e-5)


def test_weight_normed_decoder_convs_start_from_torchs_default_init():
  """The official `init_weights` (N(0, 0.01)) runs after `weight_norm` on the decoder's
  convs, so it changes only the derived weight that the next forward recomputes: official
  training starts from torch's default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the direction
  `weight_v` and its norm for `weight_g`."""
  from vits_jax.models.decoder import Decoder
  dec = Decoder(resblock="1", resblock_kernel_sizes=(3,),
                resblock_dilation_sizes=((1, 3, 5),), upsample_rates=(4, 4),
                upsample_initial_channel=64, upsample_kernel_sizes=(8, 8))
  params = dec.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 16)))["params"]
  checked = 0
  for name, conv in [("ups_0", params["ups_0"]), ("ups_1", params["ups_1"]),
                     ("convs1_0", params["resblocks_0"]["convs1_0"]),
                     ("convs2_2", params["resblocks_1"]["convs2_2"])]:
    v = np.asarray(conv["weight_v"])            # [K, Cin, Cout]
    k, cin, cout = v.shape
    # torch's fan_in: Cin * K for a conv, Cout * K for a transposed conv (weight [Cin, Cout, K]).
    fan_in = (cout if name.startswith("ups") else cin) * k
    bound = fan_in ** -0.5
    assert np.abs(v).max() <= bound
    np.testing.assert_allclose(v.std(), bound / math.sqrt(3), rtol=0.15, err_msg=name)
    checked += 1
  assert checked == 4


def test_attention_projections_start_as_the_officials():
  """The official `MultiHeadAttention` initializes conv_q, conv_k, conv_v with Xavier's
  uniform, U(+-sqrt(6 / (Cin + Cout))); conv_o keeps torch's default, U(+-1/sqrt(Cin))."""
  from vits_jax.models.attentions import MultiHeadAttention
  c = 96
  att = MultiHeadAttention(c, c, n_heads=2, window_size=4)
  x = jnp.zeros((1, 6, c))
  params = att.init(jax.random.PRNGKey(0), x, jnp.ones((1, 1, 6, 6)))["params"]
  xavier, default = math.sqrt(6 / (2 * c)), 1 / math.sqrt(c)
  for name, bound in [("conv_q", xavier), ("conv_k", xavier), ("conv_v", xavier),
                      ("conv_o", default)]:
    w = np.asarray(params[name]["weight"])
    assert w.shape == (1, c, c) and np.abs(w).max() <= bound
    np.testing.assert_allclose(w.std(), bound / math.sqrt(3), rtol=0.05, err_msg=name)
  assert not np.array_equal(params["conv_q"]["weight"], params["conv_k"]["weight"])


# ------------------------------------------------------------------ small pieces
@pytest.mark.parametrize("kernel_size", [2, 4])
def test_ffn_same_padding_puts_the_extra_frame_on_the_right(kernel_size):
  """The official FFN's 'same' padding is ((k - 1) // 2 left, k // 2 right): for an even
  kernel, output frame t of the two convs reads input frames t - 2 * ((k - 1) // 2) ..
  t + 2 * (k // 2) (the Jacobian's band), not the mirror image."""
  from vits_jax.models.attentions import FFN
  t, c = 9, 3
  ffn = FFN(out_channels=c, filter_channels=5, kernel_size=kernel_size)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, t, c))
  x_mask = jnp.ones((1, t, 1))
  variables = perturb(ffn.init(jax.random.PRNGKey(1), x, x_mask), seed=2, scale=0.5)
  jac = jax.jacfwd(lambda v: ffn.apply(variables, v, x_mask)[0, :, 0])(x)[:, 0, :, 0]
  reads = np.abs(np.asarray(jac)) > 1e-7                 # [output frame, input frame]
  left, right = 2 * ((kernel_size - 1) // 2), 2 * (kernel_size // 2)
  out, inp = np.meshgrid(np.arange(t), np.arange(t), indexing="ij")
  band = (inp >= out - left) & (inp <= out + right)
  assert not reads[~band].any()
  assert reads[4, 4 + right] and (left == 0 or reads[4, 4 - left])


def test_lazy_synthesizers_are_equal_exactly_when_their_fields_are():
  """Programs are keyed by the model: two voices with different fields must not share one."""
  from vits_jax.models.lazy import LazySynthesizer
  a = LazySynthesizer({"upsample_rates": [8, 8], "inter_channels": 4})
  same = LazySynthesizer({"inter_channels": 4, "upsample_rates": (8, 8)})
  other = LazySynthesizer({"upsample_rates": [8, 8], "inter_channels": 6})
  assert a == same and hash(a) == hash(same)
  assert a != other and other != a
  assert {a: 1}.get(other) is None
