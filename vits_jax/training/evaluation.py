"""Validation on a fixed batch: listen-free measures of whether the model is learning.

For each validation clip:
  - `val/mel_l1`: text-to-speech with the true timing. The training forward (no dropout)
    gives the monotonic alignment of the clip's text to its spectrogram; the prior is sampled
    along it (noise 0.667, fixed key), inverted through the flow and decoded; the L1 distance
    of that audio's log-mel to the real one over the valid frames. Falls as the text encoder,
    flow and decoder learn; unlike the training mel loss it does not use the posterior.
  - `val/diagonality`: 1 - 2 * mean_t |x(t)/T_x - t/T_y| for the MAS alignment (x(t) the
    token of frame t, positions at cell centres): 1 on the straight diagonal, about 0 when
    all frames pile onto one end of the text. MAS alignments are monotonic by construction.
  - `val/diag_band`: fraction of frames whose token lies within 10% of the text length of the
    diagonal.
  - `val/len_ratio`: frames the duration predictor gives the text (full inference, noise_w
    0.8) over the true number of frames.
  - with `train.eval_speech_measures` (`training/speech_measures.py`): `val/f0_median` and
    `val/f0_median_real` (Hz, medians over the clips of the inferred and the real speech's
    median F0), `val/mcd` (mel-cepstral distance in dB of the teacher-timed speech to the
    real clip) and, when an offline recognizer is installed (`train.eval_recognizer`:
    `moonshine-cpp`, else `pocketsphinx`; `speech_measures.Recognizer`), `val/wer` (word
    error rate of the recognizer's transcript of the inferred speech against the clip's
    text) and `val/wer_real` (the same for the real clips: the recognizer's score of the
    speaker's own voice, against which `val/wer` reads).
TensorBoard also gets, for clip 0, the real / teacher-timed / inferred mels, both alignments
and the audio (the real clip once, at the first evaluation).
"""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from vits_jax import audio
from vits_jax.training import metrics as metrics_lib
from vits_jax.training import parallel
from vits_jax.training import programs
from vits_jax.training import step as step_lib

NOISE_SCALE = 0.667
NOISE_SCALE_W = 0.8
EVAL_SEED = 20240607


def make_eval_fn(config, generator, max_infer_frames: int):
  """`eval_fn(gen_params, batch) -> dict of arrays` (not jitted)."""
  data = config.data
  hop = int(data.hop_length)
  multi_speaker = int(config.model.n_speakers) > 1

  def eval_fn(params, batch):
    variables = {"params": params}
    k_fwd, k_prior, k_infer = jax.random.split(jax.random.PRNGKey(EVAL_SEED), 3)
    wav = step_lib.waveform(batch, data)
    wav_lengths = batch["audio_lengths"]
    spec = audio.spectrogram_from_config(wav, data, wav_lengths)
    spec_lengths = wav_lengths // hop
    mel = audio.spec_to_mel_from_config(spec, data)
    x, x_lengths = batch["text"], batch["text_lengths"]
    sid = batch["sid"] if multi_speaker else None

    _, fwd = generator.apply(
        variables, x, x_lengths, spec, spec_lengths, sid, train=False,
        rngs={"noise": k_fwd, "slice": k_fwd})
    attn, y_mask = fwd["attn"], fwd["y_mask"]
    # The latent side of inference along the true (MAS) timing.
    wav_tf, _ = generator.apply(variables, fwd["m_p"], fwd["logs_p"], y_mask, sid,
                                noise_scale=NOISE_SCALE, key=k_prior, method="decode_latent")
    mel_tf = audio.mel_from_config(wav_tf[..., 0].astype(jnp.float32), data)

    wav_inf, inf = generator.apply(
        variables, x, x_lengths, sid, noise_scale=NOISE_SCALE, noise_scale_w=NOISE_SCALE_W,
        max_len=max_infer_frames, key=k_infer, method="infer")
    attn_inf, mask_inf = inf["attn"], inf["y_mask"]
    mel_inf = audio.mel_from_config(wav_inf[..., 0].astype(jnp.float32), data)
    return {
        "mel": mel, "mel_tf": mel_tf, "mel_inf": mel_inf, "y_mask": y_mask,
        "attn": attn, "attn_inf": attn_inf, "inf_frames": jnp.sum(mask_inf, axis=(1, 2)),
        "wav_tf": wav_tf[..., 0], "wav_inf": wav_inf[..., 0],
    }

  return eval_fn


def diagonality(attn: np.ndarray, n_frames: int, n_tokens: int):
  """(diagonality, band fraction) of a hard alignment `attn` [T_y, T_x] (see module doc)."""
  a = np.asarray(attn)[:n_frames, :n_tokens]
  token = np.argmax(a, axis=1)
  u = (token + 0.5) / n_tokens
  v = (np.arange(n_frames) + 0.5) / n_frames
  dev = np.abs(u - v)
  return float(1.0 - 2.0 * dev.mean()), float((dev <= 0.1).mean())


def summarize(out: dict, batch: dict, hop: int) -> dict:
  """Scalar validation metrics (means over the clips) from `eval_fn`'s output."""
  n_frames = np.asarray(batch["audio_lengths"]) // hop
  n_tokens = np.asarray(batch["text_lengths"])
  mask = np.asarray(out["y_mask"])                                    # [B, T_y, 1]
  err = np.abs(np.asarray(out["mel"]) - np.asarray(out["mel_tf"])) * mask
  l1 = err.sum(axis=(1, 2)) / (mask.sum(axis=(1, 2)) * err.shape[-1])
  diag = [diagonality(out["attn"][b], n_frames[b], n_tokens[b]) for b in range(len(l1))]
  return {
      "val/mel_l1": float(l1.mean()),
      "val/diagonality": float(np.mean([d[0] for d in diag])),
      "val/diag_band": float(np.mean([d[1] for d in diag])),
      "val/len_ratio": float(np.mean(np.asarray(out["inf_frames"]) / n_frames)),
  }


