"""Config defaults and yacs-style merging with clear errors."""
import pytest
from yacs.config import CfgNode as YacsCN

from engine.config import (
    CN,
    ConfigKeyError,
    ConfigTypeError,
    cfg_to_yaml,
    get_cfg_default,
    merge_from_file,
    merge_from_list,
)


def _write(tmp_path, text, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_defaults_match_dassl_and_project_keys():
    cfg = get_cfg_default()
    assert isinstance(cfg, YacsCN)
    assert cfg.SEED == -1 and cfg.OUTPUT_DIR == "./output" and cfg.USE_CUDA is True
    assert cfg.INPUT.SIZE == (224, 224) and cfg.INPUT.INTERPOLATION == "bilinear"
    assert cfg.INPUT.RRCROP_SCALE == (0.08, 1.0)
    assert cfg.OPTIM.NAME == "adam" and cfg.OPTIM.LR == 0.0003
    assert cfg.OPTIM.SGD_DAMPNING == 0  # misspelt key is public
    assert cfg.OPTIM.ADAM_BETA2 == 0.999 and cfg.OPTIM.STEPSIZE == (-1,)
    assert cfg.OPTIM.WARMUP_CONS_LR == 1e-5 and cfg.OPTIM.WARMUP_RECOUNT is True
    assert cfg.DATALOADER.TRAIN_X.N_INS == 16 and cfg.DATALOADER.TEST.SAMPLER == "SequentialSampler"
    assert cfg.TEST.FINAL_MODEL == "last_step" and cfg.TEST.EVALUATOR == "Classification"
    assert cfg.DATASET.SUBSAMPLE_CLASSES == "all"
    assert cfg.TEST.SAVE_PREDICTIONS is False and cfg.DATASET.FEWSHOT_CACHE_DIR == ""
    assert cfg.TRAINER.NAME == ""


def test_get_cfg_default_returns_independent_copies():
    a = get_cfg_default()
    a.OPTIM.LR = 1.0
    a.TRAINER.COOP = CN()
    b = get_cfg_default()
    assert b.OPTIM.LR == 0.0003 and "COOP" not in b.TRAINER


def test_yaml_merge_literal_eval_semantics(tmp_path):
    cfg = get_cfg_default()
    path = _write(
        tmp_path,
        "OPTIM:\n  NAME: sgd\n  WARMUP_CONS_LR: 1e-5\n  LR: 0.002\n  STEPSIZE: [3, 6]\n"
        "INPUT:\n  SIZE: (32, 32)\n  TRANSFORMS: [random_flip, normalize]\n"
        "DATASET:\n  NUM_SHOTS: 16\n",
    )
    cfg.merge_from_file(path)  # the method goes through our strict wrapper
    assert cfg.OPTIM.NAME == "sgd"
    assert isinstance(cfg.OPTIM.WARMUP_CONS_LR, float) and cfg.OPTIM.WARMUP_CONS_LR == 1e-5
    assert cfg.INPUT.SIZE == (32, 32) and isinstance(cfg.INPUT.SIZE, tuple)
    assert cfg.OPTIM.STEPSIZE == (3, 6) and isinstance(cfg.OPTIM.STEPSIZE, tuple)  # list -> tuple
    assert cfg.INPUT.TRANSFORMS == ("random_flip", "normalize")
    assert cfg.DATASET.NUM_SHOTS == 16


def test_list_merge_and_none(tmp_path):
    cfg = get_cfg_default()
    merge_from_list(cfg, ["OPTIM.LR", "0.5", "SEED", "3", "OPTIM.SGD_NESTEROV", "True", "MODEL.INIT_WEIGHTS", "None"])
    assert cfg.OPTIM.LR == 0.5 and cfg.SEED == 3 and cfg.OPTIM.SGD_NESTEROV is True
    assert cfg.MODEL.INIT_WEIGHTS is None
    merge_from_list(cfg, [])  # no-op
    merge_from_list(cfg, None)


def test_unknown_key_from_command_line_names_key_source_and_suggestion():
    cfg = get_cfg_default()
    with pytest.raises(ConfigKeyError) as ei:
        cfg.merge_from_list(["OPTIM.LRR", "0.1"])
    assert isinstance(ei.value, KeyError)
    msg = str(ei.value)
    assert "Unknown config key 'OPTIM.LRR' (from command line). Did you mean: OPTIM.LR" in msg
    assert "OPTIM," not in msg.split("Did you mean:")[1].split("?")[0]  # ancestors are not suggested
    # A bare leaf still finds the dotted key.
    with pytest.raises(ConfigKeyError, match=r"Did you mean: .*DATASET\.NUM_SHOTS"):
        merge_from_list(cfg, ["NUM_SHOTS", "4"])
    # Nothing was merged by the failing calls.
    assert cfg.OPTIM.LR == 0.0003


def test_unknown_key_from_file_names_file(tmp_path):
    cfg = get_cfg_default()
    path = _write(tmp_path, "OPTIM:\n  LR: 0.1\n  MAX_EPOCHS: 5\nDATASET:\n  NAEM: X\n")
    with pytest.raises(ConfigKeyError) as ei:
        merge_from_file(cfg, path)
    msg = str(ei.value)
    assert "'OPTIM.MAX_EPOCHS'" in msg and "OPTIM.MAX_EPOCH" in msg
    assert "'DATASET.NAEM'" in msg and "DATASET.NAME" in msg
    assert path in msg
    assert cfg.OPTIM.LR == 0.0003  # validation happens before anything is merged


def test_type_mismatch_names_key():
    cfg = get_cfg_default()
    with pytest.raises(ValueError) as ei:
        merge_from_list(cfg, ["OPTIM.LR", "1"])  # int against float
    assert isinstance(ei.value, ConfigTypeError)
    assert "OPTIM.LR" in str(ei.value) and "command line" in str(ei.value)
    merge_from_list(cfg, ["DATASET.NUM_SHOTS", "16"])  # int against int is fine
    assert cfg.DATASET.NUM_SHOTS == 16


def test_type_mismatch_from_file(tmp_path):
    cfg = get_cfg_default()
    path = _write(tmp_path, "OPTIM:\n  MAX_EPOCH: 2.5\n")
    with pytest.raises(ConfigTypeError, match="OPTIM.MAX_EPOCH"):
        merge_from_file(cfg, path)


def test_missing_file_and_odd_opts(tmp_path):
    cfg = get_cfg_default()
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        merge_from_file(cfg, str(tmp_path / "nope.yaml"))
    with pytest.raises(ValueError, match="odd number"):
        merge_from_list(cfg, ["OPTIM.LR", "0.1", "SEED"])


def test_extend_cfg_then_merge_and_freeze(tmp_path):
    cfg = get_cfg_default()
    # What a trainer's extend_cfg does, with yacs' own CN as ported code would.
    cfg.TRAINER.COOP = YacsCN()
    cfg.TRAINER.COOP.N_CTX = 16
    cfg.TRAINER.COOP.CTX_INIT = ""
    path = _write(tmp_path, "TRAINER:\n  COOP:\n    N_CTX: 4\n    CTX_INIT: a photo of a\n")
    merge_from_file(cfg, path)
    merge_from_list(cfg, ["TRAINER.COOP.N_CTX", "8"])
    assert cfg.TRAINER.COOP.N_CTX == 8 and cfg.TRAINER.COOP.CTX_INIT == "a photo of a"
    with pytest.raises(ConfigKeyError, match="TRAINER.COOP.N_CTX"):
        merge_from_list(cfg, ["TRAINER.COOP.NCTX", "8"])
    cfg.freeze()
    with pytest.raises(AttributeError):
        cfg.OPTIM.LR = 1.0


def test_empty_yaml_is_noop(tmp_path):
    cfg = get_cfg_default()
    merge_from_file(cfg, _write(tmp_path, ""))
    assert cfg == get_cfg_default()


def test_cfg_to_yaml_round_trip(tmp_path):
    cfg = get_cfg_default()
    cfg.TRAINER.COOP = CN()
    cfg.TRAINER.COOP.CTX_INIT = "a photo of a"
    merge_from_list(cfg, ["INPUT.SIZE", "(32, 32)", "OPTIM.WARMUP_CONS_LR", "2e-5", "OPTIM.NAME", "sgd"])
    text = cfg_to_yaml(cfg)
    assert "SGD_DAMPNING: 0" in text
    fresh = get_cfg_default()
    fresh.TRAINER.COOP = CN()
    fresh.TRAINER.COOP.CTX_INIT = ""
    merge_from_file(fresh, _write(tmp_path, text))
    assert fresh == cfg
    assert fresh.INPUT.SIZE == (32, 32)


def test_ignored_keys_are_skipped_and_reported_by_both_merges(tmp_path):
    cfg = get_cfg_default()
    cfg.TRAINER.COOP = CN()
    cfg.TRAINER.COOP.N_CTX = 16
    path = tmp_path / "c.yaml"
    path.write_text("OPTIM:\n  LR: 0.5\nTRAINER:\n  COCOOP:\n    N_CTX: 4\n  COOP:\n    N_CTX: 8\n")
    report = merge_from_file(cfg, str(path), ignored={"TRAINER.COCOOP"})
    assert report.ignored == ["TRAINER.COCOOP"] and sorted(report.set_keys) == ["OPTIM.LR", "TRAINER.COOP.N_CTX"]
    assert cfg.OPTIM.LR == 0.5 and cfg.TRAINER.COOP.N_CTX == 8 and "COCOOP" not in cfg.TRAINER
    report = merge_from_list(cfg, ["TRAINER.COCOOP.PREC", "fp32", "OPTIM.MAX_EPOCH", "3"], ignored={"TRAINER.COCOOP"})
    assert report.ignored == ["TRAINER.COCOOP.PREC"] and report.set_keys == ["OPTIM.MAX_EPOCH"]
    with pytest.raises(KeyError, match="TRAINER.COCOOP"):  # not ignored: still an unknown key
        merge_from_list(cfg, ["TRAINER.COCOOP.PREC", "fp32"])

def test_failed_merge_changes_nothing_and_frozen_cfg_refuses(tmp_path):
    cfg = get_cfg_default()
    with pytest.raises(ConfigTypeError):
        merge_from_list(cfg, ["OPTIM.MAX_EPOCH", "5", "OPTIM.LR", "1"])
    assert cfg.OPTIM.MAX_EPOCH == 10  # the valid first pair was not applied either
    with pytest.raises(ConfigTypeError, match="group of keys"):
        merge_from_list(cfg, ["OPTIM", "1"])
    cfg.freeze()
    with pytest.raises(AttributeError, match="frozen"):
        merge_from_list(cfg, ["OPTIM.MAX_EPOCH", "5"])
    assert cfg.OPTIM.MAX_EPOCH == 10
