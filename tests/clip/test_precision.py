"""Mixed fp16 (OpenAI's convert_weights), fp16 forward and autocast paths."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import clip
from tests.clip.conftest import TEXTS, images_for
from tests.factories.clip_checkpoint import _is_fp16_in_release
from tests.tolerances import (
    BF16_UNIT_ROUNDOFF,
    FP16_UNIT_ROUNDOFF,
    fp32_atol,
    low_precision_relative_error,
)


@pytest.mark.parametrize("kind", ["vit", "rn"])
def test_build_model_is_mixed_fp16_like_openai(kind, request):
    model = clip.build_model(request.getfixturevalue(f"{kind}_state_dict"))
    assert model.dtype == torch.float16
    state = model.state_dict()
    for key, value in state.items():
        if not value.is_floating_point():
            continue
        expected = torch.float16 if _is_fp16_in_release(key) else torch.float32
        assert value.dtype == expected, key
    assert state["logit_scale"].dtype == torch.float32
    assert state["token_embedding.weight"].dtype == torch.float32
    assert state["ln_final.weight"].dtype == torch.float32
    assert state["text_projection"].dtype == torch.float16


def _relative_error(low, ref):
    """Per-row |low - ref| / |ref| of low-precision features against fp32 ones."""
    ref = ref.float()
    return ((low.float() - ref).norm(dim=-1) / ref.norm(dim=-1)).max()


def _roundings(tower) -> int:
    """Low-precision roundings along a tower, for `low_precision_relative_error`.

    A transformer block: q/k/v, scores, weighted sum, output projection and the two MLP matmuls
    (2 each: weights and result) plus LayerNorm, softmax, residual add, LayerNorm, activation,
    residual add (1 each): 18. ViT embedding and head: patch conv 2, positions 1, ln_pre 1, ln_post 1,
    projection 2. Text embedding and head: positions 1, ln_final 1, projection 2. ResNet: each
    convolution 2 plus its BatchNorm 1 (ReLU is exact), each average pool 1, each residual add 1, and
    attention pooling (mean, positions, softmax: 1 each; q, k, v, scores, weighted sum, c_proj: 2 each).
    """
    if isinstance(tower, clip.model.ModifiedResNet):
        convs = sum(isinstance(m, torch.nn.Conv2d) for m in tower.modules())
        pools = sum(isinstance(m, torch.nn.AvgPool2d) for m in tower.modules())
        blocks = sum(isinstance(m, clip.model.Bottleneck) for m in tower.modules())
        return 3 * convs + pools + blocks + 15
    if isinstance(tower, clip.model.VisionTransformer):
        return 18 * tower.transformer.layers + 7
    return 18 * tower.transformer.layers + 4  # the CLIP model's text tower


@pytest.mark.parametrize("kind", ["vit", "rn"])
def test_mixed_fp16_forward_agrees_with_fp32(kind, request):
    fp32 = request.getfixturevalue(f"{kind}_model")
    fp16 = clip.build_model(request.getfixturevalue(f"{kind}_state_dict"))
    images, tokens = images_for(fp32), clip.tokenize(TEXTS)
    with torch.no_grad():
        img16, txt16 = fp16.encode_image(images), fp16.encode_text(tokens)
        img32, txt32 = fp32.encode_image(images), fp32.encode_text(tokens)
    assert img16.dtype == torch.float16 and txt16.dtype == torch.float16
    assert _relative_error(img16, img32) <= low_precision_relative_error(_roundings(fp32.visual), FP16_UNIT_ROUNDOFF)
    assert _relative_error(txt16, txt32) <= low_precision_relative_error(_roundings(fp32), FP16_UNIT_ROUNDOFF)


@pytest.mark.parametrize("kind", ["vit", "rn"])
def test_cpu_bf16_autocast_agrees_with_fp32(kind, request):
    model = request.getfixturevalue(f"{kind}_model")
    images, tokens = images_for(model), clip.tokenize(TEXTS)
    with torch.no_grad():
        img32, txt32 = model.encode_image(images), model.encode_text(tokens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            img, txt = model.encode_image(images), model.encode_text(tokens)
            logits, _ = model(images, tokens)
    assert img.dtype == torch.bfloat16 and txt.dtype == torch.bfloat16
    assert _relative_error(img, img32) <= low_precision_relative_error(_roundings(model.visual), BF16_UNIT_ROUNDOFF)
    assert _relative_error(txt, txt32) <= low_precision_relative_error(_roundings(model), BF16_UNIT_ROUNDOFF)
    assert torch.isfinite(logits).all()


def test_layer_norm_computes_in_fp32():
    ln = clip.model.LayerNorm(8)
    x = (torch.randn(2, 8) * 1000 + 3e4).half()  # fp16 statistics would overflow/lose precision
    out = ln(x)
    assert out.dtype == torch.float16
    ref = F.layer_norm(x.float(), (8,))
    # One fp16 rounding of the output (<= u16 * |value|) on top of two fp32 LayerNorms that may sum
    # their mean and variance over 8 values in other orders. fp16 statistics would overflow to inf.
    magnitude = float(ref.abs().max())
    atol = FP16_UNIT_ROUNDOFF * magnitude + fp32_atol(magnitude, 2 * 8)
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=0)


def test_gradients_flow_to_prompt_inputs_under_fp32(vit_model):
    # Prompt learners train inputs of a frozen model: gradients must reach the embeddings.
    tokens = clip.tokenize(["x x a dog."])
    x = vit_model.token_embedding(tokens).detach().requires_grad_(True)
    vit_model.encode_text_embeddings(x, tokens.argmax(-1)).sum().backward()
    assert x.grad is not None and x.grad[0, 1:3].abs().sum() > 0
    assert x.grad[0, int(tokens.argmax()) + 1 :].abs().sum() == 0  # truncated away: no gradient
    vit_model.zero_grad(set_to_none=True)  # the model fixture is shared


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("kind", ["vit", "rn"])
def test_cuda_fp16_and_autocast(kind, request):
    fp32 = request.getfixturevalue(f"{kind}_model")
    images, tokens = images_for(fp32), clip.tokenize(TEXTS)
    with torch.no_grad():
        ref_img, ref_txt = fp32.encode_image(images), fp32.encode_text(tokens)
        mixed = clip.build_model(request.getfixturevalue(f"{kind}_state_dict")).cuda()
        img, txt = mixed.encode_image(images.cuda()), mixed.encode_text(tokens.cuda())
        img_bound = {dtype: low_precision_relative_error(_roundings(fp32.visual), u)
                     for dtype, u in ((torch.float16, FP16_UNIT_ROUNDOFF), (torch.bfloat16, BF16_UNIT_ROUNDOFF))}
        txt_bound = {dtype: low_precision_relative_error(_roundings(fp32), u)
                     for dtype, u in ((torch.float16, FP16_UNIT_ROUNDOFF), (torch.bfloat16, BF16_UNIT_ROUNDOFF))}
        assert _relative_error(img.cpu(), ref_img) <= img_bound[torch.float16]
        assert _relative_error(txt.cpu(), ref_txt) <= txt_bound[torch.float16]
        model32 = clip.build_model(request.getfixturevalue(f"{kind}_state_dict")).float().cuda()
        for dtype in (torch.float16, torch.bfloat16):
            with torch.autocast("cuda", dtype=dtype):
                img, txt = model32.encode_image(images.cuda()), model32.encode_text(tokens.cuda())
            assert img.dtype == dtype
            assert _relative_error(img.cpu(), ref_img) <= img_bound[dtype]
            assert _relative_error(txt.cpu(), ref_txt) <= txt_bound[dtype]


@cuda
def test_cuda_load_gives_mixed_model(tmp_path):
    from tests.factories.clip_checkpoint import write_random_clip

    model, _ = clip.load(str(write_random_clip(tmp_path / "m.pt")), device="cuda")
    assert model.dtype == torch.float16 and model.logit_scale.dtype == torch.float32
    assert next(model.parameters()).is_cuda


@pytest.mark.parametrize("file_dtype", ["fp32", "all_fp16"])
def test_build_model_normalises_any_file_dtypes(vit_state_dict, file_dtype):
    cast = torch.float32 if file_dtype == "fp32" else torch.float16
    state = {k: v.to(cast) if v.is_floating_point() else v for k, v in vit_state_dict.items()}
    model = clip.build_model(state)
    reference = clip.build_model(vit_state_dict)
    for (key, value), ref in zip(model.state_dict().items(), reference.state_dict().values()):
        assert value.dtype == ref.dtype, key
    assert model.attn_mask.device.type == "cpu" and model.attn_mask.dtype == torch.float32
    assert all(p.requires_grad for p in model.parameters())
    # The model owns its tensors: training it must not write into the caller's dict.
    with torch.no_grad():
        model.ln_final.weight.add_(1.0)
    assert not torch.equal(model.ln_final.weight, state["ln_final.weight"].float())


# --- precision="fp32": a checkpoint's fp32 values survive ------------------------------------------

# Relative feature difference between two fp32 implementations of the same network: each stage
# (a GEMM/conv, a softmax, a LayerNorm) rounds a sum of at most K_MAX terms, with a typical
# relative error of sqrt(K_MAX) * 2**-24, and the error of <= STAGES sequential stages adds up.
# K_MAX = 1152 (the tiny ResNet's 3x3 conv over 128 channels), STAGES = 24 (the deepest tiny tower).
K_MAX, STAGES = 1152, 24
FP32_REORDERING_TOL = STAGES * K_MAX**0.5 * 2**-24  # ~4.9e-5
# Rounding the weights to fp16 (unit roundoff 2**-11 ~ 4.9e-4 per weight) moves features by far
# more than that; the tests check it does, so the tolerance does discriminate.


def _fp32_original(kind: str) -> clip.CLIP:
    """A CLIP module initialised in fp32 (CLIP's own recipe), as a fine-tuned model would be."""
    from dataclasses import asdict

    from tests.factories.clip_checkpoint import random_openai_state_dict

    config = clip.infer_config(random_openai_state_dict(kind, seed=7))
    torch.manual_seed(7)
    return clip.CLIP(**asdict(config)).eval()


def _features(model, images, tokens):
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def _relative(a, b):
    return ((a - b).norm(dim=-1) / b.norm(dim=-1)).max().item()


@pytest.mark.parametrize("kind", ["vit", "rn"])
def test_fp32_file_keeps_its_values_with_precision_fp32(kind, tmp_path):
    original = _fp32_original(kind)
    path = tmp_path / "finetuned.pt"
    torch.save(original.state_dict(), path)
    images, tokens = images_for(original), clip.tokenize(TEXTS)
    expected = _features(original, images, tokens)

    built = clip.build_model(clip.load_state_dict(str(path)), precision="fp32")
    loaded, _ = clip.load(str(path), precision="fp32")
    for model in (built, loaded):
        assert all(p.dtype == torch.float32 for p in model.parameters())
        for key, value in original.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), key
        img, txt = _features(model, images, tokens)
        assert torch.equal(img, expected[0]) and torch.equal(txt, expected[1])
    # The mixed-fp16 path rounds them: what this precision exists to avoid.
    rounded = _features(clip.build_model(original.state_dict()).float(), images, tokens)
    assert not torch.equal(rounded[0], expected[0])


