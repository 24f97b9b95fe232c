"""The persistent XLA compilation cache shared by `load_voice`, `infer.py` and `train.py`."""

import os


def cache_dir() -> str:
  """~/.cache/vits_jax/xla, or `VITS_JAX_XLA_CACHE` ('' disables the cache)."""
  return os.environ.get("VITS_JAX_XLA_CACHE",
                        os.path.join(os.path.expanduser("~"), ".cache", "vits_jax", "xla"))


def enable() -> None:
  """Caches compiled programs in `cache_dir()`, unless the user has configured JAX's own
  cache already (`jax_compilation_cache_dir`, e.g. through JAX_COMPILATION_CACHE_DIR)."""
  cache = cache_dir()
  if not cache:
    return
  import jax
  try:
    if jax.config.jax_compilation_cache_dir:
      return  # the user's choice stands
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  except Exception:  # an older/newer jax without these options: run uncached
    pass
