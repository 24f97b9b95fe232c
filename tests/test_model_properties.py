"""Properties of the generator that hold for any weights: parameter counts of the official
configs, invertible flows with opposite log-determinants, batch-consistent synthesis (noise
on), the training forward, jit behaviour, and a full-size compile on CPU."""

import functools

import numpy as np
import pytest
import chex
import jax
import jax.numpy as jnp

from vits_jax.models import commons, modules
from vits_jax.models.flow import ResidualCouplingBlock
from vits_jax.models.layers import count_params
from vits_jax.models.synthesizer import SynthesizerTrn, build_synthesizer, param_shapes
from vits_jax.models.transforms import piecewise_rational_quadratic_transform

SMALL = dict(n_vocab=30, spec_channels=17, segment_frames=8, inter_channels=8,
             hidden_channels=16, filter_channels=24, n_heads=2, n_layers=1, kernel_size=3,
             p_dropout=0.1, resblock="2", resblock_kernel_sizes=(3,),
             resblock_dilation_sizes=((1, 2),), upsample_rates=(4, 2),
             upsample_initial_channel=16, upsample_kernel_sizes=(8, 4), n_layers_enc_q=2)


def perturb(params, seed=0, scale=0.1):
  """Adds noise to every param so zero-initialized layers (flow posts, spline projections,
  ElementwiseAffine) do something."""
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree_util.tree_unflatten(
      tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def random_params(shapes, seed=0):
  """Random fan-in-scaled params for a shape pytree: much cheaper than compiling an init,
  and every layer (zero-initialized ones included) gets non-trivial weights."""
  rng = np.random.RandomState(seed)

  def leaf(path, s):
    name = jax.tree_util.keystr(path[-1:])
    if len(s.shape) >= 2:
      return rng.randn(*s.shape) / np.sqrt(np.prod(s.shape[:-1]))
    if "weight_g" in name or "gamma" in name:
      return 1.0 + 0.1 * rng.randn(*s.shape)
    return 0.1 * rng.randn(*s.shape)

  return jax.tree_util.tree_map_with_path(
      lambda p, s: jnp.asarray(leaf(p, s), jnp.float32), shapes)


@functools.lru_cache(maxsize=None)
def _cached_model(items):
  model = SynthesizerTrn(**{**SMALL, **dict(items)})
  return model, {"params": random_params(param_shapes(model))}


def small_model(**overrides):
  return _cached_model(tuple(sorted(overrides.items())))


@pytest.mark.parametrize("config_name, expected", [
    ("ljs_base", 36_321_072), ("ljs_nosdp", 35_349_761), ("vctk", 39_700_208)])
def test_param_count_equals_official(config_name, expected):
  """178 symbols, weight norm counted as two tensors, as `sum(p.numel())` in PyTorch."""
  import importlib
  config = importlib.import_module(f"configs.{config_name}").get_config()
  assert count_params(param_shapes(build_synthesizer(config))) == expected


def test_spline_inverse_and_logdet():
  k = jax.random.split(jax.random.PRNGKey(1), 4)
  shape = (3, 50)
  x = jax.random.uniform(k[0], shape, minval=-6.0, maxval=6.0)  # includes the linear tails
  # Logit scale 1: sharper bins make the inverse ill-conditioned in float32 (as in torch).
  w, h = jax.random.normal(k[1], shape + (10,)), jax.random.normal(k[2], shape + (10,))
  d = jax.random.normal(k[3], shape + (9,))
  y, ld = piecewise_rational_quadratic_transform(x, w, h, d, tail_bound=5.0)
  x_back, ld_inv = piecewise_rational_quadratic_transform(y, w, h, d, inverse=True,
                                                          tail_bound=5.0)
  np.testing.assert_allclose(x_back, x, atol=1e-4)
  np.testing.assert_allclose(ld + ld_inv, 0.0, atol=5e-4)
  # Monotonic, identity in the tails, and logdet = log dy/dx.
  outside = jnp.abs(x) > 5.0
  np.testing.assert_array_equal(jnp.where(outside, y - x, 0.0), 0.0)
  dydx = jax.vmap(jax.vmap(jax.grad(lambda a, b, c, e: piecewise_rational_quadratic_transform(
      a, b, c, e, tail_bound=5.0)[0])))(x, w, h, d)
  assert bool(jnp.all(dydx > 0))
  np.testing.assert_allclose(ld, jnp.log(dydx), atol=1e-3)
  grads = jax.grad(lambda w_: piecewise_rational_quadratic_transform(x, w_, h, d)[1].sum())(w)
  assert bool(jnp.all(jnp.isfinite(grads)))


FLOW_LAYERS = {
    "coupling_affine": lambda: modules.ResidualCouplingLayer(6, 16, 5, 1, 2, gin_channels=4),
    "coupling_block": lambda: ResidualCouplingBlock(6, 16, 5, 1, 2, gin_channels=4),
    "conv_flow": lambda: modules.ConvFlow(2, 16, 3, n_layers=3),
    "elementwise_affine": lambda: modules.ElementwiseAffine(6),
    "flip": lambda: modules.Flip(),
}


@pytest.mark.parametrize("name", sorted(FLOW_LAYERS))
def test_flow_inverse_forward(name):
  layer = FLOW_LAYERS[name]()
  c = 2 if name == "conv_flow" else 6
  b, t = 2, 11
  x = 2 * jax.random.normal(jax.random.PRNGKey(2), (b, t, c))
  x_mask = commons.sequence_mask(jnp.array([11, 7]), t)[..., None].astype(jnp.float32)
  x = x * x_mask
  g = jax.random.normal(jax.random.PRNGKey(3), (b, 1, 4)) if "coupling" in name else None
  if name == "conv_flow":
    g = jax.random.normal(jax.random.PRNGKey(3), (b, t, 16))
  variables = layer.init(jax.random.PRNGKey(4), x, x_mask, g=g)
  variables = perturb(variables, seed=5, scale=0.3)
  y, ld = layer.apply(variables, x, x_mask, g=g)
  x_back, ld_inv = layer.apply(variables, y, x_mask, g=g, reverse=True)
  assert not np.allclose(y, x) or name == "flip"
  np.testing.assert_allclose(x_back * x_mask, x, atol=1e-5)
  np.testing.assert_allclose(ld + ld_inv, 0.0, atol=1e-4)


def _infer(model, variables, x, lengths, seeds, **kw):
  return model.apply(variables, x, lengths, seeds=seeds, rngs={"noise": jax.random.PRNGKey(7)},
                     method="infer", **kw)


@pytest.mark.parametrize("use_sdp, n_speakers", [(True, 0), (False, 3)])
def test_infer_batch_equals_items_alone(use_sdp, n_speakers):
  """With noise on, an item's output in a padded batch equals the item run alone."""
  model, variables = small_model(use_sdp=use_sdp, n_speakers=n_speakers,
                                 gin_channels=6 if n_speakers else 0)
  rng = np.random.RandomState(0)
  lengths = np.array([9, 4, 6])
  x = rng.randint(1, 30, (3, 9)).astype(np.int32) * (np.arange(9) < lengths[:, None])
  seeds = np.array([11, 5, 3], np.int32)
  sid = np.array([2, 0, 1], np.int32) if n_speakers else None
  kw = dict(noise_scale=0.667, noise_scale_w=0.8, length_scale=1.3)
  o, aux = _infer(model, variables, x, lengths, seeds, sid=sid, **kw)
  attn, y_mask = aux["attn"], aux["y_mask"]
  hop = model.hop_length
  for b in range(3):
    item = slice(b, b + 1)
    o1, aux1 = _infer(model, variables, x[item, :lengths[b]], lengths[item], seeds[item],
                      sid=None if sid is None else sid[item], **kw)
    ym1 = aux1["y_mask"]
    n = int(ym1.sum())
    assert int(y_mask[b].sum()) == n
    np.testing.assert_allclose(o[b, :n * hop], o1[0, :n * hop], atol=2e-5)
    assert np.all(np.asarray(o[b, n * hop:]) == 0)
    # Each frame is spoken by exactly one token; token b's frames are contiguous.
    np.testing.assert_array_equal(attn[b].sum(-1), y_mask[b, :, 0])


def test_infer_seeds_and_noise_scales():
  model, variables = small_model()
  x, lengths = jnp.array([[3, 5, 7, 9, 11]], jnp.int32), jnp.array([5])
  a = _infer(model, variables, x, lengths, np.array([1]))[0]
  b = _infer(model, variables, x, lengths, np.array([1]))[0]
  c = _infer(model, variables, x, lengths, np.array([2]))[0]
  np.testing.assert_array_equal(a, b)
  assert a.shape != c.shape or not np.allclose(a, c)
  # Zero noise needs no rng and ignores the seeds.
  d = model.apply(variables, x, lengths, noise_scale=0.0, noise_scale_w=0.0, method="infer")[0]
  e = model.apply(variables, x, lengths, noise_scale=0.0, noise_scale_w=0.0, seeds=[9],
                  method="infer")[0]
  np.testing.assert_array_equal(d, e)
  # The prior sample is m + eps * exp(logs) * noise_scale: its noise scales with both.
  m = jax.random.normal(jax.random.PRNGKey(1), (1, 10, 8))
  logs = 0.3 * jax.random.normal(jax.random.PRNGKey(2), (1, 10, 8))
  y_mask = jnp.ones((1, 10, 1))

  def noise(scale, logs=logs):
    _, aux = model.apply(variables, m, logs, y_mask, noise_scale=scale, seeds=np.array([4]),
                         rngs={"noise": jax.random.PRNGKey(7)}, method="decode_latent")
    return np.asarray(aux["z_p"] - m)
  half, whole = noise(0.5), noise(1.0)
  assert np.abs(whole).max() > 0.1
  np.testing.assert_allclose(whole, 2 * half, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(noise(1.0, logs + np.log(3.0)), 3 * whole, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(noise(0.0), 0)


def test_infer_jit_static_max_len_no_retrace():
  model, variables = small_model()
  x, lengths = jnp.array([[3, 5, 7, 9, 11, 2]], jnp.int32), jnp.array([6])
  kw = dict(noise_scale=0.5, noise_scale_w=0.5)
  eager, aux = _infer(model, variables, x, lengths, np.array([4]), **kw)
  n = int(aux["y_mask"].sum())

  @jax.jit
  @chex.assert_max_traces(n=1)
  def synth(variables, x, lengths, seeds):
    return _infer(model, variables, x, lengths, seeds, max_len=n + 5, **kw)

  o, _ = synth(variables, x, lengths, jnp.array([4]))
  assert o.shape == (1, (n + 5) * model.hop_length, 1)
  np.testing.assert_allclose(o[:, :eager.shape[1]], eager, atol=2e-5)
  assert np.all(np.asarray(o[:, eager.shape[1]:]) == 0)
  synth(variables, x + 1, lengths - 1, jnp.array([5]))  # same shapes: no retrace
  with pytest.raises(ValueError, match="max_len"):
    jax.jit(lambda v: _infer(model, v, x, lengths, np.array([0])))(variables)


def test_training_forward_and_gradients():
  """Training forward with the default MAS: a valid monotonic alignment and finite grads."""
  model, variables = small_model(n_speakers=2, gin_channels=4)
  rng = np.random.RandomState(1)
  x = jnp.asarray(rng.randint(1, 30, (2, 7)), jnp.int32)
  x_lengths = jnp.array([7, 5])
  y = jnp.asarray(np.abs(rng.randn(2, 20, 17)), jnp.float32)
  y_lengths = jnp.array([20, 14])
  sid = jnp.array([0, 1])
  rngs = {k: jax.random.PRNGKey(i) for i, k in enumerate(("noise", "slice", "dropout"))}

  def loss(params):
    out = model.apply({"params": params}, x, x_lengths, y, y_lengths, sid, rngs=rngs)
    o, l_length = out[0], out[1]["l_length"]
    return jnp.sum(o ** 2) + jnp.sum(l_length), out

  (value, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
  o, aux = out
  attn, ids_slice, y_mask = aux["attn"], aux["ids_slice"], aux["y_mask"]
  z_p, m_p = aux["z_p"], aux["m_p"]
  assert o.shape == (2, 8 * model.hop_length, 1)
  assert attn.shape == (2, 20, 7) and z_p.shape == m_p.shape == (2, 20, 8)
  np.testing.assert_array_equal(attn.sum(-1), y_mask[..., 0])  # one token per frame
  np.testing.assert_array_equal(attn.sum((1, 2)), y_lengths)
  tokens = np.argmax(np.asarray(attn), -1)
  for b in range(2):
    path = tokens[b, :int(y_lengths[b])]
    assert path[0] == 0 and path[-1] == int(x_lengths[b]) - 1
    assert set(np.diff(path)) <= {0, 1}
  assert np.all((np.asarray(ids_slice) >= 0) & (np.asarray(ids_slice) <= y_lengths - 8))
  assert np.isfinite(float(value))
  flat = jax.tree_util.tree_leaves(grads)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in flat)
  # The duration loss reaches the SDP but not the text encoder (stop_gradient).
  assert float(jnp.abs(grads["dp"]["post_pre"]["weight"]).sum()) > 0


@pytest.mark.parametrize("use_sdp", [True, False])
def test_duration_loss_is_normalised_over_the_batch_and_stops_at_the_text_encoder(use_sdp):
  """The official duration loss: the predictor's per-item loss over the tokens of the whole
  batch (not each item's own), and its gradient reaches the duration predictor only: the
  text encoder and the speaker table get none of it (the predictor detaches both)."""
  model, variables = small_model(n_speakers=2, gin_channels=4, use_sdp=use_sdp)
  rng = np.random.RandomState(3)
  x = jnp.asarray(rng.randint(1, 30, (2, 7)), jnp.int32)
  x_lengths = jnp.array([7, 4])
  y = jnp.asarray(np.abs(rng.randn(2, 20, 17)), jnp.float32)
  y_lengths = jnp.array([20, 11])
  rngs = {k: jax.random.PRNGKey(i) for i, k in enumerate(("noise", "slice", "dropout"))}

  def duration_loss(params):
    out, seen = model.apply({"params": params}, x, x_lengths, y, y_lengths, jnp.array([0, 1]),
                            rngs=rngs, mutable=["intermediates"],
                            capture_intermediates=lambda m, method: m.name == "dp")
    return jnp.sum(out[1]["l_length"]), (out[1], seen["intermediates"]["dp"]["__call__"][0])

  (_, (aux, dp_out)), grads = jax.jit(jax.value_and_grad(duration_loss, has_aux=True))(
      variables["params"])
  n_tokens = float(jnp.sum(x_lengths))
  if use_sdp:   # the predictor's output is each item's negative log-likelihood
    want = dp_out / n_tokens
  else:         # its output is log durations; the target is the alignment's
    mask = (np.arange(7)[None] < np.asarray(x_lengths)[:, None])[:, :, None]
    target = np.log(np.asarray(aux["attn"]).sum(1)[..., None] + 1e-6) * mask
    want = ((np.asarray(dp_out) - target) ** 2).sum((1, 2)) / n_tokens
  np.testing.assert_allclose(aux["l_length"], want, rtol=1e-5, atol=1e-6)
  for part in ("enc_p", "emb_g"):
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree_util.tree_leaves(grads[part])), part
  assert max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(grads["dp"])) > 0


def test_voice_conversion_same_speaker_is_identity_through_flow():
  model, variables = small_model(n_speakers=3, gin_channels=4)
  y = jnp.asarray(np.abs(np.random.RandomState(2).randn(2, 12, 17)), jnp.float32)
  lengths = jnp.array([12, 9])
  sid = jnp.array([1, 2])
  o, aux = model.apply(variables, y, lengths, sid, sid, rngs={"noise": jax.random.PRNGKey(0)},
                       method="voice_conversion")
  y_mask, z, z_hat = aux["y_mask"], aux["z"], aux["z_hat"]
  assert o.shape == (2, 12 * model.hop_length, 1)
  np.testing.assert_allclose(z_hat * y_mask, z, atol=1e-5)
  with pytest.raises(ValueError, match="multi-speaker"):
    single, single_vars = small_model()
    single.apply(single_vars, y, lengths, sid, sid, method="voice_conversion")


def test_bfloat16_compute_close_to_float32():
  """bfloat16 compute (float32 params) tracks float32 on the continuous parts; synthesis
  runs end to end. (Whole waveforms are not compared: a rounding change can move a
  ceil'd duration by a frame.)"""
  model, variables = small_model()
  model16 = SynthesizerTrn(**{**SMALL, "dtype": "bfloat16"})
  x, lengths = jnp.array([[3, 5, 7, 9, 11, 2]], jnp.int32), jnp.array([6])
  z = jax.random.normal(jax.random.PRNGKey(0), (1, 10, 8))

  def parts(m, x, lengths, z):
    _, m_p, logs_p, _ = m.enc_p(x, lengths)
    return m_p, m.dec(z)

  gaps = []
  for a32, a16 in zip(model.apply(variables, x, lengths, z, method=parts),
                      model16.apply(variables, x, lengths, z, method=parts)):
    assert a16.dtype == jnp.float32
    gaps.append(float(jnp.max(jnp.abs(a16 - a32))))
    assert gaps[-1] < 0.05 * float(jnp.max(jnp.abs(a32)))
  assert max(gaps) > 0   # the setting is used: not float32's parts bit for bit
  o16 = model16.apply(variables, x, lengths, noise_scale=0.0, noise_scale_w=0.0, max_len=24,
                      method="infer")[0]
  assert o16.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(o16)))



