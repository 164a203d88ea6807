"""A demo row end to end: `reproduce run` through the runner reproduces our own measured number,
`list` shows it; the same run with another few-shot sample or another normalisation misses it,
and `reproduce diff` names the change first."""
from __future__ import annotations

import glob
import json
import os
import shutil
from pathlib import Path

import pytest

from reproduce.__main__ import main
from reproduce.record import read_record
from tests.conftest import run_train
from tests.demo.conftest import demo_cfg

ROW = "demo-coop-fewshot-demoshapes-acc"


@pytest.fixture(scope="module")
def hash_cache(tmp_path_factory):
    """File digests cached in a temporary file, not in the home folder (the runner's jobs inherit it)."""
    path = str(tmp_path_factory.mktemp("hash") / "sha256.json")
    old = os.environ.get("CLIP_ADAPT_HASH_CACHE")
    os.environ["CLIP_ADAPT_HASH_CACHE"] = path
    yield path
    if old is None:
        os.environ.pop("CLIP_ADAPT_HASH_CACHE")
    else:
        os.environ["CLIP_ADAPT_HASH_CACHE"] = old


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    """A data root with DemoShapes only (the row's dataset)."""
    from demo.make_data import DEMO_DATASETS, write_dataset

    root = tmp_path_factory.mktemp("demo_data")
    write_dataset(DEMO_DATASETS["demo_shapes"], str(root))
    return root


@pytest.fixture(scope="module")
def reproduced(demo_root, tmp_path_factory, hash_cache):
    """`python -m reproduce run ROW` on the demo world: (exit status, the run's folder, the record file)."""
    out = tmp_path_factory.mktemp("reproduce")
    record = out / "reproduced.csv"
    status = main(["--record", str(record), "run", ROW, "--root", str(demo_root), "--output", str(out / "runs"),
                   "--cpu-workers", "1"])
    runs = glob.glob(str(out / "runs" / "outputs" / "**" / "results.json"), recursive=True)
    assert len(runs) == 1, runs
    return status, Path(runs[0]).parent, record


def rerun(run_dir: Path, out: Path, *opts: str) -> Path:
    """The reproduced run again (its full config.yaml), with `opts` changed, in-process."""
    run_train(["--config-file", str(run_dir / "config.yaml"), "--output-dir", str(out), *opts])
    return out


def test_demo_row_runs_end_to_end_and_is_recorded(reproduced, capsys):
    status, run_dir, record = reproduced
    assert status == 0
    rec = read_record(str(record))[ROW]
    assert rec.within and rec.seeds == "1"
    card = json.loads((run_dir / "results.json").read_text())["provenance"]
    assert card["checkpoint"]["evaluated"] == "last" and card["checkpoint"]["epoch"] == 6
    assert card["data"]["fewshot_sample"]["images"] == 2 * 48 and card["backbone"]["sha256"]
    assert main(["--record", str(record), "list", "--method", "CoOp", "--protocol", "fewshot"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(ROW))
    assert f"{rec.ours:.2f} (within ±0.5, {rec.date})" in line


def test_another_few_shot_sample_fails_and_diff_names_it(reproduced, demo_root, tmp_path, capsys):
    _, run_dir, _ = reproduced
    # The seed-2 sample, put where the seed-1 run looks for its sample.
    from engine.data import DATASET_REGISTRY

    DATASET_REGISTRY.get("DemoShapes")(demo_cfg(demo_root, **{"DATASET.NUM_SHOTS": 2, "SEED": 2,
                                                              "DATASET.FEWSHOT_CACHE_DIR": str(tmp_path / "gen")}))
    (tmp_path / "cache" / "demo_shapes").mkdir(parents=True)
    shutil.copy(tmp_path / "gen" / "demo_shapes" / "shot_2-seed_2.pkl", tmp_path / "cache" / "demo_shapes" / "shot_2-seed_1.pkl")
    other = rerun(run_dir, tmp_path / "run", "DATASET.FEWSHOT_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["--record", str(tmp_path / "rec.csv"), "check", str(other), "--rows", ROW]) == 1
    assert "NO" in capsys.readouterr().out
    assert main(["diff", str(run_dir), str(other)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[3].startswith("  1. few-shot sample: A ")
    # The cache folder is a location, not a setting: nothing else about the recipe differs (the code
    # state may, if files are edited while the tests run).
    assert all(line.split(". ", 1)[1].startswith(("uncommitted", "code")) for line in lines[4:]), lines


def test_another_normalisation_fails_and_diff_names_it(reproduced, tmp_path, capsys):
    _, run_dir, _ = reproduced
    other = rerun(run_dir, tmp_path / "run", "INPUT.PIXEL_MEAN", "[0.485, 0.456, 0.406]",
                  "INPUT.PIXEL_STD", "[0.229, 0.224, 0.225]")  # ImageNet's statistics instead of CLIP's
    assert main(["--record", str(tmp_path / "rec.csv"), "check", str(other), "--rows", ROW]) == 1
    capsys.readouterr()
    assert main(["diff", str(run_dir), str(other)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[3].startswith("  1. train transforms: A Normalize(mean=[0.48145466") and "B Normalize(mean=[0.485" in lines[3]
    assert lines[4].startswith("  2. test transforms:")
    assert {line.split(":")[0].strip() for line in lines[5:7]} == {"3. config INPUT.PIXEL_MEAN", "4. config INPUT.PIXEL_STD"}
