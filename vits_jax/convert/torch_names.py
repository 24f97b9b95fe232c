"""Official PyTorch VITS state dicts <-> our Flax param pytrees.

Names: the official dotted names with list indices folded into the module name
(`dec.resblocks.3.convs1.2.weight_g` <-> `dec / resblocks_3 / convs1_2 / weight_g`). Works for
the generator (`SynthesizerTrn`) and the discriminator (`MultiPeriodDiscriminator`).

Values (see `vits_jax.models.layers` for our layouts):

- Conv1d weight `[Cout, Cin, K]` -> `[K, Cin, Cout]`; ConvTranspose1d (the decoder's `ups`)
  `[Cin, Cout, K]` -> `[K, Cin, Cout]`; Conv2d `[Cout, Cin, KH, KW]` -> `[KH, KW, Cin, Cout]`.
- weight norm: `weight_g` `[C, 1, 1]` -> `[C]`; `weight_v` like a weight. Newer torch
  parametrizations (`parametrizations.weight.original0/1`) are read as `weight_g/weight_v`.
- spectral norm: `weight_orig` -> `weight` (the power-iteration buffers are dropped; they
  are re-estimated).
- ElementwiseAffine `m`, `logs` `[C, 1]` -> `[C]`; embeddings, biases, LayerNorm
  gamma/beta and relative position tables unchanged.

Given `like` (e.g. `jax.eval_shape` of the model's init), `torch_to_flax` also moves between
plain and weight-normed convs (Piper and HF checkpoints have weight norm folded in some
places) and checks that every name and shape matches.
"""

import re
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from vits_jax.models import layers

# Module names that end in _<digit> without being list items.
_NOT_LIST_ITEMS = frozenset({"conv_1", "conv_2", "norm_1", "norm_2"})
_SPECTRAL_BUFFERS = ("weight_u", "weight_v")


def _is_transposed(path) -> bool:
  """The only transposed convs in VITS are the decoder's upsampling layers `ups`."""
  return bool(path) and re.fullmatch(r"ups_\d+", path[-1]) is not None


def _flax_path(key: str):
  """'dec.resblocks.3.convs1.2.weight_g' -> (['dec', 'resblocks_3', 'convs1_2'], 'weight_g')."""
  key = key.replace(".parametrizations.weight.original0", ".weight_g")
  key = key.replace(".parametrizations.weight.original1", ".weight_v")
  parts = key.split(".")
  path = []
  for p in parts[:-1]:
    if p.isdigit() and path:
      path[-1] = f"{path[-1]}_{p}"
    else:
      path.append(p)
  return path, parts[-1]


def _to_ours(path, name: str, value: np.ndarray) -> np.ndarray:
  if name in ("weight", "weight_v", "weight_orig"):
    if value.ndim == 3:
      return value.transpose(2, 0, 1) if _is_transposed(path) else value.transpose(2, 1, 0)
    if value.ndim == 4:
      return value.transpose(2, 3, 1, 0)
    return value
  if name == "weight_g" or name in ("m", "logs"):
    return value.reshape(-1)
  return value


def _to_torch(path, name: str, value: np.ndarray, v_ndim: int) -> np.ndarray:
  if name in ("weight", "weight_v"):
    if value.ndim == 3:
      return value.transpose(1, 2, 0) if _is_transposed(path) else value.transpose(2, 1, 0)
    if value.ndim == 4:
      return value.transpose(3, 2, 0, 1)
    return value
  if name == "weight_g":
    return value.reshape((-1,) + (1,) * (v_ndim - 1))
  if name in ("m", "logs"):
    return value.reshape(-1, 1)
  return value


def _g_axis(path, ndim: int) -> int:
  """The axis of our kernel layout that weight norm keeps (torch dim=0: output channels of
  a conv, input channels of a transposed conv)."""
  return 1 if _is_transposed(path) else ndim - 1


def fold_weight(path, g: np.ndarray, v: np.ndarray) -> np.ndarray:
  """w = g * v / ||v|| (in our layout)."""
  return layers.normalized_weight(v.astype(np.float64), g.astype(np.float64),
                                  _g_axis(path, v.ndim)).astype(v.dtype)


def fold_weight_norm(params: Mapping[str, Any], path=()) -> Dict:
  """Params with every weight-normed conv's (`weight_g`, `weight_v`) replaced by its plain
  `weight` = g * v / ||v||, computed once in float64. Inference never needs g and v apart,
  and the model (`layers._WeightMixin`) uses a folded `weight` where it finds one, so the
  compiled programs skip the norms."""
  out: Dict = {}
  for name, value in params.items():
    if isinstance(value, Mapping):
      if "weight_g" in value and "weight_v" in value:
        rest = {k: v for k, v in value.items() if k not in ("weight_g", "weight_v")}
        out[name] = {**rest, "weight": fold_weight(
            (*path, name), np.asarray(value["weight_g"]), np.asarray(value["weight_v"]))}
      else:
        out[name] = fold_weight_norm(value, (*path, name))
    else:
      out[name] = value
  return out


def unfold_weight(path, w: np.ndarray):
  """(g, v) with v = w and g = ||w||, so that g * v / ||v|| == w exactly."""
  g = layers.weight_norm_scale(w.astype(np.float64), _g_axis(path, w.ndim))
  return g.reshape(-1).astype(w.dtype), w


