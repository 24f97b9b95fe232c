"""A catalogue of bad input: voice files, prepare.py, train.py, export.py and infer.py.

Each case asserts a non-zero exit, exactly one `error:` line that names the problem (and
`warning:` lines at most), no traceback, and that nothing was written or lost. (More
infer.py cases: tests/test_infer_cli.py; crafted .pth files: tests/test_pth.py; text
fuzzing of every frontend: the hypothesis test at the end.)
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT))
import export  # noqa: E402  (the CLIs at the repo root)
import infer  # noqa: E402
from data_prep import prepare  # noqa: E402

MULTI = FIX / "piper_tiny_multi.onnx"
OFFICIAL = FIX / "official_tiny"


def _one_error(code, err, *needles):
  lines = [l for l in err.splitlines() if l.strip()]
  errors = [l for l in lines if l.startswith("error: ")]
  assert code not in (0, None), err
  assert len(errors) == 1 and "Traceback" not in err, err
  assert all(l.startswith(("error: ", "warning: ")) for l in lines), err
  for needle in needles:
    assert needle in errors[0], (needle, errors[0])
  return errors[0]


def _piper_copy(tmp_path, edit_json=None, onnx_bytes=None):
  onnx = tmp_path / "v.onnx"
  if onnx_bytes is None:
    shutil.copy(MULTI, onnx)
  else:
    onnx.write_bytes(onnx_bytes)
  meta = json.loads(Path(str(MULTI) + ".json").read_text())
  if edit_json is not None:
    meta = edit_json(meta)
  Path(str(onnx) + ".json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
  return onnx


def _official_copy(tmp_path, edit):
  shutil.copy(OFFICIAL / "G_7.pth", tmp_path / "G_7.pth")
  hps = json.loads((OFFICIAL / "config.json").read_text())
  edit(hps)
  (tmp_path / "config.json").write_text(json.dumps(hps))
  return tmp_path / "G_7.pth"


def _official_text(tmp_path, text):
  shutil.copy(OFFICIAL / "G_7.pth", tmp_path / "G_7.pth")
  (tmp_path / "config.json").write_text(text)
  return tmp_path / "G_7.pth"


def _official_pth(tmp_path, edit):
  from vits_jax.convert import official_pth
  state, step = official_pth.load_official_checkpoint(OFFICIAL / "G_7.pth")
  state = dict(state)
  edit(state)
  official_pth.save_torch_checkpoint(tmp_path / "G_7.pth", {"model": state, "iteration": step})
  shutil.copy(OFFICIAL / "config.json", tmp_path / "config.json")
  return tmp_path / "G_7.pth"


def _piper_graph(tmp_path, edit):
  import onnx
  model = onnx.load(str(MULTI))
  edit(model.graph)
  return _piper_copy(tmp_path, onnx_bytes=model.SerializeToString())


def _drop_attribute(op, name):
  def edit(graph):
    node = next(n for n in graph.node if n.op_type == op)
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)
  return edit


def _nan_initializer(suffix):
  def edit(graph):
    from onnx import numpy_helper
    i, t = next((i, t) for i, t in enumerate(graph.initializer) if t.name.endswith(suffix))
    value = numpy_helper.to_array(t).copy()
    value.flat[0] = np.nan
    graph.initializer[i].CopyFrom(numpy_helper.from_array(value, t.name))
  return edit


def _hf_copy(tmp_path, edit):
  folder = tmp_path / "hf"
  shutil.copytree(FIX / "hf_tiny", folder)
  cfg = json.loads((folder / "config.json").read_text())
  edit(cfg)
  (folder / "config.json").write_text(json.dumps(cfg))
  return folder


def _set(d, path, value):
  *head, last = path.split(".")
  for k in head:
    d = d[k]
  d[last] = value
  return d


# (id, builder(tmp_path) -> voice path, words the error must contain)
VOICES = [
    ("onnx-garbage", lambda t: _piper_copy(t, onnx_bytes=b"\x08\x01garbage"),
     ["not a readable ONNX model"]),
    ("onnx-empty", lambda t: _piper_copy(t, onnx_bytes=b""), ["v.onnx"]),
    ("json-missing", lambda t: (shutil.copy(MULTI, t / "v.onnx"), t / "v.onnx")[1],
     ["config not found"]),
    ("json-invalid", lambda t: _piper_copy(t, lambda m: "{not json"), ["not valid JSON"]),
    ("json-nested-deep", lambda t: _piper_copy(t, lambda m: "[" * 100000),
     ["nested too deeply"]),
    ("json-not-object", lambda t: _piper_copy(t, lambda m: "[1, 2]"), ["expected a JSON object"]),
    ("json-audio-string", lambda t: _piper_copy(t, lambda m: _set(m, "audio", "16000") and m),
     ["'audio' must be an object"]),
    ("json-rate-negative", lambda t: _piper_copy(
        t, lambda m: _set(m, "audio.sample_rate", -1) and m), ["audio.sample_rate"]),
    ("json-rate-huge", lambda t: _piper_copy(
        t, lambda m: _set(m, "audio.sample_rate", 10 ** 12) and m), ["not one of speech audio"]),
    ("json-inference-string", lambda t: _piper_copy(
        t, lambda m: _set(m, "inference", {"noise_w": "0.8"}) and m),
     ["inference.noise_w must be a number"]),
    ("json-inference-noise", lambda t: _piper_copy(
        t, lambda m: _set(m, "inference", {"noise_scale": 1e308}) and m),
     ["default noise_scale must be"]),
    ("json-speakers-word", lambda t: _piper_copy(
        t, lambda m: _set(m, "num_speakers", "one") and m),
     ["v.onnx.json: num_speakers must be an integer"]),
    ("json-speakers-mismatch", lambda t: _piper_copy(
        t, lambda m: _set(m, "num_speakers", 5) and m), ["5 speakers"]),
    ("id-beyond-vocab", lambda t: _piper_copy(
        t, lambda m: _set(m, "phoneme_id_map.a", [999]) and m),
     ["phoneme_id_map uses id 999"]),
    ("id-map-not-lists", lambda t: _piper_copy(
        t, lambda m: _set(m, "phoneme_id_map.a", "x") and m), ["phoneme_id_map"]),
    ("official-wrong-shape", lambda t: _official_copy(
        t, lambda h: _set(h, "model.hidden_channels", 32)), ["parameters do not match"]),
    ("official-bad-hop", lambda t: _official_copy(
        t, lambda h: _set(h, "data.hop_length", 100)), ["hop_length 100"]),
    ("official-type", lambda t: _official_copy(
        t, lambda h: _set(h, "model.upsample_rates", 8)), ["model.upsample_rates"]),
    ("official-no-model", lambda t: _official_copy(t, lambda h: h.pop("model")),
     ["no 'model' section"]),
    ("official-folder-bad-config", lambda t: (_official_copy(
        t, lambda h: (h.clear(), h.update(model=5))), t)[1], ["no 'data' section"]),
    ("official-truncated-pth", lambda t: (
        (t / "G_7.pth").write_bytes((OFFICIAL / "G_7.pth").read_bytes()[:5000]),
        shutil.copy(OFFICIAL / "config.json", t / "config.json"), t / "G_7.pth")[-1],
     ["G_7.pth"]),
    ("hf-scalar-upsample", lambda t: _hf_copy(t, lambda c: _set(c, "upsample_rates", 8)),
     ["upsample_rates must be a list"]),
    ("hf-window", lambda t: _hf_copy(t, lambda c: _set(c, "window_size", 8)),
     ["window_size"]),
    ("hf-vocab-beyond-model", lambda t: (lambda f: (f / "vocab.json").write_text(
        json.dumps({"a": 0, "b": 9999})) and f)(_hf_copy(t, lambda c: c)),
     ["vocabulary uses id 9999"]),
    ("hf-rate-huge", lambda t: _hf_copy(t, lambda c: _set(c, "sampling_rate", 10 ** 13)),
     ["not one of speech audio"]),
    ("hf-speaking-rate-zero", lambda t: _hf_copy(t, lambda c: _set(c, "speaking_rate", 0)),
     ["speaking_rate must be > 0"]),
    ("not-a-voice-file", lambda t: (t / "x.txt").write_text("hi") and t / "x.txt",
     ["is not a voice"]),
    # Found by a hostile-files sweep: tracebacks, minutes of building, gigabytes, silence.
    ("official-config-string", lambda t: _official_text(t, json.dumps("data model")),
     ["expected a JSON object"]),
    ("official-config-nested-deep", lambda t: _official_text(t, "[" * 100000), ["JSON"]),
    ("official-config-invalid", lambda t: _official_text(t, "{not json"),
     ["config.json", "not valid JSON"]),
    ("official-train-string", lambda t: _official_copy(t, lambda h: _set(h, "train", "x")),
     ["'train' section"]),
    ("official-speakers-infinite", lambda t: _official_text(t, (
        OFFICIAL / "config.json").read_text().replace('"n_speakers": 3',
                                                      '"n_speakers": Infinity')), []),
    ("official-layers-huge", lambda t: _official_copy(
        t, lambda h: _set(h, "model.n_layers", 3000)), ["model.n_layers 3000", "at most"]),
    ("official-dilation-huge", lambda t: _official_copy(
        t, lambda h: _set(h, "model.resblock_dilation_sizes",
                          [[1, 10 ** 8]] * len(h["model"]["resblock_kernel_sizes"]))),
     ["resblock_dilation_sizes"]),
    ("official-nan-weights", lambda t: _official_pth(t, lambda sd: sd.__setitem__(
        "dec.conv_post.weight", sd["dec.conv_post.weight"] * np.nan)), ["NaN or infinite"]),
    # a community checkpoint trained with a symbol table of its own (38 ids): its ids would
    # index past the embedding (it said 'a sentence would last more than 65536 frames')
    ("official-own-symbols", lambda t: _official_pth(t, lambda sd: sd.__setitem__(
        "enc_p.emb.weight", sd["enc_p.emb.weight"][:38])), ["38 token ids", "symbol table"]),
    ("official-emb-scalar", lambda t: _official_pth(t, lambda sd: sd.__setitem__(
        "enc_p.emb.weight", np.float32(1.0) * np.ones((), np.float32))), []),
    ("onnx-no-strides", lambda t: _piper_graph(t, _drop_attribute("ConvTranspose", "strides")),
     []),
    ("onnx-nan-bias", lambda t: _piper_graph(t, _nan_initializer("bias")), ["NaN or infinite"]),
    ("json-is-a-folder", lambda t: (shutil.copy(MULTI, t / "v.onnx"),
                                    (t / "v.onnx.json").mkdir(), t / "v.onnx")[-1], []),
    ("hf-rate-null", lambda t: _hf_copy(t, lambda c: _set(c, "sampling_rate", None)), []),
    ("hf-bins-word", lambda t: _hf_copy(t, lambda c: _set(c, "spectrogram_bins", "abc")), []),
    ("hf-other-size", lambda t: _hf_copy(t, lambda c: _set(c, "hidden_size", 24)),
     ["hf: checkpoint does not match the model"]),   # (the message named no voice)
    ("empty-folder", lambda t: (t / "d").mkdir() or t / "d", ["holds no voice"]),
]


@pytest.mark.parametrize("name,build,needles", VOICES, ids=[v[0] for v in VOICES])
def test_bad_voice_is_one_line_error(name, build, needles, tmp_path, capsys):
  voice = build(tmp_path)
  out = tmp_path / "out.wav"
  code = infer.main(["--voice", str(voice), "--text", "Hello.", "--out", str(out)])
  _one_error(code, capsys.readouterr().err, *needles)
  assert not out.exists()


def test_one_tensor_under_many_names_is_refused_before_it_is_copied(tmp_path, capsys,
                                                                     monkeypatch):
  """A file naming one stored tensor many times (a few MB on disk) was copied once per name,
  20 GB for 5,000 names: the values its names hold are counted first (the bound lowered
  here so the test's files stay small)."""
  import onnx
  import vits_jax.convert
  from vits_jax.convert import official_pth
  state, _ = official_pth.load_official_checkpoint(OFFICIAL / "G_7.pth")
  total = sum(v.size for v in state.values())
  monkeypatch.setattr(vits_jax.convert, "MAX_PARAMETERS", total + 1000)
  big = next(k for k, v in state.items() if v.size > 1000)
  pth = _official_pth(tmp_path, lambda sd: sd.update({f"{big}.copy{i}": sd[big]
                                                      for i in range(5)}))
  with pytest.raises(ValueError, match="more than a voice has"):
    official_pth.load_official_checkpoint(pth)
  graph = onnx.load(str(MULTI)).graph
  total = sum(int(np.prod(t.dims)) for t in graph.initializer)
  monkeypatch.setattr(vits_jax.convert, "MAX_PARAMETERS", total + 1000)

  def many_readers(graph):   # more Conv nodes reading the largest conv weight
    conv = max((n for n in graph.node if n.op_type == "Conv"), key=lambda n: next(
        int(np.prod(t.dims)) for t in graph.initializer if t.name == n.input[1]))
    for i in range(5):
      copy = onnx.NodeProto()
      copy.CopyFrom(conv)
      copy.name = conv.name.replace("/Conv", f"_x{i}/Conv")
      copy.output[0] = f"x{i}"
      graph.node.append(copy)
  voice = _piper_graph(tmp_path, many_readers)
  code = infer.main(["--voice", str(voice), "--text", "Hi.", "--out", str(tmp_path / "o.wav")])
  _one_error(code, capsys.readouterr().err, "more than a voice has")


def _corpus(tmp_path):
  import soundfile as sf
  src = tmp_path / "corpus"
  (src / "wavs").mkdir(parents=True)
  t = np.arange(22050) / 22050
  for i in range(3):
    sf.write(src / "wavs" / f"A{i}.wav", (0.3 * np.sin(2 * np.pi * 200 * t)).astype(
        np.float32), 22050, subtype="PCM_16")
  (src / "metadata.csv").write_text("".join(f"A{i}|Hello there.|Hello there.\n"
                                            for i in range(3)))
  return src


PREPARE = [
    ("src-missing", lambda t: ["--src", str(t / "nope")], ["--src"]),
    ("vctk-on-ljspeech", lambda t: ["--src", str(_corpus(t)), "--dataset", "vctk"], []),
    ("out-is-a-file", lambda t: ["--src", str(_corpus(t)), "--out",
                                 str((t / "f").write_text("x") and t / "f")], ["--out"]),
    ("speaker-map-missing", lambda t: ["--src", str(_corpus(t)), "--speaker-map",
                                       str(t / "nope.json")], ["nope.json"]),
    ("voice-config-bad", lambda t: ["--src", str(_corpus(t)), "--frontend", "piper",
                                    "--voice-config", str((t / "v.json").write_text("{}")
                                                          and t / "v.json")], ["not a Piper voice config"]),
    ("out-is-a-workdir", lambda t: ["--src", str(_corpus(t)), "--out", str(
        (t / "run" / "checkpoints").mkdir(parents=True) or t / "run")], ["training workdir"]),
    ("sample-rate-negative", lambda t: ["--src", str(_corpus(t)), "--sample-rate", "-5"],
     ["--sample-rate"]),
    ("no-clips", lambda t: ["--src", str((t / "e" / "wavs").mkdir(parents=True) or
                                         (t / "e" / "metadata.csv").write_text("") or t / "e")],
     ["no clips"]),
]


@pytest.mark.parametrize("name,build,needles", PREPARE, ids=[p[0] for p in PREPARE])
def test_bad_prepare_is_one_line_error(name, build, needles, tmp_path, capsys):
  args = build(tmp_path)
  if "--dataset" not in args:
    args += ["--dataset", "ljspeech"]
  if "--out" not in args:
    args += ["--out", str(tmp_path / "prepared")]
  code = prepare.main(args + ["--workers", "1"])
  _one_error(code, capsys.readouterr().err, *needles)
  assert not (tmp_path / "prepared" / "manifest.json").exists()


EXPORTS = [
    (["--to", "tflite"], ["unknown export target"]),
    (["--voice", "tests/fixtures/piper_tiny_multi.onnx", "--to", "piper", "--step", "5"],
     ["--step 5", "not one"]),
    (["--voice", "tests/fixtures/official_tiny/G_7.pth", "--to", "piper"], ["Piper"]),
    (["--voice", "tests/fixtures/piper_tiny_multi.onnx", "--to", "hf"], ["ResBlock1"]),
]


@pytest.mark.parametrize("args,needles", EXPORTS, ids=["target", "step-of-no-workdir",
                                                       "symbols-to-piper",
                                                       "rb2-to-hf"])
def test_bad_export_is_one_line_error(args, needles, tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(ROOT)
  out = tmp_path / "exported"
  code = export.main(args + ["--out", str(out / "v.onnx")])
  _one_error(code, capsys.readouterr().err, *needles)
  assert not out.exists() or not list(out.iterdir())


def test_export_to_an_unwritable_place_names_the_output(tmp_path, capsys, monkeypatch):
  # A folder on the way is a file: the error is about the output, not the voice.
  monkeypatch.chdir(ROOT)
  (tmp_path / "afile").write_text("not a folder")
  out = tmp_path / "afile" / "v.onnx"
  code = export.main(["--voice", "tests/fixtures/piper_tiny_multi.onnx", "--to", "piper",
                      "--out", str(out)])
  _one_error(code, capsys.readouterr().err, f"cannot write {out}")
  assert (tmp_path / "afile").read_text() == "not a folder"


def _train(tmp_path, *overrides):
  env = {"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
         "VITS_JAX_XLA_CACHE": ""}
  proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config",
                         f"{ROOT / 'configs' / 'tiny.py'}:micro", "--workdir",
                         str(tmp_path / "run"), *overrides], capture_output=True, text=True,
                        env=env, timeout=600, cwd=tmp_path)
  return proc.returncode, proc.stderr


