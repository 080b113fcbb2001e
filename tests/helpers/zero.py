"""ZeRO runs on the CPU: the live fp32 master weights at the end of training, and the checks that
the run's sharded checkpoint consolidates to exactly them (tests/test_deepspeed.py, and the ZeRO-3
run of tests/test_knn.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback


class FinalFP32Weights(Callback):
    """Test-only: at the end of training, every rank joins in gathering the fp32 master weights
    (partitioned under ZeRO, possibly offloaded); rank 0 saves them to `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_end(self, trainer, pl_module) -> None:
        from deepspeed.utils import safe_get_full_fp32_param

        sd = {
            name: safe_get_full_fp32_param(p).detach().cpu().clone()
            for name, p in pl_module.model.named_parameters()
        }
        if trainer.is_global_zero:
            torch.save(sd, self.path)


# add to a run's overrides, with `+callbacks.final.path=FILE`
FINAL = ["+callbacks.final._target_=helpers.zero.FinalFP32Weights"]


def check_consolidated(run: Path, final: Path, tmp_path: Path) -> None:
    """The finished run's ZeRO checkpoint consolidates to one fp32 file equal to the live fp32
    master weights (`final`, from `FinalFP32Weights`), which loads where fine-tuning and the
    transformers export read weights."""
    from simmim_swinv2 import convert
    from simmim_swinv2.consolidate import consolidate
    from simmim_swinv2.distributed.strategy import check_zero_resume
    from simmim_swinv2.models import SwinV2Encoder
    from simmim_swinv2.weights import find_resume_checkpoint, load_pretrained_encoder

    ckpt = find_resume_checkpoint(run)
    # sharded: one directory per checkpoint
    assert ckpt == run / "checkpoints" / "last.ckpt" and ckpt.is_dir()
    with open(run / "metrics.csv") as f:
        # DeepSpeed's norm under ZeRO
        assert any(r.get("train/grad_norm") for r in csv.DictReader(f))
    weights = consolidate(run, tmp_path / "encoder.safetensors")
    live = torch.load(final, weights_only=True)
    model = convert.load_model(weights)
    assert isinstance(model, SwinV2Encoder)
    for name, value in model.state_dict().items():
        if f"encoder.{name}" in live:
            torch.testing.assert_close(value, live[f"encoder.{name}"], rtol=0, atol=0, msg=name)
    assert all(
        k.removeprefix("encoder.") in model.state_dict() for k in live if k.startswith("encoder.")
    )

    # where fine-tuning (`finetune pretrained=…`) and the transformers export read weights
    encoder = SwinV2Encoder(model.cfg.replace(use_mask_token=False))
    report = load_pretrained_encoder(encoder, weights)
    assert report == {"missing": [], "unexpected": [], "shape_mismatch": []}
    assert (convert.to_transformers(model, tmp_path / "hf") / "model.safetensors").is_file()
    # the ZeRO dir itself
    load_pretrained_encoder(SwinV2Encoder(model.cfg.replace(use_mask_token=False)), ckpt)

    # another world size: refused before DeepSpeed's own error, naming the fix
    check_zero_resume(ckpt, 2)
    with pytest.raises(
        RuntimeError, match="of 2 processes, this run has 1.*simmim_swinv2.consolidate"
    ):
        check_zero_resume(ckpt, 1)
