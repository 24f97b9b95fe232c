"""Receptive-field margins and isolation gaps for configs other than the bundled voice's
(ResBlock1, flow dilation > 1, odd upsample rates, few/many WN layers); the keys and
validation of the persistent caches (compiled programs, converted voices); checkpoints
(max_to_keep, restore, refusal of another model).

Every margin test runs a small random-init model: a window decoded with the model's own
`latent_margins` equals the same frames of the whole decode, the flow's margin is exactly
its receptive field and the decoder's is no smaller than its receptive field (measured by
gradients: which input frames an output frame depends on).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_model_properties import random_params
from vits_jax import inference
from vits_jax.models import receptive
from vits_jax.models.synthesizer import SynthesizerTrn, param_shapes

BASE = dict(n_vocab=12, spec_channels=9, segment_frames=8, inter_channels=4,
            hidden_channels=8, filter_channels=8, n_heads=2, n_layers=1, kernel_size=3,
            p_dropout=0.0, upsample_initial_channel=8, n_layers_enc_q=1, use_sdp=False,
            dp_filter_channels=8)

CONFIGS = {
    # HiFi-GAN V1 style residual blocks, dilated flow WN, odd rate and kernel.
    "rb1_dilated_flow": dict(resblock="1", resblock_kernel_sizes=(3, 5),
                             resblock_dilation_sizes=((1, 3), (2, 5)), upsample_rates=(3, 2),
                             upsample_kernel_sizes=(7, 4), flow_kernel_size=3,
                             flow_dilation_rate=2, flow_n_layers=3, flow_n_flows=2),
    # Large dilations, one stage, more WN layers with a wide kernel.
    "rb2_wide": dict(resblock="2", resblock_kernel_sizes=(3, 7),
                     resblock_dilation_sizes=((1, 2), (4, 9)), upsample_rates=(5,),
                     upsample_kernel_sizes=(11,), flow_kernel_size=7, flow_dilation_rate=1,
                     flow_n_layers=5, flow_n_flows=3),
    # Speaker conditioning, a rate-1 last stage, flow dilation 3 (its widest conv, 18
    # frames a side, sets the isolation gap).
    "rb1_speakers": dict(resblock="1", resblock_kernel_sizes=(5,),
                         resblock_dilation_sizes=((1, 4, 7),), upsample_rates=(2, 2, 1),
                         upsample_kernel_sizes=(4, 4, 3), flow_kernel_size=5,
                         flow_dilation_rate=3, flow_n_layers=3, flow_n_flows=2,
                         n_speakers=3, gin_channels=4),
}


@functools.lru_cache(maxsize=None)
def _model(name):
  model = SynthesizerTrn(**BASE, **CONFIGS[name])
  return model, random_params(param_shapes(model))


def _decode(model, params, m, mask, flow_margin=0, dec_margin=0):
  sid = None if not model.n_speakers else jnp.array([1])
  o, aux = model.apply({"params": params}, m, jnp.zeros_like(m), mask, sid,
                       noise_scale=0.0, flow_margin=flow_margin, dec_margin=dec_margin,
                       method="decode_latent")
  return o, aux


def _reach(grad_frames, lo, hi):
  """One-sided reach (frames) of the nonzero gradient frames around core [lo, hi)."""
  nz = np.nonzero(np.abs(np.asarray(grad_frames)).sum(-1) > 0)[0]
  return max(lo - nz.min(), nz.max() - (hi - 1), 0)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_window_with_latent_margins_equals_whole_decode(name):
  model, params = _model(name)
  flow, dec = model.latent_margins()
  margin = flow + dec
  core, lo = 5, 2 * margin + 3
  t = lo + core + 2 * margin + 4
  m = jnp.asarray(np.random.RandomState(1).randn(1, t, model.inter_channels), jnp.float32)
  mask = jnp.ones((1, t, 1), jnp.float32)
  whole, _ = _decode(model, params, m, mask)
  hop = model.hop_length
  win = slice(lo - margin, lo + core + margin)
  got, _ = _decode(model, params, m[:, win], mask[:, win], flow, dec)
  assert got.shape == (1, core * hop, 1)
  want = np.asarray(whole)[:, lo * hop:(lo + core) * hop]
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)
  # The flow's output (the decoder's input, margins included) equals the whole flow's too.
  z_whole = np.asarray(_decode(model, params, m, mask)[1]["z"])[:, lo - dec:lo + core + dec]
  z_win = np.asarray(_decode(model, params, m[:, win], mask[:, win], flow, dec)[1]["z"])
  np.testing.assert_allclose(z_win, z_whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_flow_margin_is_its_receptive_field_and_decoder_margin_covers_its_own(name):
  model, params = _model(name)
  flow, dec = model.latent_margins()
  t, lo, core = 2 * (flow + dec) + 12, flow + dec + 4, 3
  m = jnp.asarray(np.random.RandomState(2).randn(1, t, model.inter_channels), jnp.float32)
  mask = jnp.ones((1, t, 1), jnp.float32)
  hop = model.hop_length

  def flow_core(m):
    return jnp.sum(_decode(model, params, m, mask)[1]["z"][:, lo:lo + core] ** 2)

  def out_core(z):
    sid = None if not model.n_speakers else jnp.array([1])
    g = None if sid is None else model.apply({"params": params}, sid, method="_speaker")
    o = model.apply({"params": params}, z, g=g, x_mask=mask, method=lambda s, *a, **k:
                    s.dec(*a, **k))
    return jnp.sum(o[:, lo * hop:(lo + core) * hop] ** 2)

  assert _reach(jax.grad(flow_core)(m)[0], lo, lo + core) == flow
  assert receptive.flow_reach(model, total=True) == flow
  dec_seen = _reach(jax.grad(out_core)(m)[0], lo, lo + core)
  assert dec_seen <= dec
  # ... and the decoder's is not wildly over-counted (the transposed convs are counted at
  # their whole kernel width, so a frame of slack per stage at most).
  assert dec <= dec_seen + len(model.upsample_rates) + 1


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_isolation_gap_keeps_utterances_on_one_tape_apart(name):
  """Two utterances laid end to end with `isolation_gap` masked frames between them decode
  to what each decodes to alone."""
  model, params = _model(name)
  gap = model.isolation_gap()
  rng = np.random.RandomState(3)
  a, b = 7, 6
  c = model.inter_channels
  ma, mb = rng.randn(1, a, c), rng.randn(1, b, c)
  noise = rng.randn(1, gap, c)   # whatever the masked gap holds
  tape = jnp.asarray(np.concatenate([ma, noise, mb], 1), jnp.float32)
  mask = np.zeros((1, a + gap + b, 1), np.float32)
  mask[:, :a] = mask[:, a + gap:] = 1
  out, _ = _decode(model, params, tape, jnp.asarray(mask))
  alone_a, _ = _decode(model, params, jnp.asarray(ma, jnp.float32), jnp.ones((1, a, 1)))
  alone_b, _ = _decode(model, params, jnp.asarray(mb, jnp.float32), jnp.ones((1, b, 1)))
  hop = model.hop_length
  out = np.asarray(out)
  np.testing.assert_allclose(out[:, :a * hop], np.asarray(alone_a), atol=1e-5, rtol=0)
  np.testing.assert_allclose(out[:, (a + gap) * hop:], np.asarray(alone_b), atol=1e-5, rtol=0)
  assert np.all(out[:, a * hop:(a + gap) * hop] == 0)


def test_plan_for_takes_the_models_margins_and_gap():
  model, _ = _model("rb1_dilated_flow")
  plan = inference.plan_for(model, 10)
  flow, dec = model.latent_margins()
  assert (plan.window, plan.flow_margin, plan.dec_margin) == (10, flow, dec)
  assert plan.gap == model.isolation_gap() and plan.hop == model.hop_length == 6
  assert plan.span == 10 + 2 * (flow + dec)



# ------------------------------------------------------------------ compiled-program store
def _key(model=None, static=(1, 2, (4, 8)), params=None, args=None):
  model = model or _model("rb2_wide")[0]
  params = params if params is not None else {"a": np.zeros((2, 3), np.float32),
                                               "b": {"c": np.zeros((4,), np.float32)}}
  args = args if args is not None else (np.zeros((1, 7, 4), np.float32), np.int32(0))
  return inference._program_key(inference._latent_program, model, static, params, args)


def test_stored_program_path_follows_everything_the_program_bakes_in(tmp_path, monkeypatch):
  """A stored program is found again only for the same model, static arguments, parameter
  and argument shapes and dtypes, jax and flax versions and model code."""
  monkeypatch.setenv("VITS_JAX_XLA_CACHE", str(tmp_path))
  alive = []   # (the params signature is cached by the dict's id: keep each dict alive)
  path = lambda **kw: (alive.append(kw), inference._export_path(_key(**kw)))[1]
  base = path()
  assert base is not None and base.parent == tmp_path / "programs"
  assert path() == base   # stable
  f32 = {"a": np.zeros((2, 3), np.float32), "b": {"c": np.zeros((4,), np.float32)}}
  others = {
      "model": path(model=_model("rb1_dilated_flow")[0]),
      "static margins": path(static=(2, 1, (4, 8))),
      "static sizes": path(static=(1, 2, (8,))),
      "param shape": path(params={**f32, "a": np.zeros((3, 2), np.float32)}),
      "param dtype": path(params={**f32, "a": np.zeros((2, 3), jnp.bfloat16)}),
      "param tree": path(params={"a": f32["a"], "b": {"d": f32["b"]["c"]}}),
      "arg shape": path(args=(np.zeros((1, 9, 4), np.float32), np.int32(0))),
      "arg dtype": path(args=(np.zeros((1, 7, 4), np.float16), np.int32(0))),
  }
  for what, p in others.items():
    assert p != base, what
  assert len(set(others.values())) == len(others)
  for name, value in (("_flax_version", "0.0.0"), ("_code_hash", "edited")):
    with monkeypatch.context() as mp:
      mp.setattr(inference, name, lambda value=value: value)
      assert path() != base, name
  with monkeypatch.context() as mp:
    mp.setattr(jax, "__version__", "0.0.1")
    assert path() != base
  assert path() == base
  monkeypatch.setenv("VITS_JAX_XLA_CACHE", "")   # cache off: nothing stored
  assert path() is None


def test_program_key_follows_the_params_shapes_and_dtypes():
  """The in-process program table's key follows the params' shapes and dtypes (a bfloat16
  copy of a voice's params must not run a float32 program)."""
  f32 = {"a": np.zeros((2, 3), np.float32), "b": {"c": np.zeros((4,), np.float32)}}
  bf16 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.bfloat16), f32)
  # (every dict held alive: the signature is cached by the dict's id)
  same = dict(f32)
  wider = {**f32, "b": {"c": np.zeros((5,), np.float32)}}
  half = {**f32, "b": {"c": np.zeros((4,), np.float16)}}
  assert _key(params=f32) != _key(params=bf16)
  assert _key(params=f32) == _key(params=same)
  assert _key(params=f32) != _key(params=wider)
  assert _key(params=f32) != _key(params=half)


