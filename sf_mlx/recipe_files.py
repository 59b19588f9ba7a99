"""Recipe files: where the shipped recipes live, reading one (with `extends`) and writing one.

A recipe file is YAML of {section: {key: value}}; `sf_mlx.config` turns that into a `Recipe`.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any

import yaml

from sf_mlx.config import SECTIONS, Recipe, apply_overrides, recipe_from_dict, recipe_to_dict
from sf_mlx.rundir import write_text_atomic


def _recipes_dir() -> Path:
    """The recipes: the source tree's top-level recipes/ (a checkout or an editable install),
    else the installed package data `sf_mlx.recipes` (a wheel: `pip install .`, pipx)."""
    source = Path(__file__).resolve().parents[1] / "recipes"
    if source.is_dir():
        return source
    import importlib.util

    spec = importlib.util.find_spec("sf_mlx.recipes")
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else source


RECIPES_DIR = _recipes_dir()


def available_recipes(recipes_dir: str | os.PathLike[str] | None = None) -> list[str]:
    root = Path(recipes_dir) if recipes_dir is not None else RECIPES_DIR
    return sorted(p.stem for p in root.glob("*.yaml")) if root.is_dir() else []


def resolve_recipe_path(
    path_or_name: str | os.PathLike[str], recipes_dir: str | os.PathLike[str] | None = None
) -> Path:
    """A file path as given, or a bare name as `<recipes_dir>/<name>.yaml`."""
    text = os.fspath(path_or_name)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or os.sep in text or "/" in text or path.is_file():
        if not path.is_file():
            raise ValueError(f"no recipe file {text}")
        return path
    root = Path(recipes_dir) if recipes_dir is not None else RECIPES_DIR
    path = root / f"{text}.yaml"
    if not path.is_file():
        names = available_recipes(root)
        raise ValueError(
            f"no recipe named {text!r} in {root}; available: {', '.join(names) or 'none'}"
        )
    return path


def _recipe_data(path: Path, recipes_dir, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe file's {section: {key: value}}, merged over the recipe it `extends` (if any)."""
    if path.resolve() in chain:
        names = " -> ".join(p.stem for p in (*chain, path.resolve()))
        raise ValueError(f"{path}: recipes extend each other in a cycle ({names})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML ({' '.join(str(e).split())})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ValueError(f"{path}: extends must name one recipe, got {parent!r}")
    try:
        base = _recipe_data(
            resolve_recipe_path(parent, recipes_dir or path.parent),
            recipes_dir,
            (*chain, path.resolve()),
        )
    except ValueError as e:
        raise ValueError(f"{path}: extends {parent!r}: {e}") from e
    merged = {k: dict(v or {}) if isinstance(v, dict) else v for k, v in base.items()}
    if isinstance(merged.get("run"), dict):
        merged["run"].pop("name", None)  # a run's default folder is named after its own recipe
    for section, kv in data.items():
        if isinstance(kv, dict) and isinstance(merged.get(section), dict):
            merged[section].update(kv)
        else:
            merged[section] = kv
    return merged


def load_recipe(
    path_or_name: str | os.PathLike[str],
    overrides: typing.Iterable[str] = (),
    recipes_dir: str | os.PathLike[str] | None = None,
) -> Recipe:
    """Load a recipe file (or `recipes/<name>.yaml`), then apply `--set` style overrides.

    A recipe may start with `extends: NAME`: it is that recipe with this file's keys changed."""
    path = resolve_recipe_path(path_or_name, recipes_dir)
    data = _recipe_data(path, recipes_dir)
    try:
        recipe = recipe_from_dict(data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    return apply_overrides(recipe, overrides)


def dump_recipe(recipe: Recipe, path: str | os.PathLike[str], header: str = "") -> None:
    """Write the fully resolved recipe as YAML, a help comment above each key."""
    lines = ["# sf-mlx resolved recipe: every key filled in; load it with load_recipe()."]
    lines += [f"# {h}" for h in header.splitlines()]
    for section, kv in recipe_to_dict(recipe).items():
        lines.append(f"\n{section}:")
        fields = dataclasses.fields(SECTIONS[section])  # type: ignore[arg-type]
        helps = {f.name: f.metadata["help"] for f in fields}
        for name, value in kv.items():
            flow = None if isinstance(value, list) else False  # lists inline, scalars plain
            text = yaml.safe_dump({name: value}, default_flow_style=flow, width=10_000)
            lines.append(f"  # {helps[name]}")
            lines += [f"  {line}" for line in text.rstrip("\n").splitlines()]
    write_text_atomic(path, "\n".join(lines) + "\n")
