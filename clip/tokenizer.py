"""OpenAI CLIP's byte-level BPE tokenizer, built on open_clip's implementation.

open_clip ships the same BPE vocabulary (verified by SHA-256 on first use) and the
same BPE merge loop. Two details differ from OpenAI's reference and are handled
here: OpenAI's special-token strings are ``<|startoftext|>`` / ``<|endoftext|>``
(open_clip names them differently, same ids), and OpenAI raises on over-long
text unless asked to truncate, while open_clip truncates silently.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import html
import logging
from typing import Iterator, List, Sequence, Union

import ftfy
import regex
import torch

logger = logging.getLogger(__name__)

SOT_TOKEN = 49406
EOT_TOKEN = 49407
VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"

_SPECIAL = {"<|startoftext|>": SOT_TOKEN, "<|endoftext|>": EOT_TOKEN}
# OpenAI's pre-tokeniser: special tokens, contractions, letter runs, single digits, other symbol runs.
_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")


@functools.lru_cache(maxsize=1)
def _bpe():
    """open_clip's SimpleTokenizer over its bundled vocabulary (checked against OpenAI's file)."""
    from open_clip.tokenizer import SimpleTokenizer, default_bpe

    path = default_bpe()
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != VOCAB_SHA256:
        raise RuntimeError(
            f"BPE vocabulary {path} has SHA-256 {digest}, expected {VOCAB_SHA256} (OpenAI's "
            "bpe_simple_vocab_16e6.txt.gz). Reinstall open_clip_torch>=3,<4."
        )
    tokenizer = SimpleTokenizer(bpe_path=path)
    if len(tokenizer.encoder) != 49408:
        raise RuntimeError(f"open_clip's tokenizer has {len(tokenizer.encoder)} entries, expected 49408.")
    return tokenizer


def _clean(text: str) -> str:
    # Same order as OpenAI: fix mojibake, unescape HTML twice, collapse whitespace, lowercase.
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


def encode_text_tokens(text: str) -> List[int]:
    """BPE ids of ``text`` without SOS/EOT (e.g. for CoOp's ``name_lens``)."""
    tok = _bpe()
    ids: List[int] = []
    for piece in _PATTERN.findall(_clean(text)):
        if piece in _SPECIAL:
            ids.append(_SPECIAL[piece])
            continue
        piece = "".join(tok.byte_encoder[b] for b in piece.encode("utf-8"))
        ids.extend(tok.encoder[symbol] for symbol in tok.bpe(piece).split(" "))
    return ids


def decode_tokens(ids: Sequence[int]) -> str:
    """Inverse of encoding up to whitespace (``</w>`` becomes a space).

    A leading SOS is dropped, and decoding stops at the first EOT (padding follows it).
    """
    values = [int(i) for i in ids]
    if values and values[0] == SOT_TOKEN:
        values = values[1:]
    if EOT_TOKEN in values:
        values = values[: values.index(EOT_TOKEN)]
    return _bpe().decode(values)


# Lists that `recording_texts` blocks collect tokenised texts into (innermost last).
_TEXT_RECORDERS: List[List[str]] = []


@contextlib.contextmanager
def recording_texts() -> Iterator[List[str]]:
    """Collect every text `tokenize` receives inside the block, in order: the prompts a trainer builds,
    exactly as filled with the class names (train.py hashes them into the provenance card)."""
    seen: List[str] = []
    _TEXT_RECORDERS.append(seen)
    try:
        yield seen
    finally:
        _TEXT_RECORDERS.remove(seen)


def tokenize(texts: Union[str, Sequence[str]], context_length: int = 77, truncate: bool = False) -> torch.Tensor:
    """Token ids [N, context_length] (int64): SOS + BPE ids + EOT, zero-padded.

    Raises RuntimeError for text longer than ``context_length`` unless ``truncate``,
    which cuts the row and keeps EOT as its last id.
    """
    if isinstance(texts, str):
        texts = [texts]
    for recorder in _TEXT_RECORDERS:
        recorder.extend(texts)
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [SOT_TOKEN] + encode_text_tokens(text) + [EOT_TOKEN]
        if len(ids) > context_length:
            if not truncate:
                raise RuntimeError(
                    f"Input {text!r} is too long for context length {context_length} ({len(ids)} tokens). "
                    "Shorten it or call tokenize(..., truncate=True)."
                )
            ids = ids[:context_length]
            ids[-1] = EOT_TOKEN
        result[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return result
