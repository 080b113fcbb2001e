"""End to end, as a user compares: `python -m simmim_swinv2.pretrain` against transformers' own
SimMIM example (`examples/pytorch/image-pretraining/run_mim.py`), each run as a whole command on the
same folder of JPEGs, model, batch, steps and loader workers.

The reference is built here the way the example builds it (`reference_main`): a `datasets`
imagefolder with the example's 15% validation hold-out, a torchvision
`RandomResizedCrop(scale 0.67-1, ratio 3/4-4/3)` + flip + ToTensor + Normalize per sample in
`set_transform`, the 32-px block mask generator, `Swinv2ForMaskedImageModeling` from a
`Swinv2Config` (SwinV2-T by default; image size, window and drop path overridden as its
`--config_overrides` does), the example's collator, and transformers' `Trainer` with the
hyper-parameters of the example's README command (AdamW LR 2e-5, weight decay 0.05, seed 1337,
logging every 10 steps, a checkpoint per epoch, the model, metrics and state saved at the end); no
evaluation on either side.

Rows: the reference, in `--precision` (the example's default is fp32); ours with the recipe's own
settings (`model=swinv2_tiny` brings SwinV2-B's published recipe: normalised target, drop path 0.1,
and its mixed precision, `bf16-mixed` on a GPU or a CPU with bf16 instructions, else `32-true`:
`simmim_swinv2/config/machine.py`); where that precision differs from the reference's, the same
recipe in the reference's precision; ours with the reference's settings (`norm_target=false
model.drop_path_rate=0` and its precision). Per command: the precision it ran in (ours: from its
start banner), wall time (start to exit), time to the end of the first optimizer step, and the
loop's img/s (from the first step's end to the last's). The commands take turns round by round; the
table shows medians and the ratio of the reference's wall time to ours (per round: median and
range). The images are made once (photo-like: smooth colour waves, a flat block, mild noise;
`benchmark_data.make_images`); each run gets a fresh run directory and `datasets` cache.

    python scripts/benchmark_e2e.py                          # 480 images, batch 16, 30 steps, CPU
    python scripts/benchmark_e2e.py --rounds 3 --out e2e.md  # the table also in a file
    python scripts/benchmark_e2e.py --device cuda --precision bf16 --batch-size 128 --steps 100 --workers 8 \\
        --images 4000                                        # on a GPU
"""  # noqa: E501 - a command line longer than 100 characters

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
STAMPS = "BENCH_E2E_STAMPS"  # file the child appends one wall-clock time to per optimizer step
PRECISIONS = {"fp32": "32-true", "bf16": "bf16-mixed"}  # --precision -> Lightning's


# ---------------------------------------------------------------------------- the reference (child)
class MaskGenerator:
    """SimMIM's mask as the example makes it: `ceil(ratio x blocks)` of the `input/mask_patch`
    square blocks, chosen uniformly, repeated to the model's patch grid; flattened, 1 = masked."""

    def __init__(self, input_size=192, mask_patch_size=32, model_patch_size=4, mask_ratio=0.6):
        import math

        if input_size % mask_patch_size or mask_patch_size % model_patch_size:
            raise ValueError(
                "input_size, mask_patch_size and model_patch_size must divide each other"
            )
        self.blocks = input_size // mask_patch_size
        self.scale = mask_patch_size // model_patch_size
        self.mask_count = math.ceil(self.blocks**2 * mask_ratio)

    def __call__(self):
        import numpy as np
        import torch

        mask = np.zeros(self.blocks**2, dtype=int)
        mask[np.random.permutation(self.blocks**2)[: self.mask_count]] = 1
        mask = (
            mask.reshape(self.blocks, self.blocks)
            .repeat(self.scale, axis=0)
            .repeat(self.scale, axis=1)
        )
        return torch.tensor(mask.flatten())


