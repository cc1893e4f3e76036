"""torch.distributed plumbing shared by every trainer and the evaluation harness.

pssr runs on PyTorch's own distributed engine: launch any training or evaluation command under
``torchrun --nproc_per_node=N [--nnodes=M --node_rank=R --rdzv_endpoint=HOST:PORT] -m pssr ...``.
torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; :func:`init_distributed` reads them and joins the
process group (NCCL on CUDA, gloo on CPU). Without them everything runs as a single process and
these helpers are no-ops, so library code calls them unconditionally.

Data sharding keeps whole datasets as in-memory tensors: every rank draws the same seeded global
permutation of the epoch and takes its own slice of each global batch, so N ranks with per-rank
batch B/N see exactly the examples one process with batch B would see, and DDP's gradient
averaging makes the update identical (up to floating-point order and BatchNorm statistics, which
are per rank unless the model is converted with :func:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`
on CUDA).
"""

from __future__ import annotations

import builtins
import datetime
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None when not distributed

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment variables; (0, 1, 0) without them."""
    try:
        return (
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)),
        )
    except ValueError as e:
        raise ValueError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers: {e}") from e


def init_distributed(
    device: torch.device | None = None, backend: str | None = None, timeout_s: float = 1800.0
) -> DistInfo:
    """Join the process group when launched by torchrun (or already initialized); else single process.

    ``backend`` defaults to NCCL for CUDA devices and gloo otherwise. On CUDA each rank uses
    ``cuda:LOCAL_RANK``.
    """
    if dist.is_available() and dist.is_initialized():
        return current()
    rank, world, local = env_world()
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    use_cuda = (device is None and torch.cuda.is_available()) or (
        device is not None and device.type == "cuda"
    )
    backend = backend or ("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    log.info("joined process group: rank %d/%d (local %d), backend %s", rank, world, local, backend)
    return DistInfo(rank, world, local, backend)


def current() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        return DistInfo(rank, world, int(os.environ.get("LOCAL_RANK", rank)), dist.get_backend())
    return DistInfo()


def device_for(info: DistInfo, device: torch.device) -> torch.device:
    """The device this rank computes on: ``cuda:LOCAL_RANK`` under NCCL, else ``device``."""
    if info.enabled and device.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return device


def wrap_model(model: nn.Module, info: DistInfo) -> nn.Module:
    """DistributedDataParallel around ``model`` when distributed; the model itself otherwise."""
    if not info.enabled:
        return model
    dev = next(model.parameters()).device
    ids = [dev.index] if dev.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The same seeded permutation of ``n`` examples on every rank (CPU generator)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def global_batches(perm: Tensor, global_batch: int, info: DistInfo, drop_last: bool = False) -> list[Tensor]:
    """Split ``perm`` into global batches and keep this rank's contiguous share of each.

    The global batch must divide evenly by the world size so that DDP's mean of per-rank mean
    gradients equals the single-process mean gradient.
    """
    if global_batch % info.world_size:
        raise ValueError(f"batch size {global_batch} must be divisible by the world size {info.world_size}")
    out = []
    for start in range(0, len(perm), global_batch):
        b = perm[start : start + global_batch]  # (<= global_batch,)
        if len(b) < global_batch:
            if drop_last:
                break
            # A ragged last batch is trimmed to a multiple of the world size so every rank gets
            # an equal share (the few trimmed examples are skipped this epoch only).
            b = b[: len(b) // info.world_size * info.world_size]
            if len(b) == 0:
                break
        per = len(b) // info.world_size
        out.append(b[info.rank * per : (info.rank + 1) * per])
    return out


def shard_range(n: int, info: DistInfo) -> range:
    """Contiguous share of ``range(n)`` for this rank (for sharded evaluation)."""
    per = -(-n // info.world_size)
    return range(min(n, info.rank * per), min(n, (info.rank + 1) * per))


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` in rank order (a one-element list when not distributed)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(t: Tensor, info: DistInfo) -> Tensor:
    if info.enabled:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_grads(params: Sequence[nn.Parameter], info: DistInfo, average: bool = False) -> None:
    """Sum (``average=True``: average) the ``.grad`` of ``params`` over ranks, in place, with one flat
    collective: the explicit alternative to DDP for training code whose modules are not called
    through one ``forward`` (several modules, several forwards, ranks that skip a step's backward).

    Every rank must pass the same parameters in the same order. A parameter without a gradient on a
    rank counts as zeros there; one without a gradient on *every* rank keeps ``grad = None`` (so an
    optimizer skips it, as it would in one process). All ranks receive the same bits (the reduced
    buffer is shared), so identical optimizer steps keep the weights identical. Not distributed: a
    no-op.
    """
    if not info.enabled:
        return
    params = list(params)
    if not params:
        return
    dtype = params[0].dtype
    for p in params[1:]:
        dtype = torch.promote_types(dtype, p.dtype)
    dev = params[0].device
    flat = torch.cat(
        [
            (p.grad.detach() if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dtype)
            for p in params
        ]
        + [torch.tensor([float(p.grad is not None) for p in params], dtype=dtype, device=dev)]
    )
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    present = flat[-len(params) :].tolist()  # (P,) number of ranks that had a gradient
    if average:
        flat /= info.world_size
    at = 0
    for p, n_ranks in zip(params, present):
        g = flat[at : at + p.numel()].view_as(p).to(p.dtype)  # a view of the reduced buffer
        at += p.numel()
        p.grad = g if n_ranks > 0 else None


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _raise_remote(kind: str, message: str, rank: int) -> NoReturn:
    """Re-raise on this rank an error that happened on ``rank`` (same built-in type, else RuntimeError)."""
    cls = getattr(builtins, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        cls = RuntimeError
    raise cls(f"(on rank {rank}) {message}")


def on_main(fn: Callable[[], T], info: DistInfo) -> T:
    """``fn()`` run by rank 0 alone; its result -- or its error -- handed to every rank.

    For work one rank does for all (reading or writing shared state files, sanity checks). When
    ``fn`` raises on rank 0, every rank raises too (rank 0 the original exception, the others the
    same built-in type with the message, else ``RuntimeError``) instead of waiting in the next
    collective until the timeout. Not distributed: just ``fn()``.
    """
    if not info.enabled:
        return fn()
    box: list[Any] = [None]
    result: Any = None
    err: Exception | None = None
    if info.is_main:
        try:
            result = fn()
            box[0] = ("ok", result)
        except Exception as e:
            err = e
            box[0] = ("error", type(e).__name__, str(e))
    dist.broadcast_object_list(box, src=0)
    if err is not None:
        raise err
    if info.is_main:
        return result
    if box[0][0] == "error":
        _raise_remote(box[0][1], box[0][2], 0)
    return box[0][1]


def all_gather_results(fn: Callable[[], T], info: DistInfo) -> list[T]:
    """Every rank's ``fn()``, in rank order, on every rank; when any rank's ``fn`` raises, all raise.

    The failing rank re-raises its own exception; the others raise the first failure's built-in type
    (else ``RuntimeError``) with its message, so no rank is left waiting in a later collective.
    Not distributed: ``[fn()]``.
    """
    if not info.enabled:
        return [fn()]
    err: Exception | None = None
    try:
        mine: tuple[Any, ...] = ("ok", fn())
    except Exception as e:
        err = e
        mine = ("error", type(e).__name__, str(e))
    parts = all_gather_objects(mine, info)
    if err is not None:
        raise err
    for r, p in enumerate(parts):
        if p[0] == "error":
            _raise_remote(p[1], p[2], r)
    return [p[1] for p in parts]


def cleanup(sync: bool = False) -> None:
    """Leave the process group (no-op when there is none).

    ``sync=True`` (the normal end of a run) first collects garbage -- a DDP wrapper still alive when
    the group is destroyed can abort the process at exit ("terminate called without an active
    exception", seen about once in ten 2-process runs) -- and meets the other ranks at a barrier.
    Leave it False on an error path: a barrier there would wait for ranks that may be gone.
    """
    if dist.is_available() and dist.is_initialized():
        if sync:
            import gc

            gc.collect()
            dist.barrier()
        dist.destroy_process_group()


def run_and_leave(fn: Callable[[], T]) -> tuple[T, bool]:
    """``(fn(), is_main)``: run ``fn`` on every rank, then leave the process group (synchronized
    on success, at once on an error, which propagates). ``is_main`` is True without torchrun."""
    try:
        out = fn()
        is_main = current().is_main
    except BaseException:
        cleanup()
        raise
    cleanup(sync=True)
    return out, is_main
