"""Small modules' contracts that a mutation audit found unpinned: the persistent compile cache
(`xla_cache`), the glibc malloc settings (`allocator`), the numba MAS's interface
(`mas_numba`), request fields (`request`) and `torch_names.torch_to_flax`'s reconciling of
weight norm with the target params."""

import os
import sys

import jax
import numpy as np
import pytest

from vits_jax import allocator, request, xla_cache
from vits_jax.convert import torch_names
from vits_jax.mas_numba import maximum_path_numba


# -------------------------------------------------------------------------- xla_cache
@pytest.fixture
def jax_cache_config():
  """Restores the two JAX options `xla_cache.enable` sets."""
  keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
  before = {k: getattr(jax.config, k) for k in keys}
  yield
  for k, v in before.items():
    jax.config.update(k, v)


def test_cache_dir_follows_a_jax_cache_the_user_configured(tmp_path, monkeypatch,
                                                           jax_cache_config):
  """VITS_JAX_XLA_CACHE unset: a configured JAX cache (jax.config once jax is imported, else
  JAX_COMPILATION_CACHE_DIR) is used, else ~/.cache/vits_jax/xla."""
  monkeypatch.delenv("VITS_JAX_XLA_CACHE", raising=False)
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "users"))
  assert xla_cache.cache_dir() == str(tmp_path / "users")
  jax.config.update("jax_compilation_cache_dir", None)
  want = os.path.join(str(tmp_path / "home"), ".cache", "vits_jax", "xla")
  assert xla_cache.default_dir() == want and xla_cache.cache_dir() == want
  # Before jax is imported (a CLI's start-up): JAX's environment variable.
  monkeypatch.delitem(sys.modules, "jax")
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
  assert xla_cache.cache_dir() == str(tmp_path / "env")
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
  assert xla_cache.cache_dir() == want


def test_enable_sets_our_cache_and_an_empty_name_touches_nothing(tmp_path, monkeypatch,
                                                                 jax_cache_config):
  jax.config.update("jax_compilation_cache_dir", None)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 7.0)
  monkeypatch.setenv("VITS_JAX_XLA_CACHE", "")
  xla_cache.enable()
  assert jax.config.jax_compilation_cache_dir is None
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 7.0
  monkeypatch.setenv("VITS_JAX_XLA_CACHE", str(tmp_path / "ours"))
  xla_cache.enable()
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "ours")
  # Programs that compile in no time are not written to disk.
  assert jax.config.jax_persistent_cache_min_compile_time_secs > 0


def test_a_cache_that_cannot_be_made_is_one_warning_and_stays_off(tmp_path, monkeypatch,
                                                                  jax_cache_config):
  """A file where the cache should be (or below it): one warning naming it, and JAX's cache
  stays off (JAX warned "Error reading persistent compilation cache entry" instead)."""
  jax.config.update("jax_compilation_cache_dir", None)
  (tmp_path / "f").write_text("x")
  for where, why in ((tmp_path / "f", "a file is in the way"),
                     (tmp_path / "f" / "sub", "Not a directory")):
    monkeypatch.setenv("VITS_JAX_XLA_CACHE", str(where))
    with pytest.warns(UserWarning, match=f"compile cache {where} cannot be used \\({why}\\)"):
      xla_cache.enable()
    assert jax.config.jax_compilation_cache_dir is None
  assert (tmp_path / "f").read_text() == "x"


# -------------------------------------------------------------------------- allocator
class _FakeMallopt:
  def __init__(self, result):
    self.result, self.calls = result, []

  def __call__(self, param, value):
    self.calls.append((param, value))
    return self.result


class _FakeLibc:
  def __init__(self, result=1):
    self.mallopt = _FakeMallopt(result)


def _fake_libc(monkeypatch, result=1):
  """Replaces ctypes.CDLL (the settings must not change this test process's malloc)."""
  libc, opened = _FakeLibc(result), []
  monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: opened.append(name) or libc)
  monkeypatch.setattr(allocator, "_DONE", [])
  return libc, opened


