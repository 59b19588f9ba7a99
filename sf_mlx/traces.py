"""Silver-trace assembly (PAPER.md stage 5): pure functions, stdlib only, no MLX.

A *pair* is one graded sample plus one reflection whose verdict agrees with the grade. A format
chooses which pairs a trace shows and in what order; `build_trace` turns a chosen sequence into
segments; `render_trace` turns segments into the exact text the SFT stage trains on.

Formats (`FORMATS`, the one place a format name is looked up; `max_pairs` plays the paper's 5):
- `*C_full`: for each N in 1..min(max_pairs, #pairs), one trace: the last pair a random correct
  pair, the N-1 earlier ones drawn from all other pairs, in random order (the released script).
- `alg1`: the paper's Algorithm 1. Correct pairs are shuffled and consumed; while any remain:
  n+ ~ U{1..max_pairs} (capped by what remains), n- ~ U{0..n+-1} (capped by #wrong and by
  max_pairs - n+ so a trace never exceeds max_pairs); the last consumed correct pair ends the
  trace, the other n+-1 correct and n- wrong pairs (drawn afresh per trace) are shuffled before it.
- `*C`: one trace per question with min(max_pairs, #pairs) pairs, ending on a random correct
  pair, earlier pairs random (the released `*C` without its N-in-the-tag naming).
- `0C`: one trace holding a single random correct pair.
- `*C*IC`: one trace with min(max_pairs, #pairs) >= 2 pairs ending on a random wrong pair, with at
  least one correct pair among the shuffled earlier ones; a BACKTRACK glue phrase follows the
  wrong pair and the final answer is the latest correct attempt's answer.
- `*CC`: one trace ending on two random correct pairs, then a CONFIRM glue phrase.
- `no_reflection`: as `*C_full`, without reflect segments; glue is GENERIC only (no verdict
  was shown, so the glue may not claim one), as in the released script.
- `no_order` (alias `random`, the paper's name): for each N, N random pairs in random order; the
  last may be wrong, and the final answer is then the last attempt's answer.
Every format returns [] for a question with no correct pair (so ablations keep the same
questions as `*C_full`); `*C*IC` also needs a wrong pair and `*CC` two correct pairs.

Segments of a trace, in order: per pair a `sample` (source_id=sample_id, correct=grade) and a
`reflect` (source_id=reflection_id); a `glue` after every pair but the last (correct = the grade
of the pair it follows); for `*C*IC` / `*CC` one more glue (BACKTRACK / CONFIRM) after the last
pair; then the ENDING phrase as a glue segment, which `render_trace` places after `</think>`; and
last an `answer` segment (text = the final answer without tags, source_id = the sample it comes
from, correct = that sample's grade). Every glue records the grade of the last pair before it.

Deviations from the released script: the shuffle works (`random.sample` order / `shuffle` on the
earlier pairs), the phrase pools are our own with no fused entries, no format crashes when a
question lacks wrong (or correct) pairs, N never exceeds the pairs available, each sample is shown
with one fixed reflection (see `make_pairs`) instead of a fresh draw per use, and `*C*IC` keeps
its backtrack phrase inside `<think>` and re-states only the earlier answer (the released script
repeats the whole earlier attempt after `</think>`), and `*CC` keeps its confirm phrase inside
`<think>` (the released script writes it after `</think>`). README: "Where sf-mlx departs from
the released code".
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sf_mlx.records import Reflection, Sample, Segment, Trace
from sf_mlx.tasks.base import extract_answer, unknown_name

# --- phrase pools (our own wording; one sentence or clause group per entry) -----------------------

GENERIC: tuple[str, ...] = (
    "Let me check this once more.",
    "Before I settle on anything, I will work through it again.",
    "I want to be sure, so I will solve it a second time.",
    "Let me look at the problem from a fresh angle.",
    "It is worth trying another route to the answer.",
    "I will try the problem again to make certain.",
    "Let me redo the calculation from the start.",
    "One more attempt will tell me more.",
    "Let me approach this a different way.",
    "I should test this with another attempt.",
    "Rather than stop here, I will take another pass.",
    "A second look could catch something I missed.",
)
AFTER_CORRECT: tuple[str, ...] = (
    "That attempt checks out, but I will confirm it with another one.",
    "The answer above looks right; let me make sure by solving it again.",
    "My check agrees with that answer, though one more attempt will not hurt.",
    "That seems correct, but I would like a second confirmation.",
    "The last attempt holds up; I will verify it independently.",
    "So far so good, but let me reach the answer another way.",
    "That result passed my check, yet I want to see it again.",
    "I think that answer is right, and I will try once more to be confident.",
    "The reasoning above works; let me confirm it with a fresh attempt.",
    "That answer matches my check, but confirming it costs little.",
    "Everything in that attempt adds up, but I will double-check it.",
    "That looks correct to me; another attempt will make me more certain.",
)
AFTER_INCORRECT: tuple[str, ...] = (
    "That attempt does not work, so I will try again.",
    "My check found a problem with that answer; let me start over.",
    "That answer is wrong, so I need a different approach.",
    "The last attempt fails the check; I will rework it.",
    "Something went wrong there, so let me try another way.",
    "That does not give the right result, so I will attempt it again.",
    "I made a mistake in that attempt; let me fix it with a new one.",
    "That answer does not hold up, so I will rethink the problem.",
    "The check shows an error, so a new attempt is needed.",
    "That was not right; let me take another shot at it.",
    "Since that attempt is incorrect, I will try a new line of reasoning.",
    "My previous answer is wrong, so I will solve the problem again.",
)
ENDING: tuple[str, ...] = (
    "The final answer is:",
    "So the answer is:",
    "Therefore, my final answer is:",
    "After checking my work, the answer is:",
    "Putting it all together, the answer is:",
    "My verified answer is:",
    "In summary, the answer is:",
    "Having checked it, I conclude:",
    "The answer I am confident in is:",
    "So, to conclude, the answer is:",
    "That settles it; the final answer is:",
    "Thus the solution is:",
)
BACKTRACK: tuple[str, ...] = (
    "This last attempt is wrong, but an earlier attempt was correct, so I will go back to it.",
    "The latest answer fails, yet I already found a correct one before; I will return to it.",
    "That attempt is incorrect, but my earlier correct answer still stands.",
    "This one does not work, so I will fall back on the earlier answer that passed the check.",
    "I got it wrong this time, but a previous attempt got it right; I will use that one.",
    "The newest attempt is mistaken, so I will revisit the earlier attempt that was verified.",
    "This answer is not right, but I solved the problem correctly earlier, so I will use that.",
    "My last try fails the check; the correct answer came from an earlier attempt.",
    "Since this attempt is wrong and an earlier one was verified, I will go back to that one.",
    "That did not work, but I already have a verified answer from before.",
    "This attempt is off; I will rely on the earlier attempt that checked out.",
    "The final attempt is incorrect, so I will backtrack to my earlier correct answer.",
)
CONFIRM: tuple[str, ...] = (
    "I have now found a correct answer more than once, so I am confident in it.",
    "Two separate attempts both check out, so I will give the final answer.",
    "This answer has been verified several times, so I am ready to commit to it.",
    "The answer held up under repeated checks.",
    "I have confirmed a correct answer more than once, so there is no need to go further.",
    "Several checks agree, so I trust this answer.",
    "Having verified it repeatedly, I am sure of this answer.",
    "Both of my last attempts reach a verified answer, so I will stop here.",
    "The answer is confirmed by more than one check.",
    "I keep arriving at a verified answer, so I will finalize it.",
    "After checking it multiple times, I am confident this is right.",
    "Repeated checks confirm this answer, so I will commit to it.",
)
POOLS: dict[str, tuple[str, ...]] = {
    "generic": GENERIC,
    "after_correct": AFTER_CORRECT,
    "after_incorrect": AFTER_INCORRECT,
    "ending": ENDING,
    "backtrack": BACKTRACK,
    "confirm": CONFIRM,
}


def glue_pool(correct: bool, reflections: bool = True) -> tuple[str, ...]:
    """The phrases a glue after a pair of grade `correct` is drawn from (GENERIC only without
    reflections: no verdict was shown, so the glue may not claim one)."""
    if not reflections:
        return GENERIC
    return (AFTER_CORRECT if correct else AFTER_INCORRECT) + GENERIC


# --- pairs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One sample shown in a trace together with one of its reflections."""

    sample: Sample
    reflection: Reflection

    def __post_init__(self) -> None:
        if self.reflection.sample_id != self.sample.sample_id:
            raise ValueError(
                f"reflection {self.reflection.reflection_id!r} belongs to sample "
                f"{self.reflection.sample_id!r}, not {self.sample.sample_id!r}"
            )


