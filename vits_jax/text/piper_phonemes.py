"""Piper's text frontend: espeak-ng phonemes per sentence, then the voice's phoneme/id map.

Piper voices were trained on the ids `piper-phonemize` gives, so that is what we use where it
installs (its wheels stop at Python 3.11). It phonemizes with its own espeak-ng build, one
clause at a time, and after each clause appends the punctuation that ended it ('.', '?', '!',
', ', ': ', '; '); a sentence-ending clause closes the sentence. Phonemes are NFD-decomposed
code points, and '(en)'-style language-switch flags are removed.

Without `piper-phonemize` we run the same loop on espeakng-loader's espeak-ng (1.52.0).
That library lacks the call that reports the clause terminator, so we read it off the text
each clause consumed (`_terminator`); on piper's own espeak-ng this reproduces
piper-phonemize exactly (tests). The newer build renders a few phonemes differently; we put
back piper's IPA for the ones we know (`_OLD_IPA`), found by aligning the IPA with espeak-ng's
phoneme names. Measured: identical ids on 77/77 fixture texts and 819/819 English sentences
(LJSpeech, VCTK, prose), but other words or languages may still differ.
"""

import dataclasses
import functools
import logging
import os
import re
import threading
import unicodedata

from vits_jax.text import espeak

_LOGGER = logging.getLogger(__name__)

BOS, EOS, PAD = '^', '$', '_'

# Set to 1 to use the espeakng-loader fallback even where piper-phonemize imports.
FORCE_FALLBACK_ENV = 'VITS_JAX_PIPER_FALLBACK'

# espeak-ng keeps state between calls (the voice, a look-ahead): a text and the empty call
# that ends its look-ahead run as one step, so threads sharing a Voice get the same phonemes
# as one thread would.
_LOCK = threading.RLock()

# What piper appends after a clause, by the espeak-ng clause type of its last punctuation.
# Types marked "optional space" in espeak-ng (fullwidth/CJK marks, ¡ ¿, danda, ...) and the
# ellipsis carry extra flag bits that piper's comparison does not match, so nothing is added.
_APPENDED = {'period': '.', 'question': '?', 'exclamation': '!', 'comma': ', ',
             'colon': ': ', 'semicolon': '; '}
_SENTENCE_TYPES = ('period', 'question', 'exclamation', 'period_opt', 'question_opt',
                   'exclamation_opt', 'eof', 'paragraph')
# espeak-ng's clause type of common punctuation (espeak-ng-data PropList + readclause.c).
_CLAUSE_TYPE = {
    '.': 'period', '۔': 'period', '።': 'period',
    '։': 'period_opt', '।': 'period_opt', '॥': 'period_opt', '。': 'period_opt',
    '．': 'period_opt', '｡': 'period_opt',
    '?': 'question', '؟': 'question', '፧': 'question', '？': 'question_opt',
    '!': 'exclamation', '‼': 'exclamation', '！': 'exclamation_opt',
    ',': 'comma', '،': 'comma', '፣': 'comma', '、': 'comma_opt', '，': 'comma_opt',
    '､': 'comma_opt',
    ':': 'colon', '፥': 'colon', '：': 'colon_opt',
    ';': 'semicolon', '\u0387': 'semicolon', '؛': 'semicolon', '፤': 'semicolon', '–': 'semicolon',
    '—': 'semicolon', '；': 'semicolon_opt', '¡': 'semicolon_opt', '¿': 'semicolon_opt',
    '…': 'ellipsis',
}
_CLOSERS = set('"\'”’»›)]}')

# Phonemes whose IPA espeak-ng changed after the build piper-phonemize ships (1.52-dev):
# voice -> {espeak-ng phoneme name: (IPA now, IPA in piper's build)}. en-US 'o@' (four,
# more, course) became 'ɔː' with the horse-hoarse merger (espeak-ng 5b01dd86, in 1.52.0): it
# was 68 of 68 differences on 400 LJSpeech-style sentences. German short 'y' (fünf) became
# 'ʏ' (c5170748).
_OLD_IPA = {'en-us': {'o@': ('ɔː', 'oː')}, 'de': {'y': ('ʏ', 'y')}}
_SEP = '\u00a6'  # between phonemes while aligning IPA with phoneme names


@functools.lru_cache(maxsize=None)
def _import_piper_phonemize():
  try:
    import piper_phonemize
  except ImportError:
    return None
  return piper_phonemize


def piper_phonemize_module():
  """`piper_phonemize`, or None where it is missing or `FORCE_FALLBACK_ENV` is set."""
  if os.environ.get(FORCE_FALLBACK_ENV, '') not in ('', '0'):
    return None
  return _import_piper_phonemize()


@functools.lru_cache(maxsize=None)
def _announce_fallback(why):
  _LOGGER.warning(
      '%s; phonemizing with espeakng-loader\'s espeak-ng %s instead, which may give other '
      'phonemes than the voice was trained with on some words.', why, espeak.espeak_version())


