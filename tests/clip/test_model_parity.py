"""Our CLIP against an independent implementation (open_clip) on the same random weights."""
from __future__ import annotations

import open_clip
import pytest
import torch

import clip
from tests.clip.conftest import TEXTS, images_for
from tests.tolerances import clip_image_relative_atol, clip_text_relative_atol, cosine_logit_atol, fp32_atol


def _open_clip_reference(state_dict):
    # open_clip's loader for OpenAI state dicts, built in fp32; it loads strictly, so this also
    # checks that the factory's key names/shapes are OpenAI's.
    model = open_clip.model.build_model_from_openai_state_dict(dict(state_dict), quick_gelu=True, cast_dtype=None)
    return model.float().eval()


@pytest.mark.parametrize("kind", ["vit", "rn"])
def test_features_match_open_clip(kind, request):
    state_dict = request.getfixturevalue(f"{kind}_state_dict")
    ours = request.getfixturevalue(f"{kind}_model")
    ref = _open_clip_reference(state_dict)
    images = images_for(ours)
    tokens = clip.tokenize(TEXTS)
    with torch.no_grad():
        ours_img, ref_img = ours.encode_image(images), ref.encode_image(images)
        ours_txt, ref_txt = ours.encode_text(tokens), ref.encode_text(tokens)
        ours_logits, _ = ours(images, tokens)
        ref_img_n = ref_img / ref_img.norm(dim=-1, keepdim=True)
        ref_txt_n = ref_txt / ref_txt.norm(dim=-1, keepdim=True)
        ref_logits = ref.logit_scale.exp() * ref_img_n @ ref_txt_n.t()
    # Features are O(1) here, so an absolute tolerance is meaningful. The two implementations do the
    # same maths in other orders (SDPA vs nn.MultiheadAttention, 77 vs truncated tokens).
    assert ours_img.abs().max() > 0.1 and ours_txt.abs().max() > 0.1
    img_rel, txt_rel = clip_image_relative_atol(ours), clip_text_relative_atol(ours)
    torch.testing.assert_close(ours_img, ref_img, atol=img_rel * float(ref_img.abs().max()), rtol=0)
    torch.testing.assert_close(ours_txt, ref_txt, atol=txt_rel * float(ref_txt.abs().max()), rtol=0)
    # Logits are 100 * cosines: each tower's relative error moves a cosine by at most that much.
    torch.testing.assert_close(ours_logits, ref_logits, atol=cosine_logit_atol(100.0, img_rel, txt_rel), rtol=0)


def test_text_features_depend_on_every_token_before_eot(vit_model):
    # Guards against pooling the wrong position: changing one word changes the feature.
    a, b = clip.tokenize(["a photo of a dog.", "a photo of a cat."])[:, None]
    with torch.no_grad():
        fa, fb = vit_model.encode_text(a), vit_model.encode_text(b)
    assert (fa - fb).abs().max() > 10 * clip_text_relative_atol(vit_model) * fa.abs().max()  # far beyond rounding


def test_forward_logits_are_scaled_cosines(vit_model):
    images, tokens = images_for(vit_model, 2), clip.tokenize(TEXTS)
    with torch.no_grad():
        per_image, per_text = vit_model(images, tokens)
        img = vit_model.encode_image(images)
        txt = vit_model.encode_text(tokens)
    expected = 100.0 * torch.nn.functional.cosine_similarity(img[:, None], txt[None], dim=-1)
    assert per_image.shape == (2, len(TEXTS))
    # The features are the same bits (same calls, same process); normalising and the dot product vs
    # cosine_similarity: three sums over embed_dim (two norms, one dot) plus a few roundings (exp, scale).
    atol = fp32_atol(expected.abs().max(), 3 * img.shape[-1] + 4)
    torch.testing.assert_close(per_image, expected, atol=atol, rtol=0)
    assert torch.equal(per_text, per_image.t())


def test_int32_tokens_give_same_features(vit_model):
    tokens = clip.tokenize(TEXTS)
    with torch.no_grad():
        # encode_text casts the ids to int64 first: the very same computation, bit for bit.
        assert torch.equal(vit_model.encode_text(tokens.int()), vit_model.encode_text(tokens))
