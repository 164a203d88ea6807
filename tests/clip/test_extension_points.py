"""Extension points used by prompt learners: truncated text path, block slicing, deep prompts."""
from __future__ import annotations

import copy

import pytest
import torch

import clip
from tests.clip.conftest import TEXTS, images_for
from tests.tolerances import FP64_UNIT_ROUNDOFF, fp32_atol, transformer_atol


def _record_block_io(transformer):
    """Hooks that store each block's input and output, keyed by block index."""
    inputs, outputs, handles = {}, {}, []
    for i, block in enumerate(transformer.resblocks):
        handles.append(block.register_forward_pre_hook(lambda m, args, i=i: inputs.__setitem__(i, args[0].detach())))
        handles.append(block.register_forward_hook(lambda m, args, out, i=i: outputs.__setitem__(i, out.detach())))
    return inputs, outputs, handles


def test_truncated_text_path_equals_full_length(vit_model):
    tokens = clip.tokenize(TEXTS)
    eot = tokens.argmax(-1)
    assert int(eot.max()) + 1 < tokens.shape[1]  # truncation really happens
    # Random "learned" embeddings, not just token embeddings, as a prompt learner would pass.
    x = vit_model.token_embedding(tokens) + 0.1 * torch.randn(*tokens.shape, vit_model.transformer.width)
    with torch.no_grad():
        short = vit_model.encode_text_embeddings(x, eot, truncate=True)
        full = vit_model.encode_text_embeddings(x, eot, truncate=False)
    # fp32: equal up to summation order (kernels block 8 and 77 tokens differently).
    width, blocks = vit_model.transformer.width, vit_model.transformer.layers
    torch.testing.assert_close(short, full, atol=transformer_atol(full.abs().max(), width, 77, blocks), rtol=0)
    # float64 shows the cut is exact, not merely close: the same bound with float64's roundoff.
    m64 = copy.deepcopy(vit_model).double()
    with torch.no_grad():
        short64 = m64.encode_text_embeddings(x.double(), eot, truncate=True)
        full64 = m64.encode_text_embeddings(x.double(), eot, truncate=False)
    atol64 = transformer_atol(full64.abs().max(), width, 77, blocks, unit_roundoff=FP64_UNIT_ROUNDOFF)
    torch.testing.assert_close(short64, full64, atol=atol64, rtol=0)


def test_fp16_default_keeps_the_full_context_for_bitwise_parity(vit_model):
    """fp16 attention rounds differently over 8 and 77 keys, so the default keeps all 77 there:
    features then equal the full-length (original) computation exactly, not just closely."""
    tokens = clip.tokenize(TEXTS)
    m16 = copy.deepcopy(vit_model)
    clip.convert_weights(m16)
    assert m16.dtype == torch.float16
    inputs, _, handles = _record_block_io(m16.transformer)
    try:
        with torch.no_grad():
            default = m16.encode_text(tokens)
    finally:
        for h in handles:
            h.remove()
    assert inputs[0].shape[1] == 77
    with torch.no_grad():
        full = m16.encode_text_embeddings(m16.token_embedding(tokens), tokens.argmax(-1), truncate=False)
    assert torch.equal(default, full)


def test_truncation_really_shortens_the_sequence(vit_model):
    tokens = clip.tokenize(["a photo of a dog."])
    inputs, _, handles = _record_block_io(vit_model.transformer)
    try:
        with torch.no_grad():
            vit_model.encode_text(tokens)
    finally:
        for h in handles:
            h.remove()
    assert inputs[0].shape[1] == int(tokens.argmax()) + 1


def test_encode_text_matches_manual_openai_computation(vit_model):
    tokens = clip.tokenize(TEXTS)
    m = vit_model
    with torch.no_grad():
        x = m.token_embedding(tokens) + m.positional_embedding
        for block in m.transformer.resblocks:
            x = block(x, m.causal_mask(77))
        x = m.ln_final(x)[torch.arange(len(TEXTS)), tokens.argmax(-1)] @ m.text_projection
        # Same maths on 77 tokens vs the truncated sequence: only the summation order differs.
        atol = transformer_atol(x.abs().max(), m.transformer.width, 77, m.transformer.layers)
        torch.testing.assert_close(m.encode_text(tokens), x, atol=atol, rtol=0)


