"""Recipes: YAML loaded into one frozen dataclass per stage; every default and help lives here.

Values from YAML and from `--set section.key=value` are cast the same way to the field's type.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sf_mlx.casting import cast_value, type_name, validate
from sf_mlx.traces import FORMATS


def _f(
    default: Any, help: str, choices: tuple[Any, ...] | None = None, min: float | None = None
) -> Any:
    """A field with its default, help string and optional allowed values / lower bound."""
    meta = {"help": help, "choices": choices, "min": min}
    return field(default=default, metadata=meta)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


class _Section:
    """Base of the per-stage sections: casts and validates every field on construction."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            key = f"{self.SECTION}.{f.name}"
            value = cast_value(key, getattr(self, f.name), hints[f.name])
            validate(key, value, f.metadata)
            object.__setattr__(self, f.name, value)
        self._check()

    def _check(self) -> None:
        """Cross-field checks; sections override."""


@dataclass(frozen=True)
class RunConfig(_Section):
    SECTION: ClassVar[str] = "run"
    name: str = _f("", "run name: the folder under runs/ (empty: the recipe's name)")
    seed: int = _f(0, "master seed; every per-item seed is derived from it")
    seeds: tuple[int, ...] = _f(
        (),
        "a study: the whole recipe once per seed (as run.seed) into <run dir>/seed-K, then "
        "`sf-mlx compare` over them into <run dir>/compare.md; empty: one run with run.seed",
    )
    model: str = _f(
        "builtin:small",
        "base model: a local HF/MLX folder, a Hugging Face id, or builtin:small / builtin:tiny",
    )
    description: str = _f("", "one line saying what this recipe is for")

    def _check(self) -> None:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"run.seeds={list(self.seeds)} repeats a seed")


@dataclass(frozen=True)
class ProblemsConfig(_Section):
    SECTION: ClassVar[str] = "problems"
    task: str = _f("countdown", "training task (a name from sf_mlx.tasks)")
    num_args: int = _f(3, "numbers per training Countdown problem", min=2)
    min_number: int = _f(1, "smallest number in a problem")
    max_number: int = _f(10, "largest number in a problem")
    min_target: int = _f(10, "smallest target")
    max_target: int = _f(50, "largest target")
    require_all: bool = _f(False, "the solution must use every number exactly once")
    n_sft: int = _f(200, "problems sampled for silver traces (SFT data)", min=1)
    n_rl: int = _f(200, "problems for GRPO prompts", min=1)
    n_eval: int = _f(100, "evaluation problems per task variant", min=1)
    n_eval_ood: int = _f(0, "evaluation problems per out-of-domain task (0: n_eval)", min=0)
    eval_num_args: tuple[int, ...] = _f((3, 4, 5, 6), "Countdown sizes evaluated (countdown-N)")
    ood_tasks: tuple[str, ...] = _f(
        ("multiplication", "acronym"),
        "out-of-domain tasks evaluated after training: `name` or `name:key=value:...`",
    )

    def _check(self) -> None:
        from sf_mlx.tasks import parse_task_spec

        for spec in self.ood_tasks:
            parse_task_spec(spec)
        for lo, hi in (("min_number", "max_number"), ("min_target", "max_target")):
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"problems.{lo}={getattr(self, lo)} > {hi}={getattr(self, hi)}")


_VARIANTS = ("original", "plan_and_execute", "alternatively", "rephrase")
_FORMATS = tuple(FORMATS)


@dataclass(frozen=True)
class SampleConfig(_Section):
    SECTION: ClassVar[str] = "sample"
    variants: tuple[str, ...] = _f(
        _VARIANTS, "prompt variants each problem is sampled under", _VARIANTS
    )
    n_samples: int = _f(4, "samples per problem and variant", min=1)
    max_tokens: int = _f(256, "generation limit per sample", min=1)
    temperature: float = _f(0.7, "sampling temperature", min=0.0)
    top_p: float = _f(0.8, "nucleus sampling mass (1.0: off)", min=0.0)
    top_k: int = _f(20, "keep the k most likely tokens (0: off)", min=0)
    repetition_penalty: float = _f(1.1, "penalty on repeated tokens (1.0: off)", min=0.0)
    batch_size: int = _f(32, "prompts generated together", min=1)


