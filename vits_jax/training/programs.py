"""Ahead-of-time compilation: every program a run needs, compiled concurrently, off the loop.

A training run needs one step program per length bucket it will meet, plus the evaluation.
Compiled lazily, they come one after another, each stalling the loop when its bucket first
turns up. Here they are lowered and compiled in worker threads as soon as the state's shapes
are known (`jit(f).lower(abstract args).compile()`; XLA compiles outside the GIL, and the
persistent compilation cache serves a restarted run). The loop asks for a program when it
needs it and waits only for that one, in short slices so that SIGTERM is seen while it waits.
"""

import concurrent.futures
import hashlib
import json
import pickle
import threading
import time
from pathlib import Path
from typing import Any, Callable, Hashable, Optional

import jax

from vits_jax import inference

# Two compilations at a time: XLA:CPU compiles each program on one thread, and the loop (and
# on a CPU host the steps themselves) need the other cores.
DEFAULT_WORKERS = 2


class AheadCompiler:
  """Compiles `jitted.lower(*args).compile()` for named argument shapes in the background.

  `submit(key, jitted, *abstract_args)` queues a compilation (first submitted, first
  started); `get(key, interrupted)` returns the compiled program, or None if `interrupted()`
  turned true while waiting.
  """

  def __init__(self, workers: int = DEFAULT_WORKERS, ahead: bool = True,
               store: Optional["ExecutableStore"] = None):
    self._store = store
    self.loaded_steps = 0   # step programs loaded from `store` (not traced)
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
        self._futures[key] = self._pool.submit(self._compile, key, jitted, abstract_args)

  def _compile(self, key, jitted, abstract_args):
    name = key if isinstance(key, str) else "step"
    if self._store is not None:
      compiled = self._store.load(name, abstract_args)
      if compiled is not None:
        if name == "step":
          with self._lock:
            self.loaded_steps += 1
        return compiled
    # Tracing holds the GIL anyway; one at a time keeps each program's lowered text (and
    # so its persistent-cache key) independent of what another thread traces meanwhile.
    with self._lower_lock:
      lowered = jitted.lower(*abstract_args)
    if self._store is None:
      return lowered.compile()
    compiled = self._store.compile(lowered)
    self._store.save(name, abstract_args, compiled)
    return compiled

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


# Config fields that no program of a run depends on (where its files are, how long it runs,
# what it logs and keeps, what the host does before or after a program): left out of
# `ExecutableStore`'s key, so runs that differ only in them share programs (a fine-tuning
# run that fits a posterior encoder first loads the step of a plain run). Anything else in
# the config is part of the key.
_NOT_IN_PROGRAMS = {"data": ("dir", "num_buckets"),
                    "train": ("num_steps", "eval_every", "checkpoint_every", "log_every",
                              "max_to_keep", "init_from", "compile_ahead", "seed",
                              "fit_posterior_steps", "eval_speech_measures",
                              "eval_recognizer")}
# Settings the init program does not see: it initializes in float32 whatever the compute
# dtype (`loop.init_variables`); `extra` (the epoch length) is a step-program constant too.
_NOT_IN_INIT = {"model": ("dtype",)}
_STORE_MAGIC = b"vits_jax-train-xlaexe-1"


