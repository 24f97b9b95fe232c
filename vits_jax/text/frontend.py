"""Text frontends: text -> token ids a VITS model was trained on.

* `VitsFrontend` ('vits'): the official VITS pipeline for training new voices -- cleaners
  (default `english_cleaners2`: espeak-ng phonemes through phonemizer), the official
  178-symbol table, and `add_blank` (a 0 between all ids and at both ends).
* `PiperFrontend` ('piper'): Piper voices -- espeak-ng phonemes per sentence as
  piper-phonemize gives them, mapped with the voice's own `phoneme_id_map`.
* `HfFrontend` ('hf'): transformers' `VitsTokenizer` for character voices such as MMS-TTS
  (no phonemizer): the folder's `vocab.json`, lowercasing, `add_blank`.

Both drop characters the voice cannot say (with one `UnknownCharactersWarning` per text) and
raise `NothingToSay` (a `ValueError`) for text with nothing to say.
"""

import functools
import logging
import re
import unicodedata

from vits_jax.text import chars, piper_phonemes, sentences, symbols
from vits_jax.text import cleaners as cleaners_lib

_LOGGER = logging.getLogger(__name__)


def intersperse(ids, item):
  """`[item, ids[0], item, ids[1], ..., item]` (the official `commons.intersperse`)."""
  out = [item] * (2 * len(ids) + 1)
  out[1::2] = ids
  return out


class NothingToSay(ValueError):
  """A text with nothing a voice can say: empty, or nothing left after cleaning, dropping
  unknown characters or phonemization (a line to skip, where other errors are not)."""


def check_text(text) -> None:
  """Refuses a non-string (ValueError) and an empty text (`NothingToSay`)."""
  if not isinstance(text, str):
    raise ValueError(f'text must be a string, got {type(text).__name__}')
  if not text.strip():
    raise NothingToSay('text is empty')


class Frontend:
  """Text -> ids for one voice.

  Attributes:
    name: 'vits' or 'piper'.
    n_vocab: number of token ids (embedding rows).
  """

  name = ''
  n_vocab = 0

  def text_to_ids(self, text):
    """Ids of `text` as one utterance, ready for the model.

    Raises:
      ValueError: the text is empty, or nothing sayable is left of it.
    """
    raise NotImplementedError

  def split_sentences(self, text):
    """Sentences of `text`, for synthesizing long text piece by piece."""
    raise NotImplementedError

  def text_to_sentence_ids(self, text):
    """Ids per sentence of `text` (empty sentences left out); prefer this for long text.

    Raises:
      ValueError: the text is empty, or nothing sayable is left of it.
    """
    raise NotImplementedError


