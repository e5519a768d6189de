"""Fitting the learned projection: a linear contrastive head that also compresses.

Build-time only (needs torch, from the [build] extra). Starts from PCA, then trains
on labelled QQP training pairs with two losses: a logistic loss on the scaled
cosine of each pair (is it a duplicate?) and an in-batch InfoNCE loss over the
duplicate pairs (is the duplicate nearer than every other question?). The epoch
kept is the one with the best F1 on the validation split.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .evaluation import pairwise
from .metrics import best
from .projection import Projection, fit_pca


def pair_loss(pa, pb, label, scale, bias, infonce_weight: float = 0.5, temperature: float = 0.05):
    """The head's training loss on a batch of unit vectors of labelled pairs (torch tensors).

    A logistic loss on the scaled cosine of each pair (is it a duplicate?) plus, weighted, an
    in-batch InfoNCE over the duplicates (is the duplicate nearer than every other question?).
    """
    import torch

    loss = torch.nn.functional.binary_cross_entropy_with_logits(scale * (pa * pb).sum(-1) + bias, label)
    pos = label > 0.5
    if int(pos.sum()) > 1 and infonce_weight > 0:
        logits = pa[pos] @ torch.cat([pb[pos], pb[~pos]]).T / temperature
        loss = loss + infonce_weight * torch.nn.functional.cross_entropy(logits, torch.arange(int(pos.sum())))
    return loss


def fit_learned(
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray, np.ndarray],
    pca_fit: np.ndarray,
    dim: int,
    epochs: int = 20,
    batch_size: int = 256,
    lr: float = 2e-3,
    temperature: float = 0.05,
    seed: int = 13,
    progress: Callable[[str], None] = print,
) -> Projection:
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    start = fit_pca(pca_fit, dim)
    a, b, y = (torch.from_numpy(np.asarray(v, dtype=np.float32)) for v in train)
    va, vb, vy = validation
    mean = torch.from_numpy(start.mean)
    weight = torch.nn.Parameter(torch.from_numpy(start.matrix.copy()))
    scale = torch.nn.Parameter(torch.tensor(20.0))
    bias = torch.nn.Parameter(torch.tensor(-16.0))
    opt = torch.optim.Adam([weight, scale, bias], lr=lr)

    def project(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize((x - mean) @ weight, dim=-1)

    def val_f1(matrix: np.ndarray) -> float:
        p = Projection("tmp", start.mean, matrix, {})
        return best(pairwise(p.apply(va), p.apply(vb), vy)).f1

    best_f1, best_matrix, best_epoch = val_f1(start.matrix), start.matrix.copy(), 0
    progress(f"epoch 0 (PCA start): validation pairwise F1 {best_f1:.4f}")
    for epoch in range(1, epochs + 1):
        order = torch.from_numpy(rng.permutation(len(y)))
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            loss = pair_loss(project(a[idx]), project(b[idx]), y[idx], scale, bias, temperature=temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
        f1 = val_f1(weight.detach().numpy())
        progress(f"epoch {epoch}: validation pairwise F1 {f1:.4f}")
        if f1 > best_f1:
            best_f1, best_matrix, best_epoch = f1, weight.detach().numpy().copy(), epoch
    return Projection(
        f"learned-{dim}",
        start.mean,
        best_matrix.astype(np.float32),
        {
            "kind": "learned",
            "epochs_trained": epochs,
            "best_epoch": best_epoch,
            "validation_pairwise_f1": best_f1,
            "train_pairs": len(y),
            "seed": seed,
        },
    )
