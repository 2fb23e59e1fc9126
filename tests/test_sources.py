"""Every dataset kind answers the DatasetSource questions as zoo.data._source promises."""

from __future__ import annotations

import re

import pytest

from zoo import data
from zoo.cli import main

GENERATOR = {"image_size": 32, "field_nm": 6.4, "count": 4}
# kind -> (declaration, stored, streamed, parts, files, has a digest, Å per pixel)
KINDS = {
    "generator": (GENERATOR, True, False, (), (), True, 2.0),
    "files": ({"path": "images", "pixel_size_a": 0.5}, True, False, (), ("images",), False, 0.5),
    "one file, no pixel size": ({"path": "/a/s.tif"}, True, False, (), ("/a/s.tif",), False, None),
    "mixture": ({"mix": {"b": 2, "a": 1}}, False, False, ("b", "a"), (), False, None),
    "streamed": ({**GENERATOR, "stream": {"samples_per_epoch": 8}}, False, True, (), (), True, 2.0),
}  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_answers_the_protocol_questions_as_documented(kind):
    declaration, stored, streamed, parts, files, has_digest, pixel_size = KINDS[kind]
    source = data.dataset_source(declaration, f"datasets.{kind}")
    assert isinstance(source, data.DatasetSource)
    assert (source.stored, source.streamed) == (stored, streamed)
    assert (source.parts(), source.files()) == (parts, files)
    assert source.pixel_size_a == pixel_size
    digest = source.digest()
    assert (digest is not None) == has_digest
    if has_digest:  # from the declaration alone: equal declarations, equal identities
        assert re.fullmatch("[0-9a-f]{16}", digest)
        assert data.dataset_source(declaration, "again").digest() == digest
        changed = data.dataset_source({**declaration, "count": 5}, "changed")
        assert changed.digest() != digest


def test_the_kinds_tested_are_every_kind_zoo_declares():
    made = {type(data.dataset_source(d[0], "d")) for d in KINDS.values()}
    assert made == {data.GeneratorSpec, data.FileSpec, data.MixSpec, data.StreamedSpec}


def test_only_a_generator_has_a_cache_folder_known_before_it_is_made(project):
    folders = {
        kind: data.dataset_folder(kind, data.dataset_source(d[0], kind), project)
        for kind, d in KINDS.items()
    }
    generator = data.dataset_source(GENERATOR, "generator")
    assert folders.pop("generator") == project.dataset(generator.digest())
    assert set(folders.values()) == {None}  # files: once read; mixture, streamed: never


def test_an_empty_mixture_is_refused_naming_the_field(project, capsys):
    spec = project.root / "datasets.yaml"
    spec.write_text("datasets:\n  m: {mix: {}}\n")
    assert main(["data", "make", str(spec)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "datasets.m.mix" in error
    assert not project.datasets.exists()
