"""What a new user meets first (issue 14, item 11): a license, a citation, and a README that
starts with a quick start whose commands exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_license_and_citation_are_shipped():
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License")
    assert 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text()
    citation = (ROOT / "CITATION.cff").read_text()
    assert "cff-version:" in citation and "SpaceNet" in citation and "Sokar" in citation


def test_readme_starts_with_a_quick_start_of_real_commands():
    readme = (ROOT / "README.md").read_text()
    sections = re.findall(r"^## (.+)$", readme, flags=re.M)
    assert sections[0] == "Quick start"
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert 'pip install -e ".[dev]"' in quick
    for module in re.findall(r"python -m ([\w.]+)", quick):
        assert (ROOT / (module.replace(".", "/") + ".py")).exists(), module
    assert "results.json" in quick and "--out" in quick


def test_every_module_the_readme_runs_exists():
    """Every ``python -m X`` in the README names a module of this repository (a renamed or
    removed experiment must take its README commands with it)."""
    readme = (ROOT / "README.md").read_text()
    modules = {m.rstrip(".") for m in re.findall(r"python -m ([\w.]+)", readme)}
    assert "experiments.split_cifar10" in modules
    missing = [m for m in sorted(modules)
               if not (ROOT / (m.replace(".", "/") + ".py")).exists()
               and not (ROOT / m.replace(".", "/") / "__init__.py").exists()]
    assert missing == []
