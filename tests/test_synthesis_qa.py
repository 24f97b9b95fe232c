"""QA pins for synthesis on inputs the suite did not use: odd punctuation and paragraphs,
stream = synthesize, batch = alone, durations * hop = samples, and voice conversion's
refusal of a 0 Hz rate (it was a ZeroDivisionError)."""
from pathlib import Path

import numpy as np
import pytest

from vits_jax import load_voice
from test_synthesis import _official_voice

MULTI = Path(__file__).parent / "fixtures" / "piper_tiny_multi.onnx"
TEXTS = [
    "Mr. and Mrs. J. R. R. Tolkien vs. St. John's Rd., No. 7.",
    "«Bonjour», he said… “Really?” — “yes!” Hmm. . . . ! ? ; : Ok.",
    "First.\n\n\n...\n\nSecond, with 12 items at $3.50 each. Third?",
    "Yes. No. Maybe. Why? Because! Fine.",
]


@pytest.fixture(scope="module")
def multi():
  return load_voice(MULTI)


@pytest.mark.parametrize("kw", [dict(), dict(noise_scale=0, noise_scale_w=0, speaker="carol"),
                                dict(length_scale=1.37, noise_scale=0.9, noise_scale_w=1.3,
                                     seed=2**33 + 5, sentence_silence=0.23, speaker=1)])
def test_stream_batch_and_durations_agree_on_odd_text(multi, kw):
  batch = multi.synthesize_batch(TEXTS, batch_size=3, **kw)
  gap = int(round(kw.get("sentence_silence", 0.0) * multi.sample_rate))
  for text, b in zip(TEXTS, batch):
    whole, durations = multi.synthesize(text, with_durations=True, **kw)
    streamed = np.concatenate(list(multi.stream(text, **kw)))
    assert streamed.shape == whole.shape == b.shape
    np.testing.assert_array_equal(streamed, whole)
    np.testing.assert_array_equal(b, whole)
    assert [len(d) for d in durations] == [len(i) for i in multi.text_to_sentence_ids(text)]
    frames = sum(int(d.sum()) for d in durations)
    assert frames * multi.hop_length + gap * (len(durations) - 1) == whole.size


def test_convert_refuses_a_zero_rate_in_one_line():
  voice, golden = _official_voice()
  for rate in (0, -5, 3000):
    with pytest.raises(ValueError, match="not speech audio"):
      voice.convert(golden["wav"], rate, 1, 2)
