"""Checkpoints, the program store, data parallelism, the train state and train.py's exits,
pinned at the unit level (mutation audit of the training infrastructure)."""

import importlib
import json
import os
import pickle
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_utils as tu
from vits_jax.training import checkpoint
from vits_jax.training import parallel
from vits_jax.training import programs
from vits_jax.training import state as state_lib

REPO = Path(__file__).resolve().parents[1]


def _config():
  return importlib.import_module("configs.tiny").get_config("micro")


def _state(value=1.0, step=0):
  """A small TrainState: arrays of 24 (w, d, mu), 8 (rng) and 4 bytes (the counters)."""
  return state_lib.TrainState(
      step=jnp.asarray(step, jnp.int32),
      params={"generator": {"w": jnp.full((3, 2), value, jnp.float32)},
              "discriminator": {"d": jnp.full((6,), value + 0.5, jnp.float32)}},
      model_state={}, opt_state={"mu": jnp.full((3, 2), value * 2, jnp.float32)},
      rng=jax.random.PRNGKey(int(value) if np.isfinite(value) else 0),
      nonfinite_streak=jnp.asarray(1, jnp.int32),
      nonfinite_total=jnp.asarray(step + 3, jnp.int32))


def _abstract():
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree_util.tree_map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), _state())


def _save(workdir, steps, config=None):
  config = config or _config()
  ckpt = checkpoint.Checkpointer(str(workdir), max_to_keep=10)
  try:
    for step, value in steps:
      assert ckpt.save(step, _state(value, step), {"epoch": step, "i": 7 * step}, config)
      ckpt.wait()
  finally:
    ckpt.close()


# ------------------------------------------------------------------ checkpoints
def test_restore_gives_back_every_part_of_the_state_bitwise(tmp_path):
  _save(tmp_path, [(3, 5.0), (4, 6.0)])
  ckpt = checkpoint.Checkpointer(str(tmp_path), max_to_keep=10)
  try:
    assert ckpt.latest_step() == 4
    got = ckpt.restore(3, _abstract())
    want = _state(5.0, 3)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(got.step) == 3 and int(got.nonfinite_total) == 6
    assert ckpt.restore_data_state(4) == {"epoch": 4, "i": 28}
  finally:
    ckpt.close()


def test_data_state_file_names_the_process_and_another_count_is_named(tmp_path, monkeypatch):
  handler = checkpoint.DataStateHandler()
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  handler.save(tmp_path / "d", checkpoint.DataStateSave({"p": 1}))
  assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["process_1-of-2.json"]
  assert handler.restore(tmp_path / "d") == {"p": 1}
  monkeypatch.setattr(jax, "process_count", lambda: 1)
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  with pytest.raises(checkpoint.DataStateError, match="different number of processes"):
    handler.restore(tmp_path / "d")


def test_a_checkpoint_of_another_process_count_is_one_clear_error(tmp_path):
  _save(tmp_path, [(1, 1.0), (2, 2.0)])
  data = tmp_path / "checkpoints" / "2" / "data"
  (data / "process_0-of-1.json").rename(data / "process_1-of-2.json")
  ckpt = checkpoint.Checkpointer(str(tmp_path), max_to_keep=10)
  try:
    with pytest.raises(checkpoint.CorruptCheckpoint,
                       match=r"missing: the checkpoint was written by a run with a different "
                             r"number of processes \(process_1-of-2.json\)"):
      ckpt.restore_data_state(2)
  finally:
    ckpt.close()


def test_check_config_falls_back_to_the_runs_config_json(tmp_path):
  config = _config()
  _save(tmp_path, [(1, 1.0)], config)
  (tmp_path / "checkpoints" / "1" / "config" / "metadata").unlink()
  assert checkpoint.saved_config(tmp_path / "checkpoints", 1) is None
  other = config.to_dict()
  other["model"]["hidden_channels"] = 24
  (tmp_path / "config.json").write_text(json.dumps(other, default=str))
  ckpt = checkpoint.Checkpointer(str(tmp_path), max_to_keep=10)
  try:
    with pytest.raises(ValueError, match=r"different model \(model.hidden_channels 24 -> 16\)"):
      ckpt.check_config(1, config)
    (tmp_path / "config.json").write_text("[1, 2]")   # not a run's config: nothing to compare
    ckpt.check_config(1, config)
  finally:
    ckpt.close()


