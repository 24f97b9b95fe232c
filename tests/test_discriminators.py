"""MultiPeriodDiscriminator: official size, official names, parity with the torch network."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import base, tiny
from vits_jax.convert import torch_names
from vits_jax.models import discriminators as D
from vits_jax.models.layers import count_params

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def _load_fixture_module():
  spec = importlib.util.spec_from_file_location(
      "make_discriminator_golden", FIXTURES / "make_discriminator_golden.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)       # torch is only imported inside its main()
  return mod


def _abstract_params(model, t=300):
  y = jnp.zeros((1, t, 1))
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), y, y))


def _torch_shape(path, shape, siblings):
  """Torch shape of one of our params (inverse of the layers.py layouts)."""
  leaf = path[-1]
  if leaf in ("weight", "weight_v"):
    return tuple(shape[::-1]) if len(shape) == 3 else (shape[3], shape[2], shape[0], shape[1])
  if leaf == "weight_g":   # torch keeps the broadcast dims: [Cout, 1, 1(, 1)]
    return (shape[0],) + (1,) * (len(siblings["weight_v"].shape) - 1)
  return tuple(shape)


def torch_state_dict(model):
  """The fixture's torch-name-derived weights for `model`, as an official-name state dict."""
  gen = _load_fixture_module().synthetic_weight
  flat = traverse_util.flatten_dict(_abstract_params(model)["params"])
  state = {}
  for path, sds in flat.items():
    siblings = {p[-1]: v for p, v in flat.items() if p[:-1] == path[:-1]}
    torch_name = ".".join(part.replace("_", ".") if part.startswith(("discriminators_", "convs_"))
                          else part for part in path)
    state[torch_name] = gen(torch_name, _torch_shape(path, sds.shape, siblings))
  return state


def synthetic_params(model):
  """Our params, converted from `torch_state_dict` by the official-name converter."""
  like = _abstract_params(model)["params"]
  return {"params": torch_names.torch_to_flax(torch_state_dict(model), like=like)}


