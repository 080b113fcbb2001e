"""How far bf16 autocast moves SwinV2's outputs from fp32: ours against transformers' Swinv2 and
timm's SwinTransformerV2 on the same weights, and what computing the attention logits in fp32
changes.

Each implementation runs the same batch of images (the bundled digits, through the SimMIM transform)
twice, in fp32 and under bf16 autocast, in eval mode. Reported, per implementation: the relative L2
difference |bf16 - fp32| / |fp32| of the encoder's last hidden state (unmasked input), and the
relative difference of the SimMIM loss (the masked-pixel L1, masked input). Weights:

- `random`: tests/_reference.py's `randomize_` (weights of unit scale, norms around 1) in SwinV2-T's
  layout at 192 px, window 12, with every attention logit scale set to 10 (the initialisation), 30,
  55 or 100 (the clamp, log 100);
- `trained` (`--checkpoint`, e.g. the quickstart's run): the weights as trained (their logit scales
  printed), then the same weights with every logit scale raised to 30, 55 and 100.

Columns: `ours`, `ours fp32 logits` (the variant a model switch would add, patched in here: q and k
normalised, the logit scale, q k^T, the position bias, the shift mask and the softmax in fp32; the
projections and probabilities x v in bf16), `transformers`, `timm`, and `fp64, input x (1+2^-9 e)`:
ours in float64 with every input pixel perturbed by bf16's relative rounding (e standard normal) --
how much the network itself amplifies bf16-sized errors, whatever the arithmetic. `--time` adds a
table of one training step (forward + backward) under bf16 autocast, ours with and without fp32
logits, interleaved rounds, medians.

    python scripts/precision_bf16.py --checkpoint outputs/pretrain/<run>          # ~5 min on 2 CPUs
    python scripts/precision_bf16.py --checkpoint outputs/pretrain/<run> --time --out table.md
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests"), str(ROOT / "scripts")]

from _reference import randomize_  # noqa: E402
from benchmark_model import TimmSimMIM, _load  # noqa: E402

from simmim_swinv2 import convert  # noqa: E402
from simmim_swinv2.data import MaskGenerator, SimMIMTransform, build_digits  # noqa: E402
from simmim_swinv2.models import SimMIM, swinv2_config  # noqa: E402
from simmim_swinv2.models.swinv2 import SwinV2Block  # noqa: E402
from simmim_swinv2.weights import load_model  # noqa: E402

IMPLS = ("ours", "ours fp32 logits", "transformers", "timm", "fp64, input x (1+2^-9 e)")
SCALES = (10.0, 30.0, 55.0, 100.0)


def digits_batch(size: int, mask_patch: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` validation digits at `size` px through the SimMIM transform: images `(B, 3, H, W)`
    and their masks `(B, H/4, W/4)` (1 = masked), the same every run (per-sample seeds)."""
    from simmim_swinv2.data.seeding import PerSampleSeed

    masks = MaskGenerator(input_size=size, mask_patch_size=mask_patch, model_patch_size=4)
    data = PerSampleSeed(build_digits("val", SimMIMTransform(size, masks), image_size=size))
    items = [data[i] for i in range(batch)]
    return torch.stack([x for x, _, _ in items]), torch.stack(
        [torch.as_tensor(m) for _, m, _ in items]
    )


def set_logit_scales(model: torch.nn.Module, scale: float) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                p.fill_(math.log(scale))


def logit_scales(model: torch.nn.Module) -> torch.Tensor:
    values = [
        p.detach().flatten() for n, p in model.named_parameters() if n.endswith("logit_scale")
    ]
    return torch.cat(values).clamp(max=math.log(100)).exp()


