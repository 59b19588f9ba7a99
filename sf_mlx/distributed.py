"""Data parallelism over MLX's own distributed layer (`mx.distributed`: ring, JACCL, MPI, NCCL),
for stages started with `mlx.launch -n N sf-mlx recipe|stage ...`.

Every rank runs the same program (SPMD). The unit of work that a rank takes is fixed by the
recipe, never by the number of ranks, so N ranks compute what one rank computes:
- `sample` / `reflect`: batches of `batch_size` jobs (seeded by their first record's id);
- `evaluate`: whole (arm, task) cells (seeded by arm and task);
- GRPO rollouts: `grpo.rollout_split` parts of a step's groups (seeded by step and part), so a
  group never straddles ranks; the update splits each mini-batch's micro-batches and sums
  their gradients;
- SFT: each batch's rows, with the token-weighted mean taken over all ranks' tokens.
Records are gathered to every rank (JSON bytes in `all_gather`) and appended by the writer in
the one-rank order. One rank per file system writes the run directory (`elect_writer`): rank 0,
and on a host that does not see rank 0's folder (no shared disk), that host's lowest rank, which
keeps its own identical copy. With one process every function here is free: nothing is
serialised and no collective runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# bytes this rank has put into collectives (all_gather payloads, all-reduced gradients):
# what `grpo/comm_mb` and `sf-mlx bench distributed` report
TRAFFIC = {"gathered": 0, "reduced": 0}


def traffic_bytes() -> int:
    return TRAFFIC["gathered"] + TRAFFIC["reduced"]


@lru_cache(maxsize=1)
def group():
    """The global group (a group of one when the process was not started by `mlx.launch`)."""
    import mlx.core as mx

    g = mx.distributed.init()
    if g.size() > 1:
        _share_cores(g)
    return g


def _share_cores(g) -> None:
    """Ranks on one host split its cores between their CPU BLAS threads: OpenBLAS threads spin
    while they wait, and two ranks' spinning threads on the same cores slow both many times."""
    import socket

    import mlx.core as mx

    from sf_mlx import blas

    host = int.from_bytes(hashlib.sha256(socket.gethostname().encode()).digest()[:3], "big")
    hosts = mx.distributed.all_gather(mx.array([host], dtype=mx.int32), group=g).tolist()
    blas.set_blas_threads(max(1, (os.cpu_count() or 1) // hosts.count(host)))


def size() -> int:
    return group().size()


def rank() -> int:
    return group().rank()


def barrier() -> None:
    """Return once every rank has called it."""
    if size() > 1:
        import mlx.core as mx

        mx.eval(mx.distributed.all_sum(mx.array(0.0), group=group()))


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (JSON-serialisable), in rank order, on every rank."""
    if size() == 1:
        return [obj]
    import mlx.core as mx
    import numpy as np

    data = np.frombuffer(json.dumps(obj).encode("utf-8"), dtype=np.uint8)
    lengths = mx.distributed.all_gather(mx.array([data.size], dtype=mx.int32), group=group())
    lengths = [int(v) for v in lengths.tolist()]
    width = max(1, max(lengths))
    buf = np.zeros(width, dtype=np.uint8)
    buf[: data.size] = data
    joined = np.array(mx.distributed.all_gather(mx.array(buf), group=group()))  # (N * width,)
    TRAFFIC["gathered"] += width + 4
    return [
        json.loads(joined[i * width : i * width + n].tobytes().decode("utf-8"))
        for i, n in enumerate(lengths)
    ]


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if size() == 1:
        return obj
    return all_gather_objects(obj if rank() == 0 else None)[0]


def same_on_every_rank(what: str, value: Any) -> None:
    """Raise one clear error when `value` (JSON-serialisable) differs between ranks: e.g. two
    hosts whose copies of a run directory disagree."""
    if size() == 1:
        return
    digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
    digests = all_gather_objects(digest)
    odd = [r for r, d in enumerate(digests) if d != digests[0]]
    if odd:
        raise ValueError(
            f"{what} differs between rank 0 and rank(s) {odd}: their copies of the run "
            "directory disagree; copy rank 0's run directory to those hosts and rerun"
        )


def all_sum(x):
    """The element-wise sum of an array over all ranks (`x` itself on one rank)."""
    if size() == 1:
        return x
    import mlx.core as mx

    return mx.distributed.all_sum(x, group=group())


def max_scalar(value: float) -> float:
    if size() == 1:
        return value
    return max(all_gather_objects(value))


def sum_gradients(grads: Any) -> Any:
    """The sum over ranks of a gradient tree (MLX's `average_gradients`, times N: it packs
    small arrays into few large all-reduces)."""
    n = size()
    if n == 1:
        return grads
    import mlx.nn as nn
    from mlx.utils import tree_flatten, tree_map

    TRAFFIC["reduced"] += sum(g.nbytes for _, g in tree_flatten(grads))
    return tree_map(lambda g: g * n, nn.average_gradients(grads, group=group()))


def in_rounds(
    units: Sequence[T],
    work: Callable[[T], Any],
    encode: Callable[[Any], Any],
    decode: Callable[[Any], Any] = lambda x: x,
) -> Iterator[tuple[list[T], list[Any]]]:
    """Share fixed units of work round-robin: in each round of N units, rank k does unit k.
    Yields each round's units and every unit's result, in unit order, on every rank. With one
    process a result is `work`'s own; otherwise it travels as `encode(result)` (JSON) and comes
    back through `decode`."""
    n = size()
    for first in range(0, len(units), n):
        round_ = list(units[first : first + n])
        if n == 1:
            yield round_, [work(round_[0])]
            continue
        mine = encode(work(round_[rank()])) if rank() < len(round_) else None
        yield round_, [decode(x) for x in all_gather_objects(mine)[: len(round_)]]


def my_share(n_items: int) -> list[int]:
    """Indices of the items this rank takes when `n_items` fixed units are shared round-robin."""
    return list(range(rank(), n_items, size()))


def elect_writer(folder: str | os.PathLike[str]) -> bool:
    """Whether this rank writes `folder` (which every rank has created): the first rank, in
    rank order, to create a marker file there. Rank 0 always writes; a rank that shares rank 0's
    file system reads what rank 0 writes; a host with its own disk gets one writer of its own."""
    if size() == 1:
        return True
    token = broadcast_object(secrets.token_hex(8) if rank() == 0 else None)
    marker = Path(folder) / f".writer-{token}"
    mine = False
    for r in range(size()):
        if r == rank():
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                mine = True
            except FileExistsError:
                pass
        barrier()
    if mine:
        marker.unlink(missing_ok=True)
    return mine
