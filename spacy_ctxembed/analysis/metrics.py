"""How contextual are the vectors? Ethayarajh (2019)'s measures, for one layer.

K. Ethayarajh, "How Contextual are Contextualized Word Representations?
Comparing the Geometry of BERT, ELMo, and GPT-2 Embeddings", EMNLP 2019.

Every function takes the vectors of ONE layer as an ``(n_tokens, dim)`` array
plus, where needed, the word (``word_ids``) or the sentence
(``sentence_ids``) each token belongs to; :func:`layer_report` runs them
over an ``(n_layers, n_tokens, dim)`` stack.

Conventions shared by all functions:

* All arithmetic is in float64, whatever the input dtype.
* Zero vectors are skipped. A token whose vector has zero norm (a token no
  wordpiece fed, see :func:`spacy_ctxembed.pooling.pool_pieces`) has no
  direction, so it takes no part in any cosine, mean or count: it is dropped
  before words are counted against ``min_count``, before a sentence's mean
  is taken and before random pairs are drawn. It never becomes NaN.
* A row with NaN or inf is a ``ValueError``: it has no cosine, and is no zero vector.
* A summary with nothing to summarise (no word reaching ``min_count``, no
  sentence with two non-zero tokens, fewer than two non-zero tokens for
  :func:`anisotropy`) is ``nan``; per-word results are then an empty dict.
* Random choices come from ``rng``: a :class:`numpy.random.Generator`, an
  int seed, or ``None`` for a fixed seed of 0, so results are reproducible.
"""
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike, NDArray

RngLike = Union[np.random.Generator, int, None]

__all__ = [
    "adjusted",
    "anisotropy",
    "intra_sentence_similarity",
    "layer_report",
    "max_explainable_variance",
    "mev_baseline",
    "self_similarity",
]


# ---------------------------------------------------------------- helpers


def _as_rng(rng: RngLike) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(0 if rng is None else rng)


def _check_vectors(vectors: ArrayLike) -> NDArray[np.float64]:
    array = np.asarray(vectors, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"vectors: expected a (n_tokens, dim) array, got shape {array.shape}")
    # A NaN row has a NaN norm, which is not > 0: it would pass for a zero vector and be skipped
    # silently; an inf makes its cosines NaN, and the summary NaN as if nothing were left to average.
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad.size:
        raise ValueError(f"vectors: {bad.size} of {array.shape[0]} rows hold NaN or inf (the first: row {bad[0]}); "
                         "a cosine with them is undefined")
    return array