def test_keep_freed_memory_asks_glibc_for_no_mmap_and_no_trim_once(monkeypatch):
  monkeypatch.delenv("VITS_JAX_MALLOC", raising=False)
  monkeypatch.setattr(allocator.sys, "platform", "linux")
  libc, _ = _fake_libc(monkeypatch)
  assert allocator.keep_freed_memory() is True
  # M_MMAP_MAX = 0 (every size from the heaps), M_TRIM_THRESHOLD = INT_MAX (never trim).
  assert libc.mallopt.calls == [(-4, 0), (-1, 2 ** 31 - 1)]
  # Once per process: a later call (even with another setting) changes and calls nothing.
  monkeypatch.setenv("VITS_JAX_MALLOC", "default")
  assert allocator.keep_freed_memory() is True
  assert len(libc.mallopt.calls) == 2


def test_keep_freed_memory_reports_a_refusal_and_skips_other_systems(monkeypatch):
  monkeypatch.delenv("VITS_JAX_MALLOC", raising=False)
  monkeypatch.setattr(allocator.sys, "platform", "linux")
  _fake_libc(monkeypatch, result=0)            # mallopt says no
  assert allocator.keep_freed_memory() is False
  monkeypatch.setattr(allocator.sys, "platform", "darwin")
  libc, opened = _fake_libc(monkeypatch)
  assert allocator.keep_freed_memory() is False
  assert opened == [] and libc.mallopt.calls == []


def test_restart_keeps_the_users_tunables_flushes_and_survives_a_failed_exec(monkeypatch):
  calls, flushed = [], []

  class Stream:
    def flush(self):
      flushed.append(self)

  def execve(exe, argv, env):
    calls.append((exe, argv, env, len(flushed)))
    raise OSError("exec refused")

  out, err = Stream(), Stream()
  monkeypatch.setattr(allocator.sys, "stdout", out)
  monkeypatch.setattr(allocator.sys, "stderr", err)
  monkeypatch.setattr(allocator, "huge_pages_apply", lambda: True)
  monkeypatch.setattr(allocator.os, "execve", execve)
  monkeypatch.delenv("VITS_JAX_MALLOC", raising=False)
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
  assert allocator.exec_with_huge_pages() is None     # the failed exec: run on
  (exe, argv, env, flushes_before), = calls
  assert exe == sys.executable and argv == list(sys.orig_argv)
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  assert flushes_before == 2 and set(map(id, flushed)) == {id(out), id(err)}
  # Already set, or VITS_JAX_MALLOC=default: no restart.
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0")
  allocator.exec_with_huge_pages()
  monkeypatch.setenv("GLIBC_TUNABLES", "")
  monkeypatch.setenv("VITS_JAX_MALLOC", "default")
  allocator.exec_with_huge_pages()
  assert len(calls) == 1


def test_glibc_version_check_needs_glibc(monkeypatch):
  monkeypatch.setattr(allocator.os, "confstr", lambda name: "musl 2.40")
  assert allocator._glibc_at_least(2, 35) is False   # pylint: disable=protected-access
  monkeypatch.setattr(allocator.os, "confstr", lambda name: "glibc 2.40")
  assert allocator._glibc_at_least(2, 35) is True    # pylint: disable=protected-access


# -------------------------------------------------------------------------- mas_numba
def _dp_reference(value, t_y, t_x):
  """Plain numpy MAS for one item (float64 DP, the official tie rule)."""
  v = value[:t_y, :t_x].astype(np.float64)
  q = np.full((t_y, t_x), -np.inf)
  q[0, 0] = v[0, 0]
  for y in range(1, t_y):
    for x in range(min(t_x, y + 1)):
      stay = q[y - 1, x]
      move = q[y - 1, x - 1] if x > 0 else -np.inf
      q[y, x] = v[y, x] + max(stay, move)
  path = np.zeros(value.shape, np.float32)
  x = t_x - 1
  for y in range(t_y - 1, -1, -1):
    path[y, x] = 1
    if x != 0 and (x == y or q[y - 1, x] < q[y - 1, x - 1]):
      x -= 1
  return path