def np_variables(model, *args, seed=0):
  """Random variables of the right structure without `model.init`.

  Eager/jitted init compiles one threefry kernel per parameter shape, which costs tens of
  seconds on a small CPU; numpy fills the abstract tree instantly.
  """
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args))
  rng = np.random.default_rng(seed)

  def fill(path, sds):
    name = path[-1].key
    if name == "weight_g":
      x = rng.uniform(0.5, 1.5, sds.shape)
    elif name == "u":
      x = rng.standard_normal(sds.shape)
      x /= np.linalg.norm(x)
    else:
      x = (0.1 if name == "bias" else 0.3) * rng.standard_normal(sds.shape)
    return jnp.asarray(x, sds.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def test_official_parameter_count_and_names():
  params = _abstract_params(D.MultiPeriodDiscriminator())
  assert count_params(params) == 46_747_132
  golden = np.load(FIXTURES / "discriminator_golden.npz")
  assert int(golden["n_params"]) == 46_747_132            # the torch network agrees
  p = params["params"]
  assert sorted(p) == [f"discriminators_{i}" for i in range(6)]
  assert sorted(p["discriminators_0"]) == ["conv_post"] + [f"convs_{i}" for i in range(6)]
  assert sorted(p["discriminators_3"]) == ["conv_post"] + [f"convs_{i}" for i in range(5)]
  assert sorted(p["discriminators_1"]["convs_4"]) == ["bias", "weight_g", "weight_v"]
  assert p["discriminators_1"]["convs_3"]["weight_v"].shape == (5, 1, 512, 1024)
  assert p["discriminators_0"]["convs_4"]["weight_v"].shape == (41, 4, 1024)   # groups=256


def test_spectral_norm_variant_names():
  v = _abstract_params(D.MultiPeriodDiscriminator(use_spectral_norm=True))
  assert sorted(v["params"]["discriminators_2"]["convs_0"]) == ["bias", "weight"]
  assert sorted(v["params"]["discriminators_0"]["convs_1"]) == ["bias", "weight"]
  assert set(v["spectral"]["discriminators_0"]["convs_1"]) == {"u"}
  # Weight norm's weight_g vectors are the only difference in size.
  assert count_params(v) == 46_747_132 - sum(
      int(x.size) for path, x in traverse_util.flatten_dict(
          _abstract_params(D.MultiPeriodDiscriminator())["params"]).items()
      if path[-1] == "weight_g")


def test_matches_official_torch_network():
  golden = np.load(FIXTURES / "discriminator_golden.npz")
  model = D.MultiPeriodDiscriminator()
  params = synthetic_params(model)
  y = golden["y"].transpose(0, 2, 1)            # torch [B, 1, T] -> ours [B, T, 1]
  y_hat = golden["y_hat"].transpose(0, 2, 1)
  y_d_rs, y_d_gs, fmap_rs, fmap_gs = jax.jit(model.apply)(params, y, y_hat)
  assert len(y_d_rs) == len(fmap_gs) == 6

  worst = 0.0
  for i in range(6):
    for ours, key in ((y_d_rs[i], f"y_d_r_{i}"), (y_d_gs[i], f"y_d_g_{i}")):
      ref = golden[key]
      assert ours.shape == ref.shape, key
      err = np.max(np.abs(np.asarray(ours) - ref)) / np.max(np.abs(ref))
      worst = max(worst, err)
    n_layers = 7 if i == 0 else 6
    assert len(fmap_rs[i]) == n_layers
    for j in range(n_layers):
      for ours, key in ((fmap_rs[i][j], f"fmap_r_{i}_{j}"), (fmap_gs[i][j], f"fmap_g_{i}_{j}")):
        ref = golden[key]
        # torch [B, C, T] / [B, C, H, P] -> ours [B, T, C] / [B, H, P, C]
        ref = np.moveaxis(ref, 1, -1)
        assert ours.shape == ref.shape, key
        worst = max(worst, np.max(np.abs(np.asarray(ours) - ref)) / np.max(np.abs(ref)))
  assert worst < 1e-4, worst


def test_official_names_round_trip():
  """flax_to_torch gives back exactly the official names, layouts and values."""
  model = D.MultiPeriodDiscriminator()
  state = torch_state_dict(model)
  assert "discriminators.0.convs.4.weight_v" in state
  assert state["discriminators.5.conv_post.weight_g"].shape == (1, 1, 1, 1)
  back = torch_names.flax_to_torch(synthetic_params(model)["params"])
  assert set(back) == set(state)
  for k, v in state.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_period_fold_and_reflect_pad():
  """Each DiscriminatorP column holds every p-th sample; T is reflect-padded up to p | T."""
  model = D.DiscriminatorP(7, channel_div=16)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 20, 1))
  params = np_variables(model, x)
  apply = model.apply
  score, fmap = apply(params, x)
  assert fmap[0].shape[1:3] == ((3 + 2 * 2 - 5) // 3 + 1, 7)   # ceil(20 / 7) = 3 rows
  assert score.shape == (2, fmap[-1].shape[1] * 7)
  # Reflect padding: the scores of T=20 equal those of the explicitly padded signal.
  padded = jnp.concatenate([x, x[:, -2:-1]], axis=1)     # 20 -> 21: reflection repeats x[18]
  np.testing.assert_allclose(np.asarray(score), np.asarray(apply(params, padded)[0]),
                             rtol=1e-6)
  # Folding: a signal nonzero only at t = 7k + 3 leaves every other column at the bias
  # response, so columns are independent periodic phases.
  impulse = jnp.zeros((1, 21, 1)).at[0, 3::7, 0].set(1.0)
  zero_fmap = apply(params, jnp.zeros((1, 21, 1)))[1]
  imp_fmap = apply(params, impulse)[1]
  for a, b in zip(imp_fmap, zero_fmap):
    diff = np.abs(np.asarray(a) - np.asarray(b)).max(axis=(0, 1, 3))   # per column
    assert diff[3] > 0 and np.all(np.delete(diff, 3) == 0)


def test_real_and_fake_are_scored_independently():
  """Batching y with y_hat inside the MPD must not mix them."""
  model = D.MultiPeriodDiscriminator(periods=(3,), channel_div=16)
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  y = jax.random.normal(k1, (2, 512, 1))
  y_hat = jax.random.normal(k2, (2, 512, 1))
  params = np_variables(model, y, y_hat)
  apply = model.apply
  r1, g1, _, _ = apply(params, y, y_hat)
  r2, g2, _, _ = apply(params, y, -y_hat)
  for a, b in zip(r1, r2):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.allclose(np.asarray(g1[1]), np.asarray(g2[1]))
  # Swapping the inputs swaps the outputs.
  r3, g3, _, _ = apply(params, y_hat, y)
  np.testing.assert_allclose(np.asarray(r3[0]), np.asarray(g1[0]), rtol=1e-6)


def test_channel_div_and_config_builder():
  small = D.build_discriminator(tiny.get_config())
  assert small.channel_div == 8 and not small.use_spectral_norm
  assert count_params(_abstract_params(small)) < 1_000_000
  full = D.build_discriminator(base.get_config())
  assert full.channel_div == 1 and tuple(full.periods) == (2, 3, 5, 7, 11)
  with pytest.raises(ValueError, match="channel_div"):
    _abstract_params(D.MultiPeriodDiscriminator(channel_div=3))
  with pytest.raises(ValueError, match="same shape"):
    D.MultiPeriodDiscriminator(channel_div=16).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 512, 1)), jnp.zeros((1, 256, 1)))