class VitsFrontend(Frontend):
  """The official VITS text pipeline.

  Args:
    cleaners: cleaner names run in order (see `cleaners.CLEANERS`).
    add_blank: put blank id 0 between all ids and at both ends (official `add_blank`).
    max_sentence_chars: `split_sentences` cuts longer sentences at clauses or spaces.
  """

  name = 'vits'

  def __init__(self, cleaners=('english_cleaners2',), add_blank=True, max_sentence_chars=400):
    if isinstance(cleaners, str):
      cleaners = [cleaners]
    for c in cleaners:
      if c not in cleaners_lib.CLEANERS:
        known = ', '.join(sorted(cleaners_lib.CLEANERS))
        raise ValueError(f'unknown cleaner {c!r}; known: {known}')
    self.cleaners = list(cleaners)
    self.add_blank = bool(add_blank)
    self.max_sentence_chars = max_sentence_chars
    self.symbols = symbols.SYMBOLS
    self.n_vocab = len(self.symbols)
    self._transliterate = any(c != 'basic_cleaners' for c in self.cleaners)

  def _can_say(self, char):
    if char.isspace():
      return True
    if self._transliterate:
      return cleaners_lib.to_ascii(char) is not None
    return char.lower() in symbols.SYMBOL_TO_ID

  def _filter(self, text):
    check_text(text)
    # Control characters (NUL, escapes) would end or garble the text inside espeak-ng: they
    # separate words, like whitespace. Newlines stay until the text is split: a blank line
    # ends a sentence.
    text = ''.join(' ' if unicodedata.category(c) == 'Cc' and c != '\n' else c for c in text)
    parts = _PHONEME_BLOCK.split(text)   # `[[ symbols ]]` blocks are kept as written
    if len(parts) == 1:
      text = chars.drop_unknown(text, self._can_say)
    else:   # the spaces around a block stay: they say where words end
      text = ''.join(p if i % 2 or not p.strip() else
                     p[:len(p) - len(p.lstrip())] + chars.drop_unknown(p.strip(), self._can_say)
                     + p[len(p.rstrip()):] for i, p in enumerate(parts))
    if not text.strip():
      raise NothingToSay('text is empty after dropping characters the voice cannot say')
    return text

  def _clean_filtered(self, text):
    text = text.replace('\n', ' ')
    parts = _PHONEME_BLOCK.split(text)
    if len(parts) == 1:
      return cleaners_lib.clean(text, self.cleaners)
    # As Piper reads its blocks: the block's symbols as written, a space on a side where
    # the text beside it has one; the text between blocks is cleaned piece by piece.
    out = []
    for i, part in enumerate(parts):
      if i % 2 == 0:
        out.append(cleaners_lib.clean(part, self.cleaners).strip() if part.strip() else '')
        continue
      out.append((' ' if parts[i - 1][-1:].isspace() else '') + part[2:-2].strip()
                 + (' ' if parts[i + 1][:1].isspace() else ''))
    return cleaners_lib.collapse_whitespace(''.join(out)).strip()

  def clean(self, text):
    """The cleaned text (phonemes for english_cleaners2) before it becomes ids. Symbols
    written as `[[ ... ]]` (phonemes, for a phonemizing cleaner) are taken as written."""
    return self._clean_filtered(self._filter(text))

  def cleaned_to_ids(self, cleaned):
    """Ids of already cleaned text (no blanks); symbols outside the table are skipped."""
    ids, missing = [], set()
    for s in cleaned:
      if s in symbols.SYMBOL_TO_ID:
        ids.append(symbols.SYMBOL_TO_ID[s])
      else:
        missing.add(s)
    if missing:
      _LOGGER.debug('symbols not in the VITS table skipped: %s', sorted(missing))
    return ids

  def _filtered_to_ids(self, text):
    ids = self.cleaned_to_ids(self._clean_filtered(text))
    # Punctuation and spaces alone say nothing.
    if all(i <= symbols.SPACE_ID for i in ids):
      raise NothingToSay(f'text has nothing to say (empty after cleaning): {text[:50]!r}')
    return intersperse(ids, 0) if self.add_blank else ids

  def text_to_ids(self, text):
    return self._filtered_to_ids(self._filter(text))

  def text_to_sentence_ids(self, text):
    out = []
    for sentence in self.split_sentences(self._filter(text)):  # one warning for the text
      try:
        out.append(self._filtered_to_ids(sentence))
      except ValueError:
        continue  # e.g. '...' alone
    if not out:
      raise NothingToSay(f'text has nothing to say (empty after cleaning): {text[:50]!r}')
    return out

  def ids_to_text(self, ids):
    """Symbols of `ids` (blanks included if present), e.g. to check a round trip."""
    return ''.join(symbols.ID_TO_SYMBOL[i] for i in ids)

  def split_sentences(self, text):
    return sentences.split_sentences(text, max_chars=self.max_sentence_chars)


# Piper's raw phoneme blocks: `[[ phonemes ]]` inside the text (not across lines).
_PHONEME_BLOCK = re.compile(r'(\[\[.*?\]\])')


