"""Checkpoints: orbax `CheckpointManager` in `workdir/checkpoints`, saved asynchronously.

Each checkpoint `workdir/checkpoints/<step>/` holds three items:

    state/    the `TrainState` as a nested dict (`flax.serialization.to_state_dict`):
              state['params']['generator'] is the SynthesizerTrn 'params' collection,
              state['params']['discriminator'] the MPD's, plus opt_state, rng, step, ...
    data/     the input pipeline's position, one JSON file per process
              (`process_<i>-of-<n>.json`), so every host resumes its own stream
    config/   the full config as JSON (also written to `workdir/config.json`)

Restoring the state and the data position (the per-step RNG is `fold_in(rng, step)`) makes a
resumed run continue exactly as if it had never stopped. `load_generator_params` reads just
what inference needs.
"""

import contextlib
import dataclasses
import json
import logging
import os
import re
import warnings
from typing import Any, Dict, Optional

import flax
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from vits_jax.training import state as state_lib

CHECKPOINT_DIR = "checkpoints"


class DataStateError(ValueError):
  """A checkpoint's input-pipeline state is not this run's to read."""


class DataStateHandler(ocp.CheckpointHandler):
  """Saves a JSON-serializable input-pipeline state per process (each host reads its own)."""

  def save(self, directory: epath.Path, args: "DataStateSave"):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / _process_file()).write_text(json.dumps(args.state))

  def restore(self, directory: epath.Path, args: Optional["DataStateRestore"] = None):
    path = directory / _process_file()
    others = sorted(p.name for p in directory.glob("process_*-of-*.json")) \
        if directory.exists() else []
    if not path.exists() and others:   # (no file at all: a damaged checkpoint, said below)
      raise DataStateError(f"{path} is missing: the checkpoint was written by a run with a "
                           f"different number of processes ({others[0]})")
    return json.loads(path.read_text())

  def metadata(self, directory: epath.Path):
    return None

  def structure(self, directory):
    return None

  def finalize(self, directory):
    pass

  def close(self):
    pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
  state: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
  pass


def _process_file() -> str:
  return f"process_{jax.process_index()}-of-{jax.process_count()}.json"


# Config sections that fix the shapes of a checkpoint's state: a run resumed with others
# cannot read it.
STATE_SECTIONS = ("model", "discriminator")
# Settings outside those sections that size a parameter: the posterior encoder reads
# filter_length // 2 + 1 spectrogram bins.
STATE_KEYS = ("data.filter_length",)


@contextlib.contextmanager
def _quiet():
  """Keeps orbax's and asyncio's logging of a failed read (hundreds of lines of traces from
  its worker threads) and absl's notes on optional metadata off the user's terminal: the
  failure itself is raised as one line."""
  names = ("absl", "asyncio", "orbax", "jax._src.distributed")
  loggers = [logging.getLogger(n) for n in names]
  levels = [lg.level for lg in loggers]
  for lg in loggers:
    lg.setLevel(logging.CRITICAL)
  _silence_closed_loop_errors()
  try:
    with warnings.catch_warnings():
      warnings.filterwarnings("ignore", message="coroutine .* was never awaited")
      try:
        yield
      except BaseException:
        import gc  # pylint: disable=import-outside-toplevel
        gc.collect()   # the failed read's dropped futures and coroutines go now, quietly
        raise
  finally:
    for lg, level in zip(loggers, levels):
      lg.setLevel(level)


def _silence_closed_loop_errors() -> None:
  """After a failed read, orbax's reader threads may still call back into its asyncio loop,
  which is closed by then: each prints a 'RuntimeError: Event loop is closed' traceback,
  also after the failure was raised. Those (and only those) are dropped from the first
  checkpoint read on."""
  import sys
  if getattr(sys.excepthook, "_vits_jax", False):
    return

  def closed_loop(exc) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"

  def orbax_leftover(info) -> bool:
    """A read coroutine of orbax's that failed and was dropped with the failed restore (a
    truncated file: one per array, hundreds of tracebacks)."""
    code = getattr(info.object, "cr_code", None)
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename

  excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

  def on_exception(kind, value, tb):
    if not closed_loop(value):
      excepthook(kind, value, tb)

  def on_unraisable(info):
    if not (closed_loop(info.exc_value) or orbax_leftover(info)):
      unraisablehook(info)
  on_exception._vits_jax = True
  sys.excepthook, sys.unraisablehook = on_exception, on_unraisable
  logging.getLogger("asyncio").addFilter(_dropped_read_tasks)


# How tensorstore (orbax's storage layer) words a failed read: an absl status code first.
_STORE_ERROR = re.compile(r"(OUT_OF_RANGE|DATA_LOSS|NOT_FOUND|INVALID_ARGUMENT|"
                          r"FAILED_PRECONDITION|UNKNOWN|INTERNAL|UNAVAILABLE): ")