def _prepared(tmp_path, **manifest_edits):
  """A prepared dir whose manifest says what the edits say (the loader never gets that far)."""
  from vits_jax.data import records
  d = tmp_path / "data"
  d.mkdir()
  m = {"format": records.FORMAT, "sample_rate": 22050, "n_speakers": 0, "splits": {},
       "counts": {"train": 0, "validation": 0},
       "frontend": {"kind": "vits", "n_vocab": 178, "add_blank": True,
                    "cleaners": ["english_cleaners2"]}}
  m.update(manifest_edits)
  records.write_json_atomic(str(d / records.MANIFEST), m)
  return d


def test_bad_training_input_is_one_line_error(tmp_path):
  """Mistakes of the config, its values, the data dir and the workdir (each a fresh
  train.py process: ~5 s of imports)."""
  nul_config = tmp_path / "nul.py"
  nul_config.write_bytes(b"x = 1\0")
  a_file = tmp_path / "a_file"
  a_file.write_text("not a folder")
  (tmp_path / "ok").mkdir()
  good = _prepared(tmp_path / "ok")
  voice_dir = tmp_path / "official_voice"
  shutil.copytree(OFFICIAL, voice_dir)
  cases = [
      ([], ["config.data.dir is not set"]),
      ([f"--config.data.dir={tmp_path / 'nothing'}"], ["manifest.json not found"]),
      ([f"--config.data.dir={_prepared(tmp_path, sample_rate=16000)}"],
       ["sample rate 16000 Hz vs data.sampling_rate 22050"]),
      (["--config.train.num_steps=0", f"--config.data.dir={tmp_path}"],
       ["train.num_steps must be positive"]),
      (["--config.loss.stftt=1"], ["bad --config override", "loss has no field 'stftt' "
                                   "(did you mean stft"]),
      (["--config.train.steps=5"], ["train has no field 'steps' (did you mean num_steps "]),
      (["--config.loss.stft=abc"], ["--config.loss.stft=abc", "could not convert"]),
      (["--config.train.learning_rate=nan"], ["train.learning_rate must be a positive"]),
      (["--config.model.dtype=float8"], ["model.dtype must be float32, bfloat16 or"]),
      ([f"--config={tmp_path / 'no_such_config.py'}"], ["cannot load --config", "OSError"]),
      ([f"--config={nul_config}"], ["cannot load --config", "null bytes"]),
      ([f"--config.data.dir={good}", f"--workdir={a_file}"],
       [f"--workdir {a_file} exists and is not a folder"]),
      ([f"--config.data.dir={good}", f"--workdir={voice_dir}"],   # an official voice's
       [f"--workdir {voice_dir} holds a config.json that is not a training run's"]),
  ]
  # A run that fails once its checkpoint folder is made (here: data with no clips) leaves no
  # empty checkpoints/ behind.
  cases.append(([f"--config.data.dir={good}"], ["has no split 'train'"]))
  for overrides, needles in cases:
    code, err = _train(tmp_path, *overrides)
    _one_error(code, err, *needles)
    assert not (tmp_path / "run" / "checkpoints").exists()
  assert sorted(p.name for p in voice_dir.iterdir()) == sorted(
      p.name for p in OFFICIAL.iterdir())
  assert (voice_dir / "config.json").read_bytes() == (OFFICIAL / "config.json").read_bytes()