def test_a_garbled_saved_config_reads_as_none(tmp_path):
  _save(tmp_path, [(1, 1.0)])
  assert checkpoint.saved_config(tmp_path / "checkpoints", 1)["model"]["hidden_channels"] == 16
  (tmp_path / "checkpoints" / "1" / "config" / "metadata").write_text("{garbage")
  assert checkpoint.saved_config(tmp_path / "checkpoints", 1) is None


def test_temporaries_of_an_interrupted_save_are_removed(tmp_path):
  tmp = tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp-1234"
  (tmp / "state").mkdir(parents=True)
  _save(tmp_path, [(1, 1.0)])   # (orbax removes them in the background, before a save)
  assert not tmp.exists()
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]


def test_a_failed_background_save_names_its_step_and_the_full_disk(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path), max_to_keep=10)
  try:
    assert ckpt.save(5, _state(), {}, _config())
    ckpt.manager.wait_until_finished()

    def fail():
      raise OSError(28, "No space left on device")
    real = ckpt.manager.wait_until_finished
    ckpt.manager.wait_until_finished = fail
    with pytest.raises(checkpoint.SaveError,
                       match=r"of step 5 in .*: the disk is full; the earlier checkpoints"):
      ckpt.wait()
    ckpt.manager.wait_until_finished = real
  finally:
    ckpt.close()


def test_room_for_a_checkpoint_is_checked_before_writing(tmp_path, monkeypatch):
  import collections
  import resource
  import shutil
  ckpt = checkpoint.Checkpointer(str(tmp_path), max_to_keep=10)
  try:
    usage = collections.namedtuple("usage", "total used free")
    real_usage = shutil.disk_usage
    # 84 bytes of arrays need 84 bytes + a 16 MiB margin
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(1 << 40, 0, (16 << 20) + 50))
    with pytest.raises(checkpoint.SaveError, match="step 1 .*the disk is full"):
      ckpt.save(1, _state(), {}, _config())
    monkeypatch.setattr(shutil, "disk_usage", real_usage)
    # The per-file size limit is compared with the largest array (24 bytes), not the
    # whole state (84 bytes) nor the smallest array, in bytes, not elements.
    inf, real_getrlimit = resource.RLIM_INFINITY, resource.getrlimit
    monkeypatch.setattr(resource, "getrlimit", lambda which: (
        (20, inf) if which == resource.RLIMIT_FSIZE else real_getrlimit(which)))
    with pytest.raises(checkpoint.SaveError, match="step 2 .*file-size limit"):
      ckpt.save(2, _state(), {}, _config())
    assert checkpoint.steps_in(tmp_path / "checkpoints") == []
    monkeypatch.setattr(resource, "getrlimit", lambda which: (
        (30, inf) if which == resource.RLIMIT_FSIZE else real_getrlimit(which)))
    assert ckpt.save(3, _state(), {}, _config())
    ckpt.wait()
  finally:
    ckpt.close()
  assert checkpoint.steps_in(tmp_path / "checkpoints") == [3]


def _save_nan(tmp_path, monkeypatch, step):
  """A checkpoint whose params are NaN (bit rot that still decodes: no save writes it)."""
  monkeypatch.setattr(checkpoint, "_finite", lambda p: True)
  ckpt = checkpoint.Checkpointer(str(tmp_path), max_to_keep=10)
  try:
    assert ckpt.save(step, _state(float("nan"), step), {}, _config())
    ckpt.wait()
  finally:
    ckpt.close()
  monkeypatch.undo()


def test_non_finite_params_read_back_are_damage_with_the_earlier_step_named(tmp_path,
                                                                           monkeypatch):
  _save(tmp_path, [(2, 2.0), (9, 9.0)])
  _save_nan(tmp_path, monkeypatch, 10)
  ckpt = checkpoint.Checkpointer(str(tmp_path), max_to_keep=10)
  try:
    with pytest.raises(checkpoint.CorruptCheckpoint,
                       match=r"checkpoint 10 in .*not finite.*resume from step 9$"):
      ckpt.restore(10, _abstract())
    assert int(ckpt.restore(9, _abstract()).step) == 9
  finally:
    ckpt.close()
  with pytest.raises(checkpoint.CorruptCheckpoint, match="not finite"):
    checkpoint.load_generator_params(str(tmp_path), step=10)
  # The default step passes over the damaged latest one, with one warning.
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    config, gen, step, disc = checkpoint.load_generator_params(str(tmp_path),
                                                               discriminator=True)
  assert step == 9 and config.model.hidden_channels == 16
  np.testing.assert_array_equal(gen["w"], np.full((3, 2), 9.0, np.float32))
  np.testing.assert_array_equal(disc["d"], np.full((6,), 9.5, np.float32))
  assert [str(w.message) for w in caught if "checkpoint 10" in str(w.message)
          and "using step 9" in str(w.message)], [str(w.message) for w in caught]
  assert checkpoint.load_generator_params(str(tmp_path), step=2)[3] is None


