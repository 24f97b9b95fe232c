"""Helpers of the data-preparation tests: run prepare.py in-process, read back records."""

import numpy as np

from data_prep import prepare
from vits_jax.data import loader, records


def run_prepare(capsys, *argv):
  """prepare.main(argv) -> (exit code, stdout, stderr)."""
  rc = prepare.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return rc, out, err


def all_records(out_dir):
  """id -> (split, decoded record) of every clip in a prepared directory."""
  recs = {}
  for split in records.SPLITS:
    data = loader.PreparedSplit(out_dir, split)
    for rec in data.read(range(len(data))):
      recs[rec["id"]] = (split, rec)
  return recs


def peak_hz(samples, rate=22050):
  """The frequency (Hz) of the strongest bin of `samples`' spectrum (a tone's pitch)."""
  spectrum = np.abs(np.fft.rfft(np.asarray(samples, np.float64)))
  return np.argmax(spectrum) * rate / len(samples)
