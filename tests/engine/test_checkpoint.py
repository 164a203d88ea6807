"""Checkpoint files: layout, atomic writes, safe loading (incl. legacy Dassl files), resume."""
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn

from engine.checkpoint import (
    LEGACY_SAFE_GLOBALS,
    UnsafeCheckpointError,
    load_checkpoint,
    load_pretrained_weights,
    resume_from_checkpoint,
    save_checkpoint,
)
from engine.config import get_cfg_default
from engine.optim import build_lr_scheduler, build_optimizer
from engine.utils import atomic_open


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def _train_parts(model, epochs=10):
    cfg = get_cfg_default().OPTIM
    cfg.NAME, cfg.LR, cfg.MAX_EPOCH, cfg.LR_SCHEDULER = "sgd", 0.002, epochs, "cosine"
    cfg.WARMUP_EPOCH, cfg.WARMUP_TYPE, cfg.WARMUP_CONS_LR = 1, "constant", 1e-5
    opt = build_optimizer(model, cfg)
    return opt, build_lr_scheduler(opt, cfg)


def _train_epoch(model, opt, sched):
    x = torch.randn(8, 4)
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()


def _state(model, opt, sched, epoch, val_result=None):
    return {
        "state_dict": model.state_dict(),
        "epoch": epoch,
        "optimizer": opt.state_dict() if opt else None,
        "scheduler": sched.state_dict() if sched else None,
        "val_result": val_result,
    }


def _tmp_leftovers(folder):
    return [n for n in os.listdir(folder) if n.endswith(".tmp")]


def test_layout_pointer_best_and_module_prefix(tmp_path):
    model = _model()
    opt, sched = _train_parts(model)
    d = str(tmp_path / "prompt_learner")
    state = _state(model, opt, sched, epoch=2)
    state["state_dict"] = {"module." + k: v for k, v in state["state_dict"].items()}  # as from DataParallel
    path = save_checkpoint(state, d, is_best=True)
    assert path == os.path.join(d, "model.pth.tar-2")
    assert open(os.path.join(d, "checkpoint")).read() == "model.pth.tar-2\n"
    ck = load_checkpoint(path)
    assert set(ck) == {"state_dict", "epoch", "optimizer", "scheduler", "val_result"}
    assert set(ck["state_dict"]) == set(model.state_dict())  # "module." stripped
    best = load_checkpoint(os.path.join(d, "model-best.pth.tar"))
    assert torch.equal(best["state_dict"]["0.weight"], model[0].weight)
    assert "module.0.weight" in state["state_dict"]  # caller's dict untouched

    # model_name wins, and the pointer follows the latest save
    save_checkpoint(_state(model, opt, sched, epoch=3, val_result=71.5), d, model_name="model-best.pth.tar")
    assert open(os.path.join(d, "checkpoint")).read() == "model-best.pth.tar\n"
    assert load_checkpoint(os.path.join(d, "model-best.pth.tar"))["val_result"] == 71.5
    assert not _tmp_leftovers(d)


def test_save_refuses_state_that_weights_only_cannot_read(tmp_path):
    model = _model()
    d = str(tmp_path / "m")
    save_checkpoint(_state(model, None, None, epoch=1), d)
    before = open(os.path.join(d, "model.pth.tar-1"), "rb").read()
    with pytest.raises(TypeError, match="numpy"):
        save_checkpoint(_state(model, None, None, epoch=1, val_result=np.float64(3.0)), d)
    assert open(os.path.join(d, "model.pth.tar-1"), "rb").read() == before  # old file intact
    assert not _tmp_leftovers(d)


def test_interrupted_save_leaves_previous_file_intact(tmp_path, monkeypatch):
    model = _model()
    d = str(tmp_path / "m")
    save_checkpoint(_state(model, None, None, epoch=1), d)
    good = open(os.path.join(d, "model.pth.tar-1"), "rb").read()

    real_save = torch.save

    def crashing_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 partial")  # a truncated zip
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_state(model, None, None, epoch=1), d)
    monkeypatch.setattr(torch, "save", real_save)
    assert open(os.path.join(d, "model.pth.tar-1"), "rb").read() == good
    assert open(os.path.join(d, "checkpoint")).read() == "model.pth.tar-1\n"
    assert not _tmp_leftovers(d)
    assert torch.equal(load_checkpoint(os.path.join(d, "model.pth.tar-1"))["state_dict"]["0.weight"], model[0].weight)


