"""Mixed fp16 (OpenAI's convert_weights), fp16 forward and autocast paths."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import clip
from tests.clip.conftest import TEXTS, images_for
from tests.factories.clip_checkpoint import _is_fp16_in_release


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


def _cosine(a, b):
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


@pytest.mark.parametrize("kind", ["vit", "rn"])
def test_mixed_fp16_forward_agrees_with_fp32(kind, request):
    fp32 = request.getfixturevalue(f"{kind}_model")
    fp16 = clip.build_model(request.getfixturevalue(f"{kind}_state_dict"))
    images, tokens = images_for(fp32), clip.tokenize(TEXTS)
    with torch.no_grad():
        img16, txt16 = fp16.encode_image(images), fp16.encode_text(tokens)
        img32, txt32 = fp32.encode_image(images), fp32.encode_text(tokens)
    assert img16.dtype == torch.float16 and txt16.dtype == torch.float16
    assert _cosine(img16, img32).min() > 0.999
    assert _cosine(txt16, txt32).min() > 0.999


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
    assert _cosine(img, img32).min() > 0.99
    assert _cosine(txt, txt32).min() > 0.99
    assert torch.isfinite(logits).all()


def test_layer_norm_computes_in_fp32():
    ln = clip.model.LayerNorm(8)
    x = (torch.randn(2, 8) * 1000 + 3e4).half()  # fp16 statistics would overflow/lose precision
    out = ln(x)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), F.layer_norm(x.float(), (8,)), atol=2e-3, rtol=0)


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
        assert _cosine(img.cpu(), ref_img).min() > 0.999 and _cosine(txt.cpu(), ref_txt).min() > 0.999
        model32 = clip.build_model(request.getfixturevalue(f"{kind}_state_dict")).float().cuda()
        for dtype in (torch.float16, torch.bfloat16):
            with torch.autocast("cuda", dtype=dtype):
                img, txt = model32.encode_image(images.cuda()), model32.encode_text(tokens.cuda())
            assert img.dtype == dtype
            assert _cosine(img.cpu(), ref_img).min() > 0.99 and _cosine(txt.cpu(), ref_txt).min() > 0.99


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
