"""Training: the jitted D+G step, and `train.py` runs on a synthetic corpus.

The CLI runs use `configs/tiny.py:micro` (the real VITS modules at micro widths) in
subprocesses that share an XLA cache (see train_utils.py): the first run compiles the step
once, the others reuse it.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import train_utils as tu
from vits_jax.models import commons
from vits_jax.training import loop
from vits_jax.training import state as state_lib
from vits_jax.training import step as step_lib
from vits_jax.training import warm_start

PIPER_MULTI = tu.REPO / "tests" / "fixtures" / "piper_tiny_multi.onnx"
PIPER_HIGH = tu.REPO / "tests" / "fixtures" / "piper_tiny_high.onnx"
EVAL = ("--config.train.eval_every=2",)


# --- The step on a stand-in model (cheap to compile) ---------------------------------------

class _FakeSynth(nn.Module):
  """Stand-in with SynthesizerTrn's training interface and outputs."""
  segment_frames: int = 4
  hop: int = 256

  @nn.compact
  def __call__(self, x, x_lengths, y, y_lengths, sid=None, *, train=True):
    b, t_y = y.shape[0], y.shape[1]
    x_mask = commons.sequence_mask(x_lengths, x.shape[1])[..., None].astype(jnp.float32)
    y_mask = commons.sequence_mask(y_lengths, t_y)[..., None].astype(jnp.float32)
    h = nn.Embed(10, 8, name="enc_p")(x) * x_mask
    z = nn.Dense(8, name="enc_q")(jnp.log(y)) * y_mask
    m_p = jnp.broadcast_to(jnp.mean(h, axis=1, keepdims=True), z.shape)
    logs_p = 0.1 * m_p
    z_p = nn.Dense(8, name="flow")(z)
    ids = jax.random.randint(self.make_rng("slice"), (b,), 0, t_y - self.segment_frames)
    o = jnp.tanh(nn.Dense(self.hop, name="dec")(commons.slice_segments(z, ids, self.segment_frames)))
    o = o.reshape(b, self.segment_frames * self.hop, 1)
    o = nn.Dropout(0.1, deterministic=not train)(o, rng=self.make_rng("dropout"))
    l_length = jnp.sum(h ** 2, axis=(1, 2)) / jnp.sum(x_mask)
    attn = jnp.zeros((b, t_y, x.shape[1]))
    return o, dict(l_length=l_length, attn=attn, ids_slice=ids, x_mask=x_mask, y_mask=y_mask,
                   z=z, z_p=z_p, m_p=m_p, logs_p=logs_p, m_q=z, logs_q=0.1 * z)


class _FakeDisc(nn.Module):
  """Stand-in with MultiPeriodDiscriminator's interface: two 'discriminators'."""

  @nn.compact
  def score(self, x):
    outs, fmaps = [], []
    for i in range(2):
      f = nn.tanh(nn.Dense(4, name=f"d{i}_0")(x.reshape(x.shape[0], -1, 32)))
      outs.append(nn.Dense(1, name=f"d{i}_1")(f)[..., 0])
      fmaps.append([f])
    return outs, fmaps

  def __call__(self, y, y_hat):
    outs, fmaps = self.score(jnp.concatenate([y, y_hat], 0))
    b = y.shape[0]
    return ([o[:b] for o in outs], [o[b:] for o in outs],
            [[f[:b] for f in fm] for fm in fmaps], [[f[b:] for f in fm] for fm in fmaps])


def _fake_setup():
  config = tu_config()
  config.train.segment_size = 4 * 256
  gen, disc = _FakeSynth(), _FakeDisc()
  tx_g, tx_d = state_lib.make_optimizer(config.train), state_lib.make_optimizer(config.train)
  lr_fn = state_lib.learning_rate_fn(config.train, 10)
  rng = jax.random.PRNGKey(0)
  batch = _batch(np.random.default_rng(0))
  spec = jnp.ones((2, 12, 513))
  gv = gen.init({"params": rng, "slice": rng, "dropout": rng}, batch["text"],
                batch["text_lengths"], spec, jnp.array([12, 10]))
  dv = disc.init(rng, jnp.zeros((2, 1024, 1)), jnp.zeros((2, 1024, 1)))
  state = state_lib.create_train_state(jax.random.PRNGKey(1), gv, dv, tx_g, tx_d)
  return config, gen, disc, tx_g, tx_d, lr_fn, state


def tu_config():
  from configs import tiny
  return tiny.get_config('micro')


def _batch(rng, nan=False):
  audio = (0.1 * rng.standard_normal((2, 12 * 256))).astype(np.float32)
  if nan:
    audio[0, 100] = np.nan
  return {"text": jnp.asarray(rng.integers(1, 10, (2, 6)), jnp.int32),
          "text_lengths": jnp.array([6, 4], jnp.int32), "audio": jnp.asarray(audio),
          "audio_lengths": jnp.array([12 * 256, 10 * 256], jnp.int32),
          "sid": jnp.zeros((2,), jnp.int32)}


def test_step_updates_skips_nonfinite_and_never_retraces():
  config, gen, disc, tx_g, tx_d, lr_fn, state = _fake_setup()
  config.model.n_speakers = 0
  step = jax.jit(chex.assert_max_traces(
      step_lib.make_train_step(config, gen, disc, tx_g, tx_d, lr_fn), n=1))
  rng = np.random.default_rng(1)
  params0 = jax.device_get(state.params)

  state, m = step(state, _batch(rng))
  assert int(m["nonfinite/skipped"]) == 0
  assert all(np.isfinite(float(v)) for k, v in m.items() if k.startswith("loss/"))
  params1 = jax.device_get(state.params)
  for part in ("generator", "discriminator"):
    changed = jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, b),
                                     params0[part], params1[part])
    assert all(jax.tree_util.tree_leaves(changed)), part

  # A NaN in the audio: nothing but the counters and the step moves.
  opt1 = jax.device_get(state.opt_state)
  state, m = step(state, _batch(rng, nan=True))
  assert int(m["nonfinite/skipped"]) == 1 and int(m["nonfinite/streak"]) == 1
  chex.assert_trees_all_equal(jax.device_get(state.params), params1)
  chex.assert_trees_all_equal(jax.device_get(state.opt_state), opt1)
  assert int(state.step) == 2

  state, m = step(state, _batch(rng))   # same shapes: must not retrace
  assert int(m["nonfinite/streak"]) == 0 and int(m["nonfinite/total"]) == 1


def test_frozen_modules_keep_their_weights_and_the_rest_train():
  config, gen, disc, tx_g, tx_d, lr_fn, state = _fake_setup()
  config.model.n_speakers = 0
  config.train.freeze = "enc_p, flow"
  step = jax.jit(step_lib.make_train_step(config, gen, disc, tx_g, tx_d, lr_fn))
  rng = np.random.default_rng(1)
  g0 = jax.device_get(state.params["generator"])
  for _ in range(2):
    state, m = step(state, _batch(rng))
  assert int(m["nonfinite/skipped"]) == 0
  g2 = jax.device_get(state.params["generator"])
  for name in ("enc_p", "flow"):      # bitwise: no gradient and no weight decay
    chex.assert_trees_all_equal(g2[name], g0[name])
  for name in ("enc_q", "dec"):
    changed = jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, b), g0[name], g2[name])
    assert all(jax.tree_util.tree_leaves(changed)), name
  # A frozen module's Adam moments never see a gradient.
  mu = jax.device_get(state.opt_state["generator"].inner_state[0].mu)
  assert not any(np.any(a) for a in jax.tree_util.tree_leaves(mu["enc_p"]))

  config.train.freeze = "enc_p,decoder"
  with pytest.raises(ValueError, match="unknown module.*decoder.*dec, dp, enc_p"):
    step_lib.make_train_step(config, gen, disc, tx_g, tx_d, lr_fn)


