"""Numerical parity of our generator with PyTorch references (no torch needed at test time).

Golden files (tests/fixtures/*.npz, written by tests/fixtures/make_hf_fixtures.py):

- hf_sdp_rb1:          HF `VitsModel`, single speaker, stochastic duration predictor, ResBlock1
- hf_dp_rb1_ms:        HF `VitsModel`, 3 speakers, deterministic duration predictor, ResBlock1
- official_rb2_sdp_ms: official jaywalnut310/vits code, 4 speakers, SDP, ResBlock2

Weights go through our converters (HF names -> official names -> Flax), so these tests also
cover `vits_jax.convert.hf` and `vits_jax.convert.torch_names`.
"""

import functools
import json
import os

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from vits_jax.convert import hf, torch_names
from vits_jax.models.synthesizer import SynthesizerTrn

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
NAMES = ["hf_sdp_rb1", "hf_dp_rb1_ms", "official_rb2_sdp_ms"]
ATOL = 1e-4


@functools.lru_cache(maxsize=None)
def load(name):
  """(model, variables, data) for a fixture."""
  data = dict(np.load(os.path.join(FIXTURES, f"{name}.npz")))
  config = json.loads(str(data["config"]))
  sd = {k[3:]: v.astype(np.float32) if v.dtype == np.float16 else v
        for k, v in data.items() if k.startswith("sd/")}
  if name.startswith("hf_"):
    cfg = hf.config_from_hf(config)
    from vits_jax.models.synthesizer import build_synthesizer
    model = build_synthesizer(cfg)
    official = hf.hf_to_official(sd)
    like = hf.param_template(cfg)
  else:
    config = dict(config)
    config["segment_frames"] = config.pop("segment_size")   # the official name, in frames
    model = SynthesizerTrn(**config)
    official = sd
    like = _template(model)
  params = torch_names.torch_to_flax(official, like=like)
  return model, {"params": jax.tree_util.tree_map(jnp.asarray, params)}, data


def _template(model):
  from vits_jax.models.synthesizer import param_shapes
  return param_shapes(model)


def _apply(name, fn, *args):
  model, variables, data = load(name)
  sid = data.get("sid")

  def method(m, *a):
    g = m._speaker(jnp.asarray(sid)) if sid is not None else None
    return fn(m, g, *a)

  return model.apply(variables, *args, method=method)


def _mask(lengths, t):
  return (np.arange(t)[None, :] < np.asarray(lengths)[:, None]).astype(np.float32)[..., None]


def _check(actual, expected, atol=ATOL):
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  err = float(np.max(np.abs(actual - expected)))
  print(f"max abs err {err:.2e}")  # shown with pytest -s
  assert err <= atol, f"max abs err {err:.3g} > {atol}"
  return err


@pytest.mark.parametrize("name", NAMES)
def test_text_encoder(name):
  _, _, d = load(name)
  h, m_p, logs_p, _ = _apply(name, lambda m, g, ids, lens: m.enc_p(ids, lens),
                             d["enc/ids"], d["enc/lengths"])
  _check(h, d["enc/h"])
  _check(m_p, d["enc/m_p"])
  _check(logs_p, d["enc/logs_p"])


@pytest.mark.parametrize("name", NAMES)
def test_duration_predictor_reverse(name):
  """SDP sampling with noise 0 / the deterministic predictor, on the reference encoding."""
  model, _, d = load(name)
  x_mask = _mask(d["enc/lengths"], d["enc/h"].shape[1])
  if model.use_sdp:
    fn = lambda m, g, h, mask: m.dp(h, mask, g=g, reverse=True, noise_scale=0.0)
  else:
    fn = lambda m, g, h, mask: m.dp(h, mask, g=g)
  _check(_apply(name, fn, d["enc/h"], x_mask), d["dp/logw"])


@pytest.mark.parametrize("name", ["official_rb2_sdp_ms"])
def test_sdp_training_nll(name):
  """SDP negative variational bound for given durations and posterior noise (official code
  only: HF's training branch of the SDP has an extra flip, see make_hf_fixtures.py)."""
  _, _, d = load(name)
  x_mask = _mask(d["enc/lengths"], d["enc/h"].shape[1])
  nll = _apply(name, lambda m, g, h, mask, w, e: m.dp(h, mask, w, g=g, noise=e),
               d["enc/h"], x_mask, d["dp/w"], d["dp/e_q"])
  # A sum over tokens of O(1) terms: compare relative to its size.
  _check(nll, d["dp/nll"], atol=ATOL * max(1.0, float(np.abs(d["dp/nll"]).max())))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("reverse", [False, True])
