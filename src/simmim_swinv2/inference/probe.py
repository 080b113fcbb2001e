"""Frozen-feature evaluation of an encoder: pooled features, DINO's weighted kNN classifier and a
linear probe.

Both classifiers read the encoder's `pooler_output` (the final-norm tokens averaged, `(N, C)`),
computed in eval mode without a mask. The kNN is the protocol of DINO (Caron et al. 2021,
facebookresearch/dino `eval_knn.py`): L2-normalised features, cosine similarity, the `k = 20`
nearest training samples vote with weight `exp(sim / 0.07)`, the class with the largest summed
weight wins. The linear probe is the cheap variant of MAE's (`main_linprobe.py` trains a BatchNorm +
linear head): a logistic regression on features standardised with the training set's mean and std.
The pretraining callback (`training.knn.KNNMonitor`) and `python -m simmim_swinv2.probe` both use
these; nothing here imports Lightning.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset
from tqdm import tqdm


@torch.no_grad()
def pooled_features(
    encoder: torch.nn.Module,
    loader: Iterable,
    device: torch.device | str | None = None,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = False,
    desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's pooled features of every batch of `loader` (`(images, …, labels)`: the label
    last, as every source of ours yields it), in eval mode, without a mask and without gradients;
    the encoder's train/eval mode is restored afterwards. `prepare` converts the images before the
    forward (a precision plugin's `convert_input`). Returns `(N, C)` float32 features and `(N,)`
    int64 labels, on `device` (default: the encoder's)."""
    if device is None:
        device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    feats, labels = [], []
    try:
        for batch in tqdm(
            loader, desc=desc, unit="batch", disable=not progress, file=sys.stderr, leave=False
        ):
            images = batch[0].to(device, non_blocking=True)
            if prepare is not None:
                images = prepare(images)
            feats.append(encoder(images).pooler_output.float())
            labels.append(torch.as_tensor(batch[-1]).to(device=device, dtype=torch.int64))
    finally:
        encoder.train(was_training)
    if not feats:
        return torch.zeros(0, getattr(encoder, "num_features", 0), device=device), torch.zeros(
            0, dtype=torch.int64, device=device
        )
    return torch.cat(feats), torch.cat(labels)


