"""Our CLIP against an independent implementation (open_clip) on the same random weights."""
from __future__ import annotations

import open_clip
import pytest
import torch

import clip
from tests.clip.conftest import TEXTS, images_for


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
    # Features are O(1) here, so an absolute tolerance is meaningful.
    assert ours_img.abs().max() > 0.1 and ours_txt.abs().max() > 0.1
    torch.testing.assert_close(ours_img, ref_img, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_txt, ref_txt, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_logits, ref_logits, atol=1e-3, rtol=0)  # logits are scaled by 100


def test_text_features_depend_on_every_token_before_eot(vit_model):
    # Guards against pooling the wrong position: changing one word changes the feature.
    a, b = clip.tokenize(["a photo of a dog.", "a photo of a cat."])[:, None]
    with torch.no_grad():
        fa, fb = vit_model.encode_text(a), vit_model.encode_text(b)
    assert (fa - fb).abs().max() > 1e-3


def test_forward_logits_are_scaled_cosines(vit_model):
    images, tokens = images_for(vit_model, 2), clip.tokenize(TEXTS)
    with torch.no_grad():
        per_image, per_text = vit_model(images, tokens)
        img = vit_model.encode_image(images)
        txt = vit_model.encode_text(tokens)
    expected = 100.0 * torch.nn.functional.cosine_similarity(img[:, None], txt[None], dim=-1)
    assert per_image.shape == (2, len(TEXTS))
    torch.testing.assert_close(per_image, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(per_text, per_image.t())


def test_int32_tokens_give_same_features(vit_model):
    tokens = clip.tokenize(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(vit_model.encode_text(tokens.int()), vit_model.encode_text(tokens))
