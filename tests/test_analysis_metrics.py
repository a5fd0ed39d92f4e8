"""Ethayarajh (2019)'s measures against loop references written here in float64.

The references below loop over words, sentences and pairs explicitly and do
not call spacy_ctxembed.analysis; MEV's reference uses the eigenvalues of
the Gram matrix M M^T (= sigma_i^2) rather than an SVD.
"""
import math

import numpy as np
import pytest

from spacy_ctxembed.analysis import (
    adjusted,
    anisotropy,
    intra_sentence_similarity,
    layer_report,
    max_explainable_variance,
    mev_baseline,
    self_similarity,
)

TOL = 1e-9


# ------------------------------------------------------------ references


def ref_cos(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    dot = 0.0
    na = 0.0
    nb = 0.0
    for x, y in zip(a, b):
        dot += x * y
        na += x * x
        nb += y * y
    return dot / (math.sqrt(na) * math.sqrt(nb))


def is_zero(row):
    return all(float(x) == 0.0 for x in row)


def occurrences(vectors, word_ids):
    by_word = {}
    for row, word in zip(vectors, word_ids):
        if not is_zero(row):
            by_word.setdefault(int(word), []).append(np.asarray(row, dtype=np.float64))
    return by_word


def ref_self_similarity(vectors, word_ids, min_count):
    out = {}
    for word, rows in occurrences(vectors, word_ids).items():
        n = len(rows)
        if n < min_count:
            continue
        total = 0.0
        for i in range(n):
            for j in range(n):
                if i != j:
                    total += ref_cos(rows[i], rows[j])
        out[word] = total / (n * n - n)
    return out


def ref_mev(vectors, word_ids, min_count):
    out = {}
    for word, rows in occurrences(vectors, word_ids).items():
        if len(rows) < min_count:
            continue
        matrix = np.array(rows)  # not centered, as in the paper
        eig = np.linalg.eigvalsh(matrix @ matrix.T)  # = squared singular values
        out[word] = max(eig) / sum(eig)
    return out


def ref_intra(vectors, sentence_ids):
    by_sentence = occurrences(vectors, sentence_ids)
    values = []
    for rows in by_sentence.values():
        if len(rows) < 2:
            continue
        mean = sum(rows) / len(rows)
        values.append(sum(ref_cos(row, mean) for row in rows) / len(rows))
    return sum(values) / len(values)


def ref_all_pairs(vectors):
    rows = [np.asarray(r, dtype=np.float64) for r in vectors if not is_zero(r)]
    total = 0.0
    n = len(rows)
    for i in range(n):
        for j in range(n):
            if i != j:
                total += ref_cos(rows[i], rows[j])
    return total / (n * n - n)


def ref_sampled_pairs(vectors, n_pairs, seed):
    """The documented sampling scheme, replayed with its own generator."""
    rows = [np.asarray(r, dtype=np.float64) for r in vectors if not is_zero(r)]
    rng = np.random.default_rng(seed)
    first = rng.integers(len(rows), size=n_pairs)
    second = rng.integers(len(rows) - 1, size=n_pairs)
    total = 0.0
    for i, j in zip(first, second):
        j = j + 1 if j >= i else j
        assert i != j
        total += ref_cos(rows[i], rows[j])
    return total / n_pairs


def assert_dicts_close(got, want, tol=TOL):
    assert sorted(got) == sorted(want)
    for key in want:
        assert abs(got[key] - want[key]) < tol, (key, got[key], want[key])


# ------------------------------------------------------------ data


def random_layer(seed=0, n_tokens=80, dim=6, n_words=9, n_sentences=12, dtype=np.float32):
    """Random vectors with skewed word counts and some zero rows."""
    rng = np.random.default_rng(seed)
    vectors = (rng.standard_normal((n_tokens, dim)) + 0.3).astype(dtype)
    # word w has weight ~ 1/(w+1): some words are rare, some frequent
    weights = 1.0 / np.arange(1, n_words + 1)
    word_ids = rng.choice(n_words, size=n_tokens, p=weights / weights.sum())
    sentence_ids = rng.integers(0, n_sentences, size=n_tokens)
    vectors[rng.choice(n_tokens, size=n_tokens // 8, replace=False)] = 0
    return vectors, word_ids, sentence_ids


def static_layer(seed=1, n_words=5, per_word=7, dim=10):
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((n_words, dim))
    word_ids = np.repeat(np.arange(n_words), per_word)
    rng.shuffle(word_ids)
    return table[word_ids], word_ids


# ------------------------------------------------------------ closed forms


def test_static_vectors_self_similarity_and_mev_are_one():
    vectors, word_ids = static_layer()
    for value in self_similarity(vectors, word_ids, min_count=5).values():
        assert abs(value - 1.0) < TOL
    for value in max_explainable_variance(vectors, word_ids, min_count=5).values():
        assert abs(value - 1.0) < TOL
    # the same with subsampling
    for value in self_similarity(vectors, word_ids, min_count=5, max_occurrences=3, rng=0).values():
        assert abs(value - 1.0) < TOL


def test_isotropic_gaussian_anisotropy_near_zero():
    vectors = np.random.default_rng(0).standard_normal((2000, 300))
    assert abs(anisotropy(vectors, n_pairs=1000, rng=0)) < 0.02
    assert abs(anisotropy(vectors, n_pairs=None)) < 0.02


def test_closed_forms():
    angle = math.pi / 3
    two = np.array([[1.0, 0.0], [math.cos(angle), math.sin(angle)]])
    assert abs(self_similarity(two, [7, 7], min_count=2)[7] - 0.5) < TOL
    # three unit vectors 120 degrees apart: cos = -1/2, M^T M = 3/2 I -> MEV 1/2
    three = np.array([[math.cos(k * 2 * math.pi / 3), math.sin(k * 2 * math.pi / 3)] for k in range(3)])
    assert abs(self_similarity(three, [1, 1, 1], min_count=3)[1] + 0.5) < TOL
    assert abs(max_explainable_variance(three, [1, 1, 1], min_count=3)[1] - 0.5) < TOL
    # v and 2v: one direction -> MEV 1
    assert abs(max_explainable_variance(np.array([[1.0, 2.0], [2.0, 4.0]]), [0, 0], min_count=2)[0] - 1) < TOL
    # k orthogonal unit vectors: s_vec = (1/k) sum e_i, cos(e_i, s_vec) = 1/sqrt(k)
    k = 4
    sentence = np.eye(k)
    assert abs(intra_sentence_similarity(sentence, [0] * k) - 1 / math.sqrt(k)) < TOL
    # plus a one-token sentence (skipped) and a zero row (skipped) in the first sentence
    vectors = np.vstack([sentence, np.zeros((1, k)), np.ones((1, k))])
    assert abs(intra_sentence_similarity(vectors, [0] * (k + 1) + [1]) - 1 / math.sqrt(k)) < TOL
    # two orthogonal unit vectors: every distinct pair has cosine 0
    assert abs(anisotropy(np.eye(2), n_pairs=10, rng=0)) < TOL
    assert abs(anisotropy(np.eye(2), n_pairs=None)) < TOL


def test_mev_is_not_centered():
    # the same nonzero vector plus small noise: uncentered MEV ~ 1, a centered PCA would see only noise
    rng = np.random.default_rng(3)
    vectors = np.ones((20, 5)) + 1e-3 * rng.standard_normal((20, 5))
    assert max_explainable_variance(vectors, np.zeros(20, dtype=int), min_count=5)[0] > 0.999


# ------------------------------------------------------------ against the loop references


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("min_count", [2, 5, 12])
def test_self_similarity_matches_reference(seed, min_count):
    vectors, word_ids, _ = random_layer(seed)
    want = ref_self_similarity(vectors, word_ids, min_count)
    assert want, "the data should leave some words"
    assert_dicts_close(self_similarity(vectors, word_ids, min_count=min_count), want)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("min_count", [2, 5, 12])
def test_mev_matches_reference(seed, min_count):
    vectors, word_ids, _ = random_layer(seed)
    want = ref_mev(vectors, word_ids, min_count)
    assert_dicts_close(max_explainable_variance(vectors, word_ids, min_count=min_count), want)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_intra_sentence_similarity_matches_reference(seed):
    vectors, _, sentence_ids = random_layer(seed)
    assert abs(intra_sentence_similarity(vectors, sentence_ids) - ref_intra(vectors, sentence_ids)) < TOL


@pytest.mark.parametrize("seed", [0, 1])
def test_anisotropy_matches_reference(seed):
    vectors, _, _ = random_layer(seed)
    assert abs(anisotropy(vectors, n_pairs=None) - ref_all_pairs(vectors)) < TOL
    got = anisotropy(vectors, n_pairs=500, rng=np.random.default_rng(seed))
    assert abs(got - ref_sampled_pairs(vectors, 500, seed)) < TOL


def test_min_count_filtering_and_zero_rows():
    vectors = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [2.0, 1.0]])
    word_ids = np.array([0, 0, 0, 1, 1, 2])
    # word 0: two non-zero occurrences (the zero row does not count), word 1: one, word 2: one
    assert self_similarity(vectors, word_ids, min_count=3) == {}
    got = self_similarity(vectors, word_ids, min_count=2)
    assert list(got) == [0] and abs(got[0]) < TOL
    assert list(max_explainable_variance(vectors, word_ids, min_count=2)) == [0]
    assert all(np.isfinite(v) for v in max_explainable_variance(vectors, word_ids, min_count=2).values())
    assert np.isfinite(intra_sentence_similarity(vectors, [0, 0, 0, 0, 1, 1]))
    assert np.isfinite(anisotropy(vectors, n_pairs=100, rng=0))
    assert math.isnan(intra_sentence_similarity(vectors, np.arange(6)))  # no sentence has 2 tokens
    assert math.isnan(anisotropy(np.zeros((4, 3))))


def test_subsampling():
    vectors, word_ids, _ = random_layer(0, n_tokens=200)
    full = self_similarity(vectors, word_ids, min_count=5)
    # max_occurrences above every count: the full result
    assert_dicts_close(self_similarity(vectors, word_ids, min_count=5, max_occurrences=10_000, rng=1), full)
    sub = self_similarity(vectors, word_ids, min_count=5, max_occurrences=4, rng=1)
    assert sorted(sub) == sorted(full)  # min_count sees the counts before subsampling
    assert sub == self_similarity(vectors, word_ids, min_count=5, max_occurrences=4, rng=1)
    assert sub != full
    mev_sub = max_explainable_variance(vectors, word_ids, min_count=5, max_occurrences=4, rng=1)
    assert sorted(mev_sub) == sorted(full)


def test_bad_input():
    vectors, word_ids, _ = random_layer(0)
    with pytest.raises(ValueError, match=r"^word_ids: expected shape \(80,\), got \(79,\)"):
        self_similarity(vectors, word_ids[:-1])
    with pytest.raises(ValueError, match=r"^min_count = 1: a word needs at least 2 occurrences"):
        self_similarity(vectors, word_ids, min_count=1)
    with pytest.raises(ValueError, match=r"^vectors: expected a \(n_tokens, dim\) array, got shape \(6,\)"):
        max_explainable_variance(vectors[0], word_ids)
    with pytest.raises(ValueError, match=r"^layers: expected a \(n_layers, n_tokens, dim\) array, got shape \(80, 6\)"):
        layer_report(vectors, word_ids, word_ids)


def test_adjusted_and_mev_baseline():
    assert adjusted(0.75, 0.25) == 0.5
    vectors = np.random.default_rng(0).standard_normal((400, 50))
    assert 0 < mev_baseline(vectors, n_samples=300, rng=0) < 0.2
    assert mev_baseline(vectors, n_samples=300, rng=0) == mev_baseline(vectors, n_samples=300, rng=0)


# ------------------------------------------------------------ layer_report


KEYS = {
    "layer",
    "anisotropy",
    "self_similarity",
    "intra_sentence_similarity",
    "max_explainable_variance",
    "self_similarity_adjusted",
    "intra_sentence_similarity_adjusted",
    "max_explainable_variance_adjusted",
    "n_words",
}


def make_layers():
    rng = np.random.default_rng(5)
    vectors, word_ids, sentence_ids = random_layer(4, n_tokens=120)
    layers = np.stack([vectors, vectors + 0.5 * rng.standard_normal(vectors.shape), 2 * vectors])
    layers[1][vectors[:, 0] == 0] = 0  # keep the zero rows zero
    return layers, word_ids, sentence_ids


def test_layer_report_keys_and_adjusted():
    layers, word_ids, sentence_ids = make_layers()
    report = layer_report(layers, word_ids, sentence_ids, min_count=4, n_pairs=300, seed=3)
    assert [entry["layer"] for entry in report] == [0, 1, 2]
    for entry, vectors in zip(report, layers):
        assert set(entry) == KEYS
        for name in ("self_similarity", "intra_sentence_similarity", "max_explainable_variance"):
            assert entry[f"{name}_adjusted"] == entry[name] - entry["anisotropy"]
        self_sim = ref_self_similarity(vectors, word_ids, 4)
        assert entry["n_words"] == len(self_sim)
        assert abs(entry["self_similarity"] - np.mean(list(self_sim.values()))) < TOL
        mev = ref_mev(vectors, word_ids, 4)
        assert abs(entry["max_explainable_variance"] - np.mean(list(mev.values()))) < TOL
        assert abs(entry["intra_sentence_similarity"] - ref_intra(vectors, sentence_ids)) < TOL
        assert abs(entry["anisotropy"] - ref_sampled_pairs(vectors, 300, 3)) < TOL
    # scaling a layer changes no cosine
    for key in KEYS - {"layer"}:
        assert abs(report[0][key] - report[2][key]) < TOL


def test_layer_report_deterministic():
    layers, word_ids, sentence_ids = make_layers()
    first = layer_report(layers, word_ids, sentence_ids, min_count=4, n_pairs=200, seed=11)
    again = layer_report(layers, word_ids, sentence_ids, min_count=4, n_pairs=200, seed=11)
    assert first == again
    other = layer_report(layers, word_ids, sentence_ids, min_count=4, n_pairs=200, seed=12)
    assert other[0]["anisotropy"] != first[0]["anisotropy"]
    subsampled = layer_report(layers, word_ids, sentence_ids, min_count=4, max_occurrences=3, seed=11)
    assert subsampled == layer_report(layers, word_ids, sentence_ids, min_count=4, max_occurrences=3, seed=11)


def test_layer_report_subsamples_mev_and_self_similarity_alike():
    """With max_occurrences=2, every word keeps two occurrences; for two unit vectors at cosine c >= 0 the
    MEV is (1 + c) / 2 (eigenvalues of [[1, c], [c, 1]]), so the means obey MEV = (1 + SelfSim) / 2 only if
    both measures see the same two occurrences (one fresh default_rng(seed) each, as documented)."""
    rng = np.random.default_rng(5)
    n_words, per_word = 6, 9
    vectors = rng.random((n_words * per_word, 5)) + 0.05  # positive entries: every cosine > 0
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    word_ids = np.repeat(np.arange(n_words), per_word)
    sentence_ids = np.arange(word_ids.size) // 3
    for seed in range(4):
        (entry,) = layer_report(vectors[None], word_ids, sentence_ids, min_count=2, max_occurrences=2, seed=seed)
        assert entry["n_words"] == n_words
        assert abs(entry["max_explainable_variance"] - (1 + entry["self_similarity"]) / 2) < 1e-9


def test_anisotropy_of_a_single_non_zero_token_is_nan():
    """One non-zero token leaves no pair of distinct tokens: the documented
    result is nan for the sampled and the exact mean alike. Only all-zero
    input (no token at all) was checked before, not the n == 1 boundary."""
    vectors = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert math.isnan(anisotropy(vectors, n_pairs=10, rng=0))
    assert math.isnan(anisotropy(vectors, n_pairs=None))


def test_mev_baseline_samples_distinct_tokens():
    """mev_baseline draws distinct tokens (without replacement). Any two
    distinct rows of the 3x3 identity have MEV exactly 1/2; a repeated row
    would give 1. The earlier test only bounded the value on random data,
    which a sample with repeats also meets."""
    for seed in range(20):
        assert abs(mev_baseline(np.eye(3), n_samples=2, rng=seed) - 0.5) < TOL, seed
    # No sample at all: an IndexError from NumPy ("index 0 is out of bounds") named no setting.
    for n_samples in (0, -1):
        with pytest.raises(ValueError, match=rf"^n_samples = {n_samples}: expected at least 1$"):
            mev_baseline(np.eye(3), n_samples=n_samples)


def test_non_integer_ids_are_refused():
    """Word and sentence ids must be integers: float ids (say 0.5 and 0.7)
    would be truncated to the same word by the int64 cast. Only wrong
    shapes were checked before."""
    vectors, word_ids, sentence_ids = random_layer(0)
    with pytest.raises(ValueError, match=r"^word_ids: expected integers, got dtype float64"):
        self_similarity(vectors, word_ids.astype(np.float64))
    with pytest.raises(ValueError, match=r"^sentence_ids: expected integers"):
        intra_sentence_similarity(vectors, sentence_ids + 0.5)


def test_a_sentence_whose_mean_vector_is_zero_is_skipped():
    """A sentence of v and -v has a zero mean vector (no direction): the doc
    says it is skipped, not counted as similarity 0. The loop reference
    cannot take such a sentence (0/0), so the expected value is the other
    sentence's IntraSim, written out here in float64."""
    other = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    mean = other.mean(axis=0)
    want = np.mean([row @ mean / (np.linalg.norm(row) * np.linalg.norm(mean)) for row in other])
    vectors = np.vstack([[[2.0, -1.0, 0.5], [-2.0, 1.0, -0.5]], other])
    got = intra_sentence_similarity(vectors, [0, 0, 1, 1, 1])
    assert abs(got - want) < TOL


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_vectors_are_refused_not_taken_for_missing_ones(bad):
    """A NaN row has a NaN norm, which is not > 0: it was skipped as a token without a vector, and
    the measures came out as numbers over the other tokens; an inf made the layer's anisotropy NaN,
    which the report explains as "fewer than two tokens have a vector". Each measure now refuses it."""
    vectors, word_ids, sentence_ids = random_layer(0)
    vectors[int(np.flatnonzero(vectors.any(axis=1))[3]), 2] = bad
    refused = r"^vectors: 1 of 80 rows hold NaN or inf"
    for measure in (lambda: self_similarity(vectors, word_ids, min_count=2),
                    lambda: max_explainable_variance(vectors, word_ids, min_count=2),
                    lambda: intra_sentence_similarity(vectors, sentence_ids),
                    lambda: anisotropy(vectors, n_pairs=None), lambda: anisotropy(vectors, n_pairs=50, rng=0),
                    lambda: mev_baseline(vectors),
                    lambda: layer_report(vectors[None], word_ids, sentence_ids, min_count=2)):
        with pytest.raises(ValueError, match=refused):
            measure()


def test_a_sample_of_fewer_than_two_occurrences_is_refused():
    """One occurrence per word has no pair: every self-similarity would be 0/0."""
    vectors, word_ids, _ = random_layer(0)
    for measure in (self_similarity, max_explainable_variance):
        with pytest.raises(ValueError, match=r"^max_occurrences = 1: expected at least 2$"):
            measure(vectors, word_ids, min_count=2, max_occurrences=1, rng=0)


def test_anisotropy_of_no_pairs_is_refused():
    vectors, _, _ = random_layer(0)
    with pytest.raises(ValueError, match=r"^n_pairs = 0: expected at least 1 \(or None for all pairs\)$"):
        anisotropy(vectors, n_pairs=0, rng=0)


def test_measures_of_tokens_without_any_vector_are_nan():
    """All-zero rows are tokens without a vector: no sentence and no sample has any."""
    zeros = np.zeros((4, 3))
    assert math.isnan(intra_sentence_similarity(zeros, [0, 0, 1, 1]))
    assert math.isnan(mev_baseline(zeros, n_samples=2, rng=0))


def test_mev_baseline_of_fewer_tokens_than_samples_uses_them_all():
    """With fewer non-zero tokens than n_samples, every one is used (zero rows left out): the
    reference is the top eigenvalue's share of the Gram matrix of those rows, in float64."""
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((6, 4))
    vectors[[1, 4]] = 0.0
    rows = vectors[[0, 2, 3, 5]]
    eig = np.linalg.eigvalsh(rows @ rows.T)
    assert abs(mev_baseline(vectors, n_samples=1000, rng=0) - eig.max() / eig.sum()) < TOL
