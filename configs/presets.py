"""Model hyperparameters of published VITS families that are not in the official repo.

Piper (rhasspy/piper, `src/python/piper_train`) trains VITS with three sizes:

- `medium` (the default, e.g. en_US-joe-medium): HiFi-GAN V3-like decoder, resblock '2',
  upsample 8,8,4 from 256 channels; text encoder / flow sizes as official (192 / 768).
- `x_low`: the medium decoder with hidden 96, filter 384.
- `high`: the official (V1) decoder.

All use 256 phoneme ids (piper-phonemize's id map), the stochastic duration predictor, and
`gin_channels=512` when multi-speaker. Audio front end: 22050 Hz, 1024-point STFT, hop 256.

Fine-tune from a Piper voice (the converter writes a checkpoint with this model config):

    python train.py --config configs/presets.py:medium --workdir runs/my_voice
"""

import ml_collections

from configs import base

PIPER_QUALITIES = ('x_low', 'medium', 'high')


# What a Piper 'medium' voice changes in base's model section.
_MEDIUM = dict(
    resblock='2',
    resblock_kernel_sizes=[3, 5, 7],
    resblock_dilation_sizes=[[1, 2], [2, 6], [3, 12]],
    upsample_rates=[8, 8, 4],
    upsample_initial_channel=256,
    upsample_kernel_sizes=[16, 16, 8],
    n_vocab=256,
)


def piper_medium(n_speakers: int = 1) -> ml_collections.ConfigDict:
  """Model ConfigDict of a Piper 'medium' voice (keys as `config.model`)."""
  multi = n_speakers > 1
  model = ml_collections.ConfigDict(base.get_config().model.to_dict())
  model.update(_MEDIUM)
  # Piper's VitsModel sets gin_channels=512 for multi-speaker voices; it stores
  # num_speakers=1 for single-speaker voices, where the model wants 0 (no emb_g).
  model.gin_channels = 512 if multi else 0
  model.n_speakers = n_speakers if multi else 0
  return model


def piper_x_low(n_speakers: int = 1) -> ml_collections.ConfigDict:
  """Model ConfigDict of a Piper 'x_low' voice (medium decoder, hidden 96)."""
  model = piper_medium(n_speakers)
  model.inter_channels = 96
  model.hidden_channels = 96
  model.filter_channels = 384
  return model


def piper_high(n_speakers: int = 1) -> ml_collections.ConfigDict:
  """Model ConfigDict of a Piper 'high' voice (official V1 decoder)."""
  model = piper_medium(n_speakers)
  official = base.get_config().model
  for key in _MEDIUM:
    if key != 'n_vocab':
      model[key] = official[key]
  return model


def piper_model(quality: str = 'medium', n_speakers: int = 1) -> ml_collections.ConfigDict:
  """Model ConfigDict for a Piper quality name ('x_low'/'x-low', 'medium', 'high')."""
  q = quality.replace('-', '_')
  if q not in PIPER_QUALITIES:
    raise ValueError(f"unknown Piper quality {quality!r}; expected one of "
                     f"{', '.join(PIPER_QUALITIES)}")
  return {'x_low': piper_x_low, 'medium': piper_medium, 'high': piper_high}[q](n_speakers)


def get_config(arg=None):
  """Full training config for a Piper voice: `configs/presets.py:medium` (or x_low, high).

  Text goes through piper-phonemize (ids already contain Piper's blanks, so no add_blank).
  """
  quality = arg or 'medium'
  config = base.get_config()
  model = piper_model(quality).to_dict()
  config.data.n_speakers = model.pop('n_speakers')   # model.n_speakers follows (shared ref)
  config.model.update(model)
  config.data.frontend = 'piper'
  config.data.text_cleaners = []
  config.data.add_blank = False
  return config
