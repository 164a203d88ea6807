"""Classification evaluator and compute_accuracy."""
import logging
import re

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from engine.config import get_cfg_default
from engine.evaluation import EVALUATOR_REGISTRY, Classification, EvaluatorBase, build_evaluator, compute_accuracy


def _logits_for(preds, num_classes):
    out = torch.full((len(preds), num_classes), -1.0)
    out[torch.arange(len(preds)), torch.tensor(preds)] = 1.0
    return out


# 10 samples, 3 classes; 7 correct.
Y_TRUE = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
Y_PRED = [0, 0, 0, 1, 1, 1, 2, 2, 0, 2]
LAB2CNAME = {0: "cat", 1: "dog", 2: "fox"}


def _run(cfg, **kw):
    ev = build_evaluator(cfg, lab2cname=LAB2CNAME, **kw)
    logits = _logits_for(Y_PRED, 3)
    labels = torch.tensor(Y_TRUE)
    ev.process(logits[:4], labels[:4])  # two batches
    ev.process(logits[4:], labels[4:])
    return ev


def test_metrics_and_log_lines(caplog):
    cfg = get_cfg_default()
    ev = _run(cfg)
    assert isinstance(ev, Classification) and isinstance(ev, EvaluatorBase)
    with caplog.at_level(logging.INFO):
        caplog.clear()  # only evaluate()'s lines
        res = ev.evaluate()
    assert list(res.keys()) == ["accuracy", "error_rate", "macro_f1"]
    assert res["accuracy"] == pytest.approx(70.0)
    assert res["error_rate"] == pytest.approx(30.0)
    expected_f1 = 100 * f1_score(Y_TRUE, Y_PRED, average="macro", labels=np.unique(Y_TRUE))
    assert res["macro_f1"] == pytest.approx(expected_f1)
    text = caplog.text
    lines = [line for msg in caplog.messages for line in msg.splitlines()]
    assert lines[:6] == [
        "=> result",
        "* total: 10",
        "* correct: 7",
        "* accuracy: 70.0%",
        "* error: 30.0%",
        f"* macro_f1: {expected_f1:.1f}%",
    ]
    # CoOp's parse_test_res.py regex
    assert re.findall(r"\* accuracy: ([\.\deE+-]+)%", text) == ["70.0"]


def test_thousands_separator(caplog):
    cfg = get_cfg_default()
    ev = build_evaluator(cfg)
    torch.manual_seed(0)
    labels = torch.randint(0, 5, (1234,))
    logits = torch.nn.functional.one_hot(labels, 5).float()
    logits[:234] = -logits[:234]  # wrong for the first 234
    ev.process(logits, labels)
    with caplog.at_level(logging.INFO):
        res = ev.evaluate()
    assert "* total: 1,234" in caplog.text and "* correct: 1,000" in caplog.text
    assert res["accuracy"] == pytest.approx(100 * 1000 / 1234)


def test_per_class_results(caplog):
    cfg = get_cfg_default()
    cfg.TEST.PER_CLASS_RESULT = True
    ev = _run(cfg)
    with caplog.at_level(logging.INFO):
        res = ev.evaluate()
    assert list(res.keys()) == ["accuracy", "error_rate", "macro_f1", "perclass_accuracy", "perclass"]
    assert res["perclass"] == pytest.approx({"cat": 75.0, "dog": 200 / 3, "fox": 200 / 3})
    assert res["perclass_accuracy"] == pytest.approx((75.0 + 2 * 200 / 3) / 3)
    assert "=> per-class result" in caplog.text
    assert "* class: 0 (cat)\ttotal: 4\tcorrect: 3\tacc: 75.0%" in caplog.text
    assert f"* average: {res['perclass_accuracy']:.1f}%" in caplog.text
    with pytest.raises(ValueError, match="lab2cname"):
        Classification(cfg)


def test_reset_and_keep_outputs():
    cfg = get_cfg_default()
    ev = _run(cfg, keep_outputs=True)
    logits, labels = ev.outputs()
    assert logits.dtype == torch.float32 and labels.dtype == torch.int64
    assert logits.shape == (10, 3) and labels.tolist() == Y_TRUE
    assert torch.equal(logits, _logits_for(Y_PRED, 3))
    ev.reset()
    assert ev.outputs()[0].shape[0] == 0
    ev.process(_logits_for([1], 3).half(), torch.tensor([1]))
    assert ev.evaluate()["accuracy"] == 100.0
    assert ev.outputs()[0].dtype == torch.float32
    with pytest.raises(RuntimeError, match="keep_outputs"):
        build_evaluator(cfg).outputs()
    with pytest.raises(ValueError, match="before any batch"):
        build_evaluator(cfg).evaluate()


def test_confusion_matrix_saved(tmp_path):
    cfg = get_cfg_default()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.TEST.COMPUTE_CMAT = True
    _run(cfg).evaluate()
    cmat = torch.load(tmp_path / "cmat.pt", weights_only=True)
    assert cmat.shape == (3, 3)
    assert cmat[0].tolist() == pytest.approx([0.75, 0.25, 0.0])
    assert cmat.sum(dim=1).tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_registry_and_unknown_evaluator():
    assert "Classification" in EVALUATOR_REGISTRY
    cfg = get_cfg_default()
    cfg.TEST.EVALUATOR = "Clasification"
    with pytest.raises(KeyError, match="Did you mean: Classification"):
        build_evaluator(cfg)


def test_compute_accuracy():
    output = torch.tensor([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])
    target = torch.tensor([1, 1, 0, 2])
    top1, top2 = compute_accuracy(output, target, topk=(1, 2))
    assert top1.shape == (1,) and top1.item() == pytest.approx(25.0)
    assert top2.item() == pytest.approx(50.0)
    (acc,) = compute_accuracy((output, "aux"), target)
    assert acc.item() == pytest.approx(25.0)
