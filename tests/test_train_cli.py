"""train.py: config assembly order, CoOp's flags, and clear errors for bad input."""
from __future__ import annotations

import pytest

import train
from tests.conftest import config_path, run_train


def parse(*argv: str):
    return train.build_parser().parse_args(list(argv))


def test_merge_order_method_file_over_dataset_file_flags_and_opts_over_both(tmp_path):
    cfg = train.setup_cfg(parse(
        "--dataset-config-file", config_path("datasets", "caltech101.yaml"),
        "--config-file", config_path("trainers", "CoOp", "vit_b16_ep50_ctxv1.yaml"),
        "--trainer", "CoOp", "--root", str(tmp_path), "--seed", "0",
        "OPTIM.MAX_EPOCH", "7", "TRAINER.COOP.N_CTX", "8",
    ))
    assert cfg.DATASET.NAME == "Caltech101"
    assert cfg.TRAINER.NAME == "CoOp" and cfg.DATASET.ROOT == str(tmp_path)
    assert cfg.OPTIM.MAX_EPOCH == 7 and cfg.TRAINER.COOP.N_CTX == 8
    assert cfg.TRAINER.COOP.CTX_INIT == "a photo of a"
    assert cfg.OPTIM.WARMUP_CONS_LR == pytest.approx(1e-5)  # "1e-5" in YAML is a string until literal_eval
    assert cfg.INPUT.SIZE == (224, 224)
    assert cfg.SEED == 0  # --seed 0 is honoured (the original silently dropped it)
    with pytest.raises(Exception):
        cfg.OPTIM.LR = 1.0  # frozen


def test_omitted_seed_keeps_the_config_value():
    cfg = train.setup_cfg(parse("SEED", "5"))
    assert cfg.SEED == 5
    assert train.setup_cfg(parse()).SEED == -1


def test_unknown_config_key_names_the_key_and_the_closest_valid_ones():
    with pytest.raises(KeyError, match=r"OPTIM\.LRR.*OPTIM\.LR"):
        train.setup_cfg(parse("OPTIM.LRR", "0.1"))


def test_unknown_trainer_key_in_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("TRAINER:\n  COOP:\n    N_CTXX: 4\n")
    with pytest.raises(KeyError, match=r"TRAINER\.COOP\.N_CTXX.*bad\.yaml.*TRAINER\.COOP\.N_CTX"):
        train.setup_cfg(parse("--config-file", str(bad)))


def test_unknown_trainer_suggests_the_closest_name(caltech_root, tiny_clip_path, tmp_path):
    with pytest.raises(KeyError, match="CoOp"):
        run_train([
            "--root", str(caltech_root), "--trainer", "CoOpp",
            "--dataset-config-file", config_path("datasets", "caltech101.yaml"),
            "--output-dir", str(tmp_path), "MODEL.BACKBONE.NAME", str(tiny_clip_path),
        ])


def test_missing_dataset_folder_says_where_and_how_to_fix(tiny_clip_path, tmp_path):
    empty_root = tmp_path / "no_data_here"
    empty_root.mkdir()
    with pytest.raises(Exception, match=r"caltech-101.*DATASETS\.md"):
        run_train([
            "--root", str(empty_root), "--trainer", "ZeroshotCLIP", "--eval-only",
            "--dataset-config-file", config_path("datasets", "caltech101.yaml"),
            "--config-file", config_path("trainers", "CoOp", "vit_b16.yaml"),
            "--output-dir", str(tmp_path / "out"), "MODEL.BACKBONE.NAME", str(tiny_clip_path),
        ])


def test_input_size_must_match_the_clip_resolution(caltech_root, tiny_clip_path, tmp_path):
    with pytest.raises(ValueError, match=r"INPUT\.SIZE \(224, 224\).*resolution 32.*INPUT\.SIZE \(32, 32\)"):
        run_train([
            "--root", str(caltech_root), "--trainer", "ZeroshotCLIP", "--eval-only",
            "--dataset-config-file", config_path("datasets", "caltech101.yaml"),
            "--config-file", config_path("trainers", "CoOp", "vit_b16.yaml"),
            "--output-dir", str(tmp_path), "MODEL.BACKBONE.NAME", str(tiny_clip_path),
            "DATALOADER.NUM_WORKERS", "0",
        ])


def test_config_yaml_holds_the_resolved_config(caltech_root, tiny_clip_path, tmp_path):
    import yaml

    run_train([
        "--root", str(caltech_root), "--trainer", "ZeroshotCLIP", "--eval-only",
        "--dataset-config-file", config_path("datasets", "caltech101.yaml"),
        "--config-file", config_path("trainers", "CoOp", "vit_b16.yaml"),
        "--output-dir", str(tmp_path), "MODEL.BACKBONE.NAME", str(tiny_clip_path),
        "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0", "TRAINER.ZSCLIP.PREC", "fp32",
    ])
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert written["TRAINER"]["NAME"] == "ZeroshotCLIP"
    assert written["MODEL"]["BACKBONE"]["NAME"] == str(tiny_clip_path)
    assert written["DATASET"]["NAME"] == "Caltech101"