def torch_to_flax(state_dict: Mapping[str, Any], like: Optional[Any] = None) -> Dict:
  """Official-name state dict -> Flax params pytree (the contents of `variables['params']`).

  Args:
    state_dict: name -> array (numpy or anything `np.asarray` takes), official names.
    like: optional target params pytree (arrays or ShapeDtypeStructs). When given, plain
      and weight-normed convs are converted to the target's form, and missing/unexpected
      names or shape mismatches raise ValueError.

  Returns:
    nested dict of float32 numpy arrays.
  """
  keys = set(state_dict)
  params: Dict = {}
  for key, value in state_dict.items():
    path, name = _flax_path(key)
    if name in _SPECTRAL_BUFFERS and key.rsplit(".", 1)[0] + ".weight_orig" in keys:
      continue
    if name == "num_batches_tracked":
      continue
    value = np.asarray(value)
    if value.dtype.kind == "f":
      value = value.astype(np.float32)
    out = _to_ours(path, name, value)
    node = params
    for p in path:
      node = node.setdefault(p, {})
    node["weight" if name == "weight_orig" else name] = out
  if like is not None:
    params = _match(params, _as_dict(like), ())
  return params


def _as_dict(tree):
  if hasattr(tree, "unfreeze"):
    tree = tree.unfreeze()
  if isinstance(tree, Mapping) and "params" in tree and len(tree) <= 2:
    tree = tree["params"]
  return tree


def _match(ours: Dict, like: Mapping, path) -> Dict:
  """Reconciles `ours` with the target structure `like` (weight norm), checking shapes; one
  ValueError lists the problems of the whole tree."""
  errors: List[str] = []
  out = _match_node(ours, like, path, errors)
  if errors:
    shown = "; ".join(errors[:8]) + (f"; ... ({len(errors)} problems)" if len(errors) > 8
                                     else "")
    raise ValueError(f"checkpoint does not match the model: {shown}")
  return out


def _match_node(ours: Dict, like: Mapping, path, errors: List[str]) -> Dict:
  out = {}
  leafy = {k for k, v in like.items() if not isinstance(v, Mapping)}
  if leafy and {"weight_g", "weight_v"} <= set(like) and "weight" in ours:
    g, v = unfold_weight(path, ours.pop("weight"))
    ours = dict(ours, weight_g=g, weight_v=v)
  elif leafy and "weight" in like and {"weight_g", "weight_v"} <= set(ours):
    ours = dict(ours)
    ours["weight"] = fold_weight(path, ours.pop("weight_g"), ours.pop("weight_v"))
  for k, target in like.items():
    name = "/".join(path + (k,))
    if k not in ours:
      errors.append(f"missing {name}")
      continue
    if isinstance(target, Mapping) != isinstance(ours[k], Mapping):
      what = "a module" if isinstance(target, Mapping) else "an array"
      errors.append(f"{name} is {what} in the model, not in the checkpoint")
    elif isinstance(target, Mapping):
      out[k] = _match_node(ours[k], target, path + (k,), errors)
    else:
      if tuple(ours[k].shape) != tuple(target.shape):
        errors.append(f"shape of {name}: checkpoint {tuple(ours[k].shape)} vs model "
                      f"{tuple(target.shape)}")
      out[k] = ours[k]
  for k in ours:
    if k not in like:
      errors.append(f"unexpected {'/'.join(path + (k,))}")
  return out


def _torch_module_name(part: str) -> str:
  if part in _NOT_LIST_ITEMS:
    return part
  m = re.fullmatch(r"(.+)_(\d+)", part)
  return f"{m.group(1)}.{m.group(2)}" if m else part


def official_name(flax_key) -> str:
  """The official name of a flax param path: ('dec', 'ups_0', 'weight_g') -> 'dec.ups.0.weight_g'."""
  *path, name = flax_key
  return ".".join([_torch_module_name(p) for p in path] + [name])


def flax_to_torch(params: Mapping, fold_weight_norm: bool = False) -> Dict[str, np.ndarray]:
  """Flax params pytree -> official-name state dict (numpy, torch layouts).

  Args:
    params: `variables['params']` (or the variables dict itself).
    fold_weight_norm: write plain `weight` instead of (`weight_g`, `weight_v`), as
      `remove_weight_norm` would (for inference exports).

  Returns:
    dict name -> numpy array.
  """
  params = _as_dict(params)
  out: Dict[str, np.ndarray] = {}

  def visit(node, path):
    leaves = {k: np.asarray(v) for k, v in node.items() if not isinstance(v, Mapping)}
    if fold_weight_norm and {"weight_g", "weight_v"} <= set(leaves):
      leaves["weight"] = fold_weight(path, leaves.pop("weight_g"), leaves.pop("weight_v"))
    v_ndim = leaves["weight_v"].ndim if "weight_v" in leaves else 3
    for name, value in leaves.items():
      out[official_name(path + (name,))] = _to_torch(path, name, value, v_ndim)
    for k, v in node.items():
      if isinstance(v, Mapping):
        visit(v, path + (k,))

  visit(params, ())
  return out