def test_steps_are_in_numeric_order_and_the_latest_is_the_largest(tmp_path):
  _save(tmp_path, [(2, 2.0), (9, 9.0), (10, 10.0)])
  (tmp_path / "checkpoints" / "notes").mkdir()
  assert checkpoint.steps_in(tmp_path / "checkpoints") == [2, 9, 10]
  # The checkpoint's own config describes its params, not the workdir's latest config.json
  # (which only stands in for a checkpoint saved without one).
  other = _config().to_dict()
  other["model"]["hidden_channels"] = 99
  (tmp_path / "config.json").write_text(json.dumps(other, default=str))
  config, gen, step, _ = checkpoint.load_generator_params(str(tmp_path))
  assert step == 10 and config.model.hidden_channels == 16
  (tmp_path / "checkpoints" / "10" / "config" / "metadata").unlink()
  assert checkpoint.load_generator_params(str(tmp_path))[0].model.hidden_channels == 99
  np.testing.assert_array_equal(gen["w"], np.full((3, 2), 10.0, np.float32))
  with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 7 .*\[2, 9, 10\]"):
    checkpoint.load_generator_params(str(tmp_path), step=7)


# ------------------------------------------------------------------ the program store
def test_program_key_follows_optimizer_settings_segment_and_epoch_length(monkeypatch, tmp_path):
  from vits_jax import xla_cache
  monkeypatch.setattr(xla_cache, "cache_dir", lambda: str(tmp_path))
  f32 = (jax.ShapeDtypeStruct((2,), jnp.float32),)

  def path(name, args=f32, steps_per_epoch=3, **changes):
    config = _config()
    for key, value in changes.items():
      section, field = key.split("__")
      config[section][field] = value
    return programs.ExecutableStore.for_run(
        config, steps_per_epoch=steps_per_epoch).path(name, args)
  base = path("step")
  for key, value in dict(train__weight_decay=0.5, train__eps=1e-6, train__betas=(0.5, 0.9),
                         train__segment_size=2048).items():
    assert path("step", **{key: value}) != base, key
  assert path("step", steps_per_epoch=4) != base
  assert path("init", steps_per_epoch=4) == path("init")
  assert path("step", args=(jax.ShapeDtypeStruct((2,), jnp.bfloat16),)) != base
  assert path("eval") != base


def test_a_stored_program_loads_counts_and_a_bad_digest_is_never_deserialized(tmp_path,
                                                                             monkeypatch):
  store = programs.ExecutableStore(tmp_path, "identity", "settings", "init-settings")
  args = (jax.ShapeDtypeStruct((3,), jnp.float32),)
  compiled = store.compile(jax.jit(lambda x: x * 2.0 + 1.0).lower(*args))
  assert store.save("step", args, compiled)
  got = store.load("step", args)
  assert got is not None and store.loaded == 1
  np.testing.assert_array_equal(np.asarray(got(jnp.arange(3.0))), [1.0, 3.0, 5.0])
  # A payload whose digest does not match is not handed to the deserializer.
  from jax.experimental import serialize_executable
  calls = []
  monkeypatch.setattr(serialize_executable, "deserialize_and_load",
                      lambda *a, **k: calls.append(a) or "loaded")
  path = store.path("step", args)
  payload = pickle.dumps((b"x", None, None))
  path.write_bytes(programs._STORE_MAGIC + b" " + b"0" * 64 + b"\n" + payload)
  assert store.load("step", args) is None and calls == [] and store.loaded == 1
  # Output shapes: only ShapeDtypeStructs are taken.
  path.with_suffix(".shapes").write_bytes(pickle.dumps([1, 2]))
  assert store.load_shapes("step", args) is None
  store.save_shapes("step", args, {"a": jax.ShapeDtypeStruct((4,), jnp.int32)})
  assert store.load_shapes("step", args) == {"a": jax.ShapeDtypeStruct((4,), jnp.int32)}


