"""Which input characters a voice can say; the rest is dropped with one warning per text.

espeak-ng reads emoji by their names ("grinning face") and spells letters of scripts the voice
does not know ("Chinese letter", "hebrew shin"), which is never what a user wants from a TTS
voice. So before phonemization we drop emoji, control and private-use characters, and letters
of scripts other than Latin, Greek and the voice's own. Text without such characters passes
unchanged (but for invisible format characters such as soft hyphens, which are removed), so
Piper ids stay identical to piper-phonemize's.
"""

import os
import re
import sys
import unicodedata
import warnings

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class UnknownCharactersWarning(UserWarning):
  """Some characters of the input were dropped because the voice cannot say them."""


# espeak-ng language (voice name up to the first '-') -> scripts of its letters, for languages
# not written in Latin. Latin and Greek are allowed for every voice.
_NATIVE_SCRIPTS = {}
for _scripts, _languages in [
    (('CYRILLIC',), 'ba be bg cv kk kaa ky mk nog ru sr tt uk'),
    (('ARABIC',), 'ar fa sd ug ur'),
    (('HEBREW',), 'he'),
    (('DEVANAGARI',), 'hi kok mr ne'),
    (('BENGALI',), 'as bn bpy'),
    (('GURMUKHI',), 'pa'), (('GUJARATI',), 'gu'), (('ORIYA',), 'or'), (('TAMIL',), 'ta'),
    (('TELUGU',), 'te'), (('KANNADA',), 'kn'), (('MALAYALAM',), 'ml'), (('SINHALA',), 'si'),
    (('GEORGIAN',), 'ka'), (('ARMENIAN',), 'hy hyw'), (('ETHIOPIC',), 'am ti'),
    (('MYANMAR',), 'my shn'), (('THAI',), 'th'), (('CHEROKEE',), 'chr'),
    (('HAN', 'BOPOMOFO'), 'cmn hak yue zh'),
    (('HAN', 'HIRAGANA', 'KATAKANA'), 'ja'),
    (('HANGUL', 'HAN'), 'ko'),
]:
  for _language in _languages.split():
    _NATIVE_SCRIPTS[_language] = set(_scripts)

# First words of Unicode character names that name a script (other than Latin and Greek).
_SCRIPT_WORDS = {
    'CJK': 'HAN', 'IDEOGRAPHIC': 'HAN', 'KANGXI': 'HAN', 'HIRAGANA': 'HIRAGANA',
    'KATAKANA': 'KATAKANA', 'HANGUL': 'HANGUL', 'BOPOMOFO': 'BOPOMOFO',
}
for _word in ('CYRILLIC ARABIC HEBREW DEVANAGARI BENGALI GURMUKHI GUJARATI ORIYA TAMIL TELUGU '
              'KANNADA MALAYALAM SINHALA THAI LAO TIBETAN MYANMAR GEORGIAN ARMENIAN ETHIOPIC '
              'KHMER MONGOLIAN CHEROKEE SYRIAC THAANA NKO TIFINAGH YI VAI RUNIC OGHAM CANADIAN '
              'JAVANESE BALINESE SUNDANESE TAGALOG COPTIC SAMARITAN MANDAIC').split():
  _SCRIPT_WORDS[_word] = _word

# Emoji and pictographs, their modifiers and joiners (espeak-ng reads them by name).
_EMOJI_RANGES = [(0x1F000, 0x1FAFF), (0x2600, 0x27BF), (0x2B00, 0x2BFF), (0x1F1E6, 0x1F1FF),
                 (0xFE00, 0xFE0F), (0xE0000, 0xE007F), (0x200D, 0x200D), (0x20E3, 0x20E3)]


def is_emoji(char):
  code = ord(char)
  return any(lo <= code <= hi for lo, hi in _EMOJI_RANGES)


def script_of(char):
  """The script of a letter, mark or digit as a word ('HAN', 'CYRILLIC', ...); None if Latin,
  Greek or shared (digits, combining marks, fullwidth Latin ...)."""
  name = unicodedata.name(char, '')
  words = name.replace('-', ' ').split()
  if words[:1] in (['HALFWIDTH'], ['FULLWIDTH']):
    words = words[1:]
  return _SCRIPT_WORDS.get(words[0]) if words else None


def allowed_scripts(voice):
  """Scripts (besides Latin and Greek) whose letters an espeak-ng voice reads natively."""
  return _NATIVE_SCRIPTS.get(voice.split('-')[0].lower(), set())


def espeak_can_say(char, scripts):
  """True if `char` is worth passing to an espeak-ng voice whose native scripts are `scripts`."""
  if char.isspace():
    return True
  category = unicodedata.category(char)
  if category in ('Cc', 'Co', 'Cn', 'Cs') or is_emoji(char):
    return False
  if category[0] in 'LMN':
    script = script_of(char)
    return script is None or script in scripts
  return True


def _caller_stacklevel():
  # Point the warning at the first frame outside vits_jax (the user's call).
  frame, level = sys._getframe(2), 2
  while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
    frame, level = frame.f_back, level + 1
  return level


def _join_gap(match):
  before, after, rest = match.group(1), match.group(2), match.string[match.end():]
  if not rest or unicodedata.category(rest[0])[0] == 'P':
    return ''  # "pizza 🍕." -> "pizza.", not "pizza ."
  return before or after or ' '  # "I❤NY" -> "I NY": neighbours stay separate words


def drop_unknown(text, can_say):
  """Removes the characters `can_say(char)` rejects, warning once which ones.

  A run of dropped characters leaves one space between the words around it (none before
  punctuation or at the end); invisible format characters (soft hyphen, joiners, BOM) are
  removed silently, and a zero-width space is a space.

  Args:
    text: input text.
    can_say: predicate on one character.

  Returns:
    the text without the characters; `text` itself if nothing was dropped.
  """
  out, dropped = [], []
  for char in text:
    if char == '\u200b':   # a zero-width space still parts words (as espeak-ng and unidecode)
      char = ' '
    elif unicodedata.category(char) == 'Cf' and not is_emoji(char):
      continue
    if can_say(char):
      out.append(char)
    else:
      if char not in dropped:
        dropped.append(char)
      out.append('\x00')
  if not dropped:
    return ''.join(out)
  warn_dropped(dropped)
  return re.sub(r'(\s*)\x00+(\s*)', _join_gap, ''.join(out))


def warn_dropped(dropped):
  """One `UnknownCharactersWarning` naming the characters dropped (the first 10)."""
  shown = ' '.join(f'{c!r} (U+{ord(c):04X})' for c in dropped[:10])
  more = f' and {len(dropped) - 10} more' if len(dropped) > 10 else ''
  warnings.warn(f'dropped characters the voice cannot say: {shown}{more}',
                UnknownCharactersWarning, stacklevel=_caller_stacklevel())
