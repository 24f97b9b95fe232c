"""Splitting long text into sentences (for the VITS frontend; Piper voices use espeak-ng's).

Rules follow espeak-ng's sentence ends, so both frontends cut text in similar places: a run
of '.', '!' or '?' (closing quotes and brackets may follow) ends a sentence when whitespace
follows; a full stop does not when the next word starts in lowercase, or after a known
abbreviation ("Dr.", "Mrs.") or a lone initial. An ellipsis does not end a sentence (as in
espeak-ng); a blank line always does.
Sentences longer than `max_chars` are cut again at clause punctuation, then at spaces.
Nothing inside a `[[ phoneme block ]]` ends or cuts a sentence, but a block longer than
`max_chars`, cut between its phonemes, is closed at the cut and reopened after it.
"""

import re

_ABBREVIATIONS = frozenset(
    'mr mrs ms dr drs st co jr sr maj gen rev lt hon sgt capt esq ltd col ft prof vs etc '
    'no mt inc jan feb mar apr jun jul aug sep sept oct nov dec e.g i.e'.split())

_END_RE = re.compile(r'([.!?]+)(["\'”’»)\]]*)(\s+)')
_CLAUSE_RE = re.compile(r'[,;:—–]\s+')
_BLOCK_RE = re.compile(r'\[\[.*?\]\]')


def _outside_blocks(text):
  """A predicate on positions of `text`: True where no phoneme block covers them."""
  spans = [m.span() for m in _BLOCK_RE.finditer(text)]
  return lambda i: not any(a < i < b for a, b in spans)


def _ends_sentence(text, match):
  if '\n\n' in match.group(3):
    return True
  if match.group(1) == '.':
    if text[match.end():][:1].islower():
      return False
    word = text[:match.start()].rsplit(None, 1)[-1] if text[:match.start()].strip() else ''
    word = word.lstrip('"\'“‘«([').lower()
    if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
      return False
  return True


def _cut_long(sentence, max_chars):
  """Cuts `sentence` into pieces of at most `max_chars` at clause marks, else at spaces."""
  pieces = []
  while len(sentence) > max_chars:
    window = sentence[:max_chars + 1]
    outside = _outside_blocks(sentence)
    cuts = [m.end() for m in _CLAUSE_RE.finditer(window) if outside(m.start())]
    if not cuts or cuts[-1] < max_chars // 4:
      cuts = [m.end() for m in re.finditer(r'\s+', window) if outside(m.start())]
    if not cuts:   # the window lies in one phoneme block: cut it between its phonemes,
      block = next((m for m in _BLOCK_RE.finditer(sentence)   # closing and reopening it
                    if m.start() < max_chars - 3 < m.end()), None)
      spaces = [m.start() for m in re.finditer(r'\s+', sentence[:max_chars - 3])
                if block is not None and m.start() > block.start() + 2]
      if spaces and sentence[:spaces[-1]].strip():
        pieces.append(sentence[:spaces[-1]].strip() + ' ]]')
        sentence = '[[ ' + sentence[spaces[-1]:].strip()
        continue
    cut = cuts[-1] if cuts else max_chars
    pieces.append(sentence[:cut].strip())
    sentence = sentence[cut:].strip()
  if sentence:
    pieces.append(sentence)
  return pieces


def split_sentences(text, max_chars=None):
  """Splits `text` into sentences.

  Args:
    text: any text.
    max_chars: if set, longer sentences are cut into pieces of at most this many characters.

  Returns:
    list of non-empty, stripped sentences, in order.
  """
  sentences, start = [], 0
  outside = _outside_blocks(text)
  for match in _END_RE.finditer(text):
    if match.group(1).startswith('..') or not outside(match.start()):
      continue  # an ellipsis, or inside a phoneme block
    if match.end() < len(text) and _ends_sentence(text, match):
      sentences.append(text[start:match.end()].strip())
      start = match.end()
  sentences.append(text[start:].strip())
  # A blank line ends a sentence even without punctuation.
  sentences = [p.strip() for s in sentences for p in re.split(r'\n\s*\n', s)]
  sentences = [' '.join(s.split()) for s in sentences if s.strip()]
  if max_chars:
    sentences = [p for s in sentences for p in _cut_long(s, max_chars)]
  return sentences