def test_step_equals_two_phase_reference():
  """D is updated first; G's loss uses the updated D (official train.py order)."""
  config, gen, disc, tx_g, tx_d, lr_fn, state = _fake_setup()
  config.model.n_speakers = 0
  batch = _batch(np.random.default_rng(2))
  new_state, _ = jax.jit(step_lib.make_train_step(config, gen, disc, tx_g, tx_d, lr_fn))(
      state, batch)

  from vits_jax import audio, losses
  data, w = config.data, config.loss
  rngs = step_lib.step_rngs(state.rng, state.step)
  wav = step_lib.waveform(batch, data)
  spec = audio.spectrogram_from_config(wav, data, batch["audio_lengths"])

  def g_out(gp):
    return gen.apply({"params": gp}, batch["text"], batch["text_lengths"], spec,
                     batch["audio_lengths"] // 256, train=True, rngs=rngs)

  gp, dp = state.params["generator"], state.params["discriminator"]
  y_hat, aux = g_out(gp)
  l_length, ids, z_mask = aux["l_length"], aux["ids_slice"], aux["y_mask"]
  z_p, m_p, logs_p, logs_q = aux["z_p"], aux["m_p"], aux["logs_p"], aux["logs_q"]
  y = commons.slice_segments(wav[..., None], ids * 256, 1024)

  def d_loss(p):
    r, g, _, _ = disc.apply({"params": p}, y, jax.lax.stop_gradient(y_hat))
    return losses.discriminator_loss(r, g)[0]

  def with_lr(s):
    return step_lib._with_lr(s, lr_fn(0))  # pylint: disable=protected-access

  upd, _ = tx_d.update(jax.grad(d_loss)(dp), with_lr(state.opt_state["discriminator"]), dp)
  dp_new = jax.tree_util.tree_map(lambda a, b: a + b, dp, upd)

  def g_loss(p):
    y_hat, aux = g_out(p)
    l_length, ids, z_mask = aux["l_length"], aux["ids_slice"], aux["y_mask"]
    z_p, m_p, logs_p, logs_q = aux["z_p"], aux["m_p"], aux["logs_p"], aux["logs_q"]
    y_mel = commons.slice_segments(audio.spec_to_mel_from_config(spec, data), ids, 4)
    _, d_g, f_r, f_g = disc.apply({"params": dp_new}, y, y_hat)
    return (w.mel * losses.mel_loss(y_mel, audio.mel_from_config(y_hat[..., 0], data))
            + w.kl * losses.kl_loss(z_p, logs_q, m_p, logs_p, z_mask)
            + w.dur * jnp.sum(l_length) + w.fm * losses.feature_loss(f_r, f_g)
            + w.adv * losses.generator_loss(d_g)[0])

  upd, _ = tx_g.update(jax.grad(g_loss)(gp), with_lr(state.opt_state["generator"]), gp)
  gp_new = jax.tree_util.tree_map(lambda a, b: a + b, gp, upd)
  chex.assert_trees_all_close(new_state.params["discriminator"], dp_new, rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(new_state.params["generator"], gp_new, rtol=1e-4, atol=1e-6)


def test_learning_rate_decays_once_per_epoch_like_official():
  train = ml_collections.ConfigDict(dict(learning_rate=2e-4, lr_decay=0.999875))
  lr = state_lib.learning_rate_fn(train, steps_per_epoch=7)
  # torch ExponentialLR stepped after every epoch: epoch e (0-based) runs at lr * decay**e.
  for step in (0, 6, 7, 13, 14, 700):
    np.testing.assert_allclose(float(lr(step)), 2e-4 * 0.999875 ** (step // 7), rtol=1e-6)


def test_nonfinite_streak_stops_with_the_step():
  loop._check_nonfinite(5, {"nonfinite/streak": 0}, 3, None)  # pylint: disable=protected-access
  loop._check_nonfinite(5, {"nonfinite/streak": 2}, 3, None)  # pylint: disable=protected-access
  with pytest.raises(loop.NonFiniteError, match=r"step 7: 3 non-finite steps in a row "
                     r"\(steps 5\.\.7 skipped\); last checkpoint: step 4"):
    loop._check_nonfinite(7, {"nonfinite/streak": 3}, 3, 4)  # pylint: disable=protected-access


def test_initial_params_draw_with_one_op_per_tensor():
  """The init program draws params with RngBitGenerator (`loop.params_key`), not threefry's
  dozens of ops per draw; the run's own key (dropout, noise) stays threefry, and draws
  follow the seed."""
  config = tu_config()
  gen, disc = loop.build_models(config)
  tx = state_lib.make_optimizer(config.train)
  text = jax.jit(loop.make_init_state(config, gen, disc, tx, tx)).lower(
      jax.random.PRNGKey(0)).as_text()
  assert text.count("rng_bit_generator") > 100          # one per random draw
  assert len(re.findall(r"call @_threefry", text)) <= 2  # only TrainState.rng's fold_in
  draw = jax.jit(lambda seed: jax.random.normal(loop.params_key(jax.random.PRNGKey(seed)),
                                                (4096,)))
  a, b, c = np.asarray(draw(0)), np.asarray(draw(0)), np.asarray(draw(1))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c) and abs(a.mean()) < 0.1 and abs(a.std() - 1) < 0.05


def test_speaker_changes_between_a_run_and_its_data():
  saved = {"data": {"speaker_names": {"p1": 0, "p2": 1}}}
  changes = lambda new: loop._speaker_changes(saved, ml_collections.ConfigDict(
      {"data": {"speaker_names": new}}))
  assert changes({"p1": 0, "p2": 1}) == [] and changes({"p1": 0, "p2": 1, "p3": 2}) == []
  assert changes({"p1": 0}) == []   # (a speaker left out trains no more: no change)
  assert changes({"p1": 1, "p2": 0}) == ["p1: id 0 -> 1", "p2: id 1 -> 0"]
  assert changes({"p0": 0, "p1": 1, "p2": 2}) == ["p1: id 0 -> 1", "p2: id 1 -> 2",
                                                  "id 0: p1 -> p0"]


def test_merge_params_copies_matches_and_names_mismatches():
  target = {"enc_p": {"w": np.zeros((2, 3))}, "enc_q": {"w": np.zeros(4)}}
  merged, copied, kept = warm_start.merge_params(target, {"enc_p": {"w": np.ones((2, 3))}},
                                                 "voice x")
  assert (copied, kept) == (1, 1)
  np.testing.assert_array_equal(merged["enc_p"]["w"], np.ones((2, 3)))
  with pytest.raises(ValueError, match=r"voice x does not match config.model: "
                     r"enc_p/w: model \(2, 3\) vs source \(3, 3\)"):
    warm_start.merge_params(target, {"enc_p": {"w": np.ones((3, 3))}}, "voice x")


def test_a_single_speaker_source_speaks_for_every_speaker_at_first():
  """Warm-starting a multi-speaker model from a single-speaker voice, the speaker
  conditioning it lacks starts at zero: every speaker's audio (timing included) is the
  source voice's (random, it made a frozen duration predictor speak twice as fast)."""
  from vits_jax.convert.source import load_source
  from vits_jax.models.synthesizer import build_synthesizer, param_shapes
  source = load_source(str(tu.REPO / "tests" / "fixtures" / "piper_tiny_high.onnx"))
  single = build_synthesizer(source.config)
  config = ml_collections.ConfigDict(source.config.to_dict())
  config.data.n_speakers = config.model.n_speakers = 3
  config.model.gin_channels = 8
  multi = build_synthesizer(config)
  rng = np.random.RandomState(0)
  fresh = jax.tree_util.tree_map(lambda s: rng.normal(0, 0.1, s.shape).astype(np.float32),
                                 param_shapes(multi))
  params, _, _ = warm_start.merge_params(fresh, source.params, "voice x")
  flat = {k: v for k, v in __import__("flax").traverse_util.flatten_dict(
      params, sep="/").items() if "cond" in k}
  assert flat and any(k.endswith("weight_v") for k in flat)
  assert all(np.any(v) == k.endswith("weight_v") for k, v in flat.items()), sorted(flat)
  x, lengths = jnp.array([[5, 9, 12, 3, 7, 20, 4]]), jnp.array([7])
  kw = dict(noise_scale=0.0, noise_scale_w=0.0, length_scale=1.0)
  want, _ = single.apply({"params": source.params}, x, lengths, method="infer", **kw)
  for sid in range(3):
    got, _ = multi.apply({"params": params}, x, lengths, sid=jnp.array([sid]),
                         method="infer", **kw)
    assert got.shape == want.shape, sid
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)


# --- train.py runs --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("train_data")
  return tu.prepare(tu.make_corpus(root / "corpus"), root / "prepared")


@pytest.fixture(scope="module")
def run_a(data_dir, tmp_path_factory):
  """4 uninterrupted steps, checkpoints at 2 and 4, validation at 0, 2 and 4."""
  workdir = tmp_path_factory.mktemp("run_a")
  tu.run_train(workdir, data_dir, *EVAL)
  return workdir


def test_run_logs_checkpoints_and_learns_nothing_nonfinite(run_a):
  rows = tu.train_rows(run_a)
  assert sorted(rows) == [1, 2, 3, 4]
  for row in rows.values():
    for key in ("loss/d/total", "loss/d/real", "loss/d/fake", "loss/g/total", "loss/g/mel",
                "loss/g/kl", "loss/g/dur", "loss/g/fm", "loss/g/adv", "grad_norm/g",
                "grad_norm/d", "lr", "steps_per_sec"):
      assert np.isfinite(row[key]), (key, row)
    assert row["devices"] == 1 and row["nonfinite/total"] == 0
  # One length bucket in the corpus: the step was traced (compiled) once in 4 steps.
  assert rows[4]["jit/train_step_traces"] == 1
  config = json.loads((run_a / "config.json").read_text())
  assert config["train"]["num_steps"] == 4 and config["model"]["n_speakers"] == 3
  # The prepared data's speaker names are the run's (its voice took ids only).
  manifest = json.loads((Path(config["data"]["dir"]) / "manifest.json").read_text())
  assert config["data"]["speaker_names"] == manifest["speakers"] and manifest["speakers"]
  # A 4-step run trains on one length bucket (data.num_buckets 0: from num_steps), and
  # config.json keeps the count for a resume.
  assert config["data"]["num_buckets"] == 1
  assert sorted(int(p.name) for p in (run_a / "checkpoints").iterdir()) == [2, 4]
  # TensorBoard holds every number of metrics.jsonl, at its step (read back from the
  # event files: length-prefixed records of Event protos).
  from tensorboardX.proto import event_pb2
  board = {}
  for path in run_a.glob("events.out.tfevents.*"):
    blob, at = path.read_bytes(), 0
    while at < len(blob):
      n = int.from_bytes(blob[at:at + 8], "little")
      event = event_pb2.Event.FromString(blob[at + 12:at + 12 + n])
      at += 12 + n + 4
      for value in event.summary.value:
        if value.HasField("simple_value"):
          board[(value.tag, event.step)] = value.simple_value
  numbers = [(k, r["step"], v) for r in tu.metrics(run_a) for k, v in r.items()
             if k not in ("step", "time") and isinstance(v, (int, float))]
  assert any(isinstance(v, float) for _, _, v in numbers) and len(numbers) > 50
  for key, step, v in numbers:
    assert board.get((key, step)) == pytest.approx(v, rel=1e-6, abs=1e-30), (key, step)
  val = {r["step"]: r for r in tu.metrics(run_a) if "val/mel_l1" in r}
  assert sorted(val) == [0, 2, 4]
  for r in val.values():
    assert np.isfinite(r["val/mel_l1"]) and r["val/mel_l1"] > 0
    assert -1 <= r["val/diagonality"] <= 1 and 0 <= r["val/diag_band"] <= 1
    assert r["val/len_ratio"] > 0
    assert np.isfinite(r["val/mcd"]) and r["val/mcd"] > 0
    assert 100 <= r["val/f0_median_real"] <= 230   # the gliding tones of make_corpus
    assert "val/f0_median" in r
    if "val/wer" in r:   # (a recognizer installed) the real clips' score, once per run
      assert 0 <= r["val/wer_real"] == val[0]["val/wer_real"], r
  p2, p4 = tu.checkpoint_params(run_a, 2), tu.checkpoint_params(run_a, 4)
  for part in ("generator", "discriminator"):
    diffs = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda a, b: float(np.max(np.abs(a - b))), p2[part], p4[part]))
    assert min(diffs) > 0, part      # every tensor moved between step 2 and 4
  # The speaker table: the corpus is one speaker (id 0) of the config's 3. Its row learns;
  # the others get no gradient, so AdamW's decoupled decay alone moves them.
  t = tu_config().train
  e2, e4 = (p["generator"]["emb_g"]["weight"] for p in (p2, p4))
  moved = np.abs(e4 - e2).max(axis=1)
  decay_only = np.abs(e2).max(axis=1) * t.learning_rate * t.weight_decay * 2 * 1.5 + 1e-7
  decay = np.abs(e2).max(axis=1) * t.learning_rate * t.weight_decay * 2   # two steps' worth
  assert moved[0] > 10 * decay_only[0] and np.all(moved[1:] <= decay_only[1:]), moved
  assert np.all(moved[1:] >= 0.5 * decay[1:]), (moved, decay)   # the decay is applied