def test_a_freed_params_dict_does_not_lend_its_signature():
  """The signature is cached by the dict's id: a dict made at a freed one's address around
  the same first array but other later ones (a voice with its decoder cast) gets its own
  (it got the freed dict's: the program compiled for the other shapes and dtypes)."""
  first = jnp.zeros((2, 3))
  for _ in range(200):   # until CPython reuses the address (at once, in practice)
    p = {"a": first, "b": jnp.zeros((4,), jnp.float32)}
    old, address = inference._params_signature(p), id(p)
    del p
    q = {"a": first, "b": jnp.zeros((4,), jnp.bfloat16)}
    if id(q) == address:
      break
  else:
    pytest.skip("no address was reused")
  assert inference._params_signature(q) != old
  assert inference._params_signature(q)[1][1] == ((4,), "bfloat16")


def test_code_hash_covers_the_model_code(tmp_path, monkeypatch):
  """Editing any model file (not only inference.py) names other stored programs."""
  import shutil
  from pathlib import Path
  real = Path(inference.__file__).resolve().parent
  pkg = tmp_path / "vits_jax"
  (pkg / "models").mkdir(parents=True)
  for f in ("inference.py", "audio.py"):
    shutil.copy(real / f, pkg / f)
  for f in real.glob("models/*.py"):
    shutil.copy(f, pkg / "models" / f.name)
  inference._code_hash.cache_clear()
  try:
    before = inference._code_hash()
    monkeypatch.setattr(inference, "__file__", str(pkg / "inference.py"))
    inference._code_hash.cache_clear()
    assert inference._code_hash() == before
    for part in ("models/receptive.py", "models/flow.py", "audio.py"):
      with open(pkg / part, "a", encoding="utf-8") as f:
        f.write("# edited\n")
      inference._code_hash.cache_clear()
      assert inference._code_hash() != before, part
      before = inference._code_hash()
  finally:
    monkeypatch.undo()
    inference._code_hash.cache_clear()


