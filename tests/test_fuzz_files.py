"""Byte-level fuzzing of the files a user hands the project: Piper voices, official .pth
checkpoints, HF folders (safetensors), audio read by `files.read_audio`, training workdirs.

Each case must end in success or one clear line: a ValueError / FileNotFoundError (or a
subclass: the project's own errors) whose message is one line; through `infer.main`, exit 2
and exactly one `error:` line, no traceback. The first tests pin the distinct failures a
fuzzing run found (minimal reproductions); the loops at the end replay a compact,
deterministic share of that run (fixed seeds) so regressions are caught.
"""

import contextlib
import io
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT))
import infer  # noqa: E402  (the CLI at the repo root)
from vits_jax import files  # noqa: E402
from vits_jax.voice import Voice, load_voice  # noqa: E402

MULTI = FIX / "piper_tiny_multi.onnx"
HIGH = FIX / "piper_tiny_high.onnx"
OFFICIAL = FIX / "official_tiny"
HF = FIX / "hf_tiny"


# ------------------------------------------------------------------ helpers
def _handled(e: BaseException) -> bool:
  return isinstance(e, (ValueError, FileNotFoundError)) and "\n" not in str(e).strip()


def _outcome(fn):
  """'ok', or 'handled: <message>'; anything else fails the test with the exception."""
  try:
    fn()
  except Exception as e:  # pylint: disable=broad-except
    if _handled(e):
      return f"handled: {e}"
    raise AssertionError(f"unhandled {type(e).__name__}: {str(e)[:300]}") from e
  return "ok"


def _speak(path):
  voice = load_voice(path)
  audio = voice.synthesize("Hi.", speaker=1 if voice.num_speakers > 1 else None)
  assert np.all(np.isfinite(audio))


def _cli_one_error(voice_path, tmp_path, *needles):
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    code = infer.main(["--voice", str(voice_path), "--text", "Hi.",
                       "--out", str(tmp_path / "out.wav")])
  text = err.getvalue()
  lines = [l for l in text.splitlines() if l.strip()]
  errors = [l for l in lines if l.startswith("error: ")]
  assert code == 2, text
  assert len(errors) == 1 and "Traceback" not in text, text
  assert all(l.startswith(("error: ", "warning: ")) for l in lines), text
  for needle in needles:
    assert needle in errors[0], (needle, errors[0])
  assert not (tmp_path / "out.wav").exists()


def _piper_copy(folder, src=MULTI, onnx_bytes=None, meta=None, text=None):
  folder.mkdir(parents=True, exist_ok=True)
  onnx = folder / "v.onnx"
  onnx.write_bytes(src.read_bytes() if onnx_bytes is None else onnx_bytes)
  if text is None:
    if meta is None:
      meta = json.loads(Path(str(src) + ".json").read_text(encoding="utf-8"))
    text = json.dumps(meta)
  Path(str(onnx) + ".json").write_text(text, encoding="utf-8")
  return onnx


def _piper_meta(src=MULTI):
  return json.loads(Path(str(src) + ".json").read_text(encoding="utf-8"))


def _truncate(data: bytes, at: int) -> bytes:
  return data[:at]


def _flip(data: bytes, seed: int, n: int = 1, lo: int = 0, hi=None) -> bytes:
  rng = random.Random(seed)
  out = bytearray(data)
  hi = len(out) if hi is None else min(hi, len(out))
  for _ in range(n):
    i = rng.randrange(lo, hi)
    out[i] = rng.randrange(256) if seed % 2 == 0 else out[i] ^ (1 << rng.randrange(8))
  return bytes(out)


_HOSTILE = [None, "", "x", -1, 0, 1, 2 ** 63, 10 ** 30, 1e308, -1e308, float("nan"),
            float("inf"), [], {}, [1, 2], True, "16000", 1.5, {"a": 1}, [[0]], [-1], -2 ** 31,
            "\u0000"]


