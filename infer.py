"""Text to speech from the command line.

    python infer.py --text "Hello there." --out hello.wav            # default voice 'joe'
    python infer.py --input lines.txt --out-dir wavs/ --voice runs/vctk --speaker 12
    cat lines.txt | python infer.py --input - --out-dir wavs/
    cat chapter.txt | python infer.py --text - --out chapter.wav

`--input` takes one utterance per line (blank lines are skipped) and writes 0001.wav,
0002.wav, ... in input order, each as soon as it is done. `--voice` is 'joe' (bundled), a
Piper .onnx, a training workdir, an HF VitsModel folder or an official G_*.pth. Output is
16-bit PCM; `--output-raw` streams it to stdout as it is synthesized:

    python infer.py --text "Hello there." --output-raw | aplay -r 22050 -f S16_LE -c 1
    python infer.py --voice runs/vctk --convert in.wav --source-speaker 3 --speaker 12 --out out.wav

Compiled programs are cached in ~/.cache/vits_jax/xla (set VITS_JAX_XLA_CACHE= to disable),
so later runs start faster.
"""

import argparse
import io
import os
import sys
import warnings


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--text", help="text to speak (several sentences are fine; '-' reads "
                                   "all of stdin)")
  src.add_argument("--input", help="file with one utterance per line, '-' for stdin")
  src.add_argument("--convert", metavar="IN.wav",
                   help="voice conversion: re-speak this recording as --speaker "
                        "(multi-speaker voices; give --source-speaker; '-' reads stdin)")
  src.add_argument("--list-speakers", action="store_true",
                   help="print the voice's speaker ids and names, then exit")
  p.add_argument("--out", help="output audio file for --text / --convert (default out.wav; "
                               ".wav, .flac, .ogg or .mp3)")
  p.add_argument("--out-dir", help="output folder for --input (0001.wav, 0002.wav, ...)")
  p.add_argument("--json-input", action="store_true",
                 help="--input lines are JSON objects, as Piper's --json-input: {\"text\": ..., "
                      "\"output_file\" (in --out-dir), \"speaker\" or \"speaker_id\", "
                      "\"length_scale\", \"noise_scale\", \"noise_w_scale\", "
                      "\"sentence_silence\", \"volume\", \"normalize\", \"seed\"}; "
                      "the flags set what a line leaves out")
  p.add_argument("--output-raw", action="store_true",
                 help="write 16-bit mono PCM to stdout as audio is ready (for aplay/sox)")
  p.add_argument("--voice", default="joe", help="voice name or path (default: joe)")
  p.add_argument("--step", type=int, default=None,
                 help="for a training workdir --voice: the checkpoint step (default: latest)")
  p.add_argument("--speaker", default=None, help="speaker id or name (multi-speaker voices)")
  p.add_argument("--source-speaker", default=None,
                 help="speaker id or name of the --convert recording")
  p.add_argument("--noise-scale", type=float, default=None,
                 help="prior noise (default: the voice's own, 0.667 for most); with "
                      "--convert the posterior's (default 0, its mean)")
  p.add_argument("--noise-scale-w", "--noise-w-scale", dest="noise_scale_w", type=float,
                 default=None, help="duration noise (default: the voice's own, 0.8 for most; "
                 "--noise-w-scale is Piper's spelling)")
  p.add_argument("--length-scale", type=float, default=None,
                 help="speaking time multiplier, > 1 is slower (default: the voice's own, "
                      "1.0 for most)")
  p.add_argument("--sentence-silence", type=float, default=0.0,
                 help="seconds of silence between sentences (default 0)")
  p.add_argument("--volume", type=float, default=1.0,
                 help="multiply the audio by this (default 1.0; clipped to full scale)")
  p.add_argument("--normalize", action="store_true",
                 help="scale each sentence to full scale, as Piper does by default "
                      "(--output-raw then streams sentence by sentence)")
  p.add_argument("--batch-size", type=int, default=16,
                 help="sentences per model call for --input (--text streams one at a time)")
  p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
  return p.parse_args(argv)