def reference_main(args: argparse.Namespace) -> None:
    """transformers' image-pretraining example on a local image folder, as `run_mim.py` runs it."""
    import torch
    from datasets import load_dataset
    from torchvision import transforms as T
    from transformers import (
        Swinv2Config,
        Swinv2ForMaskedImageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        ViTImageProcessor,
        set_seed,
    )

    class Stamps(TrainerCallback):
        def on_step_end(self, *_, **__):
            _stamp()

    training_args = TrainingArguments(
        output_dir=args.run_dir,
        do_train=True,
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=2e-5,
        weight_decay=0.05,
        logging_strategy="steps",
        logging_steps=10,
        save_strategy="epoch",
        save_total_limit=3,
        seed=1337,
        remove_unused_columns=False,
        label_names=["bool_masked_pos"],
        dataloader_num_workers=args.workers,
        use_cpu=args.device == "cpu",
        bf16=args.precision == "bf16",
        report_to="none",
    )
    set_seed(training_args.seed)
    ds = load_dataset("imagefolder", data_dir=args.data)
    if "validation" not in ds:  # the example's --train_val_split 0.15
        split = ds["train"].train_test_split(0.15)
        ds["train"], ds["validation"] = split["train"], split["test"]
    config = Swinv2Config(
        image_size=args.img_size, window_size=args.window, drop_path_rate=args.drop_path
    )
    image_processor = ViTImageProcessor()  # the example's processor for model_type swinv2
    model = Swinv2ForMaskedImageModeling(config)
    transform = T.Compose(
        [
            T.Lambda(lambda img: img.convert("RGB") if img.mode != "RGB" else img),
            T.RandomResizedCrop(args.img_size, scale=(0.67, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean=image_processor.image_mean, std=image_processor.image_std),
        ]
    )
    mask_generator = MaskGenerator(args.img_size, 32, config.patch_size, 0.6)

    def preprocess_images(examples):
        examples["pixel_values"] = [transform(image) for image in examples["image"]]
        examples["mask"] = [mask_generator() for _ in range(len(examples["image"]))]
        return examples

    def collate_fn(examples):
        return {
            "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "bool_masked_pos": torch.stack([e["mask"] for e in examples]),
        }

    ds["train"].set_transform(preprocess_images)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=ds["train"],
        processing_class=image_processor,
        data_collator=collate_fn,
        callbacks=[Stamps()],
    )
    result = trainer.train()
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()


def _stamp() -> None:
    with open(os.environ[STAMPS], "a") as f:
        f.write(f"{time.time()}\n")


def lightning_stamps():
    """A Lightning callback that stamps every optimizer step (ours:
    `+callbacks.stamps._target_=...`)."""
    import lightning as L

    class Stamps(L.Callback):
        def on_train_batch_end(self, *_):
            _stamp()

    return Stamps()


# -------------------------------------------------------------------------------- the runs (parent)
def commands(args: argparse.Namespace, run_dir: Path) -> dict[str, list[str]]:
    common = [
        f"data.root={args.data}",
        f"img_size={args.img_size}",
        f"model.window_size={args.window}",
        f"batch_size={args.batch_size}",
        f"trainer.max_steps={args.steps}",
        f"num_workers={args.workers}",
    ]
    trainer = ["trainer=cpu"] if args.device == "cpu" else ["trainer=gpu", "trainer.devices=1"]
    ours = [
        sys.executable,
        "-m",
        "simmim_swinv2.pretrain",
        "model=swinv2_tiny",
        *trainer,
        "data=folder",
        *common,
        "+callbacks.stamps._target_=benchmark_e2e.lightning_stamps",
        f"hydra.run.dir={run_dir}",
    ]
    reference = [
        sys.executable,
        str(Path(__file__).resolve()),
        "reference",
        f"--data={args.data}",
        f"--run-dir={run_dir}",
        f"--img-size={args.img_size}",
        f"--window={args.window}",
        f"--batch-size={args.batch_size}",
        f"--steps={args.steps}",
        f"--workers={args.workers}",
        f"--drop-path={args.drop_path}",
        f"--device={args.device}",
        f"--precision={args.precision}",
    ]
    from simmim_swinv2.config.machine import mixed_precision

    same = PRECISIONS[args.precision]  # the reference's
    rows = {
        "transformers run_mim.py (reference)": reference,
        "ours, recipe (normalised target, drop path 0.1, its mixed precision)": ours,
    }
    if mixed_precision("cpu" if args.device == "cpu" else "gpu") != same:
        rows["ours, recipe in the reference's precision"] = ours + [f"trainer.precision={same}"]
    rows[f"ours, equal settings (norm_target=false, drop path {args.drop_path:g})"] = ours + [
        "norm_target=false",
        f"model.drop_path_rate={args.drop_path}",
        f"trainer.precision={same}",
    ]
    return rows


