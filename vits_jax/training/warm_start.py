"""Fine-tuning: initialize the generator from an existing voice (`config.train.init_from`).

Accepted sources: everything `vits_jax.voice.load_voice` accepts (read by the same
`vits_jax.convert.source.load_source`): `joe` (the bundled Piper voice), a Piper `.onnx`, a
training workdir (its latest checkpoint), an HF `VitsModel` folder, an official `G_*.pth`.

Every generator parameter the source has is copied; those it lacks (a Piper export has no
posterior encoder `enc_q` and no `dp.post_*` flows) keep their fresh initialization (but
speaker conditioning a single-speaker source lacks starts at zero: each speaker speaks as the
source voice at first), and the discriminator and optimizer states always start fresh. The
copy happens inside the run's init program (`loop.make_init_state(..., source_name=...)`,
the source as an argument), so XLA drops the random initialization of every tensor the
source replaces: for a Piper medium voice the init program compiles in 22 s instead of 59 s
here. A parameter with a different shape is an
error that names it: the config's model section must describe the source's architecture.
A source without a posterior encoder gets one fitted to its own latents on the training
transcripts (`train.fit_posterior_steps`, `vits_jax.training.posterior_fit`).
"""

import logging
from typing import Any, Dict, List, Tuple

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from vits_jax.training import state as state_lib


def load_source_params(path: str, config=None) -> Tuple[Dict[str, Any], str, List[str]]:
  """Generator params (flax layout) of `path`, a short description of the source, and
  warnings where the source voice was made for other data than `config`'s (another sampling
  rate or text frontend: it trains, but starts from a voice that does not fit the clips)."""
  from vits_jax.convert.source import load_source
  try:
    source = load_source(path)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"train.init_from: {e}") from None
  except ValueError as e:
    raise ValueError(f"train.init_from: {e}") from None
  step = f" (step {source.step})" if source.step is not None else ""
  name = f"{source.kind} {source.path}{step}"
  notes = []
  if config is not None:
    rate, want = int(source.config.data.sampling_rate), int(config.data.sampling_rate)
    if rate != want:
      notes.append(f"train.init_from: {name} speaks at {rate} Hz and the data is at {want} "
                   "Hz: the voice starts from audio at the wrong rate (prepare the clips at "
                   f"{rate} Hz to fine-tune it)")
    if source.frontend["kind"] != config.data.get("frontend", "vits"):
      notes.append(f"train.init_from: {name} reads text with its {source.frontend['kind']} "
                   f"frontend and the data was prepared with data.frontend="
                   f"'{config.data.get('frontend', 'vits')}': its ids mean other sounds")
  return source.params, name, notes


def merge_params(target: Dict[str, Any], source: Dict[str, Any],
                 source_name: str) -> Tuple[Dict[str, Any], int, int]:
  """Copies `source` leaves into `target` where the paths match.

  Returns:
    (merged params, number copied, number kept from `target`).

  Raises:
    ValueError: a shared parameter has a different shape, or nothing matches.
  """
  flat_t = traverse_util.flatten_dict(target, sep="/")
  flat_s = traverse_util.flatten_dict(source, sep="/")
  mismatched = [f"{k}: model {tuple(np.shape(flat_t[k]))} vs source "
                f"{tuple(np.shape(flat_s[k]))}"
                for k in sorted(flat_t) if k in flat_s
                and tuple(np.shape(flat_t[k])) != tuple(np.shape(flat_s[k]))]
  if mismatched:
    more = f" (and {len(mismatched) - 3} more)" if len(mismatched) > 3 else ""
    raise ValueError(f"train.init_from: {source_name} does not match config.model: "
                     f"{'; '.join(mismatched[:3])}{more}")
  copied = [k for k in flat_t if k in flat_s]
  if not copied:
    raise ValueError(f"train.init_from: {source_name} shares no parameter with the model")
  # (leaves may be tracers: merge_params also runs inside the init program)
  cast = lambda v, like: v if v.dtype == like.dtype else v.astype(like.dtype)
  merged = {k: cast(flat_s[k], v) if k in flat_s else neutral(k, v)
            for k, v in flat_t.items()}
  return traverse_util.unflatten_dict(merged, sep="/"), len(copied), len(flat_t) - len(copied)


# Speaker conditioning the source lacks (a single-speaker voice fine-tuned on several
# speakers) starts at zero: every speaker speaks as the source voice, and each layer learns
# its speakers from there. Random, it changed a frozen duration predictor's timing for good
# (twice as fast speech from joe). Weight norm's direction `weight_v` stays as drawn: its
# scale `weight_g` is zero.
_CONDITIONING = ("cond", "cond_layer")
_ZEROED = ("weight", "weight_g", "bias")


def neutral(path: str, value):
  """A fresh leaf as it starts in a warm-started model (see `_CONDITIONING`)."""
  parts = path.split("/")
  if parts[-1] in _ZEROED and any(p in _CONDITIONING for p in parts[:-1]):
    return jax.numpy.zeros_like(value)
  return value


def init_args(source: Dict[str, Any]) -> Dict[str, np.ndarray]:
  """The source's params as the init program's argument: flat ("enc_p/emb/embedding"),
  floating leaves as float32 (the models' param dtype)."""
  flat = traverse_util.flatten_dict(source, sep="/")
  return {k: np.asarray(v, np.float32) if np.issubdtype(np.asarray(v).dtype, np.floating)
          else np.asarray(v) for k, v in flat.items()}


def after_init(state: state_lib.TrainState, source: Dict[str, Any], name: str,
               config: ml_collections.ConfigDict, sharding,
               generator=None) -> state_lib.TrainState:
  """`state` from an init program that copied `source` (`loop.make_init_state`): reports
  what was copied and, when the source has no posterior encoder and `generator` is given,
  fits `enc_q` to the source voice."""
  target = state.params["generator"]
  flat_t = traverse_util.flatten_dict(target, sep="/")
  copied = sum(k in flat_t for k in source)
  kept = len(flat_t) - copied
  logging.info("init_from %s: %d generator tensors copied, %d freshly initialized",
               name, copied, kept)
  main = jax.process_index() == 0
  if main:
    print(f"init_from {name}: {copied} generator tensors copied, {kept} fresh")
  steps = int(config.train.get("fit_posterior_steps", 0))
  has_enc_q = any(k.startswith("enc_q/") for k in source)
  if generator is None or steps <= 0 or "enc_q" not in target or has_enc_q:
    return state
  merged = _fit_posterior(generator, jax.device_get(target), config, steps, main)
  merged = jax.device_put(merged, sharding)
  return state.replace(params={**state.params, "generator": merged})


def _fit_posterior(generator, params, config, steps: int, verbose: bool):
  """`params` with `enc_q` fitted on the training transcripts (the same on every host)."""
  from vits_jax import data as data_lib
  from vits_jax.training import posterior_fit
  split = data_lib.PreparedSplit(config.data.dir, "train")
  recs = split.read(range(min(len(split), posterior_fit.MAX_SENTENCES)))
  if not recs:
    return params
  params, (first, last) = posterior_fit.fit_posterior(
      generator, params, [r["tokens"] for r in recs], [r["sid"] for r in recs],
      config.data, steps, int(config.train.seed))
  if verbose:
    print(f"posterior encoder fitted to the source voice: {len(recs)} sentences, "
          f"{steps} steps, nll {first:.3f} -> {last:.3f}")
  return params
