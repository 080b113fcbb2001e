"""`data=hf`: Hugging Face data sets from save_to_disk directories, parquet files, image folders and
array columns; columns found, rows decoded by our path with bad rows counted and named, named and
fractional validation splits, streaming planned over ranks and loader workers. Offline: the data
sets are made here (HF_DATASETS_OFFLINE=1, the cache under the session's tmp dir: conftest)."""

from __future__ import annotations

import hashlib
import io
import os
from collections import Counter

import datasets
import numpy as np
import pytest
from helpers.config import compose_config
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError
from PIL import Image

from simmim_swinv2.config import ConfigError
from simmim_swinv2.config.checks import check_values
from simmim_swinv2.data import MaskGenerator, SimMIMTransform, build_eval_transform, build_hf
from simmim_swinv2.data.hf import find_columns, parse_split
from simmim_swinv2.data.views import has_labels
from simmim_swinv2.inference.inputs import expand_inputs, parse_hf_spec

CLASSES = ["cat", "dog", "owl"]
BAD_ROW = 5


def _png(seed: int, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (40, 48, 3) if mode == "RGB" else (40, 48)
    buf = io.BytesIO()
    Image.fromarray((rng.random(shape) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class Fingerprint:
    """The stored bytes' digest: which row a sample came from, whatever the split or order."""

    accepts_bytes = True

    def __call__(self, data) -> str:
        return hashlib.md5(
            bytes(data) if isinstance(data, bytes) else np.ascontiguousarray(data).tobytes()
        ).hexdigest()


@pytest.fixture(scope="module")
def hf_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)}
    )
    rows = [
        {"bytes": b"not an image" if i == BAD_ROW else _png(i), "path": None} for i in range(12)
    ]
    train = datasets.Dataset.from_dict(
        {"image": rows, "label": [i % 3 for i in range(12)]}, features=features
    )
    val = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": _png(100 + i), "path": None} for i in range(4)],
            "label": [0, 1, 2, 0],
        },
        features=features,
    )
    datasets.DatasetDict({"train": train, "validation": val}).save_to_disk(root / "saved")
    train.select([i for i in range(12) if i != BAD_ROW]).to_parquet(
        root / "parquet" / "train-00000.parquet"
    )
    for c in CLASSES[:2]:
        (root / "folder" / c).mkdir(parents=True)
        for i in range(3):
            (root / "folder" / c / f"{i}.png").write_bytes(_png(200 + i, "L"))
    array_features = datasets.Features(
        {
            "bands": datasets.Array3D((7, 16, 16), "uint16"),
            "label": datasets.ClassLabel(names=["crop", "forest"]),
        }
    )
    rng = np.random.default_rng(0)
    datasets.Dataset.from_dict(
        {
            "bands": [rng.integers(0, 65535, (7, 16, 16), dtype=np.uint16) for _ in range(6)],
            "label": [0, 1] * 3,
        },
        features=array_features,
    ).save_to_disk(root / "bands")
    return root


def test_every_kind_of_path_opens_with_its_class_names(hf_data):
    t = build_eval_transform(32, 1.0)
    saved = build_hf(str(hf_data / "saved"), transform=t)
    assert (len(saved), saved.classes, has_labels(saved)) == (12, CLASSES, True)
    for path in (
        hf_data / "parquet",
        hf_data / "parquet" / "*.parquet",
        hf_data / "parquet" / "train-00000.parquet",
    ):
        parquet = build_hf(str(path), transform=t)
        assert (
            len(parquet) == 11 and parquet.classes == CLASSES and parquet[0][0].shape == (3, 32, 32)
        )
    folder = build_hf(
        str(hf_data / "folder"), transform=build_eval_transform(32, 1.0, [0.5], [0.2])
    )
    assert (
        folder.classes == ["cat", "dog"] and folder[4][0].shape == (1, 32, 32) and folder[4][1] == 1
    )
    assert folder.where(0).startswith(
        str(hf_data / "folder" / "cat" / "0.png")
    )  # named by its file
    bands = build_hf(
        str(hf_data / "bands"), transform=build_eval_transform(16, 1.0, [0.5] * 7, [0.3] * 7)
    )
    x, label = bands[1]
    assert x.shape == (7, 16, 16) and label == 1 and bands.image_column == "bands"
    raw = np.asarray(bands.stored(1))
    assert (
        raw.dtype == np.uint16
    )  # the declared pixel type, not numpy formatting's int64: scaled by 65535


