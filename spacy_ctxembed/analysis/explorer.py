"""The sense explorer: every occurrence of a word, clustered, projected and placed among its neighbours.

For a word (matched on its lowercase form), its occurrences' vectors (the
mean of the chosen layers) are made unit length, so that Euclidean distance
ranks like cosine, and then:

* clustered with k-means (scikit-learn, ``n_init = 10``, the seed as
  ``random_state``) for k = 2 .. max_clusters (at most the number of
  distinct vectors, and below the number of occurrences), keeping the k with
  the highest mean silhouette; fewer than 3 occurrences are one cluster;
* projected to 2-D with PCA, for the picture;
* per cluster, the occurrences nearest its centre are the examples, and the
  one nearest of all is the cluster's representative, whose nearest other
  words in the whole corpus, each by its nearest occurrence (cosine; tokens
  with a vector; words with a letter or digit), say what that sense is like.

A word with more than ``max_occurrences`` occurrences is sampled (with the seed).
"""
from typing import Dict, List, Optional, Tuple

import numpy as np
from numpy.typing import NDArray

from .extract import CorpusLayers


def unit_rows(vectors: NDArray) -> NDArray[np.float64]:
    """Rows scaled to unit length; zero rows stay zero."""
    array = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return np.divide(array, norms, out=np.zeros_like(array), where=norms > 0)


def choose_clusters(
    units: NDArray[np.float64], max_clusters: int = 6, seed: int = 0
) -> Tuple[NDArray[np.int64], Dict[int, float]]:
    """k-means labels for the k (2..max_clusters) with the best silhouette, and every k's silhouette.

    Ties go to the smaller k. k stays below the number of rows and at most
    the number of distinct rows (silhouette needs 2 <= k <= n - 1), so with
    fewer than 3 rows or 2 distinct ones there is one cluster and no silhouette.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    n_distinct = np.unique(units, axis=0).shape[0]
    best_labels = np.zeros(units.shape[0], dtype=np.int64)
    silhouettes: Dict[int, float] = {}
    for k in range(2, min(max_clusters, n_distinct, units.shape[0] - 1) + 1):
        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(units)
        silhouettes[k] = float(silhouette_score(units, labels))
        if silhouettes[k] > max(list(silhouettes.values())[:-1], default=-np.inf):
            best_labels = labels.astype(np.int64)
    return best_labels, silhouettes


def nearest_neighbours(
    units: NDArray[np.float64], query: NDArray[np.float64], n: int, exclude: NDArray[np.bool_],
    groups: Optional[NDArray[np.int64]] = None,
) -> Tuple[NDArray[np.int64], NDArray[np.float64]]:
    """The `n` rows of `units` most cosine-similar to `query` (a unit vector), skipping `exclude`d rows;
    with `groups` (a group id per row: the word), only the most similar row of each group.

    RETURNS: (rows, similarities), most similar first; ties by row order.
    """
    similarity = units @ query
    candidates = np.flatnonzero(~exclude)
    if groups is not None and candidates.size:
        # Each group's best row, in O(rows): its highest similarity, then (np.unique's
        # first index, the candidates being in row order) the lowest row of those.
        best = np.full(int(groups[candidates].max()) + 1, -np.inf)
        np.maximum.at(best, groups[candidates], similarity[candidates])
        candidates = candidates[similarity[candidates] == best[groups[candidates]]]
        candidates = candidates[np.unique(groups[candidates], return_index=True)[1]]
    n = min(n, candidates.size)
    if not n:
        return np.zeros(0, np.int64), similarity[:0]
    # The n-th highest similarity, then every row at or above it (ties at it by row order): O(rows).
    nth = -np.partition(-similarity[candidates], n - 1)[n - 1]
    near = candidates[similarity[candidates] >= nth]
    top = near[np.lexsort((near, -similarity[near]))][:n]
    return top.astype(np.int64), similarity[top]


def explore_word(
    corpus: CorpusLayers, corpus_units: NDArray[np.float64], word: str, layer_ids: List[int], *,
    max_clusters: int = 6, n_examples: int = 3, n_neighbours: int = 5, max_occurrences: Optional[int] = 1000,
    seed: int = 0, parts: Optional[List[str]] = None,
) -> dict:
    """Everything the explorer shows for `word` (see the module doc), as plain numbers and strings.

    corpus_units: (n_tokens, width) unit vectors of the corpus for `layer_ids`
        (``unit_rows(corpus.combined(layer_ids))``), shared by all words.
    parts: the tokens the pipeline's tokenizer splits `word` into, where it
        splits it (for the note of a word that does not occur as one token).
    """
    from sklearn.decomposition import PCA

    result: dict = {"word": word, "layers": list(layer_ids)}
    # Tokens without a vector (no wordpiece fed them) have no sense, and are no
    # one's neighbour: at cosine 0 they would rank above every real token with
    # a negative one.
    without_vector = ~(np.linalg.norm(corpus_units, axis=1) > 0)
    rows = corpus.rows_of(word)
    rows = rows[~without_vector[rows]]
    result["n_occurrences"] = int(rows.size)
    if rows.size == 0:
        result["note"] = f"{word!r} does not occur in the corpus (with a vector)" + (
            f"; it is not one token: the pipeline's tokenizer splits it into {', '.join(map(repr, parts))} "
            "(give one of them)" if parts else "")
        return result
    if max_occurrences is not None and rows.size > max_occurrences:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_occurrences, replace=False))
        result["note"] = f"{word!r}: {max_occurrences} of its {result['n_occurrences']} occurrences, sampled"
    units = corpus_units[rows]
    labels, silhouettes = choose_clusters(units, max_clusters, seed)
    k = int(labels.max()) + 1
    if (units != units[0]).any():
        projection = PCA(n_components=2, svd_solver="full").fit(units)
        points, explained = projection.transform(units), projection.explained_variance_ratio_.tolist()
    else:  # one point, or one vector for every occurrence (a static layer): no variance to share out (PCA: 0/0)
        points, explained = np.zeros((rows.size, 2)), [0.0, 0.0]
    # Neighbours are other words, each by its nearest occurrence: the nearest tokens were
    # mostly a few frequent forms again and again (", , , a a" for "the"). Words without a
    # letter or digit (punctuation, symbols) say nothing of a sense, and are left out.
    wordless = np.array([not any(c.isalnum() for c in w) for w in corpus.words], dtype=bool)
    excluded = (corpus.word_ids == corpus.word_ids[rows[0]]) | without_vector | wordless[corpus.word_ids]
    clusters = []
    for cluster in range(k):
        members = np.flatnonzero(labels == cluster)
        centre = units[members].mean(axis=0)
        closest = members[np.argsort(-(units[members] @ centre), kind="stable")]
        representative = int(rows[closest[0]])
        near, similarity = nearest_neighbours(corpus_units, corpus_units[representative], n_neighbours, excluded,
                                              groups=corpus.word_ids)
        clusters.append({
            "cluster": cluster, "size": int(members.size),
            "examples": [corpus.context(int(rows[i])) for i in closest[:n_examples]],
            "representative": corpus.context(representative),
            "neighbours": [{"word": corpus.words[int(corpus.word_ids[r])], "similarity": float(s),
                            "context": corpus.context(int(r))} for r, s in zip(near, similarity)],
        })
    result.update({
        "k": k, "silhouettes": {str(kk): v for kk, v in silhouettes.items()},
        "pca_explained_variance": [float(v) for v in explained], "clusters": clusters,
        "points": [{"x": float(x), "y": float(y), "cluster": int(c), "context": corpus.context(int(r))}
                   for (x, y), c, r in zip(points, labels, rows)],
    })
    return result