def _paths(obj, prefix=(), skip=()):
  out = []
  if isinstance(obj, dict):
    for k, v in obj.items():
      if k in skip:
        continue
      out.append(prefix + (k,))
      if k == "phoneme_id_map":   # a few entries, not all 150
        out += [prefix + (k, kk) for kk in list(v)[:3]] if isinstance(v, dict) else []
        continue
      out += _paths(v, prefix + (k,), skip)
  elif isinstance(obj, list):
    for i, v in enumerate(obj[:4]):
      out.append(prefix + (i,))
      out += _paths(v, prefix + (i,), skip)
  return out


def _random_edit(base, seed, skip=()):
  """`base` with one to three values replaced by hostile ones (or deleted), seeded."""
  rng = random.Random(seed)
  d = json.loads(json.dumps(base))
  for _ in range(rng.choice([1, 1, 2, 3])):
    candidates = _paths(d, skip=skip)
    if not candidates:
      break
    path = rng.choice(candidates)
    node = d
    for k in path[:-1]:
      node = node[k]
    if rng.random() < 0.15:
      del node[path[-1]]
    else:
      node[path[-1]] = rng.choice(_HOSTILE)
  return d


# ============================================================ found bugs (minimal repros)
@pytest.mark.parametrize("espeak", ["en-us", 5, float("nan"), ["en-us"]],
                         ids=["str", "int", "nan", "list"])
def test_piper_espeak_section_not_an_object_is_a_value_error(espeak, tmp_path):
  """`"espeak": "en-us"` (not {"voice": ...}) in a .onnx.json: load_voice raised
  AttributeError ('str' object has no attribute 'get') from PiperFrontend.__init__
  (vits_jax/text/frontend.py), which load_voice builds outside load_source's guard."""
  meta = _piper_meta()
  meta["espeak"] = espeak
  onnx = _piper_copy(tmp_path, meta=meta)
  with pytest.raises(ValueError) as e:
    _speak(onnx)
  assert "\n" not in str(e.value) and "espeak" in str(e.value)


def test_piper_espeak_section_not_an_object_is_one_error_line_in_infer(tmp_path):
  meta = _piper_meta()
  meta["espeak"] = "en-us"
  _cli_one_error(_piper_copy(tmp_path / "v", meta=meta), tmp_path, "espeak")


@pytest.mark.parametrize("num_symbols", [{}, [256], float("inf"), float("nan"), "abc"],
                         ids=["dict", "list", "inf", "nan", "str"])
def test_piper_num_symbols_not_a_count_is_a_value_error_naming_it(num_symbols, tmp_path):
  """`"num_symbols": {}` raised TypeError (int() of a dict) and `Infinity` OverflowError
  from PiperFrontend.__init__ (frontend.py: `int(config.get('num_symbols', 0))`); NaN and
  "abc" gave a ValueError that names neither the file nor the field."""
  meta = _piper_meta()
  meta["num_symbols"] = num_symbols
  onnx = _piper_copy(tmp_path, meta=meta)
  with pytest.raises(ValueError) as e:
    _speak(onnx)
  assert "\n" not in str(e.value) and "num_symbols" in str(e.value)


def test_piper_num_symbols_dict_is_one_error_line_in_infer(tmp_path):
  meta = _piper_meta()
  meta["num_symbols"] = {}
  _cli_one_error(_piper_copy(tmp_path / "v", meta=meta), tmp_path, "num_symbols")


