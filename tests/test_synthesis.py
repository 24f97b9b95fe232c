"""Windowed synthesis (vits_jax.inference): windows equal whole decoding, streaming equals
one-shot synthesis, Voice equals model.infer with the noise on, a few programs for many
lines, voice conversion against the official code.

Uses the tiny Piper export (tests/fixtures/make_piper_tiny.py) and the official-code
fixture; a small window (16 frames) puts many window boundaries into short utterances.
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vits_jax import load_voice
from vits_jax import inference
from vits_jax.voice import Voice

FIXTURES = Path(__file__).parent / "fixtures"
MULTI = FIXTURES / "piper_tiny_multi.onnx"
WINDOW = 16


@pytest.fixture(scope="module")
def multi():
  return load_voice(MULTI)


def _whole(voice, m, logs, seeds, sid, noise_scale, key):
  """Reference: `decode_latent` on whole utterances (a padded batch, no windows)."""
  t = max(len(a) for a in m)
  b = len(m)
  mm = np.zeros((b, t, m[0].shape[1]), np.float32)
  ll = np.zeros_like(mm)
  mask = np.zeros((b, t, 1), np.float32)
  for i, (a, c) in enumerate(zip(m, logs)):
    mm[i, :len(a)], ll[i, :len(a)], mask[i, :len(a)] = a, c, 1.0
  o, _ = voice.model.apply({"params": voice.params}, mm, ll, mask,
                           None if sid is None else np.full((b,), sid, np.int32),
                           noise_scale=noise_scale, seeds=np.asarray(seeds, np.int32), key=key,
                           method="decode_latent")
  return [np.asarray(o)[i, :len(a) * voice.hop_length, 0] for i, a in enumerate(m)]


def test_margins_follow_the_config(multi):
  model = multi.model
  flow, dec = model.latent_margins()
  # Flow: 4 couplings of 4 WN layers, kernel 5, dilation 1 -> 2 frames each side per layer.
  assert flow == 4 * 4 * 2
  # Decoder: conv_pre (3 frames) plus the stages; the widest resblock (k=7, d=3, 12) at
  # 8 samples per frame alone reaches (3 * 3 + 3 * 12) / 8 frames.
  assert 3 + (3 * 3 + 3 * 12) / 8 <= dec <= 16
  wider = model.clone(flow_n_layers=6, resblock_dilation_sizes=((1, 2), (2, 6), (3, 24)))
  assert wider.latent_margins()[0] == 4 * 6 * 2 and wider.latent_margins()[1] > dec
  assert 1 < model.isolation_gap() < dec
  plan = inference.plan_for(model, WINDOW)
  assert plan.span == WINDOW + 2 * (flow + dec) and plan.hop == 256


@pytest.mark.parametrize("noise_scale", [0.0, 0.8])
def test_windows_equal_whole_decoding(multi, noise_scale):
  """Utterances of 1 frame, a window minus one, one window, one plus one and many, laid on
  one tape and decoded in 16-frame windows: each equals its whole decode (same length)."""
  rng = np.random.RandomState(0)
  c = multi.model.inter_channels
  lengths = [1, WINDOW - 1, WINDOW, WINDOW + 1, 7 * WINDOW + 5, 2]
  m = [rng.randn(n, c).astype(np.float32) for n in lengths]
  logs = [0.3 * rng.randn(n, c).astype(np.float32) for n in lengths]
  seeds = [3, 1, 4, 1, 5, 9]
  options = inference.Options(speaker_id=2, noise_scale=noise_scale, seed=11, batch_size=1)
  key = jax.random.PRNGKey(11)
  # Frames as tokens of duration 1; two groups, so the tape also grows between windows.
  items = [(i, (m[i], logs[i], np.ones(n, np.int64)), seeds[i]) for i, n in enumerate(lengths)]
  pieces, durs = {}, {}
  for i, piece, dur in inference.decode_tokens(multi.model, multi.params,
                                               [items[:3], items[3:]], options, WINDOW):
    pieces.setdefault(i, []).append(piece)
    durs.setdefault(i, []).append(dur)
  want = _whole(multi, m, logs, seeds, 2, noise_scale, key)
  for i, n in enumerate(lengths):
    # Each utterance is complete exactly once, on its last piece, which carries its
    # durations. (On this shared tape the gaps shift the n = WINDOW one off the window
    # edges; one alone that ends on an edge: test_short_last_windows_...)
    assert all(d is None for d in durs[i][:-1]), (i, durs[i])
    np.testing.assert_array_equal(durs[i][-1], np.ones(n))
    got = np.concatenate(pieces[i])
    assert got.shape == (n * multi.hop_length,)
    np.testing.assert_allclose(got, want[i], atol=1e-5, rtol=0)
  assert len(pieces[4]) >= 7  # delivered window by window
  # Margins matter: with none, the frames at window edges differ.
  plan = inference.plan_for(multi.model, WINDOW)
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(inference, "plan_for", lambda model, window=None: inference.Plan(
        plan.window, 0, 0, plan.gap, plan.hop))
    cut = [p for i, p, _ in inference.decode_tokens(multi.model, multi.params, [items[4:5]],
                                                    options, WINDOW)]
  assert np.abs(np.concatenate(cut) - want[4]).max() > 1e-3


def test_short_last_windows_run_small_and_equal_whole_decoding(multi, monkeypatch):
  """A window whose sentences end early in it (here each utterance's last window, decoded
  alone) runs the smallest core size that holds them (`tail_cores`: quarters of the window),
  inside the one latent program, and still equals the whole decode."""
  plan = inference.plan_for(multi.model, WINDOW)
  sizes = inference.tail_cores(plan, WINDOW)
  assert sizes == (4, 8, 12, 16)
  assert inference.tail_cores(inference.dataclasses.replace(plan, lead=5), 5) == (5,)
  ran = []
  real_run = inference._run

  def spy(fn, model, static, params, *args):
    if fn is inference._latent_program:
      ran.append(static[2][int(args[-1])])
    return real_run(fn, model, static, params, *args)

  monkeypatch.setattr(inference, "_run", spy)
  rng = np.random.RandomState(2)
  c = multi.model.inter_channels
  options = inference.Options(speaker_id=0, noise_scale=0.8, seed=3, batch_size=1)
  for n in (1, 4, 5, 9, 12, 13, 16, 2 * WINDOW + 7):
    m = rng.randn(n, c).astype(np.float32)
    logs = 0.3 * rng.randn(n, c).astype(np.float32)
    del ran[:]
    with inference.record_programs() as used:
      out = list(inference.decode_tokens(
          multi.model, multi.params, [[(0, (m, logs, np.ones(n, np.int64)), 4)]], options,
          WINDOW))
    got = np.concatenate([p for _, p, _ in out])
    assert len(used) == 1
    # Complete once, on the last piece (n = 16 and 12 end on a window's or a core's edge).
    assert all(d is None for _, _, d in out[:-1]), n
    np.testing.assert_array_equal(out[-1][2], np.ones(n))
    tail = n - WINDOW * ((n - 1) // WINDOW)
    assert ran[-1] == min(s for s in sizes if s >= tail), (n, ran)
    assert all(s == WINDOW for s in ran[:-1])
    want = _whole(multi, [m], [logs], [4], 0, 0.8, jax.random.PRNGKey(3))[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("first", [7 * WINDOW + 5, WINDOW + 1, WINDOW])
def test_short_lead_window_equals_whole_decoding(multi, first):
  """A stream whose first sentence is longer than a window starts with a `lead`-frame
  window (earlier first audio); every sentence still equals its whole decode. A first
  sentence of at most one window keeps one window size."""
  rng = np.random.RandomState(1)
  c = multi.model.inter_channels
  lead = 5
  lengths = [first, 1, WINDOW - 1, WINDOW + 1, 3 * WINDOW + 2]
  m = [rng.randn(n, c).astype(np.float32) for n in lengths]
  logs = [0.3 * rng.randn(n, c).astype(np.float32) for n in lengths]
  seeds = [2, 7, 1, 8, 2]
  options = inference.Options(speaker_id=1, noise_scale=0.8, seed=5, batch_size=4)
  items = [(i, (m[i], logs[i], np.ones(n, np.int64)), seeds[i]) for i, n in enumerate(lengths)]
  pieces = {}
  for i, piece, _ in inference.decode_tokens(multi.model, multi.params, [items[:2], items[2:]],
                                             options, WINDOW, lead=lead):
    pieces.setdefault(i, []).append(piece)
  hop = multi.hop_length
  assert len(pieces[0][0]) == (lead if first > WINDOW else min(first, WINDOW)) * hop
  want = _whole(multi, m, logs, seeds, 1, 0.8, jax.random.PRNGKey(5))
  for i, n in enumerate(lengths):
    got = np.concatenate(pieces[i])
    assert got.shape == (n * hop,)
    np.testing.assert_allclose(got, want[i], atol=1e-5, rtol=0)


def test_voice_equals_model_infer_with_noise(multi):
  """Voice synthesis (text side, tape, windows) is `model.infer` with the same key."""
  rng = np.random.RandomState(0)
  ids = [list(rng.randint(1, 150, n)) for n in (7, 40)]
  kw = dict(noise_scale=0.667, noise_scale_w=0.8, length_scale=1.2)
  got = multi.synthesize_ids(ids, 1, seed=5, seeds=[3, 4], **kw)
  x = np.zeros((2, 40), np.int32)
  for i, s in enumerate(ids):
    x[i, :len(s)] = s
  o, aux = multi.model.apply({"params": multi.params}, jnp.asarray(x), jnp.array([7, 40]),
                             sid=jnp.array([1, 1]), seeds=jnp.array([3, 4]),
                             key=jax.random.PRNGKey(5), method="infer", **kw)
  for i in range(2):
    n = int(aux["y_mask"][i].sum()) * multi.hop_length
    assert got[i].shape == (n,)
    np.testing.assert_allclose(got[i], np.asarray(o)[i, :n, 0], atol=1e-5, rtol=0)
  other = multi.synthesize_ids(ids[:1], 1, seed=6, seeds=[3], **kw)[0]
  assert other.shape != got[0].shape or np.abs(other - got[0]).max() > 1e-3


def test_stream_equals_synthesize(multi, monkeypatch):
  monkeypatch.setattr(inference, "WINDOW_FRAMES", WINDOW)
  monkeypatch.setattr(inference, "LEAD_FRAMES", 5)   # the first sentence is > WINDOW frames
  text = ("The birch canoe slid on the smooth planks. Glue the sheet to the dark blue "
          "background.\n\nIt is easy to tell the depth of a well!")
  kw = dict(speaker="bob", noise_scale=0.667, noise_scale_w=0.8, seed=2,
            sentence_silence=0.1)
  whole, durations = multi.synthesize(text, with_durations=True, **kw)
  chunks = list(multi.stream(text, **kw))
  assert all(c.dtype == np.float32 for c in chunks)
  streamed = np.concatenate(chunks)
  assert len(chunks[0]) == 5 * multi.hop_length   # the short first window
  assert streamed.shape == whole.shape
  np.testing.assert_allclose(streamed, whole, atol=1e-5, rtol=0)
  # Three sentences, delivered in many pieces (windows inside sentences), with the two
  # pauses between them.
  assert len(durations) == 3 and len(chunks) > 3 + 2
  frames = sum(int(d.sum()) for d in durations)
  assert whole.size == frames * multi.hop_length + 2 * 1600
  ids = multi.text_to_sentence_ids(text)   # (read a paragraph at a time, as synthesis does)
  assert ids == [i for block in text.split("\n\n") for i in multi.text_to_sentence_ids(block)]
  assert [len(d) for d in durations] == [len(i) for i in ids]
  # Checked when called, not at the first piece (a generator would wait until then).
  with pytest.raises(ValueError, match="text is empty"):
    multi.stream("   ")
  with pytest.raises(ValueError, match="length_scale"):
    multi.stream("Hi.", length_scale=-1)


def test_windows_in_flight_overlap_and_equal_one_at_a_time(multi, monkeypatch):
  """Two decoder windows run at once (threads), delivered in order: the same audio to the
  bit as one window at a time, for a batch of lines and for a stream."""
  monkeypatch.setattr(inference, "WINDOW_FRAMES", WINDOW)
  texts = ["The birch canoe slid on the smooth planks.", "Hello.",
           "Glue the sheet to the dark blue background. Four hours of steady work faced us."]
  kw = dict(speaker="bob", noise_scale=0.667, noise_scale_w=0.8, seed=3)
  real = inference._latent_side
  lock = __import__("threading").Lock()
  active, most = [0], [0]

  def counted(*args):
    with lock:
      active[0] += 1
      most[0] = max(most[0], active[0])
    try:
      return real(*args)
    finally:
      with lock:
        active[0] -= 1

  monkeypatch.setattr(inference, "_latent_side", counted)
  monkeypatch.setattr(inference, "WINDOWS_IN_FLIGHT", 1)
  one = multi.synthesize_batch(texts, **kw)
  one_stream = list(multi.stream(texts[2], **kw))
  assert most[0] == 1
  monkeypatch.setattr(inference, "WINDOWS_IN_FLIGHT", 2)
  two = multi.synthesize_batch(texts, **kw)
  two_stream = list(multi.stream(texts[2], **kw))
  assert most[0] == 2 and active[0] == 0
  for a, b in zip(one, two):
    np.testing.assert_array_equal(a, b)
  assert len(one_stream) == len(two_stream) > 2
  for a, b in zip(one_stream, two_stream):
    np.testing.assert_array_equal(a, b)


def test_few_programs_for_many_lines(multi, monkeypatch):
  """60 varied lines compile at most 6 programs, at batch 1 and at batch 16; a second run
  traces nothing."""
  rng = np.random.RandomState(1)
  words = ("time person year way day thing man world life hand part child eye woman place "
           "work week case point government company number group problem fact").split()
  lines = [" ".join(rng.choice(words, rng.randint(2, 30))).capitalize() + "."
           for _ in range(60)]
  for batch_size in (1, 16):
    with inference.record_programs() as used:
      audio = multi.synthesize_batch(lines, batch_size=batch_size, seed=1)
    assert len(audio) == 60 and len(used) <= 6, sorted(used)
    assert sum(1 for k in used if k[1] == "latent") == 1
  traced = multi.trace_count
  again = multi.synthesize_batch(lines, batch_size=16, seed=1)
  assert multi.trace_count == traced
  for a, b in zip(again, audio):
    np.testing.assert_array_equal(a, b)
  # As on an accelerator, where calls batch sentences and windows (CPU runs them one at a
  # time): still one latent program, the job's last partial call padded to its batch (it
  # compiled one more per remainder's bucket), and the same audio to float rounding.
  monkeypatch.delitem(inference.MAX_TEXT_BATCH, "cpu")
  monkeypatch.delitem(inference.MAX_WINDOW_BATCH, "cpu")
  with inference.record_programs() as used:   # (41 lines: a last call of fewer than 16)
    batched = multi.synthesize_batch(lines[:41], batch_size=16, seed=1)
  assert len(used) <= 6 and [k[2][0] for k in used if k[1] == "latent"] == [16], sorted(used)
  for a, b in zip(batched, audio):
    assert a.shape == b.shape and np.abs(a - b).max() <= 1e-6


def _official_voice():
  from vits_jax.convert import torch_names
  from vits_jax.models.synthesizer import SynthesizerTrn
  from vits_jax.text import get_frontend
  data = np.load(FIXTURES / "official_rb2_sdp_ms.npz")
  config = json.loads(str(data["config"]))
  config["segment_frames"] = config.pop("segment_size")   # the official name, in frames
  sd = {k[3:]: data[k].astype(np.float32) for k in data.files if k.startswith("sd/")}
  model = SynthesizerTrn(**{k: tuple(map(tuple, v)) if k == "resblock_dilation_sizes" else
                            tuple(v) if isinstance(v, list) else v for k, v in config.items()})
  golden = np.load(FIXTURES / "official_vc_golden.npz")
  return Voice(model, torch_names.torch_to_flax(sd), get_frontend("vits"),
               int(golden["rate"]), name="official_rb2_sdp_ms"), golden


def test_voice_conversion_matches_official():
  voice, golden = _official_voice()
  wav = golden["wav"]
  out = voice.convert(wav, int(golden["rate"]), int(golden["sid_src"]),
                      int(golden["sid_tgt"]))
  assert out.shape == golden["o"].shape
  np.testing.assert_allclose(out, golden["o"], atol=1e-4, rtol=0)
  # The model-level method on the official spectrogram gives the same.
  spec = golden["spec"]
  o, _ = voice.model.apply({"params": voice.params}, spec, np.array([spec.shape[1]]),
                           np.array([int(golden["sid_src"])]), np.array([int(golden["sid_tgt"])]),
                           noise_scale=0.0, method="voice_conversion")
  np.testing.assert_allclose(np.asarray(o)[0, :, 0], golden["o"], atol=1e-4, rtol=0)
  # Resampled input: same length in the voice's samples; another target changes it.
  up = voice.convert(np.repeat(wav, 2), 2 * int(golden["rate"]), 1, 3)
  assert abs(up.size - wav.size) <= voice.hop_length
  assert np.abs(voice.convert(wav, int(golden["rate"]), 1, 0) - out).max() > 1e-3


def test_voice_conversion_errors(multi):
  voice, golden = _official_voice()
  wav, rate = golden["wav"], int(golden["rate"])
  with pytest.raises(ValueError, match="speaker id 9 out of range"):
    voice.convert(wav, rate, 1, 9)
  with pytest.raises(ValueError, match="too short"):
    voice.convert(wav[:3], rate, 1, 2)
  with pytest.raises(ValueError, match="single speaker"):
    load_voice(FIXTURES / "piper_tiny_high.onnx").convert(wav, rate, 0, 0)
  with pytest.raises(ValueError, match="posterior encoder"):
    multi.convert(wav, rate, 0, 1)  # Piper exports drop the posterior encoder
  # A hostile header: a few KB said to be at 1 Hz would resample to hours of audio.
  with pytest.raises(ValueError, match="at 1 Hz is not speech audio"):
    voice.convert(wav[:3000], 1, 1, 2)
  from vits_jax.voice import MAX_CONVERT_MINUTES
  long = np.zeros(int((MAX_CONVERT_MINUTES + 1) * 60 * 4000), np.float32)
  with pytest.raises(ValueError, match=f"lasts 21.0 minutes.*up to {MAX_CONVERT_MINUTES}"):
    voice.convert(long, 4000, 1, 2)
  # Samples of another scale: PCM values as floats were refused nowhere (past ~1e17 the
  # result was NaN, written as a silent WAV with exit 0).
  with pytest.raises(ValueError, match="its peak is 1e\\+20"):
    voice.convert(wav / np.abs(wav).max() * 1e20, rate, 1, 2)
  # Odd arguments through the API: each a ValueError naming it (a TypeError, a silently
  # truncated rate, a dropped imaginary part, NaN audio called "not mono" before).
  with pytest.raises(ValueError, match="whole number of Hz"):
    voice.convert(wav, rate + 0.5, 1, 2)
  with pytest.raises(ValueError, match="whole number of Hz"):
    voice.convert(wav, str(rate), 1, 2)
  with pytest.raises(ValueError, match="real-valued samples"):
    voice.convert(wav.astype(np.complex64), rate, 1, 2)
  with pytest.raises(ValueError, match="holds 1 NaN or infinite"):
    voice.convert(np.where(np.arange(wav.size) == 5, np.nan, wav), rate, 1, 2)
  with pytest.raises(ValueError, match="too short"):
    voice.convert(np.zeros((0, 2), np.float32), rate, 1, 2)


def test_voice_conversion_takes_pcm_and_either_channel_layout():
  """int16 PCM is the same recording as its float waveform, and [C, T] the same as [T, C]
  (it was read as 2 samples of a T-channel recording)."""
  voice, golden = _official_voice()
  wav, rate = golden["wav"].astype(np.float32), int(golden["rate"])
  pcm = np.round(np.clip(wav, -1, 32767 / 32768) * 32768).astype(np.int16)
  want = voice.convert(pcm.astype(np.float32) / 32768, rate, 1, 2)
  # noise_scale None is the default's posterior mean (it raised a TypeError), a float rate
  # that is a whole number the same rate
  np.testing.assert_array_equal(voice.convert(pcm.astype(np.float32) / 32768, float(rate), 1,
                                              2, noise_scale=None), want)
  # The seed draws the posterior sample: it matters with noise, and only then.
  np.testing.assert_array_equal(voice.convert(pcm, rate, 1, 2, seed=4), want)
  noisy = voice.convert(pcm, rate, 1, 2, noise_scale=1.0, seed=3)
  np.testing.assert_array_equal(noisy, voice.convert(pcm, rate, 1, 2, noise_scale=1.0, seed=3))
  assert np.abs(noisy - voice.convert(pcm, rate, 1, 2, noise_scale=1.0, seed=4)).max() > 1e-4
  assert np.abs(noisy - want).max() > 1e-4
  np.testing.assert_array_equal(voice.convert(pcm, rate, 1, 2), want)
  stereo = np.stack([wav, wav], 1)
  np.testing.assert_array_equal(voice.convert(stereo.T, rate, 1, 2),
                                voice.convert(stereo, rate, 1, 2))


_SHARDED_SCRIPT = """
import sys, numpy as np, jax
from vits_jax import load_voice
assert jax.local_device_count() == 4, jax.local_devices()
voice = load_voice(sys.argv[1])
audio = voice.synthesize_batch(sys.argv[3:], speaker=1, seed=4, batch_size=4)
np.savez(sys.argv[2], *audio)
"""


def test_windows_sharded_over_devices_equal_one_device(multi, tmp_path):
  """With 4 (simulated) devices, text batches and window batches are split over a mesh of
  all of them; the audio equals one device's."""
  import os
  import subprocess
  import sys
  lines = ["The birch canoe slid on the smooth planks.", "Hello there.",
           "It is easy to tell the depth of a well. These days a chicken leg is a rare dish."]
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4",
             PYTHONPATH=str(Path(__file__).parents[1]))
  out = tmp_path / "sharded.npz"
  proc = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT, str(MULTI), str(out), *lines],
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  sharded = np.load(out)
  alone = multi.synthesize_batch(lines, speaker=1, seed=4, batch_size=4)
  for k, a in enumerate(alone):
    b = sharded[f"arr_{k}"]
    assert b.shape == a.shape
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)


