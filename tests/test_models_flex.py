"""The FlexAttention backend (`attn_backend="flex"`) against the eager reference (timm's
`WindowAttention`) and transformers' Swinv2, on the same weights: outputs and every gradient, fp32
and fp64.

torch 2.14 runs FlexAttention on the CPU forward only: its entry point refuses q/k/v that require
grad there (`_validate_device` in torch/nn/attention/flex_attention.py: "FlexAttention does not
support backward on CPU"). The gradient tests lift that one check (`cpu_flex_backward`), so the
gradients are torch's own unfused flex forward and backward (the dense `flex_attention` /
`flex_attention_backward` implementations, the same code CUDA runs without compile), captured-tensor
gradients included. The fused Triton kernels are checked on a GPU.
"""

from __future__ import annotations

import pytest
import torch
from helpers.numerics import assert_norm_close, rounding_bound
from helpers.reference import (
    CASES,
    bound,
    grad_bound,
    grad_terms,
    hf_config,
    input_size,
    random_mask,
    randomize_,
    transformers,
)

from simmim_swinv2 import convert
from simmim_swinv2.models import SimMIM, SwinV2Block, SwinV2Config, flex, swinv2_config

DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float64, id="fp64")]

pytestmark = pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")


@pytest.fixture
def cpu_flex_backward(monkeypatch):
    """Let q/k/v that require grad through FlexAttention's entry on the CPU; every other check
    stays."""
    import torch.nn.attention.flex_attention as fa

    original = fa._validate_device

    def validate_without_the_cpu_backward_check(query, key, value):
        original(query.detach(), key.detach(), value.detach())

    monkeypatch.setattr(fa, "_validate_device", validate_without_the_cpu_backward_check)


def set_backend(model: torch.nn.Module, backend: str) -> torch.nn.Module:
    for block in model.modules():
        if isinstance(block, SwinV2Block):
            block.attn_backend = backend
    return model