# ------------------------------------------------------------------ workdirs
@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A training workdir (orbax checkpoint of the tiny multi-speaker Piper voice's generator
  + config.json), built as tests/test_export.py builds one: no training run."""
  from test_export import _workdir
  return _workdir(tmp_path_factory.mktemp("fuzz_workdir") / "wd", None)


def _workdir_copy(workdir, dest, edit=None):
  shutil.copytree(workdir, dest)
  if edit is not None:
    cfg = json.loads((dest / "config.json").read_text())
    edit(cfg)
    (dest / "config.json").write_text(json.dumps(cfg))
  return dest


@pytest.mark.parametrize("infer_section", [[1], "x", 5], ids=["list", "str", "int"])
def test_workdir_infer_section_not_an_object_is_a_value_error(workdir, infer_section,
                                                                tmp_path):
  """config.json `"infer": [1]`: Voice.__init__ (voice.py, `(defaults or {}).get(k, v)`)
  raised AttributeError; load_voice passes `config.get("infer")` unchecked."""
  wd = _workdir_copy(workdir, tmp_path / "wd", lambda c: c.update(infer=infer_section))
  with pytest.raises(ValueError) as e:
    load_voice(wd)
  assert "\n" not in str(e.value) and "infer" in str(e.value)


def test_workdir_infer_section_not_an_object_is_one_error_line_in_infer(workdir, tmp_path):
  wd = _workdir_copy(workdir, tmp_path / "wd", lambda c: c.update(infer=[1]))
  _cli_one_error(wd, tmp_path, "infer")


@pytest.mark.parametrize("key,value", [("enc_q_kernel_size", 4), ("enc_q_kernel_size", 0),
                                       ("enc_q_kernel_size", -2 ** 31),
                                       ("flow_kernel_size", 4)])
def test_workdir_even_or_nonpositive_wavenet_kernel_is_a_value_error(workdir, key, value,
                                                                      tmp_path):
  """config.json model.enc_q_kernel_size 4 (or flow_kernel_size): check_model_config does
  not check these fields, and the model's `assert self.kernel_size % 2 == 1`
  (vits_jax/models/modules.py, WN.__call__) escaped load_voice as a bare AssertionError
  (not in load_source's list of malformed-file errors)."""
  wd = _workdir_copy(workdir, tmp_path / "wd", lambda c: c["model"].update({key: value}))
  with pytest.raises(ValueError) as e:
    _speak(wd)
  assert "\n" not in str(e.value) and key in str(e.value)


def test_workdir_even_wavenet_kernel_is_one_error_line_in_infer(workdir, tmp_path):
  wd = _workdir_copy(workdir, tmp_path / "wd",
                     lambda c: c["model"].update(enc_q_kernel_size=4))
  _cli_one_error(wd, tmp_path, "enc_q_kernel_size")


# ------------------------------------------------------------------ audio
def _flac_promising(path: Path, total: int) -> Path:
  """A real 0.5 s FLAC whose STREAMINFO says it holds `total` samples (36 bits)."""
  import soundfile as sf
  t = np.arange(8000) / 16000
  sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000,
           format="FLAC")
  data = bytearray(path.read_bytes())
  si = 8   # 'fLaC', the metadata block header, then STREAMINFO
  data[si + 13] = (data[si + 13] & 0xF0) | ((total >> 32) & 0x0F)
  data[si + 14:si + 18] = struct.pack(">I", total & 0xFFFFFFFF)
  path.write_bytes(bytes(data))
  return path


def test_read_audio_without_check_does_not_trust_a_huge_header_length(tmp_path):
  """A 0.5 s FLAC whose STREAMINFO promises 2**36 - 1 samples: read_audio (no `check`, as
  data_prep's load_audio calls it) handed soundfile a read of the header's length, which
  preallocated 256 GiB and raised MemoryError ('Unable to allocate 256. GiB') from
  soundfile._create_empty_array. Run under a 4 GiB address-space limit so that the outcome
  does not depend on the machine's overcommit policy: a one-line ValueError, or the samples
  that are there."""
  path = _flac_promising(tmp_path / "lying.flac", 2 ** 36 - 1)
  script = (
      "import resource, sys\n"
      "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
      f"sys.path.insert(0, {str(ROOT)!r})\n"
      "from vits_jax import files\n"
      "try:\n"
      f"  a, r = files.read_audio({str(path)!r})\n"
      "  print('OK', a.shape[0], r)\n"
      "except ValueError as e:\n"
      "  print('VALUEERROR', str(e).replace(chr(10), ' '))\n"
      "except BaseException as e:\n"
      "  print('UNHANDLED', type(e).__name__, str(e).splitlines()[0] if str(e) else '')\n")
  r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                     timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  out = r.stdout.strip().splitlines()
  assert r.returncode == 0 and out, r.stderr[-2000:]
  assert out[-1].startswith(("OK", "VALUEERROR")), out[-1]
  if out[-1].startswith("OK"):
    assert int(out[-1].split()[1]) <= 8000, out[-1]


