"""Our SwinV2 / SimMIM / classifier against transformers' Swinv2 on the same weights, within what
rounding alone makes (tests/helpers/numerics.py: norm-relative differences, bounds from each model's
reduction lengths)."""

from __future__ import annotations

import pytest
import torch
from helpers.numerics import EPS, assert_norm_close
from helpers.reference import (
    CASES,
    bound,
    grad_bound,
    hf_config,
    input_size,
    random_mask,
    randomize_,
    transformers,
)

from simmim_swinv2 import convert
from simmim_swinv2.models import SimMIM, SwinV2Classifier, SwinV2Encoder, masked_l1_loss

# A loss is one number away from zero: compared relative to itself, within the output's bound.


def _ours(hf_model, tmp_path, fused: bool = True):
    hf_model.save_pretrained(tmp_path)
    return convert.from_transformers(tmp_path, attn_backend="sdpa" if fused else "eager").eval()


@pytest.mark.parametrize("case", list(CASES))
def test_encoder_matches_transformers(case, tmp_path):
    ref = randomize_(transformers.Swinv2Model(hf_config(case)))
    ours = _ours(ref, tmp_path)
    assert isinstance(ours, SwinV2Encoder)
    x = torch.randn(2, ref.config.num_channels, *input_size(case))
    with torch.no_grad():
        expected = ref(x)
        emb, dims = ref.embeddings(x)
        stages = ref.encoder(
            emb, dims, output_hidden_states=True, output_hidden_states_before_downsampling=True
        ).hidden_states
        got = ours(x, output_hidden_states=True)
    B, h, w, C = got.last_hidden_state.shape
    tol = bound(case)
    assert_norm_close(
        got.last_hidden_state.reshape(B, h * w, C), expected.last_hidden_state, tol, "last hidden"
    )
    assert_norm_close(got.pooler_output, expected.pooler_output, tol, "pooler")
    assert len(got.hidden_states) == len(stages) == len(ref.config.depths) + 1
    for i, (mine, theirs) in enumerate(zip(got.hidden_states, stages)):
        assert mine.shape[0] * mine.shape[1] * mine.shape[2] == theirs.shape[0] * theirs.shape[1], i
        assert_norm_close(mine.reshape(theirs.shape), theirs, tol, f"stage {i}")


@pytest.mark.parametrize("case", list(CASES))
def test_classifier_matches_transformers(case, tmp_path):
    ref = randomize_(transformers.Swinv2ForImageClassification(hf_config(case, num_labels=5)))
    ours = _ours(ref, tmp_path)
    assert isinstance(ours, SwinV2Classifier) and ours.num_classes == 5
    x = torch.randn(3, ref.config.num_channels, *input_size(case))
    labels = torch.tensor([0, 4, 2])
    with torch.no_grad():
        expected = ref(x, labels=labels)
        got = ours(x, labels=labels)
    assert_norm_close(got.logits, expected.logits, bound(case), "logits")
    torch.testing.assert_close(got.loss, expected.loss, rtol=bound(case), atol=0)


