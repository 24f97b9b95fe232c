"""More training pieces against values computed independently (numpy), from a mutation audit
of the training code: what the step logs and sums, the int16 audio scale, the step's RNG
streams, the evaluation's alignment measures and noise scales, warm-start argument dtypes,
the posterior fit's likelihood, and metrics.jsonl's resume truncation. Fast: stand-in models
(tests/test_train.py) or the micro config's posterior encoder alone."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import test_train as tt
from vits_jax import audio
from vits_jax.models import commons
from vits_jax.training import evaluation
from vits_jax.training import metrics as metrics_lib
from vits_jax.training import posterior_fit
from vits_jax.training import state as state_lib
from vits_jax.training import step as step_lib
from vits_jax.training import warm_start


# --- The step ------------------------------------------------------------------------------

def test_waveform_reads_int16_shards_at_max_wav_value():
  """Shards store int16: the step must see [-1, 1] audio (else spectrograms 32768x louder)."""
  config = tt.tu_config()
  pcm = np.array([[0, 16384, -32768, 32767]], np.int16)
  got = np.asarray(step_lib.waveform({"audio": jnp.asarray(pcm)}, config.data))
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, pcm.astype(np.float64) / float(config.data.max_wav_value),
                             rtol=0, atol=1e-7)
  floats = np.array([[0.25, -0.5]], np.float32)   # float audio is taken as is
  np.testing.assert_array_equal(np.asarray(step_lib.waveform({"audio": floats}, config.data)),
                                floats)


def test_step_rngs_are_three_independent_streams_of_the_step():
  rng = jax.random.PRNGKey(3)
  keys = step_lib.step_rngs(rng, jnp.int32(7))
  assert sorted(keys) == ["dropout", "noise", "slice"]
  data = [tuple(np.asarray(jax.random.key_data(k) if jnp.issubdtype(k.dtype, jax.dtypes.prng_key)
                           else k).ravel()) for k in keys.values()]
  assert len(set(data)) == 3, "dropout, noise and slice must not share a key"
  other = step_lib.step_rngs(rng, jnp.int32(8))
  for name in keys:
    assert not np.array_equal(np.asarray(keys[name]), np.asarray(other[name])), name
  again = step_lib.step_rngs(rng, jnp.int32(7))
  for name in keys:
    np.testing.assert_array_equal(np.asarray(keys[name]), np.asarray(again[name]))


def test_create_train_state_keeps_the_run_key_and_starts_counters_at_zero():
  config, gen, disc, tx_g, tx_d, lr_fn, state = tt._fake_setup()
  np.testing.assert_array_equal(np.asarray(state.rng), np.asarray(jax.random.PRNGKey(1)))
  assert int(state.step) == 0 and int(state.nonfinite_streak) == 0
  assert int(state.nonfinite_total) == 0


def _np_lsgan(real_scores, fake_scores):
  r = sum(np.mean((1.0 - np.asarray(d, np.float64)) ** 2) for d in real_scores)
  f = sum(np.mean(np.asarray(d, np.float64) ** 2) for d in fake_scores)
  return r, f


def test_step_metrics_are_the_terms_it_sums_with_stft_on():
  """`loss/d/real` and `loss/d/fake` are the real and generated halves (numpy, from the
  discriminator's own scores); `loss/g/total` is the config-weighted sum of the logged
  generator terms, `loss/g/stft` included and equal to `losses.stft_loss` when
  `loss.stft` > 0; every term has its own weight; a non-finite step adds to the total."""
  from vits_jax import losses
  config, gen, disc, tx_g, tx_d, lr_fn, state = tt._fake_setup()
  config.model.n_speakers = 0
  config.loss.stft = 3.0
  config.loss.fm, config.loss.adv, config.loss.dur, config.loss.kl = 2.0, 0.5, 1.5, 0.7
  batch = tt._batch(np.random.default_rng(4))
  step = jax.jit(step_lib.make_train_step(config, gen, disc, tx_g, tx_d, lr_fn))
  new_state, m = step(state, batch)
  m = {k: np.asarray(v) for k, v in m.items()}

  # The same forward as the step (its RNG streams), then the discriminator on the window.
  data = config.data
  rngs = step_lib.step_rngs(state.rng, state.step)
  wav = step_lib.waveform(batch, data)
  spec = audio.spectrogram_from_config(wav, data, batch["audio_lengths"])
  y_hat, aux = gen.apply({"params": state.params["generator"]}, batch["text"],
                         batch["text_lengths"], spec, batch["audio_lengths"] // 256,
                         train=True, rngs=rngs)
  y = commons.slice_segments(wav[..., None], aux["ids_slice"] * 256, 1024)
  d_r, d_g, _, _ = disc.apply({"params": state.params["discriminator"]}, y, y_hat)
  real, fake = _np_lsgan(d_r, d_g)
  np.testing.assert_allclose(m["loss/d/real"], real, rtol=1e-5)
  np.testing.assert_allclose(m["loss/d/fake"], fake, rtol=1e-5)
  np.testing.assert_allclose(m["loss/d/total"], real + fake, rtol=1e-5)

  assert "loss/g/stft" in m
  np.testing.assert_allclose(m["loss/g/stft"],
                             float(losses.stft_loss(y[..., 0], y_hat[..., 0].astype(jnp.float32))),
                             rtol=1e-4)
  w = config.loss
  want = sum(float(w[k]) * float(m[f"loss/g/{k}"])
             for k in ("mel", "kl", "dur", "fm", "adv", "stft"))
  np.testing.assert_allclose(m["loss/g/total"], want, rtol=1e-5)
  np.testing.assert_allclose(m["lr"], float(lr_fn(0)), rtol=1e-7)

  # A non-finite step: skipped, and counted in both counters.
  s2, m2 = step(new_state, tt._batch(np.random.default_rng(5), nan=True))
  assert int(m2["nonfinite/skipped"]) == 1
  assert int(s2.nonfinite_total) == 1 and int(m2["nonfinite/total"]) == 1
  assert int(s2.nonfinite_streak) == 1


# --- Evaluation ----------------------------------------------------------------------------

def _np_diagonality(tokens, n_tokens):
  """Independent formula: positions at cell centres, 1 - 2 * mean |u - v|, band 10%."""
  tokens = np.asarray(tokens, np.float64)
  n = len(tokens)
  dev = [abs((tokens[t] + 0.5) / n_tokens - (t + 0.5) / n) for t in range(n)]
  return 1.0 - 2.0 * float(np.mean(dev)), float(np.mean([d <= 0.1 + 1e-12 for d in dev]))


def _hard(tokens, n_tokens, pad=(0, 0)):
  a = np.zeros((len(tokens) + pad[0], n_tokens + pad[1]))
  a[np.arange(len(tokens)), tokens] = 1
  return a


def test_diagonality_matches_the_formula_exactly():
  cases = [([0, 0, 1, 1, 2, 2, 3, 3, 4, 4], 5),          # the straight diagonal: 0.9, 1.0
           ([0, 0, 0, 0, 0, 0, 1, 2, 3, 4], 5),
           ([0, 1, 1, 1, 1, 1, 1, 1], 2),
           ([0, 0, 0, 1], 2)]
  for tokens, n_tokens in cases:
    got = evaluation.diagonality(_hard(tokens, n_tokens, pad=(3, 2)), len(tokens), n_tokens)
    np.testing.assert_allclose(got, _np_diagonality(tokens, n_tokens), rtol=0, atol=1e-12,
                               err_msg=str(tokens))
  assert evaluation.diagonality(_hard(cases[0][0], 5), 10, 5) == pytest.approx((0.9, 1.0))


def test_summarize_averages_each_measure_over_the_clips():
  a_tokens, b_tokens = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4], [0, 0, 0, 0, 0, 0, 1, 2]
  attn = np.zeros((2, 12, 6))
  attn[0] = _hard(a_tokens, 5, pad=(2, 1))
  attn[1, :8, :5] = _hard(b_tokens, 5)
  attn[1, 8:, 5] = 1          # padding frames on a padding token: not counted
  hop = 4
  mel = np.zeros((2, 12, 3))
  y_mask = (np.arange(12)[None, :, None] < np.array([10, 8])[:, None, None]).astype(float)
  out = dict(mel=mel, mel_tf=mel + 0.25, y_mask=y_mask, attn=attn,
             inf_frames=np.array([10, 4]))
  batch = dict(audio_lengths=np.array([10, 8]) * hop, text_lengths=np.array([5, 5]))
  got = evaluation.summarize(out, batch, hop)
  da, db = _np_diagonality(a_tokens, 5), _np_diagonality(b_tokens, 5)
  assert da != db
  assert got["val/diagonality"] == pytest.approx((da[0] + db[0]) / 2, abs=1e-12)
  assert got["val/diag_band"] == pytest.approx((da[1] + db[1]) / 2, abs=1e-12)
  assert got["val/mel_l1"] == pytest.approx(0.25)
  assert got["val/len_ratio"] == pytest.approx((10 / 10 + 4 / 8) / 2)


class _RecordingGenerator:
  """Stands in for SynthesizerTrn in `make_eval_fn`: records each call's arguments."""

  def __init__(self, frames):
    self.frames, self.calls = frames, []

  def apply(self, variables, *args, method=None, **kwargs):
    self.calls.append((method, args, kwargs))
    b = args[0].shape[0]
    y_mask = jnp.ones((b, self.frames, 1))
    wav = jnp.zeros((b, self.frames * 256, 1))
    if method is None:   # the training forward
      return None, dict(attn=jnp.zeros((b, self.frames, 4)), y_mask=y_mask,
                        m_p=jnp.full((b, self.frames, 2), 1.5),
                        logs_p=jnp.full((b, self.frames, 2), -0.5))
    if method == "decode_latent":
      return wav, None
    return wav, dict(attn=jnp.zeros((b, self.frames, 4)), y_mask=y_mask)


def test_eval_fn_decodes_with_the_documented_noise_and_no_dropout():
  config = tt.tu_config()
  config.model.n_speakers = 0
  gen = _RecordingGenerator(frames=12)
  batch = tt._batch(np.random.default_rng(0))
  evaluation.make_eval_fn(config, gen, max_infer_frames=24)({"w": jnp.zeros(1)}, batch)
  calls = {method: (args, kwargs) for method, args, kwargs in gen.calls}
  assert set(calls) == {None, "decode_latent", "infer"}
  assert calls[None][1]["train"] is False
  np.testing.assert_array_equal(np.asarray(calls[None][0][3]),
                                np.asarray(batch["audio_lengths"]) // 256)
  args, kwargs = calls["decode_latent"]
  assert kwargs["noise_scale"] == pytest.approx(0.667)
  np.testing.assert_array_equal(np.asarray(args[0]), 1.5)    # the prior's mean and log-std
  np.testing.assert_array_equal(np.asarray(args[1]), -0.5)
  kwargs = calls["infer"][1]
  assert kwargs["noise_scale"] == pytest.approx(0.667)
  assert kwargs["noise_scale_w"] == pytest.approx(0.8)
  assert kwargs["max_len"] == 24


# --- Fine-tuning ---------------------------------------------------------------------------

def test_init_args_keep_float32_values_exactly():
  rng = np.random.RandomState(0)
  w = (rng.randn(4, 3) * 1e-3 + 1.0).astype(np.float32)   # not representable in float16
  src = {"enc_p": {"w": w, "ids": np.arange(3, dtype=np.int32)},
         "dec": {"b": np.float64(0.1) * np.ones(2)}}
  got = warm_start.init_args(src)
  assert set(got) == {"enc_p/w", "enc_p/ids", "dec/b"}
  assert got["enc_p/w"].dtype == np.float32
  np.testing.assert_array_equal(got["enc_p/w"], w)
  assert got["enc_p/ids"].dtype == np.int32
  assert got["dec/b"].dtype == np.float32


def test_merge_params_gives_the_targets_dtypes_and_zeroes_only_missing_conditioning():
  target = {"enc_p": {"w": np.zeros((2,), np.float32)},
            "dec": {"cond": {"weight_g": np.ones(3, np.float32),
                             "weight_v": np.ones(3, np.float32),
                             "bias": np.ones(3, np.float32)},
                    "ups": {"bias": np.ones(3, np.float32)}}}
  source = {"enc_p": {"w": np.array([1.0, 2.0], np.float64)}}
  merged, copied, kept = warm_start.merge_params(target, source, "src")
  assert (copied, kept) == (1, 4)
  assert merged["enc_p"]["w"].dtype == np.float32
  np.testing.assert_array_equal(merged["enc_p"]["w"], [1.0, 2.0])
  cond = merged["dec"]["cond"]
  assert not np.any(cond["weight_g"]) and not np.any(cond["bias"])
  np.testing.assert_array_equal(cond["weight_v"], 1.0)              # direction kept
  np.testing.assert_array_equal(merged["dec"]["ups"]["bias"], 1.0)  # not conditioning


def test_posterior_nll_is_the_masked_gaussian_nll_per_value():
  """`posterior_nll` against numpy: sum over valid frames and channels of
  logs_q + (z - m_q)^2 / (2 exp(2 logs_q)), over valid frames x channels."""
  from vits_jax.models.synthesizer import build_synthesizer, param_shapes
  config = tt.tu_config()
  config.model.n_speakers = 0
  model = build_synthesizer(config)
  rng = np.random.RandomState(1)
  params = jax.tree_util.tree_map(lambda s: rng.normal(0, 0.2, s.shape).astype(np.float32),
                                  param_shapes(model))
  f = int(config.data.filter_length) // 2 + 1
  spec = np.abs(rng.randn(2, 16, f)).astype(np.float32)
  lengths = np.array([16, 9], np.int32)
  c = model.inter_channels
  z = rng.randn(2, 16, c).astype(np.float32)
  z[1, 9:] = 100.0                                   # padding: must not count
  sid = np.zeros((2,), np.int32)
  got = float(posterior_fit.posterior_nll(model, params, spec, z, lengths, sid))

  def stats(m, y, yl):
    return m.enc_q(y, yl, noise=jnp.zeros(y.shape[:2] + (c,), jnp.float32))
  _, m_q, logs_q, _ = model.apply({"params": params}, spec, lengths, method=stats)
  m_q, logs_q = np.asarray(m_q, np.float64), np.asarray(logs_q, np.float64)
  assert np.std(logs_q[0]) > 1e-3        # (a scale that matters)
  total, count = 0.0, 0
  for b in range(2):
    n = lengths[b]
    d = z[b, :n].astype(np.float64) - m_q[b, :n]
    total += np.sum(logs_q[b, :n] + 0.5 * d ** 2 * np.exp(-2 * logs_q[b, :n]))
    count += n * c
  np.testing.assert_allclose(got, total / count, rtol=1e-4)


# --- metrics.jsonl -------------------------------------------------------------------------

def test_metric_writer_resume_keeps_rows_up_to_the_step_and_writes_valid_json(tmp_path):
  w = metrics_lib.MetricWriter(str(tmp_path))
  for step in range(1, 6):
    w.write_scalars(step, {"loss": np.float32(step), "n": np.int32(step)})
  w.close()
  with open(tmp_path / metrics_lib.METRICS_FILE, "a") as f:
    f.write('{"step": 6, "loss"')                 # a line a kill left half-written
  w = metrics_lib.MetricWriter(str(tmp_path), resume_step=3)
  w.write_scalars(4, {"loss": float("nan"), "inf": np.float32(np.inf)})
  w.close()
  rows = [json.loads(line) for line in (tmp_path / metrics_lib.METRICS_FILE).read_text()
          .splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert rows[2]["loss"] == 3.0 and rows[2]["n"] == 3 and isinstance(rows[2]["n"], int)
  assert rows[3]["loss"] == "nan" and rows[3]["inf"] == "inf"
