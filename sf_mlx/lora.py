"""LoRA helpers shared by SFT and GRPO: attach mlx-lm's LoRA layers, count and save parameters.

Adapters are saved in mlx-lm's format (`adapters.safetensors` + `adapter_config.json`), so
`mlx_lm.load(model_path, adapter_path=folder)` reads them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from sf_mlx.rundir import write_json_atomic

ADAPTER_LEAVES = ("lora_a", "lora_b")  # what mlx-lm's load_adapters accepts for LoRA


def attach_lora(
    model: nn.Module, rank: int, scale: float, dropout: float, num_layers: int = -1
) -> dict[str, Any]:
    """Freeze `model`, put LoRA on every linear of its top `num_layers` blocks (-1: all).

    Returns the adapter config (mlx-lm's `adapter_config.json` keys) to pass to `save_adapters`.
    """
    from mlx_lm.tuner.utils import linear_to_lora_layers

    n = len(model.layers)
    layers = n if num_layers == -1 else num_layers
    if not 1 <= layers <= n:
        raise ValueError(f"num_layers={num_layers} but the model has {n} layers (-1: all)")
    params = {"rank": rank, "scale": float(scale), "dropout": float(dropout)}
    model.freeze()
    linear_to_lora_layers(model, layers, params)  # new LoRA leaves are the only trainable ones
    return {"fine_tune_type": "lora", "num_layers": layers, "lora_parameters": params}


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; total includes any adapters."""
    trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    total = sum(v.size for _, v in tree_flatten(model.parameters()))
    return trainable, total


def adapter_weights(model: nn.Module) -> dict[str, mx.array]:
    """The LoRA leaves of `model` by dotted name (whatever is frozen or not)."""
    return {
        k: v for k, v in tree_flatten(model.parameters()) if k.rsplit(".", 1)[-1] in ADAPTER_LEAVES
    }


def save_adapters(model: nn.Module, out_dir: str | os.PathLike[str], config: dict) -> Path:
    """Write `adapter_config.json` then `adapters.safetensors` (atomically) into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = adapter_weights(model)
    if not weights:
        raise ValueError("model has no LoRA layers to save; call attach_lora first")
    write_json_atomic(out / "adapter_config.json", config)
    tmp = out / ".adapters.tmp.safetensors"
    mx.save_safetensors(str(tmp), weights)
    os.replace(tmp, out / "adapters.safetensors")
    return out
