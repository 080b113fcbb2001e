"""Our own runs out: class names into the fine-tuned classifier, and `convert to-transformers` on
run directories, Lightning checkpoints, ZeRO checkpoint directories and our safetensors — then
transformers' pipeline() on the export gives `predict`'s answers.
    pytest tests/test_export.py              # the fast ones
    pytest tests/test_export.py -m slow      # the command-line journey, ZeRO-2 on the CPU
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.config import FAST, compose_config, run_cli
from helpers.numerics import assert_norm_close
from helpers.reference import bound, random_mask, transformers
from PIL import Image

from simmim_swinv2 import convert
from simmim_swinv2.config import ConfigError
from simmim_swinv2.data import build_digits, build_folder, build_webdataset
from simmim_swinv2.data.sharding import make_shards
from simmim_swinv2.finetune import class_names, finetune
from simmim_swinv2.models import SimMIM, SwinV2Classifier, SwinV2Encoder
from simmim_swinv2.pretrain import pretrain
from simmim_swinv2.weights import CHECKPOINT_KEY, ModelMeta, find_resume_checkpoint, load_model

TESTS = Path(__file__).resolve().parent
CLASSES = ["cat", "dog", "owl"]
# debug=fast, one optimizer step
ONE_STEP = [*FAST, "trainer.max_epochs=1", "trainer.limit_train_batches=1"]


def _photos(folder: Path, n: int, seed: int = 0, size=(40, 48), name: str = "img") -> list[Path]:
    """`n` smooth random RGB images (`<name>NN.png`) of `size`, so that resizing matters."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        base = rng.random((size[1] // 8 + 1, size[0] // 8 + 1, 3))
        pixels = (np.kron(base, np.ones((8, 8, 1)))[: size[1], : size[0]] * 255).astype(np.uint8)
        paths.append(folder / f"{name}{i:02d}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def class_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    for i, name in enumerate(CLASSES):
        _photos(root / name, 4, seed=i)
    return root


def _mim_equal(theirs, ours: SimMIM) -> None:
    x, mask = torch.randn(2, 3, 64, 64), random_mask(2, 16, 16)
    with torch.no_grad():
        expected = ours.eval()(x, mask).reconstruction
        got = theirs.eval()(x, bool_masked_pos=mask.flatten(1).bool()).reconstruction
    assert_norm_close(got, expected, bound(ours.encoder.cfg), "reconstruction")


def test_class_names_come_from_the_data_set(class_tree, tmp_path):
    assert class_names(build_digits("val", image_size=16)) == [str(i) for i in range(10)]
    assert class_names(build_folder(class_tree)) == CLASSES
    make_shards(class_tree, tmp_path / "shards", samples_per_shard=5, progress=False)
    urls = sorted(str(p) for p in (tmp_path / "shards").glob("*.tar"))
    # classes.json beside them
    assert len(urls) == 3 and class_names(build_webdataset(urls)) == CLASSES
    (tmp_path / "shards" / "classes.json").unlink()
    assert class_names(build_webdataset(urls)) is None  # LABEL_0 … then, as transformers names them


@pytest.mark.parametrize("data", ["folder", "webdataset"])
def test_finetune_on_folders_or_shards_exports_their_class_names(
    data, class_tree, tmp_path, capsys
):
    if data == "folder":
        source = [f"data.root={class_tree}"]
    else:
        make_shards(class_tree, tmp_path / "shards", samples_per_shard=6, progress=False)
        # quoted: braces are Hydra syntax
        source = [f"data.urls='{tmp_path / 'shards'}/{{000000..000001}}.tar'"]
    run = tmp_path / "ft"
    finetune(
        compose_config(
            "finetune",
            run,
            [
                *ONE_STEP,
                f"data={data}",
                *source,
                "num_classes=3",
                "callbacks.checkpoint.monitor=null",
            ],
        )
    )
    assert load_model(run).id2label == dict(enumerate(CLASSES))
    convert.main(["to-transformers", str(run), str(tmp_path / "hf")])
    assert "SwinV2Classifier from our checkpoint" in capsys.readouterr().out
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (
        config["id2label"] == {"0": "cat", "1": "dog", "2": "owl"}
        and config["label2id"]["owl"] == 2
    )
    with pytest.raises(
        ConfigError, match="names 3 classes .*cat, dog, owl.* but num_classes=5: set num_classes=3"
    ):
        finetune(
            compose_config(
                "finetune", tmp_path / "bad", [*ONE_STEP, f"data={data}", *source, "num_classes=5"]
            )
        )


@pytest.fixture(scope="module")
def our_runs(tmp_path_factory):
    """A one-step pretraining run (normalised targets, a 7-px window) and a one-step fine-tune of it
    on digits (in-process, the real configs)."""
    pre, ft = tmp_path_factory.mktemp("pre"), tmp_path_factory.mktemp("ft")
    pretrain(
        compose_config("pretrain", pre, [*ONE_STEP, "norm_target=true", "norm_target_window=7"])
    )
    finetune(compose_config("finetune", ft, [*ONE_STEP, f"pretrained={pre}"]))
    return pre, ft


def test_our_runs_save_the_model_description_load_model_reads(our_runs):
    pre, ft = our_runs
    for run, cls in ((pre, SimMIM), (ft, SwinV2Classifier)):
        saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)[CHECKPOINT_KEY]
        model = load_model(run)
        assert isinstance(model, cls) and saved == ModelMeta.of(model).to_dict()
    assert (saved["id2label"], saved["config"]["img_size"]) == (
        {i: str(i) for i in range(10)},
        (64, 64),
    )
    mim = load_model(pre)
    # the pretraining loss comes back as it ran
    assert (mim.norm_target, mim.norm_target_window) == (True, 7)


