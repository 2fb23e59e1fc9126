"""The command line's habits from peers: ``--version``, shell completion generated from
the parser, and "did you mean" on the model zoo's ``--where``."""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys

import pytest

from zoo import cli
from zoo._completion import script

HEAVY = ("torch", "mlflow", "pandas", "seaborn")


@pytest.mark.parametrize(
    "argv", [["--version"], ["completion", "bash"], ["completion", "zsh"]], ids=" ".join
)
def test_version_and_completion_exit_0_without_heavy_imports(argv):
    code = (
        "import sys; from zoo import cli\n"
        f"try:\n    code = cli.main({argv!r})\nexcept SystemExit as exit:\n    code = exit.code\n"
        f"print('exit', code, sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    *printed, last = done.stdout.splitlines()
    assert last == "exit 0 []", done.stdout + done.stderr
    if argv == ["--version"]:
        assert printed == [f"zoo {importlib.metadata.version('zoo')}"]
    else:
        assert "_zoo()" in done.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["models", "show", "best"],
        ["models", "export", "best", "--out", "exported"],
        ["models", "register", "best", "--name", "hrtem"],
        ["predict", "best", ".", "--out", "predicted"],
    ],
    ids=" ".join,
)
def test_model_commands_fail_on_a_missing_store_before_heavy_imports(argv, tmp_path):
    """Input a command can check without a store fails fast (exit 2, one line), before
    torch, MLflow or pandas are imported."""
    code = (
        "import sys; from zoo import cli\n"
        f"code = cli.main({argv!r})\n"
        f"print('exit', code, sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.stdout.splitlines()[-1] == "exit 2 []", done.stdout + done.stderr
    assert "mlflow.db does not exist" in done.stderr and len(done.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_predict_of_a_missing_input_fails_before_heavy_imports(tmp_path):
    code = (
        "import sys; from zoo import cli\n"
        "code = cli.main(['predict', 'best', 'nosuch.mrc', '--out', 'o'])\n"
        f"print('exit', code, sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    (tmp_path / "mlflow.db").write_bytes(b"")
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.stdout.splitlines()[-1] == "exit 2 []", done.stdout + done.stderr
    assert done.stderr.strip() == "zoo: error: nosuch.mrc: no such file or folder"


def _subcommands(parser: argparse.ArgumentParser, path: str = "zoo") -> dict[str, list[str]]:
    """Command path -> its subcommands, read from the parser itself."""
    found: dict[str, list[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found[path] = list(action.choices)
            for name, child in action.choices.items():
                found.update(_subcommands(child, f"{path} {name}"))
    return found


def _completed(shell: list[str], source: str, lines: list[str]) -> list[str]:
    done = subprocess.run([*shell, "\n".join([source, *lines])], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_bash_completes_every_command_and_subcommand_of_the_parser():
    tree = _subcommands(cli._parser())
    assert len(tree) >= 5 and tree["zoo sweep"][:2] == ["plan", "run"]
    probes = [
        f"COMP_WORDS=({path} ''); COMP_CWORD={len(path.split())}; _zoo; echo \"${{COMPREPLY[*]}}\""
        for path in tree
    ]
    probes.append('COMP_WORDS=(zoo sweep plan --pro); COMP_CWORD=3; _zoo; echo "${COMPREPLY[*]}"')
    *listed, option = _completed(["bash", "-c"], script(cli._parser(), "bash"), probes)
    assert dict(zip(tree, (line.split() for line in listed), strict=True)) == tree
    assert option == "--profile"


def test_completion_is_generated_from_the_parser_as_it_is():
    parser = cli._parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands.add_parser("fly", help="a command added after zoo was written")
    for shell in ("bash", "zsh"):
        assert "fly" in script(parser, shell) and "fly" not in script(cli._parser(), shell)


@pytest.mark.skipif(shutil.which("zsh") is None, reason="needs zsh")
def test_zsh_completes_commands_with_their_help_options_and_files():
    stubs = (
        "compdef() { :; }; _describe() { echo ${(P)4}; }; compadd() { echo ${(P)2}; }; "
        "_files() { echo FILES; }"
    )
    probes = [
        "words=(zoo swe); CURRENT=2; PREFIX=swe; _zoo",
        "words=(zoo sweep plan --pr); CURRENT=4; PREFIX=--pr; _zoo",
        "words=(zoo sweep plan ''); CURRENT=4; PREFIX=''; _zoo",
    ]
    lines = _completed(["zsh", "-c"], stubs + "\n" + script(cli._parser(), "zsh"), probes)
    assert "sweep:plan, run and follow sweeps" in lines[0] and "train:" in lines[0]
    assert "--profile" in lines[1].split() and "--show" in lines[1].split()
    assert lines[2] == "FILES"


def test_where_names_the_closest_axis():
    import pandas as pd

    from zoo.errors import ConfigError
    from zoo.modelzoo import filter_models

    table = pd.DataFrame({"run_id": ["a"], "freeze": ["none"], "size": [8]})
    with pytest.raises(ConfigError, match=r"AXIS one of .*freeze.*; did you mean 'freeze'\?$"):
        filter_models(table, ["frezee=none"])
