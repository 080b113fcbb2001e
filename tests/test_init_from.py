"""Continued pretraining: a SimMIM model started from our run, its transformers export or an
official SimMIM checkpoint starts at the trained model's loss, clearly below a fresh model's; and
the rule between `pretrained=` and `resume`."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers.pretrained import simmim_hf, simmim_run  # noqa: F401 - fixtures
from torch.utils.data import DataLoader

from simmim_swinv2 import convert
from simmim_swinv2.config import ConfigError
from simmim_swinv2.data import MaskGenerator, SimMIMTransform, build_digits
from simmim_swinv2.models import SimMIM, swinv2_config
from simmim_swinv2.training.init_from import load_pretrained_simmim, pretrained_start
from simmim_swinv2.weights import load_model

CFG = swinv2_config("debug", img_size=64, window_size=4)  # what debug=fast pretrains


@pytest.fixture(scope="module")
def batch():
    """32 validation digits with SimMIM masks (the quickstart's 16-px blocks), drawn from a fixed
    seed."""
    torch.manual_seed(0)
    data = build_digits(
        "val", transform=SimMIMTransform(64, MaskGenerator(64, 16, 4, 0.6)), image_size=64
    )
    images, masks, _ = next(iter(DataLoader(data, batch_size=32)))
    return images, masks


@torch.no_grad()
def loss(model: SimMIM, batch) -> float:
    return float(model(*batch).loss)


@pytest.mark.parametrize("kind", ["run", "transformers", "official"])
def test_continued_pretraining_starts_where_the_source_left_off(
    kind,
    simmim_run,  # noqa: F811
    simmim_hf,  # noqa: F811
    batch,
    tmp_path,
):
    from helpers.reference import as_official

    trained = load_model(simmim_run)
    source = {"run": simmim_run, "transformers": simmim_hf, "official": tmp_path / "simmim.pth"}[
        kind
    ]
    if kind == "official":
        torch.save(as_official(trained), source)
    torch.manual_seed(1)
    fresh = SimMIM.from_config(CFG)
    model = SimMIM.from_config(CFG)
    report = load_pretrained_simmim(model, source)
    assert report == {"missing": [], "unexpected": [], "shape_mismatch": [], "decoder": "loaded"}
    assert loss(model, batch) == pytest.approx(loss(trained, batch), abs=1e-6)
    assert loss(model, batch) < loss(fresh, batch) - 0.1, (loss(model, batch), loss(fresh, batch))


def test_an_encoder_only_source_leaves_the_decoder_and_mask_token_fresh(
    simmim_run,  # noqa: F811
    tmp_path,
    capsys,
):
    convert.main(["to-transformers", str(simmim_run), str(tmp_path / "hf"), "--encoder-only"])
    trained = load_model(simmim_run)
    torch.manual_seed(2)
    model = SimMIM.from_config(CFG)
    decoder = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    report = load_pretrained_simmim(model, tmp_path / "hf")
    assert (
        report["decoder"] == "fresh"
        and report["missing"] == ["mask_token"]
        and not report["shape_mismatch"]
    )
    assert "has no SimMIM decoder" in capsys.readouterr().out
    assert all(torch.equal(v, decoder[k]) for k, v in model.decoder.state_dict().items())
    assert torch.equal(
        model.encoder.layers[2].blocks[0].attn.qkv.weight,
        trained.encoder.layers[2].blocks[0].attn.qkv.weight,
    )


def test_a_new_window_goes_through_pretrained_window_sizes(simmim_run, batch):  # noqa: F811
    """From window 4 to window 2: the position-bias MLP is loaded, its coordinate tables are this
    model's (normalised by the pretrained windows, 4, 4, 4, 2), not the source's."""
    target = swinv2_config(
        "debug", img_size=64, window_size=2, pretrained_window_sizes=(4, 4, 4, 2)
    )
    model = SimMIM.from_config(target)
    report = load_pretrained_simmim(model, simmim_run)
    assert not report["missing"] and not report["shape_mismatch"] and report["decoder"] == "loaded"
    trained, rebuilt = load_model(simmim_run), SimMIM.from_config(target)
    attn, src = model.encoder.layers[0].blocks[0].attn, trained.encoder.layers[0].blocks[0].attn
    assert torch.equal(attn.cpb_mlp[0].weight, src.cpb_mlp[0].weight)
    assert torch.equal(
        attn.relative_coords_table, rebuilt.encoder.layers[0].blocks[0].attn.relative_coords_table
    )
    # (1, 3, 3, 2) against (1, 7, 7, 2)
    assert attn.relative_coords_table.shape != src.relative_coords_table.shape
    assert torch.isfinite(torch.tensor(loss(model, batch)))


def test_pretrained_and_resume_rule(simmim_run, tmp_path):  # noqa: F811
    other = str(tmp_path / "released")
    assert pretrained_start(None, "auto", simmim_run) is False  # no pretrained=: resume as ever
    assert pretrained_start(other, "auto", tmp_path / "empty") is True  # nothing to resume
    # the user said: start afresh from the weights
    assert pretrained_start(other, "never", simmim_run) is True
    with pytest.raises(
        ConfigError,
        match=r"resumable checkpoint \(last.ckpt\).*`resume=never pretrained=.*drop "
        r"`pretrained=` to resume",
    ):
        pretrained_start(other, "auto", simmim_run)
    with pytest.raises(ConfigError, match="both name the weights"):
        pretrained_start(other, str(simmim_run / "checkpoints" / "last.ckpt"), tmp_path)
    # a run started from `other` and requeued (the same command again) resumes its own checkpoint
    run = tmp_path / "continued"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(simmim_run / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")
    (run / "config.yaml").write_text(f"pretrained: {other}\nresume: auto\n")
    assert pretrained_start(other, "auto", run) is False
    with pytest.raises(ConfigError, match="resumable checkpoint"):
        pretrained_start(str(tmp_path / "another"), "auto", run)


def _first_loss(run) -> float:
    import csv

    with open(run / "metrics.csv") as f:
        return next(
            float(r["train/loss_step"]) for r in csv.DictReader(f) if r.get("train/loss_step")
        )


@pytest.mark.parametrize("kind", ["run", "transformers"])
def test_the_pretrain_command_continues_from_pretrained(
    kind,
    simmim_run,  # noqa: F811
    simmim_hf,  # noqa: F811
    tmp_path,
    capsys,
):
    """`python -m simmim_swinv2.pretrain pretrained=PATH` as composed: its first step's loss is the
    trained model's, clearly below a fresh run's on the same batches; run again (a requeue), it
    resumes its own checkpoint."""
    from helpers.config import FAST, compose_config

    from simmim_swinv2.pretrain import pretrain

    source = {"run": simmim_run, "transformers": simmim_hf}[kind]
    same = [
        *FAST,
        "callbacks.reconstructions.every_n_steps=0",
        "trainer.max_epochs=1",
        "callbacks.knn=null",
    ]
    pretrain(compose_config("pretrain", tmp_path / "fresh", same))
    pretrain(compose_config("pretrain", tmp_path / "continued", [*same, f"pretrained={source}"]))
    fresh, continued = _first_loss(tmp_path / "fresh"), _first_loss(tmp_path / "continued")
    assert continued < fresh - 0.1, (continued, fresh)
    assert "the decoder starts from its initialisation" not in capsys.readouterr().out
    # the same command again (a requeued job): the run's own checkpoint wins over the weights, with
    # no error
    pretrain(
        compose_config(
            "pretrain",
            tmp_path / "continued",
            [*same, f"pretrained={source}", "trainer.max_epochs=2"],
        )
    )