def test_atomic_open_replaces_only_on_success(tmp_path):
    p = str(tmp_path / "f.txt")
    with atomic_open(p, "w") as f:
        f.write("one")
    with pytest.raises(RuntimeError):
        with atomic_open(p, "w") as f:
            f.write("two")
            raise RuntimeError("boom")
    assert open(p).read() == "one"


def test_load_errors(tmp_path):
    with pytest.raises(ValueError):
        load_checkpoint(None)
    d = tmp_path / "prompt_learner"
    d.mkdir()
    (d / "model.pth.tar-5").write_bytes(b"x")
    with pytest.raises(FileNotFoundError) as ei:
        load_checkpoint(str(d / "model.pth.tar-50"))
    assert "model.pth.tar-50" in str(ei.value) and "model.pth.tar-5" in str(ei.value).split("model.pth.tar-50")[1]


def test_resume_from_checkpoint_restores_everything(tmp_path):
    model = _model()
    opt, sched = _train_parts(model)
    for _ in range(3):
        _train_epoch(model, opt, sched)
    d = str(tmp_path / "m")
    save_checkpoint(_state(model, opt, sched, epoch=3), d)

    torch.manual_seed(5)
    model2 = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    opt2, sched2 = _train_parts(model2)
    start = resume_from_checkpoint(d, model2, opt2, sched2)
    assert start == 3
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    # identical continuation (same data, same momentum, same LR)
    torch.manual_seed(1)
    _train_epoch(model, opt, sched)
    torch.manual_seed(1)
    _train_epoch(model2, opt2, sched2)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match="pointer"):
        resume_from_checkpoint(str(tmp_path / "empty"), model2)


def test_load_pretrained_weights_partial(tmp_path):
    src = _model()
    dst = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 5))  # last layer differs in size
    path = str(tmp_path / "w.pth")
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}, "extra": 1}, path)
    old_last = dst[2].weight.clone()
    loaded = load_pretrained_weights(dst, path)
    assert sorted(loaded) == ["0.bias", "0.weight"]
    assert torch.equal(dst[0].weight, src[0].weight) and torch.equal(dst[2].weight, old_last)
    # bare state dict
    torch.save({"2.weight": torch.ones(5, 3)}, path)
    assert load_pretrained_weights(dst, path) == ["2.weight"] and dst[2].weight.eq(1).all()
    torch.save({"nothing": torch.ones(1)}, path)
    with pytest.warns(UserWarning, match="no key matched"):
        assert load_pretrained_weights(dst, path) == []


def _legacy_dassl_checkpoint(path, epochs_done=2):
    """A checkpoint as Dassl/CoOp wrote it: the warm-up scheduler's __dict__ with the pickled successor."""
    model = _model()
    opt, sched = _train_parts(model)
    for _ in range(epochs_done):
        _train_epoch(model, opt, sched)  # momentum buffers make the optimizer state a filled defaultdict
    legacy_sched = {k: v for k, v in sched.__dict__.items() if k != "optimizer"}
    assert isinstance(legacy_sched["successor"], torch.optim.lr_scheduler.CosineAnnealingLR)
    torch.save(
        {"state_dict": model.state_dict(), "epoch": epochs_done, "optimizer": opt.state_dict(),
         "scheduler": legacy_sched, "val_result": None},
        path,
    )
    return model, opt, sched


