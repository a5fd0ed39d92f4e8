"""The sense explorer: cluster choice, nearest neighbours and a word's senses on constructed vectors,
against sklearn and brute force written here."""
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score

from spacy_ctxembed.analysis import CorpusLayers, choose_clusters, explore_word, nearest_neighbours, unit_rows
from spacy_ctxembed.analysis.report import _explorer_html, explorer_figure, explorer_png_name


def blobs(n_per, centres, spread, rng):
    points = np.concatenate([c + spread * rng.normal(size=(n_per, len(c))) for c in centres])
    truth = np.repeat(np.arange(len(centres)), n_per)
    return points, truth


def independent_choice(units, max_k, seed):
    """k = 2..max_k by the best silhouette (first best on ties), as sklearn computes them."""
    scores = {}
    for k in range(2, max_k + 1):
        scores[k] = silhouette_score(units, KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(units))
    best = max(scores, key=lambda k: (scores[k], -k))
    return best, scores


@pytest.mark.parametrize("n_senses", [2, 3, 4])
def test_cluster_choice_matches_sklearn(n_senses):
    rng = np.random.default_rng(n_senses)
    centres = np.eye(8)[:n_senses] * 3
    units = unit_rows(blobs(12, centres, 0.3, rng)[0])
    labels, silhouettes = choose_clusters(units, max_clusters=6, seed=0)
    best, expected = independent_choice(units, 6, 0)
    assert int(labels.max()) + 1 == best == n_senses
    assert silhouettes == pytest.approx(expected)
    assert adjusted_rand_score(np.repeat(np.arange(n_senses), 12), labels) == 1.0


def test_too_few_or_identical_rows_are_one_cluster():
    for units in (np.eye(3)[:2], np.tile(np.eye(3)[:1], (5, 1))):
        labels, silhouettes = choose_clusters(units)
        assert labels.tolist() == [0] * len(units) and silhouettes == {}


def test_unit_rows_keeps_zero_rows():
    out = unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


def test_nearest_neighbours_match_brute_force():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 6))
    units = unit_rows(vectors)
    exclude = np.zeros(50, bool)
    exclude[[3, 7, 11]] = True
    rows, sims = nearest_neighbours(units, units[3], 5, exclude)
    cosines = [(float(vectors[3] @ vectors[i] / np.linalg.norm(vectors[3]) / np.linalg.norm(vectors[i])), i)
               for i in range(50) if i not in (3, 7, 11)]
    expected = sorted(cosines, reverse=True)[:5]
    assert rows.tolist() == [i for _, i in expected]
    np.testing.assert_allclose(sims, [c for c, _ in expected], atol=1e-12)


def test_nearest_neighbours_with_fewer_rows_than_asked():
    units = unit_rows(np.eye(3))
    rows, _ = nearest_neighbours(units, units[0], 10, np.array([True, False, False]))
    assert sorted(rows.tolist()) == [1, 2]


def _corpus():
    """Twenty sentences 'x ran y': 'ran' points one of two ways by sense; 'walked' sits near the first
    sense and 'conducted' near the second."""
    rng = np.random.default_rng(1)
    words = ["ran", "walked", "conducted", "the"]
    senses = np.array([0, 1] * 10)
    sense_dirs = np.eye(6)[:2] * 4
    rows, word_ids, sentence_ids, texts, starts, ends, doc_ids = [], [], [], [], [], [], []
    for s, sense in enumerate(senses):
        text = f"the ran {'walked' if sense == 0 else 'conducted'}"
        texts.append(text)
        for word, start in zip(text.split(), (0, 4, 8)):
            direction = {"ran": sense_dirs[sense], "walked": sense_dirs[0], "conducted": sense_dirs[1],
                         "the": np.eye(6)[5] * 4}[word]
            rows.append(direction + 0.3 * rng.normal(size=6))
            word_ids.append(words.index(word))
            sentence_ids.append(s)
            doc_ids.append(s)
            starts.append(start)
            ends.append(start + len(word))
    vectors = np.array(rows, dtype=np.float32)
    corpus = CorpusLayers(
        layers=np.stack([vectors, -vectors]), layer_ids=[0, 1], word_ids=np.array(word_ids), words=words,
        sentence_ids=np.array(sentence_ids), doc_ids=np.array(doc_ids), starts=np.array(starts),
        ends=np.array(ends), texts=texts)
    return corpus, senses


