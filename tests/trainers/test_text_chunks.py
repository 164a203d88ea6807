"""Every CLIP method's text forward in chunks within TRAIN.TEXT_CHUNK_MB (trainers/common.py): a training
step with the class prompts split into >= 2 chunks gives the one-call step's logits and the gradients of
every trainable parameter (CoOp, KgCoOp, MaPLe and PromptSRC with deep prompts, FT-CLIP and Skip Tuning
with trained text weights); evaluation-time and frozen template features chunk by the no-gradient
estimate; the key is validated, reaches DePT's host, and CoCoOp's own key overrides it. CoCoOp's chunked
step is in tests/trainers/test_cocoop.py, the preflight's advice in tests/engine/test_preflight.py.

Tolerances: each row's arithmetic is the same in both runs; what differs is how many rows a matrix
product takes (a kernel may block the K-sums differently by shape), the masked keys a chunk cut after its
own last EOT skips, and, for gradients, the order in which the chunks' contributions to a weight or a
shared deep prompt are added. So features differ by at most the text tower's summation-order bound
(`clip_text_relative_atol`, relative to their size), logits by the cosine's bound of that, and gradients
by twice the tower's bound (the forward and the backward through it) plus one sum over every row and
token (a weight gradient sums N x L outer products).
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import clip
import train
from clip.model import shared_prefix_length
from engine import build_trainer
from engine.errors import ConfigValueError
from tests.conftest import config_path
from tests.tolerances import clip_text_relative_atol, cosine_logit_atol, fp32_atol
from trainers.base import ClipMethod, MethodModel
from trainers.cocoop import CoCoOp
from trainers.common import encode_token_ids, text_activation, text_features_for_templates
from trainers.coop import CoOp, CoOpModel, PromptLearner
from trainers.finetune import FinetuneModel
from trainers.kgcoop import KgCoOpModel
from trainers.maple import MaPLeModel, MultiModalPromptLearner
from trainers.prompts import clean_classname
from trainers.promptsrc import PromptSRCModel, VLPromptLearner, mean_template_features
from trainers.skip_tuning import SkipModel

# Names of different token lengths, so the prompts' EOT positions (and each chunk's cut) differ.
CLASSNAMES = ["face", "leopard", "motorbike", "accordion", "airplane", "red_panda"]
BIG_BUDGET_MB = 8192.0
BATCH = 3
CPU = torch.device("cpu")


def fresh_clip(path) -> torch.nn.Module:
    """A tiny fp32 CLIP per test (methods change which of its weights train)."""
    return clip.build_model(clip.load_state_dict(str(path)), precision="fp32")


def coop(clip_model) -> MethodModel:
    return CoOpModel(clip_model, PromptLearner(clip_model, CLASSNAMES, n_ctx=4))


def kgcoop(clip_model) -> MethodModel:
    hand = text_features_for_templates(clip_model, CLASSNAMES, ["a photo of a {}."], CPU)
    return KgCoOpModel(clip_model, PromptLearner(clip_model, CLASSNAMES, n_ctx=4), hand, weight=8.0)


def maple(clip_model) -> MethodModel:
    return MaPLeModel(clip_model, MultiModalPromptLearner(clip_model, CLASSNAMES, n_ctx=2, prompt_depth=2))


def promptsrc(clip_model) -> MethodModel:
    opts = SimpleNamespace(N_CTX_VISION=2, PROMPT_DEPTH_VISION=2, N_CTX_TEXT=2, PROMPT_DEPTH_TEXT=2,
                           CTX_INIT="a photo of a")
    model = PromptSRCModel(clip_model, VLPromptLearner(clip_model, CLASSNAMES, opts), CLASSNAMES, 25.0, 10.0)
    model.prepare_training()  # the 60-template teacher, before any parameter trains
    return model


def finetune(clip_model) -> MethodModel:
    return FinetuneModel(clip_model, CLASSNAMES, "a photo of a {}.")


def skip_tuning(clip_model) -> MethodModel:
    skip = SimpleNamespace(START_LAYER=1, DROP_RATIO=0.0, LAMBDA=0.3, TOP_RATIO=1.0, MAX_TOP=50)
    return SkipModel(clip_model, CLASSNAMES, "a photo of a {}.", skip)


METHODS = {"CoOp": coop, "KgCoOp": kgcoop, "MaPLe": maple, "PromptSRC": promptsrc, "FT-CLIP": finetune,
           "SkipTuning": skip_tuning}


def counting_text_calls(monkeypatch, clip_model, method: str) -> list[int]:
    """Record the row count of every call into the text tower (Skip Tuning: into its blocks from ω)."""
    name = "text_features_from_hidden" if method == "SkipTuning" else "encode_text_embeddings"
    original = getattr(clip_model, name)
    calls: list[int] = []

    def counted(x, eot_indices, **kwargs):
        calls.append(x.shape[0])
        return original(x, eot_indices, **kwargs)

    monkeypatch.setattr(clip_model, name, counted)
    return calls


def training_step(model: MethodModel, inputs: torch.Tensor, labels: torch.Tensor, budget_mb: float
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    """One step's logits and the gradient of every trainable parameter, the text within `budget_mb`."""
    model.set_text_chunk_mb(budget_mb)
    model.zero_grad(set_to_none=True)
    out = model.training_step(inputs, labels)
    out.loss.total.backward()
    grads = {name: None if p.grad is None else p.grad.clone() for name, p in model.named_trainable_parameters()}
    return out.logits.detach(), grads


