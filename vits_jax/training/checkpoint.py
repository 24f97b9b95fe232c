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

import dataclasses
import json
import logging
import os
from typing import Any, Optional

import flax
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from vits_jax.training import state as state_lib

CHECKPOINT_DIR = "checkpoints"


class DataStateHandler(ocp.CheckpointHandler):
  """Saves a JSON-serializable input-pipeline state per process (each host reads its own)."""

  def save(self, directory: epath.Path, args: "DataStateSave"):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / _process_file()).write_text(json.dumps(args.state))

  def restore(self, directory: epath.Path, args: Optional["DataStateRestore"] = None):
    path = directory / _process_file()
    if not path.exists():
      raise ValueError(f"{path} is missing: the checkpoint was written by a run with a "
                       "different number of processes")
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
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": DataStateHandler(),
                       "config": ocp.JsonCheckpointHandler()})
    self._pending = None

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state: state_lib.TrainState, data_state: Any,
           config: ml_collections.ConfigDict) -> bool:
    """Starts an asynchronous save; returns False (and saves nothing) if params are not finite.

    `data_state` must be a snapshot taken now (it is written before this returns).
    """
    # On the host: a jitted check would cost a compilation of hundreds of reductions.
    if not all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(
        jax.device_get(state.params))):
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
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))
    return flax.serialization.from_state_dict(abstract_state, restored["state"])

  def restore_data_state(self, step: int):
    """The input pipeline's position saved with checkpoint `step` (without the state)."""
    return self.manager.restore(step, args=ocp.args.Composite(
        data=DataStateRestore()))["data"]

  def _check_room(self, step: int, state) -> None:
    """SaveError before writing anything if the checkpoint cannot fit: the free disk space
    or the process's file-size limit is below the state's size (a failed write would be
    caught too, but orbax's background threads log pages of traces first)."""
    import resource
    import shutil
    need = sum(int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize
               for x in jax.tree_util.tree_leaves(state))
    mb = lambda n: f"{n / 2**20:.0f} MB"
    try:
      free = shutil.disk_usage(self.directory).free
    except OSError:
      free = None
    if free is not None and free < need + (16 << 20):
      raise SaveError(f"cannot save the checkpoint of step {step} in {self.directory}: the "
                      f"disk is full (it needs about {mb(need)}, {mb(free)} free); the "
                      f"earlier checkpoints are intact")
    limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if limit not in (resource.RLIM_INFINITY, -1) and limit < need:
      raise SaveError(f"cannot save the checkpoint of step {step} in {self.directory}: it "
                      f"needs about {mb(need)}, more than this process's file-size limit "
                      f"({limit} bytes, ulimit -f); the earlier checkpoints are intact")

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
    step: checkpoint step; default the latest.
    discriminator: also read the discriminator params.

  Returns:
    (config ConfigDict: the checkpoint's own, generator params pytree of numpy arrays,
     step, discriminator params or None).

  Raises:
    FileNotFoundError: no checkpoint in `workdir`.
  """
  directory = epath.Path(workdir).absolute() / CHECKPOINT_DIR
  steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) \
      if directory.exists() else []
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {directory}")
  step = steps[-1] if step is None else step
  if step not in steps:
    raise FileNotFoundError(f"no checkpoint for step {step} in {directory} (have {steps})")
  parts = ("generator", "discriminator") if discriminator else ("generator",)
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
    meta = ckptr.metadata(directory / str(step) / "state")
    tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta.tree
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
    parts = [p for p in parts if p in tree["params"]]   # a generator-only checkpoint
    target = {"params": {part: jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
        tree["params"][part]) for part in parts}}
    restored = ckptr.restore(
        directory / str(step) / "state",
        args=ocp.args.PyTreeRestore(
            item=target,
            restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True))
  params = jax.tree_util.tree_map(np.asarray, restored["params"])
  # The checkpoint's own config describes its params; workdir/config.json is the latest
  # run's and only stands in for checkpoints written without one.
  config_path = directory / str(step) / "config" / "metadata"
  if not config_path.exists():
    config_path = epath.Path(workdir) / "config.json"
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  return config, params["generator"], step, params.get("discriminator")
