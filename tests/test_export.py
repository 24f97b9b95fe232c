"""Export to Hugging Face and the official code: round trips through this project's own
loaders (torch-free), names checked against files real transformers wrote, and the CLI's
errors. (Real transformers / PyTorch load the exports in tests/fixtures/make_export_checks.py.)
Piper export: tests/test_export_piper.py."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import traverse_util

from vits_jax.convert import official_pth
from vits_jax.convert import source as source_lib
from vits_jax.export import export_voice, hf as hf_export
from vits_jax.models.synthesizer import build_synthesizer, param_shapes
from vits_jax.voice import load_voice

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
HF = FIXTURES / "hf_tiny"
HIGH = FIXTURES / "piper_tiny_high.onnx"        # ResBlock1, single speaker
MULTI = FIXTURES / "piper_tiny_multi.onnx"      # ResBlock2, 3 speakers
OFFICIAL = FIXTURES / "official_tiny" / "G_7.pth"

SENTENCES = ["Hello there.", "A longer sentence, with a pause in the middle of it.", "Yes!"]


def _ids(voice):
  return [ids for s in SENTENCES for ids in voice.frontend.text_to_sentence_ids(s)]


def _same_audio(a, b, ids, sid=None, tol=1e-4):
  """Noise off, same ids: the same length and samples (float32 weight-norm folding moves a
  sample by up to ~5e-5 on these random tiny voices; the issue allows 1e-3)."""
  got = a.synthesize_ids(ids, sid, noise_scale=0.0, noise_scale_w=0.0)
  want = b.synthesize_ids(ids, sid, noise_scale=0.0, noise_scale_w=0.0)
  for g, w in zip(got, want):
    assert g.shape == w.shape
    assert np.abs(g - w).max() <= tol


def test_hf_export_matches_files_transformers_wrote(tmp_path):
  """Exporting the HF fixture (saved by real transformers) gives back its exact names and
  shapes, and the folder loads and speaks as the original."""
  from safetensors.numpy import load_file
  out = tmp_path / "hf"
  result = export_voice(HF, "hf", out)
  assert result.fresh == 0
  want, got = load_file(HF / "model.safetensors"), load_file(out / "model.safetensors")
  assert set(got) == set(want)
  for k in want:
    assert got[k].shape == want[k].shape
    np.testing.assert_allclose(got[k], want[k], atol=1e-6)
  cfg, ref = json.loads((out / "config.json").read_text()), json.loads(
      (HF / "config.json").read_text())
  for key in ("vocab_size", "hidden_size", "ffn_dim", "flow_size", "upsample_rates",
              "resblock_kernel_sizes", "resblock_dilation_sizes", "spectrogram_bins",
              "posterior_encoder_num_wavenet_layers", "sampling_rate", "num_speakers"):
    assert cfg[key] == ref[key], key
  assert json.loads((out / "vocab.json").read_text()) == json.loads(
      (HF / "vocab.json").read_text())
  original, exported = load_voice(HF), load_voice(out)
  assert exported.frontend.text_to_ids("hello") == original.frontend.text_to_ids("hello")
  _same_audio(exported, original, _ids(original))


def test_hf_export_of_a_piper_voice(tmp_path):
  """A ResBlock1 Piper voice exported to HF: the whole generator (the posterior encoder it
  lacks freshly initialized), the same audio for the same ids."""
  from vits_jax.convert import hf as hf_import
  out = tmp_path / "hf"
  result = export_voice(HIGH, "hf", out)
  assert result.fresh > 0
  config, params = hf_import.load_hf(str(out))   # the full HF name set, nothing missing
  assert not (out / "vocab.json").exists()         # Piper ids: no HF tokenizer
  original, exported = load_voice(HIGH), load_voice(out)
  _same_audio(exported, original, _ids(original))
  # The Piper phoneme map travels in config.json's vits_jax section: the same text reads
  # as the same ids (HF's own tokenizer cannot hold it).
  text = "Hello there, how are you?"
  assert exported.text_to_sentence_ids(text) == original.text_to_sentence_ids(text)
  assert exported.defaults == original.defaults
  names = set(traverse_util.flatten_dict(param_shapes(build_synthesizer(config)), sep="/"))
  assert set(traverse_util.flatten_dict(params, sep="/")) == names


def test_hf_names_map_both_ways():
  """Every parameter name of the official architecture (SDP and plain duration predictor,
  multi-speaker) maps to HF and back, and every name transformers wrote maps to official and
  back; the SDP flow indices and LayerNorm names follow the HF numbering."""
  import jax
  from safetensors.numpy import load_file
  from configs import base
  from vits_jax.convert import hf as hf_import, torch_names
  names = set()
  for use_sdp in (True, False):
    config = base.get_config()
    config.model.use_sdp, config.model.n_speakers, config.model.gin_channels = use_sdp, 3, 8
    shapes = param_shapes(build_synthesizer(config))
    names |= set(torch_names.flax_to_torch(jax.tree_util.tree_map(
        lambda s: np.zeros(s.shape, np.float32), shapes)))
  assert len(names) > 500
  for name in names:
    assert hf_import.hf_to_official_name(hf_import.official_to_hf_name(name)) == name
  written = load_file(str(HF / "model.safetensors"))
  for name in written:
    official = hf_import.hf_to_official_name(name)
    assert official != name and hf_import.official_to_hf_name(official) == name
  assert hf_import.official_to_hf_name("dp.flows.7.convs.norms_2.1.gamma") == (
      "duration_predictor.flows.4.conv_dds.norms_2.1.weight")
  assert hf_import.official_to_hf_name("dp.flows.0.m") == "duration_predictor.flows.0.translate"
  assert hf_import.hf_to_official_name("flow.flows.3.wavenet.in_layers.0.weight_g") == (
      "flow.flows.6.enc.in_layers.0.weight_g")


@pytest.mark.parametrize("fixture", ["hf_sdp_rb1", "hf_dp_rb1_ms"])
def test_hf_export_names_are_the_ones_transformers_saves(fixture):
  """The HF export's tensor names are exactly those of a `VitsModel` transformers saved
  (the parity fixtures), with the stochastic duration predictor and without: the plain
  predictor's projection is `proj` there, `conv_proj` only in the stochastic one (a wrong
  name left transformers a random projection, and another length, with no error)."""
  from vits_jax.convert import hf as hf_import, torch_names
  data = dict(np.load(FIXTURES / f"{fixture}.npz"))
  saved = {k[3:]: v.astype(np.float32) for k, v in data.items() if k.startswith("sd/")}
  config = hf_import.config_from_hf(json.loads(str(data["config"])))
  params = torch_names.torch_to_flax(hf_import.hf_to_official(saved),
                                     like=hf_import.param_template(config))
  exported = hf_export.hf_state_dict(params, bool(config.model.use_sdp))
  assert set(exported) == set(saved), (sorted(set(exported) - set(saved))[:5],
                                       sorted(set(saved) - set(exported))[:5])
  for name in ("duration_predictor.proj.weight", "duration_predictor.conv_proj.weight"):
    assert (name in exported) == (name in saved)
  # ... and each holds the tensor transformers saved (speaker rows in order, weight-norm
  # parts, predictor projections).
  for name, value in saved.items():
    np.testing.assert_allclose(np.asarray(exported[name], np.float32).reshape(value.shape),
                               value, atol=1e-6, rtol=0, err_msg=name)
    assert np.shape(exported[name]) == value.shape, name


def test_official_export_round_trip(tmp_path):
  out = tmp_path / "official"
  result = export_voice(MULTI, "official", out)
  assert sorted(p.name for p in out.iterdir()) == ["G_0.pth", "config.json"]
  assert result.fresh > 0          # a Piper voice has no enc_q: filled so no key is missing
  ckpt = official_pth.read_torch_checkpoint(out / "G_0.pth")
  assert set(ckpt) == {"model", "iteration", "optimizer", "learning_rate"}
  assert ckpt["iteration"] == 1
  src = source_lib.load_source(MULTI)
  full = set(traverse_util.flatten_dict(param_shapes(build_synthesizer(src.config))))
  assert len(ckpt["model"]) == len(full)
  assert ckpt["optimizer"]["param_groups"][0]["params"] == list(range(len(full)))
  hps = json.loads((out / "config.json").read_text())
  assert set(hps) == {"train", "data", "model", source_lib.OWN_SECTION}
  assert "n_vocab" not in hps["model"] and "n_speakers" not in hps["model"]
  assert hps["data"]["n_speakers"] == 3 and hps["model"]["gin_channels"] == 16
  assert hps["train"]["segment_size"] == 8192 and hps["model"]["n_layers_q"] == 3
  exported, original = load_voice(out / "G_0.pth"), load_voice(MULTI)
  _same_audio(exported, original, _ids(original), sid=2)
  # The voice's own frontend and speaker names come back: the same text, the same ids
  # and the same audio (the official symbols would read the text as other ids).
  assert exported.speaker_names == original.speaker_names == {"alice": 0, "bob": 1, "carol": 2}
  text = "Hello there, Bob."
  assert exported.text_to_sentence_ids(text) == original.text_to_sentence_ids(text)
  knobs = dict(speaker="bob", noise_scale=0.0, noise_scale_w=0.0)
  np.testing.assert_allclose(exported.synthesize(text, **knobs),
                             original.synthesize(text, **knobs), atol=1e-5)
  # The modules filled with fresh weights are listed, and a load leaves them out as the
  # Piper voice lacks them: conversion refuses (it used random weights), a fine-tune from
  # the export would fit the posterior encoder.
  untrained = hps[source_lib.OWN_SECTION]["untrained"]
  assert "enc_q" in untrained and all(m.startswith(("enc_q", "dp/")) for m in untrained)
  assert "enc_q" not in exported.params
  assert sorted(exported.params["dp"]) == sorted(original.params["dp"])
  with pytest.raises(ValueError, match="no posterior encoder weights"):
    exported.convert(np.zeros(4000, np.float32), 16000, "alice", "bob")
  again = tmp_path / "again"
  export_voice(out / "G_0.pth", "official", again)   # still listed, a second export on
  assert json.loads((again / "config.json").read_text())[source_lib.OWN_SECTION][
      "untrained"] == untrained
  for bad in (["dec"], "enc_q", [1]):   # only modules synthesis never runs
    hps[source_lib.OWN_SECTION]["untrained"] = bad
    (out / "config.json").write_text(json.dumps(hps))
    with pytest.raises(ValueError, match="untrained' must list modules"):
      load_voice(out / "G_0.pth")
  hps[source_lib.OWN_SECTION]["untrained"] = untrained
  hps[source_lib.OWN_SECTION]["frontend"]["config"]["phoneme_id_map"]["a"] = [9999]
  (out / "config.json").write_text(json.dumps(hps))
  with pytest.raises(ValueError, match="phoneme_id_map uses id 9999"):
    load_voice(out / "G_0.pth")


def test_official_export_of_an_official_checkpoint(tmp_path):
  """The same voice, and the source's own training settings that we have no field for (its
  epochs, fp16_run, file lists) kept: they were replaced by ljs_base.json's."""
  import shutil
  src = tmp_path / "src"
  shutil.copytree(Path(OFFICIAL).parent, src)
  hps = json.loads((src / "config.json").read_text())
  hps["train"].update(epochs=777, fp16_run=False)
  hps["data"].update(training_files="filelists/vctk_train.txt", cleaned_text=False)
  (src / "config.json").write_text(json.dumps(hps))
  out = tmp_path / "o"
  export_voice(src / Path(OFFICIAL).name, "official", out)
  exported, original = load_voice(out / "G_7.pth"), load_voice(OFFICIAL)
  assert exported.frontend.name == "vits"
  _same_audio(exported, original, _ids(original), sid=1)
  written = json.loads((out / "config.json").read_text())
  assert (written["train"]["epochs"], written["train"]["fp16_run"]) == (777, False)
  assert written["data"]["training_files"] == "filelists/vctk_train.txt"
  assert written["data"]["cleaned_text"] is False


