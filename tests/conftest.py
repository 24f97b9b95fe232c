"""Shared pytest setup: CPU only, float32 matmuls, no network."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One persistent compile cache for every test process of a run (and later runs): entries are
# keyed by a hash of the program, so a stale entry is never used for another program.
os.environ.setdefault("VITS_JAX_XLA_CACHE", os.path.join(
    __import__("tempfile").gettempdir(), "vits_jax_test_xla_cache"))

# Tests compile many programs and run each a few times: the test processes compile with
# `train_utils.XLA_FLAGS` (no LLVM optimizations) as their train.py runs do
# (test_model_properties.py 235 vs 291 s, test_synthesis.py + test_piper.py 274 vs 293 s
# here); processes the tests start inherit it, so programs compared across processes are
# compiled alike.
import train_utils  # noqa: E402  (no jax import)

os.environ["XLA_FLAGS"] = train_utils.xla_flags(os.environ.get("XLA_FLAGS", ""))

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



# Test modules that take minutes (compiling train steps, running the README and the
# notebook), most expensive first. They are collected first, and pytest.ini's
# `--no-loadscope-reorder` makes `-n 2 --dist loadfile` hand them out in that order, so the
# two workers start on the long ones and the short modules fill the gaps, instead of one
# worker meeting a long module at the end with the other idle.
SLOW_MODULES = ("test_train.py", "test_readme.py", "test_model_properties.py", "test_tfds.py",
                "test_train_full_size.py", "test_notebook.py", "test_train_multihost.py",
                "test_synthesis.py", "test_export.py", "test_model_parity.py",
                "test_infer_cli.py", "test_export_piper.py", "test_train_step_golden.py")


def pytest_collection_modifyitems(session, config, items):
  del session, config
  rank = {name: i for i, name in enumerate(SLOW_MODULES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_MODULES)))