_EXPORT_SCRIPT = """
import sys, numpy as np
from vits_jax import load_voice
if sys.argv[3] == "damaged_executables":
  from vits_jax.models.synthesizer import SynthesizerTrn
  def traced(*args, **kwargs):
    raise AssertionError("the model was traced")
  SynthesizerTrn.encode_text = SynthesizerTrn.decode_latent = traced
if sys.argv[3] == "executables_only":
  import jax.export
  def lowered(*args, **kwargs):
    raise AssertionError("an exported program was lowered")
  jax.export.deserialize = lowered
from vits_jax import inference
import threading
queued, builders = [], []
preload, build = inference._preload, inference._build
inference._preload = lambda *args: queued.append(preload(*args)) or queued[-1]
inference._build = lambda *args: builders.append(threading.current_thread().name) or build(*args)
voice = load_voice(sys.argv[1])
text = ("Hello there. A second sentence, a good deal longer than the first one, which "
        "needs a larger bucket of ids.")
if sys.argv[3] == "executables_only":   # a stream reads its first sentence to preload
  streamed = np.concatenate(list(voice.stream(text, speaker=2, seed=3)))
audio = voice.synthesize(text, speaker=2, seed=3)
np.save(sys.argv[2], audio)
assert not inference._PENDING, "a preloaded program was never used"
import jax   # builds in two threads (windows in flight) leave XLA's cache switched on
assert jax.config.jax_enable_compilation_cache, "the compilation cache was left off"
if sys.argv[3] == "trace":  # an empty cache: both sentences' programs built ahead, side by side
  assert queued == [3] and len(builders) == 3, (queued, builders)
  assert all(name.startswith("load") for name in builders), builders
if sys.argv[3] == "executables_only":  # nothing traced: the model was never even built
  assert "flax" not in sys.modules, "flax was imported"
  # the stream: the first sentence's text program and the latent one, loaded ahead (the
  # second sentence's on first use); then the batch finds all three loaded
  assert queued == [2, 0], queued
  np.testing.assert_array_equal(streamed, audio)
"""


