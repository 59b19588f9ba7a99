"""Model I/O, the one module that talks to mlx-lm: load (+ adapters), chat templating, generation.

Generation goes through mlx-lm's `BatchGenerator` (batched KV cache) and returns plain records:
token ids, text, the sampled tokens' log-probabilities and the finish reason per sequence.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sf_mlx import blas

# The built-in models: a name usable wherever a model path or Hub id is accepted.
BUILTIN_DIR = Path(__file__).parent / "data"
BUILTIN = {"builtin:small": BUILTIN_DIR / "base-small"}


class ModelLoadError(ValueError):
    """A model path or id that cannot be loaded; the message is one line saying what was tried."""


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings; the paper's defaults (temperature 0.7, top_p 0.8, top_k 20, rep 1.1)."""

    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    repetition_penalty: float = 1.1


@dataclass(frozen=True)
class Generation:
    prompt_tokens: int
    tokens: list[int]
    text: str
    # log-probability of each sampled token: log-softmax of the logits after logits processors
    # (repetition penalty) and temperature, before top-p / top-k (temperature 0: before it)
    logprobs: list[float]
    finish_reason: str  # "stop" (EOS) or "length"
    # the EOS token that ended the completion (a tokenizer may have several) and its log-prob;
    # None when the completion was cut at max_tokens
    stop_token: int | None = None
    stop_logprob: float | None = None
    # mean entropy (nats) of the sampled-from distributions over every decoded position, the
    # stop token's included: what the policy's entropy is, measured where it was sampled
    entropy: float = 0.0


def resolve_model_path(model: str) -> str:
    """Map `builtin:NAME` to its shipped folder; anything else is passed to mlx-lm unchanged."""
    if model in BUILTIN:
        path = BUILTIN[model]
        if not (path / "config.json").exists():
            raise ModelLoadError(
                f"{model}: the shipped folder {path} is missing; rebuild it with "
                "`sf-mlx base build --size small --out " + str(path) + "`"
            )
        return str(path)
    if model.startswith("builtin:"):
        raise ModelLoadError(f"unknown built-in model {model!r}; known: {sorted(BUILTIN)}")
    return model


