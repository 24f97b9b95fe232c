"""Text to speech from the command line.

    python infer.py --text "Hello there." --out hello.wav            # default voice 'joe'
    python infer.py --input lines.txt --out-dir wavs/ --voice runs/vctk --speaker 12
    cat lines.txt | python infer.py --input - --out-dir wavs/

`--input` takes one utterance per line (blank lines are skipped) and writes 0001.wav,
0002.wav, ... in input order. `--voice` is 'joe' (bundled), a Piper .onnx, a training
workdir, an HF VitsModel folder or an official G_*.pth. Output is 16-bit PCM WAV.
Compiled programs are cached in ~/.cache/vits_jax/xla (set VITS_JAX_XLA_CACHE= to disable),
so later runs start faster.
"""

import argparse
import os
import sys
import warnings


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--text", help="text to speak (several sentences are fine)")
  src.add_argument("--input", help="file with one utterance per line, '-' for stdin")
  p.add_argument("--out", help="output WAV for --text (default out.wav)")
  p.add_argument("--out-dir", help="output folder for --input (0001.wav, 0002.wav, ...)")
  p.add_argument("--voice", default="joe", help="voice name or path (default: joe)")
  p.add_argument("--speaker", default=None, help="speaker id or name (multi-speaker voices)")
  p.add_argument("--noise-scale", type=float, default=0.667, help="prior noise (default 0.667)")
  p.add_argument("--noise-scale-w", type=float, default=0.8,
                 help="duration noise (default 0.8)")
  p.add_argument("--length-scale", type=float, default=1.0,
                 help="speaking time multiplier, > 1 is slower (default 1.0)")
  p.add_argument("--sentence-silence", type=float, default=0.0,
                 help="seconds of silence between sentences (default 0)")
  p.add_argument("--batch-size", type=int, default=16, help="sentences per model call")
  p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
  return p.parse_args(argv)


def _read_lines(path):
  if path == "-":
    lines = sys.stdin.read().splitlines()
  else:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"input file not found: {path}")
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  lines = [line.strip() for line in lines if line.strip()]
  if not lines:
    raise ValueError(f"no text in {'stdin' if path == '-' else path}")
  return lines


def run(args):
  """Synthesizes as `args` say; raises ValueError/FileNotFoundError for bad input."""
  if args.text is not None and args.out_dir:
    raise ValueError("--out-dir goes with --input; use --out for --text")
  if args.input is not None and args.out:
    raise ValueError("--out goes with --text; use --out-dir for --input")
  if args.input is not None and not args.out_dir:
    raise ValueError("--input needs --out-dir")
  if not args.length_scale > 0:
    raise ValueError(f"--length-scale must be positive, got {args.length_scale}")
  if args.noise_scale < 0 or args.noise_scale_w < 0:
    raise ValueError("noise scales must be >= 0")
  if args.batch_size < 1:
    raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
  if args.sentence_silence < 0:
    raise ValueError("--sentence-silence must be >= 0")
  if args.text is not None and not args.text.strip():
    raise ValueError("text is empty")
  texts = [args.text] if args.text is not None else _read_lines(args.input)
  if args.out:
    parent = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(parent):
      raise FileNotFoundError(f"output folder does not exist: {parent}")

  from vits_jax import xla_cache
  xla_cache.enable()
  import soundfile as sf
  from tqdm import tqdm
  from vits_jax.voice import load_voice

  voice = load_voice(args.voice)
  speaker = voice.speaker_id(args.speaker)
  kwargs = dict(speaker=speaker, noise_scale=args.noise_scale,
                noise_scale_w=args.noise_scale_w, length_scale=args.length_scale,
                seed=args.seed, batch_size=args.batch_size,
                sentence_silence=args.sentence_silence)
  if args.text is not None:
    out = args.out or "out.wav"
    audio = voice.synthesize_batch(texts, **kwargs)[0]
    _write(sf, out, audio, voice.sample_rate)
    print(f"wrote {out} ({len(audio) / voice.sample_rate:.2f} s)", file=sys.stderr)
    return
  os.makedirs(args.out_dir, exist_ok=True)
  width = max(4, len(str(len(texts))))
  # Whole batches at a time keep memory bounded for long input files.
  chunk = max(args.batch_size * 4, 64)
  with tqdm(total=len(texts), unit="utt", disable=len(texts) < 2, file=sys.stderr) as bar:
    for start in range(0, len(texts), chunk):
      audios = voice.synthesize_batch(texts[start:start + chunk], progress=bar.update,
                                      **kwargs)
      for k, audio in enumerate(audios):
        _write(sf, os.path.join(args.out_dir, f"{start + k + 1:0{width}d}.wav"), audio,
               voice.sample_rate)
  print(f"wrote {len(texts)} files to {args.out_dir}", file=sys.stderr)


def _write(sf, path, audio, sample_rate):
  import numpy as np
  sf.write(path, np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16")


def main(argv=None):
  args = parse_args(argv)
  # Record warnings ourselves so they reach stderr as one `warning:` line each, also when
  # the caller (a notebook, pytest) has installed its own warning handler.
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("default")
    try:
      run(args)
      error = None
    except (ValueError, FileNotFoundError) as e:
      error = e
  for w in caught:
    print(f"warning: {w.message}", file=sys.stderr)
  if error is not None:
    print(f"error: {error}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
