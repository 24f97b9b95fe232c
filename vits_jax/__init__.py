"""vits_jax: VITS text-to-speech in JAX/Flax.

    import vits_jax
    voice = vits_jax.load_voice()          # the bundled Piper voice 'joe'
    audio = voice.synthesize("Hello.")     # float32 at voice.sample_rate
"""

__version__ = "0.1.0"

from vits_jax.voice import Voice, load_voice  # noqa: E402  (numpy-only import; jax loads lazily)

__all__ = ["Voice", "load_voice", "__version__"]