def knn_predict(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    val_feats: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """DINO's weighted cosine kNN: `(N_train, C)`, `(N_train,)` labels, `(N_val, C)` → `(N_val,)`
    predicted labels. The validation rows go `chunk_size` at a time, so memory stays at
    `chunk_size x N_train` similarities. A tie between two classes' vote sums goes to the lower
    label."""
    if train_feats.shape[0] == 0:
        raise ValueError("kNN needs at least one labelled training sample")
    if train_feats.shape[0] != train_labels.shape[0]:
        raise ValueError(
            f"{train_feats.shape[0]} training features but {train_labels.shape[0]} labels"
        )
    if k < 1 or temperature <= 0:
        raise ValueError(
            f"k={k} must be >= 1 and temperature={temperature} > 0 (DINO: k=20, T=0.07)"
        )
    num_classes = int(train_labels.max()) + 1 if num_classes is None else num_classes
    k = min(k, train_feats.shape[0])
    bank = F.normalize(train_feats.float(), dim=1)
    labels = train_labels.to(bank.device)
    out = []
    for start in range(0, val_feats.shape[0], chunk_size):
        query = F.normalize(val_feats[start : start + chunk_size].float().to(bank.device), dim=1)
        sims, idx = (query @ bank.T).topk(k, dim=1)  # (n, k) cosine similarities of the k nearest
        votes = torch.zeros(query.shape[0], num_classes, device=bank.device)
        votes.scatter_add_(1, labels[idx], (sims / temperature).exp())
        out.append(votes.argmax(dim=1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64, device=bank.device)


def knn_top1(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    val_feats: torch.Tensor,
    val_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> float:
    """Top-1 accuracy of `knn_predict` on the validation features (see there for the shapes)."""
    if val_feats.shape[0] == 0:
        raise ValueError("kNN top-1 needs at least one labelled validation sample")
    if num_classes is None:
        num_classes = int(max(train_labels.max(), val_labels.max())) + 1
    pred = knn_predict(
        train_feats, train_labels, val_feats, k, temperature, num_classes, chunk_size
    )
    return float((pred.cpu() == val_labels.cpu()).float().mean())


def linear_probe_top1(
    train_feats, train_labels, val_feats, val_labels, max_iter: int = 2000, C: float = 1.0
) -> float:
    """Top-1 of a logistic regression (scikit-learn, L2, `C`) fit on the training features
    standardised with their own mean and std, scored on the validation features standardised the
    same way. Tensors or arrays: `(N, C)` features, `(N,)` labels."""
    from sklearn.linear_model import LogisticRegression

    x_train, x_val = (
        np.asarray(torch.as_tensor(x).float().cpu()) for x in (train_feats, val_feats)
    )
    y_train, y_val = (np.asarray(torch.as_tensor(y).cpu()) for y in (train_labels, val_labels))
    if len(np.unique(y_train)) < 2:
        raise ValueError("a linear probe needs training samples of at least two classes")
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    clf = LogisticRegression(max_iter=max_iter, C=C)
    clf.fit((x_train - mean) / std, y_train)
    return float(clf.score((x_val - mean) / std, y_val))


def take(batches: Iterable, n: int | None) -> Iterator:
    """The batches of `batches` that hold its first `n` samples (the last one cut), or all of them
    for None."""
    seen = 0
    for batch in batches:
        if n is not None and seen >= n:
            break
        if n is not None:
            batch = [b[: n - seen] for b in batch]
        seen += len(batch[-1])
        yield batch


def subset_indices(n: int, max_samples: int | None, seed: int = 0) -> list[int]:
    """`max_samples` of `range(n)` drawn without replacement with a fixed seed (sorted), or all of
    them."""
    if max_samples is None or max_samples >= n:
        return list(range(n))
    chosen = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_samples]
    return sorted(chosen.tolist())


def labelled(feats: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows with a label (`label >= 0`; unlabelled sources say -1)."""
    keep = labels >= 0
    return feats[keep], labels[keep]


def probe(
    encoder: torch.nn.Module,
    train: Dataset,
    val: Dataset,
    batch_size: int = 128,
    num_workers: int = 0,
    k: int = 20,
    temperature: float = 0.07,
    train_samples: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    linear: bool = True,
    progress: bool = True,
) -> dict[str, float]:
    """kNN top-1 and linear-probe top-1 of a frozen encoder, train split → val split. `train`,
    `val`: datasets yielding `(image, label)` with an eval transform; `train_samples` bounds the
    training set (a fixed-seed subset; of shards, the first ones).
    Returns `{"knn_top1", "linear_top1", "train_samples", "val_samples", "seconds"}` (`linear_top1`
    only when `linear`)."""
    start = time.perf_counter()
    if device is not None:
        encoder = encoder.to(device)
    kw = dict(batch_size=batch_size, num_workers=num_workers)
    if isinstance(train, IterableDataset):  # shards: their first `train_samples`, in order
        train_batches = take(DataLoader(train, **kw), train_samples)
    else:
        indices = subset_indices(len(train), train_samples, seed)
        train_batches = DataLoader(
            train if len(indices) == len(train) else Subset(train, indices), **kw
        )
    x_train, y_train = labelled(
        *pooled_features(encoder, train_batches, progress=progress, desc="train features")
    )
    x_val, y_val = labelled(
        *pooled_features(encoder, DataLoader(val, **kw), progress=progress, desc="val features")
    )
    if len(y_train) == 0 or len(y_val) == 0:
        raise ValueError(
            "the data has no labels (label -1 everywhere): the probes need a labelled source "
            "(digits, labelled class folders, ImageNet)"
        )
    num_classes = int(max(y_train.max(), y_val.max())) + 1
    result = {"knn_top1": knn_top1(x_train, y_train, x_val, y_val, k, temperature, num_classes)}
    if linear:
        result["linear_top1"] = linear_probe_top1(x_train, y_train, x_val, y_val)
    result.update(
        train_samples=len(y_train), val_samples=len(y_val), seconds=time.perf_counter() - start
    )
    return result


__all__ = [
    "knn_predict",
    "knn_top1",
    "labelled",
    "linear_probe_top1",
    "pooled_features",
    "probe",
    "subset_indices",
    "take",
]