def _cut_phonemes(phonemes, max_phonemes):
  """Cuts a phoneme list into pieces of at most `max_phonemes`, after ', ' / '; ' / ': '
  where possible, else after a space."""
  pieces = []
  while len(phonemes) > max_phonemes:
    window = phonemes[:max_phonemes]
    spaces = [i + 1 for i, p in enumerate(window) if p == ' ']
    clauses = [i for i in spaces if i >= 2 and window[i - 2] in ',;:']
    cuts = clauses if clauses and clauses[-1] > max_phonemes // 4 else spaces
    cut = cuts[-1] if cuts else max_phonemes
    pieces.append(phonemes[:cut])
    phonemes = phonemes[cut:]
  return pieces + [phonemes]


class PiperFrontend(Frontend):
  """The frontend of a Piper voice, from its `.onnx.json` config.

  Args:
    config: the parsed `.onnx.json` (uses `phoneme_id_map`, `phoneme_type`, `espeak.voice`,
      `num_symbols`).
    fallback: True to phonemize with espeakng-loader's espeak-ng even where piper-phonemize
      is installed; default: only where it is not (or env `VITS_JAX_PIPER_FALLBACK=1`).

  Raises:
    ValueError: the config lacks what is needed, names an unsupported phoneme type, or an
      espeak voice that espeak-ng does not have ('espeak-ng has no voice ...').
  """

  name = 'piper'

  def __init__(self, config, fallback=None):
    if not isinstance(config, dict) or 'phoneme_id_map' not in config:
      raise ValueError('a Piper config (.onnx.json) with a phoneme_id_map is needed')
    self.config = dict(config)   # the whole .onnx.json (export writes it back)
    self.id_map = {p: list(ids) for p, ids in config['phoneme_id_map'].items()}
    for special in (piper_phonemes.BOS, piper_phonemes.EOS, piper_phonemes.PAD):
      if special not in self.id_map:
        raise ValueError(f'the phoneme_id_map has no {special!r}')
    self.phoneme_type = config.get('phoneme_type', 'espeak')
    if self.phoneme_type not in ('espeak', 'text'):
      raise ValueError(f'unsupported Piper phoneme_type {self.phoneme_type!r}')
    espeak = config.get('espeak') or {}
    if not isinstance(espeak, dict):
      raise ValueError(f'espeak must be an object (like {{"voice": "en-us"}}), not {espeak!r:.60}')
    self.voice = espeak.get('voice', 'en-us')
    if self.phoneme_type == 'espeak':   # fail at load, not at the first sentence
      piper_phonemes.check_espeak_voice(self.voice, fallback=fallback)
    elif not isinstance(self.voice, str):
      raise ValueError(f'espeak.voice must be a string, not {self.voice!r}')
    max_id = max(i for ids in self.id_map.values() for i in ids)
    symbols = config.get('num_symbols')
    symbols = 0 if symbols is None else symbols
    if isinstance(symbols, float) and symbols.is_integer():
      symbols = int(symbols)
    if isinstance(symbols, bool) or not isinstance(symbols, int) or symbols < 0:
      raise ValueError(f'num_symbols must be a count of phoneme ids, not {symbols!r:.60}')
    self.n_vocab = max(symbols, max_id + 1)
    self._can_say = functools.partial(chars.espeak_can_say,
                                      scripts=frozenset(chars.allowed_scripts(self.voice)))
    self.fallback = fallback

  @property
  def uses_fallback(self):
    """True if phonemes come from espeakng-loader's espeak-ng, not piper-phonemize."""
    return bool(self.fallback) or piper_phonemes.piper_phonemize_module() is None

  def phonemize(self, text):
    """Phonemes per sentence (sentences may be empty), exactly as piper-phonemize splits.

    Phonemes written as `[[ ... ]]` in the text are taken as they are, one per code point
    (Piper's raw phoneme blocks, piper-tts >= 1.3): a block joins the sentence before it,
    and the text after it continues that sentence.
    """
    check_text(text)
    if self.phoneme_type == 'text':
      # piper-phonemize's phonemize_codepoints: casefold, NFD, one sentence.
      text = chars.drop_unknown(text, self._can_say)
      return [list(unicodedata.normalize('NFD', text.casefold()))]
    parts = _PHONEME_BLOCK.split(text)
    if len(parts) == 1:
      return self._phonemize_text(text)
    sentences, after_block = [], False
    for i, part in enumerate(parts):
      if i % 2:   # a block, as piper-tts reads it: spaces around it become word spaces
        if not sentences:
          sentences.append([])
        if parts[i - 1].endswith(' '):
          sentences[-1].append(' ')
        sentences[-1].extend(part[2:-2].strip())
        if parts[i + 1].startswith(' '):
          sentences[-1].append(' ')
        after_block = True
        continue
      said = self._phonemize_text(part) if part else []
      if after_block and said:
        sentences[-1].extend(said.pop(0))
      sentences.extend(said)
      after_block = False
    if sentences and not sentences[-1]:
      sentences.pop()
    return sentences

  def _phonemize_text(self, text):
    text = chars.drop_unknown(text, self._can_say)
    if self.voice == 'ar' and not self.uses_fallback:
      text = piper_phonemes.piper_phonemize_module().tashkeel_run(text)  # diacritics, as piper does
    return piper_phonemes.phonemize(text, self.voice, fallback=self.uses_fallback)

  def phonemes_to_ids(self, phonemes):
    """Piper ids of one sentence: BOS PAD (phoneme PAD)* EOS."""
    return piper_phonemes.phonemes_to_ids(phonemes, self.id_map)

  def _sayable(self, phonemes):
    return any(p in self.id_map and not p.isspace() and not unicodedata.category(p)[0] == 'P'
               for p in phonemes)

  def text_to_sentence_ids(self, text, max_phonemes=500):
    """Piper's ids per sentence, as piper synthesizes them (empty sentences left out).

    Args:
      text: any text.
      max_phonemes: a sentence with more phonemes (about 40 s of speech; text without
        punctuation) is cut at its last clause mark or word space before the limit. None:
        never cut.
    """
    pieces = []
    for s in self.phonemize(text):
      pieces.extend(_cut_phonemes(s, max_phonemes) if max_phonemes else [s])
    out = [self.phonemes_to_ids(s) for s in pieces if self._sayable(s)]
    if not out:
      raise NothingToSay(f'text has nothing to say (empty after phonemization): {text[:50]!r}')
    return out

  def text_to_ids(self, text):
    """Ids of `text` as one utterance: its sentences' phonemes joined, as piper's training
    data was prepared. Equals `text_to_sentence_ids(text)[0]` for one sentence."""
    phonemes = [p for s in self.phonemize(text) for p in s]
    if not self._sayable(phonemes):
      raise NothingToSay(f'text has nothing to say (empty after phonemization): {text[:50]!r}')
    return self.phonemes_to_ids(phonemes)

  def split_sentences(self, text):
    """Sentences where espeak-ng ends them (each `text_to_ids(s)` matches piper's sentence
    ids, apart from rare cases where context crosses the boundary)."""
    check_text(text)
    if self.phoneme_type == 'text':
      return [text.strip()]
    parts = _PHONEME_BLOCK.split(text)
    out, after_block = [], False
    for i, part in enumerate(parts):
      if i % 2:   # a phoneme block stays in the sentence before it, with what follows it
        out[-1:] = [(out[-1] if out else '') + parts[i - 1][len(parts[i - 1].rstrip()):]
                    + part]
        after_block = True
        continue
      said = (piper_phonemes.split_sentences(chars.drop_unknown(part, self._can_say),
                                             self.voice) if part.strip() else [])
      if after_block and said:
        out[-1] += part[:len(part) - len(part.lstrip())] + said.pop(0)
      out.extend(said)
      after_block = False
    return [s.strip() for s in out if s.strip()]

  def __repr__(self):
    source = 'espeakng-loader fallback' if self.uses_fallback else 'piper-phonemize'
    return f'PiperFrontend(voice={self.voice!r}, n_vocab={self.n_vocab}, {source})'



