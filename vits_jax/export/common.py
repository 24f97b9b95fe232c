"""What every exporter shares: complete generator params, and writing an output folder
atomically (all files or none)."""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
from flax import traverse_util

from vits_jax.convert import source as source_lib
from vits_jax.convert import torch_names


def complete_params(src: source_lib.Source, seed: int = 0
                    ) -> Tuple[Dict[str, Any], int, List[str]]:
  """The source's generator params with the modules an inference-only source lacks (a Piper
  voice has no posterior encoder) freshly initialized, so formats that hold the whole
  generator (HF, official) load without missing keys. Inference never reads those modules;
  training continued from the export learns them again.

  Returns:
    (params, number of tensors freshly initialized, the modules made of them only, as
    'enc_q' or 'dp/post_flows_0': an export lists them in its `OWN_SECTION` so a load of
    it knows them for untrained, `source_lib.untrained_modules`).
  """
  from vits_jax.models.synthesizer import build_synthesizer, param_shapes
  want = traverse_util.flatten_dict(param_shapes(build_synthesizer(src.config)))
  have = traverse_util.flatten_dict(src.params)
  rng = np.random.default_rng(seed)
  fresh = 0
  out = {}
  for key, shape in want.items():
    if key in have:
      out[key] = np.asarray(have[key], np.float32)
      continue
    fresh += 1
    out[key] = _fresh(key[-1], tuple(shape.shape), rng)
  for key in out:    # weight norm: g = ||v|| for fresh pairs
    if key[-1] == "weight_g" and key not in have:
      out[key], _ = torch_names.unfold_weight(key[:-1], out[key[:-1] + ("weight_v",)])
  modules: List[Tuple[str, ...]] = []   # the outermost modules with no tensor of the source
  for depth in (1, 2):
    for prefix in sorted({key[:depth] for key in want if key not in have}):
      if not any(prefix[:len(m)] == m for m in modules) and not any(
          key[:depth] == prefix for key in have):
        modules.append(prefix)
  return traverse_util.unflatten_dict(out), fresh, ["/".join(m) for m in modules]


def _fresh(name: str, shape, rng) -> np.ndarray:
  if name in ("bias", "beta", "m", "logs"):
    return np.zeros(shape, np.float32)
  if name == "gamma":
    return np.ones(shape, np.float32)
  return (0.02 * rng.standard_normal(shape)).astype(np.float32)


def share_as_usual(path: Path) -> None:
  """Gives `path` (a file, or a folder and all in it) the permissions a plain `open` or
  `mkdir` would under the process's umask: `tempfile` creates them private (0600, 0700),
  which would keep an exported voice from other users and services."""
  mask = os.umask(0o022)
  os.umask(mask)
  path = Path(path)
  for p in [path] + (sorted(path.rglob("*")) if path.is_dir() else []):
    p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


@contextlib.contextmanager
def output_dir(out: Path, force: bool) -> Iterator[Path]:
  """A temporary folder beside `out` that becomes `out` when the block succeeds; on any error
  nothing is left behind. With `force` an existing `out` is replaced only where it holds
  nothing but files the block wrote again (an earlier export of the same files): a folder
  with anything else in it (a training workdir, another step's checkpoint, the user's own
  files) is never deleted.

  Raises:
    FileExistsError: `out` exists and not `force`, or `out` is a file, or it holds files
      this export does not write.
  """
  out = Path(out)
  if out.exists() and not out.is_dir():
    raise FileExistsError(f"{out} is a file, not a folder: give a folder to export into")
  if out.exists() and not force:
    raise FileExistsError(f"{out} exists (pass --force to replace it)")
  parent = out.parent if str(out.parent) else Path(".")
  parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
  try:
    yield tmp
    share_as_usual(tmp)
    if out.exists():
      # (`--out .`: the temporary folder is inside `out` itself)
      others = sorted(set(os.listdir(out)) - set(os.listdir(tmp)) - {tmp.name})
      if others:
        raise FileExistsError(
            f"{out} holds files this export does not write ({', '.join(others[:3])}"
            f"{', ...' if len(others) > 3 else ''}), so it is not replaced even with --force: "
            "export into a new folder")
      old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=parent))
      os.replace(out, old / out.name)
      os.replace(tmp, out)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
