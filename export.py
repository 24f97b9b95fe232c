"""Export a voice for other runtimes: Piper, Hugging Face transformers, the official VITS code.

    python export.py --voice runs/my_voice --to piper --out voices/my_voice.onnx
    python export.py --voice path/to/mms-tts-eng --to hf --out voices/mms_hf
    python export.py --voice runs/vctk --step 20000 --to official --out voices/vctk_official

`--voice` is anything infer.py takes: 'joe' (bundled), a Piper .onnx, a training workdir
(latest checkpoint, or --step N), an HF VitsModel folder or an official G_*.pth. Outputs:

  piper     NAME.onnx + NAME.onnx.json: the `piper` CLI, piper's PiperVoice, Home Assistant
  hf        config.json + model.safetensors: transformers' VitsModel.from_pretrained
  official  G_<step>.pth + config.json (+ D_<step>.pth from a workdir): jaywalnut310/vits

An existing output is kept unless --force; on an error nothing is written.
"""

import argparse
import os
import sys


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--voice", default="joe", help="voice to export (default: joe)")
  p.add_argument("--to", required=True, help="piper, hf or official")
  p.add_argument("--out", required=True, help="output: NAME.onnx (piper) or a folder")
  p.add_argument("--step", type=int, default=None,
                 help="checkpoint step of a training workdir (default: the latest)")
  p.add_argument("--force", action="store_true", help="replace an existing output")
  return p.parse_args(argv)


def _names_output(e: OSError, out: str) -> bool:
  """Whether the error is about writing `out` (the file, a file in it, a folder above it, or
  the temporary file or folder `.OUT.*` beside it that the export writes first) rather than
  about reading the voice (which may sit in the same folder)."""
  if not e.filename:
    return False
  where = os.path.abspath(os.fspath(e.filename))
  out = os.path.abspath(out)
  temporary = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.")
  return (where == out or out.startswith(where + os.sep) or where.startswith(out + os.sep)
          or where.startswith(temporary))


def _error(text: str) -> None:
  """One `error:` line on stderr (a name given with a newline stays on one line)."""
  from vits_jax.files import one_line
  print(f"error: {one_line(text)}", file=sys.stderr)


def main(argv=None):
  args = parse_args(argv)
  import warnings
  from vits_jax.export import export_voice
  from vits_jax.files import warning_line
  warnings.showwarning = warning_line
  try:
    result = export_voice(args.voice, args.to, args.out, step=args.step, force=args.force)
  except ValueError as e:
    _error(f"{e}")
    return 2
  except OSError as e:
    if isinstance(e, (FileNotFoundError, FileExistsError)) and not _names_output(e, args.out):
      _error(f"{e}")   # a missing voice; an output kept without --force
    elif e.filename and not _names_output(e, args.out):   # reading the voice, not writing
      _error(f"cannot read {e.filename}: {e.strerror or e}")
    elif isinstance(e, (FileExistsError, NotADirectoryError)) and e.filename and \
        os.path.isfile(e.filename):   # --out file.onnx/x: a folder that is a file
      _error(f"cannot write {args.out}: {e.filename} is a file, not a folder")
    else:                                     # e.g. --out /proc/x.onnx
      where = f" ({e.filename})" if e.filename else ""
      _error(f"cannot write {args.out}: {e.strerror or e}{where}")
    return 2
  for note in result.notes:
    print(f"note: {note}", file=sys.stderr)
  if result.fresh:
    print(f"note: {result.fresh} tensors the source does not have (modules synthesis never "
          "runs, e.g. a Piper voice's posterior encoder) were freshly initialized; a vits_jax "
          "load of the export leaves them out again", file=sys.stderr)
  for f in result.files:
    size = f.stat().st_size
    print(f"wrote {f} ({size / 2**20:.1f} MiB)" if size >= 2**20 // 10 else
          f"wrote {f} ({max(size, 1) / 2**10:.1f} KiB)")
  return 0


if __name__ == "__main__":
  code = main()
  # Everything is written and closed: skip the interpreter's teardown, during which the
  # reader threads of a damaged checkpoint's failed read print tracebacks of their own.
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)   # pylint: disable=protected-access