def test_the_code_hash_covers_every_subpackage(tmp_path, monkeypatch):
  pkg = tmp_path / "pkg"
  (pkg / "training").mkdir(parents=True)
  (pkg / "models").mkdir()
  (pkg / "training" / "programs.py").write_text("x = 1\n")
  (pkg / "models" / "layer.py").write_text("y = 1\n")
  monkeypatch.setattr(programs, "__file__", str(pkg / "training" / "programs.py"))
  before = programs._package_hash()
  (pkg / "models" / "layer.py").write_text("y = 2\n")
  assert programs._package_hash() != before


class _FakeStore:
  def __init__(self, stored=()):
    self.stored, self.saved, self.loaded = set(stored), [], 0

  def load(self, name, args):
    return f"stored {name}" if name in self.stored else None

  def compile(self, lowered):
    return f"compiled {lowered}"

  def save(self, name, args, compiled):
    self.saved.append((name, compiled))


class _Jitted:
  def __init__(self, gate=None):
    self.lowered, self.gate = 0, gate

  def lower(self, *args):
    if self.gate is not None:
      self.gate.wait(30)
    self.lowered += 1
    return f"lowered{args}"


def test_ahead_compiler_stores_each_program_under_its_name_and_counts_loaded_steps():
  store = _FakeStore()
  compiler = programs.AheadCompiler(workers=1, store=store)
  jitted = _Jitted()
  compiler.submit((1, 2), jitted, "a")
  compiler.submit((1, 2), jitted, "a")   # asked twice: compiled once
  compiler.submit("eval", jitted, "b")
  assert compiler.get((1, 2)) == "compiled lowered('a',)"
  assert compiler.get("eval") == "compiled lowered('b',)"
  assert jitted.lowered == 2
  assert sorted(store.saved) == [("eval", "compiled lowered('b',)"),
                                 ("step", "compiled lowered('a',)")]
  assert compiler.loaded_steps == 0
  compiler.close()
  store = _FakeStore(stored=("step", "eval"))
  compiler = programs.AheadCompiler(workers=1, store=store)
  compiler.submit((1, 2), jitted, "a")
  compiler.submit((3, 4), jitted, "c")
  compiler.submit("eval", jitted, "b")
  assert [compiler.get(k) for k in ((1, 2), (3, 4), "eval")] == [
      "stored step", "stored step", "stored eval"]
  assert compiler.loaded_steps == 2 and jitted.lowered == 2 and store.saved == []
  compiler.close()


def test_ahead_compiler_wait_is_interruptible_and_busy_says_so():
  gate = threading.Event()
  compiler = programs.AheadCompiler(workers=1)
  compiler.submit("k", _Jitted(gate), "a")
  try:
    assert compiler.busy()
    assert compiler.get("k", interrupted=lambda: True, poll_s=0.01) is None
  finally:
    gate.set()
  compiler._futures["k"].exception(timeout=30)   # (a str has no .compile(): it failed)
  assert not compiler.busy()
  compiler.close()


def test_abstract_like_takes_the_given_sharding():
  x = jnp.zeros((2, 3), jnp.bfloat16)
  mesh = parallel.make_mesh()
  out = programs.abstract_like({"x": x}, parallel.replicated(mesh))
  assert out["x"].shape == (2, 3) and out["x"].dtype == jnp.bfloat16
  assert out["x"].sharding == parallel.replicated(mesh)
  assert programs.abstract_like({"x": x})["x"].sharding == x.sharding


# ------------------------------------------------------------------ data parallelism
_TWO_DEVICES = r"""
import json
import jax, numpy as np
from vits_jax.training import parallel, programs
from vits_jax import xla_cache
xla_cache.cache_dir = lambda: "/tmp"
import configs.tiny
out = {"devices": jax.device_count(), "local": parallel.local_batch_size(4)}
try:
  parallel.local_batch_size(3)
except ValueError as e:
  out["odd"] = str(e)
mesh = parallel.make_mesh()
batch = parallel.global_batch({"a": np.arange(8).reshape(4, 2)}, mesh)
out["spec"] = str(batch["a"].sharding.spec)
out["shards"] = [s.data.tolist() for s in sorted(batch["a"].addressable_shards,
                                                  key=lambda s: s.index[0].start)]
out["store"] = programs.ExecutableStore.for_run(configs.tiny.get_config("micro")) is None
print(json.dumps(out))
"""


