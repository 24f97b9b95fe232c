"""vits_jax: VITS text-to-speech in JAX/Flax.

    import vits_jax
    voice = vits_jax.load_voice()          # the bundled Piper voice 'joe'
    audio = voice.synthesize("Hello.")     # float32 at voice.sample_rate

Rooms: `voice.py` (the `Voice` API), `inference.py` (windowed synthesis from the model's two
inference halves), `models/` (Flax modules, official names; `build_synthesizer` the one
constructor), `text/` (frontends), `audio.py`, `mas.py`, `losses.py`, `convert/` (every voice
source -> config, params, frontend: `convert.source.load_source`), `export/` (Piper, HF,
official writers), `data/` (prepared shards -> batches), `training/` (state, step, loop,
checkpoints, evaluation), `xla_cache.py`.
"""

__version__ = "0.1.0"

from vits_jax.voice import Voice, load_voice  # noqa: E402  (numpy-only import; jax loads lazily)

__all__ = ["Voice", "load_voice", "__version__"]
