"""glibc malloc settings that keep XLA:CPU's per-step buffers in the process.

XLA:CPU allocates every temporary of a program afresh on each run (`posix_memalign`). glibc
serves blocks above `M_MMAP_THRESHOLD` with a fresh `mmap` and gives them back with
`munmap` on free, and trims the heap top above `M_TRIM_THRESHOLD`, so the next step touches
new pages again: about 0.4 M minor page faults per `ljs_base` train step on Linux. Telling
glibc to serve every size from its heaps and never trim them makes the pages stay mapped
from one step to the next. The cost is that freed memory stays with the process (its peak
size, as the next step needs it again anyway).

Measured on 2 CPU cores: one 7-second sentence of the joe voice, 47.7 k -> 1.3 k minor
faults and 0.87x the time (0.56 -> 0.49 s); bench/train_step.py prints the faults of a
train step with it.

The process then keeps its peak size for good, compilation's peak included: a clean-clone
test run with it on in every process (training runs, notebook kernel, test workers) ran out
of 24 GiB. So it is on by default only where a process is short-lived and steady:
`infer.py` (and the speed benches). `train.py` applies it with `VITS_JAX_MALLOC=keep`; the
Python API never changes malloc by itself (call `keep_freed_memory()`).
`VITS_JAX_MALLOC=default` turns it off everywhere. ML runtimes keep memory the same way
with their own arenas (onnxruntime's CPU arena, XLA's GPU allocator). Other C libraries and
non-glibc systems: a no-op.

Even then a block above 64 MiB requested from a thread other than the main one is mapped
afresh by glibc on every request (a thread arena's heap cannot hold it), and XLA:CPU takes a
train step's temporaries as one such block: 0.38 M minor faults per `ljs_base` step with
the settings above. `exec_with_huge_pages` restarts `train.py` (and the train-step bench)
with glibc's `glibc.malloc.hugetlb=1` tunable, which asks the kernel for transparent huge
pages on glibc's mappings: about 1 k faults per step, and the step 0.88x the time (median of
three alternating pairs of processes, 2.22 vs 2.52 s). It changes no amount of memory held.
"""

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_DONE = []


def keep_freed_memory(default: bool = True) -> bool:
  """Serve every allocation from glibc's heaps and never trim them (once per process).

  Args:
    default: whether to apply the settings when `VITS_JAX_MALLOC` is unset (`keep`: always,
      `default`: never).

  Returns:
    True when the settings are applied (Linux with glibc).
  """
  if _DONE:
    return _DONE[0]
  ok = False
  want = {"keep": True, "default": False}.get(os.environ.get("VITS_JAX_MALLOC", ""), default)
  if want and sys.platform.startswith("linux"):
    try:
      libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
      mallopt = libc.mallopt
      mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
      # mallopt returns 1 on success; musl and others have no mallopt (AttributeError).
      ok = (mallopt(_M_MMAP_MAX, 0) == 1) and (mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1)
    except (OSError, AttributeError):
      ok = False
  _DONE.append(ok)
  return ok


HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"


def exec_with_huge_pages() -> None:
  """Restarts this process, same command line, with `GLIBC_TUNABLES` asking glibc for
  transparent huge pages (see above); returns where that is set already, would not apply
  (not glibc >= 2.35 on Linux, the kernel's transparent huge pages not in `madvise` mode) or
  `VITS_JAX_MALLOC=default` says not to. Call it first thing in a script's `__main__`, before
  anything reads stdin or starts a thread."""
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  if (os.environ.get("VITS_JAX_MALLOC") == "default" or "glibc.malloc.hugetlb" in tunables
      or not huge_pages_apply()):
    return
  env = dict(os.environ, GLIBC_TUNABLES=":".join(filter(None, (tunables, HUGE_PAGES_TUNABLE))))
  argv = list(getattr(sys, "orig_argv", None) or [sys.executable] + sys.argv)
  for stream in (sys.stdout, sys.stderr):
    if stream is not None:
      stream.flush()
  try:
    os.execve(sys.executable, argv, env)
  except OSError:
    return   # run on as we are


def huge_pages_apply() -> bool:
  """Whether the huge-page tunable changes anything here: Linux with glibc >= 2.35 and the
  kernel's transparent huge pages in `madvise` mode (`[always]`: the kernel does it unasked;
  `[never]`: nothing to gain)."""
  if not sys.platform.startswith("linux") or not _glibc_at_least(2, 35):
    return False
  try:
    with open("/sys/kernel/mm/transparent_hugepage/enabled", encoding="ascii") as f:
      return "[madvise]" in f.read()
  except OSError:
    return False


def _glibc_at_least(major: int, minor: int) -> bool:
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    have = tuple(int(v) for v in version.split(".")[:2])
  except (AttributeError, ValueError, OSError):
    return False
  return name == "glibc" and have >= (major, minor)