def test_causal_mask_values_and_not_in_state_dict(vit_model):
    mask = vit_model.causal_mask(5)
    assert mask.shape == (5, 5) and mask.dtype == torch.float32
    assert torch.equal(mask, torch.full((5, 5), float("-inf")).triu(1))
    assert "attn_mask" not in vit_model.state_dict()
    with pytest.raises(ValueError, match="context length 77"):
        vit_model.causal_mask(78)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_run_blocks_split_equals_full_forward(vit_model, k):
    visual = vit_model.visual
    images = images_for(vit_model)
    prompts = torch.randn(2, visual.width)
    layer_prompts = {1: torch.randn(2, visual.width)}
    with torch.no_grad():
        full = visual(images, prompts=prompts, layer_prompts=layer_prompts)
        hidden = visual.run_blocks(visual.embed(images, prompts), end=k, layer_prompts=layer_prompts)
        split = visual.head(visual.run_blocks(hidden, start=k, layer_prompts=layer_prompts))
        plain = visual(images)
    tokens = 1 + visual.grid_size**2 + prompts.shape[0]
    atol = transformer_atol(full.abs().max(), visual.width, tokens, visual.transformer.layers)
    torch.testing.assert_close(split, full, atol=atol, rtol=0)
    assert (full - plain).abs().max() > 10 * atol  # the prompts matter, far beyond rounding


def test_embed_appends_prompts_before_ln_pre(vit_model):
    visual = vit_model.visual
    images = images_for(vit_model, 2)
    prompts = torch.randn(2, 3, visual.width)  # per-sample prompts [N, n, W]
    with torch.no_grad():
        x = visual.conv1(images).flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding.expand(2, 1, -1), x], 1) + visual.positional_embedding
        expected = visual.ln_pre(torch.cat([x, prompts], 1))
        got = visual.embed(images, prompts)
    assert got.shape == (2, 1 + visual.grid_size**2 + 3, visual.width)
    # One layer: the patch convolution (3·p² terms), then LayerNorm's mean and variance (2W).
    atol = fp32_atol(expected.abs().max(), 3 * visual.patch_size**2 + 2 * visual.width)
    torch.testing.assert_close(got, expected, atol=atol, rtol=0)


def test_vision_layer_prompts_replace_last_tokens(vit_model):
    visual = vit_model.visual
    images = images_for(vit_model, 2)
    n, width = 2, visual.width
    shallow = torch.randn(n, width)
    deep = {1: torch.randn(n, width)}
    inputs, outputs, handles = _record_block_io(visual.transformer)
    try:
        with torch.no_grad():
            out = visual(images, prompts=shallow, layer_prompts=deep, rows_only=False)  # every block's own forward
    finally:
        for h in handles:
            h.remove()
    # Input of block 1: block 0's output with its last n tokens swapped for the deep prompts.
    torch.testing.assert_close(inputs[1][:, -n:], deep[1].expand(2, n, width), atol=0, rtol=0)
    torch.testing.assert_close(inputs[1][:, :-n], outputs[0][:, :-n], atol=0, rtol=0)
    # Manual construction of the whole forward.
    with torch.no_grad():
        x = visual.embed(images, shallow)
        x = visual.transformer.resblocks[0](x)
        x = torch.cat([x[:, :-n], deep[1].expand(2, n, width)], 1)
        x = visual.transformer.resblocks[1](x)
        manual = visual.ln_post(x[:, 0]) @ visual.proj
        other = visual(images, prompts=shallow, layer_prompts={1: torch.randn(n, width)})
    atol = transformer_atol(manual.abs().max(), width, 1 + visual.grid_size**2 + n, visual.transformer.layers)
    torch.testing.assert_close(out, manual, atol=atol, rtol=0)
    assert (out - other).abs().max() > 10 * atol  # the deep prompts matter, far beyond rounding


