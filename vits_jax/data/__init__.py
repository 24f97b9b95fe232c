"""Reading prepared shards: records, length buckets, and the grain input pipelines."""

from vits_jax.data.loader import (Loader, PreparedSplit, collate, make_eval_loader,
                                  make_train_loader)

__all__ = ["Loader", "PreparedSplit", "collate", "make_eval_loader", "make_train_loader"]