def test_validation_measures_on_known_alignments():
  """The alignment measures on alignments whose answer is known: a straight diagonal is 1
  with every frame in the band, one token for every frame far from it; mel L1 over the
  valid frames only; the length ratio is inferred over true frames."""
  from vits_jax.training import evaluation
  frames, tokens = 40, 10
  straight = np.zeros((frames, tokens))
  straight[np.arange(frames), np.arange(frames) * tokens // frames] = 1
  diag, band = evaluation.diagonality(straight, frames, tokens)
  assert diag >= 0.9 and band == 1.0   # (4 frames a token: 1 - 2 * 0.025 off the line)
  stuck = np.zeros((frames, tokens))
  stuck[:, 0] = 1
  diag, band = evaluation.diagonality(stuck, frames, tokens)
  assert diag < 0.1 and band < 0.2
  # (the padded tail, past the true frames and tokens, does not count)
  padded = np.zeros((frames + 8, tokens + 3))
  padded[:frames, :tokens] = straight
  padded[frames:, tokens:] = 1
  assert evaluation.diagonality(padded, frames, tokens) == evaluation.diagonality(
      straight, frames, tokens)
  hop, mels = 4, 3
  mel = np.zeros((2, 12, mels))
  mel_tf = np.zeros((2, 12, mels))
  mel_tf[0, :10] = 0.5     # item 0: 10 valid frames off by 0.5
  mel_tf[1, :6] = 1.0      # item 1: 6 valid frames off by 1
  mel_tf[:, 10:] = 99.0    # padding: not counted
  y_mask = (np.arange(12)[None, :, None] < np.array([10, 6])[:, None, None]).astype(float)
  attn = np.zeros((2, 12, 5))
  attn[:, :, 0] = 1
  out = dict(mel=mel, mel_tf=mel_tf, y_mask=y_mask, attn=attn, inf_frames=np.array([20, 3]))
  batch = dict(audio_lengths=np.array([10, 6]) * hop, text_lengths=np.array([5, 5]))
  got = evaluation.summarize(out, batch, hop)
  assert got["val/mel_l1"] == pytest.approx(0.75)
  assert got["val/len_ratio"] == pytest.approx((20 / 10 + 3 / 6) / 2)


def test_resume_continues_bitwise(run_a, data_dir, tmp_path):
  # run_a compiled these programs and saved them (programs.ExecutableStore): both runs (the
  # second a restart) load init, step and evaluation with no tracing, lowering or XLA
  # compilation (a key that changed from run to run would trace and compile again).
  log = {"JAX_DEBUG_LOG_MODULES": "jax._src.compiler"}
  # (the speech measures are host-side: off here, the same programs load)
  quiet = "--config.train.eval_speech_measures=False"
  first = tu.run_train(tmp_path, data_dir, "--config.train.num_steps=2", quiet, *EVAL, env=log)
  # As if killed after logging past its checkpoint, the last line half-written: the resume
  # drops those rows, so metrics.jsonl reads as one run (checked against run_a's below).
  with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
    f.write(json.dumps({"step": 3, "loss/g/total": 1.0}) + '\n{"step": 4, "loss/g/to')
  # ... and as if stopped while evaluating step 2 (saved, its evaluation never logged): the
  # resumed run evaluates step 2 before it trains on (the step list below equals run_a's).
  _drop_evaluation(tmp_path, 2)
  proc = tu.run_train(tmp_path, data_dir, quiet, *EVAL, env=log)
  assert "resuming from step 2" in proc.stdout
  # What the run trains on, as the manifest says (a line before anything else).
  manifest = json.loads((data_dir / "manifest.json").read_text())
  c = manifest["counts"]
  assert proc.stdout.startswith(f"data {data_dir}: {c['train']} training and "
                                f"{c['validation']} validation clips"), proc.stdout[:300]
  for run in (first, proc):
    for program in ("jit_counted_step", "jit_eval_fn", "jit_init_state"):
      assert f"'{program}'" not in run.stderr, (program, run.stderr[-2000:])
  rows, ref = tu.train_rows(tmp_path), tu.train_rows(run_a)
  # The restart loads step and evaluation; it reads the init program's output shapes
  # (`ExecutableStore.load_shapes`) instead of loading the program (seconds on XLA:CPU).
  assert rows[1]["jit/programs_loaded"] == 3 and rows[4]["jit/programs_loaded"] == 2
  assert [r["step"] for r in tu.metrics(tmp_path)] == [r["step"] for r in tu.metrics(run_a)]
  for step in (1, 2, 3, 4):
    assert tu.losses(rows[step]) == tu.losses(ref[step]), step
  chex.assert_trees_all_equal(tu.checkpoint_params(tmp_path, 4), tu.checkpoint_params(run_a, 4))


def test_resume_of_a_workdir_with_damage_around_its_checkpoints(run_a, data_dir, tmp_path):
  """A resume without config.json keeps its checkpoint's batch plan (it fell back to 4
  buckets) and says that its data is named otherwise than the run's; metrics.jsonl that
  cannot be written is one error line (a traceback), as is a damaged config.json beside
  checkpoints (it called the workdir another tool's)."""
  import shutil
  work = tmp_path / "w"
  shutil.copytree(run_a, work)
  saved = json.loads((work / "config.json").read_text())
  (work / "config.json").unlink()
  alias = tmp_path / "alias"   # the same folder by another name: no change
  alias.symlink_to(data_dir)
  proc = tu.run_train(work, alias, "--config.train.num_steps=5", *EVAL,
                      "--config.train.init_from=joe")
  assert "resuming from step 4" in proc.stdout and "other data" not in proc.stderr
  # init_from on a resume is not used, says so, and the run's config keeps its own start.
  assert ("note: train.init_from=joe is not used: the run resumes from its step 4 (it "
          "started from scratch)") in proc.stderr, proc.stderr[-2000:]
  assert json.loads((work / "config.json").read_text())["train"]["init_from"] == ""
  other = tmp_path / "other"   # a copy: other data, as far as the run can tell
  shutil.copytree(data_dir, other)
  proc = tu.run_train(work, other, "--config.train.num_steps=6", *EVAL)
  assert "resuming from step 5" in proc.stdout
  assert "warning: resuming on other data than the run trained on (data.dir" in proc.stderr
  assert str(other) in proc.stderr, proc.stderr[-2000:]
  # Checkpoints 2, 4, 5 and 6 were written; the micro config keeps the last 3.
  assert tu_config().train.max_to_keep == 3
  assert sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit()) == [
      4, 5, 6]
  again = json.loads((work / "config.json").read_text())
  assert again["data"]["num_buckets"] == saved["data"]["num_buckets"] == 1
  (work / "config.json").write_text("{garbage")
  proc = tu.run_train(work, data_dir, "--config.train.num_steps=7", check=False)
  assert proc.returncode == 2 and proc.stderr.strip().endswith(
      "has checkpoints and a damaged config.json: delete that file to resume (each "
      "checkpoint holds its config)"), proc.stderr[-2000:]
  (work / "config.json").write_text(json.dumps(again))
  (work / "metrics.jsonl").unlink()
  (work / "metrics.jsonl").mkdir()
  proc = tu.run_train(work, data_dir, "--config.train.num_steps=7", check=False)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1].startswith(
      f"error: cannot write {work / 'metrics.jsonl'}: "), proc.stderr[-2000:]
  # Data whose speaker names give the run's ids to other speakers is refused (it trained
  # each embedding on another speaker's clips, with a warning only about the folder).
  renamed = tmp_path / "renamed"
  shutil.copytree(data_dir, renamed)
  manifest = json.loads((renamed / "manifest.json").read_text())
  manifest["speakers"] = {"someone else": 0}
  (renamed / "manifest.json").write_text(json.dumps(manifest))
  (work / "metrics.jsonl").rmdir()
  proc = tu.run_train(work, renamed, "--config.train.num_steps=7", check=False)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert "id 0: ljspeech -> someone else" in last and "--speaker-map" in last, last
  # A lost data-position file is a damaged checkpoint, with the advice to move it away (it
  # was blamed on another number of processes).
  (work / "checkpoints" / "6" / "data" / "process_0-of-1.json").unlink()
  proc = tu.run_train(work, data_dir, "--config.train.num_steps=7", check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert "checkpoint 6 in" in last and "incomplete or damaged" in last and (
      "move" in last) and "processes" not in last, last


TWO_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}