def test_read_audio_with_the_voice_check_refuses_a_huge_header_length(tmp_path):
  """(--convert's path, which passes the voice's check: already refused, one line.)"""
  path = _flac_promising(tmp_path / "lying.flac", 2 ** 36 - 1)
  with pytest.raises(ValueError) as e:
    files.read_audio(str(path), check=Voice.check_recording)
  assert "minutes" in str(e.value) and "\n" not in str(e.value)


# ============================================================ regression fuzz loops
# Keys whose hostile values the tests above pin as bugs: the loops leave them out so that
# they pass today (put them back once those are fixed).
_PIPER_KNOWN = ()


def test_fuzz_piper_voice_bytes_and_json(tmp_path):
  """Truncations and byte flips of the tiny Piper ONNX files, and seeded hostile edits of
  their .onnx.json, each through load_voice + one short synthesis."""
  outcomes = []
  n = 0
  for src in (MULTI, HIGH):
    blob = src.read_bytes()
    size = len(blob)
    rng = random.Random(src.name)
    cuts = [0, 1, 2, 10, 100, size - 1] + [rng.randrange(size) for _ in range(4)]
    for at in cuts:
      n += 1
      onnx = _piper_copy(tmp_path / f"c{n}", src=src, onnx_bytes=_truncate(blob, at))
      outcomes.append(_outcome(lambda: _speak(onnx)))
    for seed in range(8):
      n += 1
      lo, hi = [(0, None), (0, 4096), (max(0, size - 65536), None)][seed % 3]
      data = _flip(blob, seed, n=[1, 4, 16][seed % 3], lo=lo, hi=hi)
      onnx = _piper_copy(tmp_path / f"c{n}", src=src, onnx_bytes=data)
      outcomes.append(_outcome(lambda: _speak(onnx)))
    base = _piper_meta(src)
    for seed in range(12):
      n += 1
      meta = _random_edit(base, seed, skip=_PIPER_KNOWN)
      onnx = _piper_copy(tmp_path / f"c{n}", src=src, meta=meta)
      outcomes.append(_outcome(lambda: _speak(onnx)))
    text = Path(str(src) + ".json").read_text(encoding="utf-8")
    for bad in ("", "[]", "null", "[" * 100000, text[: len(text) // 2],
                '{"a": ' + "9" * 5000 + "}"):
      n += 1
      onnx = _piper_copy(tmp_path / f"c{n}", src=src, text=bad)
      outcomes.append(_outcome(lambda: _speak(onnx)))
  assert any(o.startswith("handled") for o in outcomes)


_PIPER_EDITS = [
    ("audio.sample_rate", -16000), ("audio.sample_rate", 10 ** 12), ("audio.sample_rate", "x"),
    ("num_speakers", 0), ("num_speakers", 2), ("num_speakers", 4), ("num_speakers", 10 ** 9),
    ("speaker_id_map", {"a": 5}), ("speaker_id_map", {"a": -1}),
    ("phoneme_id_map._", [-1]), ("phoneme_id_map._", [10 ** 6]), ("phoneme_id_map._", ["a"]),
    ("phoneme_id_map.a", [1.5]), ("phoneme_id_map.^", None), ("phoneme_id_map", []),
    ("phoneme_type", "pinyin"), ("espeak.voice", "xx-nonexistent"), ("espeak.voice", 5),
    ("inference.noise_scale", -1), ("inference.length_scale", 0), ("inference", []),
]


@pytest.mark.parametrize("key,value", _PIPER_EDITS, ids=[f"{k}={v!r:.12}" for k, v in
                                                         _PIPER_EDITS])
def test_fuzz_piper_json_edit_is_one_error_line_in_infer(key, value, tmp_path):
  meta = _piper_meta()
  parts = (["phoneme_id_map", key.split(".", 1)[1]] if key.startswith("phoneme_id_map.")
           else key.split("."))
  node = meta
  for k in parts[:-1]:
    node = node[k]
  if value is None:
    del node[parts[-1]]
  else:
    node[parts[-1]] = value
  _cli_one_error(_piper_copy(tmp_path / "v", meta=meta), tmp_path)


def _rezip(pth: bytes, pickled) -> bytes:
  """The checkpoint with its data.pkl replaced by pickled(data.pkl) (CRCs made right)."""
  zin = zipfile.ZipFile(io.BytesIO(pth))
  out = io.BytesIO()
  with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
    for info in zin.infolist():
      data = zin.read(info.filename)
      z.writestr(info.filename, pickled(data) if info.filename.endswith("data.pkl") else data)
  return out.getvalue()


_HOSTILE_PICKLES = {
    "os.system": b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.",
    "stack_global": b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c\x04true\x85R.",
    "inst": b"(S'true'\nios\nsystem\n.",
    "obj": b"\x80\x02(cos\nsystem\nS'true'\no.",
    "build_on_set": b"\x80\x02cbuiltins\nset\n)R}b.",
    "ext": b"\x80\x02\x82\x01.",
    "deep_dict": b"\x80\x02" + b"}(X\x01\x00\x00\x00a" * 50000 + b"u" * 50000 + b".",
    "binbytes8_huge": b"\x80\x04\x8e" + struct.pack("<Q", 2 ** 62) + b".",
    "long_digits": b"L" + b"9" * 100000 + b"L\n.",
    "rebuild_tensor_no_args": b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n)R.",
    "empty": b"",
}


