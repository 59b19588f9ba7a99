"""Model folders the training stages write: a trained model as an HF folder that `mlx_lm.load`
reads, and a LoRA adapter fused into its base."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import mlx.nn as nn


def _source_dir(model_path: str) -> Path:
    """The local folder of a model path, Hub id (from the cache) or `builtin:NAME`."""
    from mlx_lm.utils import hf_repo_to_path

    from sf_mlx.model import resolve_model_path

    path = resolve_model_path(model_path)
    return Path(path) if Path(path).exists() else hf_repo_to_path(path)


def save_model_folder(
    model: nn.Module,
    tokenizer: Any,
    model_path: str,
    out_dir: str | os.PathLike[str],
    dequantized: bool = False,
    float32: bool = False,
) -> Path:
    """Write `model` as an HF folder (weights, config, tokenizer) that `mlx_lm.load` reads;
    `dequantized`: the model was quantized and is now float, so its config drops quantization;
    `float32`: a half-precision model now holds float32 weights, and its config says so.

    Written to a temp folder then swapped in, so `out_dir` is always a complete model.
    """
    from mlx_lm.utils import load_config, save

    src, out = _source_dir(model_path), Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    config = load_config(src)
    if dequantized:
        config.pop("quantization", None)
        config.pop("quantization_config", None)
    if float32:
        config["torch_dtype"] = "float32"
    save(tmp, str(src), model, tokenizer, config, donate_model=False)
    old = out.with_name(out.name + ".old")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def fuse(
    model_path: str, adapter_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]
) -> Path:
    """Merge a LoRA adapter into its base and write a plain HF folder (no adapter needed).

    A quantized base is merged into float weights: quantizing base + adapter again would round
    the adapter's small change away (or distort it), and the model trained next would start from
    something else than what SFT produced."""
    from mlx.utils import tree_unflatten
    from mlx_lm.utils import dequantize_model

    from sf_mlx import model as model_io
    from sf_mlx.stages.base_check import is_quantized

    model, tokenizer = model_io.load(model_path, adapter_path=adapter_path)
    quantized = is_quantized(model)
    # as mlx_lm/fuse.py: every LoRA layer is replaced by its merged linear
    fused = [
        (name, m.fuse(dequantize=quantized))
        for name, m in model.named_modules()
        if hasattr(m, "fuse")
    ]
    if not fused:
        raise ValueError(f"{adapter_path}: no LoRA layers to fuse")
    model.update_modules(tree_unflatten(fused))
    if quantized:
        model = dequantize_model(model)
    return save_model_folder(model, tokenizer, model_path, out_dir, dequantized=quantized)
