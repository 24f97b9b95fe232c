"""espeak-ng access without a system package: `phonemizer` on the library of `espeakng-loader`.

Two ways in:

* `phonemize_words(text, language)` -- phonemizer's `EspeakBackend`, by default with
  punctuation kept and stress marks, as the official VITS `english_cleaners2` calls it.
* `ClausePhonemizer(voice).clauses(text)` -- espeak-ng's own clause loop
  (`espeak_TextToPhonemes`, IPA, no separators), the call Piper's frontend is built on. It
  also returns the text each call consumed, so the caller can tell which punctuation ended the
  clause: the library `espeakng-loader` ships lacks piper's `..WithTerminator` variant.

espeak-ng keeps global state (voice, pending look-ahead character), so every user of it here
gets its own copy of the library (phonemizer's `EspeakAPI` loads a private copy per instance)
and a lock.
"""

import dataclasses
import functools
import logging
import os
import re
import threading


# espeak_TextToPhonemes arguments: espeakCHARS_AUTO (UTF-8 for valid UTF-8, what piper passes)
# and phoneme mode bit 1 = IPA, with no separator between phonemes.
_TEXT_MODE_AUTO = 0
_PHONEME_MODE_IPA = 0x02

# The punctuation phonemizer keeps around words. The official VITS ran phonemizer 2.x, whose
# default marks were exactly these (3.x added brackets, which are not in the symbol table).
VITS_PUNCTUATION_MARKS = ';:,.!?¡¿—…"«»“”'


@functools.lru_cache(maxsize=None)
def configure_phonemizer():
  """Points phonemizer at espeakng-loader's espeak-ng library and data (once per process).

  Returns:
    (library path, data path) of the espeak-ng in use.
  """
  import espeakng_loader
  from phonemizer.backend.espeak.wrapper import EspeakWrapper

  library, data = espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
  EspeakWrapper.set_library(library)
  EspeakWrapper.set_data_path(data)
  # For anything else in the process that initializes espeak-ng without a data path.
  os.environ.setdefault('ESPEAK_DATA_PATH', data)
  return library, data


def espeak_version():
  """The version string of the espeak-ng library phonemizer uses here, e.g. '1.52.0'."""
  from phonemizer.backend import EspeakBackend

  configure_phonemizer()
  return '.'.join(str(v) for v in EspeakBackend.version())


@functools.lru_cache(maxsize=None)
def _backend(language, stress):
  from phonemizer.backend import EspeakBackend

  configure_phonemizer()
  # phonemizer warns about every language switch ("(fr)...(en)"); the flags are removed.
  quiet = logging.getLogger('vits_jax.text.phonemizer')
  quiet.setLevel(logging.ERROR)
  return EspeakBackend(language, preserve_punctuation=False, with_stress=stress,
                       language_switch='remove-flags', logger=quiet), threading.Lock()


def _marks_regex(marks):
  # Like phonemizer's: a run of marks with the spaces around it, where '.' and ',' between
  # two digits are decimal separators, not marks.
  others = re.escape(''.join(m for m in marks if m not in '.,'))
  decimals = re.escape(''.join(m for m in marks if m in '.,'))
  alternatives = [f'[{others}]'] if others else []
  if decimals:
    alternatives += [f'(?<![0-9])[{decimals}]', f'[{decimals}](?![0-9])']
  return re.compile(rf'(\s*(?:{"|".join(alternatives)})+\s*)+')


_VITS_MARKS_RE = _marks_regex(VITS_PUNCTUATION_MARKS)


