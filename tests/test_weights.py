"""One model description (`ModelMeta`) for every writer and reader, the forms written before it
still load, and one place (`identify`) that tells weight formats apart."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from helpers.reference import as_official, random_mask, randomize_
from safetensors.torch import save_file

from simmim_swinv2 import convert
from simmim_swinv2.models import SimMIM, SwinV2Classifier, SwinV2Encoder, encoder_of, swinv2_config
from simmim_swinv2.weights import CHECKPOINT_KEY, ModelMeta, identify, load_model, save_model

CFG = swinv2_config("debug", img_size=64, window_size=4)
LABELS = {0: "cat", 1: "dog", 2: "owl"}


def _model(name: str) -> torch.nn.Module:
    return randomize_(
        {
            "encoder": lambda: SwinV2Encoder(CFG),
            "simmim": lambda: SimMIM.from_config(CFG, norm_target=True, norm_target_window=7),
            "classifier": lambda: SwinV2Classifier.from_config(CFG, 3, id2label=LABELS),
        }[name]()
    )


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> None:
    assert type(a) is type(b)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        if isinstance(a, SimMIM):
            mask = random_mask(2, 16, 16)
            out_a, out_b = a.eval()(x, mask), b.eval()(x, mask)
            assert torch.equal(out_a.loss, out_b.loss)  # the loss: norm_target came back too
            assert torch.equal(out_a.reconstruction, out_b.reconstruction)
        elif isinstance(a, SwinV2Classifier):
            assert torch.equal(a.eval()(x).logits, b.eval()(x).logits)
        else:
            assert torch.equal(a.eval()(x).pooler_output, b.eval()(x).pooler_output)


@pytest.mark.parametrize("name", ["encoder", "simmim", "classifier"])
def test_model_meta_round_trips_through_checkpoints_json_and_our_safetensors(name, tmp_path):
    model = _model(name)
    meta = ModelMeta.of(model)
    assert meta.kind == type(model).__name__ and meta.config == encoder_of(model).cfg
    d = meta.to_dict()
    # as in our checkpoints: plain types, weights_only
    torch.save({CHECKPOINT_KEY: d}, tmp_path / "meta.pt")
    assert (
        ModelMeta.from_dict(torch.load(tmp_path / "meta.pt", weights_only=True)[CHECKPOINT_KEY])
        == meta
    )
    # lists, string label keys
    assert ModelMeta.from_dict(json.loads(json.dumps(d, default=list))) == meta
    _same_outputs(meta.load(model.state_dict(), "test"), model)
    save_model(model, tmp_path / "m.safetensors")
    _same_outputs(load_model(tmp_path / "m.safetensors"), model)
    if name == "simmim":
        assert (d["norm_target"], d["norm_target_window"]) == (True, 7)
    if name == "classifier":
        assert load_model(tmp_path / "m.safetensors").id2label == LABELS


def _old_config(cfg=CFG) -> dict:
    """A config as the first checkpoints wrote it: before `attn_backend` existed."""
    old = asdict(cfg)
    del old["attn_backend"]
    return old


def test_descriptions_written_before_still_load(tmp_path):
    """The forms earlier versions wrote: `{kind, config, id2label}` in Lightning checkpoints
    (tuples, int label keys), the same as JSON beside our safetensors (lists, string label keys),
    SimMIM without `norm_target*`."""
    # norm_target off, as old ones load
    clf, mim = _model("classifier"), randomize_(SimMIM.from_config(CFG))
    ckpt = {
        "state_dict": {f"model.{k}": v for k, v in clf.state_dict().items()},
        "epoch": 3,
        CHECKPOINT_KEY: {
            "kind": "SwinV2Classifier",
            "config": _old_config(),
            "id2label": dict(LABELS),
        },
    }
    torch.save(ckpt, tmp_path / "old.ckpt")
    loaded = load_model(tmp_path / "old.ckpt")
    _same_outputs(loaded, clf)
    assert loaded.id2label == LABELS and loaded.encoder.cfg.attn_backend == "sdpa"

    save_file(
        {k: v.contiguous() for k, v in mim.state_dict().items()}, str(tmp_path / "old.safetensors")
    )
    (tmp_path / "old.json").write_text(
        json.dumps({"kind": "SimMIM", "config": _old_config(mim.encoder.cfg)}, default=list)
    )
    loaded = load_model(tmp_path / "old.safetensors")
    assert loaded.norm_target is False
    _same_outputs(loaded, mim)

    (tmp_path / "old.json").write_text(
        json.dumps(
            {
                "kind": "SwinV2Classifier",
                "config": _old_config(),
                "id2label": {str(k): v for k, v in LABELS.items()},
            },
            default=list,
        )
    )
    save_file(
        {k: v.contiguous() for k, v in clf.state_dict().items()}, str(tmp_path / "old.safetensors")
    )
    assert load_model(tmp_path / "old.safetensors").id2label == LABELS


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ([1, 2], "not a model description of ours.*list"),
        ({"kind": "SimMIM"}, r"with keys \['kind'\]"),
        ({"kind": "ResNet", "config": asdict(CFG)}, "kind 'ResNet' is not one of"),
        (
            {"kind": "SimMIM", "config": asdict(CFG), "norm": 1},
            r"unknown model description keys \['norm'\]",
        ),
        (
            {"kind": "SwinV2Classifier", "config": asdict(CFG)},
            "SwinV2Classifier's description without id2label",
        ),
        (
            {"kind": "SwinV2Encoder", "config": {**asdict(CFG), "depth": 3}},
            r"unknown SwinV2Config fields \['depth'\]",
        ),
    ],
)
def test_bad_descriptions_fail_naming_the_source(bad, match):
    with pytest.raises(ValueError, match=f"^run/x.ckpt: .*{match}"):
        ModelMeta.from_dict(bad, "run/x.ckpt")


def test_our_checkpoints_without_or_against_their_description_fail_clearly(tmp_path):
    clf = _model("classifier")
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in clf.state_dict().items()}},
        tmp_path / "plain.ckpt",
    )
    with pytest.raises(ValueError, match="plain.ckpt carries no model description"):
        load_model(tmp_path / "plain.ckpt")
    for kind, match in [
        (
            "SwinV2Encoder",
            r"the weights do not match the model \(SwinV2Encoder\): .*unexpected keys "
            r"\['encoder\.",
        ),
        (
            "SimMIM",
            "cannot build the SimMIM it describes: SimMIM needs an encoder with a mask token",
        ),
    ]:
        # a classifier's weights, another description
        wrong = {**ModelMeta.of(clf).to_dict(), "kind": kind}
        del wrong["id2label"]
        torch.save({"state_dict": clf.state_dict(), CHECKPOINT_KEY: wrong}, tmp_path / "wrong.ckpt")
        with pytest.raises(ValueError, match=rf"wrong.ckpt \(Lightning checkpoint\): {match}"):
            load_model(tmp_path / "wrong.ckpt")


def test_identify_tells_every_format_apart(tmp_path):
    """One dispatcher: (format, reader) of each thing `load_model` reads (ZeRO directories:
    tests/test_export.py's slow test, written by DeepSpeed)."""
    mim = _model("simmim")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in mim.state_dict().items()},
            CHECKPOINT_KEY: ModelMeta.of(mim).to_dict(),
        },
        run / "checkpoints" / "last.ckpt",
    )
    save_model(mim, tmp_path / "ours.safetensors")
    save_file(
        {k: v.contiguous() for k, v in mim.encoder.state_dict().items() if k != "mask_token"},
        str(tmp_path / "timm.safetensors"),
    )  # no .json beside it: not ours
    torch.save(as_official(mim), tmp_path / "official.pth")
    convert.to_transformers(mim, tmp_path / "hf")
    found = {
        name: (s.format, s.reader, s.path.name)
        for name, s in [
            ("run", identify(run)),
            ("ckpt", identify(run / "checkpoints" / "last.ckpt")),
            ("ours", identify(tmp_path / "ours.safetensors")),
            ("timm", identify(tmp_path / "timm.safetensors")),
            ("official", identify(tmp_path / "official.pth")),
            ("hf", identify(tmp_path / "hf")),
        ]
    }
    assert found == {
        "run": ("ours", "lightning", "last.ckpt"),
        "ckpt": ("ours", "lightning", "last.ckpt"),
        "ours": ("ours", "safetensors", "ours.safetensors"),
        "timm": ("timm", "timm", "timm.safetensors"),
        "official": ("official", "official", "official.pth"),
        "hf": ("transformers", "transformers", "hf"),
    }
    assert identify(run).what == "run directory (last.ckpt)"
    # the foreign formats: tests/test_convert.py
    for source in (run, tmp_path / "ours.safetensors"):
        _same_outputs(load_model(source), mim)
    # a named format skips detection
    assert identify(tmp_path / "official.pth", "timm").format == "timm"
    with pytest.raises(ValueError, match="official.pth is not a checkpoint of ours"):
        identify(tmp_path / "official.pth", "ours")
    with pytest.raises(ValueError, match="format='pth': use auto or one of"):
        identify(tmp_path / "official.pth", "pth")


def test_encoder_of_any_model():
    models = [_model(name) for name in ("encoder", "simmim", "classifier")]
    assert all(encoder_of(m) is (m if isinstance(m, SwinV2Encoder) else m.encoder) for m in models)
    with pytest.raises(
        TypeError, match="Linear is neither a SwinV2Encoder nor a model holding one"
    ):
        encoder_of(torch.nn.Linear(2, 2))
