"""Training step time and peak memory on this machine (CPU unless JAX sees an accelerator).

    python bench/train_step.py                          # configs/ljs_base.py, batch 2
    python bench/train_step.py --config configs/tiny.py --batch 4

One full step of `vits_jax.training.step` (D update, then G update: MAS, KL, duration NLL,
LSGAN + feature matching, mel L1) on random tokens and noise audio of fixed shapes
(default 121 tokens, 300 frames = 76800 samples, as the PyTorch reference below).

Reference: the official jaywalnut310/vits train step (PyTorch fp32, CPU, as many threads as
the process may use) on the same shapes and data, when `--official DIR` names a checkout of
that repository and torch is installed (`pip install torch monotonic-align`; nothing of it is
vendored here). It runs in a worker process of its own, as each framework does in a real
run, with the same environment (malloc settings included), and the two take turns in blocks
of `--block` steps; the first step of each block follows an idle gap and is reported apart
(see the loop below: on a VM that reports free pages to its host, that step faults its
freed memory back in). Until session 23 the official step ran in this process, one step
each in turn, which measured our `ljs_base` step at 2.5-3.3 s against 2.2 s back to back.

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
  p.add_argument("--block", type=int, default=3,
                 help="with --official: steps each side runs in a row, taking turns (the "
                      "first of each block is reported apart)")
  p.add_argument("--dtype", default=None, help="override config.model.dtype")
  p.add_argument("--official", default=None, metavar="DIR",
                 help="a checkout of jaywalnut310/vits: time its train step interleaved, "
                      "in a worker process")
  args = p.parse_args()
  if not os.path.isfile(args.config.split(":")[0]):   # (FILE:ARG, as train.py takes it)
    p.error(f"config file not found: {args.config}")
  if args.steps < 1 or (args.official and args.block < 2):
    p.error("--steps must be >= 1 (and with --official, --block >= 2)")
  if args.official:
    if os.path.basename(args.config) != "ljs_base.py":
      p.error("--official times the checkout's configs/ljs_base.json: use --config "
              "configs/ljs_base.py")
    if not os.path.isfile(os.path.join(args.official, "models.py")):
      p.error(f"--official {args.official}: not a checkout of jaywalnut310/vits (no models.py)")
    import importlib.util
    missing = [m for m in ("torch", "monotonic_align") if importlib.util.find_spec(m) is None]
    if missing:
      p.error(f"--official needs torch and monotonic-align (no module {missing[0]!r})")

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
    reference = _OfficialWorker(args.official, np.asarray(batch["text"]),
                                np.asarray(batch["audio"]))
  step = jax.jit(step_lib.make_train_step(config, gen, disc, tx_g, tx_d,
                                          state_lib.learning_rate_fn(config.train, 1000)),
                 donate_argnums=0)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  t_compile = time.perf_counter() - t0
  mem = compiled.memory_analysis()

  state, m = compiled(state, batch)          # warm-up
  jax.block_until_ready(m)
  # With --official the two take turns in blocks of `--block` steps, and the first step of
  # each block is kept apart: it follows the other's block, an idle gap in which a VM with
  # free page reporting (this Firecracker guest: "Free page reporting enabled") hands the
  # memory freed since to the host, so that step faults it back in (1-1.5 s of kernel time
  # for ours after a 3 s gap, 0.2 s back to back). A training run steps back to back.
  block = args.block if reference is not None else args.steps
  times, ref_times, firsts, ref_firsts, pairs = [], [], [], [], []
  faults = kernel_s = 0
  while len(times) < args.steps:
    ours, theirs = [], []
    for i in range(block):
      r0 = resource.getrusage(resource.RUSAGE_SELF)
      t0 = time.perf_counter()
      state, m = compiled(state, batch)
      jax.block_until_ready(m)
      dt = time.perf_counter() - t0
      r1 = resource.getrusage(resource.RUSAGE_SELF)
      if i == 0 and reference is not None:
        firsts.append(dt)
        continue
      ours.append(dt)
      faults += r1.ru_minflt - r0.ru_minflt
      kernel_s += r1.ru_stime - r0.ru_stime
    for i in range(block if reference is not None else 0):
      (ref_firsts if i == 0 else theirs).append(reference.step())
    times += ours
    ref_times += theirs
    if theirs:
      pairs.append(float(np.median(ours) / np.median(theirs)))
  args.steps = len(times)
  faults //= args.steps
  kernel_s /= args.steps
  step_s = float(np.median(times))
  rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

  print(f"config {args.config}  dtype {config.model.dtype}  batch {b}  tokens {args.tokens}  "
        f"frames {args.frames}  device {jax.devices()[0].device_kind} x{jax.device_count()}")
  print(f"init {t_init:.1f} s   compile {t_compile:.1f} s")
  print(f"vits_jax (median of {args.steps}) {step_s:.3f} s/step")
  if reference is not None:
    ref_s = float(np.median(ref_times))
    print(f"official PyTorch step (median of {len(ref_times)}, in its own process, blocks of "
          f"{block} interleaved with ours) {ref_s:.3f} s/step; vits_jax / official: "
          f"{np.median(pairs):.2f}x (median of per-block ratios; median/median "
          f"{step_s / ref_s:.2f}x)")
    print("official step times: " + " ".join(f"{t:.3f}" for t in ref_times))
    print("first step of each block, left out above (after the other's block): vits_jax "
          + " ".join(f"{t:.3f}" for t in firsts) + "; official "
          + " ".join(f"{t:.3f}" for t in ref_firsts))
    reference.close()
  print(f"steps/s {1 / step_s:.2f}   minor page faults/step {faults}   kernel time/step "
        f"{kernel_s:.2f} s   freed memory kept "
        f"(vits_jax.allocator): {kept}   GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}")
  print("all step times: " + " ".join(f"{t:.3f}" for t in times))
  if mem is not None:
    print(f"XLA step memory: temp {mem.temp_size_in_bytes / 2**30:.2f} GiB, "
          f"args {mem.argument_size_in_bytes / 2**30:.2f} GiB, "
          f"output {mem.output_size_in_bytes / 2**30:.2f} GiB")
  print(f"process peak RSS {rss_gb:.2f} GiB (includes compilation)")
  print("losses:", {k: round(float(v), 3) for k, v in m.items() if k.startswith("loss/")})


class _OfficialWorker:
  """The official step in a child process (`--_official-worker`): built and warmed up at
  construction, then `step()` runs one and returns its time as the child measured it."""

  def __init__(self, official_dir, text, audio):
    import subprocess
    import tempfile
    import numpy as np
    fd, self._data = tempfile.mkstemp(suffix=".npz", prefix="vits_jax_bench_")
    os.close(fd)
    np.savez(self._data, text=text, audio=audio)
    self._proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--_official-worker", official_dir,
         self._data], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
      self._expect("ready")
    finally:
      os.remove(self._data)                    # (read by now)

  def _expect(self, word):
    line = self._proc.stdout.readline().split()
    if not line or line[0] != word:
      self.close()
      if self._proc.returncode == 2:           # the worker said why, in one line
        raise SystemExit(2)
      raise SystemExit(f"error: the official step's worker stopped (exit status "
                       f"{self._proc.returncode})")
    return line

  def step(self) -> float:
    self._proc.stdin.write("step\n")
    self._proc.stdin.flush()
    return float(self._expect("took")[1])

  def close(self):
    if self._proc.poll() is None:
      self._proc.stdin.close()
      self._proc.wait()


def _official_worker(official_dir, data_path):
  """The child side of `_OfficialWorker`: stdout carries only its replies."""
  import numpy as np
  data = np.load(data_path)
  out, sys.stdout = sys.stdout, sys.stderr     # torch's and the checkout's prints: stderr
  try:
    run = _official_step(official_dir, data["text"], data["audio"])
    run()                                      # warm-up
  except Exception as e:                       # a checkout this bench cannot drive
    print(f"error: --official {official_dir}: its train step failed to build or run: "
          f"{type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(2)
  print("ready", file=out, flush=True)
  for line in sys.stdin:
    if line.strip() != "step":
      break
    t0 = time.perf_counter()
    run()
    print(f"took {time.perf_counter() - t0:.6f}", file=out, flush=True)


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
  """`FILE` or `FILE:ARG` (ml_collections' config_flags form, e.g. configs/tiny.py:micro)."""
  path, _, arg = path.partition(":")
  module = _module_from_file(path)
  return module.get_config(arg) if arg else module.get_config()


if __name__ == "__main__":
  if len(sys.argv) == 4 and sys.argv[1] == "--_official-worker":
    _official_worker(sys.argv[2], sys.argv[3])   # (environment inherited from the parent)
  else:
    from vits_jax import allocator
    allocator.exec_with_huge_pages()   # as train.py
    main()
