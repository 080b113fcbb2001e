"""SwinV2 window attention through FlexAttention (`torch.nn.attention.flex_attention`), the opt-in
`attn_backend="flex"`.

The caller does the cosine part outside the kernel: q and k L2-normalised, the clamped logit scale
folded into q, so the kernel's score is already `cos(q, k) * scale` and `scale=1`. What is left for
FlexAttention is a `score_mod` that adds two tables read by index, never materialised per window:
- `bias[h, q_idx, kv_idx]`: `16 * sigmoid(cpb_mlp(...))` gathered by `relative_position_index`,
  `(heads, N, N)`. It requires grad: FlexAttention gives captured score_mod tensors a gradient
  (PyTorch PR #137452; on CUDA by atomic adds, so not bit-deterministic), which autograd carries on
  to the CPB MLP.
- `mask[b % num_windows, q_idx, kv_idx]`: the shifted-window mask (0 / -inf), `(num_windows, N, N)`.
  The batch is laid out as `(B * num_windows)` with the window index innermost (`window_partition`'s
  order), so the window of batch row `b` is `b % num_windows`. No row is ever fully masked (a token
  always sees its own window region), so an additive -inf needs no `BlockMask` (at N ≤ 256, two
  128-token blocks, it would skip little).
This is the layout of emiledgl/flash-window-attention-v2 (its Triton kernels take the bias as
`(heads, N, N)` and the mask as `(windows, N, N)` indexed by `batch_window % windows`); the code
here is our own.

Where it runs, with torch 2.14:
- CUDA: the flex call is compiled (`torch.compile(flex_attention)`, Triton kernels, forward and
  backward) unless `COMPILE = False`. Inside an outer `torch.compile` of the model (`compile: true`,
  the better path), the outer graph owns it. Standalone, every stage's head count and mask/no-mask
  variant is one more compiled graph of `flex_attention`; past
  `torch._dynamo.config.recompile_limit` (8) dynamo falls back to the unfused reference.
- CPU: torch's unfused reference (it materialises the `(B, heads, N, N)` scores), forward only.
  FlexAttention refuses q/k/v that require grad on the CPU ("FlexAttention does not support backward
  on CPU", `_validate_device` in torch/nn/attention/flex_attention.py) and inductor's CPU flex
  template is inference only, fp32/bf16/fp16 (torch/_inductor/kernel/flex/flex_cpu.py).
  `COMPILE = True` compiles it on the CPU too; inductor's kernel cache (TORCHINDUCTOR_CACHE_DIR)
  does not key on ATEN_CPU_CAPABILITY: a process capped at another vector ISA than the one that
  compiled must use its own cache directory (wrong outputs otherwise).
- No attention dropout (FlexAttention has none): the model refuses `attn_drop_rate > 0` with this
  backend.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn.attention.flex_attention import flex_attention

COMPILE: bool | None = None
"""Compile the flex call: None (default) on CUDA only; True everywhere (CPU: inference,
fp32/bf16/fp16); False never (torch's unfused reference: slow on CUDA, for debugging)."""

_compiled: dict[str, Callable] = {}  # by device type


def _kernel(q: torch.Tensor) -> Callable:
    if torch.compiler.is_compiling():  # an outer torch.compile traces flex_attention itself
        return flex_attention
    compile_ = q.is_cuda if COMPILE is None else COMPILE
    if not compile_:
        return flex_attention
    if q.device.type == "cpu" and q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(
            f"inductor's CPU FlexAttention template takes fp32/bf16/fp16, not {q.dtype}: set "
            f"simmim_swinv2.models.flex.COMPILE = None (the unfused reference) for this dtype"
        )
    if q.device.type not in _compiled:
        # CPU: static shapes. With torch 2.14 a second shape makes dynamo mark sizes dynamic, and
        # inductor's CPU template then emits C++ that does not build ("'cur_kvSplitSize2' was not
        # declared in this scope").
        dynamic = False if q.device.type == "cpu" else None
        _compiled[q.device.type] = torch.compile(flex_attention, fullgraph=True, dynamic=dynamic)
    return _compiled[q.device.type]


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """`softmax(q kᵀ + bias[h] + mask[window]) v` with no further scaling.

    q, k, v: `(B * num_windows, heads, N, d)`, q and k already normalised and q scaled; bias
    `(heads, N, N)`; mask `(num_windows, N, N)` of 0 / -inf, or None. Returns
    `(B * num_windows, heads, N, d)`.
    """
    # The scores are fp32 (fp64 for fp64 inputs) inside the kernel: keep the tables at that
    # precision.
    table_dtype = torch.promote_types(q.dtype, torch.float32)
    bias = bias.to(table_dtype)
    if mask is None:

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + bias[h, q_idx, kv_idx]
    else:
        mask = mask.to(table_dtype)
        windows = mask.shape[0]

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + bias[h, q_idx, kv_idx] + mask[b % windows, q_idx, kv_idx]

    kernel = _kernel(q)
    if torch.compiler.is_compiling():
        return kernel(q, k, v, score_mod=score_mod, scale=1.0)
    try:
        return kernel(q, k, v, score_mod=score_mod, scale=1.0)
    # torch's own refusal (CPU backward), with the fix in our terms
    except NotImplementedError as e:
        raise NotImplementedError(
            f"attn_backend='flex' on {q.device.type}: {e} Train with attn_backend='sdpa' here; "
            "'flex' trains on CUDA (and runs inference on the CPU)."
        ) from e
