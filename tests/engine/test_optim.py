"""Optimizer construction and the warm-up LR schedules of spec §7 (hand-computed values)."""
import copy
import io
import math
import warnings

import pytest
import torch
import torch.nn as nn

from engine.config import get_cfg_default
from engine.optim import (
    ConstantWarmupScheduler,
    LinearWarmupScheduler,
    build_lr_scheduler,
    build_optimizer,
)


def _optim_cfg(**kw):
    cfg = get_cfg_default()
    for k, v in kw.items():
        setattr(cfg.OPTIM, k, v)
    return cfg.OPTIM


def _clip_cfg(lr, epochs, **kw):
    """The OPTIM block every CLIP trainer config shares (sgd + cosine + 1 constant warm-up epoch)."""
    base = dict(NAME="sgd", LR=lr, MAX_EPOCH=epochs, LR_SCHEDULER="cosine", WARMUP_EPOCH=1,
                WARMUP_TYPE="constant", WARMUP_CONS_LR=1e-5)
    base.update(kw)
    return _optim_cfg(**base)


def _build(optim_cfg):
    torch.manual_seed(0)
    param = nn.Parameter(torch.zeros(3))
    opt = build_optimizer([param], optim_cfg)
    return param, opt, build_lr_scheduler(opt, optim_cfg)


def _run_epochs(opt, sched, n):
    """LR used while training each epoch; the scheduler steps once after the epoch's last batch."""
    lrs = []
    for _ in range(n):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


# ----------------------------------------------------------------------------- optimizers
@pytest.mark.parametrize(
    "name,cls",
    [("adam", torch.optim.Adam), ("amsgrad", torch.optim.Adam), ("sgd", torch.optim.SGD),
     ("rmsprop", torch.optim.RMSprop), ("radam", torch.optim.RAdam), ("adamw", torch.optim.AdamW)],
)
def test_build_optimizer_names(name, cls):
    model = nn.Linear(4, 2)
    opt = build_optimizer(model, _optim_cfg(NAME=name, LR=0.01, WEIGHT_DECAY=1e-3))
    assert type(opt) is cls
    g = opt.param_groups[0]
    assert g["lr"] == 0.01 and g["weight_decay"] == 1e-3 and len(g["params"]) == 2
    if name in ("adam", "amsgrad", "adamw", "radam"):
        assert g["betas"] == (0.9, 0.999)
    assert g.get("amsgrad", False) == (name == "amsgrad")


def test_sgd_options_and_dampening_key():
    opt = build_optimizer(nn.Linear(2, 2), _optim_cfg(NAME="sgd", MOMENTUM=0.8, SGD_DAMPNING=0.1, SGD_NESTEROV=False))
    g = opt.param_groups[0]
    assert g["momentum"] == 0.8 and g["dampening"] == 0.1 and g["nesterov"] is False
    opt = build_optimizer(nn.Linear(2, 2), _optim_cfg(NAME="rmsprop", RMSPROP_ALPHA=0.5))
    assert opt.param_groups[0]["alpha"] == 0.5 and opt.param_groups[0]["momentum"] == 0.9


@pytest.mark.parametrize("nesterov, dampening", [(False, 0.0), (True, 0.0), (False, 0.1)])
def test_fp32_sgd_is_fused_and_updates_as_the_per_tensor_loop(nesterov, dampening):
    """fp32 CPU SGD runs torch's fused kernel; its parameters follow the per-tensor loop's to rounding."""
    steps, lr = 6, 0.05
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(37, 53), nn.Linear(53, 5))
    reference, initial = copy.deepcopy(model), copy.deepcopy(model)
    cfg = _optim_cfg(NAME="sgd", LR=lr, MOMENTUM=0.9, WEIGHT_DECAY=5e-4, SGD_DAMPNING=dampening, SGD_NESTEROV=nesterov)
    fused = build_optimizer(model, cfg)
    assert fused.defaults["fused"] is True
    loop = torch.optim.SGD(reference.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, dampening=dampening,
                           nesterov=nesterov, foreach=False)
    for _ in range(steps):
        grads = [torch.randn_like(p) for p in model.parameters()]
        for net, opt in ((model, fused), (reference, loop)):
            for p, g in zip(net.parameters(), grads):
                p.grad = g.clone()
            opt.step()
    # One step rounds each element at most 5 times (weight decay, momentum scale and add, nesterov
    # add, the LR-scaled update): 5u relative to the largest of parameter, gradient and momentum
    # (all O(1) here, bounded by 10 with momentum 0.9). A kernel contracting a multiply-add rounds
    # less, never more; the differences of successive steps add up.
    atol = steps * 5 * 2.0**-24 * 10.0
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, atol=atol, rtol=0)
    moved = [(p - q).detach() for p, q in zip(model.parameters(), initial.parameters())]
    assert min(float(d.abs().max()) for d in moved) > 1000 * atol  # the steps did move every parameter


def test_fp16_sgd_keeps_the_per_tensor_loop():
    """fp16 weights (the originals' pure-fp16 SGD): the fused kernel would update them in fp32."""
    opt = build_optimizer(nn.Linear(4, 2).half(), _optim_cfg(NAME="sgd"))
    assert not opt.defaults["fused"]