def _open_clip_fp32(state_dict):
    import open_clip

    # open_clip's OpenAI loader rounds to fp16 like OpenAI's; loading the fp32 values again
    # into its (then fp32) model gives open_clip's computation on the file's exact values.
    model = open_clip.model.build_model_from_openai_state_dict(dict(state_dict), quick_gelu=True, cast_dtype=None)
    model = model.float().eval()
    model.load_state_dict({k: v for k, v in state_dict.items() if k not in clip.model.EXTRA_KEYS})
    return model


@pytest.mark.parametrize("kind", ["vit", "rn"])
def test_fp32_file_matches_open_clip_in_fp32(kind):
    from tests.factories.clip_checkpoint import random_openai_state_dict

    state = random_openai_state_dict(kind, seed=8, dtype=torch.float32)
    ref = _open_clip_fp32(state)
    ours = clip.build_model(state, precision="fp32")
    images, tokens = images_for(ours), clip.tokenize(TEXTS)
    ref_img, ref_txt = _features(ref, images, tokens)
    img, txt = _features(ours, images, tokens)
    assert _relative(img, ref_img) < FP32_REORDERING_TOL
    assert _relative(txt, ref_txt) < FP32_REORDERING_TOL
    old_img, old_txt = _features(clip.build_model(state).float(), images, tokens)  # fp16-rounded weights
    assert _relative(old_img, ref_img) > FP32_REORDERING_TOL
    assert _relative(old_txt, ref_txt) > FP32_REORDERING_TOL