def run(name: str, cmd: list[str], run_dir: Path, args: argparse.Namespace) -> dict:
    """One whole command; its wall time, time to the first step's end, and the loop's img/s."""
    run_dir.mkdir(parents=True)
    stamps = run_dir / "stamps.txt"
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(SCRIPTS), os.environ.get("PYTHONPATH", "")]),
        HF_DATASETS_CACHE=str(run_dir / "hf_cache"),
        HF_DATASETS_OFFLINE="1",
        HF_HUB_OFFLINE="1",
    )
    env[STAMPS] = str(stamps)
    with open(run_dir / "log.txt", "w") as log:
        t0 = time.time()
        code = subprocess.call(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        wall = time.time() - t0
    times = [float(x) for x in stamps.read_text().split()] if stamps.exists() else []
    if code != 0 or len(times) != args.steps:
        tail = (run_dir / "log.txt").read_text()[-2000:]
        return dict(
            error=(
                f"exit {code}, {len(times)} of {args.steps} steps; log {run_dir / 'log.txt'}:\n"
                f"{tail}"
            )
        )
    loop = (
        (len(times) - 1) * args.batch_size / (times[-1] - times[0])
        if len(times) > 1
        else float("nan")
    )
    text = (run_dir / "log.txt").read_text()
    ran = re.search(r"precision (\S+), strategy", text)  # ours' start banner (training/base.py)
    precision = ran.group(1) if ran else PRECISIONS[args.precision]  # the reference: --precision
    return dict(wall=wall, first=times[0] - t0, ips=loop, precision=precision)


def table(args: argparse.Namespace, cmds: dict, results: dict[str, list[dict]]) -> str:
    names = list(cmds)
    ref = names[0]
    ok = {n: [r for r in results.get(n, []) if "error" not in r] for n in names}
    lines = [
        (
            f"End to end: SwinV2-T, {args.img_size} px, window {args.window}, batch "
            f"{args.batch_size}, {args.steps} steps, {args.workers} loader workers, {args.images} "
            f"JPEGs {args.size}, {args.device} {args.precision} "
            f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs); median of "
            f"{args.rounds} round(s), commands in turn; reference drop path {args.drop_path}"
        ),
        "",
        (
            "| command | precision | wall s | first step s | loop img/s | reference wall / this: "
            "median (per round range) | loop img/s vs reference |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        rs = ok[name]
        if not rs:
            errors = [r["error"].splitlines()[0] for r in results.get(name, [])]
            lines.append(f"| {name} | failed: {errors[-1] if errors else 'not run'} | | | | | |")
            continue
        med = {k: statistics.median(r[k] for r in rs) for k in ("wall", "first", "ips")}
        both = [
            (a, b)
            for a, b in zip(results[ref], results[name])
            if "error" not in a and "error" not in b
        ]
        pairs = [a["wall"] / b["wall"] for a, b in both]
        loops = [b["ips"] / a["ips"] for a, b in both]
        ratio = (
            f"**{statistics.median(pairs):.2f}x** ({min(pairs):.2f}-{max(pairs):.2f})"
            if pairs
            else "-"
        )
        loop = f"{statistics.median(loops):.2f}x" if loops else "-"
        precision = "/".join(sorted({r["precision"] for r in rs}))
        lines.append(
            f"| {name} | {precision} | {med['wall']:.1f} | {med['first']:.1f} | {med['ips']:.2f} | "
            f"{ratio} | {loop} |"
        )
    lines += [
        "",
        (
            "Goals: ours with the recipe's settings >= 1.3x the reference's wall time, with equal "
            "settings >= 1.4x."
        ),
        "",
        "Commands (their paths are a temp dir, removed at exit, unless --work-dir):",
    ]
    lines += [f"    {' '.join(cmd)}" for cmd in cmds.values()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("role", nargs="?", default="compare", choices=("compare", "reference"))
    parser.add_argument("--images", type=int, default=480)
    parser.add_argument("--size", default="500x375", help="WxH of the generated JPEGs")
    parser.add_argument("--img-size", type=int, default=192)
    parser.add_argument("--window", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--drop-path", type=float, default=0.0, help="the reference's (and the equal row's)"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--precision",
        choices=tuple(PRECISIONS),
        default="fp32",
        help="the reference's (the example's default: fp32) and ours' equal-settings rows'",
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--data", help="an existing image folder (default: generate --images into a temp dir)"
    )
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help="also write the table here (rewritten after every run)")
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="keep the runs (checkpoints, logs: GBs) here (default: a temp dir, removed at exit)",
    )
    args = parser.parse_args(argv)
    if args.role == "reference":
        return reference_main(args)
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        return benchmark(args, args.work_dir)
    with tempfile.TemporaryDirectory(prefix="bench_e2e_") as work:
        return benchmark(args, Path(work))


def benchmark(args: argparse.Namespace, work: Path) -> None:
    """Every command, ``args.rounds`` times interleaved, in run directories under ``work``."""
    if args.data is None:
        sys.path.insert(0, str(SCRIPTS))
        from benchmark_data import make_images

        args.data = str(work / "images")
        w, h = (int(v) for v in args.size.split("x"))
        make_images(Path(args.data), args.images, (w, h))
    cmds = commands(args, work / "<run>")
    results: dict[str, list[dict]] = {}
    for r in range(args.rounds):
        for i, name in enumerate(cmds):
            run_dir = work / f"r{r}_{i}"
            res = run(name, commands(args, run_dir)[name], run_dir, args)
            results.setdefault(name, []).append(res)
            if "error" in res:
                print(f"round {r + 1}/{args.rounds} {name}: FAILED {res['error']}", flush=True)
            else:
                print(
                    f"round {r + 1}/{args.rounds} {name}: wall {res['wall']:.1f} s, first step "
                    f"{res['first']:.1f} s, loop {res['ips']:.2f} img/s",
                    flush=True,
                )
            if args.out:
                Path(args.out).write_text(table(args, cmds, results) + "\n")
    print("\n" + table(args, cmds, results))


if __name__ == "__main__":
    main()
