"""Memory of a run, phase by phase, and the settings under which a recipe fits a machine.

A phase's peak is the model's shapes times coefficients that `sf-mlx bench memory` measures on
stand-ins with MLX's own peak accounting (`Coefficients`): activations of a forward and backward
per token, layer and hidden / intermediate unit, and per row, layer, head and T^2 (attention);
bytes per parameter of a full-parameter update (float32 weights, gradients, AdamW state) and
between updates; bytes per decoding row and vocabulary entry. The KV cache needs no
measurement: 2 x layers x KV heads x head dim x bytes per token.

`checkpointed_layers` is gradient checkpointing for the transformer layers (mlx-lm's
`grad_checkpoint`, undone on exit): each layer keeps its input and recomputes the rest in the
backward pass (`sft.grad_checkpoint`, `grpo.grad_checkpoint`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace

from sf_mlx.logprobs import LOGITS_BUDGET

HEAD_BLOCKS = 5  # logits-sized blocks a log-prob head holds at its peak (`sf_mlx/logprobs.py`)
GB = 1e9


@contextlib.contextmanager
def checkpointed_layers(model, on: bool = True) -> Iterator[None]:
    """Within the block, every layer of `model`'s type recomputes its activations in the
    backward pass instead of keeping them (activation memory: one layer's, plus each layer's
    input). mlx-lm patches the layer class; the class's own `__call__` is put back on exit."""
    layers = getattr(model, "layers", None)
    if not on or not layers:
        yield
        return
    from mlx_lm.tuner.trainer import grad_checkpoint

    cls = type(layers[0])
    original = cls.__call__
    grad_checkpoint(layers[0])
    try:
        yield
    finally:
        cls.__call__ = original