@pytest.mark.parametrize("file_dtype", ["openai_mixed", "all_fp16"])
def test_fp16_file_gives_identical_fp32_weights_both_ways(vit_state_dict, file_dtype):
    state = vit_state_dict
    if file_dtype == "all_fp16":
        state = {k: v.half() if v.is_floating_point() else v for k, v in vit_state_dict.items()}
    direct = clip.build_model(state, precision="fp32").state_dict()
    via_fp16 = clip.build_model(state).float().state_dict()  # the path trainers took so far
    assert direct.keys() == via_fp16.keys()
    for key, value in direct.items():
        assert value.dtype == via_fp16[key].dtype and torch.equal(value, via_fp16[key]), key


def test_load_precision_defaults_to_fp32_on_cpu_and_accepts_fp16(tmp_path):
    from tests.factories.clip_checkpoint import write_random_clip

    path = str(write_random_clip(tmp_path / "m.pt"))
    default, _ = clip.load(path)
    assert default.dtype == torch.float32
    mixed, _ = clip.load(path, precision="fp16")
    assert mixed.dtype == torch.float16 and mixed.ln_final.weight.dtype == torch.float32


def test_unknown_precision_is_refused(vit_state_dict):
    with pytest.raises(ValueError, match="fp16.*fp32.*'bf16'"):
        clip.build_model(vit_state_dict, precision="bf16")