def test_explore_word_finds_the_senses():
    corpus, senses = _corpus()
    units = unit_rows(corpus.combined([0]))
    result = explore_word(corpus, units, "Ran", [0], n_neighbours=3, n_examples=2)
    assert result["n_occurrences"] == 20 and result["k"] == 2
    labels = np.array([p["cluster"] for p in result["points"]])
    assert adjusted_rand_score(senses, labels) == 1.0
    nearest = set()
    for cluster in result["clusters"]:
        words = [n["word"] for n in cluster["neighbours"]]
        assert sorted(words) == ["conducted", "the", "walked"]  # other words, each once
        nearest.add(words[0])
        assert all("[ran]" in example for example in cluster["examples"]) and len(cluster["examples"]) == 2
    assert nearest == {"walked", "conducted"}  # the word of each sense first
    assert result["points"][0]["context"] == "the [ran] walked"
    assert len(result["pca_explained_variance"]) == 2


def test_explore_missing_word_is_a_note():
    corpus, _ = _corpus()
    result = explore_word(corpus, unit_rows(corpus.combined([0, 1])), "zebra", [0, 1])
    assert result["n_occurrences"] == 0 and "does not occur" in result["note"] and "clusters" not in result


def test_a_word_split_into_tokens_says_so_in_its_note():
    corpus, _ = _corpus()
    units = unit_rows(corpus.combined([0]))
    result = explore_word(corpus, units, "don't", [0], parts=["do", "n't"])
    assert result["n_occurrences"] == 0 and result["note"].endswith(
        "it is not one token: the pipeline's tokenizer splits it into 'do', \"n't\" (give one of them)")
    assert explore_word(corpus, units, "zebra", [0])["note"] == "'zebra' does not occur in the corpus (with a vector)"


def test_tokens_without_a_vector_are_no_ones_neighbours():
    """A token no wordpiece fed has a zero vector: at cosine 0 it ranked above every real token with a
    negative cosine, and was listed as a neighbour. Here every 'the' points away from both senses of 'ran',
    and 5 of them have no vector; every other word is asked for: each comes back by its nearest token with
    a vector, by cosine (brute force written here)."""
    corpus, _ = _corpus()
    the_rows = np.flatnonzero(corpus.word_ids == corpus.words.index("the"))
    away = -np.array([1.0, 1.0, 0, 0, 0, 0]) * 3 + 0.3 * np.random.default_rng(5).normal(size=(len(the_rows), 6))
    corpus.layers[:, the_rows] = away.astype(np.float32)
    zeroed = the_rows[:5]
    corpus.layers[:, zeroed] = 0.0
    vectors = corpus.combined([0]).astype(np.float64)
    ran_rows = corpus.rows_of("ran")
    units = unit_rows(corpus.combined([0]))
    result = explore_word(corpus, units, "ran", [0], n_neighbours=100)

    def brute_force(query_row):
        query = vectors[query_row] / np.linalg.norm(vectors[query_row])
        best = {}
        for r in range(len(vectors)):
            word = corpus.words[corpus.word_ids[r]]
            if word != "ran" and r not in zeroed:
                best[word] = max(best.get(word, -np.inf), float(vectors[r] @ query / np.linalg.norm(vectors[r])))
        return sorted(((s, w) for w, s in best.items()), reverse=True)

    candidates = [brute_force(r) for r in ran_rows]  # (contexts repeat: any 'ran' may be the centre)
    for cluster in result["clusters"]:
        got = [(n["similarity"], n["word"]) for n in cluster["neighbours"]]
        assert len(got) == 3  # walked, conducted, the: one each
        assert any([w for _, w in got] == [w for _, w in expected]
                   and np.allclose([s for s, _ in got], [s for s, _ in expected], atol=1e-6)
                   for expected in candidates)
        assert all(s != 0.0 for s, _ in got)


def test_sampled_word_note_names_the_word():
    corpus, _ = _corpus()
    result = explore_word(corpus, unit_rows(corpus.combined([0])), "ran", [0], max_occurrences=8, seed=3)
    assert result["note"] == "'ran': 8 of its 20 occurrences, sampled"
    assert result["n_occurrences"] == 20 and len(result["points"]) == 8
    assert all("[ran]" in point["context"] for point in result["points"])