def test_official_export_refuses_sizes_the_official_code_fixes(tmp_path):
  from configs import tiny
  from vits_jax.export import official
  with pytest.raises(ValueError, match="n_layers_enc_q=2 but the official SynthesizerTrn "
                                       "hard-codes 16"):
    official.official_config(tiny.get_config("micro"))


def _cli(*args):
  return subprocess.run([sys.executable, str(REPO / "export.py"), *map(str, args)],
                        capture_output=True, text=True, cwd=REPO, timeout=600,
                        env={"PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
                             "PATH": "/usr/bin:/bin"})


def test_cli_writes_and_keeps_existing_output(tmp_path):
  out = tmp_path / "o"
  r = _cli("--voice", OFFICIAL, "--to", "official", "--out", out)
  assert r.returncode == 0, r.stderr
  assert f"wrote {out / 'G_7.pth'}" in r.stdout
  before = (out / "G_7.pth").read_bytes()
  r = _cli("--voice", MULTI, "--to", "official", "--out", out)
  assert r.returncode == 2 and r.stderr.strip().splitlines() == [
      f"error: {out} exists (pass --force to replace it)"]
  assert (out / "G_7.pth").read_bytes() == before and not (out / "G_0.pth").exists()
  # --force replaces an earlier export of the same files, never a file it would not write
  # again: here G_7.pth (another step), then the user's own file.
  r = _cli("--voice", MULTI, "--to", "official", "--out", out, "--force")
  assert r.returncode == 2 and "holds files this export does not write (G_7.pth)" in r.stderr
  assert (out / "G_7.pth").read_bytes() == before and not (out / "G_0.pth").exists()
  assert [p.name for p in tmp_path.iterdir()] == ["o"]   # no temporary folder left
  (out / "notes.txt").write_text("mine")
  r = _cli("--voice", OFFICIAL, "--to", "official", "--out", out, "--force")
  assert r.returncode == 2 and "(notes.txt)" in r.stderr and len(r.stderr.splitlines()) == 1
  (out / "notes.txt").unlink()
  (out / "G_7.pth").write_bytes(b"an older export")
  r = _cli("--voice", OFFICIAL, "--to", "official", "--out", out, "--force")
  assert r.returncode == 0 and sorted(p.name for p in out.iterdir()) == ["G_7.pth",
                                                                         "config.json"]
  assert (out / "G_7.pth").read_bytes() == before
  mask = os.umask(0o022)
  os.umask(mask)
  assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask   # not mkdtemp's private 0700
  assert all(stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask for p in out.iterdir())