# --------------------------------------------------------------------------- text fuzzing
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

_TEXT = st.one_of(
    st.text(max_size=60),                                           # any unicode
    st.text(st.characters(codec="utf-8", categories=("Cc", "Cf", "Zs", "Zl", "Zp")),
            max_size=20),                                           # control and spaces
    st.text(st.sampled_from("abc xyz"), min_size=300, max_size=900),  # very long tokens
    st.lists(st.sampled_from(["Hello", "мир", "世界", "مرحبا", "😀", "1999", "...", "\x00",
                              "Dr.", "\u200b", "e\u0301"]), max_size=12).map(" ".join),
)


@pytest.fixture(scope="module")
def frontends():
  from vits_jax.convert.source import load_source
  from vits_jax.text import get_frontend
  out = {}
  for name, path in (("vits", FIX / "official_tiny" / "G_7.pth"), ("piper", MULTI),
                     ("hf", FIX / "hf_tiny")):
    src = load_source(path)
    out[name] = (get_frontend(**src.frontend), int(src.config.model.n_vocab))
  return out


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_TEXT)
def test_frontends_never_fail_but_with_value_error(frontends, text):
  import warnings
  for name, (frontend, n_vocab) in frontends.items():
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      try:
        pieces = frontend.text_to_sentence_ids(text)
      except ValueError:
        continue
    assert pieces and all(p for p in pieces), (name, text)
    for ids in pieces:
      assert all(isinstance(i, int) and 0 <= i < n_vocab for i in ids), (name, text, ids)


