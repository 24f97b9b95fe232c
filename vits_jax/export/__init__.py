"""Export a voice to the formats other runtimes load: Piper, Hugging Face, official VITS.

    from vits_jax.export import export_voice
    export_voice('runs/my_voice', 'piper', 'out/my_voice.onnx')   # + my_voice.onnx.json
    export_voice('path/to/mms-tts-eng', 'hf', 'out/mms_hf')       # VitsModel folder
    export_voice('runs/vctk', 'official', 'out/vctk_official')    # G_*.pth, D_*.pth, config

The source is anything `vits_jax.voice.load_voice` accepts (read by
`vits_jax.convert.source.load_source`). Each target lives in its own module: `piper`
(ONNX graph written with the onnx helper API), `hf` (safetensors + VitsConfig) and
`official` (PyTorch zip checkpoints written without torch). Outputs are written atomically:
on an error nothing is left behind, and an existing output is replaced only with `force`.
"""

import dataclasses
from pathlib import Path
from typing import List, Optional

TARGETS = ("piper", "hf", "official")


@dataclasses.dataclass
class Exported:
  """What an export wrote: the files, tensors the source lacked (freshly initialized), and
  notes for the user."""
  files: List[Path]
  fresh: int = 0
  notes: List[str] = dataclasses.field(default_factory=list)


def export_voice(source, to: str, out, step: Optional[int] = None,
                 force: bool = False) -> Exported:
  """Exports `source` to the format `to` at `out`.

  Raises:
    ValueError: unknown target, not a voice, or a voice the target cannot express.
    FileNotFoundError: no such source. FileExistsError: `out` exists and not `force`.
  """
  if to not in TARGETS:
    raise ValueError(f"unknown export target {to!r}; expected one of {', '.join(TARGETS)}")
  if not str(out).strip():
    raise ValueError("--out is empty")
  from vits_jax.convert.source import load_source
  src = load_source(source, step=step, discriminator=(to == "official"))
  out = Path(out).expanduser()   # a quoted '~/voices' as the shell would
  if to == "piper":
    from vits_jax.export import piper
    from vits_jax.models.synthesizer import build_synthesizer
    from vits_jax.text import get_frontend
    from vits_jax.voice import Voice
    voice = Voice(build_synthesizer(src.config, dtype=None), src.params,
                  get_frontend(**src.frontend), src.sample_rate, name=src.name,
                  speaker_names=src.speaker_names, defaults=src.config.get("infer"))
    return Exported(list(piper.export_piper(voice, out, force=force)))
  if to == "hf":
    from vits_jax.export import hf
    folder, fresh, notes = hf.export_hf(src, out, force=force)
    return Exported(sorted(folder.iterdir()), fresh, notes)
  from vits_jax.export import official
  folder, fresh, notes = official.export_official(src, out, force=force)
  return Exported(sorted(folder.iterdir()), fresh, notes)
