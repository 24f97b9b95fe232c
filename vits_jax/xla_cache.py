"""The persistent XLA compilation cache shared by `load_voice`, `infer.py` and `train.py`."""

import os
import sys
import warnings


def default_dir() -> str:
  return os.path.join(os.path.expanduser("~"), ".cache", "vits_jax", "xla")


def cache_dir() -> str:
  """Where compiled programs (JAX's and vits_jax's own stored ones) and converted voices
  are kept: `VITS_JAX_XLA_CACHE` ('' disables the cache), else a JAX compilation cache the
  user configured (`jax_compilation_cache_dir`, JAX_COMPILATION_CACHE_DIR), else
  ~/.cache/vits_jax/xla."""
  own = os.environ.get("VITS_JAX_XLA_CACHE")
  if own is not None:
    return own
  jax = sys.modules.get("jax")   # (not imported for this: a CLI's start-up imports it later)
  configured = (getattr(jax.config, "jax_compilation_cache_dir", None) if jax is not None
                else os.environ.get("JAX_COMPILATION_CACHE_DIR"))
  return configured or default_dir()


def enable() -> None:
  """Turns on JAX's persistent compilation cache, process-wide, in `cache_dir()`, unless
  the user has configured JAX's own cache already (then that one is used as it is)."""
  cache = cache_dir()
  if not cache:
    return
  import jax
  try:
    if jax.config.jax_compilation_cache_dir:
      return  # the user's choice stands
    try:   # (JAX's own message for a cache it cannot make is "Error reading ... entry")
      os.makedirs(cache, exist_ok=True)
      why = None if os.access(cache, os.W_OK | os.X_OK) else "not writable"
    except OSError as e:
      why = "a file is in the way" if os.path.isfile(cache) else e.strerror or str(e)
    if why is not None:
      warnings.warn(f"the compile cache {cache} cannot be used ({why}): programs compile "
                    "afresh in every process (set VITS_JAX_XLA_CACHE to a writable folder, "
                    "or to '' for no cache)")
      return
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  except Exception:  # an older/newer jax without these options: run uncached
    pass