# --------------------------------------------------------------------------- full disk
def _limit_file_size(limit):
  def apply():
    import resource
    import signal
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # writes fail with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
  return apply


def test_infer_with_a_full_disk_keeps_the_old_file(tmp_path):
  """A file-size limit stands in for a full disk: one error line, the older output intact,
  no partial file."""
  out = tmp_path / "hello.wav"
  out.write_bytes(b"older output")
  # No bytecode or compile-cache writes under the limit (they would be cut short too).
  env = {"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
         "VITS_JAX_XLA_CACHE": "", "PYTHONDONTWRITEBYTECODE": "1"}
  proc = subprocess.run(
      [sys.executable, "-B", str(ROOT / "infer.py"), "--voice", str(FIX / "piper_tiny_high.onnx"),
       "--text", "Hello there, this sentence is long enough to need more than a few bytes.",
       "--out", str(out)], capture_output=True, text=True, env=env, timeout=600,
      preexec_fn=_limit_file_size(20_000))
  _one_error(proc.returncode, proc.stderr, "cannot write", "disk is full")
  assert out.read_bytes() == b"older output"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["hello.wav"]


def test_out_through_a_pipe_or_a_device_is_not_replaced(tmp_path, monkeypatch):
  """An --out that is a FIFO (a player reading it) or a device, directly or through a link,
  gets the audio written into it; it stays what it was (it used to be replaced by a regular
  file, even /dev/full through a link). A full device is a one-line write error."""
  import os
  import threading
  import soundfile as sf
  monkeypatch.setenv("TMPDIR", str(tmp_path))   # the temporary file goes there
  fifo, got = tmp_path / "player.wav", {}
  os.mkfifo(fifo)
  reader = threading.Thread(target=lambda: got.setdefault("bytes", fifo.read_bytes()))
  reader.start()
  audio = np.sin(np.arange(8000) / 10).astype(np.float32) * 0.5
  assert infer._write_audio(str(fifo), 16000, iter([audio[:3000], audio[3000:]])) == 8000
  reader.join(timeout=60)
  assert fifo.is_fifo()
  decoded, rate = sf.read(__import__("io").BytesIO(got["bytes"]), dtype="float32")
  assert rate == 16000 and np.abs(decoded - audio).max() < 1e-4
  link = tmp_path / "full.wav"
  link.symlink_to("/dev/full")
  with pytest.raises(ValueError, match="cannot write /dev/full: No space left on device"):
    infer._write_audio(str(link), 16000, iter([audio]))
  assert Path("/dev/full").is_char_device() and link.is_symlink()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["full.wav", "player.wav"]


