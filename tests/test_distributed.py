"""torch.distributed plumbing: 2 gloo processes on CPU match a single process on the same global batch."""

from __future__ import annotations

import gc
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from pssr import distributed as D

pytestmark = pytest.mark.dist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g)


def _train(info: D.DistInfo, steps_epochs: int = 2, global_batch: int = 16) -> dict[str, torch.Tensor]:
    x, y = _data()
    model = D.wrap_model(_make_model(), info)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for epoch in range(steps_epochs):
        for idx in D.global_batches(D.epoch_permutation(len(x), seed=5, epoch=epoch), global_batch, info):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return {k: v.detach().clone() for k, v in D.unwrap(model).state_dict().items()}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = D.init_distributed(torch.device("cpu"))
    assert info.enabled and info.backend == "gloo" and info.rank == rank
    state = _train(info)
    # sharded "evaluation": each rank handles its own range, records merged in rank order
    recs = [{"index": i, "value": i * i} for i in D.shard_range(10, info)]
    merged = [r for part in D.all_gather_objects(recs, info) for r in part]
    if info.is_main:
        torch.save({"state": state, "merged": merged}, os.path.join(out_dir, "ddp.pt"))
    D.barrier(info)
    D.cleanup()


def test_two_gloo_processes_match_single_process(tmp_path):
    single = _train(D.DistInfo())
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    out = torch.load(tmp_path / "ddp.pt", weights_only=True)
    for k, v in single.items():
        torch.testing.assert_close(out["state"][k], v, rtol=1e-5, atol=1e-6, msg=f"parameter {k} differs")
    assert out["merged"] == [{"index": i, "value": i * i} for i in range(10)]


def test_global_batches_cover_each_example_once_across_ranks():
    perm = D.epoch_permutation(50, seed=0, epoch=0)
    parts = [D.global_batches(perm, 8, D.DistInfo(rank=r, world_size=2)) for r in range(2)]
    seen = torch.cat([torch.cat(p) for p in parts]).sort().values
    assert len(seen) == 50 and torch.equal(seen, torch.arange(50))
    with pytest.raises(ValueError, match="divisible by the world size"):
        D.global_batches(perm, 7, D.DistInfo(rank=0, world_size=2))


