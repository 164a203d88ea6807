"""OPTIM.UPDATE_IN_BACKWARD (engine.optim.UpdateInBackward): the update applied during backward,
bucket by bucket, is the update of one optimizer.step() after backward, bit for bit, and frees each
bucket's gradients before the pass ends."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from yacs.config import CfgNode

from engine.errors import ConfigValueError
from engine.optim import UpdateInBackward, _GradientBucket, build_update_in_backward

WIDTH = 64  # a 64 x 64 fp32 weight is 16 KB


def mlp(unused_head: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = nn.ModuleList([nn.Linear(WIDTH, WIDTH) for _ in range(4)])
    if unused_head:
        layers.append(nn.Linear(WIDTH, 3))  # gets no gradient: its update must be skipped as by step()
    return layers


def run(layers: nn.Module) -> torch.Tensor:
    x = torch.randn(8, WIDTH, generator=torch.Generator().manual_seed(len(layers)))
    for layer in list(layers)[:4]:
        x = torch.tanh(layer(x))
    return x.square().mean()


OPTIMIZERS = {
    # CPU fp32 SGD takes torch's fused kernel (engine.optim.build_optimizer does so too).
    "sgd": lambda groups: torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=5e-4, fused=True),
    "adamw": lambda groups: torch.optim.AdamW(groups, lr=1e-2, weight_decay=0.05),
    "rmsprop": lambda groups: torch.optim.RMSprop(groups, lr=1e-2, momentum=0.9),
}


def groups_of(layers: nn.Module) -> list[dict]:
    # Two groups with their own LR, as STAGED_LR or a method's parameter groups make them.
    return [{"params": list(layers[0].parameters()), "lr": 0.01},
            {"params": [p for layer in list(layers)[1:] for p in layer.parameters()]}]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_the_update_in_backward_is_the_step_after_backward_bit_for_bit(name):
    reference, model = mlp(unused_head=True), mlp(unused_head=True)
    ref_optim, optim = OPTIMIZERS[name](groups_of(reference)), OPTIMIZERS[name](groups_of(model))
    update = UpdateInBackward(optim, bucket_mb=0.02)  # one Linear per bucket (weight 16 KB + bias)
    assert len(update.buckets) > len(optim.param_groups)
    for step in range(3):
        if step == 1:  # a resume: loading replaces the optimizer's state and its group dicts
            for optimizer in (ref_optim, optim):
                optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        ref_optim.zero_grad()
        run(reference).backward()
        ref_optim.step()
        optim.zero_grad()
        with update.armed():
            run(model).backward()
        assert all(p.grad is None for p in model.parameters())  # every gradient freed in the pass
        optim.step()  # as the engine does: nothing left to do
        for groups in (ref_optim.param_groups, optim.param_groups):  # a schedule changes the LRs
            for group in groups:
                group["lr"] *= 0.5
    for ref, param in zip(reference.parameters(), model.parameters()):
        assert torch.equal(ref, param)
    ref_state, state = ref_optim.state_dict(), optim.state_dict()
    assert ref_state["state"].keys() == state["state"].keys()  # the unused head has no state on either side
    for index, entry in ref_state["state"].items():
        for key, value in entry.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(state["state"][index][key])), (index, key)


def test_a_bucket_is_updated_and_freed_before_the_pass_ends(monkeypatch):
    model = nn.ModuleList([nn.Linear(WIDTH, WIDTH) for _ in range(4)])
    optim = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    update = UpdateInBackward(optim, bucket_mb=0.02)
    alive_at_flush = []
    flush = _GradientBucket.flush

    def counting_flush(bucket):
        if not bucket.updated:
            alive_at_flush.append(sum(p.grad is not None for p in model.parameters()))
        flush(bucket)

    monkeypatch.setattr(_GradientBucket, "flush", counting_flush)
    with update.armed():
        run(model).backward()
    # Backward reaches the last layer first: each bucket (2 tensors) goes before the next is complete,
    # where the step after backward holds all 8 gradients.
    assert len(alive_at_flush) == 4 and max(alive_at_flush) == 2


def test_a_backward_outside_the_step_keeps_its_gradients():
    model = mlp()
    optim = torch.optim.SGD(model.parameters(), lr=0.1)
    UpdateInBackward(optim, bucket_mb=0.02)
    before = [p.detach().clone() for p in model.parameters()]
    run(model).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_a_second_accumulation_into_an_updated_parameter_stops_the_step():
    # (A parameter whose value the graph saved is caught by autograd's own version check; a scale
    # saves nothing, so only the bucket's guard sees the second gradient.)
    scale = nn.Parameter(torch.ones(3))
    update = UpdateInBackward(torch.optim.SGD([scale], lr=0.1), bucket_mb=1.0)
    with pytest.raises(RuntimeError, match="accumulated twice"):
        with update.armed():
            loss = (scale * 2.0).sum()
            loss.backward(retain_graph=True)
            loss.backward()


def optim_cfg(choice: str) -> CfgNode:
    return CfgNode({"UPDATE_IN_BACKWARD": choice})


def test_auto_takes_the_update_into_backward_only_for_large_gradients():
    small = torch.optim.SGD(mlp().parameters(), lr=0.1)
    assert build_update_in_backward(small, optim_cfg("auto")) is None
    assert isinstance(build_update_in_backward(small, optim_cfg("always")), UpdateInBackward)
    large = torch.optim.SGD([nn.Parameter(torch.zeros(17 * 2**20 // 4))], lr=0.1)  # 17 MB
    large.add_param_group({"params": [nn.Parameter(torch.zeros(48 * 2**20 // 4))]})  # + 48 MB >= 64 MB
    assert isinstance(build_update_in_backward(large, optim_cfg("auto")), UpdateInBackward)
    assert build_update_in_backward(large, optim_cfg("never")) is None


def test_an_unknown_choice_names_the_key_and_the_choices():
    with pytest.raises(ConfigValueError, match=r"OPTIM.UPDATE_IN_BACKWARD='on'.*'auto', 'always', 'never'"):
        build_update_in_backward(None, optim_cfg("on"))
