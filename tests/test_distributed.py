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
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
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
    D.cleanup(sync=True)


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
    kw = dict(
        epochs=2,
        batch_size=64,
        lr=0.05,
        schedule="cosine",
        augment="none",
        seed=3,
        device="cpu",
        checkpoint=ckpt,
        progress=False,
    )
    if kind == "classifier":
        res = train_classifier_run(_trainer_model(), data, **kw)
    else:  # adversarial training: its inner attack runs on the bare module of each rank
        res = adversarial_train_run(
            _trainer_model(), data, method=kind, eps=0.1, alpha=0.05, steps=2, eval_steps=1, eval_n=20, **kw
        )
    return {k: v.detach().clone() for k, v in res.model.state_dict().items()}


def _trainer_worker(rank: int, world: int, port: int, out_dir: str, kind: str = "classifier") -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    state = _fit(os.path.join(out_dir, "ddp.pt"), kind)
    if rank == 0:
        torch.save(state, os.path.join(out_dir, "ddp-state.pt"))
    D.cleanup(sync=True)


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

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    data = load("digits")
    kw = dict(
        epochs=2,
        batch_size=64,
        lr=0.05,
        schedule="cosine",
        augment="crop-flip",
        crop_padding=2,
        seed=3,
        device="cpu",
        progress=False,
    )
    straight = train_classifier_run(
        _trainer_model(), data, checkpoint=os.path.join(out_dir, "straight.pt"), **kw
    )

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
        torch.save(
            {"straight": straight.model.state_dict(), "resumed": resumed.model.state_dict()},
            os.path.join(out_dir, "states.pt"),
        )
    D.barrier(D.current())
    D.cleanup(sync=True)


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

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
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
    D.cleanup(sync=True)


def test_trades_under_two_gloo_processes_matches_one_process(tmp_path):
    mp.spawn(_trades_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    out = torch.load(tmp_path / "trades-ddp.pt", weights_only=True)
    assert len(out["losses"]) == 8  # 2 epochs of 4 global batches
    assert out["worst"] < 1e-5, (
        f"DDP TRADES gradient differs from one process by {out['worst']:.3g} (relative)"
    )
    for ddp_loss, one_loss in out["losses"]:
        assert math.isclose(ddp_loss, one_loss, rel_tol=1e-5)


# --- the evaluation harness sharded over 2 gloo processes ------------------------------------------
# fgsm + pgd (digits defaults) on 40 test digits in chunks of 8: 5 chunks, so 2 ranks get uneven rounds.
_EVAL_ARGS = [
    "--attacks",
    "fgsm,pgd",
    "--eps",
    "0.1",
    "--num-examples",
    "40",
    "--batch-size",
    "8",
    "--check-n",
    "16",
    "--seed",
    "3",
    "--no-progress",
]


def _eval_worker(rank: int, world: int, port: int, ckpt: str, outs: list[str]) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
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
    train_classifier_run(
        "tiny-cnn",
        load("digits"),
        epochs=1,
        batch_size=64,
        lr=0.05,
        augment="none",
        seed=0,
        device="cpu",
        checkpoint=ckpt,
        progress=False,
    )
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


# --- PSSR training (scorer + regenerator, optionally the classifier) under 2 gloo processes --------
_PSSR_TINY = dict(
    epochs=2,
    train_subset=192,
    val_size=64,
    batch_size=64,
    gen_width=8,
    scorer_width=8,
    pgd_steps=3,
    eps=0.3,
    ratio=0.25,
    device="cpu",
)
_PSSR_SPEC = {"name": "tiny-cnn", "kwargs": {"num_classes": 10, "in_channels": 1}}
_PSSR_CASES = {
    # the tiny config: cached PGD examples, learned scorer, regenerator, R-drop
    "cache": {},
    # 193 = 4 x 48 + 1: the last global batch gives rank 0 one example and rank 1 none (its step is
    # only the collectives); threshold masks (a varying number of removed pixels per image, so the
    # masked L1 needs the global count); the classifier fine-tuned too (its gradients all-reduced);
    # two-pass R-Drop (its random drops drawn for the global batch, each rank taking its rows)
    "uneven-threshold-finetune": {
        "train_subset": 193,
        "batch_size": 48,
        "mask_mode": "threshold",
        "threshold": 0.6,
        "classifier_lr": 1e-3,
        "rdrop_drop": 0.1,
    },
    # examples remade every batch, each rank its share with the random starts of the whole global
    # batch (equal to one process here because the CPU kernels give per-example results that do not
    # depend on the batch size; not guaranteed on every backend)
    "online": {"adv_mode": "online", "fgsm_fraction": 0.25},
}


@pytest.fixture(scope="module")
def pssr_classifier(tmp_path_factory) -> str:
    """A tiny-cnn trained on digits for 3 epochs (about 2 s), saved as a train-classifier checkpoint."""
    from pssr.data import load
    from pssr.train.classifier import train_classifier

    path = tmp_path_factory.mktemp("pssr-clf") / "classifier.pt"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_classifier(
            "tiny-cnn",
            load("digits"),
            epochs=3,
            batch_size=64,
            lr=0.05,
            augment="none",
            seed=0,
            device="cpu",
            progress=False,
            checkpoint=path,
        )
    finally:
        torch.set_num_threads(threads)
    return str(path)


def _pssr_state(d) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in d.state_dict().items()}