@pytest.mark.parametrize("method", list(METHODS))
def test_a_chunked_step_gives_the_one_call_logits_and_gradients(method, tiny_clip_path, monkeypatch):
    torch.manual_seed(0)
    clip_model = fresh_clip(tiny_clip_path)
    model = METHODS[method](clip_model)
    model.set_trainable()
    images = torch.randn(BATCH, 3, 32, 32)
    labels = torch.tensor([0, 3, 5])
    if isinstance(model, SkipModel):
        model.prepare_training()
        inputs = model.image_prefix(images)
    else:
        inputs = images
    activation = model.text_activation(BATCH)
    assert activation.prompts == len(CLASSNAMES)
    two_prompts_mb = 2.5 * activation.per_prompt_mb  # 2 prompts per chunk with gradients: 3 chunks

    calls = counting_text_calls(monkeypatch, clip_model, method)
    whole_logits, whole_grads = training_step(model, inputs, labels, BIG_BUDGET_MB)
    assert calls == [6]
    calls.clear()
    chunked_logits, chunked_grads = training_step(model, inputs, labels, two_prompts_mb)
    # 3 chunks in the forward pass, each run again in the backward pass (activation checkpointing).
    assert calls[:3] == [2, 2, 2] and calls[3:] == [2, 2, 2]

    text_bound = clip_text_relative_atol(clip_model)
    assert (chunked_logits - whole_logits).abs().max() <= cosine_logit_atol(clip_model.logit_scale.exp().item(),
                                                                             text_bound)
    tokens = len(CLASSNAMES) * clip_model.context_length
    grad_bound = 2 * text_bound + fp32_atol(1.0, tokens)
    assert chunked_grads.keys() == whole_grads.keys()
    text_params = 0
    for name, whole in whole_grads.items():
        chunked = chunked_grads[name]
        assert (whole is None) == (chunked is None), name
        if whole is None:
            continue
        assert (chunked - whole).abs().max() <= grad_bound * whole.abs().max(), name
        text_params += whole.abs().max() > 0
    assert text_params >= 1


@pytest.mark.parametrize("method", ["CoOp", "MaPLe", "FT-CLIP"])
def test_evaluation_features_chunk_by_the_no_gradient_estimate(method, tiny_clip_path, monkeypatch):
    """Without gradients one block's activations are alive at a time: layers x more prompts per chunk."""
    clip_model = fresh_clip(tiny_clip_path)
    model = METHODS[method](clip_model)
    model.set_trainable()
    per_prompt_mb = model.text_activation(BATCH).per_prompt_mb
    budget = 5.5 * per_prompt_mb / clip_model.transformer.layers  # 5 prompts fit without gradients: 3 + 3
    calls = counting_text_calls(monkeypatch, clip_model, method)
    with torch.no_grad():
        model.set_text_chunk_mb(BIG_BUDGET_MB)
        whole = model.encode_texts()
        model.set_text_chunk_mb(budget)
        chunked = model.encode_texts()
    assert calls == [6, 3, 3]
    assert (chunked - whole).abs().max() <= clip_text_relative_atol(clip_model) * whole.abs().max()


def planner_row_mb(clip_model, tokens: torch.Tensor) -> float:
    """The planner's no-gradient estimate of one row of `tokens`: cut after the last EOT, without the
    shared start that `CLIP.encode_text` computes once (fp32)."""
    eot = tokens.argmax(dim=-1)
    return text_activation(clip_model, eot, shared_prefix=shared_prefix_length(tokens)).per_prompt_mb \
        / clip_model.transformer.layers