def test_a_failing_synthesis_is_not_called_a_write_error(tmp_path):
  """An error of the audio source mid-file keeps its own type and message (it was reported
  as 'cannot write PATH'), and leaves neither the file nor a partial one."""
  def chunks():
    yield np.zeros(100, np.float32)
    raise RuntimeError("the model failed")
  out = tmp_path / "a.wav"
  with pytest.raises(RuntimeError, match="^the model failed$"):
    infer._write_audio(str(out), 16000, chunks())
  assert list(tmp_path.iterdir()) == []


def test_prepare_with_a_full_disk_keeps_the_prepared_data(tmp_path, capsys, monkeypatch):
  import errno
  from data_prep import writer
  from vits_jax.data import records
  src = _corpus(tmp_path)
  out = tmp_path / "prepared"
  args = ["--dataset", "ljspeech", "--src", str(src), "--out", str(out), "--workers", "1",
          "--val-size", "1"]
  assert prepare.main(args) == 0
  capsys.readouterr()
  before = records.load_manifest(str(out), checksums=True)
  calls = []
  original = writer.SplitWriter.add

  def full(self, *a):
    calls.append(1)
    if len(calls) == 2:
      raise OSError(errno.ENOSPC, "No space left on device", str(out / "train.tmp"))
    return original(self, *a)

  monkeypatch.setattr(writer.SplitWriter, "add", full)
  code = prepare.main(args + ["--force"])
  _one_error(code, capsys.readouterr().err, "No space left on device", "intact")
  assert records.load_manifest(str(out), checksums=True) == before
  assert not [p for p in out.iterdir() if ".tmp-" in p.name]


