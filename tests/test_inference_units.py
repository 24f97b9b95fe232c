"""Inference-side behaviour that the other synthesis tests leave unchecked (found by a
mutation audit of vits_jax/voice.py, request.py, inference.py and the model's inference
halves). Uses the tiny multi-speaker Piper export and the official-code fixture; every test
reuses programs the other synthesis tests compile (the standard id buckets, 256-frame
windows).
"""

from pathlib import Path

import numpy as np
import pytest

from vits_jax import inference
from vits_jax import load_voice
from vits_jax import voice as voice_lib

FIXTURES = Path(__file__).parent / "fixtures"
MULTI = FIXTURES / "piper_tiny_multi.onnx"


@pytest.fixture(scope="module")
def multi():
  return load_voice(MULTI)


def test_each_sentence_draws_the_noise_of_its_index(multi):
  """The sentences of one text are seeded by their index in it (module docstring of
  vits_jax.voice): the text's audio is `synthesize_ids` of its sentences with seeds 0, 1,
  ...; a repeated sentence is not a copy of the first one."""
  text = "Hello there. Hello there. Hello there."
  ids = multi.text_to_sentence_ids(text)
  assert len(ids) == 3 and ids[0] == ids[1] == ids[2]
  kw = dict(speaker=1, noise_scale=0.667, noise_scale_w=0.8, seed=7)
  audio, durations = multi.synthesize(text, with_durations=True, **kw)
  parts = multi.synthesize_ids(ids, 1, noise_scale=0.667, noise_scale_w=0.8, seed=7,
                               seeds=[0, 1, 2])
  np.testing.assert_allclose(audio, np.concatenate(parts), atol=1e-6, rtol=0)
  assert parts[0].shape != parts[1].shape or np.abs(parts[0] - parts[1]).max() > 1e-3
  assert [len(d) for d in durations] == [len(i) for i in ids]


def test_the_noise_scales_scale_the_noise(multi):
  """`noise_scale` sets how far the prior sample strays from its mean: 0 is the mean, and a
  larger scale strays further (the same durations: noise_scale_w 0)."""
  text = "The birch canoe slid on the smooth planks."
  kw = dict(speaker=0, noise_scale_w=0.0, seed=3)
  mean = multi.synthesize(text, noise_scale=0.0, **kw)
  small = multi.synthesize(text, noise_scale=0.1, **kw)
  large = multi.synthesize(text, noise_scale=1.0, **kw)
  assert mean.shape == small.shape == large.shape
  d_small, d_large = np.abs(small - mean).max(), np.abs(large - mean).max()
  assert 0 < d_small < d_large, (d_small, d_large)
  # noise_scale_w draws the durations: other lengths, same text and seed.
  slow = [multi.synthesize(text, noise_scale=0.0, noise_scale_w=w, speaker=0, seed=3,
                           with_durations=True)[1][0] for w in (0.0, 1.5)]
  assert not np.array_equal(slow[0], slow[1])


def test_length_scale_stretches_every_duration(multi):
  """`length_scale` multiplies each id's duration before it is rounded up (frames =
  ceil(exp(logw) * length_scale)): 2x never makes a duration shorter, and the whole
  sentence about twice as long."""
  text = "It is easy to tell the depth of a well."
  kw = dict(speaker=2, noise_scale=0.0, noise_scale_w=0.0)
  a1, (d1,) = multi.synthesize(text, length_scale=1.0, with_durations=True, **kw)
  a2, (d2,) = multi.synthesize(text, length_scale=2.0, with_durations=True, **kw)
  assert np.all(d2 >= d1) and 1.7 < d2.sum() / d1.sum() < 2.3
  assert a1.size == d1.sum() * multi.hop_length and a2.size == d2.sum() * multi.hop_length


def test_an_id_equal_to_the_vocabulary_size_is_refused(multi):
  """Ids run 0..n_vocab-1: n_vocab itself is outside (an embedding lookup past the table
  does not fail in JAX, it would speak a wrong sound)."""
  n_vocab = int(multi.model.n_vocab)
  with pytest.raises(ValueError, match=f"holds id {n_vocab}, outside"):
    multi.synthesize_ids([[1, 2, n_vocab]], speaker_id=0)
  multi.synthesize_ids([[1, 2, n_vocab - 1]], speaker_id=0)   # the last id is fine


def test_check_flags_names_the_command_line_flag():
  """`check_flags` (infer.py, serve.py) names the flag as it is typed, `--length-scale`."""
  for knobs, flag in ((dict(length_scale=-1.0), "--length-scale must be"),
                      (dict(noise_scale_w=-1.0), "--noise-scale-w must be"),
                      (dict(sentence_silence=-1.0), "--sentence-silence must be"),
                      (dict(batch_size=0), "--batch-size must be")):
    with pytest.raises(ValueError) as e:
      voice_lib.check_flags(**knobs)
    assert str(e.value).startswith(flag), str(e.value)