def test_commons_helpers():
  path = commons.generate_path(jnp.array([[2.0, 0.0, 3.0]]), jnp.ones((1, 6, 3)))
  np.testing.assert_array_equal(path[0], [[1, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 1],
                                          [0, 0, 1], [0, 0, 0]])
  np.testing.assert_array_equal(commons.sequence_mask(jnp.array([1, 3]), 3),
                                [[1, 0, 0], [1, 1, 1]])
  x = jnp.arange(2 * 10).reshape(2, 10, 1).astype(jnp.float32)
  s, ids = commons.rand_slice_segments(jax.random.PRNGKey(0), x, jnp.array([10, 5]), 4)
  for b in range(2):
    np.testing.assert_array_equal(s[b, :, 0], x[b, ids[b]:ids[b] + 4, 0])
  assert int(ids[1]) <= 1
  # The start is uniform on [0, length - segment] (the official `rand * (len - seg + 1)`):
  # over 2800 draws of length 10, segment 4, each of the 7 starts about 1/7 of the time,
  # padding beyond the length never drawn; shorter than the segment: 0.
  x = jnp.zeros((2800, 16, 1))
  _, ids = commons.rand_slice_segments(jax.random.PRNGKey(1), x,
                                       jnp.array([10] * 2799 + [3]), 4)
  counts = np.bincount(np.asarray(ids[:-1]), minlength=13)
  assert counts[7:].sum() == 0 and int(ids[-1]) == 0, counts
  assert np.all(np.abs(counts[:7] / 2799 - 1 / 7) < 0.03), counts


