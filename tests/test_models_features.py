"""Model features beyond parity: variants and their sizes, validation, checkpointing, huge/giant
norms, compile."""

from __future__ import annotations

import pytest
import torch
from helpers.numerics import assert_norm_close
from helpers.reference import grad_bound, random_mask, randomize_

from simmim_swinv2.models import (
    PAPER_PARAMS,
    VARIANTS,
    SimMIM,
    SwinV2Block,
    SwinV2Classifier,
    SwinV2Config,
    SwinV2Encoder,
    swinv2_config,
)
from simmim_swinv2.models.__main__ import count_parameters
from simmim_swinv2.models.__main__ import main as print_counts


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v in PAPER_PARAMS])
def test_parameter_counts_within_2_percent_of_the_paper(variant):
    n = count_parameters(variant)["classifier"]
    assert abs(n / PAPER_PARAMS[variant] - 1) < 0.02, (variant, n)


def test_count_command_prints_every_variant(capsys):
    print_counts([])
    out = capsys.readouterr().out
    for name in VARIANTS:
        assert f"| {name} |" in out
    assert "3,001.9M" in out  # giant


@pytest.mark.parametrize(
    "variant,every,norms", [("huge", 6, 3 * 1 + 0), ("giant", 6, 7 + 0), ("base", 0, 0)]
)
def test_extra_norms_every_six_blocks(variant, every, norms):
    cfg = swinv2_config(variant)
    assert cfg.extra_norm_every == every
    with torch.device("meta"):
        encoder = SwinV2Encoder(cfg)
    placed = [
        (s, b)
        for s, stage in enumerate(encoder.layers)
        for b, blk in enumerate(stage.blocks)
        if blk.norm3 is not None
    ]
    assert len(placed) == norms  # huge: blocks 6, 12, 18 of stage 3; giant: 6 … 42 of stage 3
    assert all((b + 1) % 6 == 0 for _, b in placed)


def test_extra_norm_is_applied_at_the_block_end():
    cfg = swinv2_config("debug", img_size=64, window_size=4, extra_norm_every=1)
    encoder = randomize_(SwinV2Encoder(cfg))
    block = encoder.layers[0].blocks[0]
    x = torch.randn(2, 16, 16, cfg.embed_dim)
    with torch.no_grad():
        without = SwinV2Block.__mro__[1].forward(block, x)  # timm's forward, no norm3
        # the same kernels in the same order
        torch.testing.assert_close(block(x), block.norm3(without))


def test_one_giant_block_forward_and_backward_on_cpu():
    """A stage-3 block of SwinV2-G (2048 wide, 64 heads, window 12) with its extra norm."""
    cfg = swinv2_config("giant", img_size=(12 * 16, 12 * 16), window_size=12)
    with torch.device("meta"):
        encoder = SwinV2Encoder(cfg)
    meta_block = encoder.layers[2].blocks[5]
    assert (
        meta_block.norm3 is not None and meta_block.dim == 2048 and meta_block.attn.num_heads == 64
    )
    block = SwinV2Block(
        dim=2048,
        input_resolution=(12, 12),
        num_heads=64,
        window_size=12,
        shift_size=0,
        extra_norm=True,
    )
    assert sum(p.numel() for p in block.parameters()) == sum(
        p.numel() for p in meta_block.parameters()
    )
    x = torch.randn(1, 12, 12, 2048, requires_grad=True)
    out = block(x)
    out.square().mean().backward()
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert block.attn.qkv.weight.grad is not None and x.grad.abs().sum() > 0


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    cfg = swinv2_config("debug", img_size=64, window_size=4)
    model = randomize_(SimMIM.from_config(cfg), max_logit_scale=4.0).train()
    x, mask = torch.randn(2, 3, 64, 64), random_mask(2, 16, 16)
    results = []
    for enable in (False, True):
        model.zero_grad()
        model.encoder.set_grad_checkpointing(enable)
        assert all(stage.grad_checkpointing == enable for stage in model.encoder.layers)
        loss = model(x, mask).loss
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    for (name, _), g0, g1 in zip(model.named_parameters(), results[0][1], results[1][1]):
        # the recomputed forward is the same kernels; its backward may add the same terms in another
        # order
        assert_norm_close(g0, g1, grad_bound(cfg, torch.float32, mask.numel(), name), name)
    per_stage = SwinV2Encoder(cfg.replace(grad_checkpointing=(False, False, True, False)))
    assert [s.grad_checkpointing for s in per_stage.layers] == [False, False, True, False]