class Evaluator:
  """Runs the evaluation on the fixed batch (all hosts) and logs it (process 0's writer)."""

  def __init__(self, config, generator, batch: dict, mesh, texts=()):
    self.config = config
    self.texts = list(texts)
    self.with_speech_measures = bool(config.train.get("eval_speech_measures", True))
    self._real_f0 = None
    self._real_wer = None
    self.hop = int(config.data.hop_length)
    self.sample_rate = int(config.data.sampling_rate)
    self.batch_np = {k: np.asarray(v) for k, v in batch.items()}
    max_frames = int(self.batch_np["audio"].shape[1]) // self.hop
    repl = parallel.replicated(mesh)
    self.batch = {k: jax.make_array_from_process_local_data(repl, v, v.shape)
                  for k, v in self.batch_np.items()}
    self.eval_fn = jax.jit(make_eval_fn(config, generator, 2 * max_frames),
                           out_shardings=repl)
    self._logged_reference = False

  def abstract_args(self, abstract_params) -> tuple:
    """The evaluation program's argument shapes (for ahead-of-time compilation)."""
    return abstract_params, programs.abstract_like(self.batch)

  def run(self, params, program=None, interrupted=lambda: False) -> Optional[tuple]:
    """(scalars, host outputs), or None if `interrupted()` turned true while it ran.
    `program`: the evaluation compiled ahead (default: `eval_fn` compiles on first use)."""
    out = (program or self.eval_fn)(params, self.batch)
    if not programs.wait_ready(out, interrupted):
      return None
    out = jax.device_get(out)
    return summarize(out, self.batch_np, self.hop), out

  def speech_measures(self, out) -> dict:
    """F0, MCD and WER of the evaluation's audio (module doc), computed on the host."""
    from vits_jax.training import speech_measures as sm
    sr, hop = self.sample_rate, self.hop
    scale = float(self.config.data.max_wav_value)
    lengths = self.batch_np["audio_lengths"]
    real = [self.batch_np["audio"][b, :lengths[b]].astype(np.float32) / scale
            for b in range(len(lengths))]
    if self._real_f0 is None:
      self._real_f0 = [sm.median_f0(r, sr) for r in real]
    n_inf = np.asarray(out["inf_frames"]).astype(int) * hop
    inferred = [out["wav_inf"][b, :n_inf[b]] for b in range(len(real))]
    f0 = [sm.median_f0(a, sr) for a in inferred]
    mcd = [sm.mel_cepstral_distance(out["wav_tf"][b, :lengths[b]], real[b], sr)
           for b in range(len(real))]
    nanmedian = lambda v: float(np.nanmedian(v)) if np.isfinite(v).any() else float("nan")
    scalars = {"val/f0_median": nanmedian(f0), "val/f0_median_real": nanmedian(self._real_f0),
               "val/mcd": float(np.mean(mcd))}
    recognizer = sm.recognizer(str(self.config.train.get("eval_recognizer", "auto")))
    if recognizer is not None and any(self.texts):
      wer = [sm.word_error_rate(t, recognizer.transcribe(a, sr))
             for t, a in zip(self.texts, inferred) if t]
      scalars["val/wer"] = float(np.mean(wer))
      if self._real_wer is None:   # the recognizer on the real clips: what the speaker's
        self._real_wer = float(np.mean([   # own voice scores (once per run)
            sm.word_error_rate(t, recognizer.transcribe(r, sr))
            for t, r in zip(self.texts, real) if t]))
      scalars["val/wer_real"] = self._real_wer
    return scalars

  def run_and_log(self, params, step: int, writer: metrics_lib.MetricWriter, program=None,
                  interrupted=lambda: False) -> Optional[dict]:
    result = self.run(params, program, interrupted)
    if result is None:
      return None
    scalars, out = result
    if self.with_speech_measures:
      scalars.update(self.speech_measures(out))
    writer.write_scalars(step, scalars)
    if writer.enabled:
      self._log_media(step, out, writer)
    return scalars

  def _log_media(self, step, out, writer):
    n = int(self.batch_np["audio_lengths"][0]) // self.hop
    t = int(self.batch_np["text_lengths"][0])
    m = int(out["inf_frames"][0])
    images = {
        "val/mel_generated_true_timing": metrics_lib.plot_spectrogram(out["mel_tf"][0, :n]),
        "val/mel_inferred": metrics_lib.plot_spectrogram(out["mel_inf"][0, :m]),
        "val/alignment_mas": metrics_lib.plot_alignment(out["attn"][0, :n, :t]),
        "val/alignment_inferred": metrics_lib.plot_alignment(out["attn_inf"][0, :m, :t]),
    }
    audios = {"val/audio_inferred": out["wav_inf"][0, :m * self.hop],
              "val/audio_true_timing": out["wav_tf"][0, :n * self.hop]}
    if not self._logged_reference:
      images["val/mel_real"] = metrics_lib.plot_spectrogram(out["mel"][0, :n])
      real = self.batch_np["audio"][0, :n * self.hop]
      audios["val/audio_real"] = real.astype(np.float32) / float(self.config.data.max_wav_value)
      self._logged_reference = True
    writer.write_images(step, images)
    writer.write_audios(step, audios, self.sample_rate)
