"""sf-mlx: SkillFactory (self-distilled silver traces, SFT, GRPO) on one machine with MLX."""

from sf_mlx import blas as _blas

__version__ = "0.1.0"

# Bind MLX to an optimized BLAS before anything imports mlx.core (Linux CPU; see sf_mlx/blas.py).
_blas.apply_blas_fix()