def test_machine_tag_follows_xla_flags(monkeypatch):
  """A stored executable compiled under other XLA_FLAGS is not loaded."""
  import os
  inference._machine_tag.cache_clear()
  try:
    base = inference._machine_tag()
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_fast_math=false")
    inference._machine_tag.cache_clear()
    assert inference._machine_tag() != base
  finally:
    monkeypatch.undo()
    inference._machine_tag.cache_clear()


def test_a_stored_executable_with_a_bad_digest_or_magic_is_not_loaded(tmp_path):
  import hashlib
  payload = b"not an executable"
  good = hashlib.sha256(payload).hexdigest().encode()
  for name, header in (("magic", b"vits_jax-xlaexe-0 " + good + b" 1"),
                       ("digest", inference._EXE_MAGIC + b" " + b"0" * 64 + b" 1")):
    p = tmp_path / f"{name}.xlaexe"
    p.write_bytes(header + b"\n" + payload)
    assert inference._load_executable(p, {}, ()) is None
  assert inference._load_executable(tmp_path / "absent.xlaexe", {}, ()) is None


# ------------------------------------------------------------------ checkpoints
def _tiny_state(value=1.0):
  from vits_jax.training import state as state_lib
  return state_lib.TrainState(
      step=jnp.asarray(0, jnp.int32),
      params={"generator": {"w": jnp.full((3, 2), value, jnp.float32)}},
      model_state={}, opt_state={"mu": jnp.zeros((3, 2), jnp.float32)},
      rng=jax.random.PRNGKey(0), nonfinite_streak=jnp.asarray(0, jnp.int32),
      nonfinite_total=jnp.asarray(0, jnp.int32))


