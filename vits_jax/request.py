"""Synthesis requests given as JSON objects: the one check of their fields, for `serve.py`'s
requests and the lines of `infer.py --json-input`.

A request is `{"text": ..., "speaker" or "speaker_id", "length_scale", "noise_scale",
"noise_w_scale", "sentence_silence", "volume", "normalize", "seed"}`: the fields of Piper's
HTTP server (and of its C++ CLI's `--json-input`), all but `text` optional.
"""

from typing import Any, Dict, Iterable, Tuple

from vits_jax.voice import check_knobs

# JSON field -> (`Voice.synthesize` keyword, JSON type).
FIELDS = {
    "length_scale": ("length_scale", float),
    "noise_scale": ("noise_scale", float),
    "noise_w_scale": ("noise_scale_w", float),   # Piper's name
    "noise_scale_w": ("noise_scale_w", float),   # this project's
    "sentence_silence": ("sentence_silence", float),
    "volume": ("volume", float),
    "normalize": ("normalize", bool),
    "seed": ("seed", int),
}
SPEAKER_FIELDS = ("speaker_id", "speaker")   # the first one given counts


def parse(fields: Any, voice, defaults: Dict[str, Any],
          extra: Iterable[str] = ()) -> Tuple[str, Dict[str, Any]]:
  """One request's text and `Voice.synthesize` keywords.

  Args:
    fields: the decoded JSON.
    voice: the `Voice` that will speak it (checks the speaker).
    defaults: keywords for the fields a request leaves out (speaker, noise_scale, ...).
    extra: further fields the caller reads itself (they pass unchecked).

  Raises:
    ValueError: one line naming the field that is wrong.
  """
  if not isinstance(fields, dict):
    raise ValueError("the request must be a JSON object")
  unknown = sorted(set(fields) - set(FIELDS) - set(SPEAKER_FIELDS) - {"text"} - set(extra))
  if unknown:
    raise ValueError(f"unknown field(s): {', '.join(unknown)}")
  text = fields.get("text")
  if not isinstance(text, str) or not text.strip():
    raise ValueError("no text to speak (give \"text\")")
  knobs = dict(defaults)
  given = {}
  for name, (key, kind) in FIELDS.items():
    if name not in fields:
      continue
    if key in given:
      raise ValueError(f"give one of {given[key]} and {name}, not both")
    given[key] = name
    value = fields[name]
    if kind is bool:
      if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    elif isinstance(value, bool) or not isinstance(value, (int, float) if kind is float
                                                  else int):
      raise ValueError(f"{name} must be {'a number' if kind is float else 'an integer'}, "
                       f"got {value!r}")
    knobs[key] = value
  speaker = next((fields[f] for f in SPEAKER_FIELDS if fields.get(f) is not None), None)
  if speaker is not None:   # (the voice checks its type and range)
    knobs["speaker"] = voice.speaker_id(speaker)
  try:
    check_knobs(**{k: v for k, v in knobs.items() if k not in ("speaker", "normalize")})
  except ValueError as e:   # the message starts with the keyword: name the field given
    key, rest = str(e).split(" ", 1)
    raise ValueError(f"{given.get(key, key)} {rest}") from None
  return text, knobs
