"""The persistent XLA compilation cache shared by `infer.py` and `train.py`."""

import os


def enable() -> None:
  """Caches compiled programs in ~/.cache/vits_jax/xla (`VITS_JAX_XLA_CACHE=` disables it)."""
  cache = os.environ.get("VITS_JAX_XLA_CACHE",
                         os.path.join(os.path.expanduser("~"), ".cache", "vits_jax", "xla"))
  if not cache:
    return
  import jax
  try:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  except Exception:  # an older/newer jax without these options: run uncached
    pass