def _dropped_read_tasks(record: logging.LogRecord) -> bool:
  """asyncio's '<Task|Future|_GatheringFuture> exception was never retrieved' for a read of
  orbax's (or JAX's array serialization) dropped with a failed restore: logged when the
  future is garbage collected, which may be after `_quiet` has ended (a traceback on the
  terminal, 'at random' under load). A read is known by orbax's frames in the failure's
  traceback, or, for a future tensorstore failed from its own threads (no Python frames at
  all), by tensorstore's wording. Those are kept off; every other record passes."""
  first_line = record.getMessage().partition("\n")[0]   # then 'future: <Task ...>'
  if not first_line.endswith("exception was never retrieved"):
    return True
  exc = record.exc_info[1] if record.exc_info else None
  seen, frames = set(), False
  while exc is not None and id(exc) not in seen:   # the failure and what it wraps
    seen.add(id(exc))
    tb = exc.__traceback__
    while tb is not None:
      frames = True
      name = tb.tb_frame.f_code.co_filename
      if f"{os.sep}orbax{os.sep}" in name or f"{os.sep}array_serialization{os.sep}" in name:
        return False
      tb = tb.tb_next
    if not frames and _STORE_ERROR.match(str(exc)):
      return False
    exc = exc.__cause__ or exc.__context__
  return True


def _reason(e: BaseException) -> str:
  """A short reason for a failed read: tensorstore's status line where there is one (it may
  be deep in a chain of wrapped exceptions), else the first line of the message."""
  seen = []
  while e is not None and e not in seen and len(seen) < 10:
    seen.append(e)
    e = e.__cause__ or e.__context__
  texts = [str(x) for x in seen]
  for text in texts:
    m = re.search(r"\b(DATA_LOSS|OUT_OF_RANGE|NOT_FOUND|INVALID_ARGUMENT|FAILED_PRECONDITION|"
                  r"UNKNOWN): [^\n]{0,160}", text)
    if m:
      return m.group(0)
  for x, text in zip(seen, texts):
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if lines and not lines[0].startswith("File "):
      return f"{type(x).__name__}: {lines[0][:200]}"
  return type(seen[0]).__name__ if seen else "unreadable"


def _finite(params) -> bool:
  """Whether every parameter is finite (checked on the host: a jitted check would cost a
  compilation of hundreds of reductions)."""
  return all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(jax.device_get(params)))


class CorruptCheckpoint(ValueError):
  """A checkpoint folder that cannot be read: incomplete (an interrupted save or copy) or
  damaged."""


def steps_in(directory) -> list:
  """Steps of the checkpoint folders in `directory` (all-digit names), ascending."""
  directory = epath.Path(directory)
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) \
      if directory.exists() else []


def saved_config(directory, step: int) -> Optional[Dict[str, Any]]:
  """The config a checkpoint was saved with (None where it has none or it is unreadable)."""
  path = epath.Path(directory) / str(step) / "config" / "metadata"
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def state_differences(saved: Dict[str, Any], config: ml_collections.ConfigDict) -> list:
  """`section.key saved-value -> new-value` for every setting of `STATE_SECTIONS` and
  `STATE_KEYS` in which `config` differs from a checkpoint's `saved` config."""
  from flax import traverse_util

  def flat(d):
    out = traverse_util.flatten_dict(
        {section: d.get(section) or {} for section in STATE_SECTIONS}, sep=".")
    for key in STATE_KEYS:
      section, name = key.split(".")
      if name in (d.get(section) or {}):
        out[key] = d[section][name]
    return out
  old_flat, new_flat = flat(saved), flat(config.to_dict())
  norm = lambda v: list(v) if isinstance(v, tuple) else v
  return [f"{k} {old_flat.get(k)!r} -> {new_flat.get(k)!r}"
          for k in sorted(set(old_flat) | set(new_flat))
          if norm(old_flat.get(k)) != norm(new_flat.get(k))]


class SaveError(RuntimeError):
  """A checkpoint could not be written (a full disk, a file-size limit, permissions); the
  checkpoints saved before it are intact."""


def _save_error(directory, step, e: BaseException) -> SaveError:
  text = str(e).strip()
  reason = getattr(e, "strerror", None) or (text.splitlines()[0] if text else type(e).__name__)
  for needle, plain in (("No space left", "the disk is full"),
                        ("File too large", "a file-size limit was reached (disk full?)")):
    if needle in str(e):
      reason = plain
  where = f"step {step}" if step is not None else "the last step"
  return SaveError(f"cannot save the checkpoint of {where} in {directory}: {reason}; "
                   f"the earlier checkpoints are intact")