@dataclass(frozen=True)
class Shapes:
    """What memory depends on in a decoder-only transformer (from its config.json)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, c: dict) -> Shapes:
        try:
            heads = c["num_attention_heads"]
            return cls(
                layers=c["num_hidden_layers"],
                hidden=c["hidden_size"],
                intermediate=c["intermediate_size"],
                heads=heads,
                kv_heads=c.get("num_key_value_heads") or heads,
                head_dim=c.get("head_dim") or c["hidden_size"] // heads,
                vocab=c["vocab_size"],
                tied=bool(c.get("tie_word_embeddings", False)),
            )
        except KeyError as e:
            raise ValueError(
                f"config.json has no {e.args[0]!r}: not a decoder it can size"
            ) from None

    @property
    def params(self) -> int:
        """Weights of a Llama / Qwen-style block stack (biases and norms aside, under 0.1%)."""
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        layer = 2 * h * q + 2 * h * kv + 3 * h * self.intermediate
        return self.layers * layer + self.vocab * h * (1 if self.tied else 2)

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


# Qwen2.5-1.5B-Instruct's config.json (the paper's model, countdown-paper's default).
QWEN25_1_5B = Shapes(28, 1536, 8960, 12, 2, 128, 151_936, True)


@dataclass(frozen=True)
class Coefficients:
    """Measured by `sf-mlx bench memory --plan` (float32; MLX's peak above what was held).

    A forward and backward keeps, per layer, `saved_*` bytes for the backward pass, and needs
    `work_*` bytes once, for the layer whose backward runs; per token and hidden / intermediate
    unit, and per row, head and T^2 (attention). Checkpointed layers keep `checkpointed` bytes
    per token and hidden unit each, and one layer's saved and working memory."""

    saved_hidden: float
    saved_intermediate: float
    saved_attention: float
    work_hidden: float
    work_intermediate: float
    work_attention: float
    checkpointed: float
    full_update: float  # bytes per parameter at the peak of a full-parameter update
    full_resident: float  # bytes per parameter between full-parameter updates
    decode_vocab: float  # bytes per decoding row and vocabulary entry, above the KV cache


def activation_terms(s: Shapes, rows: int, length: int) -> tuple[int, int, int]:
    """What activations scale with: tokens x hidden, tokens x intermediate, rows x heads x T^2."""
    tokens = rows * length
    return tokens * s.hidden, tokens * s.intermediate, rows * s.heads * length * length


def activations(s: Shapes, c: Coefficients, rows: int, length: int, checkpoint: bool) -> float:
    """Bytes of one forward and backward over `rows` x `length` tokens, the head included."""
    th, ti, ta = activation_terms(s, rows, length)
    saved = c.saved_hidden * th + c.saved_intermediate * ti + c.saved_attention * ta
    work = c.work_hidden * th + c.work_intermediate * ti + c.work_attention * ta
    head = HEAD_BLOCKS * min(rows * length * s.vocab * 4, LOGITS_BUDGET)
    kept = s.layers * c.checkpointed * th + saved if checkpoint else s.layers * saved
    return kept + work + head


def decoding(s: Shapes, c: Coefficients, rows: int, length: int, dtype_bytes: int) -> float:
    """Bytes of decoding `rows` sequences of up to `length` tokens: KV cache and logits."""
    return rows * length * s.kv_bytes_per_token(dtype_bytes) + c.decode_vocab * rows * s.vocab


@dataclass(frozen=True)
class Phase:
    stage: str
    gb: float
    what: str


def phases(recipe, s: Shapes, c: Coefficients, prompt_tokens: int = 256, dtype_bytes: int = 2):
    """The peak of each memory phase of `recipe` on a model of shapes `s` whose weights are
    `dtype_bytes` each (2: bfloat16). Full fine-tuning trains float32 master weights, so a fully
    trained model also decodes in float32."""
    p = s.params
    weights = p * dtype_bytes
    sa, rf, sft, g, ev = recipe.sample, recipe.reflect, recipe.sft, recipe.grpo, recipe.evaluate
    out = [
        Phase(
            "sample",
            weights + decoding(s, c, sa.batch_size, prompt_tokens + sa.max_tokens, dtype_bytes),
            f"{sa.batch_size} sequences x {prompt_tokens + sa.max_tokens} tokens",
        ),
    ]
    reflect_len = prompt_tokens + sa.max_tokens + rf.max_tokens
    out.append(
        Phase(
            "reflect",
            weights + decoding(s, c, rf.batch_size, reflect_len, dtype_bytes),
            f"{rf.batch_size} sequences x {reflect_len} tokens",
        )
    )
    full_sft = sft.method == "full"
    static = c.full_update * p if full_sft else weights
    act = activations(s, c, sft.batch_size, sft.max_seq_len, sft.grad_checkpoint)
    out.append(
        Phase(
            "sft",
            static + act,
            f"{sft.method}, {sft.batch_size} x {sft.max_seq_len} tokens"
            + (", checkpointed layers" if sft.grad_checkpoint else ""),
        )
    )
    full = g.method == "full"
    length = prompt_tokens + g.max_tokens
    batch = g.rollout_batch or g.prompts_per_step * g.group_size
    resident = c.full_resident * p if full else weights
    if full and g.beta:  # the KL reference: one float32 copy of the starting weights
        resident += 4 * p
    out.append(
        Phase(
            "grpo rollouts",
            resident + decoding(s, c, batch, length, 4 if full else dtype_bytes),
            f"{batch} sequences x {length} tokens",
        )
    )
    rows = max(1, g.microbatch_tokens // length)
    static = c.full_update * p + (4 * p if g.beta else 0) if full else weights
    out.append(
        Phase(
            "grpo update",
            static + activations(s, c, rows, length, g.grad_checkpoint),
            f"{g.method}, micro-batches of {rows} x {length} tokens"
            + (", checkpointed layers" if g.grad_checkpoint else ""),
        )
    )
    trained_bytes = 4 if (full_sft or full) else dtype_bytes
    eval_len = prompt_tokens + ev.max_tokens + ev.budget
    out.append(
        Phase(
            "evaluate",
            p * trained_bytes + decoding(s, c, ev.batch_size, eval_len, trained_bytes),
            f"{ev.batch_size} sequences x {eval_len} tokens",
        )
    )
    return [replace(ph, gb=ph.gb / GB) for ph in out]


def fit(recipe, s: Shapes, c: Coefficients, memory_gb: float, usable: float = 0.75, **kw):
    """The first settings, from the recipe's own towards cheaper ones, whose every phase stays
    under `usable` x `memory_gb` (a Mac's GPU may use about three quarters of its memory):
    checkpointed layers, then fewer sequences decoded at once (halving), then LoRA instead of
    full fine-tuning. Returns (overrides as `--set` strings, phases), or (None, the phases of
    the cheapest settings tried) when nothing fits."""
    from sf_mlx.config import apply_overrides

    g = recipe.grpo
    decoders = {
        "sample.batch_size": recipe.sample.batch_size,
        "reflect.batch_size": recipe.reflect.batch_size,
        "grpo.rollout_batch": g.rollout_batch or g.prompts_per_step * g.group_size,
        "evaluate.batch_size": recipe.evaluate.batch_size,
    }
    checkpoint = ["sft.grad_checkpoint=true", "grpo.grad_checkpoint=true"]
    ladder = [[], checkpoint]
    batch = max(decoders.values())
    while batch > 1:
        batch //= 2
        ladder.append(checkpoint + [f"{k}={min(batch, v)}" for k, v in decoders.items()])
    ladder += [step + ["sft.method=lora", "grpo.method=lora"] for step in ladder[1:]]
    tried: list[Phase] = []
    for overrides in ladder:
        tried = phases(apply_overrides(recipe, overrides), s, c, **kw)
        if max(ph.gb for ph in tried) <= usable * memory_gb:
            return [o for o in overrides if _changes(recipe, o)], tried
    return None, tried


def _changes(recipe, override: str) -> bool:
    key, value = override.split("=", 1)
    section, name = key.split(".")
    return str(getattr(getattr(recipe, section), name)).lower() != value.lower()
