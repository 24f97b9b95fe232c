"""vits_jax.mas equals the official Cython MAS (PyPI monotonic-align) bit for bit."""

import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vits_jax.mas import maximum_path, maximum_path_numba

# (T_frames, T_text) padded shapes; items inside get random lengths.
SHAPES = [(1, 1), (7, 7), (16, 5), (33, 33), (48, 17), (96, 40)]
KINDS = ["normal", "square", "one_token", "ties", "very_negative"]
BATCH = 16


def _load_cython():
  """monotonic_align.core.maximum_path_c, without the package __init__ (which imports torch)."""
  spec = importlib.util.find_spec("monotonic_align")
  if spec is None or spec.origin is None:
    pytest.skip("monotonic-align (requirements-dev.txt) is not installed")
  so = glob.glob(os.path.join(os.path.dirname(spec.origin), "core*.so"))
  if not so:
    pytest.skip("monotonic-align has no compiled core")
  core_spec = importlib.util.spec_from_file_location("monotonic_align.core", so[0])
  core = importlib.util.module_from_spec(core_spec)
  core_spec.loader.exec_module(core)
  return core.maximum_path_c


def _cython_path(maximum_path_c, value, mask):
  """What the official monotonic_align.maximum_path does, minus torch."""
  values = np.array(value, np.float32, order="C", copy=True)  # overwritten in place
  paths = np.zeros(value.shape, np.int32)
  t_ys = np.ascontiguousarray(mask.sum(1)[:, 0], np.int32)
  t_xs = np.ascontiguousarray(mask.sum(2)[:, 0], np.int32)
  maximum_path_c(paths, values, t_ys, t_xs)
  return paths.astype(np.float32)


def _mask(t_y, t_x, t_frames, t_text):
  frames = np.arange(t_frames)[None, :, None] < t_y[:, None, None]
  tokens = np.arange(t_text)[None, None, :] < t_x[:, None, None]
  return (frames & tokens).astype(np.float32)


def _case(kind, t_frames, t_text, seed):
  """A batch of random items of one kind; padding holds random garbage, not zeros."""
  rng = np.random.default_rng(seed)
  t_y = rng.integers(1, t_frames + 1, BATCH)
  if kind == "square":
    t_y = rng.integers(1, min(t_frames, t_text) + 1, BATCH)
    t_x = t_y
  elif kind == "one_token":
    t_x = np.ones(BATCH, np.int64)
  else:
    t_x = rng.integers(1, np.minimum(t_y, t_text) + 1)
  if kind == "ties":
    value = rng.integers(-2, 1, (BATCH, t_frames, t_text)).astype(np.float32)
  elif kind == "very_negative":
    # Around and beyond the official -1e9 "unreachable" constant, where its clamp decides.
    scale = 10.0 ** rng.uniform(6, 12, (BATCH, t_frames, t_text))
    value = (-scale * rng.uniform(0, 1, scale.shape)).astype(np.float32)
  else:
    value = (rng.standard_normal((BATCH, t_frames, t_text)) * 3 - 5).astype(np.float32)
  return value, _mask(t_y, t_x, t_frames, t_text)


@pytest.fixture(scope="module")
def cython():
  return _load_cython()


@pytest.fixture(scope="module")
def jitted():
  return jax.jit(maximum_path)


@pytest.mark.parametrize("t_frames,t_text", SHAPES)
def test_equals_cython_and_numba(cython, jitted, t_frames, t_text):
  """16 items x 5 kinds per shape, 480 items in all: jnp == numba == Cython, exactly."""
  for k, kind in enumerate(KINDS):
    value, mask = _case(kind, t_frames, t_text, seed=1000 * t_frames + 10 * t_text + k)
    expected = _cython_path(cython, value, mask)
    got = np.asarray(jitted(jnp.asarray(value), jnp.asarray(mask)))
    np.testing.assert_array_equal(got, expected, err_msg=f"jnp vs Cython, {kind}")
    np.testing.assert_array_equal(maximum_path_numba(value, mask), expected,
                                  err_msg=f"numba vs Cython, {kind}")
    # Each valid frame takes exactly one token, the first frame the first token.
    t_y = mask[:, :, 0].sum(1).astype(int)
    np.testing.assert_array_equal(got.sum(2), (np.arange(t_frames) < t_y[:, None]))
    assert np.all(got[:, 0, 0] == 1)


