"""Codes against labelled factors: how well each known factor of the data lines up with one latent.

Inputs are a code matrix and the factors' labels for the same n sentences:

* `codes` (n, L) integers: a categorical model's most likely category of each of its L = N latents, or a Gaussian
  model's posterior means (n, Dz) after `discretize` (20 equal-width bins per dimension, as disentanglement_lib
  does for MIG; Locatello et al. 2019, arXiv:1811.12359);
* `features` (n, P) floats for the probes: the one-hot codes (n, N*K) of a categorical model, each latent a block
  of K columns, or the standardized posterior means (n, Dz), each latent a block of one column;
* labels: any hashable values (strings or integers), turned into class indices by `encode_labels`.

All information quantities are in nats, from empirical counts (plug-in estimates, as sklearn's
`mutual_info_score` computes them). Scores, each in [0, 1]:

* `nmi_matrix`: I(z_i; v_j) / ((H(z_i) + H(v_j)) / 2), the arithmetic-mean normalization (sklearn's default);
  a factor's best latent is the one with the highest NMI.
* `mig`: the mutual information gap (Chen et al. 2018, arXiv:1802.04942):
  (I(z_(1); v_j) - I(z_(2); v_j)) / H(v_j) over the two latents most informative about v_j.
* `sap`: the separated attribute predictability (Kumar et al. 2018, arXiv:1711.00848): S_ij is the held-out
  accuracy of predicting factor j from latent i alone; SAP_j = S_(1)j - S_(2)j. The classifier on one discrete
  latent is the most general one: the majority label of each of its categories (bins) on the training part.
* `dci`: disentanglement, completeness and informativeness (Eastwood & Williams 2018,
  https://openreview.net/forum?id=By-7dz-AZ) from an importance matrix R (L, F): R_ij is the L1 norm of the
  weights that an L1-regularized multinomial logistic regression (the classification analogue of the paper's
  Lasso; fitted by FISTA, Beck & Teboulle 2009) puts on latent i's block of features to predict factor j.
  Informativeness is that probe's held-out accuracy, averaged over the factors.
* the same probe's held-out accuracy per factor (`probe_accuracy`) beside `majority`, the held-out accuracy of
  always predicting the training part's most frequent label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

MI_BINS = 20  # equal-width bins per continuous latent (Chen et al. 2018 / disentanglement_lib)
HOLDOUT = 0.2  # share of sentences held out to score the probes and SAP
L1 = 1e-3  # L1 weight of the probe (mean cross-entropy + L1 * |W|_1)
PROBE_STEPS = 500  # FISTA iterations


def encode_labels(values: Sequence) -> tuple[np.ndarray, list]:
    """Labels (strings, integers, any hashable) -> class indices (n,) and the classes in order of first appearance."""
    index: dict = {}
    out = np.empty(len(values), dtype=np.int64)
    for row, value in enumerate(values):
        if value is None:
            raise ValueError(f"label {row} is missing (None); give every sentence a value for every factor")
        out[row] = index.setdefault(value, len(index))
    return out, list(index)


def discretize(x: np.ndarray, bins: int = MI_BINS) -> np.ndarray:
    """Continuous codes (n, L) -> bin indices (n, L) in [0, bins): equal-width bins between each column's min and max
    (np.histogram's edges, as disentanglement_lib's `_histogram_discretize`)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros(x.shape, dtype=np.int64)
    for i in range(x.shape[1]):
        edges = np.histogram(x[:, i], bins=bins)[1]
        out[:, i] = np.clip(np.digitize(x[:, i], edges[1:-1]), 0, bins - 1)
    return out