def test_nonsquare_and_other_sizes_run():
    model = SwinV2Classifier.from_config(
        swinv2_config("debug", img_size=64, window_size=4), 3
    ).eval()
    for hw in ((64, 96), (96, 64), (128, 32)):
        with torch.no_grad():
            out = model.encoder(torch.randn(2, 3, *hw), output_hidden_states=True)
        assert out.last_hidden_state.shape == (2, hw[0] // 32, hw[1] // 32, 256)
        assert [h.shape[1:3] for h in out.hidden_states] == [
            (hw[0] // 4, hw[1] // 4),
            (hw[0] // 4, hw[1] // 4),
            (hw[0] // 8, hw[1] // 8),
            (hw[0] // 16, hw[1] // 16),
            (hw[0] // 32, hw[1] // 32),
        ]


def test_mask_token_replaces_exactly_the_masked_embeddings():
    encoder = randomize_(
        SwinV2Encoder(swinv2_config("debug", img_size=64, window_size=4, use_mask_token=True))
    )
    x, mask = torch.randn(2, 3, 64, 64), random_mask(2, 16, 16)
    with torch.no_grad():
        plain, masked = encoder.embed(x), encoder.embed(x, mask)
    m = mask.bool()
    torch.testing.assert_close(masked[~m], plain[~m], rtol=0, atol=0)
    torch.testing.assert_close(
        masked[m], encoder.mask_token[0].expand(int(m.sum()), -1), rtol=0, atol=0
    )


def test_pixels_are_never_masked_only_tokens():
    """Masking changes the encoder input tokens, never the loss target: the same image with two
    masks gives losses over different pixels of the same target."""
    model = randomize_(SimMIM.from_config(swinv2_config("debug", img_size=64, window_size=4)))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        everything = model(x, torch.ones(1, 16, 16, dtype=torch.long))
        nothing = model(x, torch.zeros(1, 16, 16, dtype=torch.long))
    assert everything.loss > 0 and nothing.loss == 0


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(embed_dim=30, num_heads=(4, 8, 16, 32)), "not divisible"),
        (dict(window_size=(6, 6)), "window_size has 2 entries"),
        (dict(img_size=100), "multiple of the encoder stride"),
        (dict(act_layer="tanh"), "act_layer"),
        (dict(depths=()), "depths"),
    ],
)
def test_config_errors_name_the_fix(bad, match):
    with pytest.raises(ValueError, match=match):
        SwinV2Config(**bad)


def test_input_and_mask_errors_name_the_fix():
    encoder = SwinV2Encoder(swinv2_config("debug", img_size=64, window_size=4))
    with pytest.raises(ValueError, match="multiple of the encoder stride 32"):
        encoder(torch.randn(1, 3, 64, 48))
    with pytest.raises(ValueError, match="use_mask_token=True"):
        encoder(torch.randn(1, 3, 64, 64), mask=torch.zeros(1, 16, 16))
    with pytest.raises(ValueError, match="unknown SwinV2 variant"):
        swinv2_config("enormous")
    mim = SimMIM.from_config(swinv2_config("debug", img_size=64, window_size=4))
    with pytest.raises(ValueError, match=r"expected \(1, 16, 16\)"):
        mim(torch.randn(1, 3, 64, 64), torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="mask token"):
        SimMIM(encoder)


def test_classifier_soft_targets_and_label_smoothing():
    model = randomize_(
        SwinV2Classifier.from_config(
            swinv2_config("debug", img_size=64, window_size=4), 4, label_smoothing=0.1
        )
    )
    x = torch.randn(2, 3, 64, 64)
    labels = torch.tensor([1, 3])
    with torch.no_grad():
        out = model(x, labels)
        logp = out.logits.log_softmax(-1)
        smooth = torch.full((2, 4), 0.1 / 4).scatter_add_(
            1, labels[:, None], torch.full((2, 1), 0.9)
        )
        # a loss: away from zero, few terms
        torch.testing.assert_close(out.loss, -(smooth * logp).sum(-1).mean())
        torch.testing.assert_close(model(x, smooth).loss, out.loss)  # soft targets given directly
    assert model.label2id == {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2, "LABEL_3": 3}


def test_no_weight_decay_names():
    encoder = SwinV2Encoder(swinv2_config("debug", img_size=64, window_size=4, use_mask_token=True))
    names = encoder.no_weight_decay()
    assert "mask_token" in names
    assert any("logit_scale" in n for n in names) and any("cpb_mlp.0.weight" in n for n in names)
    assert not any("qkv.weight" in n or "fc1.weight" in n for n in names)


@pytest.mark.slow
def test_a_block_compiles_without_graph_breaks():
    block = SwinV2Block(dim=32, input_resolution=(8, 8), num_heads=2, window_size=4, shift_size=2)
    explanation = torch._dynamo.explain(block)(torch.randn(2, 8, 8, 32))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
