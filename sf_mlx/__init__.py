"""sf-mlx: SkillFactory (self-distilled silver traces, SFT, GRPO) on one machine with MLX."""

__version__ = "0.1.0"