def entropy(a: np.ndarray) -> float:
    """H(a) in nats of a discrete sample (n,)."""
    _, counts = np.unique(a, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """I(a; b) = H(a) + H(b) - H(a, b) in nats, of two discrete samples (n,)."""
    _, joint = np.unique(np.stack([a, b], 1), axis=0, return_inverse=True)
    return max(0.0, entropy(a) + entropy(b) - entropy(joint.ravel()))


def mi_matrix(codes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """codes (n, L), labels (n, F) -> I(z_i; v_j) (L, F) in nats."""
    return np.array([[mutual_information(codes[:, i], labels[:, j]) for j in range(labels.shape[1])]
                     for i in range(codes.shape[1])])


def nmi_matrix(codes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """codes (n, L), labels (n, F) -> NMI (L, F) with the arithmetic-mean normalization (0 when both are constant)."""
    mi = mi_matrix(codes, labels)
    hz = np.array([entropy(codes[:, i]) for i in range(codes.shape[1])])  # (L,)
    hv = np.array([entropy(labels[:, j]) for j in range(labels.shape[1])])  # (F,)
    norm = (hz[:, None] + hv[None, :]) / 2  # (L, F)
    return np.divide(mi, norm, out=np.zeros_like(mi), where=norm > 0)


def gap(scores: np.ndarray) -> np.ndarray:
    """Scores (L, F) -> best minus second best latent per factor (F,); with one latent, the best score."""
    top = -np.sort(-scores, axis=0)  # (L, F), best first
    return top[0] - (top[1] if len(top) > 1 else 0.0)


def mig(codes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mutual information gap per factor (F,) (Chen et al. 2018): the MI gap between the two latents that know most
    about the factor, over its entropy; 0 for a constant factor."""
    hv = np.array([entropy(labels[:, j]) for j in range(labels.shape[1])])
    g = gap(mi_matrix(codes, labels))
    return np.divide(g, hv, out=np.zeros_like(g), where=hv > 0)


def lookup_accuracy(z_train: np.ndarray, y_train: np.ndarray, z_test: np.ndarray, y_test: np.ndarray) -> float:
    """Held-out accuracy of the classifier that predicts each category of one discrete latent's most frequent label
    on the training part (ties: the smaller class index); unseen categories get the overall most frequent label."""
    fallback = np.bincount(y_train).argmax()
    table = {}
    for value in np.unique(z_train):
        table[value] = np.bincount(y_train[z_train == value]).argmax()
    predictions = np.array([table.get(value, fallback) for value in z_test])
    return float((predictions == y_test).mean())


def sap(codes: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Separated attribute predictability per factor (F,) (Kumar et al. 2018): the gap in held-out accuracy between
    the two latents that predict the factor best on their own."""
    scores = np.array([[lookup_accuracy(codes[train, i], labels[train, j], codes[test, i], labels[test, j])
                        for j in range(labels.shape[1])] for i in range(codes.shape[1])])  # (L, F)
    return gap(scores)


def dci(importance: np.ndarray) -> tuple[float, float]:
    """Importance matrix R (L, F) >= 0 -> (disentanglement, completeness) (Eastwood & Williams 2018).

    D_i = 1 - H_F(R_i. / sum_j R_ij) (entropy in base F), weighted by latent i's share of the total importance;
    C_j = 1 - H_L(R_.j / sum_i R_ij) (base L), averaged over factors with any importance. A latent or factor with no
    importance counts 0; with one factor (one latent) every latent (factor) is perfectly disentangled (complete)."""
    R = np.asarray(importance, dtype=np.float64)
    L, Fn = R.shape
    if R.sum() <= 0:
        return 0.0, 0.0

    def one_minus_entropy(rows: np.ndarray, base: int) -> np.ndarray:  # rows (r, c) -> 1 - H_base(rows / row sums)
        totals = rows.sum(1, keepdims=True)
        p = np.divide(rows, totals, out=np.zeros_like(rows), where=totals > 0)
        h = -(p * np.log(np.where(p > 0, p, 1))).sum(1) / (math.log(base) if base > 1 else 1)
        return np.where(totals[:, 0] > 0, 1 - h, 0.0)

    d_i = one_minus_entropy(R, Fn)  # (L,)
    c_j = one_minus_entropy(R.T, L)  # (F,)
    rho = R.sum(1) / R.sum()
    used = R.sum(0) > 0
    return float((rho * d_i).sum()), float(c_j[used].mean())


def fit_probe(x: np.ndarray, y: np.ndarray, num_classes: int, l1: float = L1,
              steps: int = PROBE_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """L1-regularized multinomial logistic regression, min_W,b mean CE(x W + b, y) + l1 * |W|_1, by FISTA (Beck &
    Teboulle 2009) with step 1 / Lipschitz bound (the softmax cross-entropy's Hessian in the logits is at most 1/2,
    so in (W, b) at most 1/2 |[x 1]|^2 / n). x (n, P), y (n,) -> W (P, C), b (C,). Deterministic: full batch, zero
    start, float64."""
    X = torch.as_tensor(x, dtype=torch.float64)
    Y = torch.as_tensor(y, dtype=torch.long)
    n, P = X.shape
    with_bias = torch.cat([X, torch.ones(n, 1, dtype=torch.float64)], 1)  # (n, P + 1)
    step = 1.0 / (0.5 * torch.linalg.matrix_norm(with_bias, ord=2).item() ** 2 / n)
    W = torch.zeros(P, num_classes, dtype=torch.float64)
    b = torch.zeros(num_classes, dtype=torch.float64)
    W_prev, b_prev, t = W.clone(), b.clone(), 1.0
    for _ in range(steps):
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        mom = (t - 1) / t_next
        W_look, b_look = W + mom * (W - W_prev), b + mom * (b - b_prev)  # Nesterov look-ahead point
        grad = (F.softmax(X @ W_look + b_look, -1) - F.one_hot(Y, num_classes).double()) / n  # (n, C)
        W_prev, b_prev = W, b
        W = W_look - step * (X.T @ grad)
        W = W.sign() * (W.abs() - step * l1).clamp(min=0)  # proximal step of the L1 term: soft thresholding
        b = b_look - step * grad.sum(0)
        t = t_next
    return W.numpy(), b.numpy()


def split(n: int, holdout: float = HOLDOUT, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random split of n sentences -> (train indices, held-out indices), at least one in each part."""
    if n < 2:
        raise ValueError(f"scoring factors needs at least 2 sentences, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    k = min(n - 1, max(1, round(n * holdout)))
    return np.sort(order[k:]), np.sort(order[:k])


def one_hot_features(codes: np.ndarray, num_categories: int) -> tuple[np.ndarray, np.ndarray]:
    """Category indices (n, N) -> one-hot features (n, N*K) and each feature's latent (N*K,)."""
    n, N = codes.shape
    feats = np.zeros((n, N, num_categories))
    feats[np.arange(n)[:, None], np.arange(N)[None, :], codes] = 1.0
    return feats.reshape(n, N * num_categories), np.repeat(np.arange(N), num_categories)


def standardized_features(means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Continuous codes (n, Dz) -> zero-mean unit-variance columns (constant columns stay 0) and their latents."""
    x = np.asarray(means, dtype=np.float64)
    std = x.std(0)
    return np.divide(x - x.mean(0), std, out=np.zeros_like(x), where=std > 0), np.arange(x.shape[1])


def score(codes: np.ndarray, features: np.ndarray, feature_latent: np.ndarray, factors: dict[str, Sequence],
          seed: int = 0) -> dict:
    """Every metric of the module doc for discrete codes (n, L) and probe features (n, P) whose column p belongs to
    latent feature_latent[p]. factors: {name: n labels}. -> {"factors": {name: {nmi, best_latent, mig, sap,
    probe_accuracy, majority}}, "mig", "sap", "nmi_mean", "dci_disentanglement", "dci_completeness",
    "dci_informativeness", "nmi_matrix": (L, F) nested lists}."""
    codes = np.asarray(codes)
    n, L = codes.shape
    names = list(factors)
    if not names:
        raise ValueError("no factors given; name at least one label column")
    for name in names:
        if len(factors[name]) != n:
            raise ValueError(f"factor {name!r} has {len(factors[name])} labels for {n} codes")
    encoded = [encode_labels(list(factors[name])) for name in names]
    labels = np.stack([e[0] for e in encoded], 1)  # (n, F)
    train, test = split(n, seed=seed)
    nmi = nmi_matrix(codes, labels)  # (L, F)
    migs = mig(codes, labels)
    saps = sap(codes, labels, train, test)
    importance = np.zeros((L, len(names)))
    per_factor = {}
    for j, name in enumerate(names):
        y, C = labels[:, j], len(encoded[j][1])
        W, b = fit_probe(features[train], y[train], C)
        accuracy = float(((features[test] @ W + b).argmax(1) == y[test]).mean())
        majority = float((y[test] == np.bincount(y[train], minlength=C).argmax()).mean())
        np.add.at(importance[:, j], feature_latent, np.abs(W).sum(1))
        best = int(nmi[:, j].argmax())
        per_factor[name] = {"nmi": float(nmi[best, j]), "best_latent": best, "mig": float(migs[j]),
                            "sap": float(saps[j]), "probe_accuracy": accuracy, "majority": majority}
    d, c = dci(importance)
    return {"factors": per_factor, "nmi_mean": float(nmi.max(0).mean()), "mig": float(migs.mean()),
            "sap": float(saps.mean()), "dci_disentanglement": d, "dci_completeness": c,
            "dci_informativeness": float(np.mean([f["probe_accuracy"] for f in per_factor.values()])),
            "nmi_matrix": nmi.tolist(), "n": n, "n_heldout": len(test)}