def test_numba_mas_interface():
  """Equals a direct DP; value is not modified; the path takes value's float dtype
  (float32 for integers); mismatched shapes are refused."""
  rng = np.random.default_rng(3)
  value = (rng.standard_normal((3, 9, 5)) * 2 - 4).astype(np.float32)
  lens = [(9, 5), (6, 3), (4, 4)]
  mask = np.zeros(value.shape, np.float32)
  for b, (t_y, t_x) in enumerate(lens):
    mask[b, :t_y, :t_x] = 1
  before = value.copy()
  path = maximum_path_numba(value, mask)
  np.testing.assert_array_equal(value, before)
  assert path.dtype == np.float32
  for b, (t_y, t_x) in enumerate(lens):
    np.testing.assert_array_equal(path[b], _dp_reference(value[b], t_y, t_x), err_msg=str(b))
  assert maximum_path_numba(value.astype(np.float64), mask).dtype == np.float64
  got = maximum_path_numba(np.round(value).astype(np.int32), mask)
  assert got.dtype == np.float32 and got.sum() == 9 + 6 + 4
  with pytest.raises(ValueError, match="T_frames, T_text"):
    maximum_path_numba(value, mask[:, :, :4])


# -------------------------------------------------------------------------- request
class _Voice:
  def speaker_id(self, speaker):
    return ("checked", speaker)


def test_request_speaker_fields_and_extra_fields():
  """speaker_id counts over speaker when both are given; a null one is not given; the
  voice checks the speaker; fields the caller reads itself pass only when named."""
  _, knobs = request.parse({"text": "Hi.", "speaker_id": 1, "speaker": "bob"}, _Voice(), {})
  assert knobs == {"speaker": ("checked", 1)}
  _, knobs = request.parse({"text": "Hi.", "speaker_id": None, "speaker": "bob"}, _Voice(),
                           {"speaker": 0})
  assert knobs == {"speaker": ("checked", "bob")}
  _, knobs = request.parse({"text": "Hi.", "speaker": None}, _Voice(), {"speaker": 2})
  assert knobs == {"speaker": 2}
  text, knobs = request.parse({"text": "Hi.", "output_file": "a.wav"}, None, {},
                              extra=("output_file",))
  assert (text, knobs) == ("Hi.", {})
  with pytest.raises(ValueError, match="unknown field\\(s\\): output_file"):
    request.parse({"text": "Hi.", "output_file": "a.wav"}, None, {})


def test_request_checks_ranges_naming_the_field_given():
  with pytest.raises(ValueError, match=r"^seed must be an integer in \[-2\*\*63, 2\*\*63\)"):
    request.parse({"text": "Hi.", "seed": 2 ** 70}, None, {})
  with pytest.raises(ValueError, match=r"^noise_w_scale must be a number in \[0, "):
    request.parse({"text": "Hi.", "noise_w_scale": -1}, None, {})
  with pytest.raises(ValueError, match=r"^seed must be an integer, got 1.0"):
    request.parse({"text": "Hi.", "seed": 1.0}, None, {})
  with pytest.raises(ValueError, match="no text"):
    request.parse({"text": " \n"}, None, {})
  _, knobs = request.parse({"text": "Hi.", "seed": -(2 ** 63), "volume": 0}, None,
                           {"seed": 5, "volume": 1.0, "normalize": True})
  assert knobs == {"seed": -(2 ** 63), "volume": 0, "normalize": True}


# -------------------------------------------------------------------------- torch_names
def _weight_norm(g, v):
  """torch's weight norm (dim=0) on a torch-layout weight."""
  norm = np.sqrt((v.astype(np.float64) ** 2).sum(axis=tuple(range(1, v.ndim)), keepdims=True))
  return g.astype(np.float64) * v / norm


