"""DyT's pieces on a tiny random timm ViT: the LR schedule against the original's formula, real
skipping against the masked path (values and FLOPs), the MoE adapter, the original's checkpoint
format. The arithmetic against the original code is in tests/conformance/test_dyt.py."""
from __future__ import annotations

import argparse
import math
import pathlib

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from engine.checkpoint import UnsafeCheckpointError
from trainers.dyt import (Adapter, DynamicBlock, DyTSchedule, DyTSettings, DyTViT, MoEAdapter,
                         load_original_checkpoint)

WIDTH, MLP, TOKENS = 192, 768, 17  # ViT-Tiny at 64 px: 4x4 patches + the class token


def tiny_model(**settings) -> DyTViT:
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=5).eval()
    model = DyTViT(vit, DyTSettings(**settings))
    for block in vit.blocks:  # dispatcher logits of both signs, adapters not zero
        torch.nn.init.normal_(block.mlp_token_select.mlp_head.weight, std=0.5)
        torch.nn.init.normal_(block.adaptmlp.up_proj.weight, std=0.02)
    return model


def original_lr(step: int, steps_per_epoch: int, lr=1e-3, min_lr=1e-5, warmup=10, epochs=100) -> float:
    """util/lr_sched.adjust_learning_rate of the original, at epoch + it / iters_per_epoch."""
    ep = step / steps_per_epoch
    if ep < warmup:
        return lr * ep / warmup
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (ep - warmup) / (epochs - warmup)))


def test_schedule_is_the_originals_per_iteration():
    param = torch.nn.Parameter(torch.zeros(1))
    optim = torch.optim.AdamW([param], lr=1e-3)
    sched = DyTSchedule(optim, steps_per_epoch=16, epochs=100, warmup=10, min_lr=1e-5)
    seen = []
    for _ in range(1600):
        seen.append(optim.param_groups[0]["lr"])
        optim.step()
        sched.step()
    assert seen[0] == 0.0  # the very first step has LR 0
    assert seen[80] == pytest.approx(5e-4)  # epoch 5 of 10 warm-up epochs
    assert seen[160] == pytest.approx(1e-3)
    assert seen[16 * 55] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)  # half-way through the cosine
    assert seen == pytest.approx([original_lr(i, 16) for i in range(1600)], rel=1e-12, abs=1e-15)


def test_real_skipping_equals_the_masked_path_and_spends_mlp_flops_on_kept_tokens_only():
    model = tiny_model()
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        masked = model.run(images, "dynamic")
        with FlopCounterMode(display=False) as skip_count:
            skip = model.run(images, "skip")
        with FlopCounterMode(display=False) as full_count:
            model.run(images, "complete")
    assert torch.equal(skip.gates, masked.gates)
    dropped = int((1 - masked.gates).sum())
    assert 0 < dropped < masked.gates.numel()
    # fp32: the gathered GEMMs sum in another order; the logits are O(1).
    assert torch.allclose(skip.logits, masked.logits, atol=1e-5)
    # fc1 and fc2 (2 x WIDTH x MLP multiply-adds per token, 2 FLOPs each) are skipped for every dropped
    # token; the complete pass also has no dispatcher (WIDTH x 1 per patch token and block).
    dispatcher = 2 * WIDTH * 3 * (TOKENS - 1) * 12
    mlp_per_token = 2 * 2 * WIDTH * MLP
    assert full_count.get_total_flops() - skip_count.get_total_flops() == dropped * mlp_per_token - dispatcher


def test_train_mode_draws_hard_gates_with_a_straight_through_gradient():
    model = tiny_model().train()
    out = model.run(torch.randn(2, 3, 64, 64), "dynamic")
    assert set(out.gates.unique().tolist()) <= {0.0, 1.0}
    out.gates.sum().backward()
    grad = model.vit.blocks[0].mlp_token_select.mlp_head.weight.grad
    assert grad is not None and grad.abs().sum() > 0  # through the soft sigmoid


class SeededDraws:
    """The same Gumbel exponentials and dropout masks for every run (per pass and block)."""

    def exponentials(self, pass_index, block, shape):
        g = torch.Generator().manual_seed(100 * pass_index + block)
        return torch.empty(shape).exponential_(generator=g), torch.empty(shape).exponential_(generator=g)

    def dropout_keep(self, pass_index, block, shape):
        g = torch.Generator().manual_seed(1000 + 100 * pass_index + block)
        return torch.rand(shape, generator=g) > 0.1