@pytest.fixture(scope="module")
def run_two_devices(data_dir, tmp_path_factory):
  """run_a's 4 steps and evaluations on two (simulated) devices: data parallel, programs
  compiled ahead and kept in XLA's persistent cache (the program store is one-device)."""
  workdir = tmp_path_factory.mktemp("run_two_devices")
  tu.run_train(workdir, data_dir, *EVAL, env=TWO_DEVICES)
  return workdir


def test_lazy_compilation_gives_the_same_run(run_two_devices, data_dir, tmp_path):
  """Programs compiled ahead in threads (the default) train exactly as jit's lazy path.

  Compared on two devices, where no program store is used: the lazy run's jit calls find
  the ahead-compiled run's programs in XLA's persistent cache (the same lowering, the same
  key), so the test pays no second compilation; with the speech measures off (host-only,
  not part of any program) it compares every program output."""
  tu.run_train(tmp_path, data_dir, "--config.train.compile_ahead=False",
               "--config.train.eval_speech_measures=False", *EVAL, env=TWO_DEVICES)
  rows, ref = tu.train_rows(tmp_path), tu.train_rows(run_two_devices)
  assert rows[4]["devices"] == 2
  for step in (1, 2, 3, 4):
    assert tu.losses(rows[step]) == tu.losses(ref[step]), step
  val = lambda w: {r["step"]: {k: v for k, v in r.items() if k.startswith("val/")}
                   for r in tu.metrics(w) if "val/mel_l1" in r}
  got, want = val(tmp_path), val(run_two_devices)
  assert sorted(got) == [0, 2, 4] and sorted(want) == [0, 2, 4]
  for step in got:
    assert "val/mel_l1" in got[step] and "val/f0_median" not in got[step]
    assert got[step] == {k: want[step][k] for k in got[step]}, step


def _sigterm_when(proc, ready, timeout=300, settle=1.0, check=lambda: True,
                  signum=signal.SIGTERM):
  """Waits until `ready()` (or the process ends) and `settle` s more, asserts `check()`,
  then sends `signum`; (stdout, stderr, seconds from the signal to the exit)."""
  try:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
      time.sleep(0.2)
    time.sleep(settle)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert check()
    sent = time.time()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    return out, err, time.time() - sent
  finally:
    if proc.poll() is None:
      proc.kill()


