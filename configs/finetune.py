"""Fine-tuning the bundled Piper voice (`joe`, Piper medium) on a new speaker's clips.

    python data_prep/prepare.py --dataset ljspeech --src new_speaker --out data/new \\
        --frontend piper --val-size 4
    python train.py --config configs/finetune.py --workdir runs/ft \\
        --config.data.dir=data/new --config.train.init_from=joe

The model is joe's (`presets.py:medium`, single speaker, Piper's phoneme ids), so every
generator weight starts from the voice; the discriminator starts fresh, as Piper's
fine-tuning does when only the generator is published. Settings for 40-400 clips on a CPU
host: batch 4, learning rate 1e-4 (half of training from scratch, the usual choice when
starting from a trained voice), no decay within the run, an evaluation (mel L1, F0, MCD,
WER) and a checkpoint every 100 steps, 1,000 steps. On an accelerator, raise `num_steps`
(users report the new voice appearing after a few hundred epochs of 50-400 clips and
over-training after 1,000-2,000) and `batch_size`. Not measured here end to end yet: see
the README's fine-tuning section for what has been.
"""

from configs import presets


def get_config(arg=None):
  if arg:
    raise ValueError(f"configs/finetune.py takes no argument, got {arg!r}")
  config = presets.get_config("medium")
  t = config.train
  t.init_from = "joe"
  t.batch_size = 4
  t.learning_rate = 1e-4
  t.lr_decay = 1.0
  t.num_steps = 1000
  t.log_every = 20
  t.eval_every = 100
  t.checkpoint_every = 100
  t.max_to_keep = 3
  return config