@pytest.mark.parametrize("max_occurrences, shown", [(8, "8 of 20 occurrences (sampled)"), (None, "20 occurrences")])
def test_plot_and_report_say_how_many_occurrences_they_show(max_occurrences, shown):
    corpus, senses = _corpus()
    explored = explore_word(corpus, unit_rows(corpus.combined([0])), "ran", [0], max_occurrences=max_occurrences)
    assert len(explored["points"]) == (max_occurrences or senses.size)  # 20 "ran" in the corpus, by construction
    title = explorer_figure(explored, "tiny").axes[0].get_title()
    assert title.startswith(f"'ran': {shown}, layers [0]")
    pipeline = {"label": "tiny", "explorer": {"ran": explored}}
    page = _explorer_html(pipeline, 0, {explorer_png_name(0, 0, "ran"): b"png"})
    assert f"<p>{shown}, layers" in page


def test_combined_layers_are_the_mean():
    corpus, _ = _corpus()
    np.testing.assert_allclose(corpus.combined([0, 1]), 0.0, atol=1e-7)  # layer 1 = -layer 0
    np.testing.assert_allclose(corpus.combined([1]), corpus.layers[1])


def _one_word_corpus(n=12, seed=2):
    """n docs 'aNN w': 'w' points one of two ways (half each), with noise; every context is distinct."""
    rng = np.random.default_rng(seed)
    texts = [f"a{i:02d} w" for i in range(n)]
    rows = []
    for i in range(n):
        rows.append(rng.normal(size=5))  # aNN
        rows.append(np.eye(5)[i % 2] * 3 + rng.normal(scale=0.2 + 0.05 * i, size=5))  # w
    vectors = np.array(rows, dtype=np.float32)
    corpus = CorpusLayers(
        layers=vectors[None], layer_ids=[0], word_ids=np.tile([1, 0], n), words=["w", "a"],
        sentence_ids=np.repeat(np.arange(n), 2), doc_ids=np.repeat(np.arange(n), 2),
        starts=np.tile([0, 4], n), ends=np.tile([3, 5], n), texts=texts)
    return corpus


def test_nearest_neighbours_of_groups_are_each_groups_nearest_row():
    """With groups (the words), one row each: its most similar, by brute force written here."""
    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(60, 5))
    units = unit_rows(vectors)
    groups = rng.integers(0, 9, size=60)
    exclude = groups == 2
    rows, sims = nearest_neighbours(units, units[0], 4, exclude, groups=groups)
    cosine = vectors @ vectors[0] / np.linalg.norm(vectors, axis=1) / np.linalg.norm(vectors[0])
    best = {}
    for r in range(60):
        if groups[r] != 2 and (groups[r] not in best or cosine[r] > cosine[best[groups[r]]]):
            best[groups[r]] = r
    expected = sorted(best.values(), key=lambda r: -cosine[r])[:4]
    assert rows.tolist() == expected and len(set(groups[rows])) == 4
    np.testing.assert_allclose(sims, cosine[expected], atol=1e-12)


def test_words_without_a_letter_or_digit_are_no_ones_neighbours():
    """Punctuation sits near everything in a contextual space (", , , a a" were the nearest tokens
    of "the" in UD EWT): words without a letter or digit are not shown as neighbours."""
    corpus, _ = _corpus()
    corpus.words[corpus.words.index("walked")] = "--"
    result = explore_word(corpus, unit_rows(corpus.combined([0])), "ran", [0], n_neighbours=10)
    for cluster in result["clusters"]:
        assert sorted(n["word"] for n in cluster["neighbours"]) == ["conducted", "the"]


def test_nearest_neighbours_break_ties_by_row_order():
    units = unit_rows(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [2.0, 0.0], [0.6, 0.8]]))
    rows, sims = nearest_neighbours(units, np.array([1.0, 0.0]), 4, np.zeros(5, bool))
    assert rows.tolist() == [0, 2, 3, 4]
    np.testing.assert_allclose(sims, [1.0, 1.0, 1.0, 0.6])


