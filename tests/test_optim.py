"""Parameter groups, layer-wise LR decay and per-iteration schedules, against the official recipe
(microsoft/Swin-Transformer `optimizer.py`: no-decay names; microsoft/SimMIM `optimizer.py`:
layer-wise LR decay)."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
from torch import nn

from simmim_swinv2.models import SimMIM, SwinV2Classifier, SwinV2Encoder, swinv2_config
from simmim_swinv2.training.optim import (
    build_optimizer,
    build_scheduler,
    epochs_to_steps,
    layer_id,
    param_groups,
    scale_lr,
)

# the official keyword rule, applied by substring below
NO_DECAY_KEYS = SwinV2Encoder.NO_WEIGHT_DECAY_KEYWORDS


def _cfg():
    return swinv2_config("debug", img_size=64, window_size=4)


@pytest.fixture(scope="module")
def simmim() -> SimMIM:
    return SimMIM.from_config(_cfg())


@pytest.fixture(scope="module")
def classifier() -> SwinV2Classifier:
    return SwinV2Classifier.from_config(_cfg(), num_classes=10)


def _group_of(model: nn.Module, groups: list[dict]) -> dict[str, dict]:
    by_id = {id(p): g for g in groups for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.named_parameters()}


@pytest.mark.parametrize("which", ["simmim", "classifier"])
@pytest.mark.parametrize("layer_decay", [None, 0.75])
def test_no_decay_rule_on_every_parameter(which, layer_decay, request):
    model = request.getfixturevalue(which)
    groups = param_groups(model, 0.05, layer_decay=layer_decay)
    of = _group_of(model, groups)
    assert len(of) == len(list(model.parameters()))  # every parameter in exactly one group
    assert sum(len(g["params"]) for g in groups) == len(of)
    for name, p in model.named_parameters():
        expect_decay = p.ndim > 1 and not any(k in name for k in NO_DECAY_KEYS)
        assert of[name]["weight_decay"] == (0.05 if expect_decay else 0.0), name
    # the multi-dimensional exclusions really occur in the debug model, and are excluded
    names = {n for n, p in model.named_parameters() if p.ndim > 1 and of[n]["weight_decay"] == 0.0}
    assert any("logit_scale" in n for n in names) and any(
        "cpb_mlp" in n and n.endswith("weight") for n in names
    )
    assert any(n.endswith("qkv.weight") and of[n]["weight_decay"] == 0.05 for n in of)


def test_timm_helper_misplaces_logit_scale_and_cpb_mlp(simmim):
    """A pitfall measured with timm 1.0.31: the third positional argument of timm's helper is
    `weight_decay_exclude_1d`, so the no-decay names are silently ignored; our groups put the same
    parameters right."""
    from timm.optim import param_groups_weight_decay

    enc = simmim.encoder
    timm_groups = param_groups_weight_decay(enc, 0.05, enc.no_weight_decay())
    timm_of = _group_of(enc, timm_groups)
    ours = _group_of(enc, param_groups(enc, 0.05))
    wrong = [n for n in enc.no_weight_decay() if timm_of[n]["weight_decay"] > 0]
    assert any("logit_scale" in n for n in wrong) and any("cpb_mlp" in n for n in wrong)
    assert all(ours[n]["weight_decay"] == 0.0 for n in enc.no_weight_decay())


def test_frozen_parameters_are_left_out():
    model = SwinV2Classifier.from_config(_cfg(), num_classes=10)
    model.encoder.patch_embed.requires_grad_(False)
    params = {id(p) for g in param_groups(model, 0.05, layer_decay=0.9) for p in g["params"]}
    assert not any(id(p) in params for p in model.encoder.patch_embed.parameters())
    assert id(model.head.weight) in params


@pytest.mark.parametrize(
    "depths, name, expected",
    [
        ((2, 2, 6, 2), "mask_token", 0),
        ((2, 2, 6, 2), "patch_embed.proj.weight", 0),
        ((2, 2, 6, 2), "layers.0.blocks.0.attn.qkv.weight", 1),
        ((2, 2, 6, 2), "layers.0.blocks.1.norm1.weight", 2),
        # official: stage 0's end-of-stage merge
        ((2, 2, 6, 2), "layers.1.downsample.reduction.weight", 2),
        ((2, 2, 6, 2), "layers.1.blocks.0.mlp.fc1.weight", 3),
        ((2, 2, 6, 2), "layers.2.downsample.norm.bias", 4),
        ((2, 2, 6, 2), "layers.2.blocks.0.attn.logit_scale", 5),
        ((2, 2, 6, 2), "layers.2.blocks.5.mlp.fc2.bias", 10),
        ((2, 2, 6, 2), "layers.3.downsample.reduction.weight", 10),
        ((2, 2, 6, 2), "layers.3.blocks.1.norm2.weight", 12),
        ((2, 2, 6, 2), "norm.weight", 13),
        ((2, 2, 18, 2), "layers.2.blocks.17.attn.qkv.weight", 22),
        ((2, 2, 18, 2), "layers.3.downsample.reduction.weight", 22),
        ((2, 2, 18, 2), "layers.3.blocks.0.attn.proj.weight", 23),
        ((2, 2, 18, 2), "layers.3.blocks.1.attn.proj.weight", 24),
        ((2, 2, 18, 2), "norm.bias", 25),
        ((2, 2, 18, 2), "head.fc.weight", 25),
    ],
)
def test_layer_id_official_numbering(depths, name, expected):
    assert layer_id(name, depths) == expected


def test_layer_id_rejects_names_outside_depths():
    with pytest.raises(ValueError, match="depths"):
        layer_id("layers.2.blocks.6.attn.qkv.weight", (2, 2, 6, 2))
    with pytest.raises(ValueError, match="stages"):
        layer_id("layers.4.blocks.0.attn.qkv.weight", (2, 2, 6, 2))


@pytest.mark.parametrize("which", ["simmim", "classifier"])
def test_layer_decay_groups_on_debug_model(which, request):
    model = request.getfixturevalue(which)
    decay, base_lr = 0.5, 1e-3
    groups = param_groups(model, 0.05, layer_decay=decay, base_lr=base_lr)
    of = _group_of(model, groups)
    last = sum(_cfg().depths) + 1  # debug depths (1, 1, 2, 1) → 6
    expected = {
        "encoder.mask_token": 0,
        "encoder.patch_embed.proj.weight": 0,
        "encoder.layers.0.blocks.0.norm1.bias": 1,
        "encoder.layers.1.downsample.reduction.weight": 1,
        "encoder.layers.1.blocks.0.attn.qkv.weight": 2,
        "encoder.layers.2.blocks.1.attn.cpb_mlp.0.weight": 4,
        "encoder.layers.3.downsample.norm.weight": 4,
        "encoder.layers.3.blocks.0.mlp.fc1.weight": 5,
        "encoder.norm.weight": last,
    }
    expected.update({"decoder.0.weight": last} if which == "simmim" else {"head.weight": last})
    for name, lid in expected.items():
        if name in of:
            assert of[name]["layer_id"] == lid, name
            assert of[name]["lr_scale"] == pytest.approx(decay ** (last - lid))
            assert of[name]["lr"] == pytest.approx(base_lr * decay ** (last - lid))
    assert set(expected) <= set(of) | {"encoder.mask_token"}
    # scales never decrease with depth, and the top (final norm, head/decoder) trains at the full LR
    order = [n for n, _ in model.named_parameters()]
    scales = [of[n]["lr_scale"] for n in order]
    assert scales == sorted(scales)
    assert scales[0] < 1.0 and scales[-1] == 1.0 and of["encoder.norm.weight"]["lr_scale"] == 1.0
    # groups are unique per (layer, decay) and named for logging
    assert len({g["name"] for g in groups}) == len(groups)


def test_layer_decay_on_bare_encoder_and_error_without_encoder():
    enc = SwinV2Encoder(_cfg())
    of = _group_of(enc, param_groups(enc, 0.05, layer_decay=0.9))
    assert of["layers.2.blocks.0.attn.qkv.weight"]["layer_id"] == 3
    assert of["norm.weight"]["lr_scale"] == 1.0
    with pytest.raises(ValueError, match="layer_decay=None"):
        param_groups(nn.Linear(2, 2), 0.05, layer_decay=0.9)


def test_build_optimizer_lrs_and_options(classifier):
    opt = build_optimizer(classifier, base_lr=2e-3, layer_decay=0.8)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["fused"]  # CPU parameters: torch's fused kernel runs there too
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(2e-3 * g["lr_scale"])
        assert g["betas"] == (0.9, 0.999) and g["eps"] == 1e-8
    sgd = build_optimizer(classifier, name="SGD", base_lr=0.1)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"]
    assert {g["weight_decay"] for g in sgd.param_groups} == {0.0, 0.05}
    with pytest.raises(ValueError, match="adamw"):
        build_optimizer(classifier, name="lamb", base_lr=0.1)


def test_scale_lr_and_epochs_to_steps():
    assert scale_lr(1.25e-3, 2048) == pytest.approx(5e-3)
    assert scale_lr(2e-4, 128) == pytest.approx(5e-5)
    assert scale_lr(1e-4, 256, reference_batch=256) == pytest.approx(1e-4)
    assert epochs_to_steps(2.3, 100) == 230  # int(2.3 * 100) would be 229
    assert epochs_to_steps(10, 1251) == 12510


def _opt(scales=(1.0, 0.5), lr=1e-3) -> torch.optim.Optimizer:
    groups = [
        {"params": [nn.Parameter(torch.zeros(1))], "lr": lr * s, "lr_scale": s} for s in scales
    ]
    return torch.optim.SGD(groups, lr=lr)


def _lrs(sched, steps: int) -> list[list[float]]:
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in sched.optimizer.param_groups])
        sched.optimizer.step()
        sched.step()
    return out


def test_cosine_warmup_midpoint_end_and_group_scaling():
    peak, warm, low = 1e-3, 1e-6, 1e-5
    sched = build_scheduler(_opt(), total_steps=110, warmup_steps=10, warmup_lr=warm, min_lr=low)
    lrs = _lrs(sched, 121)
    assert lrs[0][0] == pytest.approx(warm)
    assert lrs[5][0] == pytest.approx(warm + (peak - warm) / 2)
    assert lrs[10][0] == pytest.approx(peak)
    assert lrs[60][0] == pytest.approx((peak + low) / 2)  # cosine midpoint
    # ends and stays at min
    assert lrs[110][0] == pytest.approx(low) and lrs[120][0] == pytest.approx(low)
    assert all(a[0] >= b[0] for a, b in pairwise(lrs[10:]))  # monotone after warmup
    for row in lrs:  # scaled mode: the half-scale group follows the same curve at half the LR
        assert row[1] == pytest.approx(0.5 * row[0])


def test_absolute_warmup_min_and_official_cosine():
    peak, warm, low = 1e-3, 1e-6, 1e-5
    sched = build_scheduler(
        _opt(),
        total_steps=100,
        warmup_steps=10,
        warmup_lr=warm,
        min_lr=low,
        scale_warmup_min=False,
        warmup_prefix=False,
    )
    lrs = _lrs(sched, 101)
    assert lrs[0] == pytest.approx([warm, warm])  # same absolute start for every group
    assert lrs[100] == pytest.approx([low, low])  # and the same absolute end
    # warmup toward the scaled peak
    assert lrs[9][1] == pytest.approx(warm + 9 * (0.5 * peak - warm) / 10)
    cos_at_10 = [
        low + (p - low) * 0.5 * (1 + math.cos(math.pi * 10 / 100)) for p in (peak, 0.5 * peak)
    ]
    assert lrs[10] == pytest.approx(cos_at_10)  # cosine over all steps


def test_multistep_and_constant():
    sched = build_scheduler(
        _opt(),
        name="multistep",
        total_steps=100,
        warmup_steps=5,
        warmup_lr=0.0,
        milestones=(70, 40),
        gamma=0.1,
    )
    lrs = _lrs(sched, 100)
    assert lrs[0][0] == 0.0 and lrs[5][0] == pytest.approx(1e-3)
    assert lrs[39][0] == pytest.approx(1e-3) and lrs[40][0] == pytest.approx(1e-4)
    assert lrs[69][0] == pytest.approx(1e-4) and lrs[70][0] == pytest.approx(1e-5)
    assert all(r[1] == pytest.approx(0.5 * r[0]) for r in lrs)
    with pytest.raises(ValueError, match="milestones"):
        build_scheduler(
            _opt(), name="multistep", total_steps=100, warmup_steps=50, milestones=(40,)
        )
    const = _lrs(build_scheduler(_opt(), name="constant", total_steps=10, warmup_steps=2), 10)
    assert const[1][0] == pytest.approx(5e-4) and all(
        r[0] == pytest.approx(1e-3) for r in const[2:]
    )
    with pytest.raises(ValueError, match="warmup_steps"):
        build_scheduler(_opt(), total_steps=10, warmup_steps=11)


@pytest.mark.parametrize("order", ["optimizer_first", "optimizer_after", "scheduler_only"])
def test_scheduler_resume_gives_the_same_lrs(tmp_path, order):
    kw = {"total_steps": 50, "warmup_steps": 10, "warmup_lr": 1e-6, "min_lr": 1e-5}
    model = SwinV2Classifier.from_config(_cfg(), num_classes=4)
    opt = build_optimizer(model, base_lr=1e-3, layer_decay=0.7)
    sched = build_scheduler(opt, **kw)
    _lrs(sched, 17)
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, tmp_path / "ckpt.pt")
    expected = _lrs(sched, 20)

    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    # factors saved, not dropped
    assert all(isinstance(f, dict) and f for f in state["sched"]["lr_lambdas"])
    opt2 = build_optimizer(model, base_lr=1e-3, layer_decay=0.7)
    if order == "optimizer_first":  # the groups then hold the scheduled LR, not the peak
        opt2.load_state_dict(state["opt"])
    sched2 = build_scheduler(opt2, **kw)
    if order == "optimizer_after":  # Lightning's order
        opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    assert sched2.last_epoch == 17
    resumed = _lrs(sched2, 20)
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(expected), rtol=1e-12, atol=0)
    assert expected[0] != expected[5]  # the compared stretch is not flat