@dataclass(frozen=True)
class ReflectConfig(_Section):
    SECTION: ClassVar[str] = "reflect"
    n_reflections: int = _f(2, "reflections generated per sample", min=1)
    max_tokens: int = _f(192, "generation limit per reflection", min=1)
    temperature: float = _f(0.7, "sampling temperature", min=0.0)
    top_p: float = _f(0.8, "nucleus sampling mass (1.0: off)", min=0.0)
    top_k: int = _f(20, "keep the k most likely tokens (0: off)", min=0)
    repetition_penalty: float = _f(1.1, "penalty on repeated tokens (1.0: off)", min=0.0)
    batch_size: int = _f(32, "prompts generated together", min=1)


@dataclass(frozen=True)
class RearrangeConfig(_Section):
    SECTION: ClassVar[str] = "rearrange"
    format: str = _f(
        "*C_full", "silver trace format (the paper's naming; see sf_mlx/traces.py)", _FORMATS
    )
    valid_fraction: float = _f(
        0.05, "fraction of SFT problems whose traces are validation data", min=0.0
    )
    max_pairs: int = _f(5, "most sample+reflection pairs in one trace", min=1)


@dataclass(frozen=True)
class SftConfig(_Section):
    SECTION: ClassVar[str] = "sft"
    method: str = _f("lora", "fine-tuning method", ("lora", "full"))
    rank: int = _f(8, "LoRA rank", min=1)
    scale: float = _f(20.0, "LoRA scale (mlx-lm's alpha/rank)")
    dropout: float = _f(0.0, "LoRA dropout", min=0.0)
    num_layers: int = _f(-1, "layers (from the top) that get LoRA adapters; -1: all", min=-1)
    learning_rate: float = _f(1e-4, "peak learning rate", min=0.0)
    tag_learning_rate: float = _f(
        0.0,
        "peak learning rate of the embedding and output rows of the trace tags that are tokens "
        "of their own (<think>, <sample>, ...: a base whose tokenizer has them never trained "
        "those rows); every other weight keeps learning_rate; 0: no separate rate; full SFT only",
        min=0.0,
    )
    iters: int = _f(200, "optimizer steps (when epochs is 0)", min=1)
    epochs: float = _f(
        0.0,
        "passes over the training rows; > 0 sizes the run in epochs (steps = epochs x batches, "
        "rounded up) whatever the number of traces, and iters is ignored",
        min=0.0,
    )
    batch_size: int = _f(4, "traces per step", min=1)
    warmup: int = _f(10, "linear warmup steps", min=0)
    max_seq_len: int = _f(1024, "longest training sequence in tokens (longer are cut)", min=1)
    grad_checkpoint: bool = _f(
        False, "recompute each layer's activations in the backward pass (memory, not the result)"
    )
    eval_every: int = _f(50, "steps between validation losses", min=1)
    save_every: int = _f(100, "steps between adapter checkpoints", min=1)

    def _check(self) -> None:
        if self.tag_learning_rate > 0 and self.method != "full":
            raise ValueError(
                "sft.tag_learning_rate needs sft.method=full (LoRA leaves the embeddings frozen)"
            )


