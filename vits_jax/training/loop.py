"""`train_and_evaluate(config, workdir)`: the whole training run, one story top to bottom.

mesh -> input -> models -> state (fresh, warm-started or restored) -> jitted step -> loop
(log, evaluate, checkpoint, preemption, non-finite guard).
"""

import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vits_jax import files
from vits_jax.data import records
from vits_jax.training import checkpoint as checkpoint_lib
from vits_jax.training import evaluation
from vits_jax.training import input_pipeline
from vits_jax.training import metrics as metrics_lib
from vits_jax.training import parallel
from vits_jax.training import programs
from vits_jax.training import speech_measures
from vits_jax.training import state as state_lib
from vits_jax.training import step as step_lib
from vits_jax.training import warm_start

CONFIG_FILE = "config.json"


class NonFiniteError(RuntimeError):
  """Training stopped after too many consecutive non-finite steps."""


def build_models(config: ml_collections.ConfigDict):
  """(SynthesizerTrn, MultiPeriodDiscriminator) for `config`."""
  from vits_jax.models.discriminators import build_discriminator
  from vits_jax.models.synthesizer import build_synthesizer
  return build_synthesizer(config), build_discriminator(config)


def init_variables(config, generator, discriminator, rng: jax.Array):
  """Initial (generator, discriminator) variables; shapes don't depend on the dummy inputs.

  Params are float32 whatever the compute dtype, so the models initialize in float32: a
  bfloat16 run starts from the same params as a float32 one, with the same init program.
  """
  generator, discriminator = generator.clone(dtype=None), discriminator.clone(dtype=None)
  hop = int(config.data.hop_length)
  segment = int(config.train.segment_size)
  frames = segment // hop
  spec_channels = int(config.data.filter_length) // 2 + 1
  k_g, k_d, k_drop, k_noise, k_slice = jax.random.split(rng, 5)
  x = jnp.ones((1, 8), jnp.int32)
  sid = jnp.zeros((1,), jnp.int32) if int(config.model.n_speakers) > 0 else None
  gen_vars = generator.init(
      {"params": k_g, "dropout": k_drop, "noise": k_noise, "slice": k_slice},
      x, jnp.array([8], jnp.int32), jnp.zeros((1, frames, spec_channels)),
      jnp.array([frames], jnp.int32), sid, train=True)
  y = jnp.zeros((1, segment, 1))
  disc_vars = discriminator.init({"params": k_d}, y, y)
  return gen_vars, disc_vars


def make_init_state(config, generator, discriminator, tx_g, tx_d,
                    source_name: Optional[str] = None):
  """`(rng, source=None) -> TrainState`: fresh generator and discriminator, optimizer
  states (not jitted).

  A fine-tuning run (`train.init_from`, named `source_name` in errors) passes `source`, the
  voice's generator params as `warm_start.init_args` gives them: they replace the fresh
  ones where the paths match (`warm_start.merge_params`; a shape mismatch raises while
  tracing), so the compiled program computes no random init for them.
  """

  def init_state(rng, source=None):
    gen_vars, disc_vars = init_variables(config, generator, discriminator, params_key(rng))
    if source is not None:
      from flax import traverse_util
      params, _, _ = warm_start.merge_params(
          gen_vars["params"], traverse_util.unflatten_dict(source, sep="/"), source_name)
      gen_vars = {**gen_vars, "params": params}
    return state_lib.create_train_state(jax.random.fold_in(rng, 1), gen_vars, disc_vars,
                                        tx_g, tx_d)

  return init_state


def params_key(rng: jax.Array) -> jax.Array:
  """The key of a run's random initial params: an `unsafe_rbg` key made from the run's
  threefry key `rng` (the seed's).

  Every param's initializer draws its own random numbers. With threefry keys each draw is
  dozens of integer ops that XLA compiles one by one (a few hundred draws in a VITS model); an
  `unsafe_rbg` key draws with XLA's RngBitGenerator, one op. The init program of
  `configs/tiny.py` then compiles in 29 s instead of 66 s, `tiny.py:micro`'s in 23 s instead
  of 45 s (2 CPU cores, alone; accelerators not measured), and the first step comes that
  much sooner (t5x's `set_hardware_rng_ops` switches to unsafe_rbg keys for speed too). The
  values are as random, and the same for a seed on every run and process of a backend;
  they are not the same across backends (RngBitGenerator's algorithm is the backend's).
  The training randomness (dropout, noise, slices: `TrainState.rng`) keeps the threefry
  key, so checkpoints and their bitwise resume are unchanged.
  """
  data = jnp.asarray(rng, jnp.uint32)   # a raw jax.random.PRNGKey: uint32 [2]
  return jax.random.wrap_key_data(jnp.concatenate([data, data ^ jnp.uint32(0x9E3779B9)]),
                                  impl="unsafe_rbg")