def make_pairs(
    samples: Iterable[Sample], reflections: Iterable[Reflection], seed: int | str
) -> dict[str, list[Pair]]:
    """Pairs per problem_id: each sample with ONE of its agreeing reflections.

    The reflection is drawn with `random.Random(f"{seed}/{sample_id}/reflection")`, so it is fixed
    per sample (a trace never shows one attempt twice). Samples without an agreeing reflection are
    dropped; problems keep their samples' input order.
    """
    agreeing: dict[str, list[Reflection]] = {}
    for r in reflections:
        if r.agrees:
            agreeing.setdefault(r.sample_id, []).append(r)
    out: dict[str, list[Pair]] = {}
    for s in samples:
        refl = agreeing.get(s.sample_id)
        if not refl:
            continue
        rng = random.Random(f"{seed}/{s.sample_id}/reflection")
        out.setdefault(s.problem_id, []).append(Pair(s, rng.choice(refl)))
    return out


def _correct(pairs: Sequence[Pair]) -> list[Pair]:
    return [p for p in pairs if p.sample.correct]


def _wrong(pairs: Sequence[Pair]) -> list[Pair]:
    return [p for p in pairs if not p.sample.correct]


def _others(pairs: Sequence[Pair], *exclude: Pair) -> list[Pair]:
    ids = {p.sample.sample_id for p in exclude}
    return [p for p in pairs if p.sample.sample_id not in ids]