@dataclass(frozen=True)
class GrpoConfig(_Section):
    SECTION: ClassVar[str] = "grpo"
    steps: int = _f(20, "GRPO steps (one batch of prompts each)", min=1)
    prompts_per_step: int = _f(8, "problems per step", min=1)
    group_size: int = _f(8, "completions per problem (G)", min=1)
    max_tokens: int = _f(256, "generation limit per completion", min=1)
    learning_rate: float = _f(1e-5, "learning rate", min=0.0)
    epsilon_low: float = _f(0.2, "lower clip range of the probability ratio", min=0.0)
    epsilon_high: float = _f(0.28, "upper clip range of the ratio (clip-higher)", min=0.0)
    beta: float = _f(0.0, "KL coefficient to the starting policy (0: no KL, no reference)", min=0.0)
    mu: int = _f(1, "update passes over each batch of rollouts", min=1)
    minibatch_prompts: int = _f(4, "prompts (groups) per gradient update", min=1)
    variant: str = _f(
        "grpo",
        "advantage and loss normaliser: grpo (group mean/std; mean over each completion, then "
        "over completions), dapo (group mean/std; mean over all tokens of the mini-batch), "
        "dr_grpo (group mean only; token sum over completions x max_tokens)",
        ("grpo", "dapo", "dr_grpo"),
    )
    truncated_reward: float = _f(0.0, "reward of a completion cut at max_tokens")
    overlong_filter: bool = _f(
        False, "leave completions cut at max_tokens out of the loss (their reward still counts)"
    )
    microbatch_tokens: int = _f(
        4096,
        "padded tokens (rows x width) per forward/backward; a mini-batch's gradient is "
        "accumulated over length-sorted micro-batches of this size (memory, not the result)",
        min=1,
    )
    temperature: float = _f(1.0, "rollout sampling temperature (> 0)", min=0.0)
    rollout_batch: int = _f(
        0,
        "most completions decoded at once (the rest wait in the decoder's queue); bounds the KV "
        "cache to about rollout_batch x (prompt + max_tokens) tokens; 0: a step's B x G at once",
        min=0,
    )
    grad_checkpoint: bool = _f(
        False, "recompute each layer's activations in the backward pass (memory, not the result)"
    )
    rollout_split: int = _f(
        1,
        "a step's groups are sampled in this many seeded parts of whole groups: the units the "
        "ranks of a distributed run share (a multiple of the number of ranks keeps them all "
        "busy); the result does not depend on how many ranks there are; 1: sampled together",
        min=1,
    )
    checkpoint_every: int = _f(5, "steps between resumable checkpoints", min=1)
    method: str = _f(
        "lora",
        "what GRPO trains: lora (an adapter; the KL reference is the adapter switched off) or "
        "full (every weight, the paper's setting; with beta > 0 one copy of the starting "
        "weights is kept as the reference, with beta = 0 none)",
        ("lora", "full"),
    )
    lora_rank: int = _f(8, "LoRA rank of the GRPO adapter", min=1)
    lora_scale: float = _f(20.0, "LoRA scale of the GRPO adapter")

    def _check(self) -> None:
        if self.temperature <= 0:
            raise ValueError(
                f"grpo.temperature={self.temperature}; must be > 0 (the policy's log-probs "
                "divide by it, and greedy rollouts give a group identical completions)"
            )
        if self.rollout_split > self.prompts_per_step:
            raise ValueError(
                f"grpo.rollout_split={self.rollout_split} > prompts_per_step="
                f"{self.prompts_per_step} (each part holds whole groups)"
            )
        if self.minibatch_prompts > self.prompts_per_step:
            raise ValueError(
                f"grpo.minibatch_prompts={self.minibatch_prompts} > "
                f"prompts_per_step={self.prompts_per_step}"
            )


_ARMS = ("base", "sft", "star", "sft_grpo", "rl_only", "star_grpo")


@dataclass(frozen=True)
class EvaluateConfig(_Section):
    SECTION: ClassVar[str] = "evaluate"
    samples_per_question: int = _f(4, "generations per question (k of pass@k)", min=1)
    max_tokens: int = _f(512, "generation limit per answer", min=1)
    temperature: float = _f(0.7, "sampling temperature", min=0.0)
    top_p: float = _f(0.8, "nucleus sampling mass (1.0: off)", min=0.0)
    top_k: int = _f(20, "keep the k most likely tokens (0: off)", min=0)
    budget: int = _f(
        256, "budget forcing: extra tokens allowed after the first stop (0: off)", min=0
    )
    batch_size: int = _f(32, "answers generated together", min=1)
    arms: tuple[str, ...] = _f(
        _ARMS,
        "models compared: base, sft (SkillFactory SFT), star (STaR SFT), and after GRPO sft_grpo, "
        "rl_only, star_grpo",
        _ARMS,
    )