def _terminator(consumed, last):
  """espeak-ng's clause type for a clause that consumed `consumed`.

  The clause ends at its punctuation; espeak-ng has also read the whitespace after it and
  usually one look-ahead character, and closing quotes/brackets may sit in between.
  """
  text = consumed
  if not last and text and not text[-1].isspace():
    # Drop the look-ahead character, unless the clause ended right at a closer/punctuation.
    stripped = text[:-1]
    if stripped and (stripped[-1].isspace() or stripped[-1] in _CLOSERS
                     or stripped[-1] in _CLAUSE_TYPE):
      text = stripped
  trailing = text[len(text.rstrip()):]
  text = text.rstrip()
  while text and text[-1] in _CLOSERS:
    text = text[:-1]
  end = len(text)
  while end and text[end - 1] in _CLAUSE_TYPE:
    end -= 1
  run = text[end:]
  if trailing.count('\n') >= 2 and (run or not last):
    return 'paragraph'
  if run.startswith('..') or run.startswith('…'):
    return 'ellipsis'
  if run:
    # espeak-ng takes the first of a run like '?!' or '!!!'.
    return _CLAUSE_TYPE[run[0]]
  return 'eof' if last else 'none'


def phonemize_fallback(text, voice, clause_phonemizer=None):
  """Piper's `phonemize_espeak(text, voice)` rebuilt on espeakng-loader's espeak-ng.

  Args:
    text: any text.
    voice: espeak-ng voice name.
    clause_phonemizer: an `espeak.ClausePhonemizer` for `voice` on another espeak-ng build
      (tests run the loop on piper's own library); default: espeakng-loader's.

  Returns:
    list of sentences, each a list of phonemes (single code points).
  """
  sentences, current = [], None
  old_ipa = _OLD_IPA.get(voice.lower()) if clause_phonemizer is None else None
  if old_ipa:
    clauses = espeak.clause_phonemizer(voice, separator=_SEP).clauses(text)
    names = espeak.clause_phonemizer(voice, mnemonics=True, separator=_SEP).clauses(text)
    if len(names) == len(clauses):
      for clause, named in zip(clauses, names):
        clause.phonemes = _restore_old_ipa(clause.phonemes, named.phonemes, old_ipa)
    else:
      clauses = [dataclasses.replace(c, phonemes=c.phonemes.replace(_SEP, '')) for c in clauses]
  else:
    clauses = (clause_phonemizer or espeak.clause_phonemizer(voice)).clauses(text)
  for clause in clauses:
    if current is None:
      current = []
      sentences.append(current)
    current.extend(_remove_language_flags(unicodedata.normalize('NFD', clause.phonemes)))
    kind = _terminator(clause.consumed, clause.last)
    current.extend(_APPENDED.get(kind, ''))
    if kind in _SENTENCE_TYPES:
      current = None
  return sentences


def _restore_old_ipa(ipa, names, old_ipa):
  """Puts back piper's IPA for phonemes espeak-ng renders differently now.

  Args:
    ipa: a clause in IPA, words split by ' ', phonemes by `_SEP`.
    names: the same clause as espeak-ng phoneme names, split the same way.
    old_ipa: {phoneme name: (IPA now, old IPA)}.

  Returns:
    the clause in IPA without separators.
  """
  ipa_words, name_words = ipa.split(' '), names.split(' ')
  if len(ipa_words) != len(name_words):
    return ipa.replace(_SEP, '')
  words = []
  for ipa_word, name_word in zip(ipa_words, name_words):
    phonemes, phoneme_names = ipa_word.split(_SEP), name_word.split(_SEP)
    if len(phonemes) == len(phoneme_names):
      for i, name in enumerate(phoneme_names):
        fix = old_ipa.get(name.lstrip("',%="))  # without stress marks
        if fix:
          phonemes[i] = phonemes[i].replace(*fix)
    words.append(''.join(phonemes))
  return ' '.join(words)


def _remove_language_flags(phonemes):
  out, in_flag = [], False
  for p in phonemes:
    if in_flag:
      in_flag = p != ')'
    elif p == '(':
      in_flag = True
    else:
      out.append(p)
  return out


def check_espeak_voice(voice, fallback=None):
  """Makes sure espeak-ng can phonemize with `voice` (a Piper voice's `espeak.voice`).

  The one place that decides whether an espeak-ng voice exists: the Piper frontend calls it
  when it is built (so a voice fails at load, not at its first sentence) and Piper export
  before writing a voice that Piper could not run. It asks the espeak-ng that will phonemize:
  piper-phonemize's (Piper's own) where it is used, else espeakng-loader's.

  Args:
    voice: the espeak-ng voice name.
    fallback: as `phonemize`.

  Raises:
    ValueError: 'espeak-ng has no voice ...', or espeak-ng cannot be started (one line).
  """
  if not isinstance(voice, str) or not voice.strip() or '\0' in voice:
    raise ValueError(f'espeak-ng has no voice {voice!r}')
  module = None if fallback else piper_phonemize_module()
  _check_voice(voice, module is None)