@pytest.mark.parametrize("case", ["clamped_window", "three_stages", "odd_options"])
def test_simmim_matches_transformers(case, tmp_path):
    """transformers' MIM head handles square images only, so the square cases."""
    ref = randomize_(transformers.Swinv2ForMaskedImageModeling(hf_config(case)))
    ours = _ours(ref, tmp_path)
    assert isinstance(ours, SimMIM)
    H, W = input_size(case)
    p = ref.config.patch_size
    x = torch.randn(2, ref.config.num_channels, H, W)
    mask = random_mask(2, H // p, W // p)
    with torch.no_grad():
        expected = ref(x, bool_masked_pos=mask.flatten(1).bool())
        got = ours(x, mask)
    assert_norm_close(got.reconstruction, expected.reconstruction, bound(case), "reconstruction")
    torch.testing.assert_close(got.loss, expected.loss, rtol=bound(case), atol=0)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_attention_equals_eager(case, dtype, tmp_path):
    """Outputs in fp32; outputs and every gradient in fp64 (the same maths, rounded in another
    order)."""
    ref = randomize_(
        transformers.Swinv2ForMaskedImageModeling(hf_config(case)), max_logit_scale=4.5
    )
    fused = _ours(ref, tmp_path, fused=True).to(dtype)
    eager = _ours(ref, tmp_path / "eager", fused=False).to(dtype)
    H, W = input_size(case)
    p = ref.config.patch_size
    # a fixed input: a parameter's gradient is a sum that may cancel, and its error relative to that
    # sum grows as it does; with the input fixed, only the CPU's order of additions varies, never
    # how close the sum is to zero
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, ref.config.num_channels, H, W, generator=g).to(dtype).requires_grad_(True)
    mask = random_mask(2, H // p, W // p, seed=1)
    results = []
    for model in (fused, eager):
        model.train()  # dropout is 0; train mode exercises the training path
        x.grad = None
        out = model(x, mask)
        out.loss.backward()
        grads = {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}
        results.append((out.reconstruction.detach(), x.grad.clone(), grads))
    (r1, gx1, g1), (r2, gx2, g2) = results
    assert_norm_close(r1, r2, bound(case, dtype), "reconstruction")
    if dtype == torch.float64:
        # a gradient sums over the batch's positions (and each window's keys:
        # helpers.reference.grad_terms)
        assert_norm_close(gx1, gx2, bound(case, dtype, batch_sum=mask.numel()), "input gradient")
        assert g1.keys() == g2.keys() and len(g1) == len(list(fused.parameters()))
        for name in g1:
            assert_norm_close(g1[name], g2[name], grad_bound(case, dtype, mask.numel(), name), name)


@pytest.mark.parametrize("case", ["clamped_window", "three_stages"])
def test_simmim_training_step_gradients_match_transformers(case, tmp_path):
    """The default path in training (on the CPU: the explicit attention SDPA would fall back from;
    shifted windows as token gathers; the mask token by torch.where; the loss summed per patch)
    against transformers, in fp64: every parameter's gradient of the SimMIM loss. Our loss is
    computed in fp32, which rounds its scale (1/count): every gradient is off by up to that one fp32
    rounding, eps(fp32) = 1.2e-7, hence 10 eps (one rounding, a factor 10 for the fp32 count's own
    rounding and the fp64 sums after it)."""
    ref = randomize_(
        transformers.Swinv2ForMaskedImageModeling(hf_config(case)), max_logit_scale=4.5
    ).double()
    ours = _ours(ref, tmp_path).double().train()
    H, W = input_size(case)
    p = ref.config.patch_size
    x = torch.randn(
        2,
        ref.config.num_channels,
        H,
        W,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(2),
    )
    mask = random_mask(2, H // p, W // p, seed=3)
    ref(x, bool_masked_pos=mask.flatten(1).bool()).loss.backward()
    ours(x, mask).loss.backward()
    grads = {
        f"swinv2.{k}": v
        for k, v in convert.encoder_to_transformers(
            {n: q.grad for n, q in ours.encoder.named_parameters()}
        ).items()
    }
    grads.update({f"decoder.{n}": q.grad for n, q in ours.decoder.named_parameters()})
    theirs = {n: q.grad for n, q in ref.named_parameters() if q.grad is not None}
    assert grads.keys() == theirs.keys() and len(grads) == len(list(ref.parameters()))
    for name, g in grads.items():
        assert theirs[name].abs().max() > 0, name
        assert_norm_close(g, theirs[name], 10 * EPS[torch.float32], name)


def test_simmim_every_parameter_gets_a_gradient():
    from simmim_swinv2.models import swinv2_config

    model = randomize_(
        SimMIM.from_config(swinv2_config("debug", img_size=64, window_size=4)), max_logit_scale=4.0
    )
    model.train()
    x = torch.randn(2, 3, 64, 64)
    model(x, random_mask(2, 16, 16)).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_loss_ignores_unmasked_pixels():
    torch.manual_seed(0)
    target, rec = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    mask = random_mask(2, 8, 8)
    pixel_mask = (
        mask.repeat_interleave(4, 1).repeat_interleave(4, 2).unsqueeze(1).bool().expand_as(target)
    )
    loss = masked_l1_loss(target, rec, mask, 4)
    changed_target = torch.where(pixel_mask, target, target + 10 * torch.randn_like(target))
    changed_rec = torch.where(pixel_mask, rec, torch.randn_like(rec) * 100)
    assert masked_l1_loss(changed_target, rec, mask, 4) == loss
    assert masked_l1_loss(target, changed_rec, mask, 4) == loss
    # and it does see the masked ones: the mean |error| over masked pixel-channels
    assert torch.isclose(loss, (target - rec).abs()[pixel_mask].mean(), rtol=1e-5)
    assert masked_l1_loss(torch.where(pixel_mask, target + 1, target), rec, mask, 4) != loss


def test_simmim_loss_ignores_unmasked_target_pixels():
    """Through the model: with the encoder input fixed, the target may change freely outside the
    mask."""
    from simmim_swinv2.models import swinv2_config

    model = randomize_(SimMIM.from_config(swinv2_config("debug", img_size=64, window_size=4)))
    x = torch.randn(1, 3, 64, 64)
    mask = random_mask(1, 16, 16)
    with torch.no_grad():
        rec = model(x, mask).reconstruction
        pixel_mask = mask.repeat_interleave(4, 1).repeat_interleave(4, 2).unsqueeze(1).bool()
        noisy = torch.where(pixel_mask, x, x + torch.randn_like(x))
        assert (
            masked_l1_loss(noisy, rec, mask, 4)
            == masked_l1_loss(x, rec, mask, 4)
            == model(x, mask).loss
        )


def test_normalised_target_matches_a_direct_computation():
    from simmim_swinv2.models import normalize_target

    torch.manual_seed(0)
    x = torch.randn(1, 2, 9, 11, dtype=torch.float64)
    k = 5
    got = normalize_target(x, k)
    expected = torch.empty_like(x)
    for i in range(9):
        for j in range(11):
            win = x[:, :, max(0, i - 2) : i + 3, max(0, j - 2) : j + 3].flatten(2)
            expected[:, :, i, j] = (x[:, :, i, j] - win.mean(-1)) / (
                win.var(-1, unbiased=True) + 1e-6
            ).sqrt()
    # float64 on both sides, sums of at most 25 terms: rounding ~1e-15, far inside the float64
    # default rtol 1e-7
    torch.testing.assert_close(got, expected)


def _official_norm_targets(x: torch.Tensor, window: int) -> torch.Tensor:
    """microsoft/Swin-Transformer models/simmim.py `norm_targets`, written out, evaluated in
    float64."""
    import torch.nn.functional as F

    x = x.double()
    pool = dict(kernel_size=window, stride=1, padding=window // 2)
    mean = F.avg_pool2d(x, count_include_pad=False, **pool)
    mean_sq = F.avg_pool2d(x**2, count_include_pad=False, **pool)
    count = F.avg_pool2d(torch.ones_like(x), count_include_pad=True, **pool) * window**2
    var = (mean_sq - mean**2) * (count / (count - 1))
    return (x - mean) / (var + 1e-6) ** 0.5


def _smooth_image(b: int, c: int, h: int, w: int) -> torch.Tensor:
    """Photo-like normalised pixels: smooth gradients and low texture on an offset, with a flat
    patch (variance 0: only the 1e-6 under the root bounds the target there), where running sums in
    float32 lose the variance."""
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    phase = torch.rand(b, c, 1, 1) * 6
    img = 1.5 + 0.6 * torch.sin(3 * xx + phase) * torch.cos(2 * yy) + 0.02 * torch.randn(b, c, h, w)
    img[..., h // 3 : h // 3 + 20, w // 4 : w // 4 + 30] = 2.0
    return img


@pytest.mark.parametrize(
    "shape,window,dtype",
    [
        ((1, 3, 64, 112), 47, torch.float32),  # the recipe's window, non-square
        ((1, 3, 64, 112), 47, torch.bfloat16),  # a bf16 batch: statistics in float64, float32 out
        ((2, 3, 40, 72), 47, torch.float32),  # the window taller than the image
        ((1, 2, 21, 13), 101, torch.float32),  # the window larger than the image both ways
        ((1, 1, 64, 64), 5, torch.float32),
    ],
)
def test_normalised_target_equals_the_official_formula(shape, window, dtype):
    from simmim_swinv2.models import normalize_target

    x = _smooth_image(*shape).to(dtype)
    got = normalize_target(x, window)
    assert got.dtype == torch.float32 and got.shape == x.shape
    # the formula's float64 value rounded to float32 (6e-8); flat pixels' targets are ~0 (hence
    # atol)
    torch.testing.assert_close(
        got.double(), _official_norm_targets(x, window), rtol=1e-5, atol=1e-6
    )