def init_compiler_options() -> Optional[dict]:
  """XLA options for jitting `make_init_state`'s function, which runs once: on CPU, skip
  LLVM's optimizations, which cost more than the program ever runs (hundreds of small
  random-init kernels)."""
  return {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None


# The longest decoder window a config may train on (the official one is 0.37 s; a window
# of hours asked XLA for arrays past its dimension limit).
MAX_SEGMENT_SECONDS = 60


def check_config(config: ml_collections.ConfigDict):
  """Raises ValueError on settings that cannot train."""
  from vits_jax.convert import source  # pylint: disable=import-outside-toplevel
  t, d = config.train, config.data
  source.check_model_config(config)   # sizes the network is built from (as for voices)
  for key in ("hop_length", "win_length", "n_mel_channels"):
    if int(d[key]) <= 0:
      raise ValueError(f"data.{key} must be positive, got {d[key]}")
  for key in ("num_steps", "batch_size", "log_every", "eval_every", "checkpoint_every",
              "segment_size", "max_to_keep"):
    if int(t[key]) <= 0:
      raise ValueError(f"train.{key} must be positive, got {t[key]}")
  if int(t.segment_size) > MAX_SEGMENT_SECONDS * int(d.sampling_rate):
    raise ValueError(f"train.segment_size={t.segment_size} is more than "
                     f"{MAX_SEGMENT_SECONDS} s of audio (the official 8192 samples is 0.37 s "
                     "at 22.05 kHz)")
  if int(t.segment_size) % int(d.hop_length):
    raise ValueError(f"train.segment_size={t.segment_size} must be a multiple of "
                     f"data.hop_length={d.hop_length}")
  if int(t.seed) < 0:
    raise ValueError(f"train.seed must be >= 0, got {t.seed}")
  if not (math.isfinite(float(t.learning_rate)) and float(t.learning_rate) > 0):
    raise ValueError(f"train.learning_rate must be a positive number, got {t.learning_rate}")
  # The optimizer's other numbers: a decay of 0 trains nothing after the first epoch, a
  # negative one climbs the loss every other epoch, above 1 the rate grows without bound.
  if not (math.isfinite(float(t.lr_decay)) and 0 < float(t.lr_decay) <= 1):
    raise ValueError(f"train.lr_decay (per epoch) must be in (0, 1], got {t.lr_decay}")
  if not (math.isfinite(float(t.weight_decay)) and float(t.weight_decay) >= 0):
    raise ValueError(f"train.weight_decay must be a number >= 0, got {t.weight_decay}")
  betas = tuple(t.betas)
  if len(betas) != 2 or not all(math.isfinite(float(b)) and 0 <= float(b) < 1 for b in betas):
    raise ValueError(f"train.betas must be two numbers in [0, 1), got {t.betas}")
  if not (math.isfinite(float(t.eps)) and float(t.eps) >= 0):
    raise ValueError(f"train.eps must be a number >= 0, got {t.eps}")
  if str(config.model.dtype) not in ("float32", "bfloat16", "float16"):
    raise ValueError(f"model.dtype must be float32, bfloat16 or float16, got "
                     f"{config.model.dtype!r}")
  if not d.dir:
    raise ValueError("config.data.dir is not set: pass --config.data.dir=<dir written by "
                     "data_prep/prepare.py>")
  if int(d.get("num_buckets", 0)) < 0:
    raise ValueError(f"data.num_buckets must be >= 0 (0: from num_steps), got "
                     f"{d.num_buckets}")
  # A weight of NaN made every step non-finite; a negative one climbs that loss.
  for key, value in (config.get("loss") or {}).items():
    if not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
      raise ValueError(f"loss.{key} must be a number >= 0, got {value!r}")
  # A mel band beyond the Nyquist frequency (or upside down) has no filters: the mel loss
  # was 0 at every step.
  nyquist = int(d.sampling_rate) / 2
  fmax = nyquist if d.get("mel_fmax") is None else float(d.mel_fmax)
  if not 0 <= float(d.mel_fmin) < fmax <= nyquist:
    raise ValueError(f"data.mel_fmin ({d.mel_fmin}) and mel_fmax ({d.get('mel_fmax')}) must "
                     f"satisfy 0 <= mel_fmin < mel_fmax <= sampling_rate / 2 ({nyquist:g})")
  recognizers = ("auto", "none", *speech_measures.Recognizer.BACKENDS)
  if t.get("eval_recognizer", "auto") not in recognizers:
    raise ValueError(f"train.eval_recognizer must be one of {', '.join(recognizers)}, got "
                     f"{t.eval_recognizer!r}")
  if int(t.get("max_nonfinite_steps", 1)) < 1:
    raise ValueError(f"train.max_nonfinite_steps must be >= 1, got {t.max_nonfinite_steps}")
  if int(t.get("fit_posterior_steps", 0)) < 0:
    raise ValueError(f"train.fit_posterior_steps must be >= 0, got {t.fit_posterior_steps}")
  if int(d.n_speakers or 0) < 0:
    raise ValueError(f"data.n_speakers must be >= 0, got {d.n_speakers}")


# Steps of a run per length bucket when `data.num_buckets` is 0. Each bucket is one more
# step program to compile, and only saves the padding of its clips' lengths: configs/tiny.py
# on 48 clips, 2 cores, compiled 4 buckets in 344 s of wall for 30 steps against 117 s with
# one, while a step ran at 4.2 against 3.7 steps/s; a bigger model's step pays more for its
# padding. So a short run (a smoke test, a first look) trains on one bucket and a long one
# on MAX_AUTO_BUCKETS.
STEPS_PER_BUCKET = 500
MAX_AUTO_BUCKETS = 4


def num_buckets(config: ml_collections.ConfigDict, workdir: str,
                resuming: Optional[int]) -> int:
  """The run's length-bucket count: `data.num_buckets`, or where that is 0, what the run
  started with when `resuming` (the step resumed from: its checkpoint's config, else
  config.json; 4 for runs saved before the field existed; the batch plan, and so a bitwise
  resume, depends on it), else one per `STEPS_PER_BUCKET` steps, 1 to `MAX_AUTO_BUCKETS`."""
  n = int(config.data.get("num_buckets", 0))
  if n:
    return n
  if resuming is not None:
    # The latest checkpoint's own config first (a lost or edited config.json must not
    # change the batch plan), then config.json.
    saved = checkpoint_lib.saved_config(
        os.path.join(workdir, checkpoint_lib.CHECKPOINT_DIR), resuming)
    if saved is None:
      try:
        with open(os.path.join(workdir, CONFIG_FILE), encoding="utf-8") as f:
          saved = json.load(f)
      except (OSError, ValueError):
        saved = None
    try:
      return int(saved["data"]["num_buckets"]) or MAX_AUTO_BUCKETS
    except (TypeError, KeyError, ValueError):
      return MAX_AUTO_BUCKETS
  return min(MAX_AUTO_BUCKETS, max(1, int(config.train.num_steps) // STEPS_PER_BUCKET))


class _Preemption:
  """Turns SIGTERM (preemption) and Ctrl-C (SIGINT) into a flag the loop checks at step
  boundaries, and exits at once when there is nothing to save. SIGTERM then exits 0 (the
  run was stopped from outside and resumes), Ctrl-C 130; a second Ctrl-C quits at once
  (the latest finished checkpoint stays; orbax writes each one to a temporary name first).

  A Python signal handler only runs when the main thread is between bytecodes, which it is
  not during an XLA compilation (minutes for the first step); a preemptible VM gives about
  30 s. So the C-level handler also writes to a wakeup socket, a watcher thread reads it
  immediately, and if no step has run since the last checkpoint (e.g. during the first
  compilation) it waits for a save in flight and ends the process (status 0, or 130 for
  Ctrl-C): the workdir is as resumable as it would be after a save. Otherwise the loop
  saves at the next step boundary.

  With several processes, JAX's preemption service (which listens to SIGTERM itself) picks
  one step at which every process saves, so they write the same checkpoint.
  """

  def __init__(self, exit_process: bool = True):
    # False (a library call: a notebook's kernel must survive its Interrupt button): no exit
    # of the process; the loop stops at its next check and the call raises.
    self.exit_process = exit_process
    self.multi_process = parallel.is_distributed() and jax.process_count() > 1
    self._flag = threading.Event()
    self._previous = None
    self._unsaved_steps = 0
    self.wait_for_saves = lambda: None
    self._sockets = None
    self._previous_int = None
    self.reason = "SIGTERM"   # what stopped the run: "SIGTERM" or "SIGINT" (Ctrl-C)
    self._interrupts = 0
    if not self.multi_process and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self._flag.set())
      self._previous_int = signal.signal(signal.SIGINT, self._on_sigint)
      try:
        r, w = socket.socketpair()
        w.setblocking(False)
        self._old_wakeup = signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
        self._sockets = (r, w)
        threading.Thread(target=self._watch, daemon=True, name="sigterm").start()
      except (OSError, ValueError):   # no wakeup fd: the flag alone still works
        self._sockets = None

  def _watch(self):
    r = self._sockets[0]
    while True:
      try:
        data = r.recv(64)
      except OSError:
        return
      if not data:
        return
      for signum in data:
        if signum == signal.SIGINT:
          self._interrupt()
        elif signum == signal.SIGTERM:
          self._stop("SIGTERM")

  def _on_sigint(self, *_):
    if self._sockets is None:   # (otherwise the watcher has seen it already)
      self._interrupt()

  def _interrupt(self):
    self._interrupts += 1
    if self._interrupts > 1 and self.exit_process:
      _exit_process("interrupted again: quitting without saving", 130)
    if not self._flag.is_set() and (self._unsaved_steps or self._sockets is None):
      sys.stderr.write("interrupted: saving a checkpoint at the end of this step "
                       "(Ctrl-C again to quit without saving)\n")
      sys.stderr.flush()
    self._stop("SIGINT")

  def _stop(self, reason: str):
    if not self._flag.is_set():
      self.reason = reason
    self._flag.set()
    if self._unsaved_steps == 0 and self._sockets is not None and self.exit_process:
      logging.warning("%s with nothing to save: exiting now", reason)
      try:
        self.wait_for_saves()
      finally:
        _exit_process(f"{self.verb}: nothing to save since the last checkpoint",
                      self.exit_code)

  @property
  def verb(self) -> str:
    return "interrupted" if self.reason == "SIGINT" else "preempted"

  @property
  def exit_code(self) -> int:
    return 130 if self.reason == "SIGINT" else 0

  def stepped(self):
    self._unsaved_steps += 1

  def saved(self):
    self._unsaved_steps = 0

  def is_set(self) -> bool:
    """SIGTERM or Ctrl-C seen (this process; with several processes, see `reached`)."""
    return self._flag.is_set()

  def reached(self, step: int) -> bool:
    if self.multi_process:
      from jax.experimental import multihost_utils
      return multihost_utils.reached_preemption_sync_point(step)
    return self._flag.is_set()

  def close(self):
    if self._sockets is not None:
      signal.set_wakeup_fd(self._old_wakeup)
      for sock in self._sockets:
        sock.close()
      self._sockets = None
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
    if self._previous_int is not None:
      signal.signal(signal.SIGINT, self._previous_int)
      self._previous_int = None


def _exit_process(message: Optional[str], code: int):
  """Ends the process now (a compilation in a worker thread would hold a normal exit)."""
  sys.stdout.flush()
  if message:
    sys.stderr.write(message + "\n")
  sys.stderr.flush()
  os._exit(code)   # pylint: disable=protected-access


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       exit_on_signal: bool = False) -> Optional[state_lib.TrainState]:
  """Trains (or resumes) the run in `workdir` until `config.train.num_steps`.

  Args:
    config: full config (configs/*.py).
    workdir: run directory (checkpoints, metrics.jsonl, TensorBoard events, config.json).
    exit_on_signal: end the process at once on SIGTERM or Ctrl-C when there is nothing to
      save, or on a second Ctrl-C (`train.py`: a compilation would otherwise hold the exit
      for minutes). False (a notebook, a library call): the call stops at the loop's next
      check and raises KeyboardInterrupt, and the process lives on.

  Returns:
    The final train state.

  Raises:
    KeyboardInterrupt: Ctrl-C, after the step it stopped at was saved.
    ValueError / FileNotFoundError: bad config, data dir or init_from.
    NonFiniteError: too many consecutive non-finite steps.
  """
  check_config(config)
  manifest = records.load_manifest(config.data.dir)
  records.check_manifest(manifest, config)
  speakers = manifest.get("speakers") or {}
  if int(config.data.n_speakers or 0) > 1 and speakers and not config.data.get(
      "speaker_names"):
    # The prepared data's speaker names go into the run's config (config.json and every
    # checkpoint's), so its voice takes `--speaker p225` and exports name its speakers.
    config = config.copy_and_resolve_references()
    config.data.speaker_names = {str(k): int(v) for k, v in speakers.items()}
  if jax.process_index() == 0:
    print(records.describe(manifest, config.data.dir), flush=True)
    in_data = int(manifest.get("n_speakers", 0) or 0)
    in_model = int(config.model.n_speakers or 0)
    if in_data > 1 and in_model > in_data:
      print(f"warning: the model has {in_model} speakers and the data {in_data}: speaker ids "
            f"{in_data}..{in_model - 1} are never trained (they keep their first weights)",
            file=sys.stderr, flush=True)
  files.writable_folder(workdir, "--workdir")
  _check_not_someone_elses(workdir)
  lock = (files.lock_folder(workdir, "--workdir", "train.py", LOCK_FILE)
          if jax.process_index() == 0 else None)
  checkpoints = os.path.join(workdir, checkpoint_lib.CHECKPOINT_DIR)
  fresh = not os.path.exists(checkpoints)
  if not fresh:   # (a save into it hung for minutes in orbax, then failed)
    files.writable_folder(checkpoints, "the checkpoint folder", create=False)
  # From here on, SIGTERM and Ctrl-C leave a resumable workdir.
  preemption = _Preemption(exit_on_signal)
  try:
    state = _train(config, workdir, preemption)
  except BaseException:
    if fresh and jax.process_index() == 0:   # a run that failed before its first save
      try:                                   # (a bad init_from...) leaves no empty folder
        os.rmdir(checkpoints)
      except OSError:   # not there, or not empty: kept
        pass
    raise
  finally:
    preemption.close()
    if lock is not None:
      lock.close()
  if preemption.is_set() and preemption.reason == "SIGINT":
    raise KeyboardInterrupt   # (after the save: the caller sees the Ctrl-C as usual)
  return state


LOCK_FILE = ".train.lock"
# Data settings a resume is told about when they differ from the checkpoint's (what the
# clips and their ids are; what sizes the model is `checkpoint.STATE_SECTIONS` and
# `STATE_KEYS`, refused).
RESUME_DATA_KEYS = ("dir", "frontend", "sampling_rate", "text_cleaners", "add_blank",
                    "n_speakers", "hop_length", "n_mel_channels")


def _data_changes(saved: dict, config: ml_collections.ConfigDict) -> list:
  """`data.key saved -> new` for the `RESUME_DATA_KEYS` a resume's config changes (keys an
  older checkpoint lacks are not changes; `dir` is compared as the folder it names)."""
  old, new = saved.get("data") or {}, config.data.to_dict()
  norm = lambda k, v: (os.path.realpath(v) if k == "dir" and isinstance(v, str) else
                       list(v) if isinstance(v, tuple) else v)
  return [f"data.{k} {old[k]!r} -> {new.get(k)!r}" for k in RESUME_DATA_KEYS
          if k in old and norm(k, old[k]) != norm(k, new.get(k))]


def _speaker_changes(saved: dict, config: ml_collections.ConfigDict) -> list:
  """How the data's speaker names (`data.speaker_names`) give the run's ids to other
  speakers: a speaker with another id, or an id the run gave another speaker (speakers
  added on ids the run left unused are no change)."""
  old = (saved.get("data") or {}).get("speaker_names") or {}
  new = dict((config.data.get("speaker_names") or {}).items())
  if not old or not new:
    return []
  had = {int(v): k for k, v in old.items()}
  out = [f"{k}: id {old[k]} -> {new[k]}" for k in sorted(old) if k in new and
         int(new[k]) != int(old[k])]
  out += [f"id {int(v)}: {had[int(v)]} -> {k}" for k, v in sorted(new.items())
          if k not in old and int(v) in had]
  return out


def _check_not_someone_elses(workdir: str) -> None:
  """ValueError if `workdir` holds a config.json that a run of ours did not write (an
  official VITS voice's, another tool's): the run would overwrite it."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return
  try:
    with open(path, encoding="utf-8") as f:
      saved = files.parse_json(f.read())
  except (OSError, UnicodeDecodeError, ValueError):
    saved = None
  # Ours has the official sections and our own (an official config has only the first).
  if not (isinstance(saved, dict) and {"model", "data", "train"} <= set(saved)
          and {"discriminator", "loss"} & set(saved)):
    if os.path.isdir(os.path.join(workdir, checkpoint_lib.CHECKPOINT_DIR)):
      raise ValueError(f"--workdir {workdir} has checkpoints and a damaged {CONFIG_FILE}: "
                       f"delete that file to resume (each checkpoint holds its config)")
    raise ValueError(f"--workdir {workdir} holds a {CONFIG_FILE} that is not a training "
                     "run's (a voice's or another tool's?), which the run would overwrite: "
                     "use a new --workdir")


def _train(config: ml_collections.ConfigDict, workdir: str,
           preemption: _Preemption) -> state_lib.TrainState:
  t = config.train
  is_main = jax.process_index() == 0

  # --- Mesh ------------------------------------------------------------------------------
  mesh = parallel.make_mesh()
  repl = parallel.replicated(mesh)
  local_batch = parallel.local_batch_size(int(t.batch_size))

  ckpt = checkpoint_lib.Checkpointer(workdir, int(t.max_to_keep))
  preemption.wait_for_saves = ckpt.manager.wait_until_finished
  latest = ckpt.latest_step()
  if latest is not None:   # before anything is built for it: one line naming what differs
    ckpt.check_config(latest, config)
    saved = checkpoint_lib.saved_config(ckpt.directory, latest) or {}
    was = (saved.get("train") or {}).get("batch_size")
    if is_main and isinstance(was, int) and was != int(t.batch_size):
      print(f"warning: train.batch_size is {int(t.batch_size)} and the run was at {was}: "
            "its data order and epochs (the learning rate's decay) go on from another batch "
            "plan, not as the run would have", file=sys.stderr, flush=True)
    renamed = _speaker_changes(saved, config) if saved else []
    if renamed:
      raise ValueError(
          f"the data names its speakers otherwise than the run trained them "
          f"({'; '.join(renamed[:3])}{' ...' if len(renamed) > 3 else ''}): resuming would "
          "train each speaker's embedding on another speaker's clips; prepare the data with "
          f"--speaker-map FILE, FILE holding the run's map (data.speaker_names in "
          f"{os.path.join(workdir, CONFIG_FILE)})")
    started = (saved.get("train") or {}).get("init_from", "") if saved else ""
    if (t.get("init_from") or "") != (started or ""):
      # A resume goes on from its checkpoint: another init_from is not used, and the run's
      # config (config.json, the checkpoints) keeps saying what it started from.
      if is_main and t.get("init_from"):
        print(f"note: train.init_from={t.init_from} is not used: the run resumes from its "
              f"step {latest}" + (f" (it started from {started})" if started else
                                  " (it started from scratch)"), file=sys.stderr, flush=True)
      config = config.copy_and_resolve_references()
      config.train.init_from = started or ""
      t = config.train
    changed = _data_changes(saved, config) if saved else []
    if is_main and changed:
      print(f"warning: resuming on other data than the run trained on ({'; '.join(changed)})"
            ": it goes on learning from these clips", file=sys.stderr, flush=True)

  # --- Input -----------------------------------------------------------------------------
  buckets = num_buckets(config, workdir, latest)
  if int(config.data.get("num_buckets", 0)) != buckets:
    # The count in the config from here on, so config.json and every checkpoint's config
    # record what the batch plan was built with (a resume reads it back).
    config = config.copy_and_resolve_references()
    config.data.num_buckets = buckets
    t = config.train
  train_data = input_pipeline.TrainInput(config, local_batch)
  short = input_pipeline.short_clips_note(config) if is_main else None
  if short:
    print(f"warning: {short}", file=sys.stderr, flush=True)
  val_batch = input_pipeline.validation_batch(config)

  # --- Models, optimizers, state ---------------------------------------------------------
  generator, discriminator = build_models(config)
  tx_g, tx_d = state_lib.make_optimizer(t), state_lib.make_optimizer(t)
  lr_fn = state_lib.learning_rate_fn(t, train_data.steps_per_epoch)
  # A fine-tuning run's init program takes the source voice's params as an argument.
  source = source_name = None
  if t.init_from and latest is None:
    source, source_name, notes = warm_start.load_source_params(t.init_from, config)
    for note in notes if is_main else ():
      print(f"warning: {note}", file=sys.stderr, flush=True)
    source = warm_start.init_args(source)
  init_state = make_init_state(config, generator, discriminator, tx_g, tx_d, source_name)
  init_args = (jax.random.PRNGKey(int(t.seed)),) + ((source,) if source is not None else ())
  # Programs saved by an earlier run with the same settings load without tracing; the
  # state's shapes then come from the saved init program (or, for a resumed run, which
  # does not run init, from its stored output shapes) instead of tracing init.
  store = programs.ExecutableStore.for_run(config, steps_per_epoch=train_data.steps_per_epoch)
  init_program = abstract = None
  if store is not None and latest is not None:   # (a resumed run needs only the shapes)
    abstract = store.load_shapes("init", init_args)
  if store is not None and abstract is None:
    init_program = store.load("init", init_args)
    if init_program is not None:
      abstract = init_program.out_info
      if latest is not None:   # (a store written before the shapes were kept)
        store.save_shapes("init", init_args, abstract)
  if abstract is None:
    abstract = jax.eval_shape(init_state, *init_args)
  abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), abstract)
  state_sharding = jax.tree_util.tree_map(lambda x: x.sharding, abstract)

  if latest is not None:
    # The data position first: it says which buckets come next, so their programs start
    # loading (below) while the state is read.
    train_data.set_state(ckpt.restore_data_state(latest))

  # --- Update step and evaluation: compiled ahead, concurrently -------------------------
  step_fn = step_lib.make_train_step(config, generator, discriminator, tx_g, tx_d, lr_fn)
  traces = [0]

  def counted_step(state, batch):
    traces[0] += 1      # runs only when jit traces: once per distinct batch shape
    return step_fn(state, batch)
  batch_sharding = parallel.batch_sharding(mesh)
  train_step = jax.jit(counted_step, in_shardings=(state_sharding, batch_sharding),
                       out_shardings=(state_sharding, repl), donate_argnums=0)
  evaluator = evaluation.Evaluator(config, generator, val_batch, mesh,
                                   input_pipeline.validation_texts(config)) \
      if val_batch is not None else None

  step = int(latest) if latest is not None else 0
  num_steps = int(t.num_steps)
  eval_every = int(t.eval_every)
  # A reference point before any update (fresh runs that will evaluate at all).
  eval_at_start = evaluator is not None and step == 0 and latest is None and \
      eval_every <= num_steps
  # A run stopped while it evaluated its checkpoint's step saved that step unevaluated: the
  # resumed run evaluates it first (process 0 reads the log; every process runs the program).
  eval_at_resume = evaluator is not None and latest is not None and step > 0 and \
      step % eval_every == 0 and \
      _agreed(is_main and not metrics_lib.logged(workdir, step, "val/"))
  eval_first = eval_at_start or eval_at_resume
  will_evaluate = evaluator is not None and (eval_first or (
      num_steps // eval_every > step // eval_every))
  abstract_batch = lambda bucket: _abstract_batch(bucket, int(t.batch_size), batch_sharding)
  compiler = programs.AheadCompiler(ahead=bool(t.compile_ahead), store=store)
  if eval_first:
    compiler.submit("eval", evaluator.eval_fn,
                    *evaluator.abstract_args(abstract.params["generator"]))
  for bucket in train_data.buckets_in_order(num_steps - step):
    compiler.submit(bucket, train_step, abstract, abstract_batch(bucket))
  if will_evaluate:
    compiler.submit("eval", evaluator.eval_fn,
                    *evaluator.abstract_args(abstract.params["generator"]))
  stopping = preemption.is_set

  try:
    if latest is not None:   # (read while the workers load or compile the programs)
      state = ckpt.restore(latest, abstract)
      if int(state.step) != step:
        raise ValueError(
            f"checkpoint {latest} in {ckpt.directory} holds the state of step "
            f"{int(state.step)}")
      if is_main and latest >= num_steps:   # (read and checked: nothing compiles for it)
        print(f"nothing to train: the run in {workdir} is at step {latest} and "
              f"train.num_steps is {num_steps} (raise it to train on)", flush=True)
      elif is_main:
        print(f"resuming from step {latest} ({ckpt.directory})", flush=True)
    else:                    # (compiles while the workers compile the step programs)
      if source is not None:   # (every process passes the same values)
        init_args = (init_args[0], jax.device_put(source, repl))
      if init_program is None:
        lowered = jax.jit(init_state, out_shardings=state_sharding).lower(*init_args)
        if store is None:
          init_program = lowered.compile(compiler_options=init_compiler_options())
        else:
          init_program = store.compile(lowered, init_compiler_options())
          store.save("init", init_args, init_program)
          store.save_shapes("init", init_args, init_program.out_info)
      state = init_program(*init_args)
      if source is not None:
        state = warm_start.after_init(state, source, source_name, config, repl, generator)
    if is_main and (latest is None or latest < num_steps):   # (a run that trains nothing
      records.write_json_atomic(os.path.join(workdir, CONFIG_FILE),   # leaves the run's own)
                                json.loads(json.dumps(config.to_dict(), default=str)))
  except BaseException:
    compiler.close()
    raise

  if latest is not None and latest >= num_steps:   # nothing to train (said above): no
    try:                                           # progress bar, no new event file
      if eval_at_resume:
        _evaluate_saved_step(evaluator, compiler, state, step, workdir, is_main, stopping)
    finally:
      compiler.close()
      ckpt.close()
      train_data.close()
    return state

  # --- Loop ------------------------------------------------------------------------------
  max_nonfinite = int(t.max_nonfinite_steps)
  writer = metrics_lib.MetricWriter(workdir, enabled=is_main,
                                    resume_step=step if latest is not None else -1)
  progress = _progress_bar(is_main, step, num_steps)
  devices = jax.device_count()
  last_saved = latest
  pending = None   # (step, metrics) of the previous step: read after the next is dispatched
  last_streak = 0   # non-finite steps in a row up to the last checkpoint
  interval_start, interval_steps = time.perf_counter(), 0
  try:
    if eval_first:
      program = compiler.get("eval", stopping)
      if program is not None:
        evaluator.run_and_log(state.params["generator"], step, writer, program, stopping)
    while step < num_steps:
      # (a stop while this batch's program compiles saves the position before the batch:
      # the resumed run trains on it, as an uninterrupted run does)
      position = train_data.get_state()
      batch = parallel.global_batch(next(train_data), mesh)
      bucket = (batch["text"].shape[1], batch["audio"].shape[1])
      if bucket not in compiler:   # beyond the epochs planned ahead: compile now
        compiler.submit(bucket, train_step, abstract, abstract_batch(bucket))
      program = compiler.get(bucket, stopping)
      if program is None:          # SIGTERM / Ctrl-C while this bucket compiled: save, stop
        if pending is not None:
          _check_nonfinite(*pending, max_nonfinite, last_saved)
        if step != last_saved and ckpt.save(step, state, position, config):
          preemption.saved()
        logging.warning("%s while compiling: saved step %d, exiting", preemption.reason, step)
        if is_main:
          progress.write(f"{preemption.verb}: checkpoint saved at step {step}")
        break
      state, metrics = program(state, batch)
      step += 1
      preemption.stepped()
      interval_steps += 1
      progress.update(1)

      # The non-finite guard reads the previous step, so the host never waits on this one.
      if pending is not None:
        _check_nonfinite(*pending, max_nonfinite, last_saved)
      pending = (step, metrics)

      if step % int(t.log_every) == 0 or step == num_steps:
        host = jax.device_get(metrics)
        elapsed = time.perf_counter() - interval_start
        scalars = dict(host, steps_per_sec=interval_steps / max(elapsed, 1e-9), devices=devices)
        # One step program per distinct batch shape (length bucket), traced or loaded from
        # the program store; more means recompiles.
        scalars["jit/train_step_traces"] = traces[0] + compiler.loaded_steps
        scalars["jit/programs_loaded"] = store.loaded if store is not None else 0
        writer.write_scalars(step, scalars)
        progress.set_postfix({"g": f"{float(host['loss/g/total']):.3f}",
                              "d": f"{float(host['loss/d/total']):.3f}",
                              "mel": f"{float(host['loss/g/mel']):.3f}"}, refresh=False)
        interval_start, interval_steps = time.perf_counter(), 0

      if evaluator is not None and step % eval_every == 0:
        program = compiler.get("eval", stopping)
        if program is not None:    # (None, or an unfinished run: SIGTERM/Ctrl-C, saved below)
          evaluator.run_and_log(state.params["generator"], step, writer, program, stopping)
        interval_start, interval_steps = time.perf_counter(), 0

      preempted = preemption.reached(step)
      if step % int(t.checkpoint_every) == 0 or step == num_steps or preempted:
        last_streak = _check_nonfinite(*pending, max_nonfinite, last_saved)
        pending = None
        if ckpt.save(step, state, train_data.get_state(), config):
          last_saved = step
          preemption.saved()
      if preempted:
        logging.warning("%s: saved step %d, exiting", preemption.reason, step)
        if is_main:
          progress.write(f"{preemption.verb}: checkpoint saved at step {step}")
        break
    # (the save at the last step read its streak: one shorter than max_nonfinite_steps
    # ends the run here, saved)
    if step == num_steps and last_streak:
      raise NonFiniteError(
          f"training ended at step {step} with its last {last_streak} steps non-finite "
          f"(their updates skipped: the checkpoint of step {step} holds the weights of step "
          f"{step - last_streak}); check the learning rate, the optimizer settings and the "
          "data")
  finally:
    compiler.close()
    ckpt.close()
    writer.close()
    progress.close()
    train_data.close()
  if preemption.is_set() and compiler.busy() and preemption.exit_process:
    # A compilation still running in a worker would hold the exit for its whole length.
    _exit_process(None, preemption.exit_code)
  return state


def _agreed(flag: bool) -> bool:
  """Process 0's `flag`, in every process (a decision every process must take alike)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def _evaluate_saved_step(evaluator, compiler, state, step, workdir, is_main, stopping):
  """The evaluation a stop interrupted at the run's last step, logged in place of it."""
  writer = metrics_lib.MetricWriter(workdir, enabled=is_main, resume_step=step)
  try:
    program = compiler.get("eval", stopping)
    if program is not None:
      if is_main:
        print(f"evaluating step {step}, whose evaluation was interrupted", flush=True)
      evaluator.run_and_log(state.params["generator"], step, writer, program, stopping)
  finally:
    writer.close()


def _abstract_batch(bucket, batch_size: int, sharding) -> dict:
  """Shapes of a global training batch padded to `bucket` (see `data.collate`)."""
  t_max, a_max = bucket
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
  return {"text": spec((batch_size, t_max), jnp.int32),
          "text_lengths": spec((batch_size,), jnp.int32),
          "audio": spec((batch_size, a_max), jnp.int16),
          "audio_lengths": spec((batch_size,), jnp.int32),
          "sid": spec((batch_size,), jnp.int32)}


def _check_nonfinite(step: int, metrics: dict, max_nonfinite: int, last_saved) -> int:
  """The step's non-finite streak; logged when not 0, NonFiniteError at `max_nonfinite`."""
  streak = int(metrics["nonfinite/streak"])
  if streak == 0:
    return 0
  logging.warning("step %d: non-finite loss or gradients, update skipped (%d in a row)",
                  step, streak)
  if streak >= max_nonfinite:
    raise NonFiniteError(
        f"training stopped at step {step}: {streak} non-finite steps in a row (steps "
        f"{step - streak + 1}..{step} skipped); last checkpoint: "
        f"{'none' if last_saved is None else f'step {last_saved}'}")
  return streak


def _progress_bar(enabled: bool, step: int, total: int):
  from tqdm import tqdm
  return tqdm(initial=step, total=total, disable=not enabled, unit="step",
              dynamic_ncols=True, smoothing=0.1)
