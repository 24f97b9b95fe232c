"""Reads the TFDS `ljspeech` and `vctk` builders (an optional extra).

Does it need TensorFlow? The `vctk` builder lists and reads files with `tf.io.gfile` while
preparing, and TFDS prepares TFRecords by default, which only tf.data reads back. We ask TFDS
for ArrayRecord output and read it with `as_data_source` (no TensorFlow) where that works, and
fall back to `as_dataset` + `tfds.as_numpy` (TensorFlow) for an existing TFRecord copy. In
practice: `pip install tensorflow-datasets tensorflow-cpu`. Neither is in requirements.txt:
users with the corpora on disk never need them.

The examples are handed to `readers.clips_from_examples`, the part the tests exercise. All
samples are held in memory (int16: about 4 GB for LJSpeech, 13 GB for VCTK mic1), which a TPU
VM affords; preparing from the extracted folders (--src) streams instead.
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
    try:
      # ArrayRecord output can be read back without TensorFlow (tfds >= 4.9).
      builder.download_and_prepare(file_format="array_record")
    except TypeError:  # an older tfds without file_format
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