@pytest.mark.parametrize("args,message", [
    (["--voice", OFFICIAL, "--to", "onnx"], "unknown export target 'onnx'"),
    (["--voice", "nothing/here.onnx", "--to", "hf"], "voice not found: nothing/here.onnx"),
    (["--voice", REPO / "README.md", "--to", "hf"], "is not a voice"),
    (["--voice", MULTI, "--to", "hf"], "transformers' VitsModel has only ResBlock1"),
    (["--voice", MULTI, "--to", "piper", "--out", "OUT.wav"], "a Piper voice is written as "
     "NAME.onnx"),
    (["--voice", OFFICIAL, "--to", "official", "--out", ""], "--out is empty"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
  out = tmp_path / "out"
  if "--out" in args:
    args = [str(tmp_path / a) if str(a).startswith("OUT.") else a for a in args]
  else:
    args = args + ["--out", out]
  r = _cli(*args)
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ")
  assert message in lines[0] and "Traceback" not in r.stderr
  assert not out.exists() and list(tmp_path.iterdir()) == []


def _workdir(tmp_path, voice, speaker_names=None):
  """A training workdir (orbax checkpoint + config) holding `voice`'s generator, with the
  Piper frontend (data.frontend='piper', the voice's .onnx.json); `speaker_names` as the
  run's data named its speakers."""
  import orbax.checkpoint as ocp
  from configs import presets
  from vits_jax.convert import piper
  config = presets.get_config("medium")
  config.model.update({k: v for k, v in piper.load_piper(MULTI).model.items()
                       if k in config.model and k != "n_speakers"})
  config.data.n_speakers = 3
  config.data.sampling_rate = 16000
  config.data.piper_config = str(MULTI) + ".json"
  if speaker_names:
    config.data.speaker_names = speaker_names
  tmp_path.mkdir(parents=True, exist_ok=True)
  (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
  from vits_jax.convert.source import load_source
  trained = load_source(MULTI).params    # as training holds them (weight norm unfolded)
  ocp.PyTreeCheckpointer().save(tmp_path / "checkpoints" / "9" / "state",
                                {"params": {"generator": trained}, "step": 9})
  return tmp_path


def test_trained_workdir_exports_to_piper_and_official(tmp_path):
  """A workdir (the voice a user trains here) goes to Piper: onnxruntime on the export speaks
  as vits_jax on the same ids (noise off, each speaker); and to official, step in the name."""
  import onnxruntime as ort
  original = load_voice(MULTI)
  names = {"p225": 0, "p226": 1, "p227": 2}   # the run's, not its base voice's alice/bob/carol
  work = _workdir(tmp_path / "run", original, speaker_names=names)
  result = export_voice(work, "piper", tmp_path / "out" / "mine.onnx")
  assert [p.name for p in result.files] == ["mine.onnx", "mine.onnx.json"]
  meta = json.loads((tmp_path / "out" / "mine.onnx.json").read_text())
  assert meta["num_speakers"] == 3 and meta["audio"]["sample_rate"] == 16000
  assert meta["speaker_id_map"] == names
  # Named after the run, labelled by its own size and rate (not the base voice's labels).
  base = json.loads(Path(str(MULTI) + ".json").read_text())
  assert meta["dataset"] == "run" != base.get("dataset")
  assert meta["audio"]["quality"] in ("x_low", "low", "medium", "high")
  sess = ort.InferenceSession(str(tmp_path / "out" / "mine.onnx"),
                              providers=["CPUExecutionProvider"])
  ids = _ids(original)
  for sid in (0, 2):
    want = original.synthesize_ids(ids, sid, noise_scale=0.0, noise_scale_w=0.0)
    for i, w in zip(ids, want):
      got = sess.run(None, {"input": np.asarray([i], np.int64),
                            "input_lengths": np.asarray([len(i)], np.int64),
                            "scales": np.asarray([0.0, 1.0, 0.0], np.float32),
                            "sid": np.asarray([sid], np.int64)})[0].reshape(-1)
      assert got.shape == w.shape and np.abs(got - w).max() <= 1e-3
  # The run's own loss weights and AdamW settings go with it (official's c_mel 45 / c_kl 1
  # and torch's defaults were written, and torch's load_state_dict takes a group's settings
  # from the checkpoint).
  run_config = json.loads((work / "config.json").read_text())
  run_config["loss"].update(mel=30.0, kl=2.0)
  run_config["train"].update(betas=[0.5, 0.9], eps=1e-7, weight_decay=0.02)
  (work / "config.json").write_text(json.dumps(run_config))
  result = export_voice(work, "official", tmp_path / "official")
  assert sorted(p.name for p in result.files) == ["G_9.pth", "config.json"]
  hps = json.loads((tmp_path / "official" / "config.json").read_text())
  assert (hps["train"]["c_mel"], hps["train"]["c_kl"]) == (30.0, 2.0)
  group = official_pth.read_torch_checkpoint(tmp_path / "official" / "G_9.pth")[
      "optimizer"]["param_groups"][0]
  assert (group["betas"], group["eps"], group["weight_decay"]) == ([0.5, 0.9], 1e-7, 0.02)
  # Exported into its own workdir with force: refused, the run left whole.
  before = sorted(str(p.relative_to(work)) for p in work.rglob("*"))
  with pytest.raises(FileExistsError, match=r"does not write \(checkpoints\)"):
    export_voice(work, "official", work, force=True)
  assert sorted(str(p.relative_to(work)) for p in work.rglob("*")) == before


def _piper_copy(tmp_path, onnx, **changes):
  """A copy of a Piper fixture whose .onnx.json has `changes` applied."""
  import shutil
  tmp_path.mkdir(parents=True, exist_ok=True)
  out = tmp_path / onnx.name
  shutil.copy(onnx, out)
  meta = json.loads(Path(str(onnx) + ".json").read_text())
  meta.update(changes)
  Path(str(out) + ".json").write_text(json.dumps(meta))
  return out


def test_exports_keep_the_voice_knobs_through_every_format(tmp_path):
  """A voice's own sampling knobs (a Piper voice's "inference" section) are its defaults in
  every export and every export of an export: Piper's json, HF's config fields, the official
  config's vits_jax section. (A Piper export of such a voice wrote 0.667 / 1.0 / 0.8, so it
  spoke 0.77x as long by default.)"""
  knobs = {"noise_scale": 0.3, "length_scale": 1.7, "noise_scale_w": 0.5}
  src = _piper_copy(tmp_path / "src", HIGH, inference={
      "noise_scale": 0.3, "length_scale": 1.7, "noise_w": 0.5})
  original = load_voice(src)
  assert original.defaults == knobs
  chain = [("piper", tmp_path / "p" / "v.onnx"), ("hf", tmp_path / "hf"),
           ("official", tmp_path / "off"), ("piper", tmp_path / "p2" / "v.onnx"),
           ("official", tmp_path / "off2")]
  voice = src
  for to, out in chain:
    result = export_voice(voice, to, out)
    voice = result.files[0] if to != "hf" else out
    if to == "hf":   # a Piper voice's text needs its phoneme map: transformers cannot read it
      assert [n for n in result.notes if n.startswith("no vocab.json: this voice reads text "
                                                      "with a Piper phoneme map")], result.notes
    exported = load_voice(voice)
    assert exported.defaults == pytest.approx(knobs), (to, exported.defaults)
    if to == "piper":
      meta = json.loads(Path(str(voice) + ".json").read_text())
      assert meta["inference"] == pytest.approx(
          {"noise_scale": 0.3, "length_scale": 1.7, "noise_w": 0.5})
    if to == "hf":   # transformers' VitsConfig fields: its length scale is 1 / speaking_rate
      hf_config = json.loads((out / "config.json").read_text())
      assert hf_config["speaking_rate"] == pytest.approx(1 / 1.7)
      assert hf_config["noise_scale"] == pytest.approx(0.3)
      assert hf_config["noise_scale_duration"] == pytest.approx(0.5)
  # Spoken with its defaults (noise drawn the same way), the last export is the source.
  ids = _ids(original)
  for g, w in zip(exported.synthesize_ids(ids), original.synthesize_ids(ids)):
    assert g.shape == w.shape and np.abs(g - w).max() <= 1e-4


def test_official_export_is_named_by_the_step_and_checks_speakers(tmp_path):
  """The official code names a checkpoint by its global step (`G_500.pth`) and keeps the
  epoch in its `iteration`: an export keeps the step. A speaker map that a voice refuses is
  refused by every export, before anything is written."""
  import shutil
  src = tmp_path / "run"
  src.mkdir()
  shutil.copy(OFFICIAL, src / "G_500.pth")
  shutil.copy(OFFICIAL.parent / "config.json", src / "config.json")
  result = export_voice(src, "official", tmp_path / "o")
  assert [p.name for p in result.files] == ["G_500.pth", "config.json"]
  bad = _piper_copy(tmp_path / "bad", MULTI, speaker_id_map={"alice": 0, "bob": 5})
  for to, out in (("official", tmp_path / "bo"), ("piper", tmp_path / "bp" / "v.onnx")):
    with pytest.raises(ValueError, match=r"speaker ids \{'bob': 5\} out of range 0..2"):
      export_voice(bad, to, out)
  assert not (tmp_path / "bo").exists() and not (tmp_path / "bp").exists()


def test_failed_exports_leave_outputs_whole(tmp_path):
  """A Piper export whose json path is a folder replaces neither file (the .onnx was
  replaced before the json failed); an HF export past the file-size limit (as on a full
  disk) is one error line, not a traceback from the safetensors writer."""
  out = tmp_path / "v.onnx"
  out.write_bytes(b"an older voice")
  (tmp_path / "v.onnx.json").mkdir()
  with pytest.raises(FileExistsError, match="v.onnx.json is a folder"):
    export_voice(HIGH, "piper", out, force=True)
  assert out.read_bytes() == b"an older voice" and len(list(tmp_path.iterdir())) == 2
  limited = ("import resource, runpy, sys; "
             "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000)); "
             "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
  r = subprocess.run(
      [sys.executable, "-c", limited, str(REPO / "export.py"), "--voice", str(HIGH), "--to",
       "hf", "--out", str(tmp_path / "hf")], capture_output=True, text=True, cwd=REPO,
      timeout=600, env={"PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
  assert lines[0].startswith(f"error: cannot write {tmp_path / 'hf'}: File too large")
  assert not (tmp_path / "hf").exists() and sorted(p.name for p in tmp_path.iterdir()) == [
      "v.onnx", "v.onnx.json"]
  # --out under a file: says the folder is a file (not "File exists")
  r = subprocess.run([sys.executable, str(REPO / "export.py"), "--voice", str(HIGH), "--to",
                      "piper", "--out", str(out / "x.onnx")], capture_output=True, text=True,
                     cwd=REPO, timeout=600, env={"PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
                                                 "PATH": "/usr/bin:/bin"})
  assert r.returncode == 2 and r.stderr.strip() == (
      f"error: cannot write {out / 'x.onnx'}: {out} is a file, not a folder"), r.stderr[-2000:]


def test_force_into_the_current_folder_names_only_its_files(tmp_path, monkeypatch):
  """`--out . --force` in a folder of the user's files refuses naming those files, not the
  export's own temporary folder (which sits inside `.` there)."""
  (tmp_path / "e.txt").write_text("mine")
  monkeypatch.chdir(tmp_path)
  with pytest.raises(FileExistsError, match=r"holds files this export does not write "
                                            r"\(e.txt\)"):
    export_voice(OFFICIAL, "official", ".", force=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["e.txt"]
