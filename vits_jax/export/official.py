"""Export to the official jaywalnut310/vits code: `G_<step>.pth` + `config.json` (and
`D_<step>.pth` when the source is a training workdir), in PyTorch's zip checkpoint format,
written without torch (`convert.official_pth.save_torch_checkpoint`).

The files are what the official `utils.save_checkpoint` writes: `{'model': state_dict,
'iteration': 1, 'optimizer': ..., 'learning_rate': lr}`, so `utils.load_checkpoint` loads
them into `SynthesizerTrn(n_vocab, spec_channels, segment_size, **hps.model)` with no missing
key, and the official `train.py` can continue from them. The official `iteration` is an
epoch counter that drives its learning-rate schedule; the export starts it at 1 (the
schedule restarts) and the optimizer state is empty (Adam moments restart). Weight norm is
kept as (weight_g, weight_v), as the official modules hold it. The official code takes the
vocabulary size from its own symbol table (178): voices with other ids (Piper's 256) need
`n_vocab` passed to `SynthesizerTrn`, which config.json records as `data.n_vocab`.
config.json's `vits_jax` section (`convert.source.OWN_SECTION`), which the official code
ignores, keeps the voice's own text frontend and speaker names for a vits_jax load: a Piper
voice read with the official symbols would be fed ids it was never trained on.
"""

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from vits_jax.convert import official_pth
from vits_jax.convert import source as source_lib
from vits_jax.convert import torch_names
from vits_jax.export import common

# Sizes the official SynthesizerTrn hard-codes (config fields here, official values in
# configs/base.py).
_HARD_CODED = ("n_layers_enc_q", "enc_q_kernel_size", "enc_q_dilation_rate", "flow_n_flows",
               "flow_n_layers", "flow_kernel_size", "flow_dilation_rate", "sdp_kernel_size",
               "sdp_p_dropout", "sdp_n_flows", "dp_filter_channels", "dp_kernel_size",
               "dp_p_dropout")
_PERIODS = (2, 3, 5, 7, 11)
_MODEL_KEYS = ("inter_channels", "hidden_channels", "filter_channels", "n_heads", "n_layers",
               "kernel_size", "p_dropout", "resblock", "resblock_kernel_sizes",
               "resblock_dilation_sizes", "upsample_rates", "upsample_initial_channel",
               "upsample_kernel_sizes", "use_spectral_norm", "gin_channels", "use_sdp")
_DATA_KEYS = ("text_cleaners", "max_wav_value", "sampling_rate", "filter_length",
              "hop_length", "win_length", "n_mel_channels", "mel_fmin", "mel_fmax",
              "add_blank", "n_speakers")
_TRAIN_KEYS = ("seed", "learning_rate", "betas", "eps", "batch_size", "lr_decay",
               "segment_size")


def official_config(config, source_hps: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """The official hparams JSON for our config.

  `source_hps`: an official source's own hparams, whose settings we have no field for (its
  epochs, fp16_run, file lists, ...) are kept rather than replaced by ljs_base.json's.

  Raises:
    ValueError: a size the official code hard-codes differs.
  """
  from configs import base
  m, d, t = config.model, config.data, config.train
  official = base.get_config().model
  for key in _HARD_CODED:
    if key in m and m[key] != official[key]:
      raise ValueError(f"cannot export to official: model.{key}={m[key]} but the official "
                       f"SynthesizerTrn hard-codes {official[key]}")
  unused = base.OFFICIAL_UNUSED
  train = {**unused["train"], **{k: _plain(t[k]) for k in _TRAIN_KEYS if k in t}}
  if "loss" in config:   # the run's loss weights, under the official names
    train["c_mel"], train["c_kl"] = float(config.loss.mel), float(config.loss.kl)
  data = {"training_files": "filelists/train.txt", "validation_files": "filelists/val.txt",
          **{k: _plain(d[k]) for k in _DATA_KEYS if k in d}, **unused["data"],
          "n_vocab": int(m.n_vocab)}
  model = {**{k: _plain(m[k]) for k in _MODEL_KEYS if k in m}, **unused["model"]}
  model["resblock"] = str(model["resblock"])
  for section, own in (("train", train), ("data", data)):
    theirs = (source_hps or {}).get(section)
    if isinstance(theirs, dict):
      for key in (*unused[section], "training_files", "validation_files"):
        if key in own and key in theirs:
          own[key] = theirs[key]
  return {"train": train, "data": data, "model": model}


def _plain(v):
  return json.loads(json.dumps(v))   # tuples -> lists, ConfigDict values -> JSON


def _checkpoint(state_dict, train) -> Dict[str, Any]:
  """An official checkpoint of `state_dict`, its optimizer group holding the run's AdamW
  settings (torch's `load_state_dict` takes a group's settings from the checkpoint)."""
  n = len(state_dict)
  learning_rate = float(train.get("learning_rate", 2e-4))
  optimizer = {"state": {}, "param_groups": [{
      "lr": learning_rate, "betas": [float(b) for b in train.get("betas", (0.8, 0.99))],
      "eps": float(train.get("eps", 1e-9)),
      "weight_decay": float(train.get("weight_decay", 0.01)),
      "amsgrad": False, "foreach": None, "maximize": False, "capturable": False,
      "differentiable": False, "fused": None, "params": list(range(n))}]}
  return {"model": state_dict, "iteration": 1, "optimizer": optimizer,
          "learning_rate": learning_rate}


def export_official(src: source_lib.Source, out, force: bool = False
                    ) -> Tuple[Path, int, List[str]]:
  """Writes `out/G_<step>.pth`, `out/config.json` (and `out/D_<step>.pth` for workdirs
  whose discriminator is the official one).

  Returns:
    (out, number of generator tensors freshly initialized because the source lacked them,
     notes for the user).
  """
  notes = []
  disc = src.discriminator
  if disc is not None:
    dc = src.config.get("discriminator", None) or {}
    if int(dc.get("channel_div", 1)) != 1 or tuple(dc.get("periods", _PERIODS)) != _PERIODS:
      notes.append("no D_*.pth: this run's discriminator is not the official one "
                   f"(discriminator.channel_div={dc.get('channel_div', 1)}, periods="
                   f"{list(dc.get('periods', _PERIODS))})")
      disc = None
  source_hps = None
  if src.kind == "official":   # (read and checked when the source loaded)
    try:
      source_hps = official_pth.load_official_config(official_pth.find_config(src.path))
    except (FileNotFoundError, ValueError):   # (a config given apart: ljs_base.json's then)
      pass
  hps = official_config(src.config, source_hps)
  params, fresh, untrained = common.complete_params(src)
  step = src.step if src.step is not None else 0
  out = Path(out)
  with common.output_dir(out, force) as tmp:
    official_pth.save_torch_checkpoint(
        tmp / f"G_{step}.pth", _checkpoint(torch_names.flax_to_torch(params), src.config.train))
    if disc is not None:
      official_pth.save_torch_checkpoint(
          tmp / f"D_{step}.pth", _checkpoint(torch_names.flax_to_torch(disc), src.config.train))
    # The voice's own frontend and speaker names, which the official code has no place for
    # (it reads text with its own symbols and cleaners): a vits_jax load keeps them.
    hps[source_lib.OWN_SECTION] = source_lib.own_section(src, untrained)
    (tmp / "config.json").write_text(json.dumps(hps, indent=2) + "\n", encoding="utf-8")
  return out, fresh, notes