def _draw(rng: random.Random, pool: Sequence[Pair], k: int) -> list[Pair]:
    # random.sample returns its k picks in random order: this is the (working) shuffle.
    return rng.sample(list(pool), k)


# --- formats: each picks the pair sequences of its traces -----------------------------------------

Select = Callable[[Sequence[Pair], random.Random, int], list[list[Pair]]]


def _end_on_correct(pairs: Sequence[Pair], rng: random.Random, n: int) -> list[Pair]:
    """n pairs: a random correct one last, n-1 random others before it in random order."""
    last = rng.choice(_correct(pairs))
    return _draw(rng, _others(pairs, last), n - 1) + [last]


def _select_c_full(pairs: Sequence[Pair], rng: random.Random, max_pairs: int) -> list[list[Pair]]:
    if not _correct(pairs):
        return []
    return [_end_on_correct(pairs, rng, n) for n in range(1, min(max_pairs, len(pairs)) + 1)]


def _select_alg1(pairs: Sequence[Pair], rng: random.Random, max_pairs: int) -> list[list[Pair]]:
    correct, wrong = _correct(pairs), _wrong(pairs)
    remaining = _draw(rng, correct, len(correct))  # consumed front to back
    out = []
    while remaining:
        n_pos = min(rng.randint(1, max_pairs), len(remaining))
        n_neg = min(rng.randint(0, n_pos - 1), len(wrong), max_pairs - n_pos)
        chosen, remaining = remaining[:n_pos], remaining[n_pos:]
        earlier = chosen[:-1] + _draw(rng, wrong, n_neg)
        rng.shuffle(earlier)
        out.append(earlier + [chosen[-1]])
    return out