def load(model: str, adapter_path: str | Path | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) from a local folder, a Hub id or `builtin:small`; float32 on a CPU."""
    blas.apply_blas_fix()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import mlx.core as mx
    from mlx_lm import load as mlx_load

    path = resolve_model_path(model)
    local = Path(path).expanduser()
    if not local.exists() and (path.startswith(("/", ".", "~")) or path.count("/") > 1):
        raise ModelLoadError(
            f"model folder {path} does not exist; pass an existing local HF-format folder "
            "(config.json + *.safetensors + tokenizer) or a Hugging Face id like Qwen/Qwen2.5-0.5B"
        )
    head = Path(path.split("/")[0]).expanduser()
    if not local.exists() and "/" in path and head.is_dir():
        # `models/qwen` with a `models/` folder here is a mistyped path, not a Hub id
        raise ModelLoadError(
            f"model folder {path} does not exist (the folder {head} does, in {Path.cwd()}); "
            "pass an existing local HF-format folder or a Hugging Face id"
        )
    if local.exists() and not (local / "config.json").exists():
        raise ModelLoadError(f"{path}: folder has no config.json; pass an HF-format model folder")
    try:
        m, tok = mlx_load(str(local) if local.exists() else path, adapter_path=adapter_path)
    except Exception as e:  # noqa: BLE001 - mlx-lm/huggingface_hub raise many types; re-raised as one line
        kind = "local folder" if local.exists() else "Hugging Face id (needs network or cache)"
        first = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        raise ModelLoadError(
            f"could not load model {model!r} as a {kind}: {first}. "
            "Offline? Pass a local HF-format folder (config.json + *.safetensors + tokenizer)."
        ) from e
    if mx.default_device() == mx.cpu:
        # half precision runs on MLX's own slow kernels on CPU: float32 uses the BLAS
        m.set_dtype(mx.float32)
    return m, tok


def chat_prompt(tokenizer: Any, user: str) -> list[int]:
    """Token ids of a one-turn chat with the generation prompt appended."""
    return list(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=True
        )
    )


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    params: SamplingParams,
    seed: int,
    batch_size: int = 32,
    on_finished: Callable[[int], None] | None = None,
) -> list[Generation]:
    """Sample one completion per prompt (token ids), in order; seeded. `on_finished(n)` is
    called whenever more completions have finished, with how many have so far."""
    import mlx.core as mx
    from mlx_lm.generate import BatchGenerator
    from mlx_lm.sample_utils import make_logits_processors, make_sampler

    mx.random.seed(seed)
    sampler = make_sampler(params.temperature, top_p=params.top_p, top_k=params.top_k)
    # a penalty of 1.0 changes nothing, but mlx-lm would still run a per-row Python processor
    # on every decode step
    penalty = params.repetition_penalty if params.repetition_penalty != 1.0 else None
    processors = make_logits_processors(repetition_penalty=penalty)
    gen = BatchGenerator(
        model,
        max_tokens=params.max_tokens,
        stop_tokens=[[t] for t in tokenizer.eos_token_ids],
        sampler=sampler,
        logits_processors=processors,
        completion_batch_size=batch_size,
        prefill_batch_size=min(batch_size, 8),
    )
    threads = os.environ.get("SF_MLX_DECODE_THREADS")
    if not threads:
        return _generate(gen, tokenizer, prompts, params, on_finished)
    with blas.blas_threads(int(threads)):
        return _generate(gen, tokenizer, prompts, params, on_finished)


LOGPROB_FLUSH = 16  # decode steps between logprob transfers


def _generate(
    gen, tokenizer, prompts: list[list[int]], params: SamplingParams, on_finished=None
) -> list[Generation]:
    import mlx.core as mx

    try:
        uids = gen.insert(prompts, [params.max_tokens] * len(prompts))
        tokens: dict[int, list[int]] = {u: [] for u in uids}
        logprobs: dict[int, list[float]] = {u: [] for u in uids}
        entropy: dict[int, float] = dict.fromkeys(uids, 0.0)
        stop: dict[int, tuple[int, float]] = {}
        finish: dict[int, str] = {}
        # The sampled tokens' logprobs (and the entropies) are gathered lazily and moved to
        # Python every LOGPROB_FLUSH steps in one transfer: a per-step transfer stalls decoding.
        pending: list[tuple[list[tuple[int, int, str | None]], Any, Any]] = []

        def flush() -> None:
            mx.eval([(lp, ent) for _, lp, ent in pending])
            for step, lp, ent in pending:
                for (uid, token, reason), value, h in zip(
                    step, lp.tolist(), ent.tolist(), strict=True
                ):
                    entropy[uid] += h
                    if reason == "stop":  # EOS is not in the text
                        stop[uid] = (token, value)
                    else:
                        tokens[uid].append(token)
                        logprobs[uid].append(value)
            pending.clear()

        while responses := gen.next_generated():
            rows = mx.stack([r.logprobs for r in responses])  # (B, V)
            if params.temperature > 0 and params.temperature != 1.0:
                # the distribution actually sampled from: log-softmax(logits / T)
                rows = rows / params.temperature
                rows = rows - mx.logsumexp(rows, axis=-1, keepdims=True)
            picked = mx.array([r.token for r in responses])[:, None]  # (B, 1)
            ent = -(mx.exp(rows) * rows).sum(axis=-1)  # (B,)
            step = [(r.uid, r.token, r.finish_reason) for r in responses]
            pending.append((step, mx.take_along_axis(rows, picked, axis=-1)[:, 0], ent))
            ended = len(finish)
            for r in responses:
                if r.finish_reason is not None:
                    finish[r.uid] = r.finish_reason
            if on_finished and len(finish) > ended:
                on_finished(len(finish))
            if len(pending) >= LOGPROB_FLUSH:
                flush()
        flush()
    finally:
        gen.close()
    out = []
    for p, u in zip(prompts, uids, strict=True):
        stop_token, stop_logprob = stop.get(u, (None, None))
        decoded = len(tokens[u]) + (stop_token is not None)
        out.append(
            Generation(
                prompt_tokens=len(p),
                tokens=tokens[u],
                text=tokenizer.decode(tokens[u]),
                logprobs=logprobs[u],
                finish_reason=finish.get(u, "length"),
                stop_token=stop_token,
                stop_logprob=stop_logprob,
                entropy=entropy[u] / max(decoded, 1),
            )
        )
    return out
