"""The registry file: well-formed rows with sources, internally consistent numbers, row selection."""
from __future__ import annotations

import dataclasses

import pytest

from engine.errors import ConfigValueError
from reproduce.__main__ import main
from reproduce.registry import check_registry, load_registry, select_rows


@pytest.fixture(scope="module")
def rows():
    return load_registry()


def test_every_row_is_well_formed_and_names_its_source(rows):
    assert check_registry(rows) == []
    assert len({r.id for r in rows}) == len(rows)
    for r in rows:
        where = r.source.lower()
        assert any(word in where for word in ("paper", "readme", "repo", "exp.log", "demo measurement")), r.id


def test_h_rows_are_the_harmonic_mean_of_their_base_and_new(rows):
    # Values are printed with 2 decimals: base and new are each off by <= 0.005, which moves their
    # harmonic mean by <= 0.005 (its partial derivatives are < 1 for positive inputs), and H itself
    # is rounded by <= 0.005: 0.01 in all. Rows whose setting carries a note are printed anomalies.
    setting = lambda r: (r.method, r.protocol, r.dataset, r.backbone, r.shots, r.source)  # noqa: E731
    noted = {setting(r) for r in rows if r.note}
    by_setting: dict = {}
    for r in rows:
        if r.metric in ("base", "new", "H"):
            by_setting.setdefault(setting(r), {})[r.metric] = r.value
    checked = 0
    for key, v in by_setting.items():
        if key in noted or len(v) < 3:
            continue
        assert abs(2 * v["base"] * v["new"] / (v["base"] + v["new"]) - v["H"]) <= 0.01, key
        checked += 1
    assert checked > 250


def test_differing_numbers_of_two_papers_both_stay(rows):
    caltech_new = {r.source.split(" (")[0]: r.value for r in rows
                   if r.method == "CoOp" and r.dataset == "caltech101" and r.metric == "new" and "re-run" not in r.source}
    assert caltech_new == {"Skip Tuning paper": 89.31, "CoCoOp paper": 89.81}


def test_methods_not_yet_merged_have_rows(rows):
    assert {"MaPLe", "PromptSRC", "KgCoOp+DePT", "TaskRes", "CLIP-Adapter", "DyT"} <= {r.method for r in rows}


def test_check_registry_names_each_problem(rows):
    good = rows[0]
    bad = [good, dataclasses.replace(good, metric="top5"), dataclasses.replace(good, id="x", source=""),
           dataclasses.replace(good, id="y", kind="demo")]
    problems = check_registry(bad)
    assert any(good.id in p and "repeated" in p for p in problems)
    assert any("metric 'top5'" in p for p in problems)
    assert any(p.startswith("row x: source is empty") for p in problems)
    assert any(p.startswith("row y:") and "demo measurement" in p for p in problems)


def test_select_rows_by_pattern_and_unknown_ids(rows):
    picked = select_rows(rows, ["coop-b2n-*-H-skiptuning"])
    assert len(picked) == 12 and all(r.metric == "H" and r.method == "CoOp" for r in picked)
    with pytest.raises(ConfigValueError, match="coop-b2n-average-H-skiptuning"):
        select_rows(rows, ["coop-b2n-average-H-skiptunin"])


def test_bad_row_id_is_one_error_line(capsys):
    assert main(["run", "no-such-row", "--root", "."]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No registry row matches 'no-such-row'") and "Traceback" not in err
