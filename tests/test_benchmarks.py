"""Smoke test of the benchmark scripts: ``--quick`` runs end to end and writes the documented JSON.

Benchmarks, not timed tests: nothing here asserts a speed, only that every row is there and holds
finite positive numbers, and that the environment a reader needs (versions, threads, CPU, load) is
recorded.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    """The benchmarks/ modules, imported with the repository root as the working directory (they read configs/)."""
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(BENCH))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.random.fork_rng():
        yield {name: importlib.import_module(name) for name in ("run_all", "bench_train", "bench_purify")}
    torch.set_num_threads(n)
    for name in ("run_all", "bench_train", "bench_purify", "common"):
        sys.modules.pop(name, None)


def _positive(row: dict, *keys: str) -> None:
    for k in keys:
        assert isinstance(row[k], float) and math.isfinite(row[k]) and row[k] > 0, (k, row)


def test_run_all_quick_writes_both_sections(bench, tmp_path):
    out = tmp_path / "benchmarks.json"
    assert (
        bench["run_all"].main(
            [
                "--quick",
                "--out",
                str(out),
                "--config",
                "configs/pssr-fashion-mnist.toml",
                "--config",
                "configs/pssr-digits.toml",
            ]
        )
        == 0
    )
    doc = json.loads(out.read_text())
    assert {"purification", "training", "environment", "metadata", "data"} <= set(doc)
    assert doc["quick"] is True and "random" in doc["data"]

    env = doc["environment"]
    assert env["torch_version"] == str(torch.__version__)
    assert env["torch_threads"] == 1
    assert "cpu_model" in env and isinstance(env["cpu_bf16_flags"], list)
    for k in ("load_average_1min_start", "load_average_1min_end"):
        assert env[k] is None or env[k] >= 0

    assert [p["image_shape"] for p in doc["purification"]] == [[1, 28, 28], [1, 8, 8]]
    pur = doc["purification"][0]
    assert pur["quick"] is True and "random" in pur["data"]
    models = ["classifier", "pssr", "jpeg", "bit-depth", "median", "tvm", "tvm-art"]
    assert {(r["model"], r["precision"], r["batch"]) for r in pur["rows"]} == {
        (m, p, b) for m in models for p in ("fp32", "bf16") for b in (1, 8)
    }
    for r in pur["rows"]:
        _positive(r, "latency_ms", "images_per_s")
    assert (
        pur["baseline_configs"]["tvm"]["impl"] == "torch"
        and pur["baseline_configs"]["tvm-art"]["impl"] == "art"
    )

    tr = doc["training"]
    assert tr["quick"] is True and "random" in tr["data"]
    keys = {(r["workload"], r["setting"], r["precision"]) for r in tr["rows"]}
    expected = {
        (w, s, p)
        for w in ("classifier", "pgd-at", "pssr")
        for s in ("mnist-style", "cifar")
        for p in ("fp32", "bf16")
    } | {("pssr-adv-cache", s, "fp32") for s in ("mnist-style", "cifar")}
    assert keys == expected
    for r in tr["rows"]:
        _positive(r, "median_step_s", "images_per_s")
        assert r["steps_timed"] == 1 and r["batch"] == 8
        assert r["epoch_images"] == (60_000 if r["setting"] == "mnist-style" else 50_000)
        per_run = r["workload"] == "pssr-adv-cache"
        _positive(r, "seconds_once_per_run" if per_run else "seconds_per_epoch")
        assert r["seconds_per_epoch" if per_run else "seconds_once_per_run"] is None
        assert r["seconds_once_per_run" if per_run else "seconds_per_epoch"] == pytest.approx(
            r["epoch_images"] / r["images_per_s"]
        )


def test_run_all_refuses_one_checkpoint_for_several_configs(bench, tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench["run_all"].main(["--quick", "--checkpoint", "x.pt", "--out", str(tmp_path / "b.json")])
    assert "--checkpoint needs exactly one --config" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


def test_bench_train_alone_and_its_argument_checks(bench, tmp_path):
    out = tmp_path / "train.json"
    assert bench["bench_train"].main(["--quick", "--workloads", "classifier", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert {r["workload"] for r in doc["training"]["rows"]} == {"classifier"}
    assert "load_average_1min_start" in doc["environment"]
    dev = torch.device("cpu")
    with pytest.raises(ValueError, match="unknown workload"):
        bench["bench_train"].run_training(device=dev, workloads=("nope",))
    with pytest.raises(ValueError, match="steps"):
        bench["bench_train"].run_training(device=dev, steps=0)
    with pytest.raises(ValueError, match="row_budget_s"):
        bench["bench_train"].run_training(device=dev, row_budget_s=-1.0)
    with pytest.raises(ValueError, match="repeats"):
        bench["bench_purify"].run_purification("configs/pssr-fashion-mnist.toml", device=dev, repeats=0)
