"""A tiny VITS for tests, the demo notebook and CPU learning curves.

Same audio front end as the official configs (22.05 kHz, 1024-point STFT, hop 256, 80 mels),
so it trains on the same prepared data; the networks are shrunk (hidden 32, 2 layers, a
4x4x4x4 decoder from 128 channels, discriminator widths / 8) and segments are 4096 samples,
so a training step at batch 4 is meant to run at >= 2 steps/s on 2 CPU cores.
(The official code hard-codes the posterior encoder's 16 WN layers and ignores n_layers_q;
the synthesizer reads an optional `model.n_layers_enc_q` if that ever needs shrinking.)

    python train.py --config configs/tiny.py --workdir runs/tiny
"""

from configs import base


def get_config(arg=None):
  """Returns the tiny single-speaker config."""
  config = base.get_config(arg)

  m = config.model
  m.inter_channels = 32
  m.hidden_channels = 32
  m.filter_channels = 64
  m.n_heads = 2
  m.n_layers = 2
  m.kernel_size = 3
  m.p_dropout = 0.1
  m.resblock = '2'
  m.resblock_kernel_sizes = [3, 5]
  m.resblock_dilation_sizes = [[1, 2], [2, 6]]
  m.upsample_rates = [4, 4, 4, 4]            # product = hop_length 256
  m.upsample_initial_channel = 128
  m.upsample_kernel_sizes = [8, 8, 8, 8]
  m.use_sdp = True

  config.discriminator.channel_div = 8

  t = config.train
  t.batch_size = 4
  t.segment_size = 4096                      # 16 frames
  # A small model tolerates a larger step; speeds up CPU learning curves.
  t.learning_rate = 5e-4
  t.num_steps = 2000
  t.log_interval = t.log_every = 10
  t.eval_interval = t.eval_every = 200
  t.checkpoint_every = 200
  t.max_to_keep = 2
  return config
