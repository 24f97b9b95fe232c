"""`vits_jax.allocator`: freed big blocks stay mapped, so reusing them costs no page faults."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vits_jax import allocator

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


# Restarts itself with the huge-page tunable (vits_jax.allocator.exec_with_huge_pages), then
# allocates, touches and frees a 96 MiB block five times from a second thread (XLA:CPU's
# temporaries of a train step: above what a thread arena's heap holds, so glibc maps it
# afresh each time) and prints its arguments, the tunable and the faults of the last four.
HUGE_PROBE = """
import ctypes, os, resource, sys, threading
from vits_jax import allocator
allocator.exec_with_huge_pages()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
faults = []
def rounds():
  for k in range(5):
    if k == 1:
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
    p = libc.malloc(96 << 20)
    ctypes.memset(p, 1, 96 << 20)
    libc.free(p)
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
t = threading.Thread(target=rounds)
t.start()
t.join()
print(" ".join(sys.argv[1:]), "|", os.environ.get("GLIBC_TUNABLES", ""), "|", faults[1] - faults[0])
"""


@pytest.mark.skipif(not allocator.huge_pages_apply(),
                    reason="needs glibc >= 2.35 and transparent huge pages in madvise mode")
def test_restart_with_huge_pages_keeps_the_command_and_cuts_the_faults():
  def probe(**env):
    env = {k: v for k, v in dict(os.environ, **env).items() if k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", HUGE_PROBE, "--flag", "two words"], cwd=REPO,
                         capture_output=True, text=True, check=True, env=env).stdout
    args, tunables, faults = (part.strip() for part in out.split("|"))
    return args, tunables, int(faults)
  args, tunables, faults = probe()
  args_off, tunables_off, faults_off = probe(VITS_JAX_MALLOC="default")
  assert args == args_off == "--flag two words"
  assert tunables == "glibc.malloc.hugetlb=1" and tunables_off == ""
  pages = 4 * (96 << 20) // 4096
  assert faults_off > pages // 2      # mapped afresh in 4 KiB pages each round
  assert faults < pages // 50, (faults, faults_off)


def test_huge_pages_apply_reads_the_kernel_mode(monkeypatch):
  """Only the `madvise` mode of transparent huge pages, with glibc >= 2.35, asks for the
  restart (`always`: the kernel does it unasked; `never`: nothing to gain)."""
  import io
  for mode, want in (("always [madvise] never", True), ("[always] madvise never", False),
                     ("always madvise [never]", False)):
    monkeypatch.setattr(allocator, "open", lambda *a, mode=mode, **k: io.StringIO(mode),
                        raising=False)
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    monkeypatch.setattr(allocator.os, "confstr", lambda name: "glibc 2.35")
    assert allocator.huge_pages_apply() is want, mode
    monkeypatch.setattr(allocator.os, "confstr", lambda name: "glibc 2.34")
    assert allocator.huge_pages_apply() is False, mode