def test_cached_programs_load_in_a_new_process_without_tracing(tmp_path):
  """The first process traces its programs and saves them (exported and compiled) in the
  cache, building them ahead in background threads; a second one runs the compiled executables with no tracing or lowering (nor
  Flax imported), loaded ahead in background threads; with the
  executables damaged, a third lowers the exported programs (still no tracing) and saves
  them again; with the two text programs' executables swapped (they load, but do not run
  on these shapes), a fourth drops them and builds afresh. All four speak the same
  samples."""
  import hashlib
  import os
  import subprocess
  import sys
  env = dict(os.environ, JAX_PLATFORMS="cpu", VITS_JAX_XLA_CACHE=str(tmp_path / "cache"),
             PYTHONPATH=str(Path(__file__).parents[1]))
  programs = tmp_path / "cache" / "programs"
  outs = []
  for k, mode in enumerate(("trace", "executables_only", "damaged_executables",
                            "swapped_executables")):
    if mode == "damaged_executables":
      for exe in programs.glob("*.xlaexe"):
        exe.write_bytes(exe.read_bytes()[:-100])
    if mode == "swapped_executables":
      texts = sorted(programs.glob("text_*.xlaexe"))
      blobs = [t.read_bytes() for t in texts]
      texts[0].write_bytes(blobs[1])
      texts[1].write_bytes(blobs[0])
    out = tmp_path / f"{k}.npy"
    proc = subprocess.run([sys.executable, "-c", _EXPORT_SCRIPT, str(MULTI), str(out), mode],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outs.append(np.load(out))
    if k == 0:
      exported, compiled = list(programs.glob("*.jaxexport")), list(programs.glob("*.xlaexe"))
      assert len(exported) >= 2 and len(compiled) == len(exported)
  for exe in programs.glob("*.xlaexe"):  # saved again, whole
    header, payload = exe.read_bytes().split(b"\n", 1)
    assert header.split(b" ")[1] == hashlib.sha256(payload).hexdigest().encode()
  assert [t.read_bytes() for t in texts] != blobs[::-1]  # rebuilt
  for out in outs[1:]:
    np.testing.assert_array_equal(outs[0], out)


def test_noise_key_is_prngkey():
  """The host-built noise key is `jax.random.PRNGKey`'s, for every seed."""
  from vits_jax.inference import noise_key
  for seed in (0, 1, 3, 12345, 2 ** 31 - 1, -1, -5, 2 ** 31, 2 ** 32 + 3):
    ours, theirs = np.asarray(noise_key(seed)), np.asarray(jax.random.PRNGKey(seed))
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)