def test_examples_and_representative_are_the_occurrences_nearest_their_clusters_centre():
    corpus = _one_word_corpus()
    w_rows = np.flatnonzero(corpus.word_ids == 0)
    vectors = corpus.layers[0].astype(np.float64)
    result = explore_word(corpus, unit_rows(corpus.layers[0]), "w", [0], n_examples=3)
    assert result["k"] == 2
    contexts = [corpus.context(int(r)) for r in w_rows]
    assert len(set(contexts)) == len(contexts)
    for cluster in result["clusters"]:
        members = [w_rows[contexts.index(p["context"])] for p in result["points"] if p["cluster"] == cluster["cluster"]]
        units = vectors[members] / np.linalg.norm(vectors[members], axis=1, keepdims=True)
        centre = units.mean(axis=0)
        nearest = [int(members[i]) for i in np.argsort(-(units @ centre), kind="stable")]
        assert cluster["examples"] == [corpus.context(r) for r in nearest[:3]]
        assert cluster["representative"] == corpus.context(nearest[0])


def test_occurrences_without_a_vector_are_not_explored():
    corpus = _one_word_corpus()
    w_rows = np.flatnonzero(corpus.word_ids == 0)
    corpus.layers[:, w_rows[[3, 8]]] = 0.0
    result = explore_word(corpus, unit_rows(corpus.layers[0]), "w", [0])
    assert result["n_occurrences"] == len(w_rows) - 2 and len(result["points"]) == len(w_rows) - 2
    shown = {p["context"] for p in result["points"]}
    assert not shown & {corpus.context(int(r)) for r in w_rows[[3, 8]]}


def test_pca_is_fitted_on_the_words_occurrences():
    corpus = _one_word_corpus()
    vectors = corpus.layers[0, corpus.word_ids == 0].astype(np.float64)
    units = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    singular = np.linalg.svd(units - units.mean(axis=0), compute_uv=False)
    expected = (singular**2 / (singular**2).sum())[:2]
    result = explore_word(corpus, unit_rows(corpus.layers[0]), "w", [0])
    np.testing.assert_allclose(result["pca_explained_variance"], expected, rtol=1e-6)


def test_combined_layers_are_the_mean_of_random_layers():
    rng = np.random.default_rng(0)
    corpus = _one_word_corpus()
    corpus.layers = rng.normal(size=(3, corpus.n_tokens, 5)).astype(np.float32)
    corpus.layer_ids = [0, 1, 2]
    expected = corpus.layers[[0, 2]].astype(np.float64).sum(axis=0) / 2
    np.testing.assert_allclose(corpus.combined([0, 2]), expected, rtol=1e-6, atol=1e-7)


def test_embed_corpus_tables_and_contexts_follow_the_docs_tokens(monkeypatch):
    """embed_corpus's per-token tables were only seen through whole pipelines
    (numbers that a token end off by one, or a context cut at the wrong place,
    did not change). Here the pipeline run is replaced by the docs themselves
    and the stored layers by known arrays, and every table is checked against
    the docs' own tokens (Token.idx, Token.text, the given sentence starts):
    sentences numbered across docs, an empty doc skipped, a doc without
    boundaries one sentence, and contexts cut at the sentence and at `chars`."""
    import spacy
    from spacy.tokens import Doc

    from spacy_ctxembed.analysis import embed_corpus, extract

    nlp = spacy.blank("en")
    vocab = nlp.vocab
    words = ["The", "Bank", "is", "shut", ".", "A", "bank", "opened", "."]
    first = Doc(vocab, words=words, spaces=[True, True, True, False, True, True, True, False, False],
                sent_starts=[True, False, False, False, False, True, False, False, False])
    second = Doc(vocab, words=["bank", "notes"])  # no sentence boundaries: one sentence
    docs = [first, Doc(vocab, words=[]), second]
    rng = np.random.default_rng(0)
    stored = {id(doc): rng.standard_normal((2, len(doc), 3)).astype(np.float32) for doc in docs}
    monkeypatch.setattr(extract, "run_docs", lambda nlp, name, docs, batch_size: iter(docs))
    monkeypatch.setattr(extract, "doc_layers", lambda doc, name: stored[id(doc)])

    corpus = embed_corpus(nlp, "fake", docs, [3, 5])
    tokens = [t for doc in (first, second) for t in doc]
    np.testing.assert_array_equal(corpus.layers, np.concatenate([stored[id(first)], stored[id(second)]], axis=1))
    assert corpus.layer_ids == [3, 5]
    assert [corpus.words[i] for i in corpus.word_ids] == [t.text.lower() for t in tokens]
    assert corpus.sentence_ids.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert corpus.doc_ids.tolist() == [0] * 9 + [1] * 2
    assert corpus.starts.tolist() == [t.idx for t in tokens]
    assert corpus.ends.tolist() == [t.idx + len(t.text) for t in tokens]
    assert corpus.texts == [first.text, second.text]
    assert corpus.rows_of("BANK").tolist() == [1, 6, 9]
    # "The Bank is shut. A bank opened.": the second sentence runs from "A" (18) to "." (32)
    assert corpus.context(6) == "A [bank] opened."
    assert corpus.context(6, chars=2) == "A [bank] o…"  # 20 - 2 is the sentence start exactly: nothing cut there
    assert corpus.context(6, chars=5) == "A [bank] open…"  # never past the sentence start
    assert corpus.context(1, chars=3) == "…he [Bank] is…"
    assert corpus.context(1, chars=4) == "The [Bank] is…"
    assert corpus.context(9) == "[bank] notes"


