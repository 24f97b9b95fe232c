"""Export to Hugging Face transformers: a folder `VitsModel.from_pretrained` loads.

    config.json         VitsConfig fields (model_type 'vits')
    model.safetensors   the whole generator under HF's parameter names
    vocab.json, tokenizer_config.json   only for voices with HF's character tokenizer

Names come from the one HF <-> official name table of `vits_jax.convert.hf`, read from
the official side (each name checked to map back): the decoder with weight norm folded into
plain weights (HF's HiFi-GAN has none at inference), the WaveNet layers as
`parametrizations.weight.original0/1` (what current transformers saves), attention
projections as linear weights, LayerNorms as weight/bias. HF's decoder has only ResBlock1
and its other fixed sizes are the official ones: a voice that differs is a clear error, not
a wrong model.
"""

import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from vits_jax import inference
from vits_jax.convert import hf as hf_import
from vits_jax.convert import source as source_lib
from vits_jax.convert import torch_names
from vits_jax.export import common

def hf_state_dict(params, sdp: bool) -> Dict[str, np.ndarray]:
  """Flax generator params -> HF names and layouts (decoder weight norm folded); `sdp`:
  the model's `use_sdp` (the stochastic duration predictor's names differ)."""
  official = torch_names.flax_to_torch({k: v for k, v in params.items() if k != "dec"})
  official.update(torch_names.flax_to_torch({"dec": params["dec"]}, fold_weight_norm=True))
  out = {}
  for name, value in official.items():
    value = np.ascontiguousarray(value, np.float32)
    if hf_import.ATTENTION_WEIGHT.search(name):
      value = value[:, :, 0]
    hf_name = hf_import.official_to_hf_name(name, sdp)
    back = hf_import.hf_to_official({hf_name: value})
    if list(back) != [name]:
      raise AssertionError(f"HF name map is not invertible at {name} -> {hf_name} -> "
                           f"{list(back)}")
    out[hf_name] = value
  return out


def hf_config(config) -> Dict[str, Any]:
  """VitsConfig fields for our config.

  Raises:
    ValueError: the architecture has a part HF's VitsModel cannot express.
  """
  m, d = config.model, config.data
  if str(m.resblock) != "1":
    raise ValueError("cannot export to hf: transformers' VitsModel has only ResBlock1 "
                     f"(HiFi-GAN V1) decoders and this voice uses resblock '{m.resblock}' "
                     "(Piper medium / x_low voices); export it --to piper or --to official")
  from configs import base
  official = base.get_config().model
  for key in ("flow_n_flows", "flow_n_layers", "flow_kernel_size", "flow_dilation_rate",
              "enc_q_kernel_size", "enc_q_dilation_rate", "sdp_kernel_size", "sdp_n_flows",
              "dp_filter_channels", "dp_kernel_size"):
    if key in m and m[key] != official[key]:
      raise ValueError(f"cannot export to hf: model.{key}={m[key]} (VitsConfig fixes the "
                       f"official {official[key]})")
  infer = {**inference.DEFAULT_KNOBS, **(config.get("infer", None) or {})}
  n_speakers = int(m.get("n_speakers", 0) or 0)
  return {
      "architectures": ["VitsModel"], "model_type": "vits",
      "vocab_size": int(m.n_vocab), "hidden_size": int(m.hidden_channels),
      "num_hidden_layers": int(m.n_layers), "num_attention_heads": int(m.n_heads),
      "window_size": 4, "use_bias": True, "ffn_dim": int(m.filter_channels),
      "layerdrop": 0.1, "ffn_kernel_size": int(m.kernel_size),
      "flow_size": int(m.inter_channels), "spectrogram_bins": int(d.filter_length) // 2 + 1,
      "hidden_act": "relu", "hidden_dropout": float(m.p_dropout),
      "attention_dropout": 0.1, "activation_dropout": 0.1, "initializer_range": 0.02,
      "layer_norm_eps": 1e-5,
      "use_stochastic_duration_prediction": bool(m.use_sdp),
      "num_speakers": max(1, n_speakers), "speaker_embedding_size": int(m.gin_channels),
      "upsample_initial_channel": int(m.upsample_initial_channel),
      "upsample_rates": list(m.upsample_rates),
      "upsample_kernel_sizes": list(m.upsample_kernel_sizes),
      "resblock_kernel_sizes": list(m.resblock_kernel_sizes),
      "resblock_dilation_sizes": [list(x) for x in m.resblock_dilation_sizes],
      "leaky_relu_slope": 0.1, "depth_separable_channels": 2,
      "depth_separable_num_layers": 3, "duration_predictor_flow_bins": 10,
      "duration_predictor_tail_bound": 5.0, "duration_predictor_kernel_size": 3,
      "duration_predictor_dropout": float(m.get("sdp_p_dropout", 0.5)),
      "duration_predictor_num_flows": 4, "duration_predictor_filter_channels": 256,
      "prior_encoder_num_flows": 4, "prior_encoder_num_wavenet_layers": 4,
      "posterior_encoder_num_wavenet_layers": int(m.get("n_layers_enc_q", 16)),
      "wavenet_kernel_size": 5, "wavenet_dilation_rate": 1, "wavenet_dropout": 0.0,
      "speaking_rate": 1.0 / float(infer["length_scale"]),
      "noise_scale": float(infer["noise_scale"]),
      "noise_scale_duration": float(infer["noise_scale_w"]),
      "sampling_rate": int(d.sampling_rate),
  }


