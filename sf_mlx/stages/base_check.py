"""The `base` stage: load the recipe's base model once and record what it is.

Fails early (one clear line) when the model cannot be used, before any sampling starts: it cannot
be loaded, its tokenizer is missing or has no chat template (every sf-mlx prompt is a chat turn),
or the recipe asks to fine-tune all weights of a quantized model (no gradient reaches quantized
weights).
"""

from __future__ import annotations

from sf_mlx.config import Recipe
from sf_mlx.rundir import RunDir

STAGE = "base"


def is_quantized(model) -> bool:
    """True when any layer holds quantized weights (mlx-lm's 4- or 8-bit models)."""
    import mlx.nn as nn

    kinds = tuple(k for k in (nn.QuantizedLinear, getattr(nn, "QuantizedEmbedding", None)) if k)
    return any(isinstance(m, kinds) for _, m in model.named_modules())


def check_usable(name: str, model, tokenizer, sft_method: str, grpo_method: str = "lora") -> None:
    """ModelLoadError, in one line, for a model the pipeline cannot use."""
    from sf_mlx import model as model_io

    vocab = len(tokenizer.get_vocab()) if hasattr(tokenizer, "get_vocab") else 0
    if vocab < 2:
        raise model_io.ModelLoadError(
            f"{name}: its tokenizer has {vocab} token(s); the folder needs its tokenizer files "
            "(tokenizer.json, or tokenizer_config.json with the vocabulary files)"
        )
    if not getattr(tokenizer, "chat_template", None):
        raise model_io.ModelLoadError(
            f"{name}: the tokenizer has no chat template, and every sf-mlx prompt is a chat turn; "
            "pass an instruct model, or add a `chat_template` to its tokenizer_config.json"
        )
    try:
        model_io.chat_prompt(tokenizer, "What is 2 + 3?")
    except Exception as e:  # noqa: BLE001 - a template can fail in many ways; one line says which
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise model_io.ModelLoadError(f"{name}: its chat template fails: {first}") from e
    for section, method in (("sft", sft_method), ("grpo", grpo_method)):
        if method == "full" and is_quantized(model):
            raise model_io.ModelLoadError(
                f"{name} is quantized, and full fine-tuning cannot train quantized weights; "
                f"use {section}.method=lora, or a float (unquantized) model"
            )


def run_base_check(run: RunDir, recipe: Recipe) -> dict:
    from mlx.utils import tree_flatten

    from sf_mlx import model as model_io

    path = model_io.resolve_model_path(recipe.run.model)
    model, tokenizer = model_io.load(recipe.run.model)
    check_usable(recipe.run.model, model, tokenizer, recipe.sft.method, recipe.grpo.method)
    info = {
        "model": recipe.run.model,
        "path": path,
        "params": int(sum(v.size for _, v in tree_flatten(model.parameters()))),
        "vocab": len(tokenizer.get_vocab()),
        "quantized": is_quantized(model),
    }
    run.mark_done(STAGE, info)
    return info
