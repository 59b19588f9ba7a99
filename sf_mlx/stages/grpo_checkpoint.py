"""GRPO checkpoints: the trainable weights, the optimizer state and the step, written to a temp
folder then swapped in, so a checkpoint folder is always whole; always between whole steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx


def save_checkpoint(path, model, optimizer, step: int) -> None:
    """Adapter weights, optimizer state and step, written to a temp folder then renamed."""
    from mlx.utils import tree_flatten

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    mx.save_safetensors(
        str(tmp / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters()))
    )
    mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer.state)))
    (tmp / "state.json").write_text(json.dumps({"step": step}))
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path, model, optimizer) -> int:
    from mlx.utils import tree_unflatten

    path = Path(path)
    try:
        model.load_weights(str(path / "adapters.safetensors"), strict=False)
        optimizer.state = tree_unflatten(list(mx.load(str(path / "optimizer.safetensors")).items()))
        mx.eval(model.parameters(), optimizer.state)
        return int(json.loads((path / "state.json").read_text())["step"])
    except (RuntimeError, ValueError, OSError, KeyError, TypeError) as e:
        raise ValueError(
            f"{path}: unreadable GRPO checkpoint ({' '.join(str(e).split())}); delete that "
            "folder to run the stage from its first step"
        ) from None