def test_unknown_optimizer_lists_valid_names():
    with pytest.raises(ValueError, match="adamw"):
        build_optimizer(nn.Linear(2, 2), _optim_cfg(NAME="lamb"))


def test_staged_lr_and_explicit_param_groups():
    model = nn.Sequential()
    model.add_module("backbone", nn.Linear(4, 4))
    model.add_module("head", nn.Linear(4, 2))
    cfg = _optim_cfg(NAME="sgd", LR=0.1, STAGED_LR=True, NEW_LAYERS=("head",), BASE_LR_MULT=0.1)
    for wrapped in (model, nn.DataParallel(model)):  # DataParallel is unwrapped
        base, new = build_optimizer(wrapped, cfg).param_groups
        assert base["lr"] == pytest.approx(0.01) and new["lr"] == 0.1
        assert base["params"][0] is model.backbone.weight and new["params"][0] is model.head.weight
    with pytest.raises(ValueError, match="neck"):
        build_optimizer(model, _optim_cfg(STAGED_LR=True, NEW_LAYERS=("neck",)))
    with pytest.warns(UserWarning, match="STAGED_LR is ignored"):
        opt = build_optimizer(model, cfg, param_groups=[{"params": model.head.parameters(), "lr": 0.5}])
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["lr"] == 0.5


# ----------------------------------------------------------------------------- schedules
# The originals' printed learning rates, to 5 significant digits (hence rel=1e-4 below).
COCOOP = [1e-5, 0.002, 0.0019511, 0.0018090, 0.0015878, 0.0013090, 0.0010000, 0.00069098, 0.00041221, 0.00019098]
MAPLE = [1e-5, 0.0035, 0.0031658, 0.0022908, 0.0012092]


def test_cocoop_constant_warmup_cosine_e10():
    _, opt, sched = _build(_clip_cfg(0.002, 10))
    assert isinstance(sched, ConstantWarmupScheduler)
    assert _run_epochs(opt, sched, 10) == pytest.approx(COCOOP, rel=1e-4)


def test_maple_constant_warmup_cosine_e5():
    _, opt, sched = _build(_clip_cfg(0.0035, 5))
    assert _run_epochs(opt, sched, 5) == pytest.approx(MAPLE, rel=1e-4)


def test_coop_e50_closed_form_and_last_epoch():
    B, E = 0.002, 50
    _, opt, sched = _build(_clip_cfg(B, E))
    lrs = _run_epochs(opt, sched, E)
    expected = [1e-5] + [B * (1 + math.cos(math.pi * (e - 1) / E)) / 2 for e in range(1, E)]
    assert lrs == pytest.approx(expected, rel=1e-6)
    assert lrs[-1] == pytest.approx(7.9e-6, rel=0.01)  # cosine keeps T_max=E, so it never hits 0


def test_linear_warmup():
    B, E, W = 0.01, 8, 3
    _, opt, sched = _build(_optim_cfg(NAME="sgd", LR=B, MAX_EPOCH=E, LR_SCHEDULER="cosine", WARMUP_EPOCH=W,
                                      WARMUP_TYPE="linear", WARMUP_MIN_LR=1e-5))
    assert isinstance(sched, LinearWarmupScheduler)
    lrs = _run_epochs(opt, sched, E)
    expected = [1e-5, B * 1 / 3, B * 2 / 3] + [B * (1 + math.cos(math.pi * (e - W) / E)) / 2 for e in range(W, E)]
    assert lrs == pytest.approx(expected, rel=1e-6)


def test_single_step_and_multi_step():
    _, opt, sched = _build(_optim_cfg(NAME="sgd", LR=1.0, LR_SCHEDULER="single_step", STEPSIZE=(2,), GAMMA=0.5))
    assert _run_epochs(opt, sched, 6) == pytest.approx([1, 1, 0.5, 0.5, 0.25, 0.25])
    # STEPSIZE <= 0 means MAX_EPOCH
    _, opt, sched = _build(_optim_cfg(NAME="sgd", LR=1.0, LR_SCHEDULER="single_step", STEPSIZE=(-1,), MAX_EPOCH=3))
    assert _run_epochs(opt, sched, 4) == pytest.approx([1, 1, 1, 0.1])
    _, opt, sched = _build(_optim_cfg(NAME="sgd", LR=1.0, LR_SCHEDULER="multi_step", STEPSIZE=(1, 3), GAMMA=0.1))
    assert _run_epochs(opt, sched, 5) == pytest.approx([1, 0.1, 0.1, 0.01, 0.01])
    # warm-up in front of a step schedule
    _, opt, sched = _build(_optim_cfg(NAME="sgd", LR=1.0, LR_SCHEDULER="multi_step", STEPSIZE=(2,), GAMMA=0.1,
                                      WARMUP_EPOCH=1, WARMUP_TYPE="constant", WARMUP_CONS_LR=0.05))
    assert _run_epochs(opt, sched, 5) == pytest.approx([0.05, 1, 1, 0.1, 0.1])


