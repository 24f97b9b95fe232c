"""Monotonic alignment search: vits_jax.mas vs the official Cython build (PyPI monotonic-align).

    python bench/mas.py                      # full lengths, 9 interleaved repeats
    python bench/mas.py --lengths random --repeats 15

Columns, in milliseconds, per (B, T_frames, T_text):
  cython   the official `monotonic_align.maximum_path` minus torch: copy value to float32 (the
           core overwrites it), zeroed int32 path, lengths from the mask, `maximum_path_c`, path
           back to value's dtype. Same contract as vits_jax: value and mask in, float path out.
  core     `maximum_path_c` alone on preallocated buffers (refilled each call, included): the
           floor of the Cython route.
  vits_jax `jax.jit(maximum_path)` after warm-up, device arrays in, result blocked on.
  donated  the same with `donate_argnums=0`, so the path reuses value's buffer, as XLA can do
           inside a train step where value dies at MAS; the input copies are made outside the
           timing. Compare with `core`, which also overwrites its input and reuses buffers.
  numba    vits_jax.mas_numba.maximum_path_numba, the CPU fallback.
If JAX's default backend is an accelerator, vits_jax runs there and `cython` adds the
device -> host -> device round trip that the host route costs.

The table is printed twice: with the default allocator, and again in a child process with
GLIBC_TUNABLES=glibc.malloc.hugetlb=1. On Linux with transparent huge pages in `madvise` mode,
numpy asks for huge pages for its large arrays but XLA's CPU buffers (plain malloc) do not, so
XLA pays a 4 KiB page fault per page of every fresh output buffer (the 41 MB path at
(64, 800, 200) is 10,000 faults); the tunable gives XLA the huge pages numpy already has.

The machine may be shared: each repeat runs every column once (interleaved); each shape shows
the median and the minimum (the least disturbed run) over repeats.
"""

import argparse
import glob
import importlib.util
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

SHAPES = [(16, 400, 100), (64, 800, 200), (16, 2048, 512)]
THP = "glibc.malloc.hugetlb=1"


def _load_cython():
  """monotonic_align.core.maximum_path_c, skipping the package __init__ (it imports torch)."""
  spec = importlib.util.find_spec("monotonic_align")
  if spec is None or spec.origin is None:
    raise SystemExit("error: monotonic-align is not installed (requirements-dev.txt)")
  so = glob.glob(os.path.join(os.path.dirname(spec.origin), "core*.so"))
  if not so:
    raise SystemExit("error: monotonic-align has no compiled core")
  core_spec = importlib.util.spec_from_file_location("monotonic_align.core", so[0])
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


def _table(args):
  import jax
  import jax.numpy as jnp
  from vits_jax.mas import maximum_path, maximum_path_numba

  maximum_path_c = _load_cython()
  on_host = jax.default_backend() == "cpu"
  fn = jax.jit(maximum_path)
  fn_donated = jax.jit(maximum_path, donate_argnums=0)
  rng = np.random.default_rng(0)
  allocator = os.environ.get("GLIBC_TUNABLES") or "default"
  print(f"\nbackend {jax.default_backend()} ({jax.devices()[0].device_kind}), lengths "
        f"{args.lengths}, {args.repeats} interleaved repeats, malloc {allocator}; ms")
  print(f"{'B, T_frames, T_text':>24} {'cython':>8} {'core':>7} {'vits_jax':>9} {'donated':>8} "
        f"{'numba':>8} {'jax/cython':>11} {'donated/core':>13}")

  for shape in SHAPES:
    value, mask = _inputs(*shape, args.lengths, rng)
    value_d, mask_d = jnp.asarray(value), jnp.asarray(mask)

    def cython():
      host_value = value if on_host else np.asarray(value_d)
      host_mask = mask if on_host else np.asarray(mask_d)
      work = np.array(host_value, np.float32, order="C", copy=True)
      path = np.zeros(work.shape, np.int32)
      t_ys = np.ascontiguousarray(host_mask.sum(1)[:, 0], np.int32)
      t_xs = np.ascontiguousarray(host_mask.sum(2)[:, 0], np.int32)
      maximum_path_c(path, work, t_ys, t_xs)
      out = path.astype(host_value.dtype)
      return out if on_host else jax.device_put(out).block_until_ready()

    scratch = np.empty_like(value)
    core_path = np.zeros(value.shape, np.int32)
    core_t_ys = np.ascontiguousarray(mask.sum(1)[:, 0], np.int32)
    core_t_xs = np.ascontiguousarray(mask.sum(2)[:, 0], np.int32)

    def core():
      np.copyto(scratch, value)
      core_path.fill(0)
      maximum_path_c(core_path, scratch, core_t_ys, core_t_xs)

    if not np.array_equal(np.asarray(fn(value_d, mask_d)), np.asarray(cython())):
      raise SystemExit(f"error: vits_jax path differs from Cython at {shape}")
    fresh = [jnp.array(value_d, copy=True) for _ in range(args.repeats + 1)]
    jax.block_until_ready(fresh)
    fn_donated(fresh.pop(), mask_d).block_until_ready()  # compile

    columns = {"cython": cython, "core": core,
               "vits_jax": lambda: fn(value_d, mask_d).block_until_ready(),
               "donated": lambda: fn_donated(fresh.pop(), mask_d).block_until_ready()}
    if not on_host:
      del columns["core"]
    if not args.no_numba:
      maximum_path_numba(value[:1], mask[:1])  # compile
      columns["numba"] = lambda: maximum_path_numba(value, mask)
    times = {name: [] for name in columns}
    for _ in range(args.repeats):
      for name, run in columns.items():
        start = time.perf_counter()
        run()
        times[name].append(time.perf_counter() - start)

    for label, stat in (("median", np.median), ("min", np.min)):
      ms = {name: 1e3 * float(stat(t)) for name, t in times.items()}
      cell = lambda name: f"{ms[name]:.2f}" if name in ms else "-"
      core_ratio = f"{ms['donated'] / ms['core']:.2f}x" if "core" in ms else "-"
      print(f"{str(shape) + ' ' + label:>24} {cell('cython'):>8} {cell('core'):>7} "
            f"{cell('vits_jax'):>9} {cell('donated'):>8} {cell('numba'):>8} "
            f"{ms['vits_jax'] / ms['cython']:>10.2f}x {core_ratio:>13}", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--lengths", choices=["full", "random"], default="full",
                      help="full: every item T_frames x T_text; random: lengths in [T/2, T]")
  parser.add_argument("--repeats", type=int, default=9)
  parser.add_argument("--no-numba", action="store_true", help="skip the numba column")
  parser.add_argument("--cpu", action="store_true", help="force JAX onto the CPU backend")
  parser.add_argument("--no-thp", action="store_true",
                      help="skip the second table (glibc malloc with huge pages)")
  args = parser.parse_args()
  if args.repeats < 1:
    parser.error("--repeats must be >= 1")
  if args.cpu:
    os.environ["JAX_PLATFORMS"] = "cpu"
  _table(args)
  if not args.no_thp and THP not in os.environ.get("GLIBC_TUNABLES", ""):
    env = dict(os.environ, GLIBC_TUNABLES=":".join(   # (added to any the caller set)
        t for t in (os.environ.get("GLIBC_TUNABLES", ""), THP) if t))
    argv = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--no-thp"]
    subprocess.run(argv, env=env, check=True)


if __name__ == "__main__":
  main()