def _micro_config():
  import importlib
  return importlib.import_module("configs.tiny").get_config("micro")


def test_checkpointer_keeps_max_to_keep_and_restores_the_state(tmp_path):
  from vits_jax.training import checkpoint
  config = _micro_config()
  ckpt = checkpoint.Checkpointer(str(tmp_path), max_to_keep=2)
  try:
    for step in (1, 2, 3):
      assert ckpt.save(step, _tiny_state(float(step)), {"epoch": step}, config)
      ckpt.wait()
    assert checkpoint.steps_in(tmp_path / "checkpoints") == [2, 3]
    assert ckpt.latest_step() == 3
    abstract = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                       sharding=jax.sharding.SingleDeviceSharding(
                                           jax.devices()[0])), _tiny_state())
    restored = ckpt.restore(2, abstract)
    np.testing.assert_array_equal(restored.params["generator"]["w"], np.full((3, 2), 2.0))
    assert ckpt.restore_data_state(3) == {"epoch": 3}
    # Non-finite params are never saved.
    assert not ckpt.save(4, _tiny_state(float("nan")), {"epoch": 4}, config)
    ckpt.wait()
    assert checkpoint.steps_in(tmp_path / "checkpoints") == [2, 3]
  finally:
    ckpt.close()


def test_check_config_refuses_another_model_and_accepts_other_training_settings(tmp_path):
  from vits_jax.training import checkpoint
  config = _micro_config()
  ckpt = checkpoint.Checkpointer(str(tmp_path), max_to_keep=2)
  try:
    assert ckpt.save(1, _tiny_state(), {"epoch": 0}, config)
    ckpt.wait()
  finally:
    ckpt.close()
  ckpt = checkpoint.Checkpointer(str(tmp_path), max_to_keep=2)
  try:
    ckpt.check_config(1, config)   # the same model
    other = _micro_config()
    other.train.learning_rate = 1e-5
    other.train.num_steps = 99
    other.model.upsample_rates = tuple(other.model.upsample_rates)   # tuple vs JSON list
    ckpt.check_config(1, other)
    for section, key, value in (("model", "hidden_channels", 24),
                                ("model", "resblock_dilation_sizes", [[1, 3], [2, 9]]),
                                ("discriminator", "channel_div", 2),
                                ("data", "filter_length", 512)):
      other = _micro_config()
      other[section][key] = value
      with pytest.raises(ValueError, match=f"different model .*{section}.{key}"):
        ckpt.check_config(1, other)
  finally:
    ckpt.close()


