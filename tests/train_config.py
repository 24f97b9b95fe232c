"""A micro VITS for the training tests: every module of the real model at tiny widths.

The generator has exactly the architecture of the `tests/fixtures/piper_tiny_multi.onnx` voice
(hidden 16, 2 layers, Piper-medium style decoder from 32 channels, 3 speakers), so fine-tuning
from that voice (`train.init_from`) runs the same compiled step as plain training. The
posterior encoder has 2 WN layers (the official 16 only matter for quality) and the
discriminator 2 periods at 1/16 width, to keep compile time small on a CPU.

    python train.py --config tests/train_config.py --workdir /tmp/run --config.data.dir=...
"""

from configs import tiny


def get_config(arg=None):
  config = tiny.get_config(arg)
  config.data.n_speakers = 3                 # also sets model.n_speakers
  m = config.model
  m.n_vocab = 256
  m.inter_channels = 16
  m.hidden_channels = 16
  m.filter_channels = 32
  m.n_heads = 2
  m.n_layers = 2
  m.resblock = '2'
  m.resblock_kernel_sizes = [3, 5, 7]
  m.resblock_dilation_sizes = [[1, 2], [2, 6], [3, 12]]
  m.upsample_rates = [8, 8, 4]
  m.upsample_initial_channel = 32
  m.upsample_kernel_sizes = [16, 16, 8]
  m.gin_channels = 16
  m.n_layers_enc_q = 2                       # official: 16 (hard-coded there)
  config.discriminator.periods = (2, 3)
  config.discriminator.channel_div = 16
  t = config.train
  t.batch_size = 4
  t.segment_size = 4096
  t.num_steps = 4
  t.log_every = 1
  t.eval_every = 1000
  t.checkpoint_every = 2
  t.max_to_keep = 3
  return config
