"""Multi-host data parallelism: two `train.py` processes on localhost (CPU collectives) train
like one process on the same global batch, each reading only its half of every batch."""

import subprocess

import numpy as np
import pytest

import train_utils as tu


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("multihost_data")
  return tu.prepare(tu.make_corpus(root / "corpus"), root / "prepared")


def test_two_processes_match_one(data_dir, tmp_path):
  ref = tmp_path / "one"
  tu.run_train(ref, data_dir, "--config.train.num_steps=2")

  work = tmp_path / "two"
  port = tu.free_port()
  procs = [subprocess.Popen(
      tu.train_cmd(work, data_dir, "--config.train.num_steps=2",
                   f"--coordinator_address=localhost:{port}", "--num_processes=2",
                   f"--process_id={i}"),
      cwd=tu.REPO, env=tu._env(), stdout=subprocess.PIPE,  # pylint: disable=protected-access
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=1200))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]

  rows, want = tu.train_rows(work), tu.train_rows(ref)
  assert rows[2]["devices"] == 2
  for step in (1, 2):
    for k, v in tu.losses(want[step]).items():
      np.testing.assert_allclose(rows[step][k], v, rtol=2e-5, err_msg=f"{k} step {step}")
  # Both processes wrote their own data position into the shared checkpoint.
  data = work / "checkpoints" / "2" / "data"
  assert sorted(p.name for p in data.glob("process_*.json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