def test_legacy_dassl_checkpoint_loads_with_minimal_allow_list(tmp_path):
    path = str(tmp_path / "model.pth.tar-2")
    model, opt, sched = _legacy_dassl_checkpoint(path)
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    assert unsafe == {"torch.optim.sgd.SGD", "torch.optim.lr_scheduler.CosineAnnealingLR",
                      "builtins.dict", "collections.defaultdict"}
    with pytest.raises(pickle.UnpicklingError):  # plain weights_only refuses it: nothing else allows these
        torch.load(path, weights_only=True)
    before = _safe_global_objects()

    ck = load_checkpoint(path)
    assert ck["epoch"] == 2 and torch.equal(ck["state_dict"]["0.weight"], model[0].weight)
    succ = ck["scheduler"]["successor"]
    assert isinstance(succ, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert succ.last_epoch == sched.successor.last_epoch
    # The loader's own allow-list is not left registered, and what others registered stays.
    # (torch keeps the registry as a set, other code may add to it: compare only what we own.)
    own = {id(obj) for obj in LEGACY_SAFE_GLOBALS.values()}
    after = _safe_global_objects()
    assert not own & set(after)
    assert set(before) - own <= set(after)

    # The legacy scheduler state continues the schedule on the live optimizer.
    _, opt_ref, sched_ref = _legacy_reference_run()
    model2 = _model()
    opt2, sched2 = _train_parts(model2)
    opt2.load_state_dict(ck["optimizer"])
    sched2.load_state_dict(ck["scheduler"])
    lrs = []
    for _ in range(8):
        lrs.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert lrs == pytest.approx(sched_ref[2:], rel=1e-9)


def _safe_global_objects() -> dict:
    """torch's registered safe globals by object identity (entries are objects or (object, name))."""
    entries = torch.serialization.get_safe_globals()
    objects = [entry[0] if isinstance(entry, tuple) else entry for entry in entries]
    return {id(obj): obj for obj in objects}


def test_legacy_checkpoint_needing_a_class_outside_the_allow_list_is_refused(tmp_path):
    model = _model()
    opt, sched = _train_parts(model)
    legacy = {k: v for k, v in sched.__dict__.items() if k != "optimizer"}
    legacy["successor"] = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)  # not in the allow-list
    path = str(tmp_path / "model.pth.tar-1")
    torch.save({"state_dict": model.state_dict(), "scheduler": legacy}, path)
    with pytest.raises(UnsafeCheckpointError, match="ExponentialLR"):
        load_checkpoint(path)


def _legacy_reference_run():
    model = _model()
    opt, sched = _train_parts(model)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return model, opt, lrs


MARKER = []


def _evil(path):
    MARKER.append(path)
    open(path, "w").write("pwned")
    return {}


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (_evil, (self.path,))


class _SystemCall:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_malicious_checkpoints_are_refused_without_running_code(tmp_path):
    marker = str(tmp_path / "marker")
    path = str(tmp_path / "evil.pth")
    torch.save({"state_dict": {}, "epoch": 1, "scheduler": {"successor": _Evil(marker)}}, path)
    with pytest.raises(UnsafeCheckpointError) as ei:
        load_checkpoint(path)
    assert "_evil" in str(ei.value)
    assert not os.path.exists(marker) and not MARKER

    path2 = str(tmp_path / "system.pth")
    torch.save({"state_dict": {}, "x": _SystemCall(f"touch {marker}")}, path2)
    with pytest.raises(UnsafeCheckpointError, match="system"):
        load_checkpoint(path2)
    assert not os.path.exists(marker)

    # An allow-listed class next to a forbidden global is still refused.
    model = _model()
    opt, sched = _train_parts(model)
    legacy = {k: v for k, v in sched.__dict__.items() if k != "optimizer"}
    legacy["hook"] = _Evil(marker)
    path3 = str(tmp_path / "mixed.pth")
    torch.save({"scheduler": legacy}, path3)
    with pytest.raises(UnsafeCheckpointError, match="_evil"):
        load_checkpoint(path3)
    assert not os.path.exists(marker)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_raw_pickle_file_is_refused(tmp_path):
    marker = str(tmp_path / "marker")
    path = str(tmp_path / "raw.pkl")
    with open(path, "wb") as f:
        pickle.dump({"a": _SystemCall(f"touch {marker}")}, f)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)
    assert not os.path.exists(marker)