def test_the_noise_of_a_seed_does_not_depend_on_the_hosts_jax_flags(multi):
  """A host application's JAX flags do not change the audio of a seed: `jax_enable_x64`
  made seeds outside [0, 2**31) other keys (README: a seed counts modulo 2**32), and
  `jax_default_prng_impl` another kind of key."""
  seeds = (0, -1, 2 ** 31 + 3, 2 ** 32 + 3, 3)
  want = [multi.synthesize("Hi there.", seed=s) for s in seeds]
  np.testing.assert_array_equal(want[3], want[4])   # modulo 2**32
  assert want[0].shape != want[1].shape or np.abs(want[0] - want[1]).max() > 1e-3
  for flag, value in (("jax_enable_x64", True), ("jax_default_prng_impl", "rbg")):
    before = getattr(jax.config, flag)
    jax.config.update(flag, value)
    try:
      got = [multi.synthesize("Hi there.", seed=s) for s in seeds]
    finally:
      jax.config.update(flag, before)
    for s, a, b in zip(seeds, want, got):
      assert a.shape == b.shape, (flag, s)
      np.testing.assert_allclose(a, b, atol=1e-6, rtol=0, err_msg=f"{flag} seed {s}")


_HOST_FLAGS_SCRIPT = """
import sys
import jax
import numpy as np
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
from vits_jax import load_voice
voice = load_voice(sys.argv[1])
with jax.disable_jit():
  np.save(sys.argv[2], voice.synthesize("Hello there. Here we go.", speaker=1, seed=3))
"""


