"""Reads the TFDS `ljspeech` and `vctk` builders as a stream of clips (an optional extra).

    pip install -r requirements-tfds.txt      # tensorflow-datasets + tensorflow-cpu

Why TensorFlow: the `vctk` builder lists and reads files with `tf.io.gfile` while it
prepares, and a TFRecord-prepared copy is only readable with tf.data. We ask TFDS for
ArrayRecord output when it prepares, and read that with `as_data_source` (random access, one
record at a time, no tf.data); a copy that was already prepared as TFRecord is read with
`as_dataset` + `tfds.as_numpy` instead. Neither package is in requirements.txt: users with the
corpora on disk never need them.

Nothing here holds the split: `TfdsClips` knows its length and speakers up front and yields
one clip per example (`readers.iter_clips_from_examples`), so `prepare.py` keeps only what
its worker pool has in flight.
"""

from __future__ import annotations

import contextlib
import tempfile
from typing import Iterator

from data_prep import readers

MISSING = ("--tfds needs tensorflow-datasets and TensorFlow: "
           "pip install -r requirements-tfds.txt")


@contextlib.contextmanager
def _scratch_tempdir():
  """Points `tempfile` at a folder of our own that is removed afterwards: building a TFDS
  builder for a dataset that is not prepared yet makes an empty `tmp*tfds` folder in the
  system's temporary folder (`DatasetInfo.initialize_from_bucket`) and never removes it, one
  per run."""
  saved = tempfile.tempdir
  with tempfile.TemporaryDirectory(prefix="vits_jax_tfds_") as scratch:
    tempfile.tempdir = scratch
    try:
      yield
    finally:
      tempfile.tempdir = saved


def _root_cause(e: BaseException) -> str:
  """One line for an error TFDS raised: its innermost cause (TFDS wraps a missing module as
  'Failed to encode example:', with the module's name on a later line)."""
  chain = [e]
  while (chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 20:
    chain.append(chain[-1].__cause__ or chain[-1].__context__)
  missing = next((c for c in chain if isinstance(c, ModuleNotFoundError) and c.name), None)
  if missing is None and "No module named" in str(e):
    missing = e
  if missing is not None:
    name = getattr(missing, "name", None) or str(missing).split("No module named")[-1].strip(
        " '\"\n").split("'")[0]
    return (f"it needs the module {name!r}: pip install -r requirements-tfds.txt (the vctk "
            "builder also needs ffmpeg's ffprobe on PATH)")
  root = chain[-1]
  text = " ".join(str(root).split())[:300]
  return f"{type(root).__name__}: {text}" if text else type(root).__name__


class TfdsError(RuntimeError):
  """The builder could not be downloaded/prepared where --data-dir points (one line)."""


class TfdsClips:
  """The `train` split of a TFDS builder as an iterable of clips, with its length.

  Attributes:
    dataset: 'ljspeech' or 'vctk'.
    name: the builder name ('ljspeech', 'vctk/mic1').
    speaker_names: the builder's speaker ClassLabel names (vctk), else None.
    source: 'data_source' (ArrayRecord) or 'tf.data' (TFRecord).
  """

  def __init__(self, dataset: str, name: str, examples, num_examples: int,
               speaker_names, source: str):
    self.dataset, self.name, self.speaker_names = dataset, name, speaker_names
    self.source = source
    self._examples, self._n = examples, num_examples

  def __len__(self) -> int:
    return self._n

  def __iter__(self) -> Iterator[readers.Clip]:
    return readers.iter_clips_from_examples(self._iter_examples(), self.dataset,
                                            self.speaker_names)

  def _iter_examples(self):
    if self.source == "data_source":
      # One record at a time by index (what `tfds.testing.mock_data` also patches; its mock
      # of the batched `__getitems__` does not take keys).
      for i in range(self._n):
        yield self._examples[i]
    else:
      yield from self._examples

  def speaker_map(self) -> dict[str, int]:
    """Speaker ids, known before any example is read: the builder's speaker list sorted.

    For vctk that is every ClassLabel name (110 for VCTK 0.92, p315 included although the
    builder has no text for it, so its id stays unused); the folder reader, which sees the
    missing transcripts up front, leaves p315 out. Pass --speaker-map for another numbering.
    """
    if self.dataset != "vctk":
      return {readers.SINGLE_SPEAKER: 0}
    return {name: i for i, name in enumerate(sorted(self.speaker_names))}


def read_tfds(dataset: str, data_dir: str | None, download: bool = True,
              mic: str = "mic1") -> TfdsClips:
  """Opens the builder's single `train` split for streaming.

  Args:
    dataset: 'ljspeech' or 'vctk'.
    data_dir: TFDS data dir (where the prepared dataset lives / is downloaded to); a local
      path, a mounted bucket, or gs://.
    download: let TFDS download and prepare the dataset when it is not there yet.
    mic: VCTK microphone config ('mic1' or 'mic2').

  Returns:
    A `TfdsClips` (iterate it once per pass; each pass reads the split again).

  Raises:
    ImportError: tensorflow-datasets (or TensorFlow, when needed) is not installed.
    TfdsError: the dataset is not in data_dir and could not be downloaded/prepared there
      (no network, no write access, no disk space, ...).
  """
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ImportError(MISSING) from None
  name = "ljspeech" if dataset == "ljspeech" else f"vctk/{mic}"
  with _scratch_tempdir():
    builder = tfds.builder(name, data_dir=data_dir)
  if download:
    # A no-op when the dataset is there already, in whichever format it was prepared.
    try:
      with _scratch_tempdir():
        builder.download_and_prepare(file_format="array_record")
    except Exception as e:  # pylint: disable=broad-except  # network, permissions, disk...
      raise TfdsError(f"TFDS could not download and prepare {name} in "
                      f"{builder.data_dir_root}: {_root_cause(e)}") from e
  speaker_names = None
  if dataset == "vctk":
    speaker_names = list(builder.info.features["speaker"].names)
  try:
    examples = builder.as_data_source(split="train")  # ArrayRecord: random access
    return TfdsClips(dataset, name, examples, len(examples), speaker_names, "data_source")
  except (NotImplementedError, ValueError):  # prepared as TFRecord: only tf.data reads it
    pass
  try:
    import tensorflow  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    raise ImportError(MISSING) from None
  ds = builder.as_dataset(split="train", shuffle_files=False)
  n = int(ds.cardinality())
  if n < 0:  # unknown: the split's recorded size
    n = int(builder.info.splits["train"].num_examples)
  return TfdsClips(dataset, name, tfds.as_numpy(ds), n, speaker_names, "tf.data")

