"""Runs notebooks/demo.ipynb headless on CPU (short mode) and checks what it produced.

The notebook runs in a fresh kernel on this interpreter (a kernelspec written at test time
points at `sys.executable`, so a user-level `python3` kernelspec cannot send it to another
environment), with `VITS_JAX_DEMO_SHORT=1` (6 clips, 3 training steps) and its work dir in
`tmp_path`. Checked: every cell ran; the audio players hold real, non-silent speech; the PNG
plots are real figures; the alignment is one token per frame and monotonic; `Voice.synthesize`
equals the model's `infer`; noise 0 is deterministic; slower `length_scale` gives longer audio;
the corpus was prepared; and every loss in `metrics.jsonl` is finite.
"""

import base64
import io
import json
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import train_utils as tu

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "demo.ipynb"
KERNEL_NAME = "vits-jax-test"
AUDIO_SRC = re.compile(r'src="data:audio/wav;base64,([A-Za-z0-9+/=\s]+)"')


def _kernel_manager(tmp_path):
  """A KernelManager whose only kernelspec runs ipykernel on this interpreter."""
  from jupyter_client.kernelspec import KernelSpecManager
  from jupyter_client.manager import KernelManager
  spec_dir = tmp_path / "kernels" / KERNEL_NAME
  spec_dir.mkdir(parents=True)
  (spec_dir / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "vits_jax test", "language": "python"}))
  ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
  return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
  """(executed notebook, work dir) of one short run."""
  tmp_path = tmp_path_factory.mktemp("notebook")
  work = tmp_path / "work"
  env = {"VITS_JAX_DEMO_SHORT": "1", "VITS_JAX_DEMO_DIR": str(work), "JAX_PLATFORMS": "cpu",
         "MPLBACKEND": "module://matplotlib_inline.backend_inline",
         # Repository imports resolve from the checkout even when it is not installed.
         "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
         # Compiled as the README's commands are (tests/test_readme.py): its quick-start
         # trains configs/tiny.py on the same six clips, so this run loads its programs.
         "XLA_FLAGS": tu.xla_flags(os.environ.get("XLA_FLAGS", ""))}
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(
      nb, km=_kernel_manager(tmp_path), timeout=900, allow_errors=False,
      resources={"metadata": {"path": str(NOTEBOOK.parent)}})
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)  # the kernel process inherits this environment
  try:
    client.execute()
  finally:
    # A client given its own kernel manager leaves the kernel running (nbclient shuts down
    # only kernels it started itself): stop it, or it holds its gigabytes to the end of the run.
    if client.km is not None and client.km.has_kernel:
      client.km.shutdown_kernel(now=True)
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  return nb, work


def _outputs(nb, kind=None):
  for cell in nb.cells:
    if cell.cell_type == "code":
      for out in cell.get("outputs", []):
        if kind is None or out.get("output_type") == kind:
          yield cell, out


def _summary(nb):
  text = "".join(out.get("text", "") for _, out in _outputs(nb, "stream"))
  lines = [line for line in text.splitlines() if line.startswith("DEMO_SUMMARY ")]
  assert len(lines) == 1, "the notebook's summary line is missing"
  return json.loads(lines[0][len("DEMO_SUMMARY "):])


def _audios(nb):
  """Decoded `IPython.display.Audio` players: list of (samples, sample_rate)."""
  import soundfile as sf
  audios = []
  for _, out in _outputs(nb, "display_data"):
    for match in AUDIO_SRC.finditer(out.get("data", {}).get("text/html", "")):
      wav, rate = sf.read(io.BytesIO(base64.b64decode(match.group(1))), dtype="float32")
      audios.append((wav, rate))
  return audios


def _images(nb):
  import matplotlib.image as mpimg
  images = []
  for _, out in _outputs(nb, "display_data"):
    png = out.get("data", {}).get("image/png")
    if png:
      images.append(mpimg.imread(io.BytesIO(base64.b64decode(png)), format="png"))
  return images


def test_every_cell_ran_in_order(executed):
  nb, _ = executed
  code_cells = [c for c in nb.cells if c.cell_type == "code"]
  assert [c.execution_count for c in code_cells] == list(range(1, len(code_cells) + 1))
  assert not list(_outputs(nb, "error"))


def test_audio_players_hold_real_speech(executed):
  nb, _ = executed
  audios = _audios(nb)
  # 3 sentences, the infer() alignment sentence, 4 batch settings, tomato said, written in
  # phonemes and normalized, the trained voice.
  assert len(audios) >= 12
  (said, _), (written, _), (level, _) = audios[-4:-1]
  assert len(said) != len(written)   # the phoneme block changed what was said
  assert np.abs(level).max() > 0.99 and np.abs(written).max() < 0.9   # Piper's level
  # All but the last (the 3-step model) are the bundled voice: speech-like, not silent.
  for wav, rate in audios[:-1]:
    assert rate == 22050
    assert 0.8 < len(wav) / rate < 10.0
    assert np.sqrt(np.mean(wav ** 2)) > 0.01
    # Speech has pauses and loud parts: frame energies vary by orders of magnitude.
    frames = wav[: len(wav) // 256 * 256].reshape(-1, 256)
    energy = np.sqrt(np.mean(frames ** 2, axis=1))
    assert energy.max() > 20 * np.percentile(energy, 5)
  trained, rate = audios[-1]
  assert rate == 22050 and len(trained) > 0 and np.all(np.isfinite(trained))


def test_plots_are_real_figures(executed):
  nb, _ = executed
  images = _images(nb)
  # waveform+mel, alignment, batch lengths, losses.
  assert len(images) >= 4
  for img in images:
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 400
    rgb = img[..., :3]
    not_white = np.mean(np.any(rgb < 0.9, axis=-1))
    assert not_white > 0.02, "plot is (almost) blank"
    colors = np.unique((rgb * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colors) > 30, "plot has too few colours to hold data"


def test_synthesis_facts(executed):
  nb, _ = executed
  s = _summary(nb)
  assert s["short"] is True and s["backend"] == "cpu"
  assert all(r > 0.01 for r in s["sentence_rms"])
  assert s["alignment_frames"] > 50
  assert s["alignment_one_token_per_frame"] and s["alignment_monotonic"]
  # The Voice API and a direct model.infer call are the same computation.
  assert s["infer_vs_synthesize_max_abs"] is not None
  assert s["infer_vs_synthesize_max_abs"] < 1e-3
  assert s["deterministic_noise0"]
  lengths = s["batch_seconds"]
  for fast, default, slow in zip(lengths["fast (length_scale 0.8)"], lengths["default"],
                                 lengths["slow (length_scale 1.3)"]):
    assert fast < default < slow


def test_training_ran_and_losses_are_finite(executed):
  nb, work = executed
  s = _summary(nb)
  assert s["corpus_clips"] == 6
  assert s["prepared_counts"]["kept"] == 6
  metrics = work / "run" / "metrics.jsonl"
  assert Path(s["metrics_file"]) == metrics
  rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
  train_rows = [r for r in rows if "loss/g/total" in r]
  assert [r["step"] for r in train_rows] == [1, 2, 3] == s["logged_steps"]
  for r in train_rows:
    losses = {k: v for k, v in r.items() if k.startswith("loss/")}
    assert {"loss/g/total", "loss/d/total", "loss/g/mel", "loss/g/kl"} <= set(losses)
    assert all(math.isfinite(v) for v in losses.values()), losses
  assert (work / "run" / "checkpoints").is_dir()
