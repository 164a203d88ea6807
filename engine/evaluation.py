"""Evaluators (Dassl's `Classification`) and `compute_accuracy`.

The lines `Classification.evaluate` logs ("=> result", "* accuracy: 81.0%", ...) are parsed by
CoOp's `parse_test_res.py` and by our runner: keep their format exactly.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict, defaultdict
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, f1_score

from engine.registry import Registry
from engine.utils import atomic_torch_save

__all__ = ["EVALUATOR_REGISTRY", "EvaluatorBase", "Classification", "build_evaluator", "compute_accuracy"]

logger = logging.getLogger(__name__)

EVALUATOR_REGISTRY = Registry("EVALUATOR")


class EvaluatorBase:
    """Interface: `reset()`, `process(model_output, ground_truth)` per batch, then `evaluate()`."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def reset(self) -> None:
        raise NotImplementedError

    def process(self, mo: torch.Tensor, gt: torch.Tensor) -> None:
        raise NotImplementedError

    def evaluate(self) -> "OrderedDict[str, Any]":
        raise NotImplementedError


@EVALUATOR_REGISTRY.register()
class Classification(EvaluatorBase):
    """Top-1 accuracy, error rate, macro-F1 and (optionally) per-class accuracy.

    With `keep_outputs=True` it also keeps every batch's logits and labels, returned by `outputs()`.
    """

    def __init__(self, cfg: Any, lab2cname: dict[int, str] | None = None, keep_outputs: bool = False, **kwargs: Any) -> None:
        super().__init__(cfg)
        self._lab2cname = lab2cname
        self._keep_outputs = keep_outputs
        self._per_class = bool(cfg.TEST.PER_CLASS_RESULT)
        if self._per_class and lab2cname is None:
            raise ValueError(
                "TEST.PER_CLASS_RESULT=True needs lab2cname (label -> class name); "
                "pass lab2cname=dm.lab2cname to build_evaluator()."
            )
        self.reset()

    def reset(self) -> None:
        self._correct = 0
        self._total = 0
        self._y_true: list[int] = []
        self._y_pred: list[int] = []
        self._per_class_res: dict[int, list[int]] | None = defaultdict(list) if self._per_class else None
        self._logits: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def process(self, mo: torch.Tensor, gt: torch.Tensor) -> None:
        """Accumulate one batch: `mo` logits [B, C], `gt` labels [B]."""
        if mo.dim() != 2 or gt.dim() != 1 or mo.shape[0] != gt.shape[0]:
            raise ValueError(
                f"Classification.process expects logits [B, C] and labels [B], got {tuple(mo.shape)} and {tuple(gt.shape)}."
            )
        pred = mo.argmax(dim=1)
        matches = pred.eq(gt).long()
        self._correct += int(matches.sum().item())
        self._total += gt.shape[0]
        self._y_true.extend(gt.detach().cpu().tolist())
        self._y_pred.extend(pred.detach().cpu().tolist())
        if self._per_class_res is not None:
            for label, m in zip(gt.detach().cpu().tolist(), matches.detach().cpu().tolist()):
                self._per_class_res[int(label)].append(int(m))
        if self._keep_outputs:
            self._logits.append(mo.detach().float().cpu())
            self._labels.append(gt.detach().long().cpu())

    def outputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All processed logits (float32 [N, C]) and labels (int64 [N]) in processing order."""
        if not self._keep_outputs:
            raise RuntimeError("Classification.outputs() needs the evaluator built with keep_outputs=True.")
        if not self._logits:
            return torch.zeros(0, 0, dtype=torch.float32), torch.zeros(0, dtype=torch.int64)
        return torch.cat(self._logits, dim=0), torch.cat(self._labels, dim=0)

    def evaluate(self) -> "OrderedDict[str, Any]":
        """Compute and log the metrics; the first entry is the accuracy (in percent)."""
        if self._total == 0:
            raise ValueError("Classification.evaluate() called before any batch was processed (the loader was empty?).")
        results: OrderedDict[str, Any] = OrderedDict()
        acc = 100.0 * self._correct / self._total
        err = 100.0 - acc
        macro_f1 = 100.0 * f1_score(self._y_true, self._y_pred, average="macro", labels=np.unique(self._y_true))
        results["accuracy"] = acc
        results["error_rate"] = err
        results["macro_f1"] = float(macro_f1)

        logger.info(
            "=> result\n"
            f"* total: {self._total:,}\n"
            f"* correct: {self._correct:,}\n"
            f"* accuracy: {acc:.1f}%\n"
            f"* error: {err:.1f}%\n"
            f"* macro_f1: {macro_f1:.1f}%"
        )

        if self._per_class_res is not None:
            lines = ["=> per-class result"]
            accs, perclass = [], {}
            for label in sorted(self._per_class_res):
                res = self._per_class_res[label]
                correct, total = sum(res), len(res)
                cacc = 100.0 * correct / total
                accs.append(cacc)
                classname = self._lab2cname.get(label, str(label)) if self._lab2cname else str(label)
                perclass[classname] = cacc
                lines.append(f"* class: {label} ({classname})\ttotal: {total:,}\tcorrect: {correct:,}\tacc: {cacc:.1f}%")
            mean_acc = float(np.mean(accs))
            lines.append(f"* average: {mean_acc:.1f}%")
            logger.info("\n".join(lines))
            results["perclass_accuracy"] = mean_acc
            results["perclass"] = perclass

        if self.cfg.TEST.COMPUTE_CMAT:
            cmat = confusion_matrix(self._y_true, self._y_pred, normalize="true")
            save_path = os.path.join(self.cfg.OUTPUT_DIR, "cmat.pt")
            # A tensor (not Dassl's ndarray) so that torch.load(weights_only=True) reads it.
            atomic_torch_save(torch.from_numpy(cmat), save_path)
            logger.info(f"Confusion matrix is saved to {save_path}")
        return results


def build_evaluator(cfg: Any, **kwargs: Any) -> EvaluatorBase:
    """Instantiate ``cfg.TEST.EVALUATOR`` as ``cls(cfg, **kwargs)``."""
    name = cfg.TEST.EVALUATOR
    if getattr(cfg, "VERBOSE", False):
        logger.info(f"Loading evaluator: {name}")
    return EVALUATOR_REGISTRY.get(name)(cfg, **kwargs)


def compute_accuracy(output: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor, topk: Sequence[int] = (1,)) -> list[torch.Tensor]:
    """Top-k accuracies in percent, one 1-element tensor per k (first element used if `output` is a sequence)."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    maxk = max(topk)
    batch_size = target.size(0)
    _, pred = output.topk(maxk, 1, True, True)
    pred = pred.t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    res = []
    for k in topk:
        correct_k = correct[:k].reshape(-1).float().sum(0, keepdim=True)
        res.append(correct_k.mul_(100.0 / batch_size))
    return res