def _grads(params) -> list:
    return [None if p.grad is None else p.grad.detach().clone() for p in params]


def _pssr_worker(rank: int, world: int, port: int, out_dir: str, clf_path: str) -> None:
    from pssr.data import load
    from pssr.defense import PSSRConfig
    from pssr.experiments.quick_eval import quick_eval
    from pssr.train.adversarial_cache import make_adversarial
    from pssr.train.classifier import load_classifier
    from pssr.train.pssr_train import train_pssr

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    info = D.init_distributed(torch.device("cpu"))
    data = load("digits")
    clf = load_classifier(clf_path)
    res: dict = {}

    # all_reduce_grads: a gradient on some ranks only is summed with zeros; none anywhere stays None
    a, b, c = (nn.Parameter(torch.zeros(n)) for n in (2, 3, 1))
    a.grad, b.grad = torch.full((2,), float(rank + 1)), (torch.ones(3) if rank == 0 else None)
    D.all_reduce_grads([a, b, c], info)
    res["grads"] = (a.grad.tolist(), b.grad.tolist(), c.grad)

    # The cached examples in chunks of 32 dealt out over the ranks (chunks 0-2 on rank 0, 3-5 on
    # rank 1) and gathered equal the examples one process makes chunk by chunk, bit for bit.
    cfg = PSSRConfig(**{**_PSSR_TINY, "fgsm_fraction": 0.25})
    x, y = data.train.x[:192], data.train.y[:192]
    one = make_adversarial(clf, x, y, cfg, seed=11, batch_size=32)
    sharded = make_adversarial(clf, x, y, cfg, seed=11, batch_size=32, shard=info)
    res["adv_equal"] = all(torch.equal(p, q) for p, q in zip(one, sharded))
    res["adv_fooled"] = float((clf(one[0]).argmax(1) != y).float().mean())

    # every step's all-reduced gradient (the same on both ranks), for the one-process comparison
    reduce = D.all_reduce_grads
    steps: list = []

    def recording(params, info, average=False):
        reduce(params, info, average)
        steps.append(_grads(params))

    D.all_reduce_grads = recording  # train_pssr calls it through the module
    try:
        for name, extra in _PSSR_CASES.items():
            steps.clear()
            d = train_pssr(
                clf, data, PSSRConfig(**{**_PSSR_TINY, **extra}), progress=False, classifier_spec=_PSSR_SPEC
            )
            res[name] = {
                "states": D.all_gather_objects(_pssr_state(d), info),
                "history": d.metrics["history"],
                "steps": list(steps),
            }
            if name == "cache":  # the sharded quick evaluation equals the unsharded one on the same weights
                kw = dict(eps=0.3, steps=3, adaptive_n=70, batch_size=20)
                xt, yt = data.test.x[:120], data.test.y[:120]
                res["quick_eval"] = (quick_eval(d, xt, yt, **kw), quick_eval(d, xt, yt, shard=info, **kw))
    finally:
        D.all_reduce_grads = reduce
    if info.is_main:
        torch.save(res, os.path.join(out_dir, "pssr-ddp.pt"))
    D.barrier(info)
    D.cleanup(sync=True)


