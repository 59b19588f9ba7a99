"""The `base` stage: load the recipe's base model once and record what it is.

Fails early (one clear line) when the model cannot be loaded, before any sampling starts.
"""

from __future__ import annotations

from sf_mlx.config import Recipe
from sf_mlx.rundir import RunDir

STAGE = "base"


def run_base_check(run: RunDir, recipe: Recipe) -> dict:
    from mlx.utils import tree_flatten

    from sf_mlx import model as model_io

    path = model_io.resolve_model_path(recipe.run.model)
    model, tokenizer = model_io.load(recipe.run.model)
    info = {
        "model": recipe.run.model,
        "path": path,
        "params": int(sum(v.size for _, v in tree_flatten(model.parameters()))),
        "vocab": len(tokenizer.get_vocab()) if hasattr(tokenizer, "get_vocab") else None,
    }
    run.mark_done(STAGE, info)
    return info
