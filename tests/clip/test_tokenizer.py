"""Tokenizer ids against the reference vectors of spec §5.5."""
from __future__ import annotations

import pytest
import torch

import clip

VECTORS = [
    ("a photo of a", [320, 1125, 539, 320]),
    ("a photo of a dog.", [320, 1125, 539, 320, 1929, 269]),
    ("A Photo  of a   DOG.", [320, 1125, 539, 320, 1929, 269]),
    ("X X X X", [343, 343, 343, 343]),
    ("a photo of a cat, a type of pet.", [320, 1125, 539, 320, 2368, 267, 320, 3877, 539, 3703, 269]),
    ("Annual Crop Land", [2906, 9955, 973]),
    ("2012 Tesla Model S", [273, 271, 272, 273, 12254, 2863, 338]),
    ("2000 AM General Hummer SUV", [273, 271, 271, 271, 687, 3658, 845, 7508, 15985]),
    ("abyssinian", [16342, 690, 36638]),
    ("water lilly", [1573, 21815]),
    ("don't", [847, 713]),
    ("&amp; café", [261, 15304]),
    ("Naïve RÉSUMÉ", [1097, 35689, 563, 29106, 7054, 4166]),
    ("hello   world\n\tagain", [3306, 1002, 1495]),
    ("<|endoftext|>", [49407]),
    ("", []),
]


@pytest.mark.parametrize("text,ids", VECTORS)
def test_encode_matches_reference(text, ids):
    assert clip.encode_text_tokens(text) == ids


def test_special_token_ids():
    assert (clip.SOT_TOKEN, clip.EOT_TOKEN) == (49406, 49407)
    assert clip.encode_text_tokens("<|startoftext|>") == [49406]
    # open_clip's own names for the special tokens are ordinary text for OpenAI's tokenizer.
    assert 49407 not in clip.encode_text_tokens("<end_of_text>")


def test_tokenize_dog_row():
    tokens = clip.tokenize("a photo of a dog.")
    assert tokens.shape == (1, 77) and tokens.dtype == torch.long
    assert tokens[0, :9].tolist() == [49406, 320, 1125, 539, 320, 1929, 269, 49407, 0]
    assert tokens[0, 8:].eq(0).all()


def test_tokenize_list_and_context_length():
    tokens = clip.tokenize(["a photo of a", "x"], context_length=10)
    assert tokens.tolist() == [
        [49406, 320, 1125, 539, 320, 49407, 0, 0, 0, 0],
        [49406, 343, 49407, 0, 0, 0, 0, 0, 0, 0],
    ]


def test_too_long_raises_unless_truncated():
    text = " ".join(["dog"] * 80)
    with pytest.raises(RuntimeError, match="too long for context length 77"):
        clip.tokenize(text)
    tokens = clip.tokenize(text, truncate=True)
    assert tokens.shape == (1, 77)
    assert tokens[0, 0] == 49406 and tokens[0, -1] == 49407
    assert tokens[0, 1:-1].eq(clip.encode_text_tokens("dog")[0]).all()
    # Exactly 75 words fit (SOS + 75 + EOT = 77).
    assert clip.tokenize(" ".join(["dog"] * 75))[0, -1] == 49407


def test_decode_round_trip():
    tokens = clip.tokenize("a photo of a dog.")[0]
    assert clip.decode_tokens(tokens.tolist()).strip() == "a photo of a dog ."