@pytest.mark.parametrize("causal", [False, True])
def test_bf16_attention_on_a_cpu_runs_plain_ops_within_bf16_rounding(causal, fused_attention_calls):
    """Fast mode's attention (bf16 on a CPU) skips the fused kernel, which is slower there, and stays
    within bf16's rounding of the exact attention of the same inputs; fp32 keeps the fused kernel."""
    torch.manual_seed(0)
    n, heads, length, head_dim = 2, 4, 9, 16
    q, k, v = (torch.randn(n, heads, length, head_dim) * s for s in (1.5, 1.5, 1.0))
    q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
    mask = torch.full((length, length), float("-inf")).triu(1) if causal else None
    out = clip.model.attention(q, k, v, None if mask is None else mask.to(torch.bfloat16))
    assert fused_attention_calls.dtypes == [] and out.dtype == torch.bfloat16

    exact = fused_attention_calls.fused(q.double(), k.double(), v.double(), attn_mask=None if mask is None else mask.double())
    scores = q.double() @ k.double().transpose(-1, -2) / head_dim**0.5
    # The scaling by 1/4 is exact; the scores are rounded to bf16 (|δs| ≤ u·|s|), which moves each
    # softmax weight by a factor of at most exp(2u·max|s|) (its numerator and the normaliser), and the
    # weights are rounded (u): Σ_j |δp_j|·|v_j| ≤ (2·max|s| + 1)·u·max|v|. The weighted sum
    # accumulates in fp32 and is rounded once (u·max|v|); one more u covers the second-order terms.
    bound = (2 * scores.abs().max() + 3) * BF16_UNIT_ROUNDOFF * v.double().abs().max()
    assert (out.double() - exact).abs().max() <= bound

    clip.model.attention(q.float(), k.float(), v.float(), None if mask is None else mask)
    assert fused_attention_calls.dtypes == [torch.float32]
