"""Reading voices made elsewhere. `source.load_source(name_or_path)` is the one entry point:
any source (Piper `.onnx`, official `G_*.pth`, HF folder, training workdir, 'joe') -> config,
checked params, frontend. Format readers: `piper` (ONNX graphs), `official_pth` (PyTorch zip
and legacy checkpoints, read safely; also the torch-free writer), `hf` (safetensors), and
`torch_names` (official names and layouts <-> flax params)."""

# The most parameters (float32 values) a voice file may hold, counted over its named tensors
# (1 GiB; the published VITS voices hold 15-40 M). One stored tensor named 5,000 times in a
# few megabytes of file would otherwise be copied 5,000 times.
MAX_PARAMETERS = 1 << 28


def check_parameter_count(total: int, where) -> None:
  if total > MAX_PARAMETERS:
    raise ValueError(f"{where}: its tensors hold {total:,} values, more than a voice has "
                     f"(at most {MAX_PARAMETERS:,})")