def test_a_saved_executable_loads_only_with_its_digest(tmp_path, monkeypatch):
  """`_save_executable` writes an executable that `_load_executable` loads and runs; the same
  payload under a header whose digest does not match is not loaded (a damaged file is never
  handed to XLA's deserializer)."""
  fn = jax.jit(lambda p, x: (p["w"] * x + 1.0,))
  params, args = {"w": np.float32(2.0)}, (np.arange(3, dtype=np.float32),)
  specs = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype),
                                 (params,) + args)
  path = tmp_path / "p.xlaexe"
  if inference._save_executable(path, fn, specs) is None or not path.is_file():
    pytest.skip("this backend cannot serialize executables")
  loaded = inference._load_executable(path, params, args)
  assert loaded is not None
  np.testing.assert_array_equal(loaded(params, *args)[0], [1.0, 3.0, 5.0])
  header, payload = path.read_bytes().split(b"\n", 1)
  magic, digest, n_out = header.split(b" ")
  bad = bytes(reversed(digest))
  path.write_bytes(b" ".join([magic, bad, n_out]) + b"\n" + payload)
  assert inference._load_executable(path, params, args) is None


def test_programs_of_several_devices_are_not_stored(tmp_path, monkeypatch):
  monkeypatch.setenv("VITS_JAX_XLA_CACHE", str(tmp_path))
  key = _key()
  assert inference._export_path(key) is not None
  assert inference._export_path(key[:5] + (2,) + key[6:]) is None


def test_converted_voice_entry_follows_the_layer_code_and_base_config(tmp_path, monkeypatch):
  """The converted-voice cache holds params laid out by `models/layers.py` for a config
  completed from `configs/base.py`: editing either names another entry."""
  import shutil
  from pathlib import Path
  from vits_jax.convert import cache
  monkeypatch.setenv("VITS_JAX_XLA_CACHE", str(tmp_path / "cache"))
  voice = tmp_path / "v.onnx"
  voice.write_bytes(b"\0" * 10)
  real = Path(cache.__file__).resolve().parents[2]
  pkg = tmp_path / "pkg"
  shutil.copytree(real / "vits_jax" / "convert", pkg / "vits_jax" / "convert")
  for part in ("vits_jax/models/layers.py", "configs/base.py"):
    (pkg / part).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(real / part, pkg / part)
  monkeypatch.setattr(cache, "__file__", str(pkg / "vits_jax" / "convert" / "cache.py"))
  cache._code_hash.cache_clear()
  try:
    before = cache.entry_path([voice])
    for part in ("vits_jax/models/layers.py", "configs/base.py"):
      with open(pkg / part, "a", encoding="utf-8") as f:
        f.write("# edited\n")
      cache._code_hash.cache_clear()
      now = cache.entry_path([voice])
      assert now != before, part
      before = now
  finally:
    monkeypatch.undo()
    cache._code_hash.cache_clear()


def test_a_converted_voice_entry_with_trailing_bytes_is_not_read(tmp_path):
  """An entry whose data is longer than its index says (another write appended to it, a
  copy gone wrong) is as damaged as a truncated one."""
  from vits_jax.convert import cache
  path = tmp_path / "x.voice"
  cache.write(path, {"k": 1}, {"a": {"b": np.arange(5, dtype=np.float32)}})
  got = cache.read(path)
  np.testing.assert_array_equal(got["params"]["a"]["b"], np.arange(5))
  path.write_bytes(path.read_bytes() + b"\0" * 64)
  assert cache.read(path) is None