def _select_c(pairs: Sequence[Pair], rng: random.Random, max_pairs: int) -> list[list[Pair]]:
    return [_end_on_correct(pairs, rng, min(max_pairs, len(pairs)))] if _correct(pairs) else []


def _select_0c(pairs: Sequence[Pair], rng: random.Random, max_pairs: int) -> list[list[Pair]]:
    return [_end_on_correct(pairs, rng, 1)] if _correct(pairs) else []


def _select_backtrack(
    pairs: Sequence[Pair], rng: random.Random, max_pairs: int
) -> list[list[Pair]]:
    correct, wrong = _correct(pairs), _wrong(pairs)
    if not correct or not wrong:
        return []
    last, keep = rng.choice(wrong), rng.choice(correct)
    earlier = [keep] + _draw(rng, _others(pairs, last, keep), min(max_pairs, len(pairs)) - 2)
    rng.shuffle(earlier)
    return [earlier + [last]]


def _select_cc(pairs: Sequence[Pair], rng: random.Random, max_pairs: int) -> list[list[Pair]]:
    correct = _correct(pairs)
    if len(correct) < 2:
        return []
    final_two = _draw(rng, correct, 2)
    return [_draw(rng, _others(pairs, *final_two), min(max_pairs, len(pairs)) - 2) + final_two]


def _select_no_order(pairs: Sequence[Pair], rng: random.Random, max_pairs: int) -> list[list[Pair]]:
    if not _correct(pairs):
        return []  # same questions as the other formats
    return [_draw(rng, pairs, n) for n in range(1, min(max_pairs, len(pairs)) + 1)]


def _last(seq: Sequence[Pair]) -> Pair:
    return seq[-1]


def _last_correct(seq: Sequence[Pair]) -> Pair:
    return next(p for p in reversed(seq) if p.sample.correct)


@dataclass(frozen=True)
class Format:
    """One rearrangement format: how it picks pairs and how its traces close."""

    select: Select
    reflections: bool = True  # show reflect segments
    closing: tuple[str, ...] = ()  # pool of the extra glue after the last pair (none if empty)
    answer_from: Callable[[Sequence[Pair]], Pair] = _last  # whose answer is the final answer
    min_pairs: int = 1  # smallest max_pairs the format can work with


FORMATS: dict[str, Format] = {
    "*C_full": Format(_select_c_full),
    "alg1": Format(_select_alg1),
    "*C": Format(_select_c),
    "0C": Format(_select_0c),
    "*C*IC": Format(_select_backtrack, closing=BACKTRACK, answer_from=_last_correct, min_pairs=2),
    "*CC": Format(_select_cc, closing=CONFIRM, min_pairs=2),
    "no_reflection": Format(_select_c_full, reflections=False),
    "no_order": Format(_select_no_order),
    "random": Format(_select_no_order),  # the paper's name for no_order
}


def get_format(name: str) -> Format:
    """The format called `name`; ValueError naming the nearest valid one otherwise."""
    if name in FORMATS:
        return FORMATS[name]
    raise unknown_name("trace format", name, FORMATS)


# --- assembly and rendering -----------------------------------------------------------------------


def answer_of(sample: Sample) -> str:
    """The answer a trace re-states for `sample`: the graded extraction (else re-extracted)."""
    if sample.extracted is not None:
        return sample.extracted
    return extract_answer(sample.response) or ""