def forward_backward(
    model, x: torch.Tensor, *args
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The output (a loss for SimMIM, the block output otherwise), the input's gradient and every
    parameter's."""
    model.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    out = model(x, *args)
    if isinstance(out, torch.Tensor):
        loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()
        result = out
    else:
        loss = result = out.loss
    loss.backward()
    return result.detach(), x.grad, {n: p.grad for n, p in model.named_parameters()}


def assert_same_results(got, expected, tol: float, grad_tol) -> None:
    """The output within `tol`, the input's gradient within `grad_tol("input")` and every
    parameter's within `grad_tol(name)` (norm-relative; `grad_tol` a number or a function of the
    name)."""
    grad_tol = grad_tol if callable(grad_tol) else (lambda name, tol=grad_tol: tol)
    (out, gx, grads), (ref_out, ref_gx, ref_grads) = got, expected
    assert_norm_close(out, ref_out, tol, "output")
    assert_norm_close(gx, ref_gx, grad_tol("input"), "input gradient")
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        assert g is not None and ref_grads[name] is not None, name
        assert ref_grads[name].abs().max() > 0, name  # nothing passes by being zero
        assert_norm_close(g, ref_grads[name], grad_tol(name), name)


# ---------------------------------------------------------------------------------------- one block
# Each: block kwargs, input (H, W), and why it is here.
BLOCKS = {
    "shifted": (
        dict(dim=32, input_resolution=(8, 8), num_heads=2, window_size=4, shift_size=2),
        (8, 8),
    ),
    "unshifted": (
        dict(dim=32, input_resolution=(8, 8), num_heads=2, window_size=4, shift_size=0),
        (8, 8),
    ),
    # another input size: padded to a window multiple before the shift, the shift mask rebuilt for
    # it.
    "padded_nonsquare": (
        dict(dim=32, input_resolution=(8, 8), num_heads=2, window_size=4, shift_size=2),
        (10, 6),
    ),
    # odd window 3 (9 windows), three 8-wide heads, pretrained window 6, no q/v bias.
    "odd_window_pretrained_nobias": (
        dict(
            dim=24,
            input_resolution=(9, 9),
            num_heads=3,
            window_size=3,
            shift_size=1,
            pretrained_window_size=6,
            qkv_bias=False,
        ),
        (9, 9),
    ),
    # the window clamps to the 4x4 map: one window, shift off.
    "clamped_single_window": (
        dict(dim=16, input_resolution=(4, 4), num_heads=2, window_size=8, shift_size=4),
        (4, 4),
    ),
}


def _block_bound(name: str, dtype: torch.dtype, positions: int = 0, param: str = "") -> float:
    """Rounding bound of one block (helpers/numerics.py): q/k/v and output projections, scores, the
    weighted sum over the window, the MLP; for a gradient, the terms it sums (`grad_terms` of
    `positions` for parameter `param`)."""
    kwargs, _ = BLOCKS[name]
    c, w = kwargs["dim"], min(kwargs["window_size"], *kwargs["input_resolution"])
    return rounding_bound(
        dtype,
        3 * c + c // kwargs["num_heads"] + w * w + 4 * c + c + grad_terms(param, positions, w),
    )


def _block(name: str, dtype: torch.dtype) -> tuple[SwinV2Block, torch.Tensor]:
    kwargs, (h, w) = BLOCKS[name]
    block = randomize_(SwinV2Block(**kwargs), max_logit_scale=4.5).to(dtype).train()
    x = torch.randn(2, h, w, kwargs["dim"], generator=torch.Generator().manual_seed(1)).to(dtype)
    return block, x


@pytest.mark.parametrize("name", list(BLOCKS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_block_forward_equals_eager(name, dtype):
    """What the CPU runs as it is: the forward, without grad."""
    block, x = _block(name, dtype)
    assert (block.shift_size[0] > 0) == (name not in ("unshifted", "clamped_single_window"))
    with torch.no_grad():
        expected = set_backend(block, "eager")(x)
        got = set_backend(block, "flex")(x)
    assert_norm_close(got, expected, _block_bound(name, dtype))


@pytest.mark.parametrize("name", list(BLOCKS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_block_gradients_equal_eager(name, dtype, cpu_flex_backward):
    block, x = _block(name, dtype)
    expected = forward_backward(set_backend(block, "eager"), x)
    got = forward_backward(set_backend(block, "flex"), x)
    positions = x.numel() // x.shape[-1]  # a weight's gradient sums over every token of the batch
    assert_same_results(
        got,
        expected,
        _block_bound(name, dtype),
        lambda param: _block_bound(name, dtype, positions, param),
    )
    # the bias read inside score_mod passes its gradient on
    assert got[2]["attn.cpb_mlp.0.weight"].abs().sum() > 0


def test_window_attention_reads_bias_and_mask_per_head_and_window():
    """`flex.window_attention` against the formula written out: softmax(q kᵀ + bias[h] + mask[b %
    windows]) v."""
    g = torch.Generator().manual_seed(0)
    B, windows, heads, N, d = 2, 3, 2, 9, 4
    q, k, v = (
        torch.randn(B * windows, heads, N, d, generator=g, dtype=torch.float64) for _ in range(3)
    )
    bias = torch.randn(heads, N, N, generator=g, dtype=torch.float64)
    mask = torch.where(torch.rand(windows, N, N, generator=g) < 0.4, float("-inf"), 0.0).double()
    mask.diagonal(dim1=1, dim2=2).zero_()
    scores = q @ k.transpose(-1, -2) + bias + mask.repeat(B, 1, 1).unsqueeze(1)
    # the scores' sums over d, the weighted sum over N keys
    tol = rounding_bound(torch.float64, d + N)
    assert_norm_close(
        flex.window_attention(q, k, v, bias, mask), scores.softmax(-1) @ v, tol, "masked"
    )
    assert_norm_close(
        flex.window_attention(q, k, v, bias), (q @ k.transpose(-1, -2) + bias).softmax(-1) @ v, tol
    )


# ---------------------------------------------------------------------------------- the whole model
def _pair(case: str, dtype: torch.dtype, tmp_path):
    """Our SimMIM with flex and with eager attention on one set of random weights, an input and a
    mask."""
    if case in CASES:
        ref = randomize_(
            transformers.Swinv2ForMaskedImageModeling(hf_config(case)), max_logit_scale=4.5
        )
        ref.save_pretrained(tmp_path)
        models = [convert.from_transformers(tmp_path, attn_backend=b) for b in ("flex", "eager")]
        (H, W), channels, p = input_size(case), ref.config.num_channels, ref.config.patch_size
    # the debug model at 96 px: stage 3 (6x6) pads to 8x8 under a shift, stage 4 (3x3) clamps to 3
    else:
        cfg = swinv2_config("debug", img_size=96, window_size=4, use_mask_token=True)
        models = [SimMIM.from_config(cfg.replace(attn_backend="flex"))]
        models.append(SimMIM.from_config(cfg.replace(attn_backend="eager")))
        randomize_(models[0], max_logit_scale=4.5)
        models[1].load_state_dict(models[0].state_dict())
        (H, W), channels, p = (96, 96), 3, 4
    assert models[0].encoder.cfg.attn_backend == "flex"
    assert models[1].encoder.cfg.attn_backend == "eager"
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, channels, H, W, generator=g).to(dtype)
    return [m.to(dtype).train() for m in models], x, random_mask(2, H // p, W // p, seed=3)


def _config(case: str):
    return swinv2_config("debug", img_size=96, window_size=4) if case == "debug_96px" else case


def _model_bound(case: str, dtype: torch.dtype) -> float:
    return bound(_config(case), dtype)


def _model_grad_bound(case: str, dtype: torch.dtype, positions: int, param: str) -> float:
    return grad_bound(_config(case), dtype, positions, param)


MODEL_CASES = ["debug_96px", *CASES]


@pytest.mark.parametrize("case", MODEL_CASES)
def test_simmim_forward_equals_eager(case, tmp_path):
    (flexed, eager), x, mask = _pair(case, torch.float32, tmp_path)
    with torch.no_grad():
        got, expected = flexed(x, mask), eager(x, mask)
    assert_norm_close(
        got.reconstruction,
        expected.reconstruction,
        _model_bound(case, torch.float32),
        "reconstruction",
    )
    torch.testing.assert_close(
        got.loss, expected.loss, rtol=_model_bound(case, torch.float32), atol=0
    )


@pytest.mark.parametrize(
    "case,dtype",
    [pytest.param(c, torch.float64, id=f"{c}-fp64") for c in MODEL_CASES]
    + [
        pytest.param(c, torch.float32, id=f"{c}-fp32")
        for c in ("debug_96px", "nonsquare_input_pretrained_window")
    ],
)
def test_simmim_gradients_equal_eager(case, dtype, tmp_path, cpu_flex_backward):
    (flexed, eager), x, mask = _pair(case, dtype, tmp_path)
    assert_same_results(
        forward_backward(flexed, x, mask),
        forward_backward(eager, x, mask),
        _model_bound(case, dtype),
        lambda param: _model_grad_bound(case, dtype, mask.numel(), param),
    )


@pytest.mark.parametrize("case", ["clamped_window", "three_stages"])
def test_simmim_loss_and_gradients_match_transformers(case, tmp_path, cpu_flex_backward):
    """fp64 against transformers' `Swinv2ForMaskedImageModeling`: the reconstruction, the loss, and
    every parameter's gradient of one weighted sum of the reconstruction (our loss is always
    computed in fp32, so it would round the gradients at fp32 precision)."""
    ref = randomize_(
        transformers.Swinv2ForMaskedImageModeling(hf_config(case)), max_logit_scale=4.5
    ).double()
    ref.save_pretrained(tmp_path)
    ours = convert.from_transformers(tmp_path, attn_backend="flex").double().train()
    H, W = input_size(case)
    p = ref.config.patch_size
    x = torch.randn(
        2,
        ref.config.num_channels,
        H,
        W,
        generator=torch.Generator().manual_seed(1),
        dtype=torch.float64,
    )
    mask = random_mask(2, H // p, W // p, seed=4)
    expected, got = ref(x, bool_masked_pos=mask.flatten(1).bool()), ours(x, mask)
    assert_norm_close(
        got.reconstruction, expected.reconstruction, bound(case, torch.float64), "reconstruction"
    )
    # our loss is summed in fp32: a random walk over its terms (helpers/numerics.py), the loss
    # itself far from zero
    loss_tol = rounding_bound(torch.float32, got.reconstruction.numel(), conditioning=1)
    torch.testing.assert_close(got.loss.double(), expected.loss, rtol=loss_tol, atol=0)
    weights = torch.randn(got.reconstruction.shape, dtype=torch.float64)
    (expected.reconstruction * weights).sum().backward()
    (got.reconstruction * weights).sum().backward()
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
        assert_norm_close(
            g, theirs[name], grad_bound(case, torch.float64, mask.numel(), name), name
        )


# ------------------------------------------------------------------------- limits and configuration
def test_cpu_training_names_the_fix():
    block, x = _block("shifted", torch.float32)
    with pytest.raises(
        NotImplementedError, match="^attn_backend='flex' on cpu: .*Train with attn_backend='sdpa'"
    ) as err:
        set_backend(block, "flex")(x.requires_grad_(True))
    # torch's own refusal, kept in the message and as the cause
    assert type(err.value.__cause__) is NotImplementedError
    assert str(err.value.__cause__) in str(err.value)


def test_attention_dropout_is_refused():
    with pytest.raises(ValueError, match="no attention dropout.*attn_drop_rate=0"):
        swinv2_config("debug", attn_backend="flex", attn_drop_rate=0.1)
    block = SwinV2Block(
        dim=16,
        input_resolution=(4, 4),
        num_heads=2,
        window_size=4,
        attn_drop=0.1,
        attn_backend="flex",
    )
    with torch.no_grad(), pytest.raises(ValueError, match="no attention dropout"):
        block.train()(torch.randn(1, 4, 4, 16))
    with torch.no_grad():  # eval: dropout is off, nothing to refuse
        assert block.eval()(torch.randn(1, 4, 4, 16)).shape == (1, 4, 4, 16)


def test_config_backend_field_round_trips_and_old_metadata_loads():
    cfg = swinv2_config("debug", img_size=64, window_size=4, attn_backend="flex")
    assert SwinV2Config.from_dict(cfg.to_dict()) == cfg and cfg.attn_backend == "flex"
    old = swinv2_config("debug", img_size=64, window_size=4).to_dict()
    del old["attn_backend"]  # metadata written before the field existed
    assert SwinV2Config.from_dict(old).attn_backend == "sdpa"
    # metadata from before attn_backend replaced fused_attn (False meant timm's eager attention)
    assert SwinV2Config.from_dict({**old, "fused_attn": False}).attn_backend == "eager"
    assert SwinV2Config.from_dict({**old, "fused_attn": True}).attn_backend == "sdpa"
    with pytest.raises(ValueError, match="not one of"):
        swinv2_config("debug", attn_backend="triton")
    with pytest.raises(ValueError, match="not one of"):
        SwinV2Block(
            dim=16, input_resolution=(4, 4), num_heads=2, window_size=4, attn_backend="flash"
        )


def test_fp64_refuses_the_cpu_compiled_kernel_clearly(monkeypatch):
    monkeypatch.setattr(flex, "COMPILE", True)
    q = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="fp32/bf16/fp16"):
        flex.window_attention(q, q, q, torch.zeros(1, 4, 4, dtype=torch.float64))


@pytest.mark.slow
def test_compiled_flex_forward_equals_eager_on_cpu(monkeypatch):
    """inductor's CPU FlexAttention template (fp32, inference) on two blocks of other shapes (the
    second shape is where dynamic shapes would break the CPU template's C++), shift and padding:
    ~30-60 s cold."""
    monkeypatch.setattr(flex, "COMPILE", True)
    for name in ("shifted", "padded_nonsquare"):
        block, x = _block(name, torch.float32)
        with torch.no_grad():
            expected = set_backend(block, "eager")(x)
            got = set_backend(block, "flex")(x)
        assert_norm_close(got, expected, _block_bound(name, torch.float32), name)
    assert "cpu" in flex._compiled


@pytest.mark.slow
def test_a_flex_block_traces_without_graph_breaks():
    """An outer torch.compile of the model takes the flex call into its graph (what a GPU run
    compiles)."""
    block = set_backend(
        SwinV2Block(dim=32, input_resolution=(8, 8), num_heads=2, window_size=4, shift_size=2),
        "flex",
    )
    with torch.no_grad():
        explanation = torch._dynamo.explain(block)(torch.randn(2, 8, 8, 32))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