def test_weight_norm_checkpoint_into_folded_params():
  """A checkpoint with (weight_g, weight_v) loads into a target whose convs hold a plain
  folded `weight` (conv and transposed conv), and the other way; names and shapes are
  checked."""
  rng = np.random.default_rng(0)
  sds = jax.ShapeDtypeStruct
  g_post, v_post = rng.uniform(0.5, 2, (1, 1, 1)), rng.standard_normal((1, 4, 7))
  g_ups, v_ups = rng.uniform(0.5, 2, (6, 1, 1)), rng.standard_normal((6, 4, 8))
  sd = {"dec.conv_post.weight_g": g_post, "dec.conv_post.weight_v": v_post,
        "dec.conv_post.bias": np.zeros(1),
        "dec.ups.0.weight_g": g_ups, "dec.ups.0.weight_v": v_ups, "dec.ups.0.bias": np.ones(4)}
  folded = {"dec": {"conv_post": {"weight": sds((7, 4, 1), np.float32),
                                  "bias": sds((1,), np.float32)},
                    "ups_0": {"weight": sds((8, 6, 4), np.float32),
                              "bias": sds((4,), np.float32)}}}
  params = torch_names.torch_to_flax(sd, like=folded)
  assert set(params["dec"]["conv_post"]) == {"weight", "bias"}
  np.testing.assert_allclose(params["dec"]["conv_post"]["weight"],
                             _weight_norm(g_post, v_post).transpose(2, 1, 0), rtol=1e-6)
  np.testing.assert_allclose(params["dec"]["ups_0"]["weight"],
                             _weight_norm(g_ups, v_ups).transpose(2, 0, 1), rtol=1e-6)
  # ... and a folded checkpoint into weight-normed params: g * v / ||v|| gives it back.
  plain = torch_names.flax_to_torch(params)
  normed = {"dec": {"conv_post": {"weight_g": sds((1,), np.float32),
                                  "weight_v": sds((7, 4, 1), np.float32),
                                  "bias": sds((1,), np.float32)},
                    "ups_0": {"weight_g": sds((6,), np.float32),
                              "weight_v": sds((8, 6, 4), np.float32),
                              "bias": sds((4,), np.float32)}}}
  back = torch_names.flax_to_torch(torch_names.torch_to_flax(plain, like=normed),
                                   fold_weight_norm=True)
  for k in ("dec.conv_post.weight", "dec.ups.0.weight"):
    np.testing.assert_allclose(back[k], plain[k], rtol=1e-6, atol=1e-7, err_msg=k)
  np.testing.assert_array_equal(torch_names.torch_to_flax(plain, like=normed)["dec"]["ups_0"]
                                ["weight_g"], np.sqrt((plain["dec.ups.0.weight"].astype(
                                    np.float64) ** 2).sum((1, 2))).astype(np.float32))

  for change, needle in (
      ({"dec.conv_post.bias": np.zeros(3)},
       "shape of dec/conv_post/bias: checkpoint (3,) vs model (1,)"),
      ({"dec.ups.0.bias": None}, "missing dec/ups_0/bias"),
      ({"dec.extra.bias": np.zeros(2)}, "unexpected dec/extra")):
    bad = {k: v for k, v in dict(sd, **change).items() if v is not None}
    with pytest.raises(ValueError, match="checkpoint does not match the model") as e:
      torch_names.torch_to_flax(bad, like=folded)
    assert needle in str(e.value), str(e.value)
  # Every problem of the tree in one error, not only the first subtree's.
  bad = {k: v for k, v in sd.items() if k != "dec.ups.0.bias"}
  bad.update({"dec.conv_post.bias": np.zeros(3), "enc_p.x": np.zeros(2),
              "dec.cond.bias": np.zeros(2)})
  like = {"dec": dict(folded["dec"], cond=sds((2,), np.float32))}
  with pytest.raises(ValueError) as e:
    torch_names.torch_to_flax(bad, like=like)
  message = str(e.value)
  for needle in ("shape of dec/conv_post/bias", "missing dec/ups_0/bias", "unexpected enc_p",
                 "dec/cond is an array in the model, not in the checkpoint"):
    assert needle in message, message
  assert "\n" not in message
