"""A voice's generator described by its constructor fields, built only when needed.

A fresh process that synthesizes with programs from the cache (`vits_jax.inference`) never
traces the model, so it needs the model's fields (hop, margins, speakers, channels) but not
the Flax module: `LazySynthesizer` answers those from the fields and builds the
`SynthesizerTrn` (importing Flax, about 0.13 s here) on the first use of anything else
(`apply`, a method). It hashes, compares and prints by its fields, so the programs keyed by
it are the same whether or not the module was built.
"""

from typing import Any, Dict

from vits_jax.models import receptive


def _frozen(value):
  if isinstance(value, (list, tuple)):
    return tuple(_frozen(v) for v in value)
  return value


class LazySynthesizer:
  """`SynthesizerTrn(**fields)`, built on first use of anything but its fields.

  Args:
    fields: the constructor fields (`synthesizer.synthesizer_kwargs`; lists become tuples).
  """

  def __init__(self, fields: Dict[str, Any]):
    self._fields = {k: _frozen(v) for k, v in sorted(fields.items())}
    self._key = tuple(self._fields.items())
    self._module = None

  def module(self):
    """The Flax `SynthesizerTrn` (built once)."""
    if self._module is None:
      from vits_jax.models.synthesizer import SynthesizerTrn
      self._module = SynthesizerTrn(**self._fields)
    return self._module

  def __getattr__(self, name: str):
    if name.startswith("_"):
      raise AttributeError(name)
    fields = self.__dict__.get("_fields", {})
    if name in fields:
      return fields[name]
    return getattr(self.module(), name)

  @property
  def hop_length(self) -> int:
    hop = 1
    for u in self._fields["upsample_rates"]:
      hop *= int(u)
    return hop

  def latent_margins(self):
    return (receptive.flow_reach(self, total=True), receptive.decoder_reach(self, total=True))

  def isolation_gap(self) -> int:
    return receptive.isolation_gap(self)

  def __eq__(self, other) -> bool:
    return isinstance(other, LazySynthesizer) and other._key == self._key

  def __hash__(self) -> int:
    return hash(self._key)

  def __repr__(self) -> str:
    return "SynthesizerTrn(" + ", ".join(f"{k}={v!r}" for k, v in self._key) + ")"