def phonemize_words(text, language='en-us', punctuation=True, stress=True):
  """Phonemizes `text` with phonemizer's espeak backend as official VITS does.

  With `punctuation`, this is phonemizer's `preserve_punctuation=True`: the text is cut at
  runs of marks, the pieces are phonemized, and the marks put back between them. We do the
  cutting ourselves because phonemizer 3.4 cuts at the first occurrence of the mark's
  characters, so "costs 3.50 dollars." lost "50 dollars" ("three." + a separate line).

  Args:
    text: one utterance (no newlines needed; whitespace is word separation).
    language: espeak-ng voice, e.g. 'en-us'.
    punctuation: keep `VITS_PUNCTUATION_MARKS` in the output (english_cleaners2).
    stress: keep stress marks (english_cleaners2).

  Returns:
    IPA string with stress marks, words separated by spaces.
  """
  from phonemizer.separator import Separator

  if punctuation:
    pieces, marks, start = [], [], 0
    for match in _VITS_MARKS_RE.finditer(text):
      pieces.append(text[start:match.start()])
      marks.append(re.sub(r'\s+', ' ', match.group()))
      start = match.end()
    pieces.append(text[start:])
  else:
    pieces, marks = [text], []
  todo = [i for i, p in enumerate(pieces) if p.strip()]
  backend, lock = _backend(language, stress)
  with lock:
    out = backend.phonemize([pieces[i].strip() for i in todo],
                            separator=Separator(phone='', syllable='', word=' '),
                            strip=True, njobs=1) if todo else []
  phonemes = [''] * len(pieces)
  for i, p in zip(todo, out):
    phonemes[i] = p.strip()
  joined = phonemes[0] + ''.join(m + p for m, p in zip(marks, phonemes[1:]))
  return joined.strip()


@dataclasses.dataclass
class Clause:
  """One espeak-ng clause.

  Attributes:
    phonemes: IPA phonemes of the clause, words separated by spaces.
    consumed: the input text this call consumed; ends with the clause's punctuation and, when
      more text follows, usually the whitespace and one look-ahead character after it.
    last: True when the input is exhausted after this clause.
  """
  phonemes: str
  consumed: str
  last: bool


class ClausePhonemizer:
  """espeak-ng's clause-by-clause phonemization on a private copy of the library.

  Args:
    voice: espeak-ng voice name, e.g. 'en-us'.
    library: path of a libespeak-ng; default: espeakng-loader's.
    data_path: its espeak-ng-data folder; default: espeakng-loader's.
    mnemonics: output espeak-ng's ASCII phoneme names instead of IPA.
    separator: a character put between the phonemes of a word; default none.

  Raises:
    ValueError: the voice does not exist in this espeak-ng.
  """

  def __init__(self, voice, library=None, data_path=None, mnemonics=False, separator=None):
    from phonemizer.backend.espeak.api import EspeakAPI

    if library is None or data_path is None:
      default_library, default_data = configure_phonemizer()
      library, data_path = library or default_library, data_path or default_data
    self.voice = voice
    self._mode = (0 if mnemonics else _PHONEME_MODE_IPA) | (ord(separator) << 8 if separator else 0)
    self._api = EspeakAPI(library, data_path)
    self._lock = threading.Lock()
    try:
      failed = self._api.set_voice_by_name(voice.encode('utf-8')) != 0
    except RuntimeError:   # phonemizer raises for a voice espeak-ng does not know
      failed = True
    if failed:
      raise ValueError(f'espeak-ng has no voice {voice!r}')

  def clauses(self, text):
    """Splits and phonemizes `text` the way espeak-ng does, one clause per library call.

    Args:
      text: any text.

    Returns:
      list of `Clause`, in order; their `consumed` strings concatenate to `text`.
    """
    import ctypes

    data = text.encode('utf-8')
    pointer = ctypes.pointer(ctypes.c_char_p(data))
    out = []
    with self._lock:
      while pointer.contents.value is not None:
        before = len(pointer.contents.value)
        phonemes = self._api.text_to_phonemes(pointer, _TEXT_MODE_AUTO, self._mode)
        rest = pointer.contents.value
        after = 0 if rest is None else len(rest)
        start = len(data) - before
        consumed = data[start:len(data) - after].decode('utf-8', errors='replace')
        out.append(Clause((phonemes or b'').decode('utf-8'), consumed, rest is None))
        if after == before:  # no progress: never loop forever on odd input
          break
    return out


@functools.lru_cache(maxsize=None)
def clause_phonemizer(voice, mnemonics=False, separator=None):
  """A cached `ClausePhonemizer` on espeakng-loader's espeak-ng."""
  return ClausePhonemizer(voice, mnemonics=mnemonics, separator=separator)
