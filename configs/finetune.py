"""Fine-tuning the bundled Piper voice (`joe`, Piper medium) on a new speaker's clips.

    python data_prep/prepare.py --dataset ljspeech --src new_speaker --out data/new \\
        --frontend piper --val-size 4
    python train.py --config configs/finetune.py --workdir runs/ft \\
        --config.data.dir=data/new --config.train.init_from=joe

The model is joe's (`presets.py:medium`, single speaker, Piper's phoneme ids), so every
generator weight starts from the voice; the discriminator starts fresh, as Piper's
fine-tuning does when only the generator is published, and the posterior encoder the voice
lacks is first fitted to the voice's own latents (`train.fit_posterior_steps`, 300; measured
on p902: step 60 then reaches what took 180 steps without it). Settings for 40-400 clips on
a CPU host: the text encoder and the duration predictor stay frozen (`train.freeze`: what is
said and its timing stay joe's; the voice lives in the posterior encoder, flow and decoder,
which train), a multi-resolution STFT loss beside the mel loss (`loss.stft`, 20: without
it the decoder, fed the new speaker's latents, buzzed at the frame rate, 86 Hz, for the
whole 26-minute runs; with it the sampled latents' pitch reached the speaker's after ~160
steps, README), learning rate 2e-4 (the official and Piper rate) without decay within the run,
batch 4, an evaluation (mel L1, F0, MCD, WER) and a checkpoint every 100 steps, 1,000 steps.
Measured on p902 of vctk_mini (bench/finetune.py): with the duration predictor training, it
fits the early, poor alignments within 60 steps (predicted length 0.93 -> 0.77 of the real
one); frozen, the length stays and the recognizer's WER recovers sooner (README). On an
accelerator, raise `num_steps` (users report the new voice appearing after a few hundred
epochs of 50-400 clips and over-training after 1,000-2,000) and `batch_size`. Not measured
here end to end yet: see the README's fine-tuning section for what has been.
"""

from configs import presets


def get_config(arg=None):
  if arg:
    raise ValueError(f"configs/finetune.py takes no argument, got {arg!r}")
  config = presets.get_config("medium")
  t = config.train
  t.init_from = "joe"
  t.batch_size = 4
  t.learning_rate = 2e-4
  t.freeze = "enc_p,dp"
  t.fit_posterior_steps = 300
  t.lr_decay = 1.0
  t.num_steps = 1000
  t.log_every = 20
  t.eval_every = 100
  t.checkpoint_every = 100
  t.max_to_keep = 3
  config.loss.stft = 20.0
  # Four length buckets whatever num_steps, as bench/finetune.py measured the recipe (a
  # 1,000-step run would otherwise get two: `data.num_buckets`).
  config.data.num_buckets = 4
  return config
