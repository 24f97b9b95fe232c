"""LJSpeech with the deterministic duration predictor: official `configs/ljs_nosdp.json`.

    python train.py --config configs/ljs_nosdp.py --workdir runs/ljs_nosdp
"""

from configs import base


def get_config(arg=None):
  """Returns the LJSpeech config with `use_sdp=False`."""
  config = base.get_config(arg)
  config.model.use_sdp = False
  return config
