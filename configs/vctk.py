"""VCTK, 109 speakers: official jaywalnut310/vits `configs/vctk_base.json`.

    python train.py --config configs/vctk.py --workdir runs/vctk
"""

from configs import base


def get_config(arg=None):
  """Returns the official multi-speaker VCTK config."""
  config = base.get_config(arg)
  config.data.n_speakers = 109     # also sets model.n_speakers (shared reference)
  config.model.gin_channels = 256
  return config