def test_explorer_plot_cuts_long_example_contexts_to_110_characters():
    """An example context under the explorer plot is at most 110 characters:
    a longer one keeps its first 109 and ends in an ellipsis, a shorter one
    is shown whole. Not seen before: the constructed contexts were short."""
    corpus, _ = _corpus()
    explored = explore_word(corpus, unit_rows(corpus.combined([0])), "ran", [0])
    long_example, short_example = "x" * 150, "y" * 110
    explored["clusters"][0]["examples"] = [long_example, short_example]
    texts = [t.get_text() for t in explorer_figure(explored, "tiny").axes[1].texts]
    assert "    " + "x" * 109 + "…" in texts
    assert "    " + short_example in texts


def test_ties_between_cluster_counts_go_to_the_smaller_k():
    """Four directions, one of them twice: k = 3 ({the pair}, {one}, {the other two}) and k = 4
    both score 0.4 by hand (the pair's two rows 1 each, every other row 0, over 5 rows)."""
    units = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [1.0, 0.0]])
    labels, silhouettes = choose_clusters(units, max_clusters=6, seed=0)
    assert silhouettes[3] == pytest.approx(0.4) and silhouettes[4] == pytest.approx(0.4)
    assert silhouettes[3] == silhouettes[4] == max(silhouettes.values())  # the premise: an exact tie
    assert int(labels.max()) + 1 == 3
    assert labels[0] == labels[4] and len(set(labels.tolist())) == 3


def test_a_group_whose_rows_tie_is_listed_once_at_its_first_row():
    """A sentence that occurs twice gives its words identical vectors: the word is one neighbour, not two."""
    units = unit_rows(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]]))
    rows, sims = nearest_neighbours(units, np.array([1.0, 0.0]), 3, np.zeros(4, bool), groups=np.array([0, 1, 0, 2]))
    assert rows.tolist() == [0, 3, 1]
    np.testing.assert_allclose(sims, [1.0, 0.6, 0.0], atol=1e-12)


def test_sampled_occurrences_are_distinct_and_in_corpus_order():
    corpus = _one_word_corpus()  # 12 occurrences of 'w', contexts 'a00 [w]' .. 'a11 [w]'
    result = explore_word(corpus, unit_rows(corpus.layers[0]), "w", [0], max_occurrences=10, seed=0)
    contexts = [p["context"] for p in result["points"]]
    assert len(contexts) == 10 and len(set(contexts)) == 10
    assert contexts == sorted(contexts)
    assert set(contexts) <= {f"a{i:02d} [w]" for i in range(12)}


def test_a_word_with_exactly_max_occurrences_is_not_sampled():
    corpus = _one_word_corpus()
    result = explore_word(corpus, unit_rows(corpus.layers[0]), "w", [0], max_occurrences=12)
    assert "note" not in result
    assert [p["context"] for p in result["points"]] == [f"a{i:02d} [w]" for i in range(12)]


def test_the_seed_chooses_the_sample():
    corpus = _one_word_corpus()
    units = unit_rows(corpus.layers[0])

    def sample(seed):
        return [p["context"] for p in explore_word(corpus, units, "w", [0], max_clusters=2, max_occurrences=6,
                                                             seed=seed)["points"]]

    assert sample(3) == sample(3)
    assert sample(3) != sample(4)