def test_columns_are_found_or_listed(hf_data):
    features = datasets.Features(
        {
            "caption": datasets.Value("string"),
            "photo": datasets.Image(),
            "target": datasets.Value("int64"),
        }
    )
    assert find_columns(features) == (
        "photo",
        None,
        None,
    )  # the first Image; no ClassLabel: unlabelled
    assert find_columns(features, label_column="target") == ("photo", "target", None)
    with pytest.raises(
        ValueError, match=r"no image column among caption \(Value\), target \(Value\)"
    ):
        find_columns(datasets.Features({k: features[k] for k in ("caption", "target")}))
    with pytest.raises(ValueError, match=r"data.label_column='labels' is not a column"):
        find_columns(features, label_column="labels")
    unlabelled = build_hf(
        str(hf_data / "saved"), label_column=None, transform=build_eval_transform(32, 1.0)
    )
    assert unlabelled.classes == [] and has_labels(unlabelled) is False and unlabelled[0][1] == -1


def test_an_undecodable_row_is_counted_named_and_replaced(hf_data):
    ds = build_hf(str(hf_data / "saved"), transform=build_eval_transform(32, 1.0))
    x, _ = ds[BAD_ROW]
    assert x.shape == (3, 32, 32)
    assert ds.tracker.counts(0) == (1, 1)
    ((where, count, reason),) = ds.tracker.names(0)
    assert (
        where == f"hf:{hf_data / 'saved'}:train#{BAD_ROW}"
        and count == 1
        and "UnidentifiedImageError" in reason
    )


def test_validation_split_named_or_held_out(hf_data):
    path = str(hf_data / "saved")
    assert len(build_hf(path, part="val", val_split="validation")) == 4
    assert build_hf(path, part="val") is None  # no val_split, no validation
    train, val = (
        build_hf(path, part=p, val_split=0.25, seed=3, transform=Fingerprint())
        for p in ("train", "val")
    )
    a, b = {train[i][0] for i in range(len(train))}, {val[i][0] for i in range(len(val))}
    assert (len(a), len(b)) == (9, 3) and not a & b
    again = build_hf(path, part="val", val_split=0.25, seed=3, transform=Fingerprint())
    assert b == {
        again[i][0] for i in range(len(again))
    }  # the same rows held out every time (the seed)
    with pytest.raises(ValueError, match=r"splits \['train', 'validation'\], not 'test'"):
        build_hf(path, part="val", val_split="test")
    with pytest.raises(ValueError, match="held-out fraction needs a map-style data set"):
        build_hf(path, part="val", val_split=0.25, streaming=True)


def test_max_samples_slices_and_hf_inputs(hf_data):
    path = str(hf_data / "saved")
    assert len(build_hf(path, max_samples=5)) == 5
    assert len(build_hf(path, split="train[2:6]")) == 4 and parse_split("test[:3]") == (
        "test",
        slice(None, 3),
    )
    assert sum(build_hf(path, streaming=True, max_samples=5).sizes) == 5
    assert parse_hf_spec(f"hf:{path}:validation[:2]") == (path, "validation[:2]")
    assert parse_hf_spec("hf:cifar10") == ("cifar10", "train")
    inputs = expand_inputs([f"hf:{path}:validation[:2]"])
    assert [i.name for i in inputs] == [f"hf:{path}:validation[:2]#{k}" for k in (0, 1)]
    assert Image.open(io.BytesIO(inputs[1].read())).size == (48, 40)