def test_fuzz_official_pth_bytes_pickles_and_config(tmp_path, monkeypatch):
  """Truncations and flips of the official tiny G_7.pth, flips of its data.pkl re-zipped
  with valid CRCs (the unpickler itself), hostile pickles (must be refused: nothing runs)
  and seeded hostile config.json edits."""
  ran = []
  monkeypatch.setattr(os, "system", lambda *a: ran.append(a) or 0)
  blob = (OFFICIAL / "G_7.pth").read_bytes()
  cfg_text = (OFFICIAL / "config.json").read_text()
  size = len(blob)
  cases = []
  rng = random.Random(7)
  for at in [0, 1, 4, 30, 100, 40900, size - 22, size - 1] + [rng.randrange(size)
                                                               for _ in range(4)]:
    cases.append((_truncate(blob, at), cfg_text))
  for seed in range(10):
    lo = [0, size - 30000, 0][seed % 3]
    hi = [None, None, 200][seed % 3]
    cases.append((_flip(blob, seed, n=[1, 3, 8][seed % 3], lo=lo, hi=hi), cfg_text))
  for seed in range(24):
    cases.append((_rezip(blob, lambda p, s=seed: _flip(p, s, n=[1, 2, 6][s % 3])), cfg_text))
  for at in (0, 1, 2, 50, 1000, 20000):
    cases.append((_rezip(blob, lambda p, a=at: p[:a]), cfg_text))
  for pickled in _HOSTILE_PICKLES.values():
    cases.append((_rezip(blob, lambda p, b=pickled: b), cfg_text))
  base = json.loads(cfg_text)
  for seed in range(12):
    cases.append((blob, json.dumps(_random_edit(base, seed))))
  for i, (data, text) in enumerate(cases):
    folder = tmp_path / f"c{i}"
    folder.mkdir()
    (folder / "G_7.pth").write_bytes(data)
    (folder / "config.json").write_text(text)
    _outcome(lambda: _speak(folder / "G_7.pth"))
  assert not ran


