"""sptbench: a reproducibility benchmark suite for parameter-efficient tuning (SPT, SPT-DARTS and baselines).

The Python API (`build_model`, `fit`, `save`, `load`; sptbench/api.py) and `Trainer` (sptbench/trainer.py) are
imported on first use, so that `import sptbench` stays light (no torch)."""

__version__ = "0.1.0"
__all__ = ["Trainer", "__version__", "build_model", "fit", "load", "save"]

_API = ("build_model", "fit", "save", "load")


def __getattr__(name: str):
    if name in _API:
        from sptbench import api

        return getattr(api, name)
    if name == "Trainer":  # transformers.Trainer with saves in sptbench's format (sptbench/trainer.py)
        from sptbench.trainer import Trainer

        return Trainer
    raise AttributeError(f"module 'sptbench' has no attribute {name!r}")