@pytest.mark.parametrize("source", ["run_dir", "lightning_ckpt", "safetensors"])
def test_to_transformers_takes_our_pretraining_runs(source, our_runs, tmp_path, capsys):
    pre, _ = our_runs
    path = {"run_dir": pre, "lightning_ckpt": pre / "checkpoints" / "last.ckpt"}.get(source)
    ours = load_model(pre)
    if source == "safetensors":  # convert.save_model's output: x.safetensors + x.json
        convert.save_model(ours, tmp_path / "mim.safetensors")
        path = tmp_path / "mim.safetensors"
    convert.main(["to-transformers", str(path), str(tmp_path / "hf")])
    assert "SimMIM from our checkpoint" in capsys.readouterr().out
    _mim_equal(transformers.Swinv2ForMaskedImageModeling.from_pretrained(tmp_path / "hf"), ours)
    convert.main(["to-transformers", str(path), str(tmp_path / "enc"), "--encoder-only"])
    enc = transformers.Swinv2Model.from_pretrained(tmp_path / "enc").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_norm_close(
            enc(x).pooler_output, ours.encoder.eval()(x).pooler_output, bound(ours.encoder.cfg)
        )


def test_to_transformers_takes_our_finetuning_runs_with_digit_names(our_runs, tmp_path):
    _, ft = our_runs
    convert.main(["to-transformers", str(ft), str(tmp_path / "hf")])
    theirs = transformers.Swinv2ForImageClassification.from_pretrained(tmp_path / "hf").eval()
    assert theirs.config.id2label == {i: str(i) for i in range(10)}
    assert (tmp_path / "hf" / "preprocessor_config.json").is_file()
    ours = load_model(ft).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_norm_close(theirs(x).logits, ours(x).logits, bound(ours.encoder.cfg), "logits")


def test_to_transformers_refuses_what_it_cannot_read(our_runs, tmp_path):
    """What `weights.cli.main` raises (the command itself prints the missing paths' in one line:
    tests/test_journey.py)."""
    from simmim_swinv2.weights.cli import main as convert_command

    pre, _ = our_runs
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not weights")
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "resnet.pth")
    for source, error, match in [
        (tmp_path / "empty", FileNotFoundError, "neither checkpoints/.*expected a run dir"),
        (tmp_path / "nowhere.ckpt", FileNotFoundError, "not found; expected a run dir"),
        (tmp_path / "notes.txt", ValueError, "cannot read .*notes.txt as weights"),
        (tmp_path / "resnet.pth", ValueError, "no SwinV2 weights we know.*conv1.weight"),
    ]:
        with pytest.raises(error, match=match):
            convert_command(["to-transformers", str(source), str(tmp_path / "out")])
    with pytest.raises(ValueError, match="records its own config.*window_size"):
        convert_command(["to-transformers", str(pre), str(tmp_path / "out"), "--window-size", "8"])
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------- slow
def _ok(result) -> str:
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    return result.stdout


@pytest.mark.slow
def test_zero_checkpoint_directory_exports(tmp_path, capsys):
    """ZeRO-2, one CPU process: the sharded `last.ckpt/` directory (and its run, also once resharded
    to a universal checkpoint, which is then the newest) export to transformers with the outputs of
    the same weights through `load_model` (DeepSpeed's fp32 consolidation)."""
    run = tmp_path / "run"
    env = {
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "DS_ACCELERATOR": "cpu",
    }
    _ok(
        run_cli(
            "simmim_swinv2.pretrain",
            *ONE_STEP,
            "trainer=deepspeed_zero2",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
            "trainer.strategy._target_=simmim_swinv2.distributed.strategy.CPUDeepSpeedStrategy",
            f"hydra.run.dir={run}",
            env=env,
        )
    )
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_dir()  # sharded: a directory
    ours = load_model(ckpt)
    assert isinstance(ours, SimMIM)
    for source in (ckpt, run, "resharded"):
        if source == "resharded":
            _ok(run_cli("simmim_swinv2.reshard", str(run), env={"DS_ACCELERATOR": "cpu"}))
            assert find_resume_checkpoint(run).name == "last-universal.ckpt"
            source = run
        convert.main(["to-transformers", str(source), str(tmp_path / "hf")])
        assert "SimMIM from our checkpoint" in capsys.readouterr().out
        _mim_equal(transformers.Swinv2ForMaskedImageModeling.from_pretrained(tmp_path / "hf"), ours)
    convert.main(["to-transformers", str(ckpt), str(tmp_path / "enc"), "--encoder-only"])
    assert isinstance(convert.from_transformers(tmp_path / "enc"), SwinV2Encoder)
