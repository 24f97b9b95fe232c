"""What the loop needs from `vits_jax.data`: this host's training stream and a fixed
validation batch.
"""

from typing import Any, Optional

from vits_jax import data as data_lib
from vits_jax.data import records

# Keys the train step reads (the loader's `weight` is only for evaluation passes).
TRAIN_KEYS = ("text", "text_lengths", "audio", "audio_lengths", "sid")
# Clips in the fixed validation batch (evaluated every eval_every steps on every host).
NUM_EVAL_CLIPS = 4


class TrainInput:
  """This host's share of each global training batch, resumable from a saved position.

  Args:
    config: full config (`data.dir`, `data.num_buckets` (resolved, > 0: the loop's
      `num_buckets`), `train.batch_size` (global), `train.seed`, `train.segment_size`).
    local_batch: rows per batch on this host (checked against the loader's split).
  """

  def __init__(self, config, local_batch: int):
    d = config.data
    hop = int(d.hop_length)
    # Buckets: audio padded to whole ~2048-sample blocks of frames,
    # never shorter than one decoder window.
    self.loader = data_lib.make_train_loader(
        d.dir, int(config.train.batch_size), int(config.train.seed),
        num_buckets=int(d.num_buckets), audio_multiple=hop * max(1, 2048 // hop),
        min_audio_len=int(config.train.segment_size))
    if self.loader.host_batch_size != local_batch:
      raise ValueError(f"loader gives {self.loader.host_batch_size} rows per host, "
                       f"expected {local_batch}")
    self._it = self.loader.iterator()

  @property
  def steps_per_epoch(self) -> int:
    return int(self.loader.batches_per_epoch)

  def buckets_in_order(self, n_batches: int) -> list:
    """The (text, audio) bucket shapes of the next `n_batches` batches, in order of first
    use (for compiling their programs ahead)."""
    start = int(self._it.get_state()["next_index"])
    return self.loader.buckets_in_order(start, start + max(int(n_batches), 0))

  def __next__(self) -> dict:
    batch = next(self._it)
    return {k: batch[k] for k in TRAIN_KEYS}

  def get_state(self) -> Any:
    """JSON-serializable position: the next batch to be yielded."""
    return self._it.get_state()

  def set_state(self, state: Any):
    self._it = self.loader.iterator(state)

  def close(self):
    self._it = None


def validation_batch(config, num_clips: int = NUM_EVAL_CLIPS) -> Optional[dict]:
  """The first `num_clips` validation clips (training clips if there is no validation
  split), padded to one shape; the same on every host. None if the data has no clips."""
  d = config.data
  manifest = records.load_manifest(d.dir)
  split = "validation" if manifest["counts"].get("validation") else "train"
  if not manifest["counts"].get(split):
    return None
  source = data_lib.PreparedSplit(d.dir, split)
  n = min(num_clips, len(source))
  recs = source.read(range(n))
  hop = int(d.hop_length)
  t_max = _round_up(max(len(r["tokens"]) for r in recs), 8)
  # At least one decoder window so the training forward (used by the evaluation) can slice.
  a_max = max(_round_up(max(len(r["audio"]) for r in recs), hop * 8),
              int(config.train.segment_size))
  batch = data_lib.collate(recs, (t_max, a_max))
  return {k: batch[k] for k in TRAIN_KEYS}


def short_clips_note(config) -> Optional[str]:
  """A line on the training clips shorter than `train.segment_size` (their decoder windows
  take in the padding after the clip: silence to learn), or None when every clip is long
  enough."""
  lengths = data_lib.PreparedSplit(config.data.dir, "train").lengths
  segment = int(config.train.segment_size)
  short = int((lengths[:, 1] < segment).sum()) if len(lengths) else 0
  if not short:
    return None
  rate = int(config.data.sampling_rate)
  return (f"{short} of {len(lengths)} training clips are shorter than train.segment_size "
          f"({segment} samples, {segment / rate:.2f} s): their training windows take in "
          "silence after the clip (lower segment_size, or leave such clips out)")


def validation_texts(config, num_clips: int = NUM_EVAL_CLIPS) -> list:
  """The texts of `validation_batch`'s clips, in its order (for the recognizer's WER)."""
  manifest = records.load_manifest(config.data.dir)
  split = "validation" if manifest["counts"].get("validation") else "train"
  if not manifest["counts"].get(split):
    return []
  source = data_lib.PreparedSplit(config.data.dir, split)
  return [str(r.get("text", "")) for r in source.read(range(min(num_clips, len(source))))]


def _round_up(x: int, m: int) -> int:
  return -(-int(x) // m) * m
