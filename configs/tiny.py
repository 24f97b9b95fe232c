"""A tiny VITS for tests, the demo notebook and CPU learning curves.

Same audio front end as the official configs (22.05 kHz, 1024-point STFT, hop 256, 80 mels),
so it trains on the same prepared data; the networks are shrunk (hidden 32, 2 layers, a
4x4x4x4 decoder from 128 channels, discriminator widths / 8) and segments are 4096 samples,
so a training step at batch 4 is meant to run at >= 2 steps/s on 2 CPU cores.

`configs/tiny.py:micro` is smaller still, for the training tests: every module of the real
model at micro widths, with exactly the generator of the `tests/fixtures/piper_tiny_multi.onnx`
voice (hidden 16, 2 layers, a Piper-medium style decoder from 32 channels, 3 speakers), so
fine-tuning from that voice (`train.init_from`) runs the same compiled step as plain training.
Its posterior encoder has 2 WN layers and its discriminator 2 periods at 1/16 width, to keep
compile time small on a CPU.

    python train.py --config configs/tiny.py --workdir runs/tiny
    python train.py --config configs/tiny.py:micro --workdir /tmp/run --config.data.dir=...
"""

from configs import base


def get_config(arg=None):
  """Returns the tiny single-speaker config, or with `arg='micro'` the test config."""
  if arg not in (None, '', 'micro'):
    raise ValueError(f"configs/tiny.py takes no argument or 'micro', got {arg!r}")
  config = base.get_config()

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
  t.log_every = 10
  t.eval_every = 200
  t.checkpoint_every = 200
  t.max_to_keep = 2
  return _micro(config) if arg == 'micro' else config


def _micro(config):
  """The training tests' config: tiny, narrower, multi-speaker, 4 steps."""
  config.data.n_speakers = 3                 # also sets model.n_speakers
  m = config.model
  m.n_vocab = 256
  m.inter_channels = m.hidden_channels = 16
  m.filter_channels = 32
  m.resblock_kernel_sizes = [3, 5, 7]
  m.resblock_dilation_sizes = [[1, 2], [2, 6], [3, 12]]
  m.upsample_rates = [8, 8, 4]
  m.upsample_initial_channel = 32
  m.upsample_kernel_sizes = [16, 16, 8]
  m.gin_channels = 16
  m.n_layers_enc_q = 2                       # official: 16
  config.discriminator.periods = (2, 3)
  config.discriminator.channel_div = 16
  t = config.train
  t.num_steps = 4
  t.log_every = 1
  t.eval_every = 1000
  t.checkpoint_every = 2
  t.max_to_keep = 3
  return config