def _fp32_logits_attention(block: SwinV2Block, x: torch.Tensor, mask: torch.Tensor | None):
    """`SwinV2Block._window_attention` with the cosine-attention logits in fp32:
    `(B * windows, N, C)` -> same. The qkv projection stays under autocast; q and k are normalised,
    scaled, multiplied, the position bias and shift mask added and the softmax taken in fp32 (scores
    materialised); the probabilities meet v in the autocast dtype."""
    attn = block.attn
    B_, N, C = x.shape
    heads, d = attn.num_heads, C // attn.num_heads
    groups = 1 if mask is None else mask.shape[0]
    bias = None if attn.q_bias is None else torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
    qkv = F.linear(x, attn.qkv.weight, bias).view(B_ // groups, groups, N, 3, heads, d)
    q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)
    shape = (B_ // groups, groups * heads, N, d)
    with torch.autocast(x.device.type, enabled=False):
        scale = torch.clamp(attn.logit_scale.float(), max=math.log(100)).exp()
        q = (F.normalize(q.float(), dim=-1) * scale).reshape(shape)
        k = F.normalize(k.float(), dim=-1).reshape(shape)
        position = block._position_bias(N).float()
        if mask is not None:
            position = (position.unsqueeze(0) + mask.float().unsqueeze(1)).flatten(0, 1)
        probs = (q @ k.transpose(-2, -1) + position).softmax(-1)
    out = probs.to(v.dtype) @ v.reshape(shape)
    out = out.view(B_ // groups, groups, heads, N, -1).transpose(2, 3).reshape(B_, N, C)
    return attn.proj(out)


def with_fp32_logits(model: SimMIM) -> SimMIM:
    """`model` with every block's attention swapped for `_fp32_logits_attention` (in place)."""
    for block in model.modules():
        if isinstance(block, SwinV2Block):
            block._window_attention = types.MethodType(_fp32_logits_attention, block)
    return model


def implementations(model: SimMIM, tmp: Path) -> dict:
    """`name -> (encoder(x) -> features, loss(x, mask) -> loss)`, every one on `model`'s weights."""
    from transformers import Swinv2ForMaskedImageModeling

    fp32_logits = with_fp32_logits(SimMIM.from_config(model.encoder.cfg)).eval()
    fp32_logits.load_state_dict(model.state_dict())
    hf = Swinv2ForMaskedImageModeling.from_pretrained(convert.to_transformers(model, tmp)).eval()
    timm = TimmSimMIM(model.encoder.cfg).eval()
    encoder = model.encoder.state_dict()
    _load(timm.encoder, encoder, ignore=("mask_token",))
    timm.mask_token.data.copy_(encoder["mask_token"])
    timm.decoder.load_state_dict(model.decoder.state_dict())
    return {
        "ours": (lambda x: model.encoder(x).last_hidden_state, lambda x, m: model(x, m).loss),
        "ours fp32 logits": (
            lambda x: fp32_logits.encoder(x).last_hidden_state,
            lambda x, m: fp32_logits(x, m).loss,
        ),
        "transformers": (
            lambda x: hf.swinv2(x).last_hidden_state,
            lambda x, m: hf(x, bool_masked_pos=m.flatten(1).bool()).loss,
        ),
        "timm": (lambda x: timm.encoder.forward_features(x), timm),
    }


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


@torch.no_grad()
def errors(model: SimMIM, x: torch.Tensor, mask: torch.Tensor) -> tuple[dict, dict, float]:
    """Per implementation: (encoder output error, loss error) of bf16 autocast against fp32; and the
    largest fp32 disagreement between implementations (a check that they hold the same weights)."""
    enc_err, loss_err, fp32 = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (encode, loss) in implementations(model, Path(tmp)).items():
            ref_out, ref_loss = encode(x).float(), loss(x, mask).float()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out, low = encode(x).float(), loss(x, mask).float()
            enc_err[name], loss_err[name] = rel(out, ref_out), abs(low.item() / ref_loss.item() - 1)
            fp32[name] = ref_out.reshape(-1)
    agree = max(rel(v, fp32["ours"]) for v in fp32.values())
    wide = SimMIM.from_config(model.encoder.cfg).double().eval()
    wide.load_state_dict(model.state_dict())
    x64 = x.double()
    noisy = x64 * (
        1
        + 2.0**-9
        * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    )
    name = IMPLS[-1]
    enc_err[name] = rel(wide.encoder(noisy).last_hidden_state, wide.encoder(x64).last_hidden_state)
    loss_err[name] = abs(wide(noisy, mask).loss.item() / wide(x64, mask).loss.item() - 1)
    return enc_err, loss_err, agree


def step_times(cfg, x: torch.Tensor, mask: torch.Tensor, rounds: int, steps: int) -> dict:
    """Median ms of one forward + backward under bf16 autocast (and fp32 for reference), ours with
    and without fp32 logits, the variants taking turns round by round."""
    variants = {
        "fp32 (no autocast)": (False, False),
        "bf16 autocast": (False, True),
        "bf16 autocast, fp32 logits": (True, True),
    }
    models = {}
    for name, (fp32_logits, _) in variants.items():
        torch.manual_seed(0)
        models[name] = SimMIM.from_config(cfg).train()
        if fp32_logits:
            with_fp32_logits(models[name])
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (_, bf16) in variants.items():
            model = models[name]
            for i in range(steps + 1):
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = model(x, mask).loss
                loss.backward()
                model.zero_grad(set_to_none=True)
                if i:  # the first is a warm-up
                    times[name].append(1000 * (time.perf_counter() - t0))
    return {name: statistics.median(v) for name, v in times.items()}


def table(rows: list[tuple[str, str, dict]], what: str) -> list[str]:
    lines = [f"| weights | logit scale | {' | '.join(IMPLS)} |", "|---|---|" + "---:|" * len(IMPLS)]
    lines += [
        f"| {w} | {s} | " + " | ".join(f"{v[n]:.2%}" for n in IMPLS) + " |" for w, s, v in rows
    ]
    return [f"{what}:", "", *lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkpoint", help="a trained SimMIM run or checkpoint (e.g. the quickstart)"
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--time", action="store_true", help="also time fp32 logits (training step)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", help="also write the tables to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cases = []  # (weights, model, images, masks)
    cfg = swinv2_config("tiny", img_size=192, window_size=12)
    random_model = SimMIM.from_config(cfg)
    randomize_(random_model)
    cases.append(
        ("random, SwinV2-T 192 px window 12", random_model, *digits_batch(192, 32, args.batch))
    )
    if args.checkpoint:
        trained = load_model(args.checkpoint).eval()
        size = trained.encoder.cfg.img_size[0]
        cases.append(
            (
                f"trained ({Path(args.checkpoint).name})",
                trained,
                *digits_batch(size, size // 4, args.batch),
            )
        )

    enc_rows, loss_rows, notes = [], [], []
    for weights, model, x, mask in cases:
        settings = [("as trained", None)] if weights.startswith("trained") else []
        settings += [
            (f"{s:g}", s) for s in SCALES if not (weights.startswith("trained") and s == 10)
        ]
        for label, scale in settings:
            if scale is not None:
                set_logit_scales(model, scale)
            else:
                s = logit_scales(model)
                label = f"as trained ({s.mean():.2f} mean, {s.max():.2f} max)"
            enc, loss, agree = errors(model, x, mask)
            enc_rows.append((weights, label, enc))
            loss_rows.append((weights, label, loss))
            notes.append(
                f"{weights}, {label}: fp32 outputs of the 4 agree to {agree:.1e} (rel. L2)"
            )
            print(
                f"{weights} | {label} | " + ", ".join(f"{n} {enc[n]:.2%}" for n in IMPLS),
                flush=True,
            )

    out = [
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}; batch {args.batch}; CPU bf16 autocast.",
        "",
    ]
    out += table(enc_rows, "Encoder output, |bf16 - fp32| / |fp32|")
    out += table(loss_rows, "SimMIM loss, |bf16 / fp32 - 1|")
    out += [f"- {n}" for n in notes] + [""]
    if args.time:
        x, mask = digits_batch(192, 32, args.batch)
        ms = step_times(cfg, x, mask, args.rounds, args.steps)
        base = ms["bf16 autocast"]
        out += [
            "One training step (forward + backward), SwinV2-T 192 px window 12, "
            f"batch {args.batch}, median of {args.rounds} rounds x {args.steps} steps:",
            "",
            "| variant | ms | vs bf16 autocast |",
            "|---|---:|---:|",
        ]
        out += [f"| {name} | {v:.0f} | {v / base:.2f}x |" for name, v in ms.items()] + [""]
    text = "\n".join(out)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
