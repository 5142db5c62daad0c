"""sptbench: a reproducibility benchmark suite for parameter-efficient tuning (SPT, SPT-DARTS and baselines)."""

__version__ = "0.1.0"
