"""Training logs: `metrics.jsonl`, TensorBoard events, plots. Written by process 0 only.

`workdir/metrics.jsonl` gets one JSON object per logged step (`step`, `loss/...`,
`grad_norm/...`, `lr`, `steps_per_sec`, `devices`, ...); the TensorBoard event files in the
workdir get the same scalars plus the evaluation images and audio.
"""

import json
import os
import time
from typing import Mapping, Optional

import numpy as np

METRICS_FILE = "metrics.jsonl"


class MetricWriter:
  """Appends scalars to metrics.jsonl and TensorBoard; images and audio to TensorBoard.

  Args:
    workdir: the run directory.
    enabled: False on every process but 0 (then every call is a no-op).
    resume_step: the step the run continues from (-1 for a fresh run): rows an interrupted
      run logged after it, and a partial last line, are dropped from metrics.jsonl, so the
      file reads as one uninterrupted run.
  """

  def __init__(self, workdir: str, enabled: bool = True, resume_step: Optional[int] = None):
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, METRICS_FILE)
    try:
      if resume_step is not None and os.path.exists(self.path):
        _truncate_after(self.path, resume_step)
      self._file = open(self.path, "a")
    except OSError as e:   # not writable, a folder of that name, a full disk
      raise ValueError(f"cannot write {self.path}: {e.strerror or e}") from None
    from tensorboardX import SummaryWriter  # heavy import; process 0 only
    self._tb = SummaryWriter(logdir=workdir, flush_secs=30)

  def write_scalars(self, step: int, scalars: Mapping[str, float]):
    if not self.enabled:
      return
    row = {"step": int(step)}
    row.update({k: _to_python(v) for k, v in scalars.items()})
    row["time"] = time.time()   # wall clock, for curves over time (not sent to TensorBoard)
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    for k, v in row.items():
      if k not in ("step", "time") and isinstance(v, (int, float)):
        self._tb.add_scalar(k, v, step)

  def write_images(self, step: int, images: Mapping[str, np.ndarray]):
    """images: name -> [H, W, 3] uint8."""
    if not self.enabled:
      return
    for k, v in images.items():
      self._tb.add_image(k, v, step, dataformats="HWC")

  def write_audios(self, step: int, audios: Mapping[str, np.ndarray], sample_rate: int):
    """audios: name -> [T] float in [-1, 1]."""
    if not self.enabled:
      return
    for k, v in audios.items():
      self._tb.add_audio(k, np.clip(np.asarray(v, np.float32), -1, 1), step,
                         sample_rate=sample_rate)

  def close(self):
    if self.enabled:
      self._file.close()
      self._tb.close()
      self.enabled = False


def _to_python(v):
  v = np.asarray(v)
  if v.dtype.kind in "iub":
    return int(v)
  f = float(v)
  # JSON has no NaN/Inf; keep them readable as strings rather than writing invalid JSON.
  return f if np.isfinite(f) else str(f)


def _rows(data: bytes):
  """(line, step, row) of each line of metrics.jsonl bytes; a partial line, bytes that are
  not JSON or a row without a whole-number step are not rows (step and row None)."""
  for line in data.split(b"\n"):
    try:
      row = json.loads(line)
    except ValueError:
      yield line, None, None
      continue
    at = row.get("step") if isinstance(row, dict) else None
    ok = isinstance(at, int) and not isinstance(at, bool)
    yield line, (at if ok else None), (row if ok else None)


def _truncate_after(path: str, step: int):
  """Keeps the rows up to `step`; drops later ones and any line a kill left half-written
  (the file is replaced atomically, so a second kill here loses nothing)."""
  with open(path, "rb") as f:
    data = f.read()
  keep = [line + b"\n" for line, at, _ in _rows(data) if at is not None and at <= step]
  if len(keep) != len([l for l in data.split(b"\n") if l.strip()]):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
      f.writelines(keep)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)


def logged(workdir: str, step: int, prefix: str) -> bool:
  """Whether metrics.jsonl in `workdir` holds a row of `step` with a key starting with
  `prefix` ('val/': the evaluation of that step ran to its end and was logged)."""
  try:
    with open(os.path.join(workdir, METRICS_FILE), "rb") as f:
      data = f.read()
  except OSError:
    return False
  return any(at == step and any(str(k).startswith(prefix) for k in row)
             for _, at, row in _rows(data))


def plot_spectrogram(spec: np.ndarray) -> np.ndarray:
  """[T, n_mels] log-mel -> [H, W, 3] uint8 image (time on x)."""
  fig, ax = _figure((10, 2.5))
  im = ax.imshow(np.asarray(spec, np.float32).T, aspect="auto", origin="lower",
                 interpolation="none")
  fig.colorbar(im, ax=ax)
  ax.set_xlabel("frames")
  ax.set_ylabel("channels")
  return _render(fig)


def plot_alignment(attn: np.ndarray, title: str = "") -> np.ndarray:
  """[T_frames, T_text] alignment -> [H, W, 3] uint8 image (text on y, frames on x)."""
  fig, ax = _figure((6, 4))
  im = ax.imshow(np.asarray(attn, np.float32).T, aspect="auto", origin="lower",
                 interpolation="none")
  fig.colorbar(im, ax=ax)
  ax.set_xlabel("decoder frames")
  ax.set_ylabel("text tokens")
  if title:
    ax.set_title(title)
  return _render(fig)


def _figure(size):
  # A bare Figure rendered by FigureCanvasAgg needs no pyplot backend; `matplotlib.use("Agg")`
  # here would switch a notebook that trains in-process away from its inline plots.
  from matplotlib.figure import Figure
  fig = Figure(figsize=size, dpi=80)
  return fig, fig.add_subplot(1, 1, 1)


def _render(fig) -> np.ndarray:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  canvas = FigureCanvasAgg(fig)
  fig.tight_layout()
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()
