"""Monotonic alignment search: vits_jax.mas vs the official Cython build, on CPU.

    python bench/mas.py                  # full lengths, 9 interleaved repeats, medians
    python bench/mas.py --lengths random --repeats 15

Rows per (B, T_frames, T_text):
  cython   the official `monotonic_align.maximum_path` minus torch: copy value to float32 (the
           core overwrites it), zeroed int32 path, lengths from the mask, `maximum_path_c`,
           path back to value's dtype. Same contract as vits_jax: value, mask in; float path out.
  core     `maximum_path_c` alone on preallocated buffers (refilled each call, included), the
           floor of the Cython route on the host.
  vits_jax `jax.jit(maximum_path)` after warm-up, device arrays in, result blocked on.
  donated  the same with `donate_argnums=0`: the path is written into value's buffer, as XLA
           does inside a train step where value is dead after MAS; the input copies are made
           outside the timing (compare with `core`, which also overwrites its input).
  numba    vits_jax.mas_numba, the CPU fallback.
If the default JAX backend is an accelerator, vits_jax runs there and the `cython` row adds
the device -> host -> device round trip that the host route would cost.

The machine may be shared: each repeat runs every row once (interleaved), and the table shows
medians.
"""

import argparse
import glob
import importlib.util
import os
import time

import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

SHAPES = [(16, 400, 100), (64, 800, 200), (16, 2048, 512)]


def _load_cython():
  """monotonic_align.core.maximum_path_c, skipping the package __init__ (it imports torch)."""
  spec = importlib.util.find_spec("monotonic_align")
  if spec is None:
    raise SystemExit("error: pip install monotonic-align (requirements-dev.txt)")
  so = glob.glob(os.path.join(os.path.dirname(spec.origin), "core*.so"))[0]
  core_spec = importlib.util.spec_from_file_location("monotonic_align.core", so)
  core = importlib.util.module_from_spec(core_spec)
  core_spec.loader.exec_module(core)
  return core.maximum_path_c


def _inputs(batch, t_frames, t_text, lengths, rng):
  value = (rng.standard_normal((batch, t_frames, t_text)) * 3 - 5).astype(np.float32)
  if lengths == "full":
    t_y = np.full(batch, t_frames)
    t_x = np.full(batch, t_text)
  else:
    t_y = rng.integers(t_frames // 2, t_frames + 1, batch)
    t_x = rng.integers(t_text // 2, np.minimum(t_text, t_y) + 1)
  mask = ((np.arange(t_frames)[None, :, None] < t_y[:, None, None])
          & (np.arange(t_text)[None, None, :] < t_x[:, None, None])).astype(np.float32)
  return value, mask


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--lengths", choices=["full", "random"], default="full",
                      help="full: every item T_frames x T_text; random: lengths in [T/2, T]")
  parser.add_argument("--repeats", type=int, default=9)
  parser.add_argument("--no-numba", action="store_true")
  parser.add_argument("--cpu", action="store_true", help="run vits_jax on the CPU backend")
  args = parser.parse_args()
  if args.cpu:
    os.environ["JAX_PLATFORMS"] = "cpu"

  import jax
  import jax.numpy as jnp
  from vits_jax.mas import maximum_path, maximum_path_numba

  maximum_path_c = _load_cython()
  backend = jax.default_backend()
  on_host = backend == "cpu"
  fn = jax.jit(maximum_path)
  fn_donated = jax.jit(maximum_path, donate_argnums=0)
  rng = np.random.default_rng(0)
  print(f"backend {backend} ({jax.devices()[0].device_kind}), lengths {args.lengths}, "
        f"median of {args.repeats} interleaved repeats, ms")
  print(f"{'B, T_frames, T_text':>20} {'cython':>8} {'core':>8} {'vits_jax':>9} {'donated':>8} "
        f"{'numba':>8} {'jax/cython':>11} {'donated/core':>13}")

  for shape in SHAPES:
    value, mask = _inputs(*shape, args.lengths, rng)
    value_d, mask_d = jnp.asarray(value), jnp.asarray(mask)

    def cython():
      host_value = np.asarray(value_d) if not on_host else value
      host_mask = np.asarray(mask_d) if not on_host else mask
      work = np.array(host_value, np.float32, order="C", copy=True)
      path = np.zeros(work.shape, np.int32)
      t_ys = np.ascontiguousarray(host_mask.sum(1)[:, 0], np.int32)
      t_xs = np.ascontiguousarray(host_mask.sum(2)[:, 0], np.int32)
      maximum_path_c(path, work, t_ys, t_xs)
      out = path.astype(value.dtype)
      return out if on_host else jax.device_put(out).block_until_ready()

    scratch = np.empty_like(value)
    core_path = np.zeros(value.shape, np.int32)
    core_t_ys = np.ascontiguousarray(mask.sum(1)[:, 0], np.int32)
    core_t_xs = np.ascontiguousarray(mask.sum(2)[:, 0], np.int32)

    def core():
      np.copyto(scratch, value)
      core_path.fill(0)
      maximum_path_c(core_path, scratch, core_t_ys, core_t_xs)

    expected = cython()
    got = np.asarray(fn(value_d, mask_d))
    if not np.array_equal(got, np.asarray(expected)):
      raise SystemExit(f"error: vits_jax path differs from Cython at {shape}")
    donated_inputs = [jnp.array(value_d, copy=True) for _ in range(args.repeats + 1)]
    jax.block_until_ready(donated_inputs)
    fn_donated(donated_inputs.pop(), mask_d).block_until_ready()  # warm-up

    rows = {
        "cython": cython,
        "core": core,
        "vits_jax": lambda: fn(value_d, mask_d).block_until_ready(),
        "donated": lambda: fn_donated(donated_inputs.pop(), mask_d).block_until_ready(),
    }
    if not on_host:
      del rows["core"]
    if not args.no_numba:
      maximum_path_numba(value[:1], mask[:1])  # compile
      rows["numba"] = lambda: maximum_path_numba(value, mask)
    times = {name: [] for name in rows}
    for _ in range(args.repeats):
      for name, run in rows.items():
        start = time.perf_counter()
        run()
        times[name].append(time.perf_counter() - start)
    ms = {name: 1e3 * float(np.median(t)) for name, t in times.items()}
    cell = lambda name: f"{ms[name]:.2f}" if name in ms else "-"
    core_ratio = f"{ms['donated'] / ms['core']:.2f}x" if "core" in ms else "-"
    print(f"{str(shape):>20} {cell('cython'):>8} {cell('core'):>8} {cell('vits_jax'):>9} "
          f"{cell('donated'):>8} {cell('numba'):>8} {ms['vits_jax'] / ms['cython']:>10.2f}x "
          f"{core_ratio:>13}")


if __name__ == "__main__":
  main()