def _st_edit(data: bytes, kind: str) -> bytes:
  n = struct.unpack("<Q", data[:8])[0]
  header, body = json.loads(data[8:8 + n]), data[8 + n:]
  name = sorted(k for k in header if k != "__metadata__")[0]
  entry = header[name]
  length = None
  if kind == "hlen_huge":
    length = 2 ** 63 - 1
  elif kind == "hlen_0":
    length = 0
  elif kind == "hlen_plus":
    length = len(json.dumps(header)) + 1000
  elif kind == "offsets_past_end":
    span = entry["data_offsets"][1] - entry["data_offsets"][0]
    entry["data_offsets"] = [len(body) + 10, len(body) + 10 + span]
  elif kind == "offsets_reversed":
    entry["data_offsets"] = entry["data_offsets"][::-1]
  elif kind == "offsets_huge":
    entry["data_offsets"] = [2 ** 64 - 8, 2 ** 64 - 4]
  elif kind == "dtype_unknown":
    entry["dtype"] = "X9"
  elif kind == "dtype_f64":
    entry["dtype"] = "F64"
  elif kind == "dtype_bool":
    entry["dtype"] = "BOOL"
  elif kind == "shape_mismatch":
    entry["shape"] = [s + 1 for s in entry["shape"]] or [2]
  elif kind == "shape_huge":
    entry["shape"] = [2 ** 40, 2 ** 40]
  elif kind == "shape_overflow":
    entry["shape"] = [2 ** 32, 2 ** 32, 2 ** 32]
  elif kind == "shape_negative":
    entry["shape"] = [-1] + entry["shape"][1:]
  elif kind == "header_list":
    header = [1, 2]
  elif kind == "tensor_dropped":
    del header[name]
  elif kind == "tensor_extra":
    header["zzz.weight"] = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
  raw = json.dumps(header).encode()
  return struct.pack("<Q", len(raw) if length is None else length) + raw + body


_ST_KINDS = ["hlen_huge", "hlen_0", "hlen_plus", "offsets_past_end", "offsets_reversed",
             "offsets_huge", "dtype_unknown", "dtype_f64", "dtype_bool", "shape_mismatch",
             "shape_huge", "shape_overflow", "shape_negative", "header_list",
             "tensor_dropped", "tensor_extra"]


def test_fuzz_hf_safetensors_and_config(tmp_path):
  """Forged safetensors headers (huge header length, offsets past the end, unknown dtypes,
  shapes that do not match the bytes), truncations, flips, and seeded config.json edits of
  the tiny HF folder."""
  blob = (HF / "model.safetensors").read_bytes()
  size = len(blob)
  variants = [("st", _st_edit(blob, k)) for k in _ST_KINDS]
  rng = random.Random(3)
  variants += [("st", _truncate(blob, at)) for at in [0, 4, 8, 9, 100, size - 1]
               + [rng.randrange(size) for _ in range(4)]]
  variants += [("st", _flip(blob, s, n=[1, 3, 8][s % 3], hi=12000 if s % 2 else None))
               for s in range(12)]
  base = json.loads((HF / "config.json").read_text())
  variants += [("cfg", json.dumps(_random_edit(base, s))) for s in range(12)]
  for i, (what, value) in enumerate(variants):
    folder = tmp_path / f"c{i}" / "hf"
    shutil.copytree(HF, folder)
    if what == "st":
      (folder / "model.safetensors").write_bytes(value)
    else:
      (folder / "config.json").write_text(value)
    _outcome(lambda: _speak(folder))


