"""Strict configuration (issue 21 item 3): a typo in a config table, a --set key or a keyword argument
is an error naming the closest valid name, never a run with defaults; every training command shares
the same option names."""

from __future__ import annotations

from pathlib import Path

import pytest

import pssr
from pssr.cli import build_parser, main
from pssr.config import (
    COMMAND_SECTIONS,
    SECTIONS,
    ConfigError,
    check_overrides,
    check_sections,
    load_config,
    load_toml,
    section_keys,
)

ROOT = Path(__file__).resolve().parents[1]
CLF = "pssr train-classifier"


def _toml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


# ------------------------------------------------------------------ config files
def test_unknown_section_names_the_closest(tmp_path) -> None:
    cfg = _toml(tmp_path, '[data]\nname = "digits"\n[clasifier]\nepochs = 3\n')
    with pytest.raises(ConfigError, match=r"unknown section \[clasifier\] \(did you mean \[classifier\]\?\)"):
        load_config(cfg, command=CLF)


def test_unknown_section_is_an_error_for_every_command(tmp_path) -> None:
    # even a command that would not read it: no command of the project knows [evaluation]
    cfg = _toml(
        tmp_path, '[data]\nname = "digits"\n[pssr]\n[run]\nclassifier = "x.pt"\n[evaluation]\nn = 3\n'
    )
    with pytest.raises(ConfigError, match=r"unknown section \[evaluation\]"):
        load_config(cfg, command="pssr train-pssr")


def test_key_outside_any_table_names_its_table(tmp_path) -> None:
    cfg = _toml(tmp_path, "epochs = 3\n[data]\n")
    with pytest.raises(ConfigError, match=r"\[epochs\].*epochs is a key of \[classifier\]"):
        load_config(cfg)


def test_unknown_key_in_a_table_of_another_command_names_the_closest(tmp_path) -> None:
    # train-classifier does not read [pssr], but a misspelt key in it is still a typo
    cfg = _toml(tmp_path, '[data]\nname = "digits"\n[classifier]\n[pssr]\nratoi = 0.1\n')
    with pytest.raises(ConfigError, match=r"pssr\.ratoi.*did you mean pssr\.ratio\?"):
        load_config(cfg, command=CLF)


def test_table_of_another_command_is_fine(tmp_path) -> None:
    cfg = _toml(tmp_path, '[data]\nname = "digits"\n[classifier]\nepochs = 2\n[pssr]\nscorer = "whatever"\n')
    m = load_config(cfg, ["classifier.epochs=4"], command=CLF, requires="classifier")
    assert m["classifier"]["epochs"] == 4 and m["pssr"] == {"scorer": "whatever"}


def test_config_of_another_command_is_refused(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"no \[classifier\] table.*config for pssr train-pssr"):
        load_config(ROOT / "configs" / "pssr-digits.toml", command=CLF, requires="classifier")


def test_train_pssr_refuses_a_config_without_pssr_table(tmp_path, capsys) -> None:
    # a denoiser config has [data] and [run] too: train-pssr must not train PSSR's defaults from it
    cfg = _toml(tmp_path, '[data]\nname = "digits"\n[denoise]\nsigma = 0.5\n[run]\nclassifier = "c.pt"\n')
    assert main(["train-pssr", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert "no [pssr] table" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_quick_training_writes_beside_the_default_output() -> None:
    from pssr.cli.training import _out

    parse = build_parser().parse_args
    assert (
        str(_out(parse(["train-classifier", "--config", "configs/digits.toml", "--quick"])))
        == "runs/digits-quick"
    )
    assert str(_out(parse(["train-classifier", "--config", "configs/digits.toml"]))) == "runs/digits"


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_pass_the_strict_check(path: Path) -> None:
    check_sections(load_toml(path), source=str(path))


def test_every_section_resolves_to_its_dataclass() -> None:
    assert {"data", "classifier", "adv_train", "pssr", "run"} <= set(SECTIONS)
    assert "epochs" in section_keys("classifier") and "ratio" in section_keys("pssr")
    assert "adaptive_n" in section_keys("run", "pssr train-pssr") and "name" in section_keys("data")
    for command, tables in COMMAND_SECTIONS.items():  # every command reads [data] and its own table last
        assert list(tables)[0] == "data" and command.startswith("pssr train-")


# ------------------------------------------------------------------ --set overrides
def test_set_unknown_section_names_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"--set clasifier.epochs=3: unknown section.*\[classifier\]"):
        check_overrides(["clasifier.epochs=3"], CLF)


def test_set_misspelt_pssr_section_names_pssr() -> None:
    with pytest.raises(ConfigError, match=r"unknown section \[psr\] \(did you mean \[pssr\]\?\)"):
        check_overrides(["psr.epochs=3"], "pssr train-pssr")


def test_set_unknown_key_names_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"no key epoch \(did you mean classifier\.epochs\?\)"):
        check_overrides(["classifier.epoch=3"], CLF)