def test_host_jax_settings_neither_break_synthesis_nor_drop_stored_programs(multi, tmp_path):
  """A host application's strict dtype promotion, rank promotion 'raise' and
  `jax.disable_jit()` (debugging its own code) neither fail loading and synthesis with a
  cold cache (they did: our tracing met the host's rules) nor, with a warm one, throw away
  the stored executables (they did not run under disable_jit; each was deleted and rebuilt).
  The JAX cache the host configured holds our stored programs and voices too (they went
  to ~/.cache/vits_jax whatever it said)."""
  import os
  import subprocess
  import sys
  env = {k: v for k, v in os.environ.items() if k != "VITS_JAX_XLA_CACHE"}
  env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"),
             HOME=str(tmp_path / "home"), PYTHONPATH=str(Path(__file__).parents[1]))
  want = multi.synthesize("Hello there. Here we go.", speaker=1, seed=3)
  stamps = None
  for k in range(2):   # a cold cache, then a warm one
    out = tmp_path / f"{k}.npy"
    proc = subprocess.run([sys.executable, "-c", _HOST_FLAGS_SCRIPT, str(MULTI), str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_array_equal(np.load(out), want)
    now = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.xlaexe")}
    assert now and (stamps is None or now == stamps), (stamps, now)
    stamps = now
  assert list((tmp_path / "cache" / "voices").glob("*.voice"))
  assert not (tmp_path / "home").exists()


def test_a_stream_starts_on_the_least_work(multi, monkeypatch):
  """When a stream's first piece comes out, only what it needs has run: one paragraph
  phonemized (the text is read lazily: memory stays bounded), the text side of one
  sentence, and one (short, lead) decoder window, with no second window started."""
  monkeypatch.setattr(inference, "WINDOW_FRAMES", WINDOW)
  monkeypatch.setattr(inference, "LEAD_FRAMES", 5)
  paragraph = ("The birch canoe slid on the smooth planks. Glue the sheet to the dark blue "
               "background. It is easy to tell the depth of a well.")
  text = "\n\n".join([paragraph] * 4)
  seen = {"paragraphs": 0, "sentences": 0, "windows": 0}
  real_block, real_text, real_latent = (multi._block_sentence_ids, inference._text_side,
                                        inference._latent_side)

  def block(*args):
    seen["paragraphs"] += 1
    return real_block(*args)

  def text_side(model, params, group, *args):
    seen["sentences"] += len(group)
    return real_text(model, params, group, *args)

  def latent(*args):
    seen["windows"] += 1
    return real_latent(*args)

  monkeypatch.setattr(multi, "_block_sentence_ids", block)
  monkeypatch.setattr(inference, "_text_side", text_side)
  monkeypatch.setattr(inference, "_latent_side", latent)
  stream = multi.stream(text, seed=1)
  first = next(stream)
  at_first = dict(seen)
  rest = list(stream)
  assert at_first == {"paragraphs": 1, "sentences": 1, "windows": 1}, at_first
  assert len(first) == 5 * multi.hop_length
  assert seen["paragraphs"] == 4 and seen["sentences"] == 12 and seen["windows"] > 4
  np.testing.assert_array_equal(np.concatenate([first] + rest), multi.synthesize(text, seed=1))