def test_full_size_generator_forward_compiles_on_cpu():
  """ljs_base sizes: jitted training forward of the generator on one short item."""
  from configs import ljs_base
  model = build_synthesizer(ljs_base.get_config())
  params = random_params(param_shapes(model))
  x = jnp.ones((1, 12), jnp.int32)
  y = jnp.abs(jax.random.normal(jax.random.PRNGKey(1), (1, model.segment_frames, 513)))
  rngs = {k: jax.random.PRNGKey(i) for i, k in enumerate(("noise", "slice", "dropout"))}
  out = jax.jit(lambda p: model.apply({"params": p}, x, jnp.array([12]), y,
                                      jnp.array([model.segment_frames]), rngs=rngs))(params)
  assert out[0].shape == (1, 8192, 1)
  assert bool(jnp.all(jnp.isfinite(out[0]))) and bool(jnp.all(jnp.isfinite(out[1]["l_length"])))


@pytest.mark.parametrize("x_shape,w_shape,stride,dilation,padding,groups", [
    ((2, 64, 16), (41, 4, 64), 4, 1, (20, 20), 4),       # DiscriminatorS grouped, strided
    ((2, 67, 8), (9, 2, 12), 3, 1, (4, 2), 4),           # the same, odd length, uneven pad
    ((2, 65, 8), (7, 4, 8), 4, 1, (0, 0), 2),            # ... last input frames never read
    ((2, 50, 32), (3, 32, 32), 1, 5, (5, 5), 1),         # ResBlock "same" conv
    ((2, 50, 8), (3, 1, 8), 1, 9, (9, 9), 8),            # DDSConv depthwise
    ((2, 40, 3, 16), (5, 16, 32), 3, 1, (2, 2), 1),      # DiscriminatorP (period axis kept)
    ((2, 40, 7, 16), (5, 4, 32), 3, 1, (2, 2), 4),       # grouped with a carried axis
    ((1, 9, 5), (2, 5, 12), 1, 1, (1, 1), 1),            # polyphase transposed conv (full pad)
    ((3, 33, 6), (4, 6, 5), 2, 2, (3, 1), 1),            # asymmetric padding, odd length
])
def test_conv_time_matches_xla_conv_and_its_gradients(x_shape, w_shape, stride, dilation,
                                                      padding, groups):
  """layers.conv_time (custom VJP: slices + matmul) == lax conv and its autodiff VJP."""
  from vits_jax.models import layers
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal(w_shape), jnp.float32)
  ref = lambda x, w: layers._conv_time_lax(x, w, stride, dilation, padding, groups)
  ours = lambda x, w: layers.conv_time(x, w, stride, dilation, padding, groups)
  y_ref, vjp_ref = jax.vjp(ref, x, w)
  y, vjp = jax.vjp(ours, x, w)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  # The matmul form itself (used by the VJP) computes the same map.
  np.testing.assert_allclose(
      layers._conv_time_matmul(x, w, stride, dilation, padding, groups), y_ref,
      rtol=1e-5, atol=1e-4)
  dy = jnp.asarray(rng.standard_normal(y_ref.shape), jnp.float32)
  for got, want in zip(vjp(dy), vjp_ref(dy)):
    assert float(jnp.max(jnp.abs(want))) > 1.0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