# A train.py whose evaluation program takes minutes to compile (a stand-in for a full-size
# evaluation or a new bucket compiling on a slow host).
_SLOW_EVAL = """
import sys, time
from vits_jax.training import programs
submit = programs.AheadCompiler.submit
class Slow:
  def __init__(self, jitted): self.jitted = jitted
  def lower(self, *args):
    time.sleep(600)
    return self.jitted.lower(*args)
def slow_submit(self, key, jitted, *args):
  submit(self, key, Slow(jitted) if key == "eval" else jitted, *args)
programs.AheadCompiler.submit = slow_submit
load = programs.ExecutableStore.load   # (an evaluation saved by an earlier run: not here)
programs.ExecutableStore.load = lambda self, name, args: None if name == "eval" else \
    load(self, name, args)
sys.argv = ["train.py"] + sys.argv[1:]
import runpy
runpy.run_path("train.py", run_name="__main__")
"""


def _sigterm_at_step_6(script, run_a, data_dir, tmp_path, eval_every):
  """run_a's copy in tmp_path/run trained on by train.py under `script` (which patches the
  program compiler) towards step 10; SIGTERM once step 6 is logged. (proc, stdout, stderr,
  seconds from the signal to the exit)."""
  shutil.copytree(run_a, tmp_path / "run")
  cmd = [sys.executable, "-c", script] + tu.train_cmd(
      tmp_path / "run", data_dir, "--config.train.num_steps=10",
      f"--config.train.eval_every={eval_every}", "--config.train.log_every=1",
      "--config.train.checkpoint_every=100")[2:]
  proc = subprocess.Popen(cmd, cwd=tu.REPO, env=tu._env(),  # pylint: disable=protected-access
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  return (proc,) + _sigterm_when(proc, lambda: 6 in tu.train_rows(tmp_path / "run"))


def test_sigterm_while_a_program_compiles_saves_the_steps_within_seconds(run_a, data_dir,
                                                                         tmp_path):
  """Steps 5 and 6 run, then the loop waits for the evaluation program: SIGTERM saves step 6
  and exits 0 within seconds instead of waiting for the compilation."""
  proc, out, err, took = _sigterm_at_step_6(_SLOW_EVAL, run_a, data_dir, tmp_path,
                                            eval_every=6)
  assert proc.returncode == 0, err[-3000:]
  assert took < 10, took
  assert "preempted: checkpoint saved at step 6" in out + err
  saved = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir())
  assert saved[-1] == 6 and max(tu.train_rows(tmp_path / "run")) == 6
  # The saved state resumes: steps 7.. continue from it.
  tu.run_train(tmp_path / "run", data_dir, "--config.train.num_steps=7",
               "--config.train.eval_every=100", "--config.train.log_every=1")
  assert max(tu.train_rows(tmp_path / "run")) == 7


_SLOW_THIRD_STEP = """
import sys, time
from vits_jax.training import programs
get, calls = programs.AheadCompiler.get, []
def slow_get(self, key, interrupted=lambda: False, poll_s=0.25):
  calls.append(key)
  if isinstance(key, tuple) and sum(isinstance(k, tuple) for k in calls) == 3:
    while not interrupted():   # a length bucket still compiling when its batch comes
      time.sleep(0.05)
    return None
  return get(self, key, interrupted, poll_s)
programs.AheadCompiler.get = slow_get
sys.argv = ["train.py"] + sys.argv[1:]
import runpy
runpy.run_path("train.py", run_name="__main__")
"""


def test_a_stop_while_a_bucket_compiles_saves_the_data_position_before_its_batch(
    run_a, data_dir, tmp_path):
  """Steps 5 and 6 run; step 7's batch is drawn and its program still compiles when SIGTERM
  comes: step 6 is saved with the data position before that batch (it counted the batch,
  so the resumed run skipped it and trained on other data than an uninterrupted run)."""
  proc, out, err, _ = _sigterm_at_step_6(_SLOW_THIRD_STEP, run_a, data_dir, tmp_path,
                                         eval_every=100)
  assert proc.returncode == 0 and "checkpoint saved at step 6" in out + err, err[-3000:]
  position = lambda step: json.loads((tmp_path / "run" / "checkpoints" / str(step) / "data"
                                      / "process_0-of-1.json").read_text())["next_index"]
  assert position(6) == position(4) + 2


def test_ctrl_c_saves_the_steps_run_and_exits_130(run_a, data_dir, tmp_path):
  """Ctrl-C (SIGINT) in the middle of training saves the step it stops at, like SIGTERM,
  then exits 130; the checkpoint resumes."""
  shutil.copytree(run_a, tmp_path / "run")
  proc = subprocess.Popen(
      tu.train_cmd(tmp_path / "run", data_dir, "--config.train.num_steps=100000",
                   "--config.train.checkpoint_every=100000", "--config.train.log_every=1",
                   "--config.train.eval_every=1000000"),
      cwd=tu.REPO, env=tu._env(),  # pylint: disable=protected-access
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  out, err, _ = _sigterm_when(proc, lambda: max(tu.train_rows(tmp_path / "run")) >= 6,
                              settle=0.5, signum=signal.SIGINT)
  assert proc.returncode == 130, err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  saved = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir()
                 if p.name.isdigit())
  last = max(tu.train_rows(tmp_path / "run"))
  assert saved[-1] == last > 4, (saved, last)
  assert f"interrupted: checkpoint saved at step {last}" in out + err
  tu.run_train(tmp_path / "run", data_dir, f"--config.train.num_steps={last + 1}",
               "--config.train.eval_every=1000000", "--config.train.log_every=1")
  assert max(tu.train_rows(tmp_path / "run")) == last + 1


def _limit_file_size(limit):
  def apply():
    import resource
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # writes fail with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
  return apply


def test_checkpoint_on_a_full_disk_is_one_error_and_keeps_the_earlier_ones(run_a, data_dir,
                                                                          tmp_path):
  """A file-size limit stands in for a full disk: saving step 6 fails with one error line,
  exit 1, checkpoints 2 and 4 stay intact and a rerun resumes from step 4."""
  shutil.copytree(run_a, tmp_path / "run")
  before = tu.checkpoint_params(tmp_path / "run", 4)
  overrides = ("--config.train.num_steps=6", "--config.train.checkpoint_every=2",
               "--config.train.eval_every=100", "--config.train.log_every=1")
  proc = subprocess.run(
      [sys.executable, "-B", *tu.train_cmd(tmp_path / "run", data_dir, *overrides)[1:]],
      cwd=tu.REPO, env=tu._env(PYTHONDONTWRITEBYTECODE="1"),  # pylint: disable=protected-access
      capture_output=True, text=True, timeout=600, preexec_fn=_limit_file_size(64_000))
  assert proc.returncode == 1, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert "cannot save the checkpoint of step" in errors[0] and "intact" in errors[0]
  saved = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert saved == [2, 4]
  chex.assert_trees_all_equal(tu.checkpoint_params(tmp_path / "run", 4), before)
  proc = tu.run_train(tmp_path / "run", data_dir, *overrides)
  assert "resuming from step 4" in proc.stdout
  assert sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir()
                if p.name.isdigit()) == [2, 4, 6]


def test_two_devices_match_one(run_a, run_two_devices):
  rows, ref = tu.train_rows(run_two_devices), tu.train_rows(run_a)
  assert rows[2]["devices"] == 2
  for step in (1, 2):
    got, want = tu.losses(rows[step]), tu.losses(ref[step])
    assert got.keys() == want.keys()
    for k in want:
      np.testing.assert_allclose(got[k], want[k], rtol=2e-5, err_msg=f"{k} step {step}")