def test_pssr_training_under_two_gloo_processes_matches_one_process(tmp_path, monkeypatch, pssr_classifier):
    """train_pssr under 2 gloo processes against one process on the same global batches.

    Compared step by step at equal weights, as for TRADES above: the one-process run computes its own
    gradient at every step, which must equal the 2-process all-reduced one, then takes the 2-process
    gradient, so both runs stay on the same weights. Left to run freely, Adam (whose first steps are
    about lr * sign(gradient)) and the top-k masks amplify float-order differences of near-zero
    gradient entries: after these 6 steps weights differ by up to ~4e-4 without any error.
    """
    from pssr.data import load
    from pssr.defense import PSSRConfig
    from pssr.train.classifier import load_classifier
    from pssr.train.pssr_train import train_pssr

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    mp.spawn(_pssr_worker, args=(2, _free_port(), str(tmp_path), pssr_classifier), nprocs=2, join=True)
    out = torch.load(tmp_path / "pssr-ddp.pt", weights_only=True)
    assert out["grads"] == ([3.0, 3.0], [1.0, 1.0, 1.0], None)
    assert out["adv_equal"] and out["adv_fooled"] > 0.5
    one_qe, sharded_qe = out["quick_eval"]
    assert sharded_qe == one_qe and one_qe["n"] == 120 and one_qe["adaptive_n"] == 70

    data, threads = load("digits"), torch.get_num_threads()
    for name, extra in _PSSR_CASES.items():
        ddp_steps, mine = out[name]["steps"], []

        def forced(params, info, average=False, mine=mine, ddp_steps=ddp_steps):
            mine.append(_grads(params))  # one process: the gradient on the whole global batch
            for p, g in zip(params, ddp_steps[len(mine) - 1]):
                p.grad = None if g is None else g.clone()  # ... then the 2-process step

        monkeypatch.setattr(D, "all_reduce_grads", forced)
        torch.set_num_threads(1)  # as in the workers
        try:
            d = train_pssr(
                load_classifier(pssr_classifier),
                data,
                PSSRConfig(**{**_PSSR_TINY, **extra}),
                progress=False,
                classifier_spec=_PSSR_SPEC,
            )
        finally:
            torch.set_num_threads(threads)
        assert len(mine) == len(ddp_steps) == 2 * (5 if name.startswith("uneven") else 3)
        worst = 0.0
        for t, (g1, g2) in enumerate(zip(mine, ddp_steps)):
            assert len(g1) == len(g2) and len(g1) > 0
            assert [a is None for a in g1] == [b is None for b in g2], f"{name} step {t}: gradients missing"
            # Relative to the step's largest gradient entry, not per tensor: the scorer's output bias
            # has a gradient of exactly 0 in theory (the pixel softmax ignores a constant shift), so
            # its float noise (~1e-9) would make any per-tensor relative error meaningless.
            top = max(float(a.abs().max()) for a in g1 if a is not None)
            diff = max(float((a - b).abs().max()) for a, b in zip(g1, g2) if a is not None)
            worst = max(worst, diff / top)
        assert worst < 1e-5, f"{name}: 2-process gradient differs from one process by {worst:.3g} (relative)"
        states, hist = out[name]["states"], out[name]["history"]
        ref = _pssr_state(d)
        assert any(k.startswith("scorer.") for k in ref) and any(k.startswith("generator.") for k in ref)
        for k, v in ref.items():
            assert torch.equal(states[0][k], states[1][k]), f"{name}: {k} differs between the ranks"
            torch.testing.assert_close(
                states[0][k], v, rtol=0, atol=1e-6, msg=f"{name}: parameter {k} differs"
            )
        ref_hist = d.metrics["history"]
        assert [h["epoch"] for h in hist] == [h["epoch"] for h in ref_hist] == [1, 2]
        for h, r in zip(hist, ref_hist):
            for k in r:
                if k.startswith("loss_"):  # per-rank contributions summed: the global batch's loss
                    assert math.isclose(h[k], r[k], rel_tol=1e-5), f"{name}: {k} {h[k]} vs {r[k]}"
                elif k.startswith("val_"):  # the same weights, so the same validation
                    assert h[k] == r[k], f"{name}: {k}"