class HfFrontend(Frontend):
  """Text -> ids as transformers' `VitsTokenizer` does for MMS-TTS voices (no phonemizer):
  lowercase, keep only vocabulary characters, blank id 0 between them (`add_blank`).

  Args:
    vocab: the folder's `vocab.json` (character -> id).
    add_blank: insert id 0 between ids and at both ends.
    normalize: lowercase what is not a vocabulary entry as written.
    language: the tokenizer's `language` (MMS: an ISO 639-3 code); 'ron' reads 'ț' (comma
      below) as the 'ţ' (cedilla) MMS Romanian was trained on, as `VitsTokenizer` does.
    pad_token, unk_token: the tokenizer's (MMS: 'k', id 0, as pad), kept for an HF export;
      ids do not use them.
  """

  name = 'hf'

  def __init__(self, vocab, add_blank=True, normalize=True, language=None, pad_token=None,
               unk_token=None):
    if not isinstance(vocab, dict) or not vocab or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
        for k, v in vocab.items()):
      raise ValueError('an HF vocab.json must map characters to non-negative integer ids')
    self.vocab = dict(vocab)
    self.add_blank = bool(add_blank)
    self.normalize = bool(normalize)
    if language is not None and not isinstance(language, str):
      raise ValueError(f'an HF tokenizer language must be a string, got {language!r:.40}')
    self.language = language
    for name, token in (('pad_token', pad_token), ('unk_token', unk_token)):
      if token is not None and not isinstance(token, str):
        raise ValueError(f'an HF tokenizer {name} must be a string, got {token!r:.40}')
    self.pad_token, self.unk_token = pad_token, unk_token
    self.n_vocab = max(self.vocab.values()) + 1
    self._words = sorted(self.vocab, key=len, reverse=True)

  def text_to_ids(self, text):
    check_text(text)
    ids, lost = self._ids(text)
    if lost:
      chars.warn_dropped(lost)
    if ids is None:
      raise NothingToSay(f'text has nothing to say for this voice: {text[:50]!r}')
    return ids

  def _ids(self, text):
    """(ids, or None where nothing is left; the letters, digits and symbols dropped)."""
    if self.normalize:
      # VitsTokenizer keeps vocabulary entries as written and lowercases everything else.
      out, i = [], 0
      while i < len(text):
        w = next((w for w in self._words if w and text.startswith(w, i)), None)
        out.append(w if w is not None else text[i].lower())
        i += len(w) if w is not None else 1
      text = ''.join(out)
    if self.language == 'ron':   # (VitsTokenizer's one language rule, after normalizing)
      text = text.replace('\u021b', '\u0163')
    # Characters outside the vocabulary are dropped, as VitsTokenizer does; the letters,
    # digits and symbols among them are named in a warning (punctuation and spaces go
    # quietly: MMS vocabularies hold few marks, and a warning per full stop says nothing).
    lost = list(dict.fromkeys(c for c in text if c not in self.vocab and
                              unicodedata.category(c)[0] not in 'PZC'))
    if self.normalize:
      text = ''.join(c for c in text if c in self.vocab).strip()
    kept = ''.join(c for c in text if c in self.vocab)
    if not kept.strip():
      return None, lost
    ids = [self.vocab[c] for c in kept]
    return (intersperse(ids, 0) if self.add_blank else ids), lost

  def split_sentences(self, text):
    return sentences.split_sentences(text, max_chars=400)

  def text_to_sentence_ids(self, text):
    check_text(text)
    out, lost = [], []
    for sentence in self.split_sentences(text):
      ids, dropped = self._ids(sentence)
      lost += [c for c in dropped if c not in lost]
      if ids is not None:
        out.append(ids)
    if lost:   # one warning for the text
      chars.warn_dropped(lost)
    if not out:
      raise NothingToSay(f'text has nothing to say for this voice: {text[:50]!r}')
    return out

  def __repr__(self):
    return f'HfFrontend(n_vocab={self.n_vocab}, add_blank={self.add_blank})'