def test_sigterm_saves_and_exits_zero(data_dir, tmp_path):
  proc = subprocess.Popen(
      tu.train_cmd(tmp_path, data_dir, "--config.train.num_steps=100000",
                   "--config.train.checkpoint_every=100000",
                   "--config.train.eval_every=1000000"),
      cwd=tu.REPO, env=tu._env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,  # pylint: disable=protected-access
      text=True)
  try:
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
      if (tmp_path / "metrics.jsonl").exists() and tu.train_rows(tmp_path):
        break
      time.sleep(1)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, err[-3000:]
  saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir()]
  assert len(saved) == 1 and saved[0] >= max(tu.train_rows(tmp_path))
  # The checkpoint SIGTERM wrote restores (the generator, as a voice).
  from vits_jax.convert.source import load_source
  src = load_source(tmp_path)
  assert src.step == saved[0]
  assert all(np.isfinite(v).all() for v in jax.tree_util.tree_leaves(src.params))


def test_sigterm_during_the_first_compilation_exits_at_once(data_dir, tmp_path):
  """Preemption gives ~30 s; the first compilation takes minutes. With no step to save,
  SIGTERM ends the run within seconds, status 0, leaving nothing half-written."""
  proc = subprocess.Popen(
      tu.train_cmd(tmp_path / "run", data_dir, "--config.train.num_steps=100000"),
      cwd=tu.REPO, env=tu._env(VITS_JAX_XLA_CACHE=""),  # pylint: disable=protected-access
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  started = lambda: (tmp_path / "run").exists()
  nothing_logged = lambda: not (tmp_path / "run" / "metrics.jsonl").exists() or \
      not tu.train_rows(tmp_path / "run")
  # settle 2 s: inside model init / the first compilation
  _, err, took = _sigterm_when(proc, started, settle=2.0, check=nothing_logged)
  assert proc.returncode == 0, err[-3000:]
  assert took < 10, took
  assert "preempted: nothing to save" in err
  ckpts = tmp_path / "run" / "checkpoints"
  assert not ckpts.exists() or not [p for p in ckpts.iterdir() if p.name.isdigit()]


def test_init_from_piper_voice(run_a, data_dir, tmp_path):
  from vits_jax.convert import piper, torch_names
  lr = tu_config().train.learning_rate
  proc = tu.run_train(tmp_path, data_dir, f"--config.train.init_from={PIPER_MULTI}",
                      "--config.train.num_steps=1", "--config.train.checkpoint_every=1",
                      "--config.train.fit_posterior_steps=150")
  assert "generator tensors copied" in proc.stdout
  # The voice's architecture is the micro config's: the run loads run_a's step program (the
  # posterior fit runs before it, on the host's side of the store key).
  assert tu.train_rows(tmp_path)[1]["jit/programs_loaded"] >= 1
  # The voice has no posterior encoder: a fresh one is fitted to the voice's own latents.
  fit = re.search(r"posterior encoder fitted .* nll (\S+) -> (\S+)", proc.stdout)
  assert fit, proc.stdout
  assert float(fit.group(2)) < float(fit.group(1)) - 0.3
  voice = torch_names.torch_to_flax(piper.load_piper(PIPER_MULTI).state_dict)
  trained = tu.checkpoint_params(tmp_path, 1)["generator"]
  flat_v = dict(jax.tree_util.tree_flatten_with_path(voice)[0])
  flat_t = dict(jax.tree_util.tree_flatten_with_path(trained)[0])
  shared = set(flat_v) & set(flat_t)
  assert len(shared) > 100 and any("enc_q" in str(k) for k in set(flat_t) - shared)
  for k in shared:
    # One AdamW step moves a parameter by at most ~lr (plus weight decay).
    np.testing.assert_allclose(flat_t[k], flat_v[k], atol=1.5 * lr, rtol=2 * lr,
                               err_msg=str(k))


def test_init_from_other_architecture_is_a_clear_error(data_dir, tmp_path):
  proc = tu.run_train(tmp_path, data_dir, f"--config.train.init_from={PIPER_HIGH}",
                      check=False)
  assert proc.returncode == 2
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: train.init_from:") and "does not match config.model" in last


def test_bad_data_dir_is_a_clear_error(tmp_path):
  proc = tu.run_train(tmp_path / "w", tmp_path / "missing", check=False, timeout=300)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("error:")


def test_infer_cli_speaks_with_the_trained_workdir(run_a, tmp_path):
  out = tmp_path / "out.wav"
  proc = subprocess.run(
      [sys.executable, str(tu.REPO / "infer.py"), "--voice", str(run_a), "--speaker", "1",
       "--text", "Hello world.", "--out", str(out)],
      cwd=tu.REPO, env=tu._env(), capture_output=True, text=True, timeout=600)  # pylint: disable=protected-access
  assert proc.returncode == 0, proc.stderr[-3000:]
  import soundfile as sf
  wav, sr = sf.read(out, dtype="float32")
  assert sr == 22050 and len(wav) > 256 and np.all(np.isfinite(wav))
  # --step picks an earlier checkpoint (as export.py's does): its own voice.
  sys.path.insert(0, str(tu.REPO))
  import infer
  from vits_jax import load_voice
  from vits_jax.files import pcm16
  args = ["--voice", str(run_a), "--speaker", "1", "--text", "Hello world.", "--seed", "2"]
  for step in (2, 4):
    assert infer.main(args + ["--step", str(step), "--out", str(tmp_path / f"{step}.wav")]) == 0
  at = {step: sf.read(tmp_path / f"{step}.wav", dtype="int16")[0] for step in (2, 4)}
  np.testing.assert_array_equal(at[2], pcm16(load_voice(str(run_a), step=2).synthesize(
      "Hello world.", speaker=1, seed=2)))
  assert at[2].shape != at[4].shape or np.abs(at[2] - at[4]).max() > 0
  assert infer.main(args + ["--step", "3", "--out", str(tmp_path / "3.wav")]) == 2
  # --convert (a workdir keeps the posterior encoder): the file holds Voice.convert's audio
  # for the same speakers and seed; another target speaker gives other audio.
  converted = {}
  for target in ("2", "0"):   # (the second reads the recording from stdin: --convert -)
    conv = tmp_path / f"conv{target}.wav"
    with open(out, "rb") as recording:
      proc = subprocess.run(
          [sys.executable, str(tu.REPO / "infer.py"), "--voice", str(run_a), "--convert",
           str(out) if target == "2" else "-", "--source-speaker", "1", "--speaker", target,
           "--seed", "3", "--out", str(conv)],
          cwd=tu.REPO, env=tu._env(), capture_output=True, text=True, timeout=600,  # pylint: disable=protected-access
          stdin=subprocess.PIPE if target == "2" else recording)
    assert proc.returncode == 0, proc.stderr[-3000:]
    converted[target], rate = sf.read(conv, dtype="float32")
    assert rate == sr
  want = load_voice(str(run_a)).convert(wav, sr, 1, 2, seed=3)
  assert converted["2"].shape == want.shape
  np.testing.assert_allclose(converted["2"], np.clip(want, -1, 1), atol=2 / 32768, rtol=0)
  assert np.abs(converted["2"] - converted["0"]).max() > 1e-4


def test_bfloat16_step_tracks_float32(run_a, data_dir, tmp_path):
  """`model.dtype=bfloat16` (the TPU setting) from the same init on the same batches as
  run_a's float32 run (which compiled the init and the data's programs already): params and
  optimizer state stay float32, every loss of the first step is finite and near float32's,
  and the second step is finite too."""
  tu.run_train(tmp_path, data_dir, "--config.model.dtype=bfloat16",
               "--config.train.num_steps=2")
  rows16, rows32 = tu.train_rows(tmp_path), tu.train_rows(run_a)
  assert sorted(rows16) == [1, 2]
  for part in ("params", "opt_state"):
    dtypes = {np.asarray(x).dtype for x in jax.tree_util.tree_leaves(
        tu.checkpoint_params(tmp_path, 2, part)) if np.issubdtype(np.asarray(x).dtype,
                                                                   np.floating)}
    assert dtypes == {np.dtype(np.float32)}, (part, dtypes)
  for step in (1, 2):
    assert rows16[step]["nonfinite/total"] == 0
    assert all(np.isfinite(v) for k, v in rows16[step].items() if k.startswith("loss/"))
  for k in ("loss/d/total", "loss/g/mel", "loss/g/kl", "loss/g/dur", "loss/g/fm",
            "loss/g/adv", "loss/g/total"):
    a, b = rows16[1][k], rows32[1][k]
    assert abs(a - b) <= 0.05 * abs(b) + 0.05, (k, a, b)
  # ... close, but its own program: not run_a's float32 step loaded from the store
  assert [rows16[1][k] for k in sorted(rows16[1]) if k.startswith("loss/")] != \
         [rows32[1][k] for k in sorted(rows32[1]) if k.startswith("loss/")]


def test_config_file_errors_are_one_line(tmp_path):
  """A config file that fails in get_config() ('tiny.py:bogus') or has none: one line with
  the cause, no traceback (flag parsing fails before jax is imported: ~1 s a run)."""
  no_get = tmp_path / "no_get_config.py"
  no_get.write_text("x = 1\n")
  tiny = tu.REPO / "configs" / "tiny.py"
  cases = [
      (f"{tiny}:bogus", f"error: cannot load --config {tiny}:bogus: ValueError: "
                        "configs/tiny.py takes no argument or 'micro', got 'bogus'"),
      (str(no_get), f"error: cannot load --config {no_get}: the file has no get_config() "
                    "function"),
  ]
  for config, want in cases:
    proc = subprocess.run([sys.executable, str(tu.REPO / "train.py"), "--config", config,
                           "--workdir", str(tmp_path / "w")], cwd=tmp_path, env=tu._env(),  # pylint: disable=protected-access
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(want) and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "override" not in proc.stderr
  # A stray word (a setting given without its flag) is one line too, not absl's usage.
  proc = subprocess.run([sys.executable, str(tu.REPO / "train.py"), "--config", str(tiny),
                         "--workdir", str(tmp_path / "w"), "num_steps=5"], cwd=tmp_path,
                        env=tu._env(), capture_output=True, text=True, timeout=120)  # pylint: disable=protected-access
  assert proc.returncode == 2 and proc.stderr.startswith(
      "error: unexpected arguments: num_steps=5") and proc.stderr.count("\n") == 1, proc.stderr
  assert not (tmp_path / "w").exists()


def test_damaged_checkpoints_and_another_model_are_one_line_each(run_a, data_dir, tmp_path):
  """What an interrupted copy, bit rot or a resume with another config leave: one error line
  (exit 2) that names the checkpoint and the step a resume can use, nothing deleted; the
  voice of the workdir passes over a damaged latest step, with a warning."""
  import warnings
  from vits_jax.voice import load_voice
  work = tmp_path / "run"
  shutil.copytree(run_a, work)
  listing = lambda: sorted(str(p.relative_to(work)) for p in work.rglob("*"))

  def resume(*overrides):
    proc = tu.run_train(work, data_dir, *overrides, check=False)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), \
        proc.stderr[-3000:]
    return lines[0]

  (work / "checkpoints" / "9").mkdir()   # a copy that never finished
  before = listing()
  line = resume()
  assert "checkpoint 9 in" in line and "resume from step 4" in line, line
  assert listing() == before
  (work / "checkpoints" / "9").rmdir()
  line = resume("--config.model.hidden_channels=24")
  assert "different model (model.hidden_channels 16 -> 24)" in line, line
  # filter_length sizes the posterior encoder's input: a different model too, not a damaged
  # checkpoint to move away
  line = resume("--config.data.filter_length=512", "--config.data.win_length=512")
  assert "different model (data.filter_length 1024 -> 512)" in line, line
  for f in (work / "checkpoints" / "4" / "state").rglob("d/*"):   # the same size, garbage
    f.write_bytes(np.random.default_rng(0).bytes(f.stat().st_size))
  line = resume()
  assert "checkpoint 4 in" in line and "damaged" in line and "resume from step 2" in line
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    voice = load_voice(str(work))
  assert any("checkpoint 4" in str(w.message) and "using step 2" in str(w.message)
             for w in caught), [str(w.message) for w in caught]
  assert np.isfinite(voice.synthesize("Hello.")).all()
  from vits_jax.training import checkpoint
  with pytest.raises(checkpoint.CorruptCheckpoint,
                     match="checkpoint 4 in .* incomplete or damaged"):
    checkpoint.load_generator_params(str(work), step=4)
  # A checkpoint that lost only its array index (`_METADATA`), which a resume reads (it
  # knows the state's shapes): inference reads it too, the shapes from its own config.
  shutil.rmtree(work / "checkpoints" / "4")
  shutil.copytree(run_a / "checkpoints" / "4", work / "checkpoints" / "4")
  (work / "checkpoints" / "4" / "state" / "_METADATA").unlink()
  _, lost, step, _ = checkpoint.load_generator_params(str(work))
  _, whole, _, _ = checkpoint.load_generator_params(str(run_a), step=4)
  assert step == 4
  assert jax.tree_util.tree_structure(lost) == jax.tree_util.tree_structure(whole)
  for a, b in zip(jax.tree_util.tree_leaves(lost), jax.tree_util.tree_leaves(whole)):
    np.testing.assert_array_equal(a, b)
  # Bit rot that still decodes: NaN bytes inside the arrays (no save writes non-finite
  # params). Resume and inference treat it as damage too (it gave silent audio, exit 0,
  # and a resumed run of NaN steps).
  # (Written with orbax itself, so the array files decode: patched bytes may not.)
  import orbax.checkpoint as ocp
  shutil.rmtree(work / "checkpoints" / "4")
  shutil.copytree(run_a / "checkpoints" / "4", work / "checkpoints" / "4")
  state_dir = work / "checkpoints" / "4" / "state"
  writer = ocp.StandardCheckpointer()
  tree = jax.tree_util.tree_map(np.asarray, writer.restore(state_dir))
  post = tree["params"]["generator"]["dec"]["conv_post"]
  post["weight"] = np.full_like(post["weight"], np.nan)
  shutil.rmtree(state_dir)
  writer.save(state_dir, tree)
  writer.wait_until_finished()
  line = resume()
  assert "checkpoint 4 in" in line and "not finite" in line and "resume from step 2" in line
  with pytest.raises(checkpoint.CorruptCheckpoint, match="parameters are not finite"):
    checkpoint.load_generator_params(str(work), step=4)
  # A truncated array file: the fallback's warning is all the user sees (orbax's abandoned
  # read coroutines printed a traceback each, 35,000 lines).
  biggest = max((work / "checkpoints" / "4" / "state").rglob("d/*"),
                key=lambda f: f.stat().st_size)
  biggest.write_bytes(biggest.read_bytes()[:1000])
  proc = subprocess.run([sys.executable, str(tu.REPO / "infer.py"), "--voice", str(work),
                         "--text", "Hello.", "--out", str(tmp_path / "h.wav")],
                        capture_output=True, text=True, env=tu._env(), timeout=600)
  lines = proc.stderr.splitlines()
  assert proc.returncode == 0 and len(lines) == 2, proc.stderr[-2000:]
  assert "checkpoint 4" in lines[1] and "using step 2" in lines[1]


def test_a_finished_run_says_there_is_nothing_to_train(run_a, data_dir, tmp_path):
  """Resumed with train.num_steps at or below its latest step: one line saying so, exit 0,
  the checkpoints and config.json as they were (it printed 'resuming from step 4' and did
  nothing, and rewrote config.json with the lower num_steps)."""
  work = tmp_path / "run"
  shutil.copytree(run_a, work)
  before = sorted(str(p.relative_to(work)) for p in (work / "checkpoints").rglob("*"))
  config = (work / "config.json").read_bytes()
  files = sorted(p.name for p in work.iterdir())
  metrics = (work / "metrics.jsonl").read_bytes()
  proc = tu.run_train(work, data_dir, "--config.train.num_steps=2")
  assert (work / "config.json").read_bytes() == config   # the run's own settings stay
  # No progress bar, no new TensorBoard event file, metrics.jsonl as it was.
  assert sorted(p.name for p in work.iterdir()) == files
  assert (work / "metrics.jsonl").read_bytes() == metrics
  assert "step/s" not in proc.stderr and "it/s" not in proc.stderr, proc.stderr[-2000:]
  assert f"nothing to train: the run in {work} is at step 4 and train.num_steps is 2" in \
      proc.stdout and "resuming" not in proc.stdout, proc.stdout
  assert sorted(str(p.relative_to(work)) for p in (work / "checkpoints").rglob("*")) == before


def _drop_evaluation(workdir, step):
  """Removes the evaluation row of `step` from metrics.jsonl (as a stop during it leaves)."""
  path = workdir / "metrics.jsonl"
  lines = path.read_text().splitlines(keepends=True)
  keep = [l for l in lines if not (l.startswith(f'{{"step": {step}, ') and '"val/' in l)]
  assert len(keep) == len(lines) - 1
  path.write_text("".join(keep))


def test_a_finished_run_whose_last_evaluation_was_stopped_evaluates_it(run_a, data_dir,
                                                                        tmp_path):
  """A stop during the last step's evaluation saved the step unevaluated; the same command
  again evaluates it (the values the uninterrupted run logged) and trains nothing."""
  work = tmp_path / "run"
  shutil.copytree(run_a, work)
  _drop_evaluation(work, 4)
  proc = tu.run_train(work, data_dir, *EVAL)
  assert "evaluating step 4, whose evaluation was interrupted" in proc.stdout, proc.stdout
  val = lambda rows: [{k: v for k, v in r.items() if k.startswith("val/")} for r in rows
                      if any(k.startswith("val/") for k in r)]
  got, want = val(tu.metrics(work)), val(tu.metrics(run_a))
  assert [sorted(r) for r in got] == [sorted(r) for r in want] and len(got) == 3
  for g, w in zip(got, want):
    for k in w:
      assert g[k] == (w[k] if isinstance(w[k], str) else pytest.approx(w[k], rel=1e-5,
                                                                        abs=1e-6)), k
  assert [r["step"] for r in tu.metrics(work)] == [r["step"] for r in tu.metrics(run_a)]
  assert "step/s" not in proc.stderr and "it/s" not in proc.stderr, proc.stderr[-2000:]


def test_a_run_whose_last_steps_are_not_finite_is_an_error(data_dir, tmp_path):
  """A learning rate of 1e30 makes the steps non-finite (each update skipped): fewer than
  max_nonfinite_steps of them at the end of the run still end it with one error line and
  exit 1, naming the weights the last checkpoint holds (it exited 0 with a NaN loss: the
  check never saw the last step)."""
  proc = tu.run_train(tmp_path / "w", data_dir, "--config.train.learning_rate=1e30",
                      "--config.train.num_steps=3", "--config.train.checkpoint_every=3",
                      check=False)
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
  assert re.search(r"training ended at step 3 with its last ([123]) steps non-finite .*"
                   r"holds the weights of step (\d)", lines[0]), lines[0]


def test_ctrl_c_in_a_library_call_leaves_the_process_alive():
  """`train_and_evaluate` called from a notebook: Ctrl-C (the kernel's Interrupt) with
  nothing to save, and a second one, set the stop flag and no more; they ended the process,
  and with it the notebook's kernel (train.py asks for that with exit_on_signal=True)."""
  preemption = loop._Preemption(exit_process=False)  # pylint: disable=protected-access
  try:
    for _ in range(2):
      os.kill(os.getpid(), signal.SIGINT)
      deadline = time.monotonic() + 30
      while not preemption.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)   # (the watcher thread has read both)
    assert preemption.is_set() and preemption.reason == "SIGINT"
    assert preemption.exit_code == 130
  finally:
    preemption.close()


