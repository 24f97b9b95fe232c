"""Ahead-of-time compilation: every program a run needs, compiled concurrently, off the loop.

A training run needs one step program per length bucket it will meet, plus the evaluation.
Compiled lazily, they come one after another, each stalling the loop when its bucket first
turns up. Here they are lowered and compiled in worker threads as soon as the state's shapes
are known (`jit(f).lower(abstract args).compile()`; XLA compiles outside the GIL, and the
persistent compilation cache serves a restarted run). The loop asks for a program when it
needs it and waits only for that one, in short slices so that SIGTERM is seen while it waits.
"""

import concurrent.futures
import threading
import time
from typing import Any, Callable, Hashable, Optional

import jax

# Two compilations at a time: XLA:CPU compiles each program on one thread, and the loop (and
# on a CPU host the steps themselves) need the other cores.
DEFAULT_WORKERS = 2


class AheadCompiler:
  """Compiles `jitted.lower(*args).compile()` for named argument shapes in the background.

  `submit(key, jitted, *abstract_args)` queues a compilation (first submitted, first
  started); `get(key, interrupted)` returns the compiled program, or None if `interrupted()`
  turned true while waiting.
  """

  def __init__(self, workers: int = DEFAULT_WORKERS, ahead: bool = True):
    self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="compile")
    self._futures: dict[Hashable, concurrent.futures.Future] = {}
    self._lazy: dict[Hashable, Callable] = {}
    self._ahead = ahead
    self._lock = threading.Lock()
    self._lower_lock = threading.Lock()

  def submit(self, key: Hashable, jitted, *abstract_args) -> None:
    """Queues a compilation; with `ahead=False` only records the jitted function, which
    then compiles on its first call (jit's own cache), as without this class."""
    with self._lock:
      if not self._ahead:
        self._lazy.setdefault(key, jitted)
      elif key not in self._futures:
        self._futures[key] = self._pool.submit(self._compile, jitted, abstract_args)

  def _compile(self, jitted, abstract_args):
    # Tracing holds the GIL anyway; one at a time keeps each program's lowered text (and
    # so its persistent-cache key) independent of what another thread traces meanwhile.
    with self._lower_lock:
      lowered = jitted.lower(*abstract_args)
    return lowered.compile()

  def __contains__(self, key: Hashable) -> bool:
    return key in self._futures or key in self._lazy

  def get(self, key: Hashable, interrupted: Callable[[], bool] = lambda: False,
          poll_s: float = 0.25) -> Optional[Any]:
    if key in self._lazy:
      return self._lazy[key]
    future = self._futures[key]
    while True:
      try:
        return future.result(timeout=poll_s)
      except concurrent.futures.TimeoutError:
        if interrupted():
          return None

  def busy(self) -> bool:
    """True while a compilation is queued or running."""
    return any(not f.done() for f in self._futures.values())

  def close(self) -> None:
    """Drops queued compilations; running ones finish in their threads."""
    self._pool.shutdown(wait=False, cancel_futures=True)


def abstract_like(tree, sharding=None):
  """ShapeDtypeStructs of a pytree of arrays (or of ShapeDtypeStructs), with `sharding`
  (default: each leaf's own)."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=sharding or getattr(x, "sharding", None)), tree)


def wait_ready(tree, interrupted: Callable[[], bool]) -> bool:
  """Waits for a dispatched computation's outputs; False if `interrupted()` came first."""
  leaves = [x for x in jax.tree_util.tree_leaves(tree) if isinstance(x, jax.Array)]
  pause = 0.005
  while not all(x.is_ready() for x in leaves):
    if interrupted():
      return False
    time.sleep(pause)
    pause = min(2 * pause, 0.1)
  return True
