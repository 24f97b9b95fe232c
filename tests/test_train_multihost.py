"""Multi-host data parallelism: two `train.py` processes on localhost (CPU collectives) train
like one process on the same global batch, each reading only its half of every batch."""

import subprocess

import numpy as np
import pytest

import train_utils as tu


def _run_together(commands, timeout):
  """Starts every (argv, extra environment) at once (the processes of one job); returns
  their (stdout, stderr) once all have ended, each having exited 0."""
  procs = [subprocess.Popen(argv, cwd=tu.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=tu._env(**extra))  # pylint: disable=protected-access
           for argv, extra in commands]
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=timeout))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return outs


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("multihost_data")
  return tu.prepare(tu.make_corpus(root / "corpus"), root / "prepared")


def test_two_processes_match_one(data_dir, tmp_path):
  ref = tmp_path / "one"
  tu.run_train(ref, data_dir, "--config.train.num_steps=2")

  work = tmp_path / "two"
  port = tu.free_port()
  _run_together([(tu.train_cmd(work, data_dir, "--config.train.num_steps=2",
                                f"--coordinator_address=localhost:{port}", "--num_processes=2",
                                f"--process_id={i}"), {}) for i in range(2)], timeout=1200)

  rows, want = tu.train_rows(work), tu.train_rows(ref)
  assert rows[2]["devices"] == 2
  for step in (1, 2):
    for k, v in tu.losses(want[step]).items():
      np.testing.assert_allclose(rows[step][k], v, rtol=2e-5, err_msg=f"{k} step {step}")
  # Both processes wrote their own data position into the shared checkpoint.
  data = work / "checkpoints" / "2" / "data"
  assert sorted(p.name for p in data.glob("process_*.json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]


def test_infer_input_split_between_two_processes(tmp_path):
  """Two `infer.py --input` processes joined through the JAX_* environment variables each
  write their share of the lines. Process 0 (the job's coordinator) has the short lines and
  finishes first: it waits to say goodbye (leaving at once took the coordination service
  down under process 1, which aborted before writing its files). Its share holds a line
  with nothing to say: a warning, not a failed run (its other line is said)."""
  import os
  import sys
  voice = tu.REPO / "tests" / "fixtures" / "piper_tiny_high.onnx"
  long = "The box was thrown beside the parked truck, and the hogs were fed chopped corn."
  lines = tmp_path / "lines.txt"
  lines.write_text(f"Yes.\n{' '.join([long] * 40)}\n\U0001F600\n{long}\n")
  out = tmp_path / "out"
  port = tu.free_port()
  outs = _run_together([
      ([sys.executable, str(tu.REPO / "infer.py"), "--input", str(lines), "--out-dir",
        str(out), "--voice", str(voice)],
       dict(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(i))) for i in range(2)], timeout=600)
  assert sorted(os.listdir(out)) == ["0001.wav", "0002.wav", "0004.wav"]
  assert "process 0 of 2" in outs[0][1] and "no 0003.wav" in outs[0][1], outs[0][1]
  assert "wrote 2 files to" in outs[1][1] and "process 1 of 2" in outs[1][1], outs[1][1]


def test_a_coordinator_that_cannot_be_joined_is_an_error():
  """JAX_COORDINATOR_ADDRESS alone (JAX reads no process count from the environment) was
  swallowed, and every process ran alone; bad numbers are one line too."""
  import sys
  code = ("from vits_jax.training import parallel\n"
          "try:\n  parallel.initialize_distributed()\n"
          "except ValueError as e:\n  print(e)\n")
  for extra, needle in (({}, "cannot join the multi-process run at JAX_COORDINATOR_ADDRESS"),
                        ({"JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"}, "whole numbers"),
                        ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, "not one of 0..1")):
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tu.REPO, capture_output=True, text=True, timeout=300,
        env=tu._env(JAX_COORDINATOR_ADDRESS="localhost:1", **extra))  # pylint: disable=protected-access
    assert proc.returncode == 0 and needle in proc.stdout, (proc.stdout, proc.stderr[-2000:])
