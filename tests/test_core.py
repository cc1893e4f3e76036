"""Core pieces: registry, configs, atomic checkpoints, CLI front, install/CI consistency."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pssr.cli import main
from pssr.config import ConfigError, apply_overrides, asdict, build
from pssr.registry import Registry
from pssr.utils import atomic_write_json, load_checkpoint, run_metadata, save_checkpoint, seed_everything

ROOT = Path(__file__).resolve().parents[1]


def test_registry_register_create_list_and_errors():
    reg: Registry[int] = Registry("thing")

    @reg.register("one")
    def one(k: int = 1) -> int:
        return k

    assert reg.create("one", k=3) == 3
    assert reg.list() == ["one"] and "one" in reg and len(reg) == 1
    with pytest.raises(ValueError, match="unknown thing 'two'.*one"):
        reg.create("two")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("one")(one)
    with pytest.raises(ValueError, match="lower-case"):
        reg.register("Bad")


@dataclasses.dataclass(frozen=True)
class _Inner:
    lr: float = 0.1  # learning rate
    steps: int = 3


@dataclasses.dataclass(frozen=True)
class _Cfg:
    name: str = "x"
    sizes: tuple[int, ...] = (1, 2)
    inner: _Inner = _Inner()
    flag: bool = False


def test_config_build_types_and_unknown_keys():
    cfg = build(_Cfg, {"name": "y", "sizes": [3, 4], "inner": {"lr": 1, "steps": 5}, "flag": True})
    assert cfg == _Cfg("y", (3, 4), _Inner(1.0, 5), True)
    assert asdict(cfg) == {"name": "y", "sizes": [3, 4], "inner": {"lr": 1.0, "steps": 5}, "flag": True}
    with pytest.raises(ConfigError, match="unknown config key.*inner.nope"):
        build(_Cfg, {"inner": {"nope": 1}})
    with pytest.raises(ConfigError, match="inner.steps: expected an integer"):
        build(_Cfg, {"inner": {"steps": "many"}})
    with pytest.raises(ConfigError, match="flag: expected true or false"):
        build(_Cfg, {"flag": 1})


def test_config_overrides_parse_toml_values():
    out = apply_overrides({"a": {"b": 1}}, ["a.b=2.5", "a.c=[1, 2]", "d.e=hello"])
    assert out == {"a": {"b": 2.5, "c": [1, 2]}, "d": {"e": "hello"}}
    with pytest.raises(ConfigError):
        apply_overrides({}, ["novalue"])


def test_checkpoint_roundtrip_weights_only_and_corrupt_file(tmp_path):
    obj = {"w": torch.arange(4.0), "config": {"a": 1, "b": [1, 2]}, "name": "m"}
    p = save_checkpoint(tmp_path / "sub" / "c.pt", obj)
    back = torch.load(p, weights_only=True)
    assert torch.equal(back["w"], obj["w"]) and back["config"] == obj["config"]
    assert load_checkpoint(p)["name"] == "m"
    assert not list(p.parent.glob("*.tmp")), "no temporary files left behind"
    bad = tmp_path / "bad.pt"
    bad.write_bytes(p.read_bytes()[:20])
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_with_code_objects_is_refused(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"f": _Inner()}, p)
    with pytest.raises(ValueError, match="evil.pt"):
        load_checkpoint(p)


def test_atomic_json_and_metadata(tmp_path):
    meta = run_metadata()
    assert {"pssr_version", "torch_version", "hardware", "git_revision"} <= set(meta)
    from pssr.utils import meta as meta_mod

    meta_mod._START.clear()
    assert "git_revision_at_start" not in run_metadata()
    meta_mod.note_start_revision()
    meta_mod._START["git_revision"] = "abc"  # what the process started from, kept however HEAD moves
    meta_mod.note_start_revision()  # a second call does not overwrite it
    assert run_metadata()["git_revision_at_start"] == "abc"
    meta_mod._START.clear()
    p = atomic_write_json(tmp_path / "m.json", {"meta": meta, "t": torch.tensor(1.5)})
    assert '"t": 1.5' in p.read_text()
    # the file gets the mode an ordinary open() would give it, not mkstemp's private 0600
    ref = tmp_path / "plain.txt"
    ref.write_text("x")
    assert p.stat().st_mode & 0o777 == ref.stat().st_mode & 0o777


def test_recorded_command_reads_as_typed(monkeypatch):
    from pssr.utils.meta import command_line

    for env in ("TORCHELASTIC_RUN_ID", "LOCAL_WORLD_SIZE", "WORLD_SIZE"):
        monkeypatch.delenv(env, raising=False)
    assert (
        command_line([".venv/bin/pssr", "evaluate", "--set", 'a.b="x y"'])
        == "pssr evaluate --set 'a.b=\"x y\"'"
    )
    module = ["/work/src/pssr/__main__.py", "reproduce", "--preset", "mnist-10k"]
    assert command_line(module) == "pssr reproduce --preset mnist-10k"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "r1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert (
        command_line(module) == "torchrun --nproc_per_node=2 --nnodes=2 -m pssr reproduce --preset mnist-10k"
    )
    assert command_line(["train.py", "--x"]) == "train.py --x"  # not the CLI: left as it is


def test_seed_everything_validates_and_repeats():
    seed_everything(3)
    a = torch.rand(3)
    seed_everything(3)
    assert torch.equal(a, torch.rand(3))
    with pytest.raises(ValueError, match="seed"):
        seed_everything(-1)


def test_cli_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert "pssr" in capsys.readouterr().out
    assert main([]) == 2


def test_python_dash_m_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "pssr", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("pssr ")


def test_ci_runs_the_readme_quick_start_commands():
    """.ci/run takes the Quick start's two bash blocks from README.md and runs them as written."""
    import re

    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    qs = readme[readme.index("## Quick start") :]
    qs = qs[: qs.index("\n## ", 3)]
    blocks = [b.strip() for b in re.findall(r"```bash\n(.*?)```", qs, re.S)]
    assert blocks == [
        "bash scripts/install.sh && .venv/bin/pssr demo",
        "bash scripts/install.sh --test && .venv/bin/python -m pytest -q",
    ]
    assert "README.md" in ci and "Quick start" in ci and 'bash -euo pipefail -c "$cmd"' in ci
