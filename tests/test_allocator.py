"""`vits_jax.allocator`: freed big blocks stay mapped, so reusing them costs no page faults."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Allocates, touches and frees a 64 MiB block five times with libc's malloc (as XLA:CPU does
# with a program's temporaries on every run; numpy would madvise huge pages itself) and prints the minor page faults of the last four rounds.
PROBE = """
import ctypes, resource, sys
from vits_jax import allocator
print(allocator.keep_freed_memory(default=sys.argv[1] == "on"))
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
def round_trip():
  p = libc.malloc(64 << 20)
  ctypes.memset(p, 1, 64 << 20)
  libc.free(p)
round_trip()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
  round_trip()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def _faults(default="on", **env):
  out = subprocess.run([sys.executable, "-c", PROBE, default], cwd=REPO, capture_output=True,
                       text=True, check=True, env=dict(os.environ, **env)).stdout.split()
  return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_freed_blocks_are_reused_without_page_faults():
  applied, faults = _faults()
  off, faults_default = _faults(VITS_JAX_MALLOC="default")
  assert applied and not off
  # What train.py asks for: off unless VITS_JAX_MALLOC=keep.
  assert _faults("off")[0] is False and _faults("off", VITS_JAX_MALLOC="keep")[0] is True
  pages = 4 * (64 << 20) // 4096
  assert faults_default > pages // 2      # glibc's default: every round faults its pages in
  assert faults < pages // 50, (faults, faults_default)
