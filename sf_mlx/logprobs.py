"""Log-probabilities of chosen tokens with bounded memory for large vocabularies.

A causal LM's logits for (rows, T) tokens are rows x T x V floats: with Qwen's V = 151,936,
8 x 256 tokens are 1.2 GB in float32, and the backward pass of a log-softmax keeps several such
blocks alive. When the logits would exceed `budget_bytes`, the model is split into its body
(the transformer up to the last hidden state) and its head (the vocabulary projection and any
logit transform), and the head runs over chunks of positions under gradient checkpointing
(`mlx.nn.utils.checkpoint`): only one chunk's logits exist at a time, forward and backward, and
only the chosen token's log-prob and the log-partition leave the chunk. A trainable head (full
fine-tuning) gets a custom backward that walks the chunks in order and adds each chunk's head
gradient to one running sum. MLX evaluates lazily and may schedule independent chunks side by
side; each chunk's input carries a zero-valued dependency on the previous chunk's results, so
they run one after another and each chunk's buffers are freed before the next.

Below the budget (the built-in base's 640-token vocabulary) the plain path runs, so results do
not depend on whether a model is large. Architectures are split by name (`split_head`); an
unknown one falls back to the plain path, which is correct, only not memory-bounded.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn

# logits above this many bytes (float32) are computed in chunks of positions of this size; a
# chunk's forward and backward hold about 5 such blocks (logits, scaled, exp, cotangents)
LOGITS_BUDGET = 64 * 2**20

# mlx-lm architectures whose logits are `lm_head(model(x))`, or the tied embedding's
# `as_linear` when `args.tie_word_embeddings`
PLAIN_HEAD = frozenset(
    {"qwen2", "qwen3", "llama", "mistral", "qwen2_moe", "qwen3_moe", "phi3", "olmo2", "smollm3"}
)


def split_head(model: nn.Module) -> tuple[Callable, nn.Module, Callable] | None:
    """(body, head module, head) with `model(x) == head(body(x))`, or None when the
    architecture is not known to be split this way."""
    kind = getattr(model, "model_type", None)
    if kind == "nanochat":
        from mlx_lm.models.nanochat import softcap

        return model.transformer, model.lm_head, lambda h: softcap(model.lm_head(h))
    if kind in PLAIN_HEAD and hasattr(model, "model"):
        if getattr(model.args, "tie_word_embeddings", False):
            emb = model.model.embed_tokens
            return model.model, emb, emb.as_linear
        if hasattr(model, "lm_head"):
            return model.model, model.lm_head, model.lm_head
    return None


def vocab_size(model: nn.Module) -> int | None:
    args = getattr(model, "args", None)
    return getattr(args, "vocab_size", None)


def _picked(logits: mx.array, targets: mx.array, temperature: float) -> mx.array:
    logits = logits.astype(mx.float32) / temperature  # (N, T, V)
    logz = mx.logsumexp(logits, axis=-1)  # (N, T)
    return mx.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] - logz


def chunked(model: nn.Module, rows: int, positions: int, budget_bytes: int = LOGITS_BUDGET) -> bool:
    """Whether `token_logprobs` computes these logits chunk by chunk."""
    vocab = vocab_size(model)
    too_big = vocab is not None and rows * positions * vocab * 4 > budget_bytes
    return too_big and split_head(model) is not None


def chunk_positions(rows: int, vocab: int, budget_bytes: int) -> int:
    """Positions per chunk so that rows x positions x vocab float32 logits fit the budget."""
    return max(1, budget_bytes // max(1, rows * vocab * 4))


def token_logprobs(
    model: nn.Module,
    tokens: mx.array,
    temperature: float = 1.0,
    start: int = 0,
    budget_bytes: int = LOGITS_BUDGET,
) -> mx.array:
    """tokens (N, T) -> (N, T-1-start): column t is the log-prob of tokens[:, start + t + 1]
    at `temperature`. No (N, T, V) log-softmax is materialised; above `budget_bytes` of
    logits not even the logits are."""
    inputs, targets = tokens[:, :-1], tokens[:, start + 1 :]
    n, t_out = targets.shape
    if not chunked(model, n, t_out, budget_bytes):
        return _picked(model(inputs)[:, start:], targets, temperature)
    vocab = vocab_size(model)
    body, head_module, head = split_head(model)
    hidden = body(inputs)[:, start:]  # (N, T', H)
    step = chunk_positions(n, vocab, budget_bytes)
    if head_module.trainable_parameters():
        return _trainable_head(head_module, head, hidden, targets, temperature, step)
    parts = []
    for i in range(0, t_out, step):
        y = targets[:, i : i + step]  # indices: captured, not differentiated

        def piece(h, y=y):
            return _picked(head(h), y, temperature)

        h = hidden[:, i : i + step]
        if parts:  # a data dependency on the previous chunk, so chunks run one after another
            h = h + 0.0 * parts[-1][:, :1, None].astype(h.dtype)
        parts.append(nn.utils.checkpoint(head_module, piece)(h))
    return mx.concatenate(parts, axis=1)


def _after(x: mx.array, *previous: mx.array | None) -> mx.array:
    """`x`, with a data dependency on each of `previous` (zeros added), so MLX's lazy graph
    computes it after them and can free what they needed first."""
    for p in previous:
        if p is not None:
            x = x + 0.0 * p.reshape(-1)[:1].astype(x.dtype).reshape((1,) * x.ndim)
    return x


def _trainable_head(head_module, head, hidden, targets, temperature: float, step: int):
    """The chunked pass when the head trains: a custom backward walks the chunks one after
    another, recomputing each chunk's logits and adding its head gradient to one running sum,
    so one vocabulary-sized gradient exists at a time, not one per chunk."""
    from mlx.utils import tree_flatten, tree_unflatten

    bounds = [(i, min(i + step, hidden.shape[1])) for i in range(0, hidden.shape[1], step)]

    def chunk(h, params, y):
        head_module.update(params)
        return _picked(head(h), y, temperature)

    @mx.custom_function
    def pass_(h_all, params):
        parts, last = [], None
        for a, b in bounds:
            last = chunk(_after(h_all[:, a:b], last), params, targets[:, a:b])
            parts.append(last)
        return mx.concatenate(parts, axis=1)

    @pass_.vjp
    def pass_vjp(primals, cotangent, output):
        h_all, params = primals
        cot = cotangent[0] if isinstance(cotangent, (list, tuple)) else cotangent
        names = [k for k, _ in tree_flatten(params)]
        leaves = [v for _, v in tree_flatten(params)]

        def flat_chunk(h, *ws, y):
            return chunk(h, tree_unflatten(list(zip(names, ws, strict=True))), y)

        d_hidden, d_leaves = [], [mx.zeros_like(w) for w in leaves]
        for a, b in bounds:
            # after the previous chunk's hidden AND head gradients: both read its logits'
            # cotangent, which is freed only once both exist
            h = _after(h_all[:, a:b], d_leaves[0], d_hidden[-1] if d_hidden else None)
            _, grads = mx.vjp(
                lambda h, *ws, y=targets[:, a:b]: flat_chunk(h, *ws, y=y),
                [h, *leaves],
                [cot[:, a:b]],
            )
            d_leaves = [acc + g for acc, g in zip(d_leaves, grads[1:], strict=True)]
            d_hidden.append(grads[0])
        head_module.update(params)
        d_params = tree_unflatten(list(zip(names, d_leaves, strict=True)))
        return mx.concatenate(d_hidden, axis=1), d_params

    return pass_(hidden, head_module.trainable_parameters())