def export_hf(src: source_lib.Source, out, force: bool = False
              ) -> Tuple[Path, int, List[str]]:
  """Writes the HF folder `out`.

  Returns:
    (out, number of tensors freshly initialized because the source lacked them, notes for
     the user).

  Raises:
    ValueError: a voice HF cannot express; FileExistsError: `out` exists and not `force`.
  """
  from safetensors.numpy import save
  config = hf_config(src.config)
  params, fresh, untrained = common.complete_params(src)
  tensors = hf_state_dict(params, bool(src.config.model.use_sdp))
  if src.frontend["kind"] != "hf" or src.speaker_names or untrained:
    # What HF's tokenizer cannot hold (a Piper voice's phoneme map; speaker names), for a
    # vits_jax load: transformers keeps unknown config keys and ignores them.
    config[source_lib.OWN_SECTION] = source_lib.own_section(src, untrained)
  out = Path(out)
  with common.output_dir(out, force) as tmp:
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    # Serialized here and written by Python, so a full disk is an OSError like any other.
    (tmp / "model.safetensors").write_bytes(save(tensors, metadata={"format": "pt"}))
    if src.frontend["kind"] == "hf":
      front = src.frontend
      (tmp / "vocab.json").write_text(json.dumps(front["vocab"], ensure_ascii=False),
                                      encoding="utf-8")
      tok = {"add_blank": bool(front["add_blank"]), "normalize": bool(front["normalize"]),
             "phonemize": False, "is_uroman": False, "tokenizer_class": "VitsTokenizer",
             # the source's (MMS pads with its id-0 letter); else transformers' defaults
             "pad_token": front.get("pad_token") or "<pad>",
             "unk_token": front.get("unk_token") or "<unk>"}
      if front.get("language") is not None:
        tok["language"] = front["language"]
      (tmp / "tokenizer_config.json").write_text(json.dumps(tok, indent=2) + "\n",
                                                 encoding="utf-8")
  notes = []
  if src.frontend["kind"] != "hf":
    reads = ("a Piper phoneme map (espeak-ng phonemes)" if src.frontend["kind"] == "piper"
             else "the official VITS symbols and cleaners")
    notes.append(f"no vocab.json: this voice reads text with {reads}, which transformers' "
                 "VitsTokenizer cannot; transformers takes its token ids, and a vits_jax "
                 "load of the export reads text as the source did")
  return out, fresh, notes
