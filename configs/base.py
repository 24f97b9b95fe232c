"""Shared defaults: the official jaywalnut310/vits `configs/ljs_base.json` hyperparameters.

Every other config starts from `get_config()` here and overrides a few fields. Sections mirror
the official hparams JSON (`data`, `model`, `train`) plus `loss` (loss weights, keyed like the
metrics they produce) and `discriminator` (size knobs for the MPD; defaults = official).

Every field here is read by the code. The official keys that nothing reads (here or in the
official train.py) are not fields; `OFFICIAL_UNUSED` lists them with their `ljs_base.json`
values, for reference and for exporting an official `config.json`. The model section also
names the sizes the official code hard-codes in `SynthesizerTrn.__init__` (posterior
encoder, flow, duration predictors), with the official values.

Launch (same defaults as `ljs_base.py`):

    python train.py --config configs/base.py --workdir runs/ljs_base
"""

import ml_collections
from ml_collections import config_dict


# Official hparams keys that nothing reads (values of ljs_base.json; vctk_base.json has
# epochs=10000). `loss.mel` / `loss.kl` are the weights used in place of c_mel / c_kl;
# precision is `model.dtype`, not fp16_run; training length is `train.num_steps`.
OFFICIAL_UNUSED = {
    'data': dict(cleaned_text=True),
    'model': dict(n_layers_q=3),
    'train': dict(log_interval=200, eval_interval=1000, epochs=20000, fp16_run=True,
                  init_lr_ratio=1, warmup_epochs=0, c_mel=45, c_kl=1.0),
}


def get_config(arg=None):
  """Returns the LJSpeech base config (official `ljs_base.json`).

  Args:
    arg: unused; accepted so `--config configs/base.py:anything` does not fail.
  """
  del arg
  config = ml_collections.ConfigDict()

  config.data = ml_collections.ConfigDict(dict(
      dir='',                      # prepared data dir written by data_prep/prepare.py
      frontend='vits',             # 'vits' (official symbols + espeak) | 'piper'
      text_cleaners=['english_cleaners2'],
      add_blank=True,
      max_wav_value=32768.0,
      sampling_rate=22050,
      filter_length=1024,
      hop_length=256,
      win_length=1024,
      n_mel_channels=80,
      mel_fmin=0.0,
      # None means sampling_rate / 2 (librosa's default); typed so a flag can set a number.
      mel_fmax=config_dict.placeholder(float),
      n_speakers=0,
      speaker_names={},            # name -> speaker id; train.py takes the prepared data's
      # Length buckets of the training split: one compiled step program each. 0: from the
      # run's length (`vits_jax.training.loop.num_buckets`: one per 500 steps, 1 to 4, so
      # a short run compiles one program), kept by a resumed run.
      num_buckets=0,
  ))

  config.model = ml_collections.ConfigDict(dict(
      inter_channels=192,
      hidden_channels=192,
      filter_channels=768,
      n_heads=2,
      n_layers=6,
      kernel_size=3,
      p_dropout=0.1,
      resblock='1',
      resblock_kernel_sizes=[3, 7, 11],
      resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]],
      upsample_rates=[8, 8, 2, 2],
      upsample_initial_channel=512,
      upsample_kernel_sizes=[16, 16, 4, 4],
      use_spectral_norm=False,
      gin_channels=0,
      use_sdp=True,
      n_vocab=178,                 # len(official text/symbols.py)
      dtype='float32',             # compute dtype; 'bfloat16' on TPU. Params stay float32.
      # Sizes the official SynthesizerTrn hard-codes (official values).
      n_layers_enc_q=16,           # posterior encoder WaveNet layers
      enc_q_kernel_size=5,
      enc_q_dilation_rate=1,
      flow_n_flows=4,              # residual coupling layers of the prior flow
      flow_n_layers=4,             # WaveNet layers per coupling layer
      flow_kernel_size=5,
      flow_dilation_rate=1,
      sdp_kernel_size=3,           # stochastic duration predictor (use_sdp=True); its
                                   # width is hidden_channels (the official code ignores
                                   # its filter_channels=192 argument)
      sdp_p_dropout=0.5,
      sdp_n_flows=4,
      dp_filter_channels=256,      # deterministic duration predictor (use_sdp=False)
      dp_kernel_size=3,
      dp_p_dropout=0.5,
  ))
  # One number for both sections: overriding data.n_speakers (or model.n_speakers) moves both.
  config.model.n_speakers = config.data.get_ref('n_speakers')

  config.train = ml_collections.ConfigDict(dict(
      # Official hps.train keys.
      seed=1234,
      learning_rate=2e-4,
      betas=(0.8, 0.99),
      eps=1e-9,
      batch_size=64,
      lr_decay=0.999875,           # per epoch
      segment_size=8192,           # samples
      # Ours.
      num_steps=800_000,           # the paper trains 800k steps
      log_every=200,
      eval_every=1000,
      checkpoint_every=1000,
      max_to_keep=5,
      init_from='',                # checkpoint/voice to warm-start from
      fit_posterior_steps=0,       # init_from without a posterior encoder (Piper .onnx):
                                   # updates fitting a fresh enc_q to the source's latents
                                   # (configs/finetune.py: 300)
      freeze='',                   # generator modules that keep their weights, e.g. 'enc_p'
      weight_decay=0.01,           # torch.optim.AdamW's default, as in the official code
      max_nonfinite_steps=10,      # consecutive non-finite losses before training stops
      eval_speech_measures=True,   # F0, mel-cepstral distance and (recognizer) WER
      eval_recognizer='auto',      # the WER's recognizer: 'auto' (moonshine where installed,
                                   # else pocketsphinx), 'moonshine', 'pocketsphinx', 'none'
      compile_ahead=True,          # compile every bucket's step and the evaluation at start,
                                   # concurrently (False: each when first reached)
  ))

  config.loss = ml_collections.ConfigDict(dict(
      mel=45.0,
      kl=1.0,
      dur=1.0,
      fm=1.0,
      adv=1.0,
      stft=0.0,                    # ours: multi-resolution STFT loss (losses.stft_loss), off
  ))

  # The official MPD is fixed (periods 2,3,5,7,11; 46.7M params). `channel_div` divides every
  # conv width so tiny configs can train on a CPU; 1 = official.
  config.discriminator = ml_collections.ConfigDict(dict(
      periods=(2, 3, 5, 7, 11),
      channel_div=1,
  ))
  return config