async def _gathered(read):
  """A gather of a failing read, returned unawaited once it has failed (as orbax drops it)."""
  import asyncio
  gathered = asyncio.gather(read())
  await asyncio.wait([gathered])
  return gathered


def test_read_tasks_dropped_with_a_failed_restore_stay_off_the_terminal():
  """asyncio logs 'Task (or _GatheringFuture) exception was never retrieved' when a dropped
  read of orbax's is garbage collected, possibly after the failed restore has returned
  (under load it printed 78 lines into infer.py's one warning in CI): only those records
  are dropped, also where orbax's frame is in an exception the failure wraps."""
  import logging
  from vits_jax.training import checkpoint

  def record(filename, message="Task exception was never retrieved\n"
                               "future: <Task finished name='Task-7' coro=<read() done>>"):
    namespace = {}
    exec(compile("def read():\n  raise OSError('truncated')\n", filename, "exec"), namespace)  # pylint: disable=exec-used
    try:
      namespace["read"]()
    except OSError:
      return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, None,
                               sys.exc_info())

  sep = os.sep
  assert not checkpoint._dropped_read_tasks(record(f"{sep}x{sep}orbax{sep}io.py"))  # pylint: disable=protected-access
  assert not checkpoint._dropped_read_tasks(  # pylint: disable=protected-access
      record(f"{sep}x{sep}jax{sep}experimental{sep}array_serialization{sep}t.py"))
  assert checkpoint._dropped_read_tasks(record(f"{sep}x{sep}mine.py"))  # pylint: disable=protected-access
  assert checkpoint._dropped_read_tasks(  # pylint: disable=protected-access
      record(f"{sep}x{sep}orbax{sep}io.py", "Something else failed"))
  assert not checkpoint._dropped_read_tasks(  # pylint: disable=protected-access
      record(f"{sep}x{sep}orbax{sep}io.py",
             "_GatheringFuture exception was never retrieved\nfuture: <_GatheringFuture>"))
  # The records asyncio itself logs for a dropped task and a dropped gather (their message
  # goes on with a 'future: ...' line).
  import asyncio
  import gc
  namespace = {}
  exec(compile("async def read():\n  raise OSError('truncated')\n",  # pylint: disable=exec-used
               f"{sep}x{sep}orbax{sep}io.py", "exec"), namespace)
  logged = []
  catcher = logging.Handler()
  catcher.emit = logged.append
  asyncio_log = logging.getLogger("asyncio")
  filters, level = asyncio_log.filters[:], asyncio_log.level   # (an earlier test put ours on)
  asyncio_log.filters[:] = []
  asyncio_log.setLevel(logging.ERROR)
  asyncio_log.addHandler(catcher)
  try:
    loop = asyncio.new_event_loop()
    task = loop.create_task(namespace["read"]())
    gathered = loop.run_until_complete(_gathered(namespace["read"]))
    loop.run_until_complete(asyncio.sleep(0.01))
    # A future that tensorstore failed from its own threads: no Python frames at all.
    store = loop.create_future()
    store.set_exception(ValueError('OUT_OF_RANGE: Error reading "params.w/0.0.0" in OCDBT'))
    loop.close()
    del task, gathered, store
    gc.collect()
  finally:
    asyncio_log.removeHandler(catcher)
    asyncio_log.filters[:] = filters
    asyncio_log.setLevel(level)
  kinds = sorted(r.getMessage().partition(" ")[0] for r in logged)
  assert kinds == ["Future", "Task", "_GatheringFuture"], [r.getMessage() for r in logged]
  assert not any(checkpoint._dropped_read_tasks(r) for r in logged)  # pylint: disable=protected-access
  wrapped = record(f"{sep}x{sep}orbax{sep}io.py")
  try:
    raise ValueError("read failed") from wrapped.exc_info[1]
  except ValueError:
    wrapped.exc_info = sys.exc_info()
  assert not checkpoint._dropped_read_tasks(wrapped)  # pylint: disable=protected-access
  # Another failure without frames, in another wording, is not ours to hide.
  other = logging.LogRecord("asyncio", logging.ERROR, __file__, 1,
                            "Future exception was never retrieved\nfuture: <Future>", None,
                            (ValueError, ValueError("connection reset"), None))
  assert checkpoint._dropped_read_tasks(other)  # pylint: disable=protected-access
