"""VITS training: train state, the jitted D+G step, the loop, checkpoints and logs.

    from vits_jax.training import train_and_evaluate
    train_and_evaluate(config, workdir)
"""

from vits_jax.training.checkpoint import SaveError
from vits_jax.training.loop import NonFiniteError, train_and_evaluate

__all__ = ["NonFiniteError", "SaveError", "train_and_evaluate"]
