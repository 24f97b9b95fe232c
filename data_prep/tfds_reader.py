"""Reads the TFDS `ljspeech` and `vctk` builders (an optional extra).

TFDS's own builders download the corpora and prepare them as TFRecords; reading TFRecords
(`tfds.load` / `tfds.as_numpy`) goes through tf.data, so this path needs both
`tensorflow-datasets` and TensorFlow (`pip install tensorflow-datasets tensorflow-cpu`).
Neither is in requirements.txt: users who have the corpora on disk never need them. A builder
prepared with `file_format='array_record'` could be read without TensorFlow through
`tfds.data_source`; we try that first.

The examples are handed to `readers.clips_from_examples`, the part the tests exercise.
"""

from __future__ import annotations

from data_prep import readers

MISSING = ("--tfds needs tensorflow-datasets and TensorFlow: "
           "pip install tensorflow-datasets tensorflow-cpu")

def read_tfds(dataset: str, data_dir: str | None, download: bool = True,
              mic: str = "mic1") -> list[readers.Clip]:
  """Loads every example of the builder's single `train` split as clips.

  Args:
    dataset: 'ljspeech' or 'vctk'.
    data_dir: TFDS data dir (where the prepared dataset lives / is downloaded to).
    download: let TFDS download and prepare the dataset when it is not there yet.
    mic: VCTK microphone config ('mic1' or 'mic2').

  Returns:
    Clips with samples in memory.

  Raises:
    ImportError: tensorflow-datasets (or TensorFlow, when needed) is not installed.
  """
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ImportError(MISSING) from None
  name = "ljspeech" if dataset == "ljspeech" else f"vctk/{mic}"
  builder = tfds.builder(name, data_dir=data_dir)
  if download:
    builder.download_and_prepare()
  speaker_names = None
  if dataset == "vctk":
    speaker_names = builder.info.features["speaker"].names
  try:
    examples = builder.as_data_source(split="train")  # array_record: no TensorFlow needed
  except Exception:  # pylint: disable=broad-except  # TFRecord-prepared: needs tf.data
    try:
      import tensorflow  # pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
      raise ImportError(MISSING) from None
    examples = tfds.as_numpy(builder.as_dataset(split="train"))
  return readers.clips_from_examples(examples, dataset, speaker_names)
