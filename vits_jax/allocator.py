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

`keep_freed_memory()` is called by `train.py` and `load_voice` (so `infer.py`; set
`VITS_JAX_MALLOC=default` to leave glibc as it is). ML runtimes do the same with their own
arenas (onnxruntime's CPU arena, XLA's GPU allocator keep what they allocated). Other C
libraries and non-glibc systems: a no-op.
"""

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_DONE = []


def keep_freed_memory() -> bool:
  """Serve every allocation from glibc's heaps and never trim them (once per process).

  Returns:
    True when the settings were applied (Linux with glibc, not turned off by
    `VITS_JAX_MALLOC=default`).
  """
  if _DONE:
    return _DONE[0]
  ok = False
  if sys.platform.startswith("linux") and os.environ.get("VITS_JAX_MALLOC") != "default":
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
