"""Voice and windowed-inference behaviour a second mutation audit of vits_jax/voice.py and
vits_jax/inference.py found unchecked: a stream's lead window beside batched windows, the
frame limit's boundary, `synthesize_ids`' default seeds and speaker, `normalize` per
sentence in a stream, the knobs' inclusive bounds, a single-speaker voice's " 0 ".

Uses the tiny Piper exports (tests/fixtures/make_piper_tiny.py) and the 16-frame windows of
test_synthesis.py.
"""

from pathlib import Path

import numpy as np
import pytest

from vits_jax import inference
from vits_jax import load_voice
from vits_jax import voice as voice_lib

FIXTURES = Path(__file__).parent / "fixtures"
MULTI = FIXTURES / "piper_tiny_multi.onnx"
HIGH = FIXTURES / "piper_tiny_high.onnx"
WINDOW = 16
LONG = "The birch canoe slid on the smooth planks, and glue held the sheet to the dark blue."


@pytest.fixture(scope="module")
def multi():
  return load_voice(MULTI)


def test_a_lead_window_beside_batched_windows_streams_what_synthesize_makes(multi,
                                                                             monkeypatch):
  """With the window batch of an accelerator (several windows per decoder call), a stream
  whose first sentence is long still starts with its lead window alone (it has a core size
  of its own), and the stream equals `synthesize`."""
  monkeypatch.setattr(inference, "WINDOW_FRAMES", WINDOW)
  monkeypatch.setattr(inference, "LEAD_FRAMES", 5)
  kw = dict(speaker=1, seed=2, noise_scale=0.667, noise_scale_w=0.8)
  whole = multi.synthesize(LONG + " Hi.", **kw)
  monkeypatch.setattr(inference, "MAX_WINDOW_BATCH", {})
  chunks = list(multi.stream(LONG + " Hi.", batch_size=2, **kw))
  assert len(chunks[0]) == 5 * multi.hop_length
  got = np.concatenate(chunks)
  assert got.shape == whole.shape
  np.testing.assert_allclose(got, whole, atol=1e-5, rtol=0)


def test_a_sentence_of_exactly_the_frame_limit_is_decoded(multi, monkeypatch):
  """`MAX_SENTENCE_FRAMES` is the most a sentence may last: one of exactly that many
  frames is decoded (one frame more is refused, test_voice.py)."""
  text = "Hi there, all of you."
  audio, (dur,) = multi.synthesize(text, with_durations=True)
  monkeypatch.setattr(inference, "MAX_SENTENCE_FRAMES", int(dur.sum()))
  np.testing.assert_array_equal(multi.synthesize(text), audio)


def test_synthesize_ids_defaults_every_seed_to_0_and_the_speaker_to_0(multi):
  """`synthesize_ids` without `seeds` draws every sentence's noise with seed 0 (not its
  index), and a multi-speaker voice given no speaker speaks as speaker 0."""
  rng = np.random.RandomState(3)
  ids = [list(rng.randint(1, 150, n)) for n in (12, 12)]
  ids[1] = list(ids[0])
  kw = dict(noise_scale=0.667, noise_scale_w=0.8, seed=4)
  default = multi.synthesize_ids(ids, 0, **kw)
  zeros = multi.synthesize_ids(ids, 0, seeds=[0, 0], **kw)
  for a, b in zip(default, zeros):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(default[0], default[1])   # same ids, same seed
  for a, b in zip(multi.synthesize_ids(ids, **kw), default):
    np.testing.assert_array_equal(a, b)


def test_a_normalized_stream_is_normalized_per_sentence_as_synthesize(multi, monkeypatch):
  """With `normalize`, each sentence is scaled to a peak of 1 as a whole (not each window
  of it, nor the text as one), in a stream as in `synthesize`, and `volume` scales and
  clips after it."""
  monkeypatch.setattr(inference, "WINDOW_FRAMES", WINDOW)
  text = LONG + " Hi."
  kw = dict(speaker=2, seed=1, noise_scale=0.667, noise_scale_w=0.8)
  raw, durations = multi.synthesize(text, with_durations=True, **kw)
  cuts = np.cumsum([int(d.sum()) * multi.hop_length for d in durations])[:-1]
  raw_parts = np.split(raw, cuts)
  assert len(raw_parts) == 2 and all(p.size > WINDOW * multi.hop_length for p in raw_parts)
  for volume in (1.0, 0.5, 3.0):
    want = np.concatenate([np.clip(p / np.abs(p).max() * volume, -1, 1) for p in raw_parts])
    whole = multi.synthesize(text, normalize=True, volume=volume, **kw)
    streamed = np.concatenate(list(multi.stream(text, normalize=True, volume=volume, **kw)))
    np.testing.assert_allclose(whole, want, atol=1e-6, rtol=0)
    np.testing.assert_allclose(streamed, want, atol=1e-6, rtol=0)
    for part in np.split(streamed, cuts):
      assert np.abs(part).max() == pytest.approx(min(volume, 1.0), abs=1e-6)