def test_set_section_the_command_does_not_read() -> None:
    with pytest.raises(ConfigError, match=r"reads \[data\], \[classifier\], not \[pssr\]"):
        check_overrides(["pssr.epochs=3"], CLF)


def test_set_without_section_suggests_one() -> None:
    with pytest.raises(ConfigError, match=r"section\.key=value \(did you mean classifier\.epochs\?\)"):
        check_overrides(["epochs=3"], CLF)


def test_cli_typo_in_set_exits_2_before_training(tmp_path, capsys) -> None:
    out = tmp_path / "o"
    rc = main(
        ["train-classifier", "--config", str(ROOT / "configs" / "digits.toml"), "--out", str(out)]
        + ["--set", "clasifier.epochs=3", "--no-progress"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "did you mean [classifier]?" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_train_pssr_typo_in_set_exits_2(tmp_path, capsys) -> None:
    rc = main(["train-pssr", "--config", str(ROOT / "configs" / "pssr-digits.toml"), "--set", "psr.epochs=3"])
    assert rc == 2 and "did you mean [pssr]?" in capsys.readouterr().err


def test_cli_typo_in_section_exits_2(tmp_path, capsys) -> None:
    cfg = _toml(tmp_path, '[data]\nname = "digits"\n[classifier]\n[clasifier]\nepochs = 3\n')
    assert main(["train-classifier", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert "did you mean [classifier]?" in capsys.readouterr().err


# ------------------------------------------------------------------ keyword arguments
def test_data_load_unknown_keyword_is_a_type_and_value_error() -> None:
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'n_train'.*subset"):
        pssr.data.load("fashion-mnist", n_train=2000)
    with pytest.raises(ValueError, match=r"'seeed' \(did you mean seed\?\)"):
        pssr.data.load("digits", seeed=1)


def test_data_load_unknown_name_names_the_closest() -> None:
    with pytest.raises(ValueError, match=r"did you mean fashion-mnist\?"):
        pssr.data.load("fashion-mnst")


def test_data_load_common_arguments_still_pass() -> None:
    # the [data] table passes data_dir / seed / val_fraction to every dataset
    d = pssr.data.load("digits", data_dir=None, seed=1, val_fraction=0.1)
    assert d.name == "digits" and len(d.test) > 0


# ------------------------------------------------------------------ shared option names
def _options(command: str) -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return {o for a in sub.choices[command]._actions for o in a.option_strings}


@pytest.mark.parametrize("command", ["train-classifier", "train-adversarial", "train-pssr"])
def test_training_commands_share_option_names(command: str) -> None:
    shared = {"--config", "--set", "--epochs", "--device", "--bf16", "--out", "--results", "--quick"}
    assert shared | {"--no-resume", "--no-progress"} <= _options(command)


def test_train_pssr_epochs_is_a_shortcut_for_set(tmp_path, monkeypatch) -> None:
    import pssr.experiments.pssr_train as pt

    seen = {}

    def fake(mapping, out, **kw):
        seen.update(mapping=mapping, out=out, results=kw["results"])
        raise ValueError("stop here")

    monkeypatch.setattr(pt, "run_from_config", fake)
    cfg = str(ROOT / "configs" / "pssr-digits.toml")
    assert main(["train-pssr", "--config", cfg, "--epochs", "3", "--device", "cpu"]) == 2
    assert seen["mapping"]["pssr"]["epochs"] == 3 and seen["mapping"]["pssr"]["device"] == "cpu"
    # --quick: a smoke run that writes beside, never over, the config's outputs
    assert main(["train-pssr", "--config", cfg, "--quick"]) == 2
    assert seen["mapping"]["pssr"]["epochs"] == 2 and seen["mapping"]["run"]["results"] == ""
    assert str(seen["out"]).endswith("-quick")
    # an explicit --epochs beats --quick's
    assert main(["train-pssr", "--config", cfg, "--quick", "--epochs", "5"]) == 2
    assert seen["mapping"]["pssr"]["epochs"] == 5


def test_summary_is_the_former_name_of_results() -> None:
    args = build_parser().parse_args(["train-classifier", "--config", "c.toml", "--summary", "s.json"])
    assert args.results == "s.json"