def test_fuzz_hf_forged_header_is_one_error_line_in_infer(tmp_path):
  folder = tmp_path / "hf"
  shutil.copytree(HF, folder)
  (folder / "model.safetensors").write_bytes(
      _st_edit((HF / "model.safetensors").read_bytes(), "hlen_huge"))
  _cli_one_error(folder, tmp_path)


def _sine_file(path: Path, kind: str) -> Path:
  import soundfile as sf
  t = np.arange(8000) / 16000
  x = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
  opts = {"wav": dict(subtype="PCM_16"), "flac": {}, "ogg": dict(subtype="VORBIS"),
          "mp3": dict(format="MP3", subtype="MPEG_LAYER_III"), "aiff": dict(subtype="PCM_16")}
  sf.write(path, x, 16000, **opts[kind])
  return path


def _wav_edit(data: bytes, kind: str) -> bytes:
  data = bytearray(data)
  fmt = data.find(b"fmt ") + 8
  dat = data.find(b"data")
  edits = {
      "riff_huge": (4, "<I", 0xFFFFFFF0), "channels_0": (fmt + 2, "<H", 0),
      "channels_huge": (fmt + 2, "<H", 65535), "rate_0": (fmt + 4, "<I", 0),
      "rate_huge": (fmt + 4, "<I", 0xFFFFFFFF), "align_0": (fmt + 12, "<H", 0),
      "bits_0": (fmt + 14, "<H", 0), "bits_huge": (fmt + 14, "<H", 65535),
      "format_weird": (fmt, "<H", 0x1234), "fmt_size_huge": (fmt - 4, "<I", 0xFFFFFFF0),
      "data_huge": (dat + 4, "<I", 0xFFFFFFF0), "data_0": (dat + 4, "<I", 0),
      "data_odd": (dat + 4, "<I", 3),
  }
  if kind == "no_samples":
    return bytes(data[:dat + 8])
  offset, code, value = edits[kind]
  struct.pack_into(code, data, offset, value)
  return bytes(data)


_WAV_EDITS = ["riff_huge", "channels_0", "channels_huge", "rate_0", "rate_huge", "align_0",
              "bits_0", "bits_huge", "format_weird", "fmt_size_huge", "data_huge", "data_0",
              "data_odd", "no_samples"]


def test_fuzz_read_audio(tmp_path):
  """WAV/FLAC/OGG/MP3/AIFF of a short sine, truncated, flipped and (WAV) header-edited:
  read_audio, with and without the voice's check, returns audio or one ValueError line."""
  inputs = []
  for kind in ("wav", "flac", "ogg", "mp3", "aiff"):
    blob = _sine_file(tmp_path / f"base.{kind}", kind).read_bytes()
    size = len(blob)
    rng = random.Random(kind)
    for at in [0, 1, 4, 12, 44, 200, size - 1] + [rng.randrange(size) for _ in range(5)]:
      inputs.append((kind, _truncate(blob, at)))
    for seed in range(10):
      inputs.append((kind, _flip(blob, seed, n=[1, 3, 10][seed % 3],
                                 hi=200 if seed % 2 else None)))
    if kind == "wav":
      inputs += [(kind, _wav_edit(blob, k)) for k in _WAV_EDITS]
  for i, (kind, data) in enumerate(inputs):
    path = tmp_path / f"in{i}.{kind}"
    path.write_bytes(data)
    for check in (None, Voice.check_recording):
      _outcome(lambda: files.read_audio(str(path), check=check))


def test_fuzz_convert_with_a_damaged_recording_is_one_error_line(tmp_path):
  for kind in ("data_huge", "rate_huge", "channels_0", "no_samples"):
    path = tmp_path / f"{kind}.wav"
    path.write_bytes(_wav_edit(_sine_file(tmp_path / "base.wav", "wav").read_bytes(), kind))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
      code = infer.main(["--voice", str(OFFICIAL / "G_7.pth"), "--convert", str(path),
                         "--source-speaker", "0", "--speaker", "1",
                         "--out", str(tmp_path / "out.wav")])
    lines = [l for l in err.getvalue().splitlines() if l.strip()]
    assert code == 2 and "Traceback" not in err.getvalue(), err.getvalue()
    assert sum(l.startswith("error: ") for l in lines) == 1, err.getvalue()
    assert not (tmp_path / "out.wav").exists()