def _pssr_resume_worker(rank: int, world: int, port: int, out_dir: str, clf_path: str, toml: str) -> None:
    """2 ranks: train_pssr straight through, and stopped after epoch 1 then rerun (resumed); then
    ``pssr train-pssr`` (training, sharded quick evaluation, summary). Rank 1 may write nothing."""
    import contextlib
    import io
    from pathlib import Path

    import pssr.utils
    from pssr.cli import main
    from pssr.data import load
    from pssr.defense import PSSR, PSSRConfig
    from pssr.train import pssr_train
    from pssr.train.classifier import load_classifier

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    if rank == 1:  # rank 0 alone writes: any write by rank 1 fails its run (and so the test)

        def refuse(*args, **kwargs):
            raise AssertionError("rank 1 wrote a file")

        pssr_train.save_checkpoint = pssr.utils.atomic_write_json = PSSR.save = refuse
    data, clf, out = load("digits"), load_classifier(clf_path), Path(out_dir)
    kw = dict(progress=False, classifier_spec=_PSSR_SPEC)
    cfg = PSSRConfig(**{**_PSSR_TINY, "train_subset": 128})
    straight = pssr_train.train_pssr(clf, data, cfg, out_dir=out / "straight", **kw)

    def stop(epoch: int, rec: dict) -> None:
        raise _Stop

    try:
        pssr_train.train_pssr(clf, data, cfg, out_dir=out / "cut", on_epoch_end=stop, **kw)
    except _Stop:
        pass
    ran: list[int] = []
    resumed = pssr_train.train_pssr(
        clf, data, cfg, out_dir=out / "cut", on_epoch_end=lambda e, r: ran.append(e), **kw
    )
    if rank == 0:
        torch.save(
            {
                "straight": _pssr_state(straight),
                "resumed": _pssr_state(resumed),
                "ran": ran,
                "history": resumed.metrics["history"],
            },
            out / "pssr-resume.pt",
        )
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # main() leaves the process group at the end
        rc = main(["train-pssr", "--config", toml, "--out", str(out / "cli"), "--no-progress"])
    (out / f"printed-{rank}.txt").write_text(f"{rc}\n{printed.getvalue()}")


def test_pssr_training_resumes_and_the_cli_writes_once_under_two_gloo_processes(
    tmp_path, monkeypatch, pssr_classifier
):
    import json

    from pssr.defense import PSSR

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    toml = tmp_path / "pssr-tiny.toml"
    toml.write_text(
        f'[data]\nname = "digits"\n[pssr]\nepochs = 1\ntrain_subset = 64\nval_size = 32\ngen_width = 8\n'
        f'scorer_width = 8\npgd_steps = 2\ndevice = "cpu"\n[run]\nclassifier = "{pssr_classifier}"\n'
        f"eval_n = 40\neval_steps = 2\nadaptive_n = 20\n"
    )
    mp.spawn(
        _pssr_resume_worker,
        args=(2, _free_port(), str(tmp_path), pssr_classifier, str(toml)),
        nprocs=2,
        join=True,
    )

    out = torch.load(tmp_path / "pssr-resume.pt", weights_only=True)
    assert out["ran"] == [1] and [h["epoch"] for h in out["history"]] == [
        1,
        2,
    ]  # epoch 2 only, after the state
    for k, v in out["straight"].items():
        assert torch.equal(out["resumed"][k], v), f"parameter {k} differs after resuming"
    loaded = PSSR.load(tmp_path / "cut" / "pssr.pt")
    assert all(torch.equal(v, out["resumed"][k]) for k, v in loaded.state_dict().items())

    assert (tmp_path / "printed-1.txt").read_text() == "0\n"  # rank 1 prints nothing
    rc, printed = (tmp_path / "printed-0.txt").read_text().split("\n", 1)
    assert rc == "0" and printed.startswith("pssr on digits (n=40")
    summary = json.loads((tmp_path / "cli" / "pssr-train.json").read_text())
    assert (
        summary["distributed"]["world_size"] == 2
        and summary["validation"]["distributed"]["backend"] == "gloo"
    )
    assert summary["test"]["n"] == 40 and summary["test"]["adaptive_n"] == 20
    assert PSSR.load(tmp_path / "cli" / "pssr.pt").metrics["test"] == summary["test"]