def test_knobs_at_their_bounds_are_taken():
  """Every knob's range is closed where the docs say so: the bounds themselves pass, one
  step past them is refused."""
  ok = [dict(noise_scale=0.0), dict(noise_scale=voice_lib.MAX_NOISE_SCALE),
        dict(noise_scale_w=voice_lib.MAX_NOISE_SCALE),
        dict(length_scale=voice_lib.MIN_LENGTH_SCALE),
        dict(length_scale=voice_lib.MAX_LENGTH_SCALE), dict(volume=0.0),
        dict(volume=voice_lib.MAX_VOLUME), dict(sentence_silence=0.0),
        dict(sentence_silence=voice_lib.MAX_SILENCE_SECONDS), dict(seed=-2 ** 63),
        dict(seed=2 ** 63 - 1), dict(seed=-1), dict(batch_size=1)]
  for knobs in ok:
    voice_lib.check_knobs(**knobs)
  bad = [dict(noise_scale=np.nextafter(voice_lib.MAX_NOISE_SCALE, 99)),
         dict(length_scale=np.nextafter(voice_lib.MIN_LENGTH_SCALE, 0)),
         dict(length_scale=np.nextafter(voice_lib.MAX_LENGTH_SCALE, 99)),
         dict(volume=np.nextafter(voice_lib.MAX_VOLUME, 1e9)), dict(seed=-2 ** 63 - 1),
         dict(seed=2 ** 63), dict(batch_size=0),
         dict(sentence_silence=np.nextafter(voice_lib.MAX_SILENCE_SECONDS, 1e9))]
  for knobs in bad:
    with pytest.raises(ValueError, match=next(iter(knobs))):
      voice_lib.check_knobs(**knobs)


def test_a_single_speaker_voice_takes_a_spaced_0_as_its_speaker():
  """A single-speaker voice takes speaker 0 (int or text, as a form or a command line
  sends it, spaces around it) as none."""
  single = load_voice(HIGH)
  for speaker in (0, "0", " 0 ", np.int64(0)):
    assert single.speaker_id(speaker) is None, speaker


def test_voice_conversion_with_posterior_noise_adds_no_prior_noise():
  """`Voice.convert(noise_scale=x)` samples the posterior with noise x and then decodes
  with no prior noise, as the model's `voice_conversion` (official) does with the same
  key: the scale is not also spent on the prior."""
  import json
  from vits_jax.convert import torch_names
  from vits_jax.models.synthesizer import SynthesizerTrn
  from vits_jax.text import get_frontend
  data = np.load(FIXTURES / "official_rb2_sdp_ms.npz")
  config = json.loads(str(data["config"]))
  config["segment_frames"] = config.pop("segment_size")
  sd = {k[3:]: data[k].astype(np.float32) for k in data.files if k.startswith("sd/")}
  model = SynthesizerTrn(**{k: tuple(map(tuple, v)) if k == "resblock_dilation_sizes" else
                            tuple(v) if isinstance(v, list) else v for k, v in config.items()})
  golden = np.load(FIXTURES / "official_vc_golden.npz")
  voice = voice_lib.Voice(model, torch_names.torch_to_flax(sd), get_frontend("vits"),
                          int(golden["rate"]), name="official_rb2_sdp_ms")
  src, tgt = int(golden["sid_src"]), int(golden["sid_tgt"])
  got = voice.convert(golden["wav"], int(golden["rate"]), src, tgt, noise_scale=0.7, seed=3)
  spec = golden["spec"]
  want, _ = model.apply({"params": voice.params}, spec, np.array([spec.shape[1]]),
                        np.array([src]), np.array([tgt]), noise_scale=0.7,
                        key=inference.noise_key(3), method="voice_conversion")
  want = np.asarray(want)[0, :, 0]
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  with inference.record_programs() as used:
    mean = voice.convert(golden["wav"], int(golden["rate"]), src, tgt)
    shorter = voice.convert(golden["wav"][:-3 * voice.hop_length], int(golden["rate"]), src,
                            tgt)
  assert np.abs(got - mean).max() > 1e-3   # (the posterior noise itself does matter)
  # Recordings are padded to whole windows: two lengths share one posterior program.
  assert shorter.size == mean.size - 3 * voice.hop_length
  assert len({k for k in used if k[1] == "audio"}) == 1, used


def test_a_line_break_inside_a_paragraph_does_not_split_its_sentence(multi):
  """Only a blank line separates paragraphs: a sentence broken over two lines is one
  sentence (one noise seed, one durations array), as on one line."""
  one_line = "The birch canoe slid on the smooth planks."
  broken = "The birch canoe slid\non the smooth planks."
  assert multi.text_to_sentence_ids(broken) == multi.text_to_sentence_ids(one_line)
  assert len(multi.text_to_sentence_ids(broken)) == 1
  assert len(multi.text_to_sentence_ids("One.\n\nTwo.")) == 2


def test_stream_gaps_are_fresh_arrays(multi):
  """Each pause a stream yields is its own array: a caller that scales its pieces in
  place (a volume knob of its own) does not change the pauses still to come."""
  text = "One. Two. Three."
  kw = dict(noise_scale=0.0, noise_scale_w=0.0, sentence_silence=0.05)
  whole = multi.synthesize(text, **kw)
  got = []
  for piece in multi.stream(text, **kw):
    got.append(piece.copy())
    piece += 1.0
  np.testing.assert_array_equal(np.concatenate(got), whole)


def test_a_run_on_text_is_cut_in_halves(multi):
  """A run-on sentence too long for one piece is cut in halves at words, so its pieces are
  few and about even (not one word at a time)."""
  run_on = " ".join(["word"] * 700)
  cut = multi._fitting_ids(run_on)
  sizes = [len(p) for p in cut]
  assert max(sizes) <= voice_lib.MAX_IDS and min(sizes) > voice_lib.MAX_IDS // 4, sizes
  assert max(sizes) - min(sizes) < 50, sizes   # (halves of halves: 8 even pieces here)
