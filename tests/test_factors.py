"""Factor metrics against constructed codes with known answers: a perfectly aligned code, a permuted one, an entangled
one and one with no information. The factors form a full grid (every combination equally often), so distinct
factors are exactly independent in the sample and every information quantity has a closed form."""

import itertools
import math

import numpy as np
import pytest

from textdvae import factors as fx

# factor a: 4 values, factor b: 2 values; each of the 8 combinations 5 times (n = 40)
GRID = np.array([combo for combo in itertools.product(range(4), range(2)) for _ in range(5)])  # (40, 2)
A, B = GRID[:, 0], GRID[:, 1]
LOG4, LOG2 = math.log(4), math.log(2)


def test_entropy_mi_and_labels_of_any_type():
    assert fx.entropy(A) == pytest.approx(LOG4) and fx.entropy(np.zeros(7)) == 0
    assert fx.mutual_information(A, A) == pytest.approx(LOG4)
    assert fx.mutual_information(A, B) == pytest.approx(0, abs=1e-12)  # independent on the grid
    assert fx.mutual_information(A, A % 2) == pytest.approx(LOG2)
    ids, classes = fx.encode_labels(["past", "future", "past", 3, 3])
    assert ids.tolist() == [0, 1, 0, 2, 2] and classes == ["past", "future", 3]
    with pytest.raises(ValueError, match="label 1 is missing"):
        fx.encode_labels(["x", None])


def test_discretize_uses_equal_width_bins_between_min_and_max():
    x = np.array([[0.0], [0.04], [0.05], [0.51], [1.0]])
    assert fx.discretize(x).ravel().tolist() == [0, 0, 1, 10, 19]  # 20 bins of width 0.05
    assert fx.discretize(np.array([[0.0], [1.0], [2.0], [3.0]]), bins=2).ravel().tolist() == [0, 0, 1, 1]


