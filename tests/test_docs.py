"""The docs: the site builds with every link and anchor checked, and the README is a
short front door whose links all lead somewhere."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 300
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def build_site(config: Path, site: Path) -> subprocess.CompletedProcess:
    """``mkdocs build --strict`` of ``config`` into ``site``: any warning fails it."""
    command = ["build", "--strict", "--config-file", str(config), "--site-dir", str(site)]
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", *command],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )


def anchors(markdown: str) -> set[str]:
    """The anchors of a page's headings, as GitHub and mkdocs both spell them."""
    text = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    titles = re.findall(r"^#{1,6} (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", t.strip().lower()).replace(" ", "-") for t in titles}


def test_the_site_builds_with_links_and_anchors_checked(tmp_path):
    built = build_site(ROOT / "mkdocs.yml", tmp_path / "site")
    assert built.returncode == 0, built.stdout + built.stderr
    pages = {p.stem for p in (ROOT / "docs").glob("*.md")}
    assert {"index", "datasets", "training", "sweeps", "slurm", "analysis"} <= pages
    assert {"models", "benchmarks"} <= pages
    for page in pages - {"index"}:
        assert (tmp_path / "site" / page / "index.html").is_file(), page


def test_a_broken_link_or_anchor_fails_the_build(tmp_path):
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    page = tmp_path / "docs" / "datasets.md"
    broken = "\nSee [a](no-such-page.md), [b](training.md#no-such-part).\n"
    page.write_text(page.read_text() + broken)
    built = build_site(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert built.returncode != 0
    warnings = [line for line in (built.stdout + built.stderr).splitlines() if "WARNING" in line]
    assert any("no-such-page.md" in line for line in warnings), warnings
    assert any("no-such-part" in line for line in warnings), warnings


def test_the_readme_is_short_and_its_links_lead_somewhere():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    assert "make demo" in readme and "make test" in readme
    links = [t for t in LINK.findall(readme) if not re.match(r"[a-z]+:", t)]
    assert any(t.startswith("docs/") for t in links)
    for target in links:
        path, _, anchor = target.partition("#")
        file = ROOT / path if path else ROOT / "README.md"
        assert file.exists(), f"README.md links to {target}: no such file"
        if anchor:
            assert anchor in anchors(file.read_text()), f"README.md: {target}: no such heading"
