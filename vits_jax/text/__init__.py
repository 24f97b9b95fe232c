"""Text frontends: text -> the token ids a VITS model was trained on.

    frontend = get_frontend('vits')                       # official VITS: english_cleaners2
    frontend = get_frontend('piper', config=onnx_json)    # a Piper voice's .onnx.json dict
    ids = frontend.text_to_ids('Hello there.')
    per_sentence = frontend.text_to_sentence_ids(long_text)
"""

from vits_jax.text.chars import UnknownCharactersWarning
from vits_jax.text.frontend import (Frontend, HfFrontend, PiperFrontend, VitsFrontend,
                                    intersperse)
from vits_jax.text.symbols import SYMBOLS

FRONTENDS = {'vits': VitsFrontend, 'piper': PiperFrontend, 'hf': HfFrontend}


def get_frontend(kind, **kwargs):
  """Builds a text frontend.

  Args:
    kind: 'vits' (kwargs: `cleaners`, default ['english_cleaners2']; `add_blank`, default
      True), 'piper' (kwargs: `config`, the dict of a voice's .onnx.json) or 'hf'
      (kwargs: `vocab`, `add_blank`, `normalize`, `language`).
    **kwargs: passed to the frontend class.

  Returns:
    a `Frontend`.

  Raises:
    ValueError: unknown kind or bad arguments.
  """
  if kind not in FRONTENDS:
    raise ValueError(f'unknown text frontend {kind!r}; known: {", ".join(FRONTENDS)}')
  return FRONTENDS[kind](**kwargs)


__all__ = ['Frontend', 'HfFrontend', 'PiperFrontend', 'VitsFrontend', 'SYMBOLS', 'FRONTENDS',
           'UnknownCharactersWarning', 'get_frontend', 'intersperse']
