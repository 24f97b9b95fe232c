"""Training step time and peak memory on this machine (CPU unless JAX sees an accelerator).

    python bench/train_step.py                          # configs/ljs_base.py, batch 2
    python bench/train_step.py --config configs/tiny.py --batch 4

One full step of `vits_jax.training.step` (D update, then G update: MAS, KL, duration NLL,
LSGAN + feature matching, mel L1) on random tokens and noise audio of fixed shapes
(default 121 tokens, 300 frames = 76800 samples, as the PyTorch reference below).

Reference: the official jaywalnut310/vits train step (PyTorch fp32, CPU, as many threads as
the process may use), run in this process, interleaved with ours step by step, on the same
shapes and data, when `--official DIR` names a checkout of that repository and torch is
installed (`pip install torch monotonic-align`; nothing of it is vendored here):

    python bench/train_step.py --official ~/src/vits

It uses the checkout's `configs/ljs_base.json` and the `monotonic-align` package's MAS
(the same Cython as the checkout's, prebuilt). Without `--official` only our step is timed.
Also prints the minor page faults per step. The process runs with the malloc settings
`train.py` uses (`vits_jax.allocator`): restarted with glibc's huge-page tunable, freed
blocks given back as usual (`VITS_JAX_MALLOC=keep` keeps them mapped, `VITS_JAX_MALLOC=default`
measures glibc's defaults: about 0.4 M faults per ljs_base step).
"""

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default="configs/ljs_base.py")
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--tokens", type=int, default=121)
  p.add_argument("--frames", type=int, default=300)
  p.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up)")
  p.add_argument("--dtype", default=None, help="override config.model.dtype")
  p.add_argument("--official", default=None, metavar="DIR",
                 help="a checkout of jaywalnut310/vits: time its train step interleaved")
  args = p.parse_args()
  if not os.path.isfile(args.config):
    p.error(f"config file not found: {args.config}")
  if args.official:
    if os.path.basename(args.config) != "ljs_base.py":
      p.error("--official times the checkout's configs/ljs_base.json: use --config "
              "configs/ljs_base.py")
    if not os.path.isfile(os.path.join(args.official, "models.py")):
      p.error(f"--official {args.official}: not a checkout of jaywalnut310/vits (no models.py)")
    try:
      import torch  # noqa: F401
      import monotonic_align  # noqa: F401
    except ImportError as e:
      p.error(f"--official needs torch and monotonic-align ({e})")

  from vits_jax import allocator
  kept = allocator.keep_freed_memory(default=False)   # as train.py: VITS_JAX_MALLOC=keep

  import jax
  import jax.numpy as jnp
  import numpy as np

  from vits_jax.training import loop, state as state_lib, step as step_lib
  config = _load_config(args.config)
  if args.dtype:
    config.model.dtype = args.dtype
  hop = config.data.hop_length

  gen, disc = loop.build_models(config)
  tx_g, tx_d = state_lib.make_optimizer(config.train), state_lib.make_optimizer(config.train)

  init = loop.make_init_state(config, gen, disc, tx_g, tx_d)
  t0 = time.perf_counter()
  state = jax.jit(init, compiler_options=loop.init_compiler_options())(jax.random.PRNGKey(0))
  jax.block_until_ready(state)
  t_init = time.perf_counter() - t0

  rng = np.random.default_rng(0)
  b, n_samples = args.batch, args.frames * hop
  batch = {
      "text": jnp.asarray(rng.integers(1, config.model.n_vocab, (b, args.tokens)), jnp.int32),
      "text_lengths": jnp.full((b,), args.tokens, jnp.int32),
      "audio": jnp.asarray(0.1 * rng.standard_normal((b, n_samples)), jnp.float32),
      "audio_lengths": jnp.full((b,), n_samples, jnp.int32),
      "sid": jnp.zeros((b,), jnp.int32),
  }
  reference = None   # built (and run once) before our compile, so its errors come first
  if args.official:
    reference = _official_step(args.official, np.asarray(batch["text"]),
                               np.asarray(batch["audio"]))
    reference()                               # warm-up
  step = jax.jit(step_lib.make_train_step(config, gen, disc, tx_g, tx_d,
                                          state_lib.learning_rate_fn(config.train, 1000)),
                 donate_argnums=0)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  t_compile = time.perf_counter() - t0
  mem = compiled.memory_analysis()

  state, m = compiled(state, batch)          # warm-up
  jax.block_until_ready(m)
  times, ref_times, faults = [], [], 0
  for _ in range(args.steps):
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    state, m = compiled(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
    faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    if reference is not None:
      t0 = time.perf_counter()
      reference()
      ref_times.append(time.perf_counter() - t0)
  faults //= args.steps
  step_s = float(np.median(times))
  rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

  print(f"config {args.config}  dtype {config.model.dtype}  batch {b}  tokens {args.tokens}  "
        f"frames {args.frames}  device {jax.devices()[0].device_kind} x{jax.device_count()}")
  print(f"init {t_init:.1f} s   compile {t_compile:.1f} s")
  print(f"vits_jax (median of {args.steps}) {step_s:.3f} s/step")
  if reference is not None:
    ref_s = float(np.median(ref_times))
    ratios = [a / r for a, r in zip(times, ref_times)]
    print(f"official PyTorch step (median of {args.steps}, interleaved) {ref_s:.3f} s/step; "
          f"vits_jax / official: {np.median(ratios):.2f}x (median of per-pair ratios; "
          f"median/median {step_s / ref_s:.2f}x)")
    print("official step times: " + " ".join(f"{t:.3f}" for t in ref_times))
  print(f"steps/s {1 / step_s:.2f}   minor page faults/step {faults}   freed memory kept "
        f"(vits_jax.allocator): {kept}   GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}")
  print("all step times: " + " ".join(f"{t:.3f}" for t in times))
  if mem is not None:
    print(f"XLA step memory: temp {mem.temp_size_in_bytes / 2**30:.2f} GiB, "
          f"args {mem.argument_size_in_bytes / 2**30:.2f} GiB, "
          f"output {mem.output_size_in_bytes / 2**30:.2f} GiB")
  print(f"process peak RSS {rss_gb:.2f} GiB (includes compilation)")
  print("losses:", {k: round(float(v), 3) for k, v in m.items() if k.startswith("loss/")})


def _official_step(official_dir, text, audio):
  """One train step of the official code (train.py's `train_and_evaluate` body, fp32, no
  autocast) on `text` [b, n] ids and `audio` [b, samples]: a closure that runs it."""
  import json
  import numpy as np
  import monotonic_align  # noqa: F401  (the prebuilt package; the checkout's needs a build)
  import torch
  from torch.nn import functional as F
  sys.path.insert(0, os.path.abspath(official_dir))
  import commons
  import losses
  import mel_processing
  import models
  import librosa
  # text/symbols.py alone: text/__init__ wants the cleaners' dependencies
  symbols = _module_from_file(os.path.join(official_dir, "text", "symbols.py")).symbols

  # The checkout predates librosa 0.10's keyword-only `mel` and torch 2's `return_complex`.
  mel_processing.librosa_mel_fn = lambda sr, n_fft, n_mels, fmin, fmax: librosa.filters.mel(
      sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
  stft = torch.stft
  mel_processing.torch.stft = lambda *a, **k: torch.view_as_real(
      stft(*a, return_complex=True, **k))

  with open(os.path.join(official_dir, "configs", "ljs_base.json"), encoding="utf-8") as f:
    hps = json.load(f)
  d, t = hps["data"], hps["train"]
  torch.manual_seed(0)
  net_g = models.SynthesizerTrn(len(symbols), d["filter_length"] // 2 + 1,
                                t["segment_size"] // d["hop_length"], **hps["model"])
  net_d = models.MultiPeriodDiscriminator(hps["model"]["use_spectral_norm"])
  optim_g = torch.optim.AdamW(net_g.parameters(), t["learning_rate"], betas=t["betas"],
                              eps=t["eps"])
  optim_d = torch.optim.AdamW(net_d.parameters(), t["learning_rate"], betas=t["betas"],
                              eps=t["eps"])
  net_g.train()
  net_d.train()
  x = torch.from_numpy(np.asarray(text, np.int64) % len(symbols))
  y_full = torch.from_numpy(np.array(audio, np.float32))[:, None]   # (a writable copy)
  b = x.shape[0]
  x_lengths = torch.full((b,), x.shape[1], dtype=torch.long)
  seg = t["segment_size"]

  def run():
    spec = mel_processing.spectrogram_torch(y_full[:, 0], d["filter_length"],
                                            d["sampling_rate"], d["hop_length"],
                                            d["win_length"], center=False)
    spec_lengths = torch.full((b,), spec.shape[-1], dtype=torch.long)
    y_hat, l_length, _, ids_slice, _, z_mask, (_, z_p, m_p, logs_p, _, logs_q) = net_g(
        x, x_lengths, spec, spec_lengths)
    mel = mel_processing.spec_to_mel_torch(spec, d["filter_length"], d["n_mel_channels"],
                                           d["sampling_rate"], d["mel_fmin"], d["mel_fmax"])
    y_mel = commons.slice_segments(mel, ids_slice, seg // d["hop_length"])
    y_hat_mel = mel_processing.mel_spectrogram_torch(
        y_hat.squeeze(1), d["filter_length"], d["n_mel_channels"], d["sampling_rate"],
        d["hop_length"], d["win_length"], d["mel_fmin"], d["mel_fmax"])
    y = commons.slice_segments(y_full, ids_slice * d["hop_length"], seg)
    y_d_hat_r, y_d_hat_g, _, _ = net_d(y, y_hat.detach())
    loss_disc, _, _ = losses.discriminator_loss(y_d_hat_r, y_d_hat_g)
    optim_d.zero_grad()
    loss_disc.backward()
    optim_d.step()
    y_d_hat_r, y_d_hat_g, fmap_r, fmap_g = net_d(y, y_hat)
    loss_gen, _ = losses.generator_loss(y_d_hat_g)
    loss = (loss_gen + losses.feature_loss(fmap_r, fmap_g)
            + F.l1_loss(y_mel, y_hat_mel) * t["c_mel"] + torch.sum(l_length.float())
            + losses.kl_loss(z_p, logs_q, m_p, logs_p, z_mask) * t["c_kl"])
    optim_g.zero_grad()
    loss.backward()
    optim_g.step()
    return loss.item()

  return run


def _module_from_file(path):
  import importlib.util
  spec = importlib.util.spec_from_file_location("bench_module", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _load_config(path):
  return _module_from_file(path).get_config()


if __name__ == "__main__":
  from vits_jax import allocator
  allocator.exec_with_huge_pages()   # as train.py
  main()
