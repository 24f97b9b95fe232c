"""Text cleaners of the official VITS (keithito/tacotron lineage), written for this project.

`english_cleaners2` is what the official LJSpeech and VCTK VITS configs train with:
transliterate to ASCII, lowercase, expand abbreviations, phonemize with espeak-ng (en-us,
punctuation kept, stress marks), collapse whitespace.

The official transliteration is `unidecode`; we fold with Unicode NFKD plus a small table,
which agrees with it on accented Latin letters (composed or decomposed), quotes, dashes,
common signs (currency, degrees, fractions) and whitespace. Characters with no ASCII form
here (emoji, CJK, and also Greek and Cyrillic, which unidecode would romanize) are dropped
by the frontend, with a warning, before they get here.
"""

import re
import unicodedata

from vits_jax.text import espeak

_WHITESPACE_RE = re.compile(r'\s+')

_ABBREVIATIONS = [(re.compile(r'\b%s\.' % abbr, re.IGNORECASE), full) for abbr, full in [
    ('mrs', 'misess'), ('mr', 'mister'), ('dr', 'doctor'), ('st', 'saint'),
    ('co', 'company'), ('jr', 'junior'), ('maj', 'major'), ('gen', 'general'),
    ('drs', 'doctors'), ('rev', 'reverend'), ('lt', 'lieutenant'), ('hon', 'honorable'),
    ('sgt', 'sergeant'), ('capt', 'captain'), ('esq', 'esquire'), ('ltd', 'limited'),
    ('col', 'colonel'), ('ft', 'fort'),
]]

# Letters and marks NFKD does not reduce to ASCII, spelled as unidecode spells them.
_ASCII = {
    'ß': 'ss', 'æ': 'ae', 'Æ': 'AE', 'œ': 'oe', 'Œ': 'OE', 'ø': 'o', 'Ø': 'O', 'ð': 'd',
    'Ð': 'D', 'þ': 'th', 'Þ': 'Th', 'ł': 'l', 'Ł': 'L', 'đ': 'd', 'Đ': 'D', 'ı': 'i',
    'ħ': 'h', 'Ħ': 'H', 'ŋ': 'ng', 'Ŋ': 'NG', 'ĸ': 'q',
    '‘': "'", '’': "'", '‚': ',', '‛': "'", '′': "'", '“': '"', '”': '"', '„': ',,',
    '‟': '"', '″': '"', '«': '<<', '»': '>>', '‹': '<', '›': '>', '–': '-', '—': '--',
    '‐': '-', '‑': '-', '−': '-', '…': '...', '\u00a0': ' ', '·': '*', '×': 'x',
    '€': 'EUR', '£': 'PS', '¥': 'Y=', '¢': 'C/', '°': 'deg', '½': ' 1/2', '¼': ' 1/4',
    '¾': ' 3/4', '¿': '?', '¡': '!', '©': '(c)', '®': '(r)', '™': '(tm)', '§': 'SS',
    '¶': 'P', 'µ': 'u', '±': '+-', '÷': '/',
}


def to_ascii(char):
  """ASCII spelling of one character, or None where there is none (emoji, CJK, ...)."""
  if char.isascii():
    return char
  if char in _ASCII:
    return _ASCII[char]
  if char.isspace():   # line and paragraph separators, ideographic space...: a space
    return ' '
  if unicodedata.combining(char):   # a decomposed accent: its letter is already there
    return ''
  folded = ''.join(c for c in unicodedata.normalize('NFKD', char) if not unicodedata.combining(c))
  if folded and folded.isascii():
    return folded
  return None


def convert_to_ascii(text):
  """Transliterates to ASCII; characters without an ASCII form are removed."""
  return ''.join(to_ascii(c) or '' for c in text)


def lowercase(text):
  return text.lower()


def collapse_whitespace(text):
  return _WHITESPACE_RE.sub(' ', text)


def expand_abbreviations(text):
  for regex, replacement in _ABBREVIATIONS:
    text = regex.sub(replacement, text)
  return text


def basic_cleaners(text):
  """Lowercase and collapse whitespace, no transliteration."""
  return collapse_whitespace(lowercase(text))


def transliteration_cleaners(text):
  """ASCII, lowercase, collapse whitespace (for non-English text)."""
  return collapse_whitespace(lowercase(convert_to_ascii(text)))


def english_cleaners(text):
  """ASCII, lowercase, abbreviations, espeak-ng phonemes without punctuation or stress."""
  text = expand_abbreviations(lowercase(convert_to_ascii(text)))
  phonemes = espeak.phonemize_words(collapse_whitespace(text).strip(), 'en-us',
                                    punctuation=False, stress=False)
  return collapse_whitespace(phonemes)


def english_cleaners2(text):
  """ASCII, lowercase, abbreviations, espeak-ng phonemes with punctuation and stress."""
  text = expand_abbreviations(lowercase(convert_to_ascii(text)))
  phonemes = espeak.phonemize_words(collapse_whitespace(text).strip(), 'en-us')
  return collapse_whitespace(phonemes)


CLEANERS = {
    'basic_cleaners': basic_cleaners,
    'transliteration_cleaners': transliteration_cleaners,
    'english_cleaners': english_cleaners,
    'english_cleaners2': english_cleaners2,
}

# Cleaners whose output is phonemes (the others output letters).
PHONEMIZING = ('english_cleaners', 'english_cleaners2')


def clean(text, cleaner_names):
  """Runs `text` through the named cleaners in order.

  Raises:
    ValueError: a name is not a known cleaner.
  """
  for name in cleaner_names:
    if name not in CLEANERS:
      raise ValueError(f'unknown cleaner {name!r}; known: {", ".join(sorted(CLEANERS))}')
    text = CLEANERS[name](text)
  return text