def test_tie_stays_on_token(jitted):
  """All-equal scores: the official rule moves left only on a strict '<' (or on the diagonal)."""
  value = np.zeros((1, 3, 2), np.float32)
  path = np.asarray(jitted(jnp.asarray(value), jnp.ones_like(jnp.asarray(value))))
  np.testing.assert_array_equal(path[0], [[1, 0], [0, 1], [0, 1]])


def test_padding_never_leaks(jitted):
  """NaN, +inf or huge values in the padding change nothing, and the path stays inside."""
  value, mask = _case("very_negative", 40, 16, seed=7)
  clean = np.asarray(jitted(jnp.asarray(value), jnp.asarray(mask)))
  for fill in (np.nan, np.inf, 1e30, -1e30):
    dirty = np.where(mask > 0, value, np.float32(fill)).astype(np.float32)
    path = np.asarray(jitted(jnp.asarray(dirty), jnp.asarray(mask)))
    np.testing.assert_array_equal(path, clean, err_msg=f"padding {fill}")
    np.testing.assert_array_equal(maximum_path_numba(dirty, mask), clean)
  assert np.all(clean[mask == 0] == 0)


def test_no_path_items_are_zero(jitted):
  """More tokens than frames (no monotonic path) and empty items give all zeros."""
  rng = np.random.default_rng(0)
  value = rng.standard_normal((3, 6, 8)).astype(np.float32)
  mask = _mask(np.array([4, 0, 6]), np.array([7, 0, 3]), 6, 8)
  path = np.asarray(jitted(jnp.asarray(value), jnp.asarray(mask)))
  assert path[0].sum() == 0 and path[1].sum() == 0 and path[2].sum() == 6
  np.testing.assert_array_equal(maximum_path_numba(value, mask), path)


def test_dtype_grad_and_graph_size():
  """Output dtype follows value; grad tracing passes through; the graph does not grow with T."""
  rng = np.random.default_rng(1)
  value = jnp.asarray(rng.standard_normal((2, 12, 5)), jnp.bfloat16)
  mask = jnp.ones(value.shape)
  assert maximum_path(value, mask).dtype == jnp.bfloat16

  value = value.astype(jnp.float32)
  path = maximum_path(value, mask)
  # The path is a constant of the loss: d/dv sum(path * v) == path.
  grad = jax.jit(jax.grad(lambda v: jnp.sum(maximum_path(v, mask) * v)))(value)
  np.testing.assert_array_equal(np.asarray(grad), np.asarray(path))

  def count(jaxpr):
    n = 0
    for eqn in jaxpr.eqns:
      assert "callback" not in eqn.primitive.name
      n += 1
      for param in eqn.params.values():
        for sub in param if isinstance(param, (list, tuple)) else [param]:
          sub = getattr(sub, "jaxpr", sub)
          if hasattr(sub, "eqns"):
            n += count(sub)
    return n

  def size(t_frames, t_text):
    shape = (2, t_frames, t_text)
    return count(jax.make_jaxpr(maximum_path)(jnp.zeros(shape), jnp.ones(shape)).jaxpr)

  assert size(8, 4) == size(512, 128)


def test_direction_bits_not_float_rows():
  """Scratch memory is a few bits per cell, not a float DP matrix (or a byte per cell)."""
  value = jnp.zeros((8, 256, 64))
  stats = jax.jit(maximum_path).lower(value, jnp.ones_like(value)).compile().memory_analysis()
  if stats is None:
    pytest.skip("backend reports no memory analysis")
  assert stats.temp_size_in_bytes < value.nbytes / 8


def test_bad_shapes():
  with pytest.raises(ValueError, match="T_frames, T_text"):
    maximum_path(jnp.zeros((2, 3, 4)), jnp.ones((2, 3, 5)))
  with pytest.raises(ValueError, match="T_frames, T_text"):
    maximum_path_numba(np.zeros((3, 4)), np.ones((3, 4)))
