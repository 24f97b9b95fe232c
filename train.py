"""Trains VITS: parses flags and hands over to `vits_jax.training.train_and_evaluate`.

    python train.py --config configs/vctk.py --workdir runs/vctk
    python train.py --config configs/tiny.py --workdir runs/tiny \
        --config.data.dir=data/ljs --config.train.num_steps=5000

Any config field can be overridden with `--config.<section>.<key>=value`. A run restarted with
the same workdir resumes from its latest checkpoint; SIGTERM saves a checkpoint and exits 0,
Ctrl-C saves one and exits 130 (Ctrl-C twice quits without saving).
On a multi-host TPU/GPU cluster the processes find each other automatically
(`jax.distributed.initialize()`); elsewhere pass `--coordinator_address`, `--num_processes`
and `--process_id` (or the JAX_* environment variables), e.g. two CPU processes on one machine:

    python train.py ... --coordinator_address=localhost:12345 --num_processes=2 --process_id=0

Compiled programs are cached in ~/.cache/vits_jax/xla (set VITS_JAX_XLA_CACHE= to disable), so
a restarted run skips most of its compilation.
"""

import os
import sys
from typing import Optional

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Index of this process.")


def main(argv):
  if not flags.FLAGS["verbosity"].present:
    # Orbax and JAX log every checkpoint step at INFO; --verbosity=0 shows them.
    logging.set_verbosity(logging.WARNING)
  import warnings
  from vits_jax.files import warning_line
  warnings.showwarning = warning_line
  if len(argv) > 1:   # (absl's UsageError would print the whole usage before it)
    _exit_now(f"error: unexpected arguments: {' '.join(argv[1:])} (settings are flags: "
              "--config.section.key=value)", 2)
  try:
    config = _CONFIG.value
    if config is not None:
      config.get("train")   # a file that failed to load stands in an object raising here
  except Exception as e:  # pylint: disable=broad-except  (a missing or broken config file)
    cause = e.__cause__ or e.__context__ or e
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    _exit_now(f"error: cannot load --config: {type(cause).__name__}: "
              f"{lines[-1] if lines else cause!r}", 2)
  if config is None or not _WORKDIR.value:
    print("error: --config and --workdir are required", file=sys.stderr)
    sys.exit(2)

  # Imported here so `--help` and flag errors stay fast and never touch a device.
  from vits_jax import training
  from vits_jax import allocator
  from vits_jax import xla_cache
  from vits_jax.training import parallel

  allocator.keep_freed_memory(default=False)   # VITS_JAX_MALLOC=keep turns it on
  xla_cache.enable()
  try:
    # Must run before anything touches a JAX device.
    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    training.train_and_evaluate(config, _WORKDIR.value, exit_on_signal=True)
  except KeyboardInterrupt:
    _exit_now("interrupted", 130)
  except (training.NonFiniteError, training.SaveError) as e:
    _exit_now(f"error: {e}", 1)
  except (ValueError, FileNotFoundError) as e:
    # User mistakes (bad data dir, init_from, config values) are raised with a clear message.
    _exit_now(f"error: {e}", 2)
  except OSError as e:   # the workdir's files themselves (not writable, a full disk)
    where = f"{e.filename}: " if getattr(e, "filename", None) else ""
    _exit_now(f"error: {where}{e.strerror or e}", 1)
  # Done: every checkpoint, metric and event file is written and closed. The interpreter's
  # teardown under JAX's and orbax's threads crashed (SIGSEGV) now and then after a finished
  # run (once in the README test of a clean-clone run), so it is skipped, as infer.py does.
  if parallel.is_distributed():
    import jax  # pylint: disable=import-outside-toplevel
    jax.distributed.shutdown()   # (the other processes wait for this one's goodbye)
  _exit_now(None, 0)


def _exit_now(message: Optional[str], code: int):
  """Prints `message` and exits without waiting for step programs still compiling in the
  background (minutes for a full-size model); checkpoints in flight were finished by the
  loop before the error came up."""
  if message is not None:
    if message.startswith("error: "):   # (a name given with a newline stays on one line)
      from vits_jax.files import one_line
      message = "error: " + one_line(message[len("error: "):])
    print(message, file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)   # pylint: disable=protected-access


def _config_arg(argv) -> str:
  """The --config value in `argv` (for messages), or '' if absent."""
  for i, arg in enumerate(argv[1:], 1):
    if arg in ("--config", "-config") and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith(("--config=", "-config=")):
      return arg.split("=", 1)[1]
  return ""


def _parse_flags(argv):
  """absl's flag parsing; a --config.* override naming no field, or of the wrong type, is
  one line and exit 2 (ml_collections raises it as an exception, not a flags error)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = str(e)
    if "Traceback (most recent call last)" in message:
      # ml_collections puts the whole traceback of a failing get_config() into the flag
      # error ('configs/tiny.py:bogus'); its last line is the cause.
      lines = [line.strip() for line in message.splitlines() if line.strip()]
      _exit_now(f"error: cannot load --config {_config_arg(argv)}: {lines[-1]}", 2)
    _exit_now(f"error: {message}", 2)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    if (isinstance(e, AttributeError) and (getattr(e, "name", None) == "get_config"
                                           or "attribute 'get_config'" in str(e))):
      # Raised while the config file loads, before any override is applied.
      _exit_now(f"error: cannot load --config {_config_arg(argv)}: the file has no "
                "get_config() function (a config file defines get_config() returning an "
                "ml_collections.ConfigDict, as configs/*.py do)", 2)
    while e.args and isinstance(e.args[0], BaseException):   # AttributeError(KeyError(...))
      e = e.args[0]
    unknown = _unknown_override(argv)
    if unknown:
      _exit_now(f"error: bad --config override: {unknown}", 2)
    detail = str(e.args[0] if e.args else e).strip().replace("\n", "; ")
    _exit_now(f"error: bad --config override: {detail}", 2)
  except Exception as e:  # pylint: disable=broad-except  (the config file itself fails)
    _exit_now(f"error: cannot load --config: {type(e).__name__}: {e}", 2)


def _unknown_override(argv) -> str:
  """'--config.train.steps: train has no field 'steps' (did you mean num_steps?)' for the
  first override naming no field of the config file's config, or '' (ml_collections
  suggests by spelling alone: 'eps' for 'steps')."""
  import difflib
  import importlib.util
  path, _, arg = _config_arg(argv).partition(":")
  try:
    spec = importlib.util.spec_from_file_location("_config_for_message", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
  except Exception:  # pylint: disable=broad-except  (then ml_collections' words stand)
    return ""
  for item in argv[1:]:
    if not item.startswith("--config."):
      continue
    keys = item[len("--config."):].split("=", 1)[0].split(".")
    node, where = config, "the config"
    for key in keys:
      fields = list(node.keys()) if hasattr(node, "keys") else []
      if key not in fields:
        near = sorted((f for f in fields if key in f), key=len)   # (the closest first)
        near += [f for f in fields if f in key and f not in near]
        near += [f for f in difflib.get_close_matches(key, fields, n=3) if f not in near]
        hint = f" (did you mean {' or '.join(near[:3])}?)" if near else ""
        return f"--config.{'.'.join(keys)}: {where} has no field {key!r}{hint}"
      node, where = node[key], key
  return ""


if __name__ == "__main__":
  from vits_jax import allocator
  allocator.exec_with_huge_pages()   # fewer page faults per step (see vits_jax/allocator.py)
  app.run(main, flags_parser=_parse_flags)