@dataclass(frozen=True)
class Recipe:
    """A whole recipe: one section per pipeline stage."""

    run: RunConfig = field(default_factory=RunConfig)
    problems: ProblemsConfig = field(default_factory=ProblemsConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    reflect: ReflectConfig = field(default_factory=ReflectConfig)
    rearrange: RearrangeConfig = field(default_factory=RearrangeConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    grpo: GrpoConfig = field(default_factory=GrpoConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


SECTIONS: dict[str, type[_Section]] = {
    f.name: f.default_factory  # type: ignore[misc]
    for f in dataclasses.fields(Recipe)
}


# --- recipes -------------------------------------------------------------------------------------


def _nearest(word: str, options: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f"; did you mean {match[0]}?" if match else f"; expected one of {', '.join(options)}"


def _split_key(key: str) -> tuple[str, str]:
    section, _, name = key.partition(".")
    if section not in SECTIONS:
        raise ValueError(f"unknown section {section!r} in {key!r}{_nearest(section, SECTIONS)}")
    names = [f.name for f in dataclasses.fields(SECTIONS[section])]  # type: ignore[arg-type]
    if name not in names:
        dotted = [f"{section}.{n}" for n in names]
        raise ValueError(f"unknown key {key}{_nearest(key, dotted)}")
    return section, name


def _build(base: Recipe, changes: dict[str, dict[str, Any]]) -> Recipe:
    sections = {}
    for section, kv in changes.items():
        sections[section] = dataclasses.replace(getattr(base, section), **kv)
    return dataclasses.replace(base, **sections)


def _parse_override(item: str) -> tuple[str, str, str]:
    key, sep, value = item.partition("=")
    if not sep:
        raise ValueError(f"override {item!r} is not section.key=value")
    section, name = _split_key(key.strip())
    return section, name, value.strip()


def apply_overrides(recipe: Recipe, overrides: typing.Iterable[str]) -> Recipe:
    """Return `recipe` with `section.key=value` overrides applied and cast to the field types."""
    changes: dict[str, dict[str, Any]] = {}
    for item in overrides:
        section, name, value = _parse_override(item)
        changes.setdefault(section, {})[name] = value
    return _build(recipe, changes)


# Keys renamed since recipes were first written: an old recipe or run directory still loads.
RENAMED = {("grpo", "advantage"): "variant"}


def recipe_from_dict(d: dict[str, Any] | None) -> Recipe:
    """A Recipe from nested {section: {key: value}}; missing keys take their defaults."""
    changes: dict[str, dict[str, Any]] = {}
    for section, kv in (d or {}).items():
        if section not in SECTIONS:
            raise ValueError(f"unknown section {section!r}{_nearest(str(section), SECTIONS)}")
        if kv is None:
            continue
        if not isinstance(kv, dict):
            raise ValueError(f"section {section!r} must be a mapping of key: value, got {kv!r}")
        for old_name, value in kv.items():
            name = RENAMED.get((section, old_name), old_name)
            _split_key(f"{section}.{name}")
            changes.setdefault(section, {})[name] = value
    return _build(Recipe(), changes)


def recipe_to_dict(recipe: Recipe) -> dict[str, dict[str, Any]]:
    """Nested plain dict (tuples as lists), every key filled in."""
    out: dict[str, dict[str, Any]] = {}
    for section in SECTIONS:
        obj = getattr(recipe, section)
        out[section] = {
            f.name: list(v) if isinstance(v := getattr(obj, f.name), tuple) else v
            for f in dataclasses.fields(obj)
        }
    return out


class FieldDoc(typing.NamedTuple):
    key: str  # dotted, e.g. "sft.iters"
    type: str
    default: Any
    help: str


def describe_fields() -> list[FieldDoc]:
    """(dotted key, type, default, help) for every recipe field, in recipe order."""
    rows = []
    for section, cls in SECTIONS.items():
        hints = _hints(cls)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            help_text = f.metadata["help"]
            if f.metadata.get("choices"):
                help_text += f" (one of: {', '.join(map(str, f.metadata['choices']))})"
            rows.append(
                FieldDoc(f"{section}.{f.name}", type_name(hints[f.name]), f.default, help_text)
            )
    return rows