def test_flow(name, reverse):
  _, _, d = load(name)
  mask = _mask(d["flow/lengths"], d["flow/z"].shape[1])
  out, _ = _apply(name, lambda m, g, z, mk: m.flow(z, mk, g=g, reverse=reverse),
                  d["flow/z"], mask)
  _check(out, d["flow/reverse" if reverse else "flow/forward"])


@pytest.mark.parametrize("name", NAMES)
def test_posterior_encoder(name):
  _, _, d = load(name)
  z, m_q, logs_q, _ = _apply(
      name, lambda m, g, y, lens, e: m.enc_q(y, lens, g=g, noise=e),
      d["post/spec"], d["flow/lengths"], d["post/noise"])
  _check(m_q, d["post/m_q"])
  _check(logs_q, d["post/logs_q"])
  _check(z, d["post/z"])


@pytest.mark.parametrize("name", NAMES)
def test_decoder(name):
  _, _, d = load(name)
  _check(_apply(name, lambda m, g, z: m.dec(z, g=g), d["dec/z"]), d["dec/o"])


@pytest.mark.parametrize("name", NAMES)
def test_infer_noise_off(name):
  """Full synthesis of a padded batch; each item matches the reference run alone."""
  model, variables, d = load(name)
  sid = d.get("sid")
  o, aux = model.apply(variables, d["enc/ids"], d["enc/lengths"], sid=sid,
                       noise_scale=0.0, noise_scale_w=0.0, method="infer")
  y_mask = aux["y_mask"]
  hop = model.hop_length
  for b in range(2):
    n = int(d[f"infer/len{b}"])
    assert int(y_mask[b].sum()) * hop == n
    _check(o[b, :n, 0], d[f"infer/o{b}"][:n])
    assert np.all(np.asarray(o[b, n:]) == 0)


def test_torch_names_round_trip():
  """Official state dict -> Flax -> official state dict is the identity."""
  data = np.load(os.path.join(FIXTURES, "official_rb2_sdp_ms.npz"))
  sd = {k[3:]: data[k].astype(np.float32) for k in data.files if k.startswith("sd/")}
  back = torch_names.flax_to_torch(torch_names.torch_to_flax(sd))
  assert set(back) == set(sd)
  for k, v in sd.items():
    assert back[k].shape == v.shape, k
    np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_fold_weight_norm_preserves_output():
  """Exporting with weight norm folded and re-importing gives the same decoder output."""
  model, variables, d = load("official_rb2_sdp_ms")
  folded = torch_names.flax_to_torch(variables["params"], fold_weight_norm=True)
  assert "dec.ups.0.weight" in folded and "dec.ups.0.weight_g" not in folded
  params = torch_names.torch_to_flax(folded, like=variables["params"])
  g = jnp.asarray(d["sid"])
  fn = lambda m, z: m.dec(z, g=m._speaker(g))
  o = model.apply({"params": params}, d["dec/z"], method=fn)
  _check(o, d["dec/o"])


def test_torch_to_flax_reports_mismatch():
  model, variables, _ = load("official_rb2_sdp_ms")
  sd = torch_names.flax_to_torch(variables["params"])
  sd.pop("enc_p.proj.bias")
  sd["enc_p.emb.weight"] = np.zeros((3, 3), np.float32)
  with pytest.raises(ValueError, match="missing enc_p/proj/bias.*|shape of enc_p/emb"):
    torch_names.torch_to_flax(sd, like=variables["params"])


def test_load_hf_folder(tmp_path):
  """An HF folder (config.json + model.safetensors) loads without torch and matches HF."""
  from safetensors.numpy import save_file
  data = np.load(os.path.join(FIXTURES, "hf_sdp_rb1.npz"))
  (tmp_path / "config.json").write_text(str(data["config"]))
  save_file({k[3:]: np.ascontiguousarray(data[k].astype(np.float32))
             for k in data.files if k.startswith("sd/")}, str(tmp_path / "model.safetensors"))
  config, params = hf.load_hf(str(tmp_path))
  from vits_jax.models.synthesizer import build_synthesizer
  model = build_synthesizer(config)
  n = int(data["infer/len0"])
  o, _ = model.apply({"params": params}, data["enc/ids"][:1], data["enc/lengths"][:1],
                      noise_scale=0.0, noise_scale_w=0.0, method="infer")
  _check(o[0, :n, 0], data["infer/o0"][:n])


def test_load_hf_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf.load_hf(str(tmp_path))
  with pytest.raises(ValueError, match="window_size"):
    hf.config_from_hf({"window_size": 8})
