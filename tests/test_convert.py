"""Weights in and out: transformers directories both ways, official SimMIM/SwinV2 checkpoints, timm
models."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from helpers.numerics import assert_norm_close, norm_rel
from helpers.reference import (
    as_official,
    bound,
    hf_config,
    input_size,
    random_mask,
    randomize_,
    transformers,
)

from simmim_swinv2 import convert
from simmim_swinv2.models import SimMIM, SwinV2Classifier, SwinV2Encoder, swinv2_config


def _loaded(cls, path):
    model, info = cls.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info.get("mismatched_keys"), info
    return model.eval()


@pytest.mark.parametrize(
    "case", ["clamped_window", "nonsquare_input_pretrained_window", "three_stages"]
)
def test_export_classifier_loads_in_transformers_with_identical_outputs(case, tmp_path):
    cfg = convert.config_from_transformers(hf_config(case).to_dict())
    ours = randomize_(
        SwinV2Classifier.from_config(cfg, 4, id2label={0: "cat", 1: "dog", 2: "owl", 3: "yak"})
    )
    convert.to_transformers(ours, tmp_path)
    theirs = _loaded(transformers.Swinv2ForImageClassification, tmp_path)
    assert theirs.config.id2label == {0: "cat", 1: "dog", 2: "owl", 3: "yak"}
    assert theirs.config.label2id["owl"] == 2
    x = torch.randn(2, cfg.in_chans, *input_size(case))
    with torch.no_grad():
        assert_norm_close(theirs(x).logits, ours(x).logits, bound(case), "logits")


def test_export_simmim_and_encoder_load_in_transformers(tmp_path):
    cfg = convert.config_from_transformers(hf_config("clamped_window").to_dict())
    ours = randomize_(SimMIM.from_config(cfg))
    convert.to_transformers(ours, tmp_path / "mim")
    convert.to_transformers(ours.encoder, tmp_path / "enc")
    mim = _loaded(transformers.Swinv2ForMaskedImageModeling, tmp_path / "mim")
    enc = _loaded(transformers.Swinv2Model, tmp_path / "enc")
    assert json.loads((tmp_path / "enc" / "config.json").read_text())["architectures"] == [
        "Swinv2Model"
    ]
    x, mask = torch.randn(2, 3, 64, 64), random_mask(2, 16, 16)
    with torch.no_grad():
        got, expected = ours(x, mask), mim(x, bool_masked_pos=mask.flatten(1).bool())
        tol = bound(cfg)
        assert_norm_close(expected.reconstruction, got.reconstruction, tol, "reconstruction")
        # a loss: away from zero
        torch.testing.assert_close(expected.loss, got.loss, rtol=tol, atol=0)
        assert_norm_close(enc(x).pooler_output, ours.encoder(x).pooler_output, tol, "pooler")


def test_transformers_round_trip_is_exact(tmp_path):
    ref = randomize_(
        transformers.Swinv2ForImageClassification(hf_config("odd_options", num_labels=3))
    )
    ref.save_pretrained(tmp_path / "a")
    ours = convert.from_transformers(tmp_path / "a")
    convert.to_transformers(ours, tmp_path / "b")
    again = _loaded(transformers.Swinv2ForImageClassification, tmp_path / "b")
    for (name, p), (name2, q) in zip(ref.state_dict().items(), again.state_dict().items()):
        assert name == name2
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_export_refuses_what_transformers_cannot_express(tmp_path):
    with pytest.raises(ValueError, match="extra norms"):
        convert.to_transformers(
            SwinV2Encoder(swinv2_config("debug", extra_norm_every=1, img_size=64, window_size=4)),
            tmp_path,
        )
    with pytest.raises(ValueError, match="single window_size"):
        convert.to_transformers(
            SwinV2Encoder(swinv2_config("debug", img_size=128, window_size=(8, 4, 8, 4))), tmp_path
        )
    with pytest.raises(ValueError, match="square"):
        convert.to_transformers(
            SimMIM.from_config(swinv2_config("debug", img_size=(64, 96), window_size=4)), tmp_path
        )
    with pytest.raises(FileNotFoundError, match="config.json"):
        convert.from_transformers(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="use_absolute_embeddings"):
        convert.config_from_transformers({"use_absolute_embeddings": True})


def test_official_simmim_checkpoint_imports(tmp_path):
    ours = randomize_(SimMIM.from_config(swinv2_config("debug", img_size=64, window_size=4)))
    path = tmp_path / "simmim_official.pth"
    torch.save(as_official(ours), path)
    assert any("rpe_mlp" in k for k in torch.load(path, weights_only=True)["model"])
    # window read from the position buffers
    loaded = convert.from_official(path, img_size=64).eval()
    # the window comes from the position buffers: 4, clamped to 2 on the 2x2 last stage
    assert isinstance(loaded, SimMIM) and loaded.encoder.cfg.window_size == (4, 4, 4, 2)
    x, mask = torch.randn(2, 3, 64, 64), random_mask(2, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x, mask).reconstruction, ours(x, mask).reconstruction)


def test_official_checkpoint_without_buffers_needs_a_window(tmp_path):
    ours = randomize_(SimMIM.from_config(swinv2_config("debug", img_size=64, window_size=4)))
    sd = {k: v for k, v in as_official(ours)["model"].items() if "relative_position_index" not in k}
    with pytest.raises(ValueError, match="window_size"):
        convert.from_official(sd)
    assert convert.from_official(sd, window_size=4, img_size=64).encoder.cfg.window_size == (
        4,
        4,
        4,
        4,
    )


def test_timm_model_imports_with_identical_logits():
    timm = pytest.importorskip("timm")
    ref = timm.models.swin_transformer_v2.SwinTransformerV2(
        img_size=64,
        embed_dim=16,
        depths=(2, 2, 2, 2),
        num_heads=(2, 2, 4, 4),
        window_size=4,
        num_classes=7,
        drop_path_rate=0.0,
    )
    randomize_(ref, max_logit_scale=4.5)
    # timm saves no window
    ours = convert.from_timm(ref.state_dict(), img_size=64, window_size=4).eval()
    assert isinstance(ours, SwinV2Classifier) and ours.num_classes == 7
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_norm_close(ours(x).logits, ref(x), bound(ours.encoder.cfg), "logits")


def test_our_safetensors_round_trip(tmp_path):
    model = randomize_(
        SwinV2Classifier.from_config(
            swinv2_config("debug", img_size=64, window_size=4), 3, id2label={0: "a", 1: "b", 2: "c"}
        )
    )
    convert.save_model(model, tmp_path / "clf.safetensors")
    loaded = convert.load_model(tmp_path / "clf.safetensors").eval()
    assert loaded.id2label == model.id2label
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


def test_cli_converts_an_official_checkpoint(tmp_path, capsys):
    ours = randomize_(SimMIM.from_config(swinv2_config("debug", img_size=64, window_size=4)))
    torch.save(as_official(ours), tmp_path / "ckpt.pth")
    convert.main(
        ["to-transformers", str(tmp_path / "ckpt.pth"), str(tmp_path / "hf"), "--img-size", "64"]
    )
    assert "SimMIM from official weights" in capsys.readouterr().out
    mim = _loaded(transformers.Swinv2ForMaskedImageModeling, tmp_path / "hf")
    x, mask = torch.randn(1, 3, 64, 64), random_mask(1, 16, 16)
    with torch.no_grad():
        assert_norm_close(
            mim(x, bool_masked_pos=mask.flatten(1).bool()).reconstruction,
            ours(x, mask).reconstruction,
            bound(ours.encoder.cfg),
            "reconstruction",
        )
    convert.main(["from-transformers", str(tmp_path / "hf"), str(tmp_path / "ours.safetensors")])
    assert isinstance(convert.load_model(tmp_path / "ours.safetensors"), SimMIM)


# ---------------------------------------------- official checkpoints fine-tuned from another window
# (img_size, window, pretrained_window_sizes) of official-layout checkpoints; patch 4, so stages are
# img/4 … img/32.
OFFICIAL_CASES = {
    # as window12to16_192to256: windows 16, 16, 8, 4 (two clamp)
    "16_from_12": (128, 16, (12, 12, 12, 6)),
    "24_from_12": (192, 24, (12, 12, 12, 6)),  # as window12to24_192to384: windows 24, 24, 12, 6
    # windows 12, 12, 6, 3: each normalised by its own clamped window
    "12_from_0": (96, 12, (0, 0, 0, 0)),
    "8_from_0": (64, 8, (0, 0, 0, 0)),
    # the last two clamp to their pretrained window: as 0 there
    "12_from_6_clamped": (96, 12, (6, 6, 6, 3)),
}


def _official_table(window: tuple[int, int], pretrained: int) -> torch.Tensor:
    """`relative_coords_table` as microsoft/Swin-Transformer models/swin_transformer_v2.py
    (`WindowAttention`) builds it, written out here, apart from convert.keys: offsets over
    (pretrained - 1), or (window - 1) when pretrained is 0, times 8, then sign * log2(|x| + 1) /
    log2(8)."""
    h = torch.arange(-(window[0] - 1), window[0], dtype=torch.float32)
    w = torch.arange(-(window[1] - 1), window[1], dtype=torch.float32)
    table = (
        torch.stack(torch.meshgrid([h, w], indexing="ij"))
        .permute(1, 2, 0)
        .contiguous()
        .unsqueeze(0)
    )
    table[..., 0] /= (pretrained if pretrained > 0 else window[0]) - 1
    table[..., 1] /= (pretrained if pretrained > 0 else window[1]) - 1
    table *= 8
    return torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)


def _official_reference(case: str):
    """timm's SwinTransformerV2 (its module names are the official code's) with random weights, and
    its state dict as the official code saves it: `{'model': …}`, patch merging at the end of a
    stage, `head.`, and the buffers the official model registers — `relative_coords_table` (built
    the official way; the reference runs on the very same tables), `relative_position_index`,
    `attn_mask`."""
    timm = pytest.importorskip("timm")
    from timm.models.swin_transformer_v2 import WindowAttention

    img, window, pretrained = OFFICIAL_CASES[case]
    ref = timm.models.swin_transformer_v2.SwinTransformerV2(
        img_size=img,
        embed_dim=16,
        depths=(2, 2, 2, 2),
        num_heads=(2, 2, 4, 4),
        window_size=window,
        pretrained_window_sizes=pretrained,
        num_classes=5,
        drop_path_rate=0.0,
    )
    randomize_(ref, max_logit_scale=4.5)
    sd = {}
    for key, value in ref.state_dict().items():
        if m := re.match(r"^layers\.(\d+)\.downsample\.(.+)$", key):
            key = f"layers.{int(m[1]) - 1}.downsample.{m[2]}"
        sd[key.replace("head.fc.", "head.")] = value
    for name, module in ref.named_modules():
        if isinstance(module, WindowAttention):
            table = _official_table(module.window_size, module.pretrained_window_size[0])
            # the same log-spaced formula, values in [-8, 8] from a few fp32 operations: a few eps
            # of 8
            torch.testing.assert_close(module.relative_coords_table, table, rtol=0, atol=1e-6)
            sd[f"{name}.relative_coords_table"] = table
            sd[f"{name}.relative_position_index"] = module.relative_position_index
        elif getattr(module, "attn_mask", None) is not None:
            sd[f"{name}.attn_mask"] = module.attn_mask
    return ref, {"model": sd}


@pytest.mark.parametrize("case", OFFICIAL_CASES)
def test_official_checkpoint_from_another_window_exports_with_its_pretrained_windows(
    case, tmp_path
):
    ref, ckpt = _official_reference(case)
    img, window, pretrained = OFFICIAL_CASES[case]
    torch.save(ckpt, tmp_path / "official.pth")
    convert.main(["to-transformers", str(tmp_path / "official.pth"), str(tmp_path / "hf")])
    theirs = _loaded(transformers.Swinv2ForImageClassification, tmp_path / "hf")
    assert theirs.config.image_size == img  # read from the shift masks' shapes
    windows = [min(img // 4 // 2**s, window) for s in range(4)]
    normalised = [p or w for p, w in zip(theirs.config.pretrained_window_sizes, windows)]
    assert normalised == [p or w for p, w in zip(pretrained, windows)], (
        theirs.config.pretrained_window_sizes
    )
    x = torch.randn(2, 3, img, img)
    with torch.no_grad():
        expected = ref.eval()(x)
        assert_norm_close(theirs(x).logits, expected, bound(theirs.config), "logits")
        # the tables matter here: without them the same weights answer otherwise
        if normalised != windows:
            sd = {k: v for k, v in ckpt["model"].items() if not k.endswith("relative_coords_table")}
            blind = convert.from_official(sd, img_size=img).eval()
            # far beyond rounding
            assert norm_rel(blind(x).logits, expected) > 10 * bound(theirs.config)


def test_a_pretrained_window_override_that_disagrees_with_the_tables_is_refused():
    _, ckpt = _official_reference("16_from_12")
    assert convert.from_official(ckpt, img_size=128).encoder.cfg.pretrained_window_sizes == (
        12,
        12,
        12,
        6,
    )
    # agrees: fine
    assert convert.from_official(ckpt, img_size=128, pretrained_window_sizes=(12, 12, 12, 6))
    with pytest.raises(
        ValueError,
        match=r"pretrained_window_sizes=\[0, 0, 0, 0\] disagrees with the checkpoint: "
        r"its relative_coords_table buffers record \[12, 12, 12, 6\] at windows "
        r"\[16, 16, 8, 4\].*Leave pretrained_window_sizes out",
    ):
        convert.from_official(ckpt, img_size=128, pretrained_window_sizes=0)
    # 6 at a clamped 6 is 0: either spelling is accepted
    _, ckpt = _official_reference("12_from_6_clamped")
    assert convert.from_official(ckpt, img_size=96).encoder.cfg.pretrained_window_sizes == (
        6,
        6,
        0,
        0,
    )
    assert convert.from_official(ckpt, img_size=96, pretrained_window_sizes=(6, 6, 6, 3))
    broken = {
        k: v * 1.1 if k.endswith("layers.1.blocks.1.attn.relative_coords_table") else v
        for k, v in ckpt["model"].items()
    }
    with pytest.raises(
        ValueError, match="layers.1.blocks.1.attn.relative_coords_table .* not the table of a 12x12"
    ):
        convert.from_official(broken, img_size=96)


def test_finetuning_from_an_official_checkpoint_notes_other_pretrained_windows(tmp_path, capsys):
    """`finetune pretrained=official.pth`: the fine-tune config's pretrained_window_sizes decides
    (the new windows are set on purpose); the summary says when the checkpoint's tables were
    normalised for other windows."""
    from simmim_swinv2.weights import load_pretrained_encoder

    _, ckpt = _official_reference("8_from_0")  # 64 px, windows 8, 8, 4, 2, each its own normaliser
    torch.save(ckpt, tmp_path / "official.pth")
    cfg = swinv2_config(
        "debug",
        embed_dim=16,
        depths=(2, 2, 2, 2),
        num_heads=(2, 2, 4, 4),
        img_size=128,
        window_size=16,
    )  # windows 16, 16, 8, 4
    load_pretrained_encoder(
        SwinV2Encoder(cfg.replace(pretrained_window_sizes=(8, 8, 4, 2))), tmp_path / "official.pth"
    )
    assert "note:" not in capsys.readouterr().out
    report = load_pretrained_encoder(SwinV2Encoder(cfg), tmp_path / "official.pth")
    out = capsys.readouterr().out
    assert report == {"missing": [], "unexpected": [], "shape_mismatch": []}
    assert (
        "note: the source's position tables normalise offsets by windows [8, 8, 4, 2], this model "
        "by [16, 16, 8, 4] (pretrained_window_sizes=[0, 0, 0, 0]); to keep the source's position "
        "bias set model.pretrained_window_sizes=[8, 8, 4, 2]"
    ) in out