def _check_ids(ids: ArrayLike, n_tokens: int, name: str) -> NDArray[np.int64]:
    array = np.asarray(ids)
    if array.ndim != 1 or array.shape[0] != n_tokens:
        raise ValueError(f"{name}: expected shape ({n_tokens},), got {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name}: expected integers, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _check_min_count(min_count: int) -> None:
    if min_count < 2:
        raise ValueError(f"min_count = {min_count}: a word needs at least 2 occurrences to have pairs")


def _nonzero(vectors: NDArray[np.float64]) -> Tuple[NDArray[np.bool_], NDArray[np.float64]]:
    """The mask of non-zero rows and the unit vectors of those rows."""
    norms = np.linalg.norm(vectors, axis=1)
    keep = norms > 0
    return keep, vectors[keep] / norms[keep, None]


def _pairwise_mean_cosine(sums: NDArray[np.float64], sq_norms: NDArray[np.float64], n: NDArray[np.int64]) -> NDArray:
    """Mean cosine over ordered pairs i != j of a group of unit vectors.

    With unit vectors u_1..u_n and s = sum u_i,
    sum_{i != j} u_i . u_j = |s|^2 - sum_i |u_i|^2, and there are n (n - 1)
    such pairs. ``sq_norms`` is sum_i |u_i|^2 (1 per vector up to rounding).
    """
    return (np.einsum("ij,ij->i", sums, sums) - sq_norms) / (n * (n - 1))


class _Groups:
    """Non-zero tokens grouped by word, optionally subsampled per word.

    ``order[starts[g]:starts[g] + sizes[g]]`` are the (kept) token rows of
    group ``g``, relative to the non-zero rows; ``counts[g]`` is the number
    of non-zero occurrences before subsampling (what ``min_count`` sees).
    """

    def __init__(self, ids: NDArray[np.int64], max_occurrences: Optional[int], rng: RngLike) -> None:
        self.words, inverse, self.counts = np.unique(ids, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
        if max_occurrences is None:
            order = np.argsort(inverse, kind="stable")
            sizes = self.counts
        else:
            if max_occurrences < 2:
                raise ValueError(f"max_occurrences = {max_occurrences}: expected at least 2")
            # A uniform sample without replacement within every word at once:
            # shuffle within words by a random key, keep each word's first
            # max_occurrences rows.
            order = np.lexsort((_as_rng(rng).random(inverse.size), inverse))
            starts = np.concatenate(([0], np.cumsum(self.counts)[:-1]))
            rank = np.arange(order.size) - starts[inverse[order]]
            order = order[rank < max_occurrences]
            sizes = np.minimum(self.counts, max_occurrences)
        self.order = order
        self.sizes = sizes
        self.starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)

    def sums(self, rows: NDArray[np.float64]) -> NDArray[np.float64]:
        """Per-group sums of ``rows`` (rows of the non-zero tokens)."""
        if self.words.size == 0:
            return np.zeros((0, rows.shape[1]))
        return np.add.reduceat(rows[self.order], self.starts, axis=0)


def _mean_of(values: Dict[int, float]) -> float:
    return float(np.mean(list(values.values()))) if values else float("nan")


# ---------------------------------------------------------------- metrics


def self_similarity(
    vectors: ArrayLike,
    word_ids: ArrayLike,
    min_count: int = 5,
    max_occurrences: Optional[int] = None,
    rng: RngLike = None,
) -> Dict[int, float]:
    """Self-similarity of every word with at least ``min_count`` occurrences.

    Ethayarajh (2019), eq. (1): for a word w occurring at n token positions
    with vectors f_1..f_n (one layer),

        SelfSim(w) = 1 / (n^2 - n) * sum_{i != j} cos(f_i, f_j),

    the mean cosine similarity between its distinct occurrences. 1 for a
    static embedding; the lower, the more context-specific.

    vectors: (n_tokens, dim). word_ids: (n_tokens,) ints, the word of each token.
    min_count: words with fewer non-zero occurrences are left out (>= 2).
    max_occurrences: if given, a word with more occurrences uses a uniform
        random subset of this many (without replacement), drawn with ``rng``.
    RETURNS: {word_id: self-similarity}. Zero vectors are skipped (module doc).

    Computed without pair loops: for unit vectors u_i with sum s,
    sum_{i != j} u_i . u_j = |s|^2 - sum_i |u_i|^2.
    """
    _check_min_count(min_count)
    array = _check_vectors(vectors)
    ids = _check_ids(word_ids, array.shape[0], "word_ids")
    keep, units = _nonzero(array)
    groups = _Groups(ids[keep], max_occurrences, rng)
    eligible = groups.counts >= min_count
    if not eligible.any():
        return {}
    sums = groups.sums(units)[eligible]
    sq_norms = groups.sums(np.einsum("ij,ij->i", units, units)[:, None])[eligible, 0]
    values = _pairwise_mean_cosine(sums, sq_norms, groups.sizes[eligible])
    return dict(zip(groups.words[eligible].tolist(), values.tolist()))


def intra_sentence_similarity(vectors: ArrayLike, sentence_ids: ArrayLike) -> float:
    """Mean intra-sentence similarity.

    Ethayarajh (2019), eq. (2): for a sentence s of n tokens with vectors
    f_1..f_n (one layer) and their mean s_vec = 1/n sum_i f_i,

        IntraSim(s) = 1/n * sum_i cos(s_vec, f_i),

    averaged here over all sentences with at least 2 non-zero tokens.
    Zero vectors are skipped: they enter neither s_vec nor the average, and
    a sentence whose mean vector is exactly zero (no direction) is skipped.

    vectors: (n_tokens, dim). sentence_ids: (n_tokens,) ints, the sentence of
    each token (need not be contiguous).
    RETURNS: the mean over sentences, ``nan`` if no sentence qualifies.
    """
    array = _check_vectors(vectors)
    ids = _check_ids(sentence_ids, array.shape[0], "sentence_ids")
    keep, units = _nonzero(array)
    raw = array[keep]
    groups = _Groups(ids[keep], None, None)
    if groups.words.size == 0:
        return float("nan")
    means = groups.sums(raw) / groups.sizes[:, None]
    mean_norms = np.linalg.norm(means, axis=1)
    usable = (groups.sizes >= 2) & (mean_norms > 0)
    if not usable.any():
        return float("nan")
    mean_units = np.zeros_like(means)
    mean_units[usable] = means[usable] / mean_norms[usable, None]
    # cos(s_vec, f_i) = u_i . s_vec / |s_vec|, for each token at once
    sorted_units = units[groups.order]
    group_of_row = np.repeat(np.arange(groups.words.size), groups.sizes)
    cosines = np.einsum("ij,ij->i", sorted_units, mean_units[group_of_row])
    per_sentence = np.add.reduceat(cosines, groups.starts) / groups.sizes
    return float(per_sentence[usable].mean())


def _first_component_share(stack: NDArray[np.float64]) -> NDArray[np.float64]:
    """sigma_1^2 / sum_i sigma_i^2 for each matrix of a (g, m, dim) stack."""
    singular = np.linalg.svd(stack, compute_uv=False)
    squares = singular**2
    return np.asarray(squares[..., 0] / squares.sum(axis=-1))


def max_explainable_variance(
    vectors: ArrayLike,
    word_ids: ArrayLike,
    min_count: int = 5,
    max_occurrences: Optional[int] = None,
    rng: RngLike = None,
) -> Dict[int, float]:
    """Maximum explainable variance of every word with >= ``min_count`` occurrences.

    Ethayarajh (2019), eq. (3): for a word w with occurrence matrix
    M (n_occurrences x dim, one row per occurrence) whose singular values are
    sigma_1 >= sigma_2 >= ... ,

        MEV(w) = sigma_1^2 / sum_i sigma_i^2,

    the proportion of the variance of w's vectors explained by their first
    principal component; 1 for a static embedding. As in the paper, M is NOT
    centered: the singular values are those of the occurrence matrix itself
    (so this is the share of the uncentered second moment along its top
    direction, not the PCA of the mean-subtracted cloud).

    Arguments and zero-vector handling as :func:`self_similarity` (zero rows
    would not change the singular values, but they are not occurrences for
    ``min_count``). Words with the same number of (kept) occurrences share
    one batched SVD.
    RETURNS: {word_id: MEV}.
    """
    _check_min_count(min_count)
    array = _check_vectors(vectors)
    ids = _check_ids(word_ids, array.shape[0], "word_ids")
    keep, _ = _nonzero(array)
    raw = array[keep]
    groups = _Groups(ids[keep], max_occurrences, rng)
    eligible = np.flatnonzero(groups.counts >= min_count)
    values = np.empty(eligible.size)
    sizes = groups.sizes[eligible]
    for size in np.unique(sizes):
        which = sizes == size
        rows = groups.order[groups.starts[eligible[which], None] + np.arange(size)]
        values[which] = _first_component_share(raw[rows])
    return dict(zip(groups.words[eligible].tolist(), values.tolist()))


def anisotropy(vectors: ArrayLike, n_pairs: Optional[int] = 1000, rng: RngLike = None) -> float:
    """The anisotropy baseline: mean cosine of random pairs of distinct tokens.

    Ethayarajh (2019), section 3.4: the expected cosine similarity between
    the vectors of uniformly randomly sampled words; 0 for isotropic vectors.

    n_pairs: the number of pairs, drawn with replacement as
        ``i = rng.integers(n, size=n_pairs)``,
        ``j = rng.integers(n - 1, size=n_pairs); j += j >= i``
        over the n non-zero tokens (so i != j, and (i, j) uniform over ordered
        pairs of distinct tokens). ``None``: the exact mean over all ordered
        pairs i != j, computed without pair loops.
    Zero vectors are skipped (never drawn). ``nan`` with fewer than 2 left.
    """
    array = _check_vectors(vectors)
    _, units = _nonzero(array)
    n = units.shape[0]
    if n < 2:
        return float("nan")
    if n_pairs is None:
        total = units.sum(axis=0, keepdims=True)
        sq_norms = np.einsum("ij,ij->", units, units)
        return float(_pairwise_mean_cosine(total, np.array([sq_norms]), np.array([n]))[0])
    if n_pairs < 1:
        raise ValueError(f"n_pairs = {n_pairs}: expected at least 1 (or None for all pairs)")
    generator = _as_rng(rng)
    first = generator.integers(n, size=n_pairs)
    second = generator.integers(n - 1, size=n_pairs)
    second += second >= first
    return float(np.einsum("ij,ij->i", units[first], units[second]).mean())


def mev_baseline(vectors: ArrayLike, n_samples: int = 1000, rng: RngLike = None) -> float:
    """The paper's own baseline for MEV (not used by :func:`layer_report`).

    Ethayarajh (2019), section 3.4: the proportion of variance explained by
    the first principal component of uniformly randomly sampled
    representations, i.e. MEV (uncentered, as in
    :func:`max_explainable_variance`) of ``n_samples`` distinct non-zero
    tokens drawn without replacement (all of them if fewer).
    """
    if n_samples < 1:
        raise ValueError(f"n_samples = {n_samples}: expected at least 1")
    array = _check_vectors(vectors)
    keep, _ = _nonzero(array)
    raw = array[keep]
    if raw.shape[0] == 0:
        return float("nan")
    if raw.shape[0] > n_samples:
        raw = raw[_as_rng(rng).choice(raw.shape[0], size=n_samples, replace=False)]
    return float(_first_component_share(raw[None])[0])


def adjusted(value: float, baseline: float) -> float:
    """Anisotropy-adjusted measure: ``value - baseline`` (Ethayarajh 2019, 3.4)."""
    return float(value) - float(baseline)


def layer_report(
    layers: ArrayLike,
    word_ids: ArrayLike,
    sentence_ids: ArrayLike,
    *,
    min_count: int = 5,
    n_pairs: Optional[int] = 1000,
    max_occurrences: Optional[int] = None,
    seed: int = 0,
) -> List[dict]:
    """All measures for every layer of an (n_layers, n_tokens, dim) stack.

    RETURNS: one dict per layer with keys ``layer`` (index), ``anisotropy``
    (:func:`anisotropy`), ``self_similarity`` and ``max_explainable_variance``
    (means over the words with >= ``min_count`` non-zero occurrences),
    ``intra_sentence_similarity``, the three ``*_adjusted`` values
    (raw - that layer's anisotropy, via :func:`adjusted`) and ``n_words``
    (the number of words averaged over).

    All three measures are adjusted by the random-pair cosine, as for
    SelfSim and IntraSim in the paper; the paper adjusts MEV by
    :func:`mev_baseline` instead, which is available separately.

    Every layer draws its random pairs (and subsamples) from a fresh
    ``default_rng(seed)``, so layers with the same zero rows are compared on
    the same pairs and the report is reproducible.
    """
    stack = np.asarray(layers, dtype=np.float64)
    if stack.ndim != 3:
        raise ValueError(f"layers: expected a (n_layers, n_tokens, dim) array, got shape {stack.shape}")
    words = _check_ids(word_ids, stack.shape[1], "word_ids")
    sentences = _check_ids(sentence_ids, stack.shape[1], "sentence_ids")
    report = []
    for index, vectors in enumerate(stack):
        baseline = anisotropy(vectors, n_pairs=n_pairs, rng=np.random.default_rng(seed))
        self_sim = self_similarity(vectors, words, min_count, max_occurrences, np.random.default_rng(seed))
        mev = max_explainable_variance(vectors, words, min_count, max_occurrences, np.random.default_rng(seed))
        raw = {
            "self_similarity": _mean_of(self_sim),
            "intra_sentence_similarity": intra_sentence_similarity(vectors, sentences),
            "max_explainable_variance": _mean_of(mev),
        }
        entry: dict = {"layer": index, "anisotropy": baseline, **raw}
        for name, value in raw.items():
            entry[f"{name}_adjusted"] = adjusted(value, baseline)
        entry["n_words"] = len(self_sim)
        report.append(entry)
    return report