_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3"}
_SUBTYPES = {"OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}   # others: 16-bit PCM


# The most text read at once from stdin or an --input file (about 60 hours of speech): more
# is refused rather than read into memory (`--text - < /dev/zero` would take it all).
MAX_TEXT_BYTES = 64 << 20


def _stdin_bytes(flag="--input -"):
  if sys.stdin is None:
    raise ValueError(f"{flag}: stdin is closed")
  buffer = getattr(sys.stdin, "buffer", None)   # a text-only stand-in has none
  return buffer if buffer is not None else io.BytesIO(
      sys.stdin.read().encode("utf-8", "surrogateescape"))


def _read_capped(f, name):
  """All of `f` (a binary file or pipe), at most MAX_TEXT_BYTES."""
  data = f.read(MAX_TEXT_BYTES + 1)
  if len(data) > MAX_TEXT_BYTES:
    raise ValueError(f"{name} holds more than {MAX_TEXT_BYTES >> 20} MiB of text: split it "
                     "(or stream it line by line: --input - --output-raw)")
  return data


def _live_lines():
  """Lines of stdin as they arrive, for --output-raw: a program writing lines into the pipe
  hears each one as soon as it is written, as with Piper's CLI."""
  said = False
  stdin = _stdin_bytes()
  for number, raw in enumerate(iter(lambda: stdin.readline(MAX_TEXT_BYTES + 1), b""), 1):
    if len(raw) > MAX_TEXT_BYTES:
      raise ValueError(f"line {number} of stdin is longer than {MAX_TEXT_BYTES >> 20} MiB")
    try:
      line = raw.decode("utf-8").strip()
    except UnicodeDecodeError as e:
      raise ValueError(f"stdin is not UTF-8 text ({e.reason} in line {number})") from None
    if line:
      said = True
      yield line
  if not said:
    raise ValueError("no text in stdin")


def _decode(data, name):
  try:
    return data.decode("utf-8-sig")   # (the BOM Windows editors write is dropped)
  except UnicodeDecodeError as e:
    raise ValueError(f"{name} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _input_name(path):
  return "stdin" if path == "-" else path


def _numbered_lines(path):
  """(line number, line) of each non-blank line of the --input file ('-': stdin)."""
  name = _input_name(path)
  if path == "-":
    data = _read_capped(_stdin_bytes(), name)
  else:
    if os.path.isdir(path):
      raise ValueError(f"--input {path} is a folder, not a text file")
    if not os.path.exists(path):   # (a pipe, `<(...)`, is no regular file but reads fine)
      raise FileNotFoundError(f"input file not found: {path}")
    try:
      with open(path, "rb") as f:
        data = _read_capped(f, path)
    except OSError as e:
      raise ValueError(f"cannot read --input {path}: {e.strerror}") from None
  # Lines end at '\n' (a '\r' before it goes with the strip), as --output-raw's stdin lines
  # do: str.splitlines also splits at U+2028, form feeds and the like, which broke a JSON
  # line holding one and shifted the numbered files after it.
  lines = [(n, line.strip()) for n, line in enumerate(_decode(data, name).split("\n"), 1)
           if line.strip()]
  if not lines:
    raise ValueError(f"no text in {name}")
  return lines


def _read_lines(path):
  return [line for _, line in _numbered_lines(path)]


def _json_lines(path):
  """(line number, object) of each line of a --json-input file; a line that is not JSON is
  an error naming it, before any audio is made."""
  from vits_jax.files import parse_json
  name = _input_name(path)
  entries = []
  for number, line in _numbered_lines(path):
    try:
      entries.append((number, parse_json(line)))
    except ValueError as e:
      raise ValueError(f"{name} line {number}: {e}") from None
  return entries


def _json_jobs(args, voice, knobs, entries):
  """--json-input lines -> (text, synthesis keywords, output file) each, every line checked
  before any audio is made: its fields (`vits_jax.request`), its speaker and its
  `output_file` (a new file inside --out-dir; numbered like --input where left out)."""
  from vits_jax import request
  name = _input_name(args.input)
  width = max(4, len(str(len(entries))))
  jobs, taken = [], {}
  for k, (number, fields) in enumerate(entries):
    try:
      text, line_knobs = request.parse(fields, voice, knobs, extra=("output_file",))
      out = _output_name(fields.get("output_file", f"{k + 1:0{width}d}.wav"))
      if out in taken:
        raise ValueError(f"output_file {out} is also line {taken[out]}'s")
    except ValueError as e:
      raise ValueError(f"{name} line {number}: {e}") from None
    taken[out] = number
    jobs.append((text, line_knobs, out))
  for out, number in taken.items():   # files and folders that cannot both be made
    parts = out.split(os.sep)
    clash = next((taken[os.sep.join(parts[:i])] for i in range(1, len(parts))
                  if os.sep.join(parts[:i]) in taken), None)
    if clash is not None:
      raise ValueError(f"{name} line {number}: output_file {out} needs a folder where line "
                       f"{clash} writes a file")
    if os.path.isdir(os.path.join(args.out_dir, out)):
      raise ValueError(f"{name} line {number}: output_file {out} is an existing folder")
  return jobs


def _output_name(value):
  """A --json-input line's output file, relative to --out-dir (ValueError if it is not a
  path of a known audio format inside it)."""
  if not isinstance(value, str) or not value.strip() or "\0" in value:
    raise ValueError(f"output_file must be a file name, got {value!r}")
  out = os.path.normpath(value)
  if os.path.isabs(value) or out == os.curdir or out.split(os.sep)[0] == os.pardir:
    raise ValueError(f"output_file {value} is not inside --out-dir (give a relative path)")
  if out.count(os.sep) >= MAX_FOLDER_DEPTH:
    raise ValueError(f"output_file {value[:60]}...: more than {MAX_FOLDER_DEPTH} folders deep")
  suffix = os.path.splitext(out)[1].lower()
  if suffix not in _FORMATS:
    raise ValueError(f"output_file {value}: unknown audio format {suffix or '(no suffix)'!r} "
                     f"(use {', '.join(_FORMATS)})")
  _check_name_length(out, "output_file")
  return out


# The longest file name written (bytes): file systems take 255, and the temporary file a
# write goes through adds its own prefix and suffix.
MAX_NAME_BYTES = 230
# The most folders an output_file may go down inside --out-dir.
MAX_FOLDER_DEPTH = 32


def _check_name_length(path, what):
  longest = max(path.split(os.sep), key=lambda part: len(part.encode("utf-8", "replace")))
  if len(longest.encode("utf-8", "replace")) > MAX_NAME_BYTES:
    raise ValueError(f"{what} {path[:60]}...: a file or folder name over {MAX_NAME_BYTES} "
                     "bytes (most file systems take 255)")


def _check_args(args):
  if args.list_speakers and (args.out or args.out_dir or args.output_raw):
    raise ValueError("--list-speakers prints to stdout: leave out --out, --out-dir and "
                     "--output-raw")
  if args.out_dir and args.input is None:
    raise ValueError("--out-dir goes with --input; use --out for --text and --convert")
  if args.input is not None and args.out:
    raise ValueError("--out goes with --text; use --out-dir for --input")
  if args.output_raw and (args.out or args.out_dir):
    raise ValueError("--output-raw writes to stdout: leave out --out and --out-dir")
  if args.input is not None and not args.out_dir and not args.output_raw:
    raise ValueError("--input needs --out-dir (or --output-raw)")
  if args.json_input and (args.input is None or args.output_raw):
    raise ValueError("--json-input goes with --input and --out-dir (its lines name files)")
  if args.convert is not None and args.output_raw:
    raise ValueError("--convert writes a file: use --out")
  if args.convert is None and args.source_speaker is not None:
    raise ValueError("--source-speaker goes with --convert")
  if args.convert is not None:   # (the recording sets the timing: no text, no sentences)
    given = [flag for flag, value, default in (
        ("--length-scale", args.length_scale, None), ("--noise-scale-w", args.noise_scale_w,
                                                      None),
        ("--sentence-silence", args.sentence_silence, 0.0)) if value != default]
    if given:
      raise ValueError(f"--convert keeps the recording's timing: {', '.join(given)} "
                       "does not apply (--noise-scale, --seed, --volume and --normalize do)")
  from vits_jax.voice import check_flags
  check_flags(noise_scale=args.noise_scale, noise_scale_w=args.noise_scale_w,
              length_scale=args.length_scale, seed=args.seed,
              sentence_silence=args.sentence_silence, batch_size=args.batch_size,
              volume=args.volume)
  if not args.voice:
    raise ValueError("--voice is empty (leave it out for the default voice, joe)")
  if args.text is not None and not args.text.strip():
    raise ValueError("text is empty")
  if args.list_speakers:
    return
  if args.output_raw:
    if sys.stdout is None:
      raise ValueError("--output-raw: stdout is closed")
    return
  if args.out_dir:
    from vits_jax.files import writable_folder
    writable_folder(args.out_dir, "--out-dir", create=False)   # (made once the voice loads)
    return
  if args.out == "":
    raise ValueError("--out is empty")
  out = args.out or "out.wav"
  suffix = os.path.splitext(out)[1].lower()
  if suffix not in _FORMATS:
    raise ValueError(f"--out {out}: unknown audio format {suffix or '(no suffix)'!r} "
                     f"(use {', '.join(_FORMATS)})")
  parent = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(parent):
    raise FileNotFoundError(f"output folder does not exist: {parent}")
  if os.path.isdir(out):
    raise ValueError(f"--out {out} is a folder")
  _check_name_length(os.path.basename(out), "--out")
  if os.path.exists(out) and not os.access(out, os.W_OK):
    raise ValueError(f"--out {out} cannot be written (permission denied)")
  from vits_jax import files   # (a file made and dropped there: `os.access` says yes to root)
  files.writable_folder(parent, "--out's folder")


def run(args):
  """Synthesizes as `args` say; raises ValueError/FileNotFoundError for bad input."""
  if args.text == "-":   # the whole of stdin is the text (`cat chapter.txt | ...`)
    args.text = _decode(_read_capped(_stdin_bytes("--text -"), "stdin"), "stdin")
  _check_args(args)
  texts = None
  if args.input == "-" and args.output_raw:
    texts = _live_lines()
  elif args.json_input:
    texts = _json_lines(args.input)
  elif args.input is not None:
    texts = _read_lines(args.input)
  if args.convert == "-":
    if sys.stdin is None or sys.stdin.isatty() or not os.path.exists("/dev/stdin"):
      raise ValueError("--convert -: pipe a recording into stdin")
    args.convert = "/dev/stdin"
  if args.convert is not None and os.path.isdir(args.convert):
    raise ValueError(f"--convert {args.convert} is a folder; give a recording")
  if args.convert is not None and not os.path.exists(args.convert):
    raise FileNotFoundError(f"--convert recording not found: {args.convert}")

  from vits_jax import allocator
  from vits_jax import xla_cache
  allocator.keep_freed_memory()   # short-lived and steady: freed buffers stay mapped
  xla_cache.enable()
  # One host of a multi-host job takes its share of --input's lines; --output-raw is one
  # stream, which every host writes whole to its own stdout (as --text).
  if texts is not None and not args.output_raw and _in_cluster():
    from vits_jax.training import parallel
    parallel.initialize_distributed()
  from vits_jax.voice import load_voice

  voice = load_voice(args.voice, step=args.step)
  if args.list_speakers:
    return _list_speakers(voice)
  if args.convert is not None:
    return _convert(args, voice)
  speaker = voice.speaker_id(args.speaker)
  knobs = dict(speaker=speaker, noise_scale=args.noise_scale,
               noise_scale_w=args.noise_scale_w, length_scale=args.length_scale,
               seed=args.seed, sentence_silence=args.sentence_silence, volume=args.volume,
               normalize=args.normalize)
  if args.output_raw:
    return _stream_raw(voice, knobs, [args.text] if texts is None else texts,
                       input_path=None if texts is None else args.input)
  if texts is None:
    return _text_to_file(args, voice, knobs)
  if args.json_input:
    jobs = _json_jobs(args, voice, knobs, texts)
  else:
    width = max(4, len(str(len(texts))))
    jobs = [(text, knobs, f"{k + 1:0{width}d}.wav") for k, text in enumerate(texts)]
  _lines_to_files(args, voice, jobs)


def _list_speakers(voice):
  """One line per speaker and name, `ID<TAB>NAME` (`ID` alone for a speaker without a name;
  a name with control characters, such as a tab or a newline, written JSON-escaped)."""
  if voice.num_speakers <= 1:
    lines = [f"voice {voice.name} has a single speaker (no --speaker)"]
  else:
    from vits_jax import files
    names = {}
    for name, sid in voice.speaker_names.items():
      names.setdefault(sid, []).append(files.one_line(name))
    lines = [f"{sid}\t{name}" if name else str(sid)
             for sid in range(voice.num_speakers) for name in names.get(sid, [""])]
  if sys.stdout is None:
    raise ValueError("--list-speakers: stdout is closed")
  try:
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()
  except OSError as e:   # a full disk, a closed pipe
    raise ValueError(f"--list-speakers: cannot write to stdout: {e.strerror or e}") from None


def _stream_raw(voice, knobs, texts, input_path=None):
  """Each text's audio to stdout as 16-bit PCM as it is made. With `input_path` (--input), a
  line with nothing the voice can say, or with a sentence that would last too long, is
  skipped and counted, as with --out-dir (none sayable is an error); such a sentence found
  after part of its line's audio went out cuts that line short, counted, and the stream goes
  on with the next line."""
  skip_unsayable = input_path is not None
  from vits_jax.files import pcm16
  from vits_jax.inference import SentenceTooLong
  from vits_jax.text.frontend import NothingToSay
  skipped, too_long, cut, said = [], [], [], 0
  try:
    for text in texts:
      started = False
      try:
        for chunk in voice.stream(text, **knobs):
          started = True
          said += 1
          sys.stdout.buffer.write(pcm16(chunk).tobytes())
          sys.stdout.buffer.flush()
      except (NothingToSay, SentenceTooLong) as e:
        if not skip_unsayable:
          raise
        # (the stream computes the text side of the sentences its first window needs
        # before any audio, so a refusal can come before the line starts or after: then
        # the line's audio so far is out, and the stream goes on with the next line)
        (cut if started else too_long if isinstance(e, SentenceTooLong)
         else skipped).append((text, e))
  except BrokenPipeError:   # the reader closed the pipe (`| head -c N`): done
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
  except OSError as e:
    raise ValueError(f"cannot write to stdout: {e.strerror}") from None
  if too_long:
    message = (f"{len(too_long)} line(s) with a sentence that would last too long, found "
               f"before any of the line's audio was written (the first: "
               f"{too_long[0][0][:40]!r}: {too_long[0][1]})")
    if not said:
      raise ValueError(f"nothing written: {message}")
    print(f"warning: skipped {message}", file=sys.stderr)
  if cut:
    print(f"warning: cut {len(cut)} line(s) short where a sentence would last too long, "
          f"after part of the line's audio was written (the first: {cut[0][0][:40]!r}: "
          f"{cut[0][1]})", file=sys.stderr)
  if skipped and not said:
    raise ValueError(f"no line of {_input_name(input_path)} has anything to say for this "
                     f"voice ({len(skipped)} skipped, the first: {skipped[0][0][:40]!r})")
  if skipped:
    print(f"warning: skipped {len(skipped)} line(s) with nothing to say for this voice (the "
          f"first: {skipped[0][0][:40]!r})", file=sys.stderr)


def _in_cluster() -> bool:
  """Whether this looks like one host of a multi-host job (TPU slice, SLURM, explicit
  coordinator): then --input lines are split among the hosts."""
  env = os.environ
  return bool(env.get("JAX_COORDINATOR_ADDRESS")
              or len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
              or _slurm_tasks(env.get("SLURM_NTASKS", "")) > 1)


def _slurm_tasks(value: str) -> int:
  """SLURM_NTASKS as a count (SLURM writes a plain integer; anything else is not a job)."""
  value = value.strip()
  return int(value) if value.isdecimal() else 1


class _NotWritten(Exception):
  """Carries an error of the audio source out of `_write_audio`'s write-error handling."""

  def __init__(self, error: BaseException):
    super().__init__(str(error))
    self.error = error


def _write_audio(path, sample_rate, chunks) -> int:
  """Writes float chunks as 16-bit audio (or Vorbis) to `path`, through a temporary file
  beside it that replaces `path` only when complete: a full disk or a kill never leaves a
  truncated file, or destroys an older one. Returns the number of samples."""
  import shutil
  import tempfile
  import soundfile as sf
  from vits_jax.files import pcm16
  fmt = _FORMATS[os.path.splitext(path)[1].lower()]
  subtype = _SUBTYPES.get(fmt, "PCM_16")
  path = os.path.realpath(path)   # a link: write (and replace) the file it points to
  directory, name = os.path.split(path)
  # A device or a pipe (/dev/stdout, a FIFO a player reads) is not replaced: the finished
  # audio is copied into it from a temporary file of the temp folder.
  through = os.path.exists(path) and not os.path.isfile(path)
  tmp = os.path.join(tempfile.gettempdir() if through else directory,
                     f".{name}.partial-{os.getpid()}")
  samples = 0
  chunks = iter(chunks)
  try:
    # (a bytes name: soundfile encodes a str strictly, and a name that is not UTF-8, legal
    # on Linux, failed with a UnicodeEncodeError after the synthesis)
    with sf.SoundFile(os.fsencode(tmp), "w", samplerate=sample_rate, channels=1, format=fmt,
                      subtype=subtype) as f:
      while True:
        try:
          chunk = next(chunks)
        except StopIteration:
          break
        except Exception as e:   # synthesis failed: not a write error (re-raised below)
          raise _NotWritten(e) from e
        f.write(pcm16(chunk))
        samples += len(chunk)
    if through:
      with open(tmp, "rb") as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
      os.remove(tmp)
    else:
      os.replace(tmp, path)
  except _NotWritten as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise e.error from None
  except (OSError, RuntimeError) as e:   # LibsndfileError is a RuntimeError
    if os.path.exists(tmp):
      os.remove(tmp)
    reason = getattr(e, "strerror", None) or str(e).strip().splitlines()[0]
    for shown in (repr(os.fsencode(tmp)), repr(tmp), tmp):
      reason = reason.replace(shown, "the file")
    if "System error" in reason:   # libsndfile's word for a failed write(): say which
      reason = _write_failure(directory)
    raise ValueError(f"cannot write {path}: {reason}") from None
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return samples


def _write_failure(directory) -> str:
  """Why a write into `directory` failed, where libsndfile only says 'System error'."""
  import shutil
  if not os.path.isdir(directory):
    return f"folder {directory} does not exist"
  try:
    usage = shutil.disk_usage(directory)
    if usage.total > 0 and usage.free < (1 << 20):   # (/proc and its kind have no size)
      return "the disk is full"
  except OSError:
    pass
  if not os.access(directory, os.W_OK):
    return "permission denied"
  import resource
  if resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY:
    return "the disk is full or the file-size limit (ulimit -f) was reached"
  return "the file system refused the write (disk full, read-only, or a file-size limit)"


def _text_to_file(args, voice, knobs):
  """One --text to --out, synthesized window by window (memory stays flat for long texts):
  the same stream as --output-raw, so the file holds exactly the bytes it would print."""
  out = args.out or "out.wav"
  samples = _write_audio(out, voice.sample_rate, voice.stream(args.text, **knobs))
  print(f"wrote {out} ({samples / voice.sample_rate:.2f} s)", file=sys.stderr)


def _lines_to_files(args, voice, jobs):
  """(text, synthesis keywords, file name) jobs to files in --out-dir, each written as soon
  as its audio is complete; jobs with the same keywords are synthesized together. On a
  multi-host run each process takes every process_count-th job and writes its files."""
  from tqdm import tqdm
  from vits_jax import inference
  from vits_jax.files import writable_folder
  writable_folder(args.out_dir, "--out-dir")
  index, count = inference.process_share()
  mine = list(range(index, len(jobs), count))
  ours = {name.split(os.sep)[0] for _, _, name in jobs}
  others = sorted(set(os.listdir(args.out_dir)) - ours)
  if others and index == 0:
    print(f"warning: {args.out_dir} already holds {len(others)} other file(s) (e.g. "
          f"{others[0]}); only this run's {len(jobs)} file(s) are written", file=sys.stderr)
  for k in mine:   # an output that cannot be a file stops the run before any audio
    path = os.path.join(args.out_dir, jobs[k][2])
    if os.path.isdir(path):
      raise ValueError(f"cannot write {path}: it is a folder")
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent):
      parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
      raise ValueError(f"cannot write {path}: {parent} is a file, not a folder")
  groups = {}   # the same keywords -> one batched call, in order of first appearance
  for k in mine:
    groups.setdefault(tuple(sorted(jobs[k][1].items())), []).append(k)
  skipped, too_long = [], []   # lines with nothing to say; with a sentence too long
  with tqdm(total=len(mine), unit="utt", disable=len(mine) < 2, file=sys.stderr) as bar:
    for key, group in groups.items():
      results = voice.iter_batch([jobs[k][0] for k in group], batch_size=args.batch_size,
                                 skip_unsayable=True, **dict(key))
      for k, (audio, why) in zip(group, results):
        bar.update(1)
        if audio.size == 0:   # no file, counted below
          (too_long if isinstance(why, inference.SentenceTooLong) else skipped).append(k)
          continue
        path = os.path.join(args.out_dir, jobs[k][2])
        folder = os.path.dirname(path)
        try:
          os.makedirs(folder, exist_ok=True)
        except OSError as e:
          raise ValueError(f"cannot make folder {folder}: {e.strerror}") from None
        _write_audio(path, voice.sample_rate, [audio])
  where = f" (process {index} of {count})" if count > 1 else ""
  # (on one host of several, a share with nothing said is no error: the others say theirs)
  if too_long:
    too_long.sort()
    names = ", ".join(jobs[k][2] for k in too_long[:5])
    message = (f"{len(too_long)} line(s) with a sentence that would last more than "
               f"{inference.MAX_SENTENCE_FRAMES} frames at their length and duration-noise "
               f"scales (lower them), so no {names}{' ...' if len(too_long) > 5 else ''}")
    if len(too_long) + len(skipped) == len(mine) and count == 1:
      raise ValueError(f"no file written: {message}")
    print(f"warning: skipped {message}{where}", file=sys.stderr)
  if mine and len(skipped) == len(mine) and count == 1:
    raise ValueError(f"no line of {_input_name(args.input)} has anything to say for this "
                     f"voice ({len(skipped)} skipped, the first: {jobs[skipped[0]][0][:40]!r}):"
                     " no file written")
  written = len(mine) - len(skipped) - len(too_long)
  print(f"wrote {written} file{'' if written == 1 else 's'} to {args.out_dir}{where}",
        file=sys.stderr)
  if skipped:
    skipped.sort()
    names = ", ".join(jobs[k][2] for k in skipped[:5])
    print(f"warning: skipped {len(skipped)} line(s) with nothing to say for this voice, so "
          f"no {names}{' ...' if len(skipped) > 5 else ''} (the first: "
          f"{jobs[skipped[0]][0][:40]!r}){where}", file=sys.stderr)


def _convert(args, voice):
  from vits_jax import files
  voice.check_convertible()   # (before a recording is read)
  if args.speaker is None or args.source_speaker is None:
    raise ValueError("--convert needs --source-speaker and --speaker (the target)")
  audio, rate = files.read_audio(args.convert, check=voice.check_recording)
  out = args.out or "out.wav"
  from vits_jax.voice import loudness
  # --noise-scale samples the posterior (0, the default here, takes its mean).
  noise = args.noise_scale if args.noise_scale is not None else 0.0
  converted = loudness(voice.convert(audio.mean(axis=1), rate, args.source_speaker,
                                     args.speaker, noise_scale=noise, seed=args.seed),
                       args.volume, args.normalize)
  _write_audio(out, voice.sample_rate, [converted])
  print(f"wrote {out} ({len(converted) / voice.sample_rate:.2f} s)", file=sys.stderr)


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
    except KeyboardInterrupt:
      print("interrupted", file=sys.stderr)
      return 130
  for w in caught:
    print(f"warning: {w.message}", file=sys.stderr)
  if error is not None:
    from vits_jax.files import one_line   # (a name given with a newline stays on one line)
    print(f"error: {one_line(str(error))}", file=sys.stderr)
    return 2
  return 0


def _terminate(signum, frame):
  """SIGTERM unwinds like Ctrl-C, so a file being written is removed, not left partial."""
  raise KeyboardInterrupt


if __name__ == "__main__":
  import signal
  signal.signal(signal.SIGTERM, _terminate)
  code = main()
  # Everything is written and closed; skip the interpreter's teardown of JAX's runtime
  # (about 0.3 s of a one-line synthesis).
  for stream in (sys.stdout, sys.stderr):
    try:
      if stream is not None:
        stream.flush()
    except OSError:
      pass
  parallel = sys.modules.get("vits_jax.training.parallel")   # (imported for a multi-host job)
  if code != 130 and parallel is not None and parallel.is_distributed():
    # Process 0 holds the job's coordination service: leaving without this goodbye took it
    # down under the hosts still writing their files (they aborted). (It waits for every
    # host; an interrupted one leaves at once.)
    try:
      import jax
      jax.distributed.shutdown()
    except BaseException:  # pylint: disable=broad-except  (a host gone, a second Ctrl-C)
      pass
  os._exit(code)   # pylint: disable=protected-access
