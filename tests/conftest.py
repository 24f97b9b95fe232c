"""Shared pytest setup: CPU only, float32 matmuls, no network."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One persistent compile cache for every test process of a run (and later runs): entries are
# keyed by a hash of the program, so a stale entry is never used for another program.
os.environ.setdefault("VITS_JAX_XLA_CACHE", os.path.join(
    __import__("tempfile").gettempdir(), "vits_jax_test_xla_cache"))

import jax  # noqa: E402

from vits_jax import xla_cache  # noqa: E402

xla_cache.enable()  # in-process compiles share the cache too

# Parity tests compare against float32 references; XLA's default CPU matmul precision is
# already full float32, but make it explicit so a TPU/GPU default never leaks in.
jax.config.update("jax_default_matmul_precision", "highest")

import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
  """Drop compiled XLA programs after each test module.

  The suite compiles many model variants; keeping every executable alive in one process
  grows past the memory of a small CI machine.
  """
  yield
  jax.clear_caches()
  gc.collect()

