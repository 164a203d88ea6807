"""README.md and DATASETS.md stay true: every dataset's error messages point at a section that
exists, and CI runs the test command README gives."""
from __future__ import annotations

import re

import datasets  # noqa: F401  (registers the datasets)
import demo  # noqa: F401  (registers the demo datasets)
from engine.data import DATASET_REGISTRY
from tests.conftest import REPO_ROOT


def github_anchor(heading: str) -> str:
    """The anchor GitHub derives from a Markdown heading."""
    anchor = heading.strip().lower()
    anchor = re.sub(r"[^\w\- ]", "", anchor)
    return anchor.replace(" ", "-")


def test_every_dataset_points_at_an_existing_datasets_md_section():
    text = (REPO_ROOT / "DATASETS.md").read_text()
    anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}
    # Only the project's datasets, the demo's included (tests register throw-away ones).
    names = [n for n in DATASET_REGISTRY.registered_names()
             if DATASET_REGISTRY.get(n).__module__.startswith(("datasets.", "demo."))]
    assert {"DemoShapes", "DemoShapesSketch", "DemoSymbols"} <= set(names)
    assert len(names) >= 15 + 19  # the CoOp suite, the ImageNet variants, VTAB-1K
    missing = {
        name: DATASET_REGISTRY.get(name).docs_ref()
        for name in names
        if DATASET_REGISTRY.get(name).docs_ref().split("#", 1)[1] not in anchors
    }
    assert not missing, missing


def test_ci_runs_the_test_command_that_readme_gives():
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    readme = (REPO_ROOT / "README.md").read_text()
    command = re.search(r"^(python -m pytest[^\n]*)$", ci, flags=re.M).group(1)
    assert command in readme