@functools.lru_cache(maxsize=None)
def _check_voice(voice, use_fallback):
  """`check_espeak_voice`'s lookup, remembered for voices that exist (errors are not)."""
  if not use_fallback:
    try:
      with _LOCK:
        piper_phonemize_module().phonemize_espeak('', voice)   # sets the voice, says nothing
    except RuntimeError:   # 'Failed to set eSpeak-ng voice'
      raise ValueError(f'espeak-ng has no voice {voice!r}') from None
    return
  try:
    espeak.clause_phonemizer(voice)   # ValueError: espeak-ng has no voice 'xx'
  except OSError as e:   # it loads a private copy of the library (a full /tmp, ...)
    raise ValueError(f'cannot start espeak-ng for voice {voice!r} ({e.strerror or e}'
                     + (f': {e.filename}' if getattr(e, 'filename', None) else '') + ')') from None


def phonemize(text, voice, fallback=None):
  """Sentences of phonemes for `text`, as piper-phonemize gives them (or the fallback).

  Args:
    text: any text.
    voice: espeak-ng voice of the Piper voice (`config['espeak']['voice']`).
    fallback: True to use espeakng-loader's espeak-ng; default: only where piper-phonemize
      is missing (or `FORCE_FALLBACK_ENV` is set).

  Returns:
    list of sentences, each a list of phonemes (single code points); a sentence may be empty.
  """
  text = break_long_words(text)
  module = None if fallback else piper_phonemize_module()
  if module is None:
    if _import_piper_phonemize() is None:
      why = 'piper-phonemize is not available (it needs Python <= 3.11)'
    elif piper_phonemize_module() is None:
      why = f'{FORCE_FALLBACK_ENV} is set'
    else:
      why = 'the espeakng-loader fallback was asked for'
    _announce_fallback(why)
  # espeak-ng keeps a look-ahead between calls: after a text ending in a word and "..", the
  # next text began with a spoken "dot" (piper-tts too). An empty call ends it, so each
  # text is phonemized as if it came first.
  with _LOCK:
    if module is None:
      sentences = phonemize_fallback(text, voice)
      phonemize_fallback('', voice)
    else:
      sentences = module.phonemize_espeak(text, voice)
      module.phonemize_espeak('', voice)
  return sentences


# The longest run of non-space characters handed to espeak-ng as one word. piper-phonemize's
# espeak-ng crashes the process (SIGSEGV) on some words of a few thousand characters (4,000
# of 'supercalifragilistic' repeated); no word of any language comes near this.
MAX_WORD_CHARS = 500


def break_long_words(text):
  """`text` with every run of more than `MAX_WORD_CHARS` non-space characters cut into
  pieces of that many, separated by spaces (what espeak-ng then reads as several words)."""
  if len(text) <= MAX_WORD_CHARS:
    return text
  return re.sub(r"\S{%d,}" % (MAX_WORD_CHARS + 1),
                lambda m: " ".join(m.group(0)[i:i + MAX_WORD_CHARS]
                                   for i in range(0, len(m.group(0)), MAX_WORD_CHARS)), text)


def phonemes_to_ids(phonemes, id_map):
  """Piper ids: BOS, PAD, then every phoneme followed by PAD, then EOS.

  This is piper-phonemize's `phonemes_to_ids` (what piper's training and its C++ runtime use;
  piper's Python runtime omits the PAD after BOS). Phonemes missing from the map are skipped.

  Args:
    phonemes: list of phoneme strings.
    id_map: the voice's `phoneme_id_map` (phoneme -> list of ids).

  Returns:
    list of int ids.
  """
  pad = id_map[PAD]
  ids = list(id_map[BOS]) + list(pad)
  for p in phonemes:
    if p in id_map:
      ids.extend(id_map[p])
      ids.extend(pad)
  ids.extend(id_map[EOS])
  return ids


def split_sentences(text, voice):
  """Cuts `text` where espeak-ng (espeakng-loader's build) ends sentences.

  Returns:
    list of stripped, non-empty sentence texts.
  """
  out, current = [], ''
  with _LOCK:
    clauses = espeak.clause_phonemizer(voice).clauses(text)
    espeak.clause_phonemizer(voice).clauses('')   # ends the look-ahead, as `phonemize`
  for clause in clauses:
    consumed = clause.consumed
    # A clause usually consumes the first character of the next one: cut before it where
    # it follows a space (any: an ideographic one too) or, a letter in scripts without
    # spaces ("你好。世界。"), punctuation.
    own, ahead = consumed, ''
    if not clause.last and len(consumed) >= 2 and not consumed[-1].isspace() and (
        consumed[-2].isspace() or unicodedata.category(consumed[-2])[0] == 'P' and
        unicodedata.category(consumed[-1])[0] == 'L'):
      own, ahead = consumed[:-1], consumed[-1:]
    current += own
    if _terminator(clause.consumed, clause.last) in _SENTENCE_TYPES:
      out.append(current)
      current = ''
    current += ahead
  out.append(current)
  return [s.strip() for s in out if s.strip()]
