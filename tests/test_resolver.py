"""Pure configs: a config is resolved against the project and store it is given (a
Resolver), never against the working directory or a process-wide store."""

from __future__ import annotations

import pickle
from dataclasses import replace

import pytest
import yaml
from conftest import TINY_DATA, tiny_spec_document

from zoo.config import Resolver, resolve
from zoo.errors import ConfigError
from zoo.paths import ProjectPaths
from zoo.sweep import load_spec, make_plan


def _document(init: str = "random") -> dict:
    return {
        "experiment": "pure",
        "datasets": {"a": {**TINY_DATA, "defocus_nm": 0}},
        "stages": [{"name": "s", "train": "a", "size": 4, "epochs": 1, "init": init}],
    }


def test_a_config_is_identified_in_the_project_it_is_given_not_the_working_directory(
    project, tmp_path_factory, monkeypatch
):
    (project.root / "w.safetensors").write_bytes(b"weights")
    document = _document("file:w.safetensors")
    here = resolve(document, resolver=Resolver(project))
    elsewhere = tmp_path_factory.mktemp("elsewhere")  # no w.safetensors there
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("ZOO_ROOT", str(elsewhere))
    assert resolve(document, resolver=Resolver(project)).digest() == here.digest()
    with pytest.raises(ConfigError, match=r"config.stages.0.init: .* is not a file"):
        resolve(document, resolver=Resolver(ProjectPaths(elsewhere)))
    (project.root / "w.safetensors").write_bytes(b"other weights")
    assert resolve(document, resolver=Resolver(project)).digest() != here.digest()


def test_an_init_run_without_a_store_to_ask_is_refused_in_one_line(project):
    with pytest.raises(ConfigError) as error:
        resolve(_document("run:0123abcd"), resolver=Resolver(project))
    message = str(error.value)
    assert message.startswith("config.stages.0.init: 'run:0123abcd' is not allowed")
    assert "no store" in message and "\n" not in message


def test_the_resolver_travels_with_a_config_but_is_no_part_of_it(project):
    config = resolve(_document(), resolver=Resolver(project, "sqlite:///elsewhere.db"))
    assert "resolver" not in config.to_dict()
    copy = pickle.loads(pickle.dumps(replace(config, seed=3)))  # as a worker receives it
    assert copy.resolver == config.resolver and copy.digest() != config.digest()
    with pytest.raises(ConfigError, match=r"config\.resolver: unknown key"):
        resolve({**_document(), "resolver": "x"}, resolver=Resolver(project))


def test_each_seed_of_a_sweep_gets_the_config_its_own_document_gives(project):
    spec = tiny_spec_document(sources=("a",), freezes=("none",))
    spec |= {"seeds": [4, 8], "set": {**spec["set"], "stages.0.size": "$seed"}}
    (project.root / "seeded.yaml").write_text(yaml.safe_dump(spec))
    plan = make_plan(load_spec(project.root / "seeded.yaml", resolver=Resolver(project)))
    assert [(r.config.seed, r.config.stages[0].size) for r in plan.runs] == [(4, 4), (8, 8)]
    plain = tiny_spec_document(sources=("a",), freezes=("none",)) | {"seeds": [4, 8]}
    (project.root / "plain.yaml").write_text(yaml.safe_dump(plain))
    for run in make_plan(load_spec(project.root / "plain.yaml")).runs:
        document = {**plain["base"], "experiment": "tiny", "seed": run.names["seed"]}
        document["stages"] = [dict(s) for s in document["stages"]]
        document["stages"][0]["train"], document["stages"][1]["freeze"] = "a", "none"
        assert resolve(document, resolver=Resolver(project)).digest() == run.config.digest()


def test_below_the_cli_nothing_falls_back_to_the_default_project(
    tiny_spec, project, monkeypatch, capsys
):
    """The CLI decides the project once (``$ZOO_ROOT`` or the working directory) and hands
    it down: a sweep, its analysis, its listing, a model's card and a prediction never ask
    ProjectPaths.default() below zoo.cli in this process (a worker's job carries its root)."""
    import sys

    import numpy

    from zoo.cli import main

    real, askers = ProjectPaths.default, []

    def default() -> ProjectPaths:
        caller = sys._getframe(1)
        if not caller.f_globals["__name__"].startswith("zoo.cli"):
            chain = [sys._getframe(i).f_code.co_qualname for i in range(1, 5)]
            askers.append(f"{caller.f_globals['__name__']}: {' <- '.join(chain)}")
        return real()

    monkeypatch.setattr(ProjectPaths, "default", staticmethod(default))
    spec = str(tiny_spec(sources=("a",), freezes=("none",)))
    assert main(["sweep", "run", spec, "--workers", "1"]) == 0
    assert main(["analyze", spec, "--out", str(project.root / "report")]) == 0
    assert main(["models", "list", spec, "--limit", "1"]) == 0
    assert main(["models", "show", "tiny"]) == 0
    numpy.save(project.root / "image.npy", numpy.random.default_rng(0).random((32, 32)))
    out = str(project.root / "predicted")
    assert main(["predict", "tiny", str(project.root / "image.npy"), "--out", out]) == 0
    assert askers == []