def test_spectral_norm_forward_and_update():
  # One period keeps compilation short; DiscriminatorS and DiscriminatorP are both covered.
  model = D.MultiPeriodDiscriminator(use_spectral_norm=True, periods=(3,), channel_div=16)
  y = jax.random.normal(jax.random.PRNGKey(0), (1, 512, 1))
  variables = np_variables(model, y, y)
  apply = model.apply
  out, new = apply(variables, y, 0.5 * y, update_stats=True, mutable=("spectral",))
  assert all(np.isfinite(np.asarray(s)).all() for s in out[0])
  u0 = variables["spectral"]["discriminators_1"]["convs_2"]["u"]
  u1 = new["spectral"]["discriminators_1"]["convs_2"]["u"]
  assert u0.shape == u1.shape and not np.allclose(np.asarray(u0), np.asarray(u1))
  # Without update_stats the iteration vector stays put.
  _, same = apply(variables, y, y, mutable=("spectral",))
  np.testing.assert_array_equal(
      np.asarray(same["spectral"]["discriminators_1"]["convs_2"]["u"]), np.asarray(u0))


def test_spectral_norm_divides_the_kernel_by_its_largest_singular_value():
  """After some power-iteration updates, the kernel a spectral-normalized layer uses is the
  raw kernel divided by its largest singular value (numpy's SVD of the [Cout, rest] matrix,
  torch's layout): its own largest singular value is 1."""
  import flax.linen as nn
  from vits_jax.models import layers

  class Normalized(nn.Module):
    @nn.compact
    def __call__(self, w, update_stats=False):
      return layers._spectral_normalize(self, w, update_stats)  # pylint: disable=protected-access

  w = jax.random.normal(jax.random.PRNGKey(3), (5, 6, 7))   # [K, Cin, Cout]
  module = Normalized()
  variables = module.init(jax.random.PRNGKey(0), w)
  step = jax.jit(lambda v: module.apply(v, w, update_stats=True, mutable=["spectral"]))
  for _ in range(50):
    used, spectral = step(variables)
    variables = {**variables, **spectral}
  mat = np.moveaxis(np.asarray(w), -1, 0).reshape(7, -1)
  sigma = np.linalg.svd(mat, compute_uv=False)[0]
  np.testing.assert_allclose(np.asarray(used), np.asarray(w) / sigma, rtol=1e-4)
  used_mat = np.moveaxis(np.asarray(used), -1, 0).reshape(7, -1)
  assert abs(np.linalg.svd(used_mat, compute_uv=False)[0] - 1) < 1e-4


@pytest.mark.parametrize("spectral", [False, True])
def test_score_passes_equal_the_joint_pass(spectral):
  # The train step's generator update scores generated and real audio in two `score` passes
  # (generated with the spectral-norm update, real without, both from the same state):
  # the scores, feature maps and updated state must equal one joint pass over [y; y_hat].
  model = D.MultiPeriodDiscriminator(use_spectral_norm=spectral, periods=(3,), channel_div=16)
  y = jax.random.normal(jax.random.PRNGKey(0), (2, 512, 1))
  y_hat = 0.5 * jax.random.normal(jax.random.PRNGKey(1), (2, 512, 1))
  variables = np_variables(model, y, y_hat)
  rest = {k: v for k, v in variables.items() if k != "params"}
  kw = dict(update_stats=True, mutable=list(rest)) if rest else {}
  joint = model.apply(variables, y, y_hat, **kw)
  fake = model.apply(variables, y_hat, method="score", **kw)
  real = model.apply(variables, y, method="score")
  (r, g, fr, fg), (sg, fmg), (sr, fmr) = (
      (joint[0], fake[0], real) if rest else (joint, fake, real))
  for a, b in zip(g + r + sum(fg, []) + sum(fr, []), sg + sr + sum(fmg, []) + sum(fmr, [])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  if rest:
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a),
                                                                      np.asarray(b)),
                           joint[1], fake[1])