def test_aligned_code():
    labels = GRID
    codes = GRID.copy()
    nmi = fx.nmi_matrix(codes, labels)
    np.testing.assert_allclose(nmi, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(fx.mig(codes, labels), [1, 1])
    # alone, the right latent predicts its factor perfectly, the other one is at chance: 1/4 and 1/2
    np.testing.assert_allclose(fx.sap(codes, labels, np.arange(40), np.arange(40)), [1 - 1 / 4, 1 - 1 / 2])


def test_permuted_code_scores_the_same_with_the_latents_swapped():
    relabel = np.array([2, 0, 3, 1])  # categories renamed as well
    codes = np.stack([B, relabel[A]], 1)  # latent 0 holds b, latent 1 holds a
    nmi = fx.nmi_matrix(codes, GRID)
    np.testing.assert_allclose(nmi, [[0, 1], [1, 0]], atol=1e-12)
    np.testing.assert_allclose(fx.mig(codes, GRID), [1, 1])
    np.testing.assert_allclose(fx.sap(codes, GRID, np.arange(40), np.arange(40)), [0.75, 0.5])


def test_entangled_code():
    # one latent holds both factors (8 categories), a second one is a copy of it
    both = A + 4 * B
    codes = np.stack([both, both], 1)
    nmi = fx.nmi_matrix(codes, GRID)
    # I(z; a) = H(a) = log 4, H(z) = log 8: NMI(a) = 2 log 4 / (log 8 + log 4) = 4/5, NMI(b) = 2 log 2 / (log 8 + log 2)
    np.testing.assert_allclose(nmi, [[0.8, 0.5], [0.8, 0.5]])
    np.testing.assert_allclose(fx.mig(codes, GRID), [0, 0], atol=1e-12)  # two latents know just as much
    np.testing.assert_allclose(fx.sap(codes, GRID, np.arange(40), np.arange(40)), [0, 0])
    # without the copy the gap is the whole entropy: MIG cannot tell one latent holding two factors from alignment
    np.testing.assert_allclose(fx.mig(np.stack([both, np.zeros(40, int)], 1), GRID), [1, 1])


def test_code_without_information():
    codes = np.zeros((40, 2), dtype=int)
    assert fx.nmi_matrix(codes, GRID).max() == 0
    np.testing.assert_allclose(fx.mig(codes, GRID), [0, 0])
    np.testing.assert_allclose(fx.sap(codes, GRID, np.arange(40), np.arange(40)), [0, 0])


def test_dci_on_known_importance_matrices():
    assert fx.dci(np.eye(3)) == pytest.approx((1, 1))  # aligned
    assert fx.dci(np.eye(3)[[2, 0, 1]] * [1, 5, 2]) == pytest.approx((1, 1))  # permuted, any scale
    assert fx.dci(np.ones((3, 3))) == pytest.approx((0, 0))  # every latent matters equally to every factor
    assert fx.dci(np.zeros((3, 3))) == (0, 0)  # no information
    # one latent explains both factors, a second one nothing: not disentangled, but each factor in one latent
    assert fx.dci([[1, 1], [0, 0]]) == pytest.approx((0, 1))
    # latent 0 only factor 0, latent 1 both equally (weight 2 of 3): D = 1/3 * 1 + 2/3 * 0; C_0 = 1 - H_2(1/2, 1/2) = 0
    assert fx.dci([[1, 0], [1, 1]]) == pytest.approx((1 / 3, 0.5))


def test_probe_learns_an_aligned_code_and_leaves_the_other_latent_at_zero():
    x, owner = fx.one_hot_features(GRID, 4)
    assert x.shape == (40, 8) and owner.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    W, b = fx.fit_probe(x, A, 4)
    assert ((x @ W + b).argmax(1) == A).all()
    assert np.abs(W[owner == 1]).max() == 0  # exactly zero: the L1 proximal step keeps the irrelevant latent out
    W, b = fx.fit_probe(x, np.zeros(40, dtype=int), 1)
    assert np.abs(W).max() == 0


def test_score_end_to_end_with_string_labels():
    rng = np.random.default_rng(0)
    n = 2000
    tense = rng.integers(0, 3, n)
    number = rng.integers(0, 2, n)
    names = np.array(["past", "present", "future"])
    # latent 0: tense, latent 1: number, latent 2: noise
    codes = np.stack([tense, number, rng.integers(0, 4, n)], 1)
    feats, owner = fx.one_hot_features(codes, 4)
    out = fx.score(codes, feats, owner, {"tense": names[tense].tolist(), "number": number.tolist()})
    t, m = out["factors"]["tense"], out["factors"]["number"]
    assert (t["best_latent"], m["best_latent"]) == (0, 1)
    assert t["nmi"] == pytest.approx(1) and m["nmi"] == pytest.approx(1)
    assert t["probe_accuracy"] == 1 and m["probe_accuracy"] == 1
    assert 0.25 < t["majority"] < 0.45 and 0.4 < m["majority"] < 0.6
    assert t["mig"] > 0.99 and out["mig"] > 0.99 and out["sap"] > 0.4
    assert out["dci_disentanglement"] > 0.95 and out["dci_completeness"] > 0.95 and out["dci_informativeness"] == 1
    # a code without information: the probe is the majority class, every score 0
    none = fx.score(np.zeros((n, 3), int), fx.one_hot_features(np.zeros((n, 3), int), 4)[0], owner,
                    {"tense": names[tense].tolist()})
    assert none["factors"]["tense"]["probe_accuracy"] == none["factors"]["tense"]["majority"]
    assert none["mig"] == 0 and none["sap"] == 0 and none["nmi_mean"] == 0
    assert (none["dci_disentanglement"], none["dci_completeness"]) == (0, 0)


def test_score_on_gaussian_means():
    rng = np.random.default_rng(1)
    n = 1000
    a = rng.integers(0, 4, n)
    means = np.stack([a + 0.01 * rng.standard_normal(n), rng.standard_normal(n)], 1)  # dim 0 is a, dim 1 noise
    feats, owner = fx.standardized_features(means)
    out = fx.score(fx.discretize(means), feats, owner, {"a": a.tolist()})
    assert out["factors"]["a"]["best_latent"] == 0 and out["factors"]["a"]["mig"] > 0.9
    assert out["dci_disentanglement"] > 0.9


def test_score_refuses_bad_input():
    with pytest.raises(ValueError, match="no factors"):
        fx.score(GRID, GRID.astype(float), np.arange(2), {})
    with pytest.raises(ValueError, match="factor 'a' has 3 labels for 40 codes"):
        fx.score(GRID, GRID.astype(float), np.arange(2), {"a": [1, 2, 3]})