def test_prepare_when_array_record_cannot_write_leaves_no_temporaries(tmp_path, capsys,
                                                                      monkeypatch):
  """array_record reports a full disk as a RuntimeError, and then fails to close the shard
  too: still one error line, and this run's temporaries are removed."""
  from data_prep import writer
  src = _corpus(tmp_path)
  out = tmp_path / "prepared"
  calls = []
  original_add = writer.SplitWriter.add

  def full(self, *a):
    result = original_add(self, *a)
    calls.append(1)
    if len(calls) == 2:
      real = self._writer

      class _FailingClose:
        def close(self):
          real.close()
          raise RuntimeError("Failed to close chunk_writer")

      self._writer = _FailingClose()
      raise RuntimeError("write() failed: No space left on device; writing " + str(out))
    return result

  monkeypatch.setattr(writer.SplitWriter, "add", full)
  code = prepare.main(["--dataset", "ljspeech", "--src", str(src), "--out", str(out),
                       "--workers", "1", "--val-size", "1"])
  _one_error(code, capsys.readouterr().err, "No space left on device")
  assert not [p for p in out.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("flag,value", [("--val-size", "-1"), ("--seed", "-1"),
                                        ("--shard-mb", "nan"), ("--min-seconds", "nan"),
                                        ("--max-seconds", "0.1")])
def test_bad_prepare_numbers_are_usage_errors(flag, value, tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    prepare.main(["--dataset", "ljspeech", "--src", str(tmp_path), "--out",
                  str(tmp_path / "p"), flag, value])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert flag in err.splitlines()[-1] and "Traceback" not in err


def test_prepare_skips_and_counts_duplicate_ids(tmp_path, capsys):
  from vits_jax.data import records
  src = _corpus(tmp_path)
  with open(src / "metadata.csv", "a") as f:
    f.write("A1|A second text for the same clip.|A second text for the same clip.\n")
  out = tmp_path / "prepared"
  assert prepare.main(["--dataset", "ljspeech", "--src", str(src), "--out", str(out),
                       "--workers", "1", "--val-size", "1"]) == 0
  m = records.load_manifest(str(out))
  assert m["counts"]["kept"] == 3 and m["counts"]["skipped_by_reason"] == {"duplicate id": 1}
  assert "duplicate id 1" in capsys.readouterr().out


@pytest.mark.parametrize("fmt, subtype", [("WAV", "PCM_16"), ("AIFF", "PCM_16"),
                                          ("AIFF", "FLOAT"), ("FLAC", "PCM_16"),
                                          ("OGG", "VORBIS")])
def test_audio_cut_short_is_refused_not_read_in_part(fmt, subtype, tmp_path):
  """A recording cut off halfway (a copy or download that stopped) is refused, by data prep
  and --convert alike, rather than read as the half that is there: libsndfile returns the
  samples present and says nothing for WAV and AIFF (AIFF was read in part)."""
  import soundfile as sf
  from vits_jax import files
  audio = (0.5 * np.sin(np.arange(44100) * 0.05)).astype(np.float32)
  whole = tmp_path / f"whole.{fmt.lower()}"
  sf.write(whole, audio, 22050, format=fmt, subtype=subtype)
  data, rate = files.read_audio(str(whole))
  assert rate == 22050 and data.shape == (44100, 1)
  cut = tmp_path / f"cut.{fmt.lower()}"
  blob = whole.read_bytes()
  cut.write_bytes(blob[:len(blob) // 2])
  with pytest.raises(ValueError, match=r"cut short|cannot read") as e:
    files.read_audio(str(cut))
  if fmt in ("WAV", "AIFF"):
    assert isinstance(e.value, files.CutShortError), e.value