def test_sentence_silence_is_rounded_to_the_nearest_sample(multi):
  """1.001 s at 16 kHz is 16016 samples (1.001 * 16000 is 16015.999... in floats)."""
  kw = dict(noise_scale=0.0, noise_scale_w=0.0)
  plain = multi.synthesize("One. Two.", **kw)
  gap = multi.synthesize("One. Two.", sentence_silence=1.001, **kw)
  assert gap.size - plain.size == 16016
  streamed = np.concatenate(list(multi.stream("One. Two.", sentence_silence=1.001, **kw)))
  assert streamed.size == gap.size


def test_a_run_on_of_two_long_words_is_cut_between_them(multi, monkeypatch):
  """A run-on text too long for one sentence is cut at a space while it has one: two words
  of fewer ids than MAX_IDS each become one piece per word (not cut inside the ids). (A
  limit of 1000 ids: espeak caps the ids of one long word well below the real one.)"""
  monkeypatch.setattr(voice_lib, "MAX_IDS", 1000)
  word = "abcdefghij" * 60
  text = f"{word} {word}"
  alone = multi.frontend.text_to_ids(word)
  assert len(alone) <= 1000 < len(multi.frontend.text_to_ids(text))
  assert multi._fitting_ids(text) == [alone, alone]


def test_unsigned_8_bit_pcm_is_centred_like_its_float_waveform(monkeypatch):
  """`Voice.convert` takes PCM integers: 8-bit WAV samples are unsigned, silence at 128.
  The waveform the model gets from uint8 samples is the same recording as from floats (it
  was offset by a full scale: (x - 256) / 256)."""
  from test_synthesis import _official_voice
  voice, golden = _official_voice()
  wav, rate = golden["wav"].astype(np.float32), int(golden["rate"])
  seen = []
  monkeypatch.setattr(inference, "convert_audio",
                      lambda model, params, audio, *a, **k: seen.append(audio) or audio)
  u8 = np.clip(np.round(wav * 128 + 128), 0, 255).astype(np.uint8)
  voice.convert(u8, rate, 1, 2)
  voice.convert((u8.astype(np.float32) - 128) / 128, rate, 1, 2)
  np.testing.assert_allclose(seen[0], seen[1], atol=1e-6)


def test_voice_conversion_needs_both_speakers_named():
  """None for either speaker is refused (it would be speaker 0 without a word)."""
  from test_synthesis import _official_voice
  voice, golden = _official_voice()
  wav, rate = golden["wav"], int(golden["rate"])
  for src, tgt in ((None, 2), (1, None)):
    with pytest.raises(ValueError, match="needs a source and a target speaker"):
      voice.convert(wav, rate, src, tgt)


def test_pcm_values_stored_as_floats_are_refused():
  """int16 sample values in a float array (peak ~ 3e4, the usual mistake) are refused, not
  converted as a recording 30000 times too loud; a little over full scale is taken."""
  from test_synthesis import _official_voice
  voice, golden = _official_voice()
  wav, rate = golden["wav"].astype(np.float32), int(golden["rate"])
  pcm_as_float = np.round(wav / np.abs(wav).max() * 32000).astype(np.float32)
  with pytest.raises(ValueError, match="its peak is 32000"):
    voice.convert(pcm_as_float, rate, 1, 2)
  assert voice.convert(wav / np.abs(wav).max() * 1.2, rate, 1, 2).size > 0


def test_request_fields_map_to_their_synthesize_keywords():
  """Piper's `noise_w_scale` and this project's `noise_scale_w` are the duration noise (not
  `noise_scale`); giving both is refused, each field alone lands on its own keyword."""
  from vits_jax import request
  want = {"length_scale": ("length_scale", 1.3), "noise_scale": ("noise_scale", 0.4),
          "noise_w_scale": ("noise_scale_w", 0.3), "noise_scale_w": ("noise_scale_w", 0.2),
          "sentence_silence": ("sentence_silence", 0.5), "volume": ("volume", 0.7),
          "normalize": ("normalize", False), "seed": ("seed", 9)}
  for field, (keyword, value) in want.items():
    text, knobs = request.parse({"text": "Hi.", field: value}, None, {"noise_scale": 0.667})
    assert text == "Hi."
    expected = {"noise_scale": 0.667, keyword: value}
    assert knobs == expected, field
  with pytest.raises(ValueError, match="give one of noise_w_scale and noise_scale_w"):
    request.parse({"text": "Hi.", "noise_w_scale": 0.3, "noise_scale_w": 0.3}, None, {})