def test_single_process_is_a_no_op(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    info = D.init_distributed(torch.device("cpu"))
    assert not info.enabled and info.is_main
    m = nn.Linear(2, 2)
    assert D.wrap_model(m, info) is m
    assert D.all_gather_objects([1], info) == [[1]]
    assert list(D.shard_range(5, info)) == [0, 1, 2, 3, 4]


# --- the real trainer under 2 gloo processes -------------------------------------------------------
def _trainer_model() -> nn.Module:
    # No BatchNorm: per-rank batch statistics would (legitimately) differ from one process's.
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def _fit(ckpt: str, kind: str = "classifier") -> dict[str, torch.Tensor]:
    from pssr.data import load
    from pssr.train.adversarial import adversarial_train_run
    from pssr.train.classifier import train_classifier_run

    data = load("digits")
    kw = dict(epochs=2, batch_size=64, lr=0.05, schedule="cosine", augment="none", seed=3, device="cpu",
              checkpoint=ckpt, progress=False)
    if kind == "classifier":
        res = train_classifier_run(_trainer_model(), data, **kw)
    else:  # adversarial training: its inner attack runs on the bare module of each rank
        res = adversarial_train_run(_trainer_model(), data, method=kind, eps=0.1, alpha=0.05, steps=2,
                                    eval_steps=1, eval_n=20, **kw)
    return {k: v.detach().clone() for k, v in res.model.state_dict().items()}


def _trainer_worker(rank: int, world: int, port: int, out_dir: str, kind: str = "classifier") -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    state = _fit(os.path.join(out_dir, "ddp.pt"), kind)
    if rank == 0:
        torch.save(state, os.path.join(out_dir, "ddp-state.pt"))
    D.cleanup()


def test_adversarial_training_runs_under_two_gloo_processes(tmp_path, monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    mp.spawn(_trainer_worker, args=(2, _free_port(), str(tmp_path), "pgd-at"), nprocs=2, join=True)
    ck = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert ck["kind"] == "pgd-at" and ck["epoch"] == 2 and "test_acc" in ck["metrics"]


def test_train_classifier_under_two_gloo_processes_matches_one_process(tmp_path, monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    single = _fit(str(tmp_path / "single.pt"))
    mp.spawn(_trainer_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp-state.pt", weights_only=True)
    for k, v in single.items():
        torch.testing.assert_close(ddp[k], v, rtol=1e-4, atol=1e-5, msg=f"parameter {k} differs")
    ck = torch.load(tmp_path / "ddp.pt", weights_only=True)  # written once, by rank 0
    assert ck["epoch"] == 2 and len(ck["history"]) == 2


def test_trades_trainer_runs_under_two_gloo_processes(tmp_path, monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    mp.spawn(_trainer_worker, args=(2, _free_port(), str(tmp_path), "trades"), nprocs=2, join=True)
    ck = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert ck["kind"] == "trades" and ck["epoch"] == 2 and "test_acc" in ck["metrics"]


class _Stop(Exception):
    pass


def _resume_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """2 ranks train 2 epochs with random crops/flips (per-rank augmentation streams) once straight
    through and once stopped after epoch 1 and restarted from the checkpoint."""
    from pssr.data import load
    from pssr.train.classifier import train_classifier_run

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    data = load("digits")
    kw = dict(epochs=2, batch_size=64, lr=0.05, schedule="cosine", augment="crop-flip", crop_padding=2, seed=3,
              device="cpu", progress=False)
    straight = train_classifier_run(_trainer_model(), data, checkpoint=os.path.join(out_dir, "straight.pt"), **kw)

    def stop(rec: dict) -> None:
        raise _Stop

    ckpt = os.path.join(out_dir, "resumed.pt")
    try:
        train_classifier_run(_trainer_model(), data, checkpoint=ckpt, callbacks=[stop], **kw)
    except _Stop:
        pass
    gc.collect()  # the interrupted run's DDP wrapper must be gone before the process group is
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    resumed = train_classifier_run(_trainer_model(), data, checkpoint=ckpt, **kw)
    if rank == 0:
        torch.save({"straight": straight.model.state_dict(), "resumed": resumed.model.state_dict()},
                   os.path.join(out_dir, "states.pt"))
    D.barrier(D.current())
    D.cleanup()


def test_resumed_two_process_training_equals_uninterrupted(tmp_path, monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    mp.spawn(_resume_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    out = torch.load(tmp_path / "states.pt", weights_only=True)
    assert len(torch.load(tmp_path / "resumed.pt", weights_only=True)["rng"]["gen_aug_by_rank"]) == 2
    for k, v in out["straight"].items():
        assert torch.equal(out["resumed"][k], v), f"parameter {k} differs after resuming"


# --- TRADES: two forward passes through DDP before one backward -----------------------------------
def _trades_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """TRADES steps under DDP on each rank's share of every global batch; before each step a bare copy
    of the model at the same weights computes the one-process gradient on the whole global batch.

    Gradients are compared step by step at equal weights rather than weights after training: TRADES'
    inner PGD takes signs of input gradients, so float-order differences of DDP's all-reduce can
    flip a near-zero sign and make trajectories drift apart without any error in the gradients.
    """
    from pssr.train.adversarial import AdvTrainConfig, trades_start, trades_step

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = D.init_distributed(torch.device("cpu"))
    cfg = AdvTrainConfig(method="trades", eps=0.1, alpha=0.03, steps=3, beta=6.0)
    x, y = _data()
    # The inner maximization's start, drawn once for all 64 examples: every example starts at the
    # same x0 whichever rank (or the single process) handles it.
    x0 = trades_start(x, torch.Generator().manual_seed(7))  # (64, 1, 8, 8)
    model = D.wrap_model(_make_model(), info)  # no BatchNorm: per-rank batch statistics would differ
    ref = _make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    worst, losses = 0.0, []
    for epoch in range(2):
        perm = D.epoch_permutation(len(x), seed=5, epoch=epoch)
        for idx, full in zip(D.global_batches(perm, 16, info), D.global_batches(perm, 16, D.DistInfo())):
            ref.load_state_dict(D.unwrap(model).state_dict())
            ref.zero_grad()
            ref_loss, _ = trades_step(ref, x[full], y[full], x0[full], cfg)
            ref_loss.backward()
            opt.zero_grad()
            loss, _ = trades_step(model, x[idx], y[idx], x0[idx], cfg)
            loss.backward()  # DDP averages the two ranks' gradients
            for p, q in zip(D.unwrap(model).parameters(), ref.parameters()):
                worst = max(worst, float((p.grad - q.grad).abs().max() / q.grad.abs().max()))
            mean_loss = D.all_reduce_sum(loss.detach(), info) / world  # halves of equal size
            losses.append((float(mean_loss), float(ref_loss.detach())))
            opt.step()
    if info.is_main:
        torch.save({"worst": worst, "losses": losses}, os.path.join(out_dir, "trades-ddp.pt"))
    D.barrier(info)
    D.cleanup()


def test_trades_under_two_gloo_processes_matches_one_process(tmp_path):
    mp.spawn(_trades_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    out = torch.load(tmp_path / "trades-ddp.pt", weights_only=True)
    assert len(out["losses"]) == 8  # 2 epochs of 4 global batches
    assert out["worst"] < 1e-5, f"DDP TRADES gradient differs from one process by {out['worst']:.3g} (relative)"
    for ddp_loss, one_loss in out["losses"]:
        assert math.isclose(ddp_loss, one_loss, rel_tol=1e-5)


# --- the evaluation harness sharded over 2 gloo processes ------------------------------------------
# fgsm + pgd (digits defaults) on 40 test digits in chunks of 8: 5 chunks, so 2 ranks get uneven rounds.
_EVAL_ARGS = ["--attacks", "fgsm,pgd", "--eps", "0.1", "--num-examples", "40", "--batch-size", "8",
              "--check-n", "16", "--seed", "3", "--no-progress"]


def _eval_worker(rank: int, world: int, port: int, ckpt: str, outs: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from pssr.cli import main

    # Each rank gets its own --out: rank 0 alone may read the state and write the report, so rank 1's
    # folder must never appear (under torchrun every rank would get the same folder).
    assert main(["evaluate", "--checkpoint", ckpt, *_EVAL_ARGS, "--out", outs[rank]]) == 0


def _without_timing(obj):
    if isinstance(obj, dict):
        return {k: _without_timing(v) for k, v in obj.items() if "seconds" not in k}
    if isinstance(obj, list):
        return [_without_timing(v) for v in obj]
    return obj


def test_sharded_evaluation_matches_one_process_and_resumes(tmp_path, monkeypatch):
    import json
    import shutil

    from pssr.cli import main
    from pssr.data import load
    from pssr.train.classifier import train_classifier_run

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    ckpt = str(tmp_path / "clf.pt")
    train_classifier_run("tiny-cnn", load("digits"), epochs=1, batch_size=64, lr=0.05, augment="none", seed=0,
                         device="cpu", checkpoint=ckpt, progress=False)
    single, ddp, rank1 = tmp_path / "single", tmp_path / "ddp", tmp_path / "rank1"
    assert main(["evaluate", "--checkpoint", ckpt, *_EVAL_ARGS, "--out", str(single)]) == 0

    # Rank 0 starts from the single run's state cut back to "interrupted": the pgd unit after 1 of its
    # 5 chunks, the checks / clean / fgsm units never started. So 2 ranks compute checks, clean and
    # fgsm from scratch and resume pgd at chunk 1 (rounds 1-2, 3-4, 5).
    shutil.copytree(single / "state", ddp / "state")
    index = json.loads((ddp / "state" / "state.json").read_text())
    pgd_key = next(k for k in index["units"] if k.startswith("attack|") and "|pgd|" in k)
    unit_path = ddp / "state" / "units" / index["units"][pgd_key]["file"]
    unit = json.loads(unit_path.read_text())
    assert unit["n_chunks"] == 5 and len(unit["records"]) == 40
    unit.update(chunks_done=1, records=unit["records"][:8], seconds=0.0)
    unit_path.write_text(json.dumps(unit))
    index["units"] = {pgd_key: dict(index["units"][pgd_key], complete=False)}
    (ddp / "state" / "state.json").write_text(json.dumps(index))

    mp.spawn(_eval_worker, args=(2, _free_port(), ckpt, [str(ddp), str(rank1)]), nprocs=2, join=True)

    assert not rank1.exists()
    recs_single = (single / "records.jsonl").read_text()
    recs_ddp = (ddp / "records.jsonl").read_text()
    assert recs_single.count("\n") == 40 * 3  # clean, fgsm, pgd
    assert sum(json.loads(r)["attacked"] for r in recs_single.splitlines()) > 40  # the model is right on most
    assert recs_ddp == recs_single  # same order, same content (records carry no timing)
    a, b = (json.loads((d / "report.json").read_text()) for d in (single, ddp))
    assert b["config"].pop("distributed")["world_size"] == 2
    for d in (a, b):
        d["config"].pop("state_dir")
        d.pop("metadata")
    assert _without_timing(b) == _without_timing(a)
    # the resumed pgd unit on disk is complete and holds the single run's records
    merged = json.loads(unit_path.read_text())
    full = json.loads((single / "state" / "units" / unit_path.name).read_text())
    assert merged["chunks_done"] == 5 and merged["records"] == full["records"]