def test_the_seed_reaches_the_clustering():
    """On occurrences without any structure k-means' starts decide the clusters; the explorer's are the
    seed's, as sklearn computes them here (the premise: another seed gives other scores)."""
    corpus = _one_word_corpus(n=20)
    w_rows = np.flatnonzero(corpus.word_ids == 0)
    corpus.layers[0, w_rows] = np.random.default_rng(7).normal(size=(20, 5)).astype(np.float32)
    units = unit_rows(corpus.layers[0])
    best, expected = independent_choice(units[w_rows], 4, 1)
    assert expected != pytest.approx(independent_choice(units[w_rows], 4, 0)[1])  # the premise
    result = explore_word(corpus, units, "w", [0], max_clusters=4, seed=1)
    assert result["k"] == best
    assert result["silhouettes"] == pytest.approx({str(k): v for k, v in expected.items()})


def test_two_occurrences_are_projected():
    """Two points: PCA's first axis runs through both, at half their distance either side of their mean;
    it explains all the variance."""
    corpus = _one_word_corpus(n=2)
    vectors = corpus.layers[0, corpus.word_ids == 0].astype(np.float64)
    units = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    half = np.linalg.norm(units[0] - units[1]) / 2
    result = explore_word(corpus, unit_rows(corpus.layers[0]), "w", [0])
    assert result["k"] == 1
    np.testing.assert_allclose(result["pca_explained_variance"], [1.0, 0.0], atol=1e-9)
    np.testing.assert_allclose([abs(p["x"]) for p in result["points"]], [half, half], rtol=1e-9)
    np.testing.assert_allclose([p["y"] for p in result["points"]], [0.0, 0.0], atol=1e-9)
    assert result["points"][0]["x"] == pytest.approx(-result["points"][1]["x"])


def test_each_clusters_size_is_its_number_of_occurrences():
    corpus, senses = _corpus()  # 20 'ran', 10 of each sense
    result = explore_word(corpus, unit_rows(corpus.combined([0])), "ran", [0])
    assert sorted(cluster["size"] for cluster in result["clusters"]) == [10, 10]


def test_occurrences_with_one_vector_are_one_point_explaining_no_variance():
    """In a static layer every occurrence of a word has the same vector: PCA's explained-variance ratio
    is 0/0 there, which came out as NaN (null in analysis.json, "nan%" on the plot's axes)."""
    corpus = _one_word_corpus(n=4)
    corpus.layers[0, corpus.word_ids == 0] = [1.0, 2.0, 0.0, 0.0, 0.0]
    result = explore_word(corpus, unit_rows(corpus.layers[0]), "w", [0])
    assert result["k"] == 1 and result["n_occurrences"] == 4
    assert result["pca_explained_variance"] == [0.0, 0.0]
    assert [(p["x"], p["y"]) for p in result["points"]] == [(0.0, 0.0)] * 4


def test_a_word_with_no_other_word_beside_it_has_no_neighbours():
    """A corpus of one word and punctuation (\"ran ran !\" twice): every other token is left out of the
    neighbours (the word itself; "!" has no letter), so each sense lists none, rather than failing."""
    rng = np.random.default_rng(3)
    texts = ["ran ran !", "ran ran !"]
    words = ["ran", "!"]
    word_ids = np.array([0, 0, 1, 0, 0, 1])
    vectors = rng.normal(size=(6, 4)).astype(np.float32)
    corpus = CorpusLayers(
        layers=vectors[None], layer_ids=[0], word_ids=word_ids, words=words, sentence_ids=np.array([0, 0, 0, 1, 1, 1]),
        doc_ids=np.array([0, 0, 0, 1, 1, 1]), starts=np.array([0, 4, 8] * 2), ends=np.array([3, 7, 9] * 2), texts=texts)
    result = explore_word(corpus, unit_rows(corpus.combined([0])), "ran", [0], max_clusters=2)
    assert result["n_occurrences"] == 4
    assert result["clusters"] and all(cluster["neighbours"] == [] for cluster in result["clusters"])
    assert sum(cluster["size"] for cluster in result["clusters"]) == 4