@pytest.mark.parametrize(
    "source, world, workers", [("saved", 2, 2), ("saved", 3, 2), ("parquet", 2, 3)]
)
def test_streaming_sees_every_row_once_with_equal_counts_per_rank(
    hf_data, clean_env, source, world, workers
):
    """Every (rank, loader worker) simulated through the variables webdataset's worker info reads,
    as the shard tests do: ceil(N / world) rows per rank, equal per-worker counts on every rank,
    every row of the epoch seen."""
    ids = {}
    for rank in range(world):
        ids[rank] = []
        for worker in range(workers):
            os.environ.update(
                RANK=str(rank), WORLD_SIZE=str(world), WORKER=str(worker), NUM_WORKERS=str(workers)
            )
            ds = build_hf(str(hf_data / source), streaming=True, transform=Fingerprint())
            ds.batch_size = 2
            ds.set_epoch(1)
            ids[rank].append([x for x, _ in ds])
    n = 12 if source == "saved" else 11  # the parquet file left the undecodable row out
    per_rank = [sum(len(w) for w in ids[r]) for r in ids]
    assert per_rank == [-(-n // world)] * world
    assert [[len(w) for w in ids[r]] for r in ids] == [[len(w) for w in ids[0]]] * world
    seen = Counter(x for r in ids for w in ids[r] for x in w)
    assert len(seen) == n  # every decodable row of the epoch


def test_hf_config_composes_and_checks_its_keys(hf_data, tmp_path):
    cfg = compose_config(
        "pretrain",
        tmp_path,
        ["data=hf", f"data.path={hf_data / 'saved'}", "data.val_split=validation"],
    )
    assert (cfg.data.train.part, cfg.data.val.part, cfg.data.val.val_split) == (
        "train",
        "val",
        "validation",
    )
    check_values(cfg)
    bad = compose_config(
        "pretrain", tmp_path, ["data=hf", f"data.path={hf_data / 'saved'}", "data.val_split=[1]"]
    )
    with pytest.raises(ConfigError, match=r"data.val_split=\[1\]: expected"):
        check_values(bad)
    with pytest.raises(ConfigCompositionException) as info:  # a typo: not a key of data=hf
        compose_config("pretrain", tmp_path, ["data=hf", "data.path=x", "data.streamin=true"])
    assert isinstance(info.value.__cause__, (ConfigAttributeError, ConfigKeyError))
    assert info.value.__cause__.full_key == "data.streamin"


def test_without_the_extra_data_hf_names_the_install(hf_data, monkeypatch):
    """`datasets` is the `hf` extra: a core install asked for data=hf says what to install."""
    # as if not installed: import raises
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)
    with pytest.raises(ConfigError, match=r"pip install 'simmim-swinv2\[hf\]'"):
        build_hf(str(hf_data / "saved"))


def test_pretrain_transform_on_rows_of_bytes(hf_data):
    ds = build_hf(
        str(hf_data / "saved"),
        split="validation",
        transform=SimMIMTransform(32, MaskGenerator(32, 8, 4, 0.5)),
    )
    image, mask, label = ds[2]
    assert image.shape == (3, 32, 32) and mask.shape == (8, 8) and label == 2


def test_pretrain_finetune_export_predict_on_a_data_set(hf_data, tmp_path):
    """The whole journey on `data=hf`: pretraining with the kNN monitor on the named validation
    split, fine-tuning with the ClassLabel's classes (no num_classes given), the export's
    id2label, predict on `hf:PATH:split`."""
    from helpers.config import FAST

    from simmim_swinv2 import convert
    from simmim_swinv2.finetune import finetune
    from simmim_swinv2.predict import Predictor
    from simmim_swinv2.pretrain import pretrain
    from simmim_swinv2.weights import load_model

    path = hf_data / "saved"
    data = [
        "data=hf",
        f"data.path={path}",
        "data.val_split=validation",
        "trainer.max_epochs=1",
        "data.train.max_bad_fraction=0.2",
    ]  # the undecodable row: 1 of 12
    pre, ft = tmp_path / "pre", tmp_path / "ft"
    metrics = pretrain(compose_config("pretrain", pre, [*FAST, *data]))
    assert 0 <= metrics["val/knn_top1"] <= 1  # the monitor ran on the validation split's labels
    assert (
        f"saved:train#{BAD_ROW}" in (pre / "bad_samples.tsv").read_text()
    )  # the run's account names the row
    finetune(
        compose_config(
            "finetune", ft, [*FAST, *data, f"pretrained={pre}", "callbacks.checkpoint.monitor=null"]
        )
    )
    assert load_model(ft).id2label == dict(enumerate(CLASSES))
    convert.main(["to-transformers", str(ft), str(tmp_path / "export")])
    assert '"2": "owl"' in (tmp_path / "export" / "config.json").read_text()
    results = Predictor(tmp_path / "export", device="cpu").predict(
        expand_inputs([f"hf:{path}:validation"]), top_k=1, progress=False
    )
    assert len(results) == 4 and {r["predictions"][0]["label"] for r in results} <= set(CLASSES)
