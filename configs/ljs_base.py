"""LJSpeech, single speaker: official jaywalnut310/vits `configs/ljs_base.json`.

    python train.py --config configs/ljs_base.py --workdir runs/ljs_base
"""

from configs import base


def get_config(arg=None):
  """Returns the official LJSpeech config (stochastic duration predictor)."""
  return base.get_config(arg)