def build_trace(
    problem_id: str,
    question: str,
    pairs: Sequence[Pair],
    fmt: str,
    rng: random.Random,
    index: int = 0,
) -> Trace:
    """Segments for one already-chosen pair sequence under format `fmt` (glue drawn from `rng`)."""
    spec = get_format(fmt)
    if not pairs:
        raise ValueError(f"trace {problem_id}/{fmt}/{index}: no pairs")
    segments: list[Segment] = []
    for i, p in enumerate(pairs):
        s = p.sample
        segments.append(Segment("sample", s.response.strip(), s.sample_id, s.correct))
        if spec.reflections:
            segments.append(
                Segment("reflect", p.reflection.text.strip(), p.reflection.reflection_id)
            )
        if i < len(pairs) - 1:
            glue = rng.choice(glue_pool(s.correct, spec.reflections))
            segments.append(Segment("glue", glue, None, s.correct))
    last_grade = pairs[-1].sample.correct
    if spec.closing:
        segments.append(Segment("glue", rng.choice(spec.closing), None, last_grade))
    segments.append(Segment("glue", rng.choice(ENDING), None, last_grade))
    source = spec.answer_from(pairs).sample
    final = answer_of(source)
    segments.append(Segment("answer", final, source.sample_id, source.correct))
    return Trace(f"{problem_id}/{fmt}/{index}", problem_id, fmt, tuple(segments), final, question)


def make_traces(
    problem_id: str,
    question: str,
    pairs: Sequence[Pair],
    fmt: str,
    rng: random.Random,
    max_pairs: int = 5,
) -> list[Trace]:
    """All traces of one question under format `fmt`; [] when the question lacks the pairs the
    format needs (see the module docstring). ValueError when `max_pairs` is too small for `fmt`."""
    spec = get_format(fmt)
    if max_pairs < spec.min_pairs:
        raise ValueError(
            f"trace format {fmt!r} needs max_pairs >= {spec.min_pairs}, got {max_pairs}"
        )
    for p in pairs:
        if p.sample.problem_id != problem_id:
            raise ValueError(f"sample {p.sample.sample_id!r} is not of problem {problem_id!r}")
    sequences = spec.select(pairs, rng, max_pairs)
    return [build_trace(problem_id, question, seq, fmt, rng, i) for i, seq in enumerate(sequences)]


_TAGGED = ("sample", "reflect")


def render_trace(trace: Trace) -> str:
    """The assistant text of a trace, in PAPER.md's layout (one newline between elements).

    Everything before the last two segments goes inside `<think>`; the second to last (a glue:
    the ENDING phrase) follows `</think>` after a blank line, then the answer block.
    """
    segs = trace.segments
    if len(segs) < 3 or segs[-1].kind != "answer" or segs[-2].kind != "glue":
        kinds = [s.kind for s in segs]
        raise ValueError(f"trace {trace.trace_id}: must end with glue, answer; got {kinds}")
    lines = ["<think>"]
    for s in segs[:-2]:
        if s.kind in _TAGGED:
            lines.append(f"<{s.kind}>\n{s.text}\n</{s.kind}>")
        elif s.kind == "glue":
            lines.append(s.text)
        else:
            raise ValueError(f"trace {trace.trace_id}: {s.kind!r} segment inside <think>")
    lines.append("</think>")
    return "\n".join(lines) + f"\n\n{segs[-2].text}\n\n<answer>\n{segs[-1].text}\n</answer>"


def trace_to_chat(trace: Trace) -> dict[str, list[dict[str, str]]]:
    """One mlx-lm chat row: the plain question as the user turn, the rendered trace as the reply."""
    return {
        "messages": [
            {"role": "user", "content": trace.question},
            {"role": "assistant", "content": render_trace(trace)},
        ]
    }


def trace_pairs(trace: Trace) -> int:
    """Number of attempts (sample segments) a trace shows."""
    return sum(s.kind == "sample" for s in trace.segments)


def ends_correct(trace: Trace) -> bool:
    """Whether the last attempt shown is correct (False for `*C*IC`, sometimes for `no_order`)."""
    return next(s.correct for s in reversed(trace.segments) if s.kind == "sample") is True