def test_text_layer_prompts_replace_tokens_after_sos(vit_model):
    m = vit_model
    n, width = 2, m.transformer.width
    tokens = clip.tokenize(["X X a photo of a dog.", "X X cat."])
    eot = tokens.argmax(-1)
    x = m.token_embedding(tokens)
    deep = {1: torch.randn(2, n, width)}  # per-sample prompts [N, n, W]
    inputs, outputs, handles = _record_block_io(m.transformer)
    try:
        with torch.no_grad():
            out = m.encode_text_embeddings(x, eot, layer_prompts=deep, rows_only=False)  # every block's own forward
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(inputs[1][:, 1 : 1 + n], deep[1], atol=0, rtol=0)
    torch.testing.assert_close(inputs[1][:, :1], outputs[0][:, :1], atol=0, rtol=0)
    torch.testing.assert_close(inputs[1][:, 1 + n :], outputs[0][:, 1 + n :], atol=0, rtol=0)
    with torch.no_grad():
        plain = m.encode_text_embeddings(x, eot)
        length = int(eot.max()) + 1
        h = (x + m.positional_embedding)[:, :length]
        h = m.transformer.resblocks[0](h, m.causal_mask(length))
        h = torch.cat([h[:, :1], deep[1], h[:, 1 + n :]], 1)
        h = m.transformer.resblocks[1](h, m.causal_mask(length))
        manual = m.ln_final(h)[torch.arange(2), eot] @ m.text_projection
    atol = transformer_atol(manual.abs().max(), width, length, m.transformer.layers)
    torch.testing.assert_close(out, manual, atol=atol, rtol=0)
    assert (out - plain).abs().max() > 10 * atol  # the deep prompts matter, far beyond rounding


def test_transformer_rejects_bad_arguments(vit_model):
    x = torch.randn(1, 5, vit_model.transformer.width)
    with pytest.raises(ValueError, match="prompt_slot"):
        vit_model.transformer(x, prompt_slot="first")
    with pytest.raises(ValueError, match="outside the block indices"):
        vit_model.transformer(x, layer_prompts={7: torch.randn(1, x.shape[-1])})
    with pytest.raises(ValueError, match="Block range"):
        vit_model.transformer(x, start=2, end=1)
    with pytest.raises(ValueError, match="do not fit"):
        vit_model.transformer(x, layer_prompts={0: torch.randn(1, x.shape[-1] + 1)})


@pytest.mark.parametrize("kind", ["vit", "rn"])
def test_wrong_image_resolution_names_expected_size(kind, request):
    model = request.getfixturevalue(f"{kind}_model")
    res = model.visual.input_resolution
    with pytest.raises(ValueError, match=f"{res}x{res}"):
        model.encode_image(torch.randn(1, 3, 2 * res, 2 * res))


def test_resnet_stem_and_stages(rn_model):
    visual = rn_model.visual
    images = images_for(rn_model, 2)
    with torch.no_grad():
        x = visual.stem(images)
        assert x.shape[-1] == visual.input_resolution // 4
        x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))
        torch.testing.assert_close(visual.attnpool(x), visual(images), atol=0, rtol=0)
    assert visual.output_dim == rn_model.text_projection.shape[1]


def test_text_tower_split_at_any_block_equals_the_one_piece_forward(vit_model):
    """Skip Tuning caches the hidden states entering text block k; the rest must give the same features."""
    tokens = clip.tokenize(TEXTS)
    eot = tokens.argmax(-1)
    x = vit_model.token_embedding(tokens)
    with torch.no_grad():
        full = vit_model.encode_text_embeddings(x, eot, rows_only=False)
        for k in range(vit_model.transformer.layers + 1):
            hidden = vit_model.text_hidden_states(x, eot, end=k)
            assert hidden.shape[1] == int(eot.max()) + 1  # fp32: truncated
            assert torch.equal(vit_model.text_features_from_hidden(hidden, eot, start=k), full)


def test_encode_image_takes_shallow_and_deep_vision_prompts(vit_model):
    images = images_for(vit_model, 2)
    width = vit_model.visual.width
    shallow, deep = torch.randn(2, width), {1: torch.randn(2, width)}
    with torch.no_grad():
        got = vit_model.encode_image(images, prompts=shallow, layer_prompts=deep)
        expected = vit_model.visual(images, prompts=shallow, layer_prompts=deep)
        plain = vit_model.encode_image(images)
    # The same module call on the same inputs: identical bits.
    assert torch.equal(got, expected)
    assert not torch.allclose(got, plain)  # the prompts reach the tower