# Config fields the workdir tests above pin as bugs: left out of the random edits.
_WORKDIR_KNOWN = ()


def test_fuzz_workdir_checkpoint_files_and_config(workdir, tmp_path):
  """Every file of the orbax checkpoint deleted, emptied, halved or flipped; damaged or odd
  step folders; seeded hostile config.json edits: load_voice + one synthesis."""
  state = workdir / "checkpoints" / "9" / "state"
  names = sorted(str(p.relative_to(workdir)) for p in state.rglob("*") if p.is_file())
  n = 0
  for i, name in enumerate(names):
    for op in ("delete", "empty", "half", "flip"):
      if (i + len(op)) % 4:   # a quarter of the (file, damage) pairs, deterministically
        continue
      n += 1
      wd = _workdir_copy(workdir, tmp_path / f"c{n}")
      target = wd / name
      if op == "delete":
        target.unlink()
      elif op == "empty":
        target.write_bytes(b"")
      elif op == "half":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
      else:
        target.write_bytes(_flip(target.read_bytes(), n, n=4))
      _outcome(lambda: _speak(wd))
  odd = {
      "empty_later_step": lambda wd: (wd / "checkpoints" / "10").mkdir(),
      "file_as_step": lambda wd: (wd / "checkpoints" / "10").write_text("x"),
      "word_step": lambda wd: (wd / "checkpoints" / "abc").mkdir(),
      "long_step": lambda wd: shutil.copytree(wd / "checkpoints" / "9",
                                              wd / "checkpoints" / ("9" * 30)),
      "no_checkpoints": lambda wd: shutil.rmtree(wd / "checkpoints"),
      "state_is_a_file": lambda wd: (shutil.rmtree(wd / "checkpoints" / "9" / "state"),
                                     (wd / "checkpoints" / "9" / "state").write_text("x")),
      "no_config": lambda wd: (wd / "config.json").unlink(),
      "config_not_json": lambda wd: (wd / "config.json").write_text("{"),
      "config_deep": lambda wd: (wd / "config.json").write_text("[" * 100000),
  }
  for name, damage in odd.items():
    wd = _workdir_copy(workdir, tmp_path / name)
    damage(wd)
    _outcome(lambda: _speak(wd))
  base = json.loads((workdir / "config.json").read_text())
  for seed in range(6):
    wd = _workdir_copy(workdir, tmp_path / f"r{seed}")
    (wd / "config.json").write_text(json.dumps(_random_edit(base, seed, skip=_WORKDIR_KNOWN)))
    _outcome(lambda: _speak(wd))


def test_fuzz_damaged_workdir_is_one_error_line_in_infer(workdir, tmp_path):
  wd = _workdir_copy(workdir, tmp_path / "wd")
  shutil.rmtree(wd / "checkpoints")
  _cli_one_error(wd, tmp_path)


@pytest.mark.parametrize("speakers", ["alice", ["alice", "bob"], 3], ids=["str", "list", "int"])
def test_piper_speaker_id_map_not_an_object_is_a_value_error(speakers, tmp_path):
  """A multi-speaker voice's `speaker_id_map` that is not an object was ignored without a
  word (the speakers then known by number only); it is refused as every other malformed
  field."""
  meta = _piper_meta()
  meta["speaker_id_map"] = speakers
  with pytest.raises(ValueError, match="speaker names must map names to ids") as e:
    _speak(_piper_copy(tmp_path, meta=meta))
  assert "\n" not in str(e.value)