def _classifier_cli_worker(rank: int, world: int, port: int, out_dir: str, toml: str) -> None:
    import contextlib
    import io

    import pssr.utils
    from pssr.cli import main

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    if rank == 1:  # the summary JSON is rank 0's to write (as the checkpoint, by pssr.train.loop.fit)

        def refuse(*args, **kwargs):
            raise AssertionError("rank 1 wrote the summary")

        pssr.utils.atomic_write_json = refuse
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main(
            ["train-classifier", "--config", toml, "--out", os.path.join(out_dir, "clf"), "--no-progress"]
        )
    with open(os.path.join(out_dir, f"printed-{rank}.txt"), "w") as f:
        f.write(f"{rc}\n{printed.getvalue()}")


def test_train_classifier_cli_writes_and_prints_on_rank_0_only(tmp_path, monkeypatch):
    import json

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    toml = tmp_path / "clf.toml"
    toml.write_text(
        '[data]\nname = "digits"\n[classifier]\nmodel = "tiny-cnn"\nepochs = 1\nbatch_size = 64\nlr = 0.05\n'
        'augment = "none"\ndevice = "cpu"\n'
    )
    mp.spawn(_classifier_cli_worker, args=(2, _free_port(), str(tmp_path), str(toml)), nprocs=2, join=True)
    assert (tmp_path / "printed-1.txt").read_text() == "0\n"
    rc, printed = (tmp_path / "printed-0.txt").read_text().split("\n", 1)
    assert rc == "0" and printed.startswith("classifier tiny-cnn on digits")
    summary = json.loads((tmp_path / "clf" / "classifier.json").read_text())
    assert summary["epochs"] == 1 and "test_acc" in summary["metrics"]


def _reproduce_kw(tmp: str, results: str) -> dict:
    from pathlib import Path

    return dict(
        runs_dir=Path(tmp) / "runs",
        results_dir=Path(tmp) / results,
        quick=True,
        ablations=False,
        baselines=False,
        eval_n=24,
        progress=False,
        device="cpu",
        attacks={"linf": "fgsm,pgd-bpda"},
        full_split_clean=True,
        overrides=(
            "classifier.epochs=1",
            "pssr.epochs=1",
            "pssr.pgd_steps=2",
            "pssr.train_subset=120",
            "pssr.val_size=40",
            "run.eval_n=20",
            "run.adaptive_n=10",
            "run.eval_steps=2",
        ),
    )


def _reproduce_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import pssr.experiments.reproduce as R

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    if rank == 1:  # the results are rank 0's to write

        def refuse(*args, **kwargs):
            raise AssertionError("rank 1 wrote the preset's report")

        R.atomic_write_json = R.atomic_write_text = refuse
    res, is_main = D.run_and_leave(lambda: R.reproduce("digits", **_reproduce_kw(out_dir, "ddp")))
    assert is_main == (rank == 0)
    assert set(res["evaluations"]["linf"]["models"]) == {"none", "pssr"}


@pytest.mark.slow
def test_reproduce_under_two_gloo_processes_shards_the_evaluation(tmp_path, monkeypatch, one_thread):
    """A preset's evaluation under torchrun: every model and attack over the ranks, the report
    written once (rank 0) and equal to a one-process run's; the training steps are reused."""
    import json
    import shutil

    from pssr.data import load
    from pssr.experiments.reproduce import reproduce

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    reproduce("digits", **_reproduce_kw(str(tmp_path), "one"))
    shutil.rmtree(tmp_path / "runs" / "eval-linf")  # the two ranks evaluate from scratch
    (tmp_path / "runs" / "clean-full-split.json").unlink()
    mp.spawn(_reproduce_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    one, two = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "ddp"))
    assert one["training"].keys() == two["training"].keys()
    for name, info in one["evaluations"]["linf"]["models"].items():
        assert two["evaluations"]["linf"]["models"][name]["summary"] == info["summary"], name
    assert (tmp_path / "ddp" / "linf" / "report.json").is_file()
    # the whole split's clean accuracy, its batches dealt over the ranks: the same counts
    assert _without_timing(two["clean_full_split"]) == _without_timing(one["clean_full_split"])
    assert {e["n"] for e in one["clean_full_split"].values()} == {len(load("digits").test)}
