"""Chosen-token log-probs for large vocabularies: chunked under gradient checkpointing, equal to
the plain computation, with a peak that no longer grows with rows x tokens x vocabulary."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

from sf_mlx.logprobs import chunked, split_head, token_logprobs


def _model(kind: str, vocab: int, tie: bool = False):
    from mlx_lm.models import llama, nanochat, qwen2

    shape = dict(hidden_size=32, num_hidden_layers=2, intermediate_size=64, vocab_size=vocab)
    heads = dict(num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6)
    mx.random.seed(0)
    if kind == "nanochat":
        args = {**shape, "num_attention_heads": 4, "num_key_value_heads": 4}
        m = nanochat.Model(nanochat.ModelArgs.from_dict({"model_type": "nanochat", **args}))
    elif kind == "qwen2":
        m = qwen2.Model(qwen2.ModelArgs("qwen2", tie_word_embeddings=tie, **shape, **heads))
    else:
        m = llama.Model(llama.ModelArgs("llama", tie_word_embeddings=tie, **shape, **heads))
    mx.eval(m.parameters())
    return m


@pytest.mark.parametrize(
    "kind, tie", [("nanochat", False), ("qwen2", True), ("qwen2", False), ("llama", False)]
)
def test_chunked_logprobs_and_gradients_equal_the_plain_ones(kind, tie):
    m = _model(kind, vocab=3000, tie=tie)
    assert split_head(m) is not None
    tokens = mx.random.randint(0, 3000, (3, 41), key=mx.random.key(1))
    budget = 3 * 7 * 3000 * 4  # 7 positions per chunk: 6 chunks for 37 positions
    assert chunked(m, 3, 37, budget) and not chunked(m, 3, 37, 10**12)

    def loss(budget):
        def f(model, t):
            return token_logprobs(model, t, temperature=0.7, start=3, budget_bytes=budget).sum()

        return nn.value_and_grad(m, f)(m, tokens)

    plain = token_logprobs(m, tokens, 0.7, 3, budget_bytes=10**12)
    small = token_logprobs(m, tokens, 0.7, 3, budget_bytes=budget)
    assert plain.shape == small.shape == (3, 37)
    assert mx.allclose(plain, small, atol=1e-5).item()
    (v1, g1), (v2, g2) = loss(10**12), loss(budget)
    assert abs(v1.item() - v2.item()) < 1e-3
    g1, g2 = dict(tree_flatten(g1)), dict(tree_flatten(g2))
    assert g1.keys() == g2.keys()
    for k in g1:
        assert mx.allclose(g1[k], g2[k], atol=1e-5).item(), k


def test_an_unknown_architecture_takes_the_plain_path():
    class Wrapped(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.args = inner.args

        def __call__(self, x):
            return self.inner(x)

    m = Wrapped(_model("qwen2", vocab=500))
    assert split_head(m) is None and not chunked(m, 8, 1000, 1)
    tokens = mx.random.randint(0, 500, (2, 9), key=mx.random.key(2))
    assert token_logprobs(m, tokens, budget_bytes=1).shape == (2, 8)


@pytest.mark.parametrize("head", ["frozen", "trainable"])
def test_the_peak_of_a_large_vocabulary_pass_follows_the_budget_not_the_logits(head):
    """V = 151,936 (Qwen's), 4 x 128 tokens, the head frozen (as under LoRA) or trainable (full
    fine-tuning): the plain pass holds several (rows, T, V) float32 blocks; the chunked one a
    few chunks' worth, and one vocabulary-sized head gradient at a time."""
    m = _model("qwen2", vocab=151_936, tie=True)
    if head == "frozen":
        m.freeze()
        m.model.layers[0].unfreeze()
    tokens = mx.random.randint(0, 151_936, (4, 129), key=mx.random.key(3))
    logits_bytes = 4 * 128 * 151_936 * 4  # 311 MB

    def peak(budget):
        def f(model, t):
            return token_logprobs(model, t, budget_bytes=budget).sum()

        mx.eval(m.parameters())
        mx.reset_peak_memory()
        before = mx.get_active_memory()
        value, grads = nn.value_and_grad(m, f)(m, tokens)
        mx.eval(value, grads)
        return mx.get_peak_memory() - before

    plain, small = peak(10**12), peak(16 * 2**20)
    assert plain > 2 * logits_bytes
    assert small < plain / 5