def test_training_back_propagates_through_the_mlp_of_kept_tokens_only_with_the_originals_gradients(monkeypatch):
    def step(model):
        images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        out = model.training_step(images, torch.tensor([0, 3, 4]), SeededDraws())
        out.loss.total.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        return out.loss.total.detach(), model.last_step.gates, grads

    fc1_rows = []
    model = tiny_model().double().train()
    # Block 1: block 0's MLP is in no graph (nothing before its adapter needs a gradient).
    model.vit.blocks[1].mlp.fc1.register_full_backward_hook(lambda m, gi, go: fc1_rows.append(go[0].numel() // MLP))
    loss, gates, grads = step(model)
    kept = int(gates[:, 1].sum())
    # The student's graph holds block 1's MLP for its kept patch tokens and the 3 class tokens only; the
    # complete pass (the teacher's CE) back-propagates through all 3 x 17 tokens.
    assert sorted(fc1_rows) == [kept + 3, 3 * TOKENS]
    assert 0 < kept < 3 * (TOKENS - 1)

    # The original's arithmetic: the masked MLP of every token in the graph.
    monkeypatch.setattr(DynamicBlock, "_masked_mlp_graph_on_kept_tokens",
                        lambda self, x, gate: self.drop_path2(self.ls2(self.mlp(self.norm2(x)))))
    reference_loss, reference_gates, reference_grads = step(tiny_model().double().train())
    assert torch.equal(gates, reference_gates)
    # float64: the kept rows' GEMMs may sum in another order (at most 768 terms, relative error
    # <= 768 * 2^-53 ~ 1e-13 per dot product), far below 1e-10 of each tensor's largest gradient.
    assert set(grads) == set(reference_grads) and len(grads) == 12 * 6 + 2
    for name, grad in reference_grads.items():
        assert torch.allclose(grads[name], grad, rtol=0, atol=1e-10 * grad.abs().max().item()), name
    assert torch.allclose(loss, reference_loss, rtol=1e-12, atol=0)


def test_the_kept_tokens_mlp_graph_saves_only_gelus_input_and_the_layer_norms_statistics():
    block = tiny_model().train().vit.blocks[1]
    x = torch.randn(3, TOKENS, WIDTH, generator=torch.Generator().manual_seed(2), requires_grad=True)
    gate = (torch.rand(3, TOKENS, 1, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    gate[:, 0] = 1  # the class token
    kept, rows = int(gate.sum()), 3 * TOKENS
    saved = {}  # storage -> (dtype, bytes): what the graph holds until backward, each storage once
    frozen = {p.untyped_storage().data_ptr() for p in block.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in frozen | {x.untyped_storage().data_ptr()}:  # x: the caller's, saved anyway
            saved[storage.data_ptr()] = (t.dtype, storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = block._masked_mlp_graph_on_kept_tokens(x, gate)
    float_bytes = sum(n for dtype, n in saved.values() if dtype.is_floating_point)
    # GELU's input for the kept rows [kept, MLP] and LN2's mean and 1/std per row [rows, 1]: no gathered
    # copy of the kept rows (LN2's input) and no copy of the kept rows' MLP output (index_copy's source).
    assert 0 < kept < rows and float_bytes == 4 * (kept * MLP + 2 * rows)
    out.sum().backward()  # the saved tensors are the ones backward needs
    assert x.grad[gate[..., 0] == 0].abs().max() == 0 and x.grad[gate[..., 0] == 1].abs().max() > 0


def test_moe_adapter_with_identical_experts_is_the_plain_adapter():
    torch.manual_seed(0)
    plain = Adapter(WIDTH, 8, 1.0, 0.0)
    torch.nn.init.normal_(plain.up_proj.weight, std=0.1)
    moe = MoEAdapter(WIDTH, 8, 1.0, 0.0, experts=4)
    moe.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        moe.down_experts.copy_(plain.down_proj.weight.expand(3, -1, -1))
        moe.up_experts.copy_(plain.up_proj.weight.expand(3, -1, -1))
        torch.nn.init.normal_(moe.router.weight)  # any routing: the experts agree
    x = torch.randn(2, TOKENS, WIDTH)
    assert torch.allclose(moe(x), plain(x), atol=1e-5)
    with torch.no_grad():
        moe.up_experts.zero_()
    assert not torch.allclose(moe(x), plain(x), atol=1e-3)  # the experts do count


def test_original_checkpoint_format_loads_and_other_classes_are_refused(tmp_path):
    state = {"head.weight": torch.ones(2, 3)}
    path = tmp_path / "checkpoint-3.pth"
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 3,
                "scaler": {"scale": 1024.0}, "args": argparse.Namespace(ffn_num=16, dataset="cifar")}, path)
    assert torch.equal(load_original_checkpoint(str(path))["head.weight"], state["head.weight"])
    torch.save({"model": state, "args": pathlib.PurePosixPath("/x")}, path)
    with pytest.raises(UnsafeCheckpointError, match="argparse.Namespace"):
        load_original_checkpoint(str(path))
