"""Data parallelism: one 1-D mesh over every device of every host (DESIGN.md, decision 2).

The train state is replicated; each batch is split along its first axis over the `data` axis,
so XLA averages gradients with an all-reduce. Each host loads only its own rows
(`global_batch // process_count`) and `global_batch` assembles them into one global array.
"""

import os
from typing import Mapping, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> None:
  """Joins a multi-process run when there is one; a no-op for a single process.

  With explicit arguments they are used as given, else those of the environment variables
  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (JAX itself reads only the
  first); otherwise JAX's cluster auto-detection (Cloud TPU, SLURM, Open MPI, ...) decides,
  and finding no cluster means a plain single-process run. Must be called before any JAX
  computation.

  Raises:
    ValueError: the arguments or variables are incomplete or not numbers, or a coordinator
      was named and the process could not join it (one line; it had run alone, every
      process then training or writing everything by itself).
  """
  env = os.environ
  names = "--coordinator_address, --num_processes and --process_id"
  if coordinator_address is None and num_processes is None and process_id is None:
    names = "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID"
    coordinator_address = env.get("JAX_COORDINATOR_ADDRESS") or None
    try:
      num_processes = int(env["JAX_NUM_PROCESSES"]) if env.get("JAX_NUM_PROCESSES") else None
      process_id = int(env["JAX_PROCESS_ID"]) if env.get("JAX_PROCESS_ID") else None
    except ValueError:
      raise ValueError("JAX_NUM_PROCESSES and JAX_PROCESS_ID must be whole numbers") from None
    if coordinator_address and (num_processes is None or process_id is None):
      try:   # JAX may find the rest itself (a TPU slice, SLURM)
        jax.distributed.initialize()
      except (ValueError, RuntimeError) as e:
        raise ValueError(f"cannot join the multi-process run at JAX_COORDINATOR_ADDRESS="
                         f"{coordinator_address}: {' '.join(str(e).split())[:200]} (set "
                         "JAX_NUM_PROCESSES and JAX_PROCESS_ID too)") from None
      return
  if num_processes is not None and num_processes > 1 or coordinator_address:
    if coordinator_address is None or num_processes is None or process_id is None:
      raise ValueError(f"{names} go together")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"process id {process_id} is not one of 0..{num_processes - 1}")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return
  try:
    jax.distributed.initialize()
  except (ValueError, RuntimeError):
    # No coordinator and no cluster detected: a single-process run.
    pass


def is_distributed() -> bool:
  """Whether `jax.distributed.initialize()` has connected this process to others."""
  from jax._src import distributed  # the public API has no query for this
  return distributed.global_state.client is not None


def make_mesh() -> Mesh:
  """A 1-D mesh named `data` over all devices of all processes."""
  return Mesh(np.asarray(jax.devices()), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def local_batch_size(global_batch_size: int) -> int:
  """Rows of each global batch this process loads; checks the batch splits evenly."""
  n_dev, n_proc = jax.device_count(), jax.process_count()
  if global_batch_size % n_dev:
    raise ValueError(f"train.batch_size={global_batch_size} must be a multiple of the number "
                     f"of devices ({n_dev})")
  return global_batch_size // n_proc


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict:
  """Assembles each host's rows into global arrays sharded over `data`.

  Every host's rows of a step come from the same global batch of the epoch plan, padded to
  that batch's length bucket (`data.loader.make_train_loader`), so the shapes agree across
  hosts without a per-step exchange.

  Args:
    local: this process's rows, every array `[global_batch / process_count, ...]`.
    mesh: the data mesh.

  Returns:
    The same keys as global `jax.Array`s of `[global_batch, ...]`.
  """
  local = {k: np.asarray(v) for k, v in local.items()}
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
