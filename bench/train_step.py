"""Training step time and peak memory on this machine (CPU unless JAX sees an accelerator).

    python bench/train_step.py                          # configs/ljs_base.py, batch 2
    python bench/train_step.py --config configs/tiny.py --batch 4

One full step of `vits_jax.training.step` (D update, then G update: MAS, KL, duration NLL,
LSGAN + feature matching, mel L1) on random tokens and noise audio of fixed shapes
(default 121 tokens, 300 frames = 76800 samples, as the PyTorch reference below).

Reference (the official jaywalnut310/vits train step, PyTorch fp32, 2 CPU threads, measured
on this machine with the same config and shapes): 3.45 s/step. Prints our time and the ratio
(only for that config and those shapes), and the minor page faults per step: XLA:CPU
allocates its temporaries afresh every step, and on Linux touching them costs ~0.4 M page
faults per ljs_base step with glibc's defaults. The bench first applies
`vits_jax.allocator.keep_freed_memory()` (every size from glibc's heaps, never trimmed; what
`VITS_JAX_MALLOC=keep python train.py` does); `VITS_JAX_MALLOC=default python
bench/train_step.py` measures glibc's defaults.
"""

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TORCH_REFERENCE_S = 3.45


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default="configs/ljs_base.py")
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--tokens", type=int, default=121)
  p.add_argument("--frames", type=int, default=300)
  p.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up)")
  p.add_argument("--dtype", default=None, help="override config.model.dtype")
  args = p.parse_args()
  if not os.path.isfile(args.config):
    p.error(f"config file not found: {args.config}")

  from vits_jax import allocator
  kept = allocator.keep_freed_memory()   # VITS_JAX_MALLOC=default: glibc's defaults

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
  step = jax.jit(step_lib.make_train_step(config, gen, disc, tx_g, tx_d,
                                          state_lib.learning_rate_fn(config.train, 1000)),
                 donate_argnums=0)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  t_compile = time.perf_counter() - t0
  mem = compiled.memory_analysis()

  state, m = compiled(state, batch)          # warm-up
  jax.block_until_ready(m)
  times = []
  faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(args.steps):
    t0 = time.perf_counter()
    state, m = compiled(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) // args.steps
  step_s = float(np.median(times))
  is_reference = (os.path.basename(args.config) == "ljs_base.py" and b == 2
                  and args.tokens == 121 and args.frames == 300)
  rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

  print(f"config {args.config}  dtype {config.model.dtype}  batch {b}  tokens {args.tokens}  "
        f"frames {args.frames}  device {jax.devices()[0].device_kind} x{jax.device_count()}")
  print(f"init {t_init:.1f} s   compile {t_compile:.1f} s")
  if is_reference:
    print(f"{'':24s}{'s/step':>10s}{'vs torch':>10s}")
    print(f"{'vits_jax (median of %d)' % args.steps:24s}{step_s:10.3f}"
          f"{step_s / TORCH_REFERENCE_S:9.2f}x")
    print(f"{'official PyTorch (ref)':24s}{TORCH_REFERENCE_S:10.3f}{1.0:9.2f}x")
  else:
    print(f"vits_jax (median of {args.steps}) {step_s:.3f} s/step (no PyTorch reference for "
          "this config/shape; it is ljs_base, batch 2, 121 tokens, 300 frames)")
  print(f"steps/s {1 / step_s:.2f}   minor page faults/step {faults}   freed memory kept "
        f"(vits_jax.allocator): {kept}   GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}")
  print("all step times: " + " ".join(f"{t:.3f}" for t in times))
  if mem is not None:
    print(f"XLA step memory: temp {mem.temp_size_in_bytes / 2**30:.2f} GiB, "
          f"args {mem.argument_size_in_bytes / 2**30:.2f} GiB, "
          f"output {mem.output_size_in_bytes / 2**30:.2f} GiB")
  print(f"process peak RSS {rss_gb:.2f} GiB (includes compilation)")
  print("losses:", {k: round(float(v), 3) for k, v in m.items() if k.startswith("loss/")})


def _load_config(path):
  import importlib.util
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


if __name__ == "__main__":
  main()
