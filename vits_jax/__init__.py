"""vits_jax: VITS text-to-speech in JAX/Flax."""

__version__ = "0.1.0"
