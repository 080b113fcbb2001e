"""How the tests compare two computations of the same function.

Two implementations that agree mathematically differ in floating point by rounding alone: the order
of additions (matmul blocking, fused kernels, reductions split over threads), which changes with the
CPU's instruction set (AVX-512 or AVX2) and the number of threads. Rounding errors of independent
operations add like a random walk, so a value reached through `n` accumulated roundings is off by
about `eps * sqrt(n)` relative to its size (Higham, "Accuracy and Stability of Numerical
Algorithms", 2nd ed., section 3.1's probabilistic bound). So here:

- whole tensors are compared by their norm-relative difference `||a - b|| / ||b||` (`norm_rel`): it
  averages over the elements, where an elementwise relative test fails on whichever element happens
  to sit near zero, and a bound on the largest element fails on whichever of thousands of elements
  drew the longest random walk;
- a bound is `eps(dtype) * sqrt(n) * conditioning` (`rounding_bound`): `n` counts the roundings
  along the longest chain of reductions that built the value (`swinv2_roundings`: every layer's
  reduction length), and `conditioning` how much the function amplifies a relative error on the way
  (below);
- elementwise comparisons stay only for values away from zero (a loss, a probability), relative to
  themselves.

`conditioning` defaults to 100: each SwinV2 block divides by norms twice (the cosine attention's
normalised q and k, the residual post-norm's LayerNorm), and a division by the norm of a difference
amplifies that difference's relative error by the ratio of the operands to it: taken as 10 for the
attention and 10 for the norm, per value, not compounding over blocks because each LayerNorm
renormalises what enters the next one. Gradients pass the same chain backwards, and a parameter's
gradient is a sum over the batch and every position with cancellation: their bounds carry that sum's
length in `n`.
"""

from __future__ import annotations

import math
import os

import torch

EPS = {
    torch.float64: 2.0**-52,
    torch.float32: 2.0**-23,
    torch.bfloat16: 2.0**-7,
    torch.float16: 2.0**-10,
}
CONDITIONING = 100.0


def norm_rel(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """`||actual - expected|| / ||expected||` (Frobenius, in fp64); the absolute norm when
    `expected` is zero."""
    diff = torch.linalg.vector_norm(actual.double() - expected.double())
    scale = torch.linalg.vector_norm(expected.double())
    return (diff / scale if scale > 0 else diff).item()


def rounding_bound(dtype: torch.dtype, roundings: int, conditioning: float = CONDITIONING) -> float:
    """The norm-relative difference rounding alone can make:
    `eps(dtype) * sqrt(roundings) * conditioning`."""
    return EPS[dtype] * math.sqrt(roundings) * conditioning


def swinv2_roundings(config, batch_sum: int = 1) -> int:
    """Roundings along the longest chain through a SwinV2 (a transformers `Swinv2Config` or ours):
    the patch embedding (`channels * patch**2`), then per block the q/k/v projection and the
    attention output (`C` each), the scores (`C / heads`), the softmax-weighted sum (`window**2`),
    the MLP (`C` and `mlp_ratio * C`), per stage the patch merging (`4 C`), and the decoder
    (`C_final`). `batch_sum`: terms a gradient sums over (batch x positions)."""
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    patch = get("patch_size", 4)
    channels = get("num_channels", None) or get("in_chans", 3)
    dim, window, ratio = get("embed_dim"), get("window_size"), get("mlp_ratio", 4.0)
    window = max(window) if isinstance(window, (list, tuple)) else window
    n = channels * patch**2
    for stage, (depth, heads) in enumerate(zip(get("depths"), get("num_heads"))):
        c = dim * 2**stage
        n += depth * (3 * c + c // heads + window**2 + int(ratio * c)) + 4 * c
    return n + dim * 2 ** (len(get("depths")) - 1) + batch_sum


def assert_norm_close(
    actual: torch.Tensor, expected: torch.Tensor, bound: float, what: str = ""
) -> float:
    """Fail unless `norm_rel(actual, expected) <= bound`; returns the difference. With
    `SIMMIM_TEST_NUMERICS_LOG=FILE`, appends `test, what, difference, bound` to FILE (to see every
    margin at once)."""
    assert actual.shape == expected.shape, (
        f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    )
    err = norm_rel(actual, expected)
    if log := os.environ.get("SIMMIM_TEST_NUMERICS_LOG"):
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
        with open(log, "a") as f:
            f.write(f"{test}\t{what}\t{err:.3e}\t{bound:.3e}\n")
    assert err <= bound, f"{what}: norm-relative difference {err:.3e} > {bound:.3e}"
    return err