def test_encode_image_prompts_on_a_resnet_name_the_fix(rn_model):
    images = images_for(rn_model, 1)
    with pytest.raises(ValueError, match="need a ViT image encoder"):
        rn_model.encode_image(images, prompts=torch.randn(2, 8))


def _features_and_grads(model, forward):
    """``forward()``'s output and the gradients of a fixed random projection of it, per parameter."""
    model.zero_grad(set_to_none=True)
    out = forward()
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    (out * weights).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_step(plain, fast, atol_features, atol_grads):
    torch.testing.assert_close(fast[0], plain[0], atol=atol_features, rtol=0)
    assert fast[1].keys() == plain[1].keys()
    for name, grad in plain[1].items():
        torch.testing.assert_close(fast[1][name], grad, atol=atol_grads * max(1.0, float(grad.abs().max())), rtol=0,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_vision_pooled_row_last_block_keeps_features_and_gradients(vit_state_dict):
    """fp32 default: the last vision block computes the class token only; with shallow and deep prompts
    (one at the last block) the features and every parameter's gradient equal the full blocks'."""
    model = clip.build_model(vit_state_dict).float().requires_grad_(True)
    visual = model.visual
    images = images_for(model, 3)
    last = visual.transformer.layers - 1
    shallow = torch.randn(2, visual.width, requires_grad=True)
    deep = {1: torch.randn(2, visual.width), last: torch.randn(2, visual.width)}
    plain = _features_and_grads(model, lambda: model.encode_image(images, prompts=shallow, layer_prompts=deep,
                                                                  rows_only=False))
    fast = _features_and_grads(model, lambda: model.encode_image(images, prompts=shallow, layer_prompts=deep))
    # Same sums, split into matrix products over fewer rows: the tower's summation-order bound, for
    # the features and (the backward runs the same layers in reverse) for the gradients, relative.
    tokens = 1 + visual.grid_size**2 + 2
    atol = transformer_atol(plain[0].abs().max(), visual.width, tokens, visual.transformer.layers)
    _assert_same_step(plain, fast, atol, transformer_atol(1.0, visual.width, tokens, 2 * visual.transformer.layers))
    assert len(plain[1]) > 10  # every block's weights got gradients
    with torch.no_grad():  # and the full last block's output rows really differ (it is not a no-op)
        moved = model.encode_image(images, prompts=shallow, layer_prompts={**deep, last: torch.randn(2, visual.width)})
    assert (moved - fast[0]).abs().max() > 10 * atol


def test_vision_fp16_keeps_the_full_last_block(vit_state_dict):
    """fp16 default: every row of the last block, so fp16 features equal the originals' bit for bit."""
    model = clip.build_model(vit_state_dict)  # fp16 weights
    images = images_for(model, 2).half()
    with torch.no_grad():
        assert torch.equal(model.encode_image(images), model.encode_image(images, rows_only=False))


def test_text_eot_rows_and_shared_context_keep_features_and_gradients(vit_state_dict):
    """fp32 default with a CoOp-style shared context: the last block at the EOT rows, SOS + context
    computed once from row 0. The features and the gradients of the context (summed over every
    class's use of it) and of every weight equal the full forward's."""
    model = clip.build_model(vit_state_dict).float().requires_grad_(True)
    tokens = clip.tokenize(["X X X a dog.", "X X X a sea lion.", "X X X ox.", "X X X a red-tailed hawk."])
    eot = tokens.argmax(-1)
    n_ctx = 3
    ctx = torch.randn(n_ctx, model.transformer.width, requires_grad=True)
    embeddings = model.token_embedding(tokens).detach()

    def prompts():
        return torch.cat([embeddings[:, :1], ctx.expand(len(tokens), -1, -1), embeddings[:, 1 + n_ctx:]], dim=1)

    def step(**options):
        ctx.grad = None
        out, grads = _features_and_grads(model, lambda: model.encode_text_embeddings(prompts(), eot, **options))
        return out, {**grads, "ctx": ctx.grad.clone()}

    plain = step(rows_only=False)
    fast = step(shared_prefix=1 + n_ctx)
    length = int(eot.max()) + 1
    atol = transformer_atol(plain[0].abs().max(), model.transformer.width, length, model.transformer.layers)
    _assert_same_step(plain, fast, atol, transformer_atol(1.0, model.transformer.width, length,
                                                          2 * model.transformer.layers))
    # A prefix that is not really shared (row 1's context differs) gives other features: the caller's
    # promise matters, so the code path is the one under test.
    with torch.no_grad():
        other = prompts().clone()
        other[1, 1:1 + n_ctx] += torch.randn(n_ctx, other.shape[-1])  # (a constant shift: LayerNorm hides it)
        wrong = model.encode_text_embeddings(other, eot, shared_prefix=1 + n_ctx)
        right = model.encode_text_embeddings(other, eot, rows_only=False)
    assert (wrong[1] - right[1]).abs().max() > 10 * atol


def test_shared_context_with_deep_prompts_keeps_features_and_gradients(vit_state_dict):
    """MaPLe / PromptSRC: deep text prompts [n, W] replace tokens 1..n of every class at each block,
    inside SOS + the shared context, so that start is still computed once. Features and the gradients
    of the context, of every deep prompt (block 0's and the last block's included) and of every weight
    equal the full forward's; a deep prompt reaching past the prefix is refused."""
    model = clip.build_model(vit_state_dict).float().requires_grad_(True)
    tokens = clip.tokenize(["X X X a dog.", "X X X a sea lion.", "X X X ox.", "X X X a red-tailed hawk."])
    eot = tokens.argmax(-1)
    n_ctx, width, layers = 3, model.transformer.width, model.transformer.layers
    ctx = torch.randn(n_ctx, width, requires_grad=True)
    deep = {i: torch.randn(n_ctx - (i % 2), width, requires_grad=True) for i in range(layers)}  # n and n - 1 tokens
    embeddings = model.token_embedding(tokens).detach()

    def prompts():
        return torch.cat([embeddings[:, :1], ctx.expand(len(tokens), -1, -1), embeddings[:, 1 + n_ctx:]], dim=1)

    def step(**options):
        for tensor in (ctx, *deep.values()):
            tensor.grad = None
        out, grads = _features_and_grads(model, lambda: model.encode_text_embeddings(prompts(), eot, layer_prompts=deep,
                                                                                     **options))
        return out, {**grads, "ctx": ctx.grad.clone(), **{f"deep{i}": p.grad.clone() for i, p in deep.items()}}

    plain = step(rows_only=False)
    fast = step(shared_prefix=1 + n_ctx)
    length = int(eot.max()) + 1
    atol = transformer_atol(plain[0].abs().max(), width, length, layers)
    _assert_same_step(plain, fast, atol, transformer_atol(1.0, width, length, 2 * layers))
    hidden = model.text_hidden_states(prompts(), eot, end=0)
    with pytest.raises(ValueError, match="shared prefix of 2 tokens"):
        model.transformer.forward_rows(hidden[:, 2:], eot - 2, model.causal_mask(length), prefix=hidden[:1, :2],
                                       layer_prompts=deep, prompt_slot="after_sos")


def test_encode_text_shares_the_template_start_of_token_ids(vit_model):
    """encode_text finds the tokens every row starts with (a template) and computes them once: the
    first block sees them once, and the features equal the full forward's."""
    tokens = clip.tokenize(["a photo of a dog.", "a photo of a sea lion.", "a photo of a ox."])
    assert clip.model.shared_prefix_length(tokens) == 5  # <SOS> a photo of a
    calls = []
    handle = vit_model.transformer.resblocks[0].register_forward_hook(lambda *a: calls.append("forward"))
    try:
        with torch.no_grad():
            shared = vit_model.encode_text(tokens)
    finally:
        handle.remove()
    assert calls == []  # the blocks ran on the [prefix; rows] layout, not once per padded sequence
    with torch.no_grad():
        plain = vit_model.encode_text_embeddings(vit_model.token_embedding(tokens), tokens.argmax(-1), rows_only=False)
    length = int(tokens.argmax(-1).max()) + 1
    atol = transformer_atol(plain.abs().max(), vit_model.transformer.width, length, vit_model.transformer.layers)
    torch.testing.assert_close(shared, plain, atol=atol, rtol=0)