def test_frozen_template_features_are_chunked_and_equal(tiny_clip_path, monkeypatch):
    """Zero-shot classifiers and PromptSRC's 60-template teacher: the same features in chunks."""
    clip_model = fresh_clip(tiny_clip_path)
    clip_model.requires_grad_(False)
    tokens = clip.tokenize([f"a photo of a {clean_classname(name)}." for name in CLASSNAMES])
    one_prompt_mb = planner_row_mb(clip_model, tokens)
    calls = counting_text_calls(monkeypatch, clip_model, "CoOp")
    whole = encode_token_ids(clip_model, tokens, BIG_BUDGET_MB)
    chunked = encode_token_ids(clip_model, tokens, 4.5 * one_prompt_mb)
    assert calls == [6, 3, 3]  # 4 fit: 2 chunks, made even
    bound = clip_text_relative_atol(clip_model)
    assert (chunked - whole).abs().max() <= bound * whole.abs().max()

    templates = ["a photo of a {}.", "a sketch of the {}.", "art of the {}."]
    calls.clear()
    teacher = mean_template_features(clip_model, CLASSNAMES, templates, CPU, BIG_BUDGET_MB)
    all_tokens = clip.tokenize([t.format(clean_classname(name)) for t in templates for name in CLASSNAMES])
    teacher_chunked = mean_template_features(clip_model, CLASSNAMES, templates, CPU,
                                             7.5 * planner_row_mb(clip_model, all_tokens))
    assert calls == [18, 6, 6, 6]  # 7 fit: 3 chunks
    # A mean of 3 feature sets, each within the bound: within it too (plus the mean's own 3-term sum).
    assert (teacher_chunked - teacher).abs().max() <= (bound + fp32_atol(1.0, 3)) * teacher.abs().max()
    ensemble = text_features_for_templates(clip_model, CLASSNAMES, templates, CPU, BIG_BUDGET_MB)
    assert (text_features_for_templates(clip_model, CLASSNAMES, templates, CPU, 1e-9) - ensemble).abs().max() <= \
        (bound + fp32_atol(1.0, 3)) * ensemble.abs().max()


def cfg_for(trainer: str, *opts: str, config: tuple[str, ...] = ()):
    argv = ["--trainer", trainer, *(("--config-file", config_path("trainers", *config)) if config else ()), *opts]
    return train.setup_cfg(train.build_parser().parse_args(argv))


def test_the_budget_key_is_validated_and_cocoops_key_overrides_it():
    cfg = cfg_for("CoOp")
    assert cfg.TRAIN.TEXT_CHUNK_MB == 8192 and ClipMethod.text_chunk_mb(cfg) == 8192
    for bad in ("0", "-5"):
        with pytest.raises(ConfigValueError, match=r"TRAIN.TEXT_CHUNK_MB must be a positive number of megabytes"):
            CoOp.check_cfg(cfg_for("CoOp", "TRAIN.TEXT_CHUNK_MB", bad))
    # CoCoOp: its own key, unset, follows the general one; set, it wins (and is validated alike).
    cocoop = cfg_for("CoCoOp", "TRAIN.TEXT_CHUNK_MB", "1024")
    assert (CoCoOp.text_chunk_key(cocoop), CoCoOp.text_chunk_mb(cocoop)) == ("TRAIN.TEXT_CHUNK_MB", 1024)
    cocoop = cfg_for("CoCoOp", "TRAIN.TEXT_CHUNK_MB", "1024", "TRAINER.COCOOP.TEXT_CHUNK_MB", "256")
    assert (CoCoOp.text_chunk_key(cocoop), CoCoOp.text_chunk_mb(cocoop)) == ("TRAINER.COCOOP.TEXT_CHUNK_MB", 256)
    with pytest.raises(ConfigValueError, match="TRAINER.COCOOP.TEXT_CHUNK_MB must be a positive number"):
        CoCoOp.check_cfg(cfg_for("CoCoOp", "TRAINER.COCOOP.TEXT_CHUNK_MB", "'big'"))


def test_the_budget_reaches_depts_host(caltech_root, tiny_clip_path, tmp_path):
    argv = [
        "--root", str(caltech_root), "--trainer", "ExtrasLinearProbeKgCoOp", "--output-dir", str(tmp_path / "out"),
        "--dataset-config-file", config_path("datasets", "caltech101.yaml"),
        "--config-file", config_path("trainers", "ExtrasLinearProbeKgCoOp", "vit_b16_ep10_ctxv1_bs4_lr35.yaml"),
        "MODEL.BACKBONE.NAME", str(tiny_clip_path), "INPUT.SIZE", "(32, 32)", "TRAINER.COOP.PREC", "fp32",
        "DATALOADER.NUM_WORKERS", "0", "TRAIN.TEXT_CHUNK_MB", "1",
    ]
    trainer = build_trainer(train.setup_cfg(train.build_parser().parse_args(argv)))
    assert trainer.model.text_chunk_mb == 1 and trainer.model.host.text_chunk_mb == 1
    assert trainer.model.text_activation(4) == trainer.model.host.text_activation(4)