def test_scheduler_errors():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="cosine"):
        build_lr_scheduler(opt, _optim_cfg(LR_SCHEDULER="poly"))
    with pytest.raises(TypeError):
        build_lr_scheduler(opt, _optim_cfg(LR_SCHEDULER="multi_step", STEPSIZE=3))
    with pytest.raises(ValueError, match="WARMUP_TYPE"):
        build_lr_scheduler(opt, _optim_cfg(LR_SCHEDULER="cosine", WARMUP_EPOCH=1, WARMUP_TYPE="exp"))


def test_warmup_recount_false_quirk():
    """Epoch W still runs at B; later epochs follow torch's recursive cosine from the un-annealed B."""
    B, E, W = 0.002, 10, 2
    _, opt, sched = _build(_clip_cfg(B, E, WARMUP_EPOCH=W, WARMUP_RECOUNT=False))
    lrs = _run_epochs(opt, sched, E)
    assert lrs[:W] == pytest.approx([1e-5] * W)
    assert lrs[W] == pytest.approx(B)
    lr = B
    for e in range(W + 1, E):
        lr = lr * (1 + math.cos(math.pi * e / E)) / (1 + math.cos(math.pi * (e - 1) / E))
        assert lrs[e] == pytest.approx(lr, rel=1e-6)
    assert lrs[W + 1] == pytest.approx(B * (1 + math.cos(math.pi * (W + 1) / E)) / (1 + math.cos(math.pi * W / E)))
    # which is not the closed form
    assert lrs[W + 1] != pytest.approx(B * (1 + math.cos(math.pi * (W + 1) / E)) / 2, rel=1e-3)


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("split_at", [0, 1, 4])
@pytest.mark.parametrize("warmup_type", ["constant", "linear"])
def test_save_restore_mid_run_continues_schedule(split_at, warmup_type):
    cfg = _clip_cfg(0.002, 10, WARMUP_EPOCH=2, WARMUP_TYPE=warmup_type)
    _, opt, sched = _build(cfg)
    full = _run_epochs(opt, sched, 10)

    _, opt1, sched1 = _build(cfg)
    first = _run_epochs(opt1, sched1, split_at)
    state = _roundtrip({"optimizer": opt1.state_dict(), "scheduler": sched1.state_dict()})
    assert "successor_state" in state["scheduler"] and "successor" not in state["scheduler"]

    _, opt2, sched2 = _build(cfg)  # a fresh process would rebuild everything from cfg
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    assert sched2.successor.optimizer is opt2  # still drives the live optimizer
    rest = _run_epochs(opt2, sched2, 10 - split_at)
    assert first + rest == pytest.approx(full, rel=1e-9)


def test_restore_scheduler_alone_sets_optimizer_lr():
    cfg = _clip_cfg(0.002, 10)
    _, opt, sched = _build(cfg)
    full = _run_epochs(opt, sched, 10)
    _, opt1, sched1 = _build(cfg)
    _run_epochs(opt1, sched1, 5)
    state = _roundtrip(sched1.state_dict())
    _, opt2, sched2 = _build(cfg)
    sched2.load_state_dict(state)
    assert _run_epochs(opt2, sched2, 5) == pytest.approx(full[5:], rel=1e-9)


def test_legacy_state_with_pickled_successor_is_accepted():
    """Dassl's format: the state holds the successor object (bound to a copy of the optimizer)."""
    cfg = _clip_cfg(0.002, 10)
    _, opt, sched = _build(cfg)
    full = _run_epochs(opt, sched, 10)

    _, opt1, sched1 = _build(cfg)
    _run_epochs(opt1, sched1, 4)
    legacy = {k: v for k, v in sched1.__dict__.items() if k != "optimizer"}  # Dassl's state_dict()
    legacy = copy.deepcopy(legacy)  # what unpickling gives: a successor with its own optimizer copy
    assert legacy["successor"].optimizer is not opt1
    opt_state = copy.deepcopy(opt1.state_dict())

    _, opt2, sched2 = _build(cfg)
    opt2.load_state_dict(opt_state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. no "step before optimizer.step" warnings
        sched2.load_state_dict(legacy)
    assert sched2.successor.optimizer is opt2
    assert sched2.successor.last_epoch == sched1.successor.last_epoch
    assert _run_epochs(opt2, sched2, 6) == pytest.approx(full[4:], rel=1e-9)


def test_state_dict_is_weights_only_loadable_for_every_scheduler():
    for kind in ["single_step", "multi_step", "cosine"]:
        for warm in [-1, 1]:
            cfg = _optim_cfg(NAME="sgd", LR=0.1, LR_SCHEDULER=kind, STEPSIZE=(2, 4), WARMUP_EPOCH=warm,
                             WARMUP_TYPE="linear")
            _, opt, sched = _build(cfg)
            _run_epochs(opt, sched, 3)
            loaded = _roundtrip(sched.state_dict())
            assert loaded["last_epoch"] == sched.state_dict()["last_epoch"]