class Checkpointer:
  """Saves and restores (train state, data position, config) under `workdir/checkpoints`."""

  def __init__(self, workdir: str, max_to_keep: int):
    self.directory = epath.Path(workdir).absolute() / CHECKPOINT_DIR
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=True,
        cleanup_tmp_directories=True)   # temporaries of saves a kill interrupted
    with _quiet():   # (it lists the step folders, with absl notes on incomplete ones)
      self.manager = ocp.CheckpointManager(
          self.directory, options=options,
          item_handlers={"state": ocp.StandardCheckpointHandler(),
                         "data": DataStateHandler(),
                         "config": ocp.JsonCheckpointHandler()})
    self._pending = None

  def latest_step(self) -> Optional[int]:
    with _quiet():   # absl's note on a step folder without metadata: the restore says more
      return self.manager.latest_step()

  def save(self, step: int, state: state_lib.TrainState, data_state: Any,
           config: ml_collections.ConfigDict) -> bool:
    """Starts an asynchronous save; returns False (and saves nothing) if params are not finite.

    `data_state` must be a snapshot taken now (it is written before this returns).
    """
    if not _finite(state.params):
      logging.error("step %d: params are not finite; checkpoint not saved", step)
      return False
    self._check_room(step, state)
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
          data=DataStateSave(data_state),
          config=ocp.args.JsonSave(config.to_dict())), force=True)
    except Exception as e:  # pylint: disable=broad-except  (orbax wraps the OSError)
      raise _save_error(self.directory, step, e) from e
    self._pending = step
    return True

  def restore(self, step: int, abstract_state: state_lib.TrainState) -> state_lib.TrainState:
    """Restores the train state of checkpoint `step` onto the shardings of
    `abstract_state` (a `TrainState` of `jax.ShapeDtypeStruct`s with shardings attached);
    the input pipeline's position is `restore_data_state`."""
    target = flax.serialization.to_state_dict(abstract_state)
    try:
      with _quiet():
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target)))
    except Exception as e:  # pylint: disable=broad-except  (orbax wraps every read error)
      raise self._unreadable(step, e) from None
    state = flax.serialization.from_state_dict(abstract_state, restored["state"])
    if not _finite(state.params):   # bit rot in an array file: no save writes these
      raise self._unreadable(step, ValueError("its parameters are not finite"))
    return state

  def restore_data_state(self, step: int):
    """The input pipeline's position saved with checkpoint `step` (without the state)."""
    try:
      with _quiet():
        return self.manager.restore(step, args=ocp.args.Composite(
            data=DataStateRestore()))["data"]
    except Exception as e:  # pylint: disable=broad-except
      raise self._unreadable(step, e) from None

  def check_config(self, step: int, config: ml_collections.ConfigDict) -> None:
    """ValueError if checkpoint `step` was saved by a model of other shapes than `config`'s
    (a resume with another config), naming the settings that differ."""
    saved = saved_config(self.directory, step)
    if saved is None:   # (a checkpoint without its config: the run's config.json says)
      try:
        saved = json.loads((self.directory.parent / "config.json").read_text())
      except (OSError, ValueError):
        saved = None
    if not isinstance(saved, dict):
      saved = None
    changed = state_differences(saved, config) if saved is not None else []
    if changed:
      raise ValueError(
          f"the checkpoints in {self.directory} are of a different model "
          f"({'; '.join(changed[:4])}{'; ...' if len(changed) > 4 else ''}): resume with "
          f"the config they were trained with ({self.directory.parent / 'config.json'}) "
          "or use a new --workdir")

  def _unreadable(self, step: int, e: BaseException) -> "CorruptCheckpoint":
    if isinstance(e, DataStateError):
      return CorruptCheckpoint(str(e))
    earlier = [s for s in steps_in(self.directory) if s < step]
    advice = (f"move {self.directory / str(step)} away to resume from step {earlier[-1]}"
              if earlier else f"move {self.directory / str(step)} away to start afresh")
    return CorruptCheckpoint(
        f"checkpoint {step} in {self.directory} is incomplete or damaged ({_reason(e)}): "
        f"{advice}")

  def _check_room(self, step: int, state) -> None:
    """SaveError before writing anything if the checkpoint cannot fit: the free disk space
    or the process's file-size limit is below the state's size (a failed write would be
    caught too, but orbax's background threads log pages of traces first)."""
    import resource
    import shutil
    sizes = [int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize
             for x in jax.tree_util.tree_leaves(state)]
    need = sum(sizes)
    mb = lambda n: f"{n / 2**20:.0f} MB"
    try:
      free = shutil.disk_usage(self.directory).free
    except OSError:
      free = None
    if free is not None and free < need + (16 << 20):
      raise SaveError(f"cannot save the checkpoint of step {step} in {self.directory}: the "
                      f"disk is full (it needs about {mb(need)}, {mb(free)} free); the "
                      f"earlier checkpoints are intact")
    # The file-size limit is per file, and a checkpoint is many files: refused here when
    # its largest array alone cannot fit in one (the whole state may well be larger).
    limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    largest = max(sizes, default=0)
    if limit not in (resource.RLIM_INFINITY, -1) and limit < largest:
      raise SaveError(f"cannot save the checkpoint of step {step} in {self.directory}: one "
                      f"of its arrays takes {mb(largest)}, more than this process's file-size"
                      f" limit ({limit} bytes, ulimit -f); the earlier checkpoints are intact")

  def wait(self):
    """Waits for the save in flight; SaveError if it failed."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise _save_error(self.directory, self._pending, e) from e

  def close(self):
    try:
      self.wait()
    finally:
      self.manager.close()


def load_generator_params(workdir: str, step: Optional[int] = None,
                          discriminator: bool = False):
  """Reads what inference (or export) needs from a training workdir.

  Args:
    workdir: a `train.py --workdir`.
    step: checkpoint step; default the latest that can be read (a later one left
      incomplete or damaged, by an interrupted save or copy, is passed over with a warning).
    discriminator: also read the discriminator params.

  Returns:
    (config ConfigDict: the checkpoint's own, generator params pytree of numpy arrays,
     step, discriminator params or None).

  Raises:
    FileNotFoundError: no checkpoint in `workdir`.
    ValueError: the checkpoint asked for (or every one) is incomplete or damaged.
  """
  directory = epath.Path(workdir).absolute() / CHECKPOINT_DIR
  steps = steps_in(directory)
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {directory}")
  if step is not None:
    if step not in steps:
      raise FileNotFoundError(f"no checkpoint for step {step} in {directory} (have {steps})")
    return _load_generator_step(workdir, directory, step, discriminator)
  passed = []
  for candidate in reversed(steps):
    try:
      result = _load_generator_step(workdir, directory, candidate, discriminator)
    except CorruptCheckpoint as e:
      passed.append(e)
      continue
    if passed:
      warnings.warn(f"{passed[0]}; using step {candidate}"
                    + (f" ({len(passed)} later ones passed over)" if len(passed) > 1 else ""))
    return result
  raise passed[0]


def _load_generator_step(workdir, directory, step: int, discriminator: bool):
  config = _checkpoint_config(workdir, directory, step)
  parts = ("generator", "discriminator") if discriminator else ("generator",)
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
  try:
    with _quiet(), ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
      meta = ckptr.metadata(directory / str(step) / "state")
      if meta is not None and getattr(meta, "item_metadata", meta) is not None:
        tree = (meta.item_metadata.tree if hasattr(meta, "item_metadata")
                else meta.tree)["params"]
        parts = [p for p in parts if p in tree]   # a generator-only checkpoint
      elif discriminator:
        raise CorruptCheckpoint(f"checkpoint {step} in {directory} is incomplete or "
                                "damaged (its state metadata cannot be read)")
      else:
        # The array index alone is lost (as a resume, which knows the state's shapes,
        # reads such a checkpoint): the generator's shapes come from its own config.
        from vits_jax.models import synthesizer   # pylint: disable=import-outside-toplevel
        tree = {"generator": synthesizer.param_shapes(synthesizer.build_synthesizer(config))}
      target = {"params": {part: jax.tree_util.tree_map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
          tree[part]) for part in parts}}
      restored = ckptr.restore(
          directory / str(step) / "state",
          args=ocp.args.PyTreeRestore(
              item=target,
              restore_args=ocp.checkpoint_utils.construct_restore_args(target),
              partial_restore=True))
  except CorruptCheckpoint:
    raise
  except Exception as e:  # pylint: disable=broad-except  (orbax wraps every read error)
    raise CorruptCheckpoint(f"checkpoint {step} in {directory} is incomplete or damaged "
                            f"({_reason(e)})") from None
  params = jax.tree_util.tree_map(np.asarray, restored["params"])
  if not _finite(params):   # bit rot in an array file: no save writes these
    raise CorruptCheckpoint(f"checkpoint {step} in {directory} is incomplete or damaged "
                            "(its parameters are not finite)")
  return config, params["generator"], step, params.get("discriminator")


def _checkpoint_config(workdir, directory, step: int) -> ml_collections.ConfigDict:
  """The config checkpoint `step` was saved with. The checkpoint's own describes its
  params; workdir/config.json is the latest run's and only stands in for checkpoints
  written without one."""
  config_path = directory / str(step) / "config" / "metadata"
  if not config_path.exists():
    config_path = epath.Path(workdir) / "config.json"
  try:
    return ml_collections.ConfigDict(json.loads(config_path.read_text()))
  except FileNotFoundError:
    raise FileNotFoundError(f"{config_path} is missing: the workdir's config is needed to "
                            "build its model") from None
  except (OSError, ValueError) as e:
    raise ValueError(f"{config_path} is not a readable config ({e})") from None
