"""Reading voices made elsewhere. `source.load_source(name_or_path)` is the one entry point:
any source (Piper `.onnx`, official `G_*.pth`, HF folder, training workdir, 'joe') -> config,
checked params, frontend. Format readers: `piper` (ONNX graphs), `official_pth` (PyTorch zip
and legacy checkpoints, read safely; also the torch-free writer), `hf` (safetensors), and
`torch_names` (official names and layouts <-> flax params)."""
