"""One training step against the official jaywalnut310/vits code (torch-free).

`fixtures/train_step_golden.npz` (written by `fixtures/make_train_step_golden.py`, which
runs the official train_ms.py step body in torch) holds a batch of the `configs/tiny.py:micro`
model, the posterior and duration-predictor noise and decoder window it drew, and the
official results. Here the same weights (rebuilt from the stored per-tensor recipe) and
noise (injected at the jax level) go through `vits_jax.training.step.make_train_step`, and
its gradients are read from the optimizer (an AdamW that records the gradient it receives).

What is compared, and the tolerances (the element-wise agreement measured when the golden
was written, float32 on CPU, is in brackets; the tolerances leave 20-40x room for other
XLA versions and CPUs, and stay far below what any real error gives: a loss weight, a mask
or a detach gone wrong moves these by 1e-3 or more):

- the training forward's z, z_p, logs_q, the alignment-expanded m_p, logs_p, l_length and
  y_hat: max abs error <= 2e-5 * max|official| [<= 5e-7]; the MAS path exactly;
- every loss term (mel, KL, duration, feature matching, adversarial, total; discriminator
  total, real, fake): relative 2e-5 [<= 3e-7];
- the gradient of every generator parameter (against the updated discriminator, as the
  official code takes it) and discriminator parameter (594 tensors): each element sampled
  (32 per tensor) within 1e-4 * max|official tensor| + 1e-6, the tensor's norm within
  1e-4 relative + 1e-6 * sqrt(size), its dot product with a fixed random vector within the
  Cauchy-Schwarz bound of that norm tolerance [worst element 1.2e-5 of the tensor's max; the
  1e-6 floor covers the attention key biases, whose gradient is exactly 0 in exact
  arithmetic and ~1e-7 rounding noise on both sides].
"""

import importlib.util
import pathlib

import numpy as np
import pytest

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "train_step_golden.npz"

REL = 2e-5          # forward values and losses
GRAD_RTOL = 1e-4    # gradients, relative to the tensor's largest official element
GRAD_ATOL = 1e-6    # gradients, absolute floor


def _fixture_module():
  spec = importlib.util.spec_from_file_location(
      "make_train_step_golden", FIXTURES / "make_train_step_golden.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)   # torch is only imported by its run_official()
  return mod


@pytest.fixture(scope="module")
def result():
  fx = _fixture_module()
  g = np.load(GOLDEN)
  config = fx.get_config()
  dims, shapes, at = g["param_dims"], [], 0
  for nd in g["param_ndims"]:
    shapes.append(tuple(dims[at:at + nd]))
    at += nd
  names = [str(n) for n in g["param_names"]]
  flat = fx.synthetic_params(names, shapes, g["param_means"], g["param_spreads"])
  inputs = {k: g[k] for k in ("text", "text_lengths", "audio", "audio_lengths", "sid",
                              "noise_q", "noise_dp", "ids_slice")}
  ours = fx.run_ours(config, inputs, flat)
  return fx, g, ours


def test_forward_matches_official(result):
  fx, g, ours = result
  assert np.array_equal(ours["ids_slice"], g["ids_slice"])
  assert np.array_equal(ours["attn"], g["ref/attn"]), "MAS path differs"
  for k in fx.INTERMEDIATES:
    a, b = fx.to_official_layout(k, ours[k]), g[f"ref/{k}"]
    assert a.shape == b.shape, (k, a.shape, b.shape)
    err = np.abs(a.astype(np.float64) - b).max()
    assert err <= REL * np.abs(b).max(), (k, err, np.abs(b).max())


def test_losses_match_official(result):
  fx, g, ours = result
  for k in fx.LOSSES:
    a, b = float(ours[k]), float(g[f"ref/{k}"])
    assert abs(a - b) <= REL * abs(b), (k, a, b)


def test_gradients_match_official(result):
  fx, g, ours = result
  grads = fx.official_names(ours["grads"])
  names = [str(n) for n in g["grad_names"]]
  assert sorted(grads) == names
  bad, at = [], 0
  for i, k in enumerate(names):
    a = grads[k].astype(np.float64)
    idx = fx.sample_index(k, a.size)
    ref = g["grad_samples"][at:at + idx.size].astype(np.float64)
    at += idx.size
    norm_ref, maxabs_ref = g["grad_norm"][i], g["grad_maxabs"][i]
    err = np.abs(a.ravel()[idx] - ref).max()
    if err > GRAD_RTOL * maxabs_ref + GRAD_ATOL:
      bad.append(f"{k}: sampled elements off by {err:.3e} (max|ref| {maxabs_ref:.3e})")
    norm_tol = GRAD_RTOL * norm_ref + GRAD_ATOL * np.sqrt(a.size)
    if abs(np.linalg.norm(a) - norm_ref) > norm_tol:
      bad.append(f"{k}: norm {np.linalg.norm(a):.6e} vs {norm_ref:.6e}")
    r = fx.probe(k, a.shape)
    if abs(np.sum(a * r) - g["grad_probe"][i]) > norm_tol * np.linalg.norm(r):
      bad.append(f"{k}: probe {np.sum(a * r):.6e} vs {g['grad_probe'][i]:.6e}")
  assert at == g["grad_samples"].size
  assert not bad, "\n".join(bad[:20])