class ExecutableStore:
  """A run's compiled programs (init, one step per length bucket, evaluation) kept on disk
  beside the compile cache (`<cache>/programs/train-*.xlaexe`), so that a restarted or
  repeated run loads them with no tracing, lowering or compilation. XLA's persistent cache
  alone saves only the compilation: JAX still traces and lowers the whole model to find
  the cache entry (about 25 s for init and step of configs/tiny.py:micro on 2 CPU cores).

  The key: the program's name, the config (less `_NOT_IN_PROGRAMS`), what the caller
  passes as `extra` (values the programs bake in that the config does not hold, such as
  the epoch length of the learning-rate schedule; neither it nor `_NOT_IN_INIT` is part of
  the init program's key), the argument shapes and dtypes, the jax,
  jaxlib, flax and optax versions, a hash of this package's code, and the machine tag of
  `vits_jax.inference` (platform, CPU features, XLA_FLAGS). One process with one device
  only; an entry that does not load (damaged, another jaxlib) is rebuilt.
  """

  def __init__(self, root: Path, identity: str, settings: str = "", init_settings: str = ""):
    self.root, self.identity = Path(root), identity
    # The config (and extras) as the step and evaluation programs see it, and as the init
    # program does (`_NOT_IN_INIT`).
    self.settings, self.init_settings = settings, init_settings
    self.loaded = 0   # programs this process loaded from the store
    self._lock = threading.Lock()   # (compile threads load concurrently)

  @classmethod
  def for_run(cls, config, **extra) -> Optional["ExecutableStore"]:
    from vits_jax import xla_cache
    root = xla_cache.cache_dir()
    if not root or jax.process_count() != 1 or jax.device_count() != 1:
      return None

    def settings(*leave_out):
      kept = config.to_dict()
      for part in leave_out:
        for section, names in part.items():
          for name in names:
            kept.get(section, {}).pop(name, None)
      return json.dumps(kept, sort_keys=True, default=str)

    from importlib import metadata
    versions = []
    for package in ("jax", "jaxlib", "flax", "optax"):
      try:
        versions.append(metadata.version(package))
      except metadata.PackageNotFoundError:
        versions.append("")
    identity = repr((versions, _package_hash(), inference._machine_tag(),  # pylint: disable=protected-access
                     str(jax.config.jax_default_matmul_precision),
                     bool(jax.config.jax_enable_x64)))
    return cls(Path(root) / "programs", identity,
               settings(_NOT_IN_PROGRAMS) + repr(sorted(extra.items())),
               settings(_NOT_IN_PROGRAMS, _NOT_IN_INIT))

  def path(self, name: str, abstract_args) -> Path:
    leaves, treedef = jax.tree_util.tree_flatten(abstract_args)
    shapes = [(tuple(x.shape), str(x.dtype)) for x in leaves]
    settings = self.init_settings if name == "init" else self.settings
    digest = hashlib.sha256(repr((self.identity, settings, name, str(treedef), shapes))
                            .encode())
    return self.root / f"train-{name}-{digest.hexdigest()[:32]}.xlaexe"

  def load(self, name: str, abstract_args):
    """The compiled program saved for `name` and these argument shapes, or None."""
    try:
      data = self.path(name, abstract_args).read_bytes()
    except OSError:
      return None
    try:
      header, payload = data.split(b"\n", 1)
      magic, digest = header.split(b" ")
      if magic != _STORE_MAGIC or hashlib.sha256(payload).hexdigest().encode() != digest:
        return None
      from jax.experimental import serialize_executable
      executable, in_tree, out_tree = pickle.loads(payload)
      compiled = serialize_executable.deserialize_and_load(executable, in_tree, out_tree)
    except Exception:  # pylint: disable=broad-except  (another jaxlib or machine: rebuild)
      return None
    with self._lock:
      self.loaded += 1
    return compiled

  compile = staticmethod(inference.compile_fresh)

  def save(self, name: str, abstract_args, compiled) -> bool:
    """Saves a compiled program; False where it does not serialize or cannot be written."""
    try:
      from jax.experimental import serialize_executable
      payload = pickle.dumps(serialize_executable.serialize(compiled))
    except Exception:  # pylint: disable=broad-except  (this backend cannot serialize it)
      return False
    digest = hashlib.sha256(payload).hexdigest().encode()
    path = self.path(name, abstract_args)
    inference._write_atomic(path, _STORE_MAGIC + b" " + digest + b"\n" + payload)  # pylint: disable=protected-access
    return path.is_file()

  def save_shapes(self, name: str, abstract_args, out_info) -> None:
    """Saves the output shapes of `name`'s program for `load_shapes` (best effort)."""
    try:
      shapes = pickle.dumps(jax.tree_util.tree_map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), out_info))
    except Exception:  # pylint: disable=broad-except  (optional: load() still gives them)
      return
    inference._write_atomic(self.path(name, abstract_args).with_suffix(".shapes"), shapes)  # pylint: disable=protected-access

  def load_shapes(self, name: str, abstract_args):
    """The output shapes (ShapeDtypeStructs) of the program saved for `name` and these
    argument shapes, or None: a resumed run needs the init program's output shapes, and
    reading them costs nothing where loading the program costs seconds (XLA:CPU's
    executable load grows with the square of its kernel count: 7 s for configs/tiny.py's
    init)."""
    try:
      with open(self.path(name, abstract_args).with_suffix(".shapes"), "rb") as f:
        shapes = pickle.load(f)
    except Exception:  # pylint: disable=broad-except  (absent or unreadable: load instead)
      return None
    leaves = jax.tree_util.tree_leaves(shapes)
    if not leaves or not all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves):
      return None
    return shapes


def _package_hash() -> str:
  """Hash of this package's code (a change in any module re-traces)."""
  here = Path(__file__).resolve().parents[1]
  h = hashlib.sha256()
  for path in sorted(here.rglob("*.py")):
    h.update(str(path.relative_to(here)).encode())
    h.update(path.read_bytes())
  return h.hexdigest()