def test_two_devices_split_the_batch_and_keep_no_program_store():
  proc = subprocess.run([sys.executable, "-c", _TWO_DEVICES], cwd=REPO, capture_output=True,
                        text=True, timeout=300, env=tu._env(  # pylint: disable=protected-access
                            XLA_FLAGS="--xla_force_host_platform_device_count=2"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["devices"] == 2 and out["local"] == 4
  assert "train.batch_size=3 must be a multiple of the number of devices (2)" in out["odd"]
  assert out["spec"] in ("PartitionSpec('data',)", "P('data',)")
  assert out["shards"] == [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]
  assert out["store"] is True


def test_initialize_distributed_passes_and_checks_its_arguments(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append(a))
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(name, raising=False)
  parallel.initialize_distributed("host:1", 2, 1)
  assert calls == [("host:1", 2, 1)]
  with pytest.raises(ValueError, match=r"process id 2 is not one of 0..1"):
    parallel.initialize_distributed("host:1", 2, 2)
  with pytest.raises(ValueError, match="go together"):
    parallel.initialize_distributed(None, 2, 0)
  calls.clear()
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "host:2")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  parallel.initialize_distributed()   # no process id: JAX finds the rest itself
  assert calls == [()]
  monkeypatch.setenv("JAX_PROCESS_ID", "1")
  calls.clear()
  parallel.initialize_distributed()
  assert calls == [("host:2", 2, 1)]


# ------------------------------------------------------------------ train state
def test_learning_rate_with_no_full_epoch_is_the_initial_one():
  train = _config().train
  lr = state_lib.learning_rate_fn(train, 0)
  assert float(lr(0)) == pytest.approx(float(train.learning_rate))
  assert float(lr(2)) == pytest.approx(float(train.learning_rate) * float(train.lr_decay) ** 2)


# ------------------------------------------------------------------ train.py
def test_config_arg_and_unknown_override_hints():
  sys.path.insert(0, str(REPO))
  train = importlib.import_module("train")
  tiny = str(REPO / "configs" / "tiny.py")
  assert train._config_arg(["train.py", f"--config={tiny}:micro", "--workdir", "w"]) == \
      f"{tiny}:micro"
  assert train._config_arg(["train.py", "--config", tiny]) == tiny
  assert train._unknown_override(["t", "--config", f"{tiny}:micro", "--config.train.steps=5"]) \
      == ("--config.train.steps: train has no field 'steps' (did you mean num_steps or "
          "fit_posterior_steps or max_nonfinite_steps?)")


_EXITS = r"""
import sys
sys.argv = ["train.py", "--config", "configs/tiny.py:micro", "--workdir", sys.argv[1] + "/w"]
kind = __import__("os").environ["KIND"]
import train
from absl import app
from vits_jax import training
def fail(config, workdir, exit_on_signal):
  raise {"os": OSError(28, "No space left on device", "/x/metrics.jsonl"),
         "save": training.SaveError("cannot save"), "value": ValueError("bad value"),
         "interrupt": KeyboardInterrupt()}[kind]
training.train_and_evaluate = fail
app.run(train.main, flags_parser=train._parse_flags)
"""


@pytest.mark.parametrize("kind, code, line", [
    ("os", 1, "error: /x/metrics.jsonl: No space left on device"),
    ("save", 1, "error: cannot save"),
    ("value", 2, "error: bad value"),
    ("interrupt", 130, "interrupted")])
def test_train_py_exit_codes(kind, code, line, tmp_path):
  env = tu._env(KIND=kind)  # pylint: disable=protected-access
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(name, None)
  proc = subprocess.run([sys.executable, "-c", _EXITS, str(tmp_path)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == code, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines()[-1] == line, proc.stderr[-3000:]


def test_train_py_without_a_workdir_is_a_usage_error(tmp_path):
  proc = subprocess.run([sys.executable, str(REPO / "train.py"), "--config",
                         f"{REPO / 'configs' / 'tiny.py'}:micro"], cwd=tmp_path,
                        env=tu._env(), capture_output=True, text=True, timeout=120)  # pylint: disable=protected-access
  assert proc.returncode == 2 and proc.stderr == "error: --config and --workdir are required\n", \
      proc.stderr[-2000:]
