"""WiC sense separation: thresholds, cross-validation, the fitted scalar mix, the Gram cosines and the
recommendation, each checked against an independent computation written here (brute force, sklearn's own
helpers, plain NumPy); and that the evaluation labels decide nothing."""
import json
import math
import re
import warnings

import numpy as np
import pytest
import spacy
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from thinc.api import Config

from spacy_ctxembed.analysis import (
    AnalysisInputError,
    CosineLogisticRule,
    ScalarMixRule,
    ThresholdRule,
    WicGrams,
    candidate_sets,
    config_snippet,
    evaluate_senses,
    fit_scalar_mix,
    fit_threshold,
    folds,
    held_out,
    held_out_accuracy,
    python_snippet,
    read_wic,
    recommend,
)
from spacy_ctxembed.analysis.report import jsonable

from .analysis_support import wic_pairs


def brute_threshold(scores, labels):
    """Every midpoint between distinct scores, and +-inf, tried in increasing order; the first best wins."""
    values = sorted(set(float(s) for s in scores))
    candidates = [-math.inf] + [(a + b) / 2 for a, b in zip(values, values[1:])] + [math.inf]
    best, best_right = None, -1
    for t in candidates:
        right = sum(bool(s >= t) == bool(y) for s, y in zip(scores, labels))
        if right > best_right:
            best, best_right = t, right
    return best, best_right / len(scores)


def accuracy(scores, labels, t):
    return float(np.mean((np.asarray(scores) >= t) == np.asarray(labels)))


def test_threshold_known_answers():
    assert fit_threshold(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 0, 1, 1], bool)) == pytest.approx(0.25)
    assert fit_threshold(np.array([0.4, 0.1, 0.3, 0.2]), np.array([1, 0, 1, 0], bool)) == pytest.approx(0.25)
    assert fit_threshold(np.array([0.3, 0.5]), np.array([1, 1], bool)) == -math.inf  # everything T
    assert fit_threshold(np.array([0.3, 0.5]), np.array([0, 0], bool)) == math.inf  # everything F
    # higher cosine for F pairs: the best a ">=" rule can do is call everything one label
    assert accuracy([0.9, 0.8, 0.1], [0, 0, 1], fit_threshold(np.array([0.9, 0.8, 0.1]), np.array([0, 0, 1], bool))) \
        == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", range(8))
def test_threshold_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(60) < 0.4
    scores = np.round(rng.normal(labels * 0.3, 0.3), 1)  # rounding makes ties
    expected, expected_accuracy = brute_threshold(scores, labels)
    fitted = fit_threshold(scores, labels)
    assert fitted == pytest.approx(expected, abs=1e-12)
    assert accuracy(scores, labels, fitted) == pytest.approx(expected_accuracy)


def test_threshold_between_adjacent_floats():
    low = 0.5
    high = np.nextafter(low, 1.0)  # no float lies strictly between
    t = fit_threshold(np.array([low, high]), np.array([0, 1], bool))
    assert accuracy([low, high], [0, 1], t) == 1.0


def test_cross_validated_threshold_matches_independent_loop():
    rng = np.random.default_rng(1)
    labels = rng.random(101) < 0.5
    scores = rng.normal(labels * 0.5, 0.6)
    splits = folds(labels, 5, seed=3)
    got = held_out_accuracy(ThresholdRule(), scores, labels, splits=splits)
    right = 0
    for train, test in StratifiedKFold(n_splits=5, shuffle=True, random_state=3).split(scores[:, None], labels):
        t, _ = brute_threshold(scores[train], labels[train])
        right += int(((scores[test] >= t) == labels[test]).sum())
    assert got == pytest.approx(right / labels.size)


def test_held_out_threshold_on_evaluation_pairs():
    rng = np.random.default_rng(2)
    y_train, y_eval = rng.random(80) < 0.5, rng.random(50) < 0.5
    x_train, x_eval = rng.normal(y_train * 1.0, 0.7), rng.normal(y_eval * 1.0, 0.7)
    t, _ = brute_threshold(x_train, y_train)
    got = held_out_accuracy(ThresholdRule(), x_train, y_train, x_eval=x_eval, y_eval=y_eval)
    assert got == pytest.approx(accuracy(x_eval, y_eval, t))


def test_logistic_regression_cross_validation_matches_sklearn():
    rng = np.random.default_rng(4)
    labels = rng.random(120) < 0.5
    x = rng.normal(0, 1, (120, 4)) + labels[:, None] * np.array([0.0, 0.3, 1.0, 0.1])
    got = held_out_accuracy(CosineLogisticRule(seed=0), x, labels, splits=folds(labels, 4, seed=7))
    estimator = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=0))
    predicted = cross_val_predict(estimator, x, labels, cv=StratifiedKFold(4, shuffle=True, random_state=7))
    assert got == pytest.approx(float(np.mean(predicted == labels)))


def test_folds_refuse_too_few_pairs():
    with pytest.raises(AnalysisInputError, match=r"--folds 5: expected 2 \.\. 3 .*3 T and 10 F"):
        folds(np.array([1] * 3 + [0] * 10, bool), 5, seed=0)


@pytest.mark.parametrize("share_same, named", [(1 / 3, "all_different"), (2 / 3, "all_same")])
def test_thresholds_that_call_every_pair_one_label_are_named(share_same, named):
    """A layer whose cosines are all equal can only call every pair the majority label: its threshold is
    +-inf, which analysis.json names instead of writing null (JSON has no infinity)."""
    rng = np.random.default_rng(11)
    n = 18
    labels = np.arange(n) < round(share_same * n)
    targets = rng.normal(size=(2 * n, 2, 6)).astype(np.float32)
    targets[n:, 0] = targets[:n, 0]  # layer 0: both sides the same vector, cosine 1 for every pair
    result = evaluate_senses(WicGrams.from_targets(targets), labels, [0, 1], n_folds=3, seed=0)
    expected, expected_accuracy = brute_threshold(np.ones(n), labels)
    assert expected == (math.inf if named == "all_different" else -math.inf)
    written = json.loads(json.dumps(jsonable(result), allow_nan=False))
    layer = written["layers"][0]
    assert layer["threshold"] == named
    # the majority class, whichever fold left a pair out
    assert layer["train_accuracy"] == layer["cv_accuracy"] == pytest.approx(expected_accuracy)
    assert expected_accuracy == pytest.approx(max(np.mean(labels), np.mean(~labels)))
    assert isinstance(written["layers"][1]["threshold"], float)


def _cos(a, b):
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return 0.0 if na == 0 or nb == 0 else float(a @ b / (na * nb))


def test_gram_cosines_match_direct_cosines():
    rng = np.random.default_rng(5)
    n, n_layers, width = 7, 3, 5
    targets = rng.normal(size=(2 * n, n_layers, width)).astype(np.float32)
    targets[n + 2, 1] = 0  # a side without a vector in one layer
    grams = WicGrams.from_targets(targets)
    u, v = targets[:n].astype(np.float64), targets[n:].astype(np.float64)
    per_layer = grams.layer_cosines()
    for p in range(n):
        for layer in range(n_layers):
            assert per_layer[p, layer] == pytest.approx(_cos(u[p, layer], v[p, layer]), abs=1e-9)
        assert grams.mean_cosines()[p] == pytest.approx(_cos(u[p].mean(0), v[p].mean(0)), abs=1e-9)
        subset = grams.cosines(np.array([[0.0, 1.0, 1.0]]))[p, 0]
        assert subset == pytest.approx(_cos(u[p, 1:].mean(0), v[p, 1:].mean(0)), abs=1e-9)
    assert per_layer[2, 1] == 0.0


def test_pairs_without_vector_are_counted_for_train_and_eval():
    rng = np.random.default_rng(10)
    train, y_train = rng.normal(size=(2 * 12, 3, 4)).astype(np.float32), np.arange(12) % 2 == 0
    held, y_eval = rng.normal(size=(2 * 8, 3, 4)).astype(np.float32), np.arange(8) % 2 == 0
    train[3, 2] = 0  # pair 3's first target, in layer 2
    held[8 + 1, 0] = 0  # pair 1's second target, in layer 0
    held[5, :] = 0  # pair 5's first target, in every layer
    held[8 + 5, 1] = 0  # ... and its second one: still one pair
    result = evaluate_senses(WicGrams.from_targets(train), y_train, [0, 1, 2], n_folds=2, seed=0,
                             evaluation=WicGrams.from_targets(held), y_eval=y_eval)
    assert result["pairs_without_vector"] == {"train": 1, "eval": 2}
    alone = evaluate_senses(WicGrams.from_targets(train), y_train, [0, 1, 2], n_folds=2, seed=0)
    assert alone["pairs_without_vector"] == {"train": 1, "eval": None}


def _constructed_targets(n, n_layers, width, good_layer, rng):
    """Pairs where only `good_layer` tells the senses apart: there the same-sense side repeats the first
    vector and the other side is orthogonal to it; every other layer is noise."""
    labels = np.arange(n) % 2 == 0
    u = rng.normal(size=(n, n_layers, width))
    v = rng.normal(size=(n, n_layers, width))
    first = u[:, good_layer]
    other = v[:, good_layer] - (np.einsum("pd,pd->p", v[:, good_layer], first) / np.einsum("pd,pd->p", first, first)
                                )[:, None] * first
    v[:, good_layer] = np.where(labels[:, None], first, other)
    return np.concatenate([u, v]).astype(np.float32), labels


def test_senses_and_recommendation_on_constructed_pairs():
    rng = np.random.default_rng(6)
    targets, labels = _constructed_targets(60, 4, 16, good_layer=2, rng=rng)
    grams = WicGrams.from_targets(targets)
    result = evaluate_senses(grams, labels, [0, 1, 2, 3], n_folds=3, seed=0)
    by_layer = {entry["layer"]: entry for entry in result["layers"]}
    assert by_layer[2]["accuracy"] == 1.0 and by_layer[2]["train_accuracy"] == 1.0
    assert 0.0 < by_layer[2]["threshold"] < 1.0  # between the orthogonal (0) and identical (1) cosines
    assert max(by_layer[i]["accuracy"] for i in (0, 1, 3)) < 0.85
    assert result["scalar_mix"]["accuracy"] == 1.0 and result["scalar_mix"]["train_accuracy"] == 1.0
    assert np.argmax(result["scalar_mix"]["weights"]) == 2 and result["scalar_mix"]["weights"][2] > 0.9
    assert sum(result["scalar_mix"]["weights"]) == pytest.approx(1.0)
    assert np.argmax(np.abs(result["logistic_regression"]["coefficients"])) == 2
    # the other pooling mode is pure noise: the recommendation picks layer 2 of the first
    noise = WicGrams.from_targets(rng.normal(size=targets.shape).astype(np.float32))
    chosen = recommend({"mean": grams, "first": noise}, labels, [0, 1, 2, 3], n_folds=3, seed=0)
    assert chosen["layers"] == [2] and chosen["pooling"] == "mean" and chosen["cv_accuracy"] == 1.0
    assert chosen["ranking"][0]["layers"] == [2]
    # without evaluation pairs there is no held-out accuracy, only the cross-validated one it was chosen on
    assert chosen["accuracy"] is None and "selected on these folds" in chosen["note"]


def test_a_recommendation_no_better_than_the_majority_class_says_so():
    """Pairs 19 in 20 F, every layer noise: each layer's fitted rule is "all
    different", and every candidate scores the majority rate in cross-validation
    (checked here by brute force per fold). The winner, by the tie-break, was
    named "the layers that separate WiC senses best" with that score. It says
    it beats nothing; on the constructed pairs the best layer does."""
    rng = np.random.default_rng(11)
    n = 100
    labels = np.zeros(n, dtype=bool)
    labels[::20] = True
    grams = WicGrams.from_targets(rng.normal(size=(2 * n, 3, 8)).astype(np.float32))
    chosen = recommend({"mean": grams}, labels, [0, 1, 2], n_folds=5, seed=0)
    majority = 1 - labels.mean()
    assert chosen["cv_accuracy"] <= majority and not chosen["beats_baseline"]
    assert chosen["note"].startswith("NO candidate beats the majority-class baseline")
    assert f"majority-class baseline {majority:.3f} (always F)" in chosen["note"]
    # (the premise, independently: no single layer's per-fold brute-force rule beats always-F)
    splits = folds(labels, 5, 0)
    for layer in range(3):
        cosines = grams.layer_cosines()[:, layer]
        right = 0
        for train_rows, test_rows in splits:
            t, _ = brute_threshold(cosines[train_rows], labels[train_rows])
            right += accuracy(cosines[test_rows], labels[test_rows], t) * len(test_rows)
        assert right / n <= majority + 1e-12
    targets, balanced = _constructed_targets(60, 3, 8, good_layer=1, rng=rng)
    good = recommend({"mean": WicGrams.from_targets(targets)}, balanced, [0, 1, 2], n_folds=3, seed=0)
    assert good["beats_baseline"] and good["note"].startswith("cross-validated accuracy 1.000")


def test_recommendation_reports_evaluation_accuracy():
    rng = np.random.default_rng(8)
    train, y_train = _constructed_targets(40, 3, 8, good_layer=1, rng=rng)
    held, y_eval = _constructed_targets(30, 3, 8, good_layer=0, rng=rng)  # a different layer works there
    chosen = recommend({"mean": WicGrams.from_targets(train)}, y_train, [0, 1, 2], n_folds=2, seed=0,
                       evaluation={"mean": WicGrams.from_targets(held)}, y_eval=y_eval)
    assert chosen["layers"] == [1] and chosen["cv_accuracy"] == 1.0
    # chosen on the training pairs, scored on the evaluation pairs, where layer 1 is noise
    t, _ = brute_threshold(WicGrams.from_targets(train).layer_cosines()[:, 1], y_train)
    assert chosen["accuracy"] == pytest.approx(accuracy(WicGrams.from_targets(held).layer_cosines()[:, 1], y_eval, t))
    assert chosen["beats_eval_baseline"] is (chosen["accuracy"] > 0.5)  # (the evaluation pairs: T and F as common)
    assert "whose majority-class baseline is 0.500 (T and F as common)" in chosen["note"]


def test_a_held_out_accuracy_is_read_against_the_evaluation_pairs_baseline():
    """Balanced training pairs, evaluation pairs 10 in 11 F on which the
    chosen layer is noise: the note read the held-out accuracy next to the
    training pairs' baseline (0.5) and called the layers the best, while
    answering F for every evaluation pair scored more."""
    rng = np.random.default_rng(8)
    train, y_train = _constructed_targets(40, 3, 8, good_layer=1, rng=rng)
    held, labels = _constructed_targets(40, 3, 8, good_layer=0, rng=rng)
    keep = np.flatnonzero(~labels).tolist() + np.flatnonzero(labels)[:2].tolist()  # 20 F, 2 T
    pairs = np.concatenate([held[:40][keep], held[40:][keep]])
    y_eval = labels[keep]
    chosen = recommend({"mean": WicGrams.from_targets(train)}, y_train, [0, 1, 2], n_folds=2, seed=0,
                       evaluation={"mean": WicGrams.from_targets(pairs)}, y_eval=y_eval)
    t, _ = brute_threshold(WicGrams.from_targets(train).layer_cosines()[:, 1], y_train)
    held_out = accuracy(WicGrams.from_targets(pairs).layer_cosines()[:, 1], y_eval, t)
    majority = 20 / 22
    assert chosen["layers"] == [1] and chosen["accuracy"] == pytest.approx(held_out) and held_out <= majority
    assert chosen["beats_baseline"] and chosen["beats_eval_baseline"] is False
    assert chosen["note"].startswith("NO better than the majority class on the --wic-eval pairs")
    assert (f"held-out accuracy {held_out:.3f} on the --wic-eval pairs, whose majority-class baseline is "
            f"{majority:.3f} (always F); cross-validated accuracy 1.000") in chosen["note"]
    # Evaluation pairs of one label: nothing beats answering it, and the note says they tell nothing.
    only_f = np.flatnonzero(~labels).tolist()
    chosen = recommend({"mean": WicGrams.from_targets(train)}, y_train, [0, 1, 2], n_folds=2, seed=0,
                       evaluation={"mean": WicGrams.from_targets(np.concatenate([held[:40][only_f],
                                                                                 held[40:][only_f]]))},
                       y_eval=labels[only_f])
    assert chosen["beats_eval_baseline"] is None and chosen["beats_baseline"]
    assert ("on the --wic-eval pairs, whose majority-class baseline is 1.000 (always F): the --wic-eval pairs are "
            "all F, and tell nothing; cross-validated") in chosen["note"]


def test_config_snippet_is_a_config():
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", name="bert_a", config={"model": {
        "encoder": {"window": 128}, "combiner": {"@layers": "spacy-ctxembed.ScalarMix.v1"}}})
    text = config_snippet("bert_a", nlp.config["components"]["bert_a"], [3, 4], "first", comment="best layers")
    assert text.startswith("# best layers\n[components.bert_a]\n")
    config = Config().from_str("[components]\n" + text)  # it goes under a config's [components]
    component = config["components"]["bert_a"]
    assert component["factory"] == "ctxembed_bert"
    encoder = component["model"]["encoder"]
    assert (encoder["layers"], encoder["pooling"], encoder["window"]) == ([3, 4], "first", 128)  # the rest is kept
    assert component["model"]["combiner"] == {"@layers": "spacy-ctxembed.MeanLayers.v1"}
    # and it builds
    rebuilt = spacy.blank("en")
    rebuilt.add_pipe("ctxembed_bert", name="bert_a", config={k: v for k, v in component.items() if k != "factory"})
    assert rebuilt.config["components"]["bert_a"]["model"]["encoder"]["layers"] == [3, 4]
    # the Python line builds the same component, every setting included
    line = python_snippet("bert_a", nlp.config.interpolate()["components"]["bert_a"], [3, 4], "first")
    namespace = {"nlp": spacy.blank("en")}
    exec(line, namespace)
    assert namespace["nlp"].pipe_names == ["bert_a"]
    assert namespace["nlp"].config["components"] == rebuilt.config["components"]


def _write_wic(directory, rows, gold, stem="train"):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{stem}.data.txt").write_text("\n".join(rows) + "\n", encoding="utf8")
    (directory / f"{stem}.gold.txt").write_text("\n".join(gold) + "\n", encoding="utf8")
    return directory


def test_read_wic(tmp_path):
    rows = ["run\tV\t1-2\tI ran home .\tShe has ran some tests .",
            "bank\tN\t4-1\tWe sat by the bank .\tThe bank closed .",
            "run\tV\t0-1\tRan fast !\tI ran home ."]
    data = read_wic(_write_wic(tmp_path / "wic", rows, ["F", "T", "F"]))
    assert data.n_pairs == 3 and data.labels.tolist() == [False, True, False]
    assert data.lemmas == ["run", "bank", "run"]
    assert len(data.sentences) == 5  # "I ran home ." is used twice, stored once
    words = [data.sentences[s][t] for s, t in zip(data.sentence_of, data.target_of)]
    assert words == ["ran", "bank", "Ran", "ran", "bank", "ran"]  # first sentences, then second ones


def test_read_wic_takes_byte_order_marks_blank_last_lines_and_crlf(tmp_path):
    rows = ["run\tV\t1-2\tI ran home .\tShe has ran some\u2028tests .", "run\tV\t0-1\tRan fast !\tI ran home ."]
    directory = tmp_path / "wic"
    directory.mkdir()
    (directory / "train.data.txt").write_bytes(("\ufeff" + "\r\n".join(rows) + "\r\n\r\n").encode("utf8"))
    (directory / "train.gold.txt").write_bytes("\ufeffF\r\nT\r\n\n".encode("utf8"))
    data = read_wic(directory)
    assert data.labels.tolist() == [False, True] and data.lemmas == ["run", "run"]
    assert data.sentences[2] == ("She", "has", "ran", "some\u2028tests", ".")
    # a lone "\r" is text (Path.read_text made it a line break: 3 lines against 2 labels)
    (directory / "train.data.txt").write_bytes(("\n".join(rows) + "\n").replace("some", "so\rme").encode("utf8"))
    assert read_wic(directory).sentences[2] == ("She", "has", "ran", "so\rme\u2028tests", ".")
    # the error names the line and the byte's column in it (a byte order mark is no column)
    for bom in (b"", b"\xef\xbb\xbf"):
        (directory / "train.data.txt").write_bytes(bom + b"run\tV\t0-0\tRan\tRan\nrun\tV\t0-0\tRan\tRan\xff\n")
        with pytest.raises(AnalysisInputError, match=r"^--wic-train .*wic: train.data.txt line 2 is not UTF-8 "
                                                     r"\(byte 0xff at column 18\): re-encode it"):
            read_wic(directory)
    # UTF-16 decodes as UTF-8 where it is ASCII: NULs between the letters, refused by name
    (directory / "train.data.txt").write_bytes("run\tV\t0-0\tRan\tRan\n".encode("utf-16"))
    with pytest.raises(AnalysisInputError, match=r"^--wic-train .*wic: train.data.txt looks like UTF-16, not UTF-8"):
        read_wic(directory)


@pytest.mark.parametrize("rows, gold, message", [
    (["run\tV\t1-9\tI ran .\tYou ran ."], ["T"], r"line 1: token indices '1-9' are outside the sentences"),
    (["run\tV\t1-1\tI ran ."], ["T"], r"line 1: expected 5 tab-separated fields"),
    (["run\tV\tx\tI ran .\tYou ran ."], ["T"], r"token indices 'x': expected i-j"),
    (["run\tV\t1-1\tI ran .\tYou ran ."], ["yes"], r"train.gold.txt line 1: expected T or F, got 'yes'"),
    (["run\tV\t1-1\tI ran .\tYou ran ."], ["T", "F"], r"has 1 lines but train.gold.txt has 2 labels"),
    # an empty token would shift the indices (here "ran" would be token 2) and crash spaCy after embedding
    (["run\tV\t2-1\tI  ran .\tYou ran ."], ["T"], r"line 1: sentence 1 'I  ran \.': an empty token"),
    (["run\tV\t1-1\tI ran .\t You ran ."], ["T"], r"line 1: sentence 2 ' You ran \.': an empty token"),
    (["run\tV\t1-1\tI ran .\tYou ran . "], ["T"], r"line 1: sentence 2 'You ran \. ': an empty token"),
    # indices are plain ASCII digits: int() would take each of these
    *((["run\tV\t" + indices + "\tI ran .\tYou ran ."], ["T"],
       "line 1: token indices " + re.escape(repr(indices)) + ": expected i-j")
      for indices in ("+1-1", " 1 - 1 ", "1_0-1", "\u0661-1")),
    # a blank label inside the file is no label to skip: the labels after it would go to the wrong pairs
    (["run\tV\t1-1\tI ran .\tYou ran ."] * 2, ["T", "", "F"],
     r"train.gold.txt line 2: a blank line \(only blank lines at the end are ignored\)"),
])
def test_read_wic_errors_name_file_and_line(tmp_path, rows, gold, message):
    with pytest.raises(AnalysisInputError, match=r"^--wic-train .*" + message):
        read_wic(_write_wic(tmp_path / "wic", rows, gold))


def test_read_wic_directory_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnalysisInputError, match=r"--wic-eval .*empty: no \*\.data\.txt file in this directory"):
        read_wic(tmp_path / "empty", "--wic-eval")
    with pytest.raises(AnalysisInputError, match="no such directory"):
        read_wic(tmp_path / "missing")
    (tmp_path / "nogold").mkdir()
    (tmp_path / "nogold" / "dev.data.txt").write_text("run\tV\t0-0\tRan\tRan\n")
    with pytest.raises(AnalysisInputError, match="dev.data.txt has no dev.gold.txt next to it"):
        read_wic(tmp_path / "nogold")


def test_a_wic_folder_without_pairs_is_refused_naming_it(tmp_path):
    """Data and gold files with no pair (empty, or blank lines only) are refused when read. Before, as
    --wic-eval it failed after the corpus was embedded ("ValueError: no WiC sentence was embedded", exit 1,
    naming no folder), and as --wic-train it said "its pairs have 0 T and 0 F labels"."""
    directory = _write_wic(tmp_path / "wic", [], [])
    (directory / "train.data.txt").write_text("\n \n", encoding="utf8")
    with pytest.raises(AnalysisInputError, match=r"^--wic-eval .*wic: no pairs in train\.data\.txt"):
        read_wic(directory, "--wic-eval")


def test_read_wic_reads_every_data_file_of_the_folder(tmp_path):
    rows = [row for row, _ in wic_pairs()]
    gold = ["T" if same else "F" for _, same in wic_pairs()]
    # three files, read in name order: b.data.txt's pairs come after a.data.txt's
    _write_wic(tmp_path / "wic", rows[20:], gold[20:], stem="c")
    _write_wic(tmp_path / "wic", rows[:8], gold[:8], stem="a")
    _write_wic(tmp_path / "wic", rows[8:20], gold[8:20], stem="b")
    data = read_wic(tmp_path / "wic")
    assert data.n_pairs == 30 and data.labels.tolist() == [g == "T" for g in gold]
    described, labels = data.describe(), np.array([g == "T" for g in gold])
    assert described["same_sense"] == 12
    # the majority-class baseline: always F is right on the share of F pairs
    assert described["majority_label"] == "F"
    assert described["majority_rate"] == pytest.approx(float(np.mean(~labels)))
    sides = [tuple(row.split("\t")[3].split(" ")) for row in rows] + [tuple(row.split("\t")[4].split(" "))
                                                                      for row in rows]
    assert [data.sentences[s] for s in data.sentence_of] == sides
    assert len(data.sentences) == 6  # the six sentences, shared across the files, stored once
    (tmp_path / "wic" / "b.gold.txt").unlink()
    with pytest.raises(AnalysisInputError, match="b.data.txt has no b.gold.txt next to it"):
        read_wic(tmp_path / "wic")


def test_evaluation_pairs_that_are_training_pairs_are_left_out(tmp_path):
    train = read_wic(_write_wic(tmp_path / "train", ["run\tV\t1-2\tI ran home .\tShe has ran some tests .",
                                                     "bank\tN\t4-1\tWe sat by the bank .\tThe bank closed ."],
                                ["F", "T"]))
    rows = [
        ("run\tV\t2-1\tShe has ran some tests .\tI ran home .", "T"),   # the first pair, sentences swapped
        ("banks\tV\t4-1\tWe sat by the bank .\tThe bank closed .", "F"),  # the second: lemma, POS, label aside
        ("bank\tN\t3-1\tWe sat by the bank .\tThe bank closed .", "T"),   # the same sentences, another token
        ("run\tV\t1-2\tI ran home !\tShe has ran some tests .", "F"),     # another sentence
        ("run\tV\t1-2\tI ran home .\tShe has ran some tests .", "F"),     # the first pair again
    ]
    evaluation = read_wic(_write_wic(tmp_path / "eval", [r for r, _ in rows], [g for _, g in rows]), "--wic-eval")
    kept, note = held_out(train, evaluation)
    assert note == ("--wic-eval: 3 of its 5 pairs are also in --wic-train (the same sentences and target tokens, in "
                    "either order): left out, the accuracy is on the other 2")
    assert kept.n_pairs == 2 and kept.labels.tolist() == [True, False] and kept.lemmas == ["bank", "run"]
    sides = [(kept.sentences[s], int(t)) for s, t in zip(kept.sentence_of, kept.target_of)]
    assert sides == [(("We", "sat", "by", "the", "bank", "."), 3), (("I", "ran", "home", "!"), 1),
                     (("The", "bank", "closed", "."), 1), (("She", "has", "ran", "some", "tests", "."), 2)]
    assert len(kept.sentences) == 4  # only the kept pairs' sentences: no other is embedded
    assert held_out(train, kept) == (kept, None)
    with pytest.raises(AnalysisInputError, match=r"^--wic-eval .*train: all 2 of its pairs are also in --wic-train "
                                                 r".*train \(the same sentences and target tokens\): none is held out"):
        held_out(train, train)


# ---------------------------------------------------------------- the scalar mix


def _layered_pairs(n, rng):
    """Three layers sharing each pair's content with their own noise: layers 0 and 1 carry most of it,
    so the best mix weighs both, and layer 2 a little (an optimum inside the simplex)."""
    labels = np.arange(n) % 2 == 0
    content_u = rng.normal(size=(n, 12))
    content_v = np.where(labels[:, None], content_u, rng.normal(size=(n, 12)))
    signal, noise = np.array([1.0, 1.0, 0.3]), np.array([1.2, 1.8, 1.0])
    u = signal[None, :, None] * content_u[:, None] + noise[None, :, None] * rng.normal(size=(n, 3, 12))
    v = signal[None, :, None] * content_v[:, None] + noise[None, :, None] * rng.normal(size=(n, 3, 12))
    # float32 values, as the pipeline's vectors are
    return u.astype(np.float32).astype(np.float64), v.astype(np.float32).astype(np.float64), labels


def _mixed_cosines(u, v, w):
    a, b = np.einsum("l,pld->pd", w, u), np.einsum("l,pld->pd", w, v)
    return np.einsum("pd,pd->p", a, b) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _logistic_objective(x, labels):
    """sklearn's LogisticRegression(C=1) fitted on the one feature x: its loss, per pair."""
    model = LogisticRegression(C=1.0, tol=1e-10, max_iter=10000).fit(x[:, None], labels)
    return log_loss(labels, model.predict_proba(x[:, None])[:, 1]) + model.coef_[0, 0] ** 2 / (2 * len(x))


def test_fitted_scalar_mix_matches_brute_force():
    rng = np.random.default_rng(3)
    u, v, labels = _layered_pairs(240, rng)
    fitted = fit_scalar_mix(WicGrams.from_targets(np.concatenate([u, v]).astype(np.float32)), labels)
    # brute force: every weight vector on a grid of the simplex, the cosines computed from the vectors
    steps, best_loss, best_weights = 20, math.inf, None
    for i in range(steps + 1):
        for j in range(steps + 1 - i):
            weights = np.array([i, j, steps - i - j]) / steps
            loss = _logistic_objective(_mixed_cosines(u, v, weights), labels)
            if loss < best_loss:
                best_loss, best_weights = loss, weights
    assert 0.0 < best_weights.min()  # the optimum is inside the simplex
    assert np.abs(fitted.weights - best_weights).max() <= 1.5 / steps
    assert fitted.weights.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(fitted.weights, np.exp(fitted.logits) / np.exp(fitted.logits).sum(), rtol=1e-12)
    cosines = _mixed_cosines(u, v, fitted.weights)
    assert _logistic_objective(cosines, labels) == pytest.approx(fitted.loss, abs=1e-6)
    assert fitted.loss <= best_loss + 1e-9  # at least as good as any grid point
    assert fitted.threshold == pytest.approx(brute_threshold(cosines, labels)[0], abs=1e-7)


def _rotated_layers(seed, n=120, n_layers=5, width=6):
    """Each layer a view of the pairs' content in its own rotation, with its own noise and a shared offset:
    a loss with local minima at single layers (at seeds where a fit from the mean, or from the layer most
    accurate alone, stops at a worse layer than the best one)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2 == 0
    content_u = rng.normal(size=(n, width))
    content_v = np.where(labels[:, None], content_u, rng.normal(size=(n, width)))
    rotations = [np.linalg.qr(rng.normal(size=(width, width)))[0] for _ in range(n_layers)]
    signal, noise, offset = (rng.uniform(low, high, n_layers) for low, high in ((0.5, 1.5), (0.5, 2.0), (0, 3)))
    offsets = offset[:, None] * rng.normal(size=(n_layers, width))
    u, v = (np.stack([signal[k] * content @ rotations[k] + noise[k] * rng.normal(size=(n, width)) + offsets[k]
                      for k in range(n_layers)], axis=1) for content in (content_u, content_v))
    return u.astype(np.float32).astype(np.float64), v.astype(np.float32).astype(np.float64), labels


@pytest.mark.parametrize("seed", [16, 18, 111, 129, 157, 249])
def test_fitted_scalar_mix_is_no_worse_than_any_single_layer_or_the_mean(seed):
    u, v, labels = _rotated_layers(seed)
    fitted = fit_scalar_mix(WicGrams.from_targets(np.concatenate([u, v]).astype(np.float32)), labels)
    n_layers = u.shape[1]
    alone = [_logistic_objective(_mixed_cosines(u, v, np.eye(n_layers)[k]), labels) for k in range(n_layers)]
    mean = _logistic_objective(_mixed_cosines(u, v, np.full(n_layers, 1 / n_layers)), labels)
    assert _logistic_objective(_mixed_cosines(u, v, fitted.weights), labels) == pytest.approx(fitted.loss, abs=1e-6)
    assert fitted.loss <= min(alone) + 1e-9
    assert fitted.loss <= mean + 1e-9


def test_scalar_mix_cross_validation_matches_independent_loop():
    rng = np.random.default_rng(4)
    u, v, labels = _layered_pairs(90, rng)
    grams = WicGrams.from_targets(np.concatenate([u, v]).astype(np.float32))
    got = held_out_accuracy(ScalarMixRule(), grams.stacked(), labels, splits=folds(labels, 3, seed=1))
    right = 0
    for train, test in StratifiedKFold(n_splits=3, shuffle=True, random_state=1).split(labels, labels):
        part = np.concatenate([train, train + len(labels)])
        fitted = fit_scalar_mix(WicGrams.from_targets(np.concatenate([u, v])[part].astype(np.float32)),
                                labels[train])
        right += int(((_mixed_cosines(u[test], v[test], fitted.weights) >= fitted.threshold) == labels[test]).sum())
    assert got == pytest.approx(right / len(labels))


# ---------------------------------------------------------------- no leakage


def _without_accuracy(value):
    """`value` with every "accuracy" (the only thing the evaluation labels may change), and what says
    how it compares with their baseline, left out."""
    if isinstance(value, dict):
        return {k: _without_accuracy(v) for k, v in value.items()
                if k not in ("accuracy", "note", "beats_eval_baseline")}
    if isinstance(value, list):
        return [_without_accuracy(v) for v in value]
    return value


def test_evaluation_labels_change_only_the_evaluation_accuracy():
    rng = np.random.default_rng(9)
    u, v, y_train = _layered_pairs(60, rng)
    eu, ev, y_eval = _layered_pairs(40, rng)
    train = {"mean": WicGrams.from_targets(np.concatenate([u, v]).astype(np.float32)),
             "first": WicGrams.from_targets(np.concatenate([u[:, ::-1], v[:, ::-1]]).astype(np.float32))}
    held = {mode: WicGrams.from_targets(np.concatenate([eu, ev]).astype(np.float32)) for mode in train}
    runs = []
    for labels in (y_eval, ~y_eval, rng.permutation(y_eval)):
        senses = evaluate_senses(train["mean"], y_train, [0, 1, 2], n_folds=3, seed=0, evaluation=held["mean"],
                                 y_eval=labels)
        chosen = recommend(train, y_train, [0, 1, 2], n_folds=3, seed=0, evaluation=held, y_eval=labels)
        runs.append((senses, chosen))
    (senses, chosen), (flipped_senses, flipped_chosen), (permuted_senses, permuted_chosen) = runs
    for other_senses, other_chosen in runs[1:]:
        # thresholds, cross-validated accuracies, the fitted mix and the recommendation: all the same
        assert _without_accuracy(other_senses) == _without_accuracy(senses)
        assert _without_accuracy(other_chosen) == _without_accuracy(chosen)
    # ... and the evaluation labels are used: flipping them all turns every accuracy a into 1 - a
    assert flipped_chosen["accuracy"] == pytest.approx(1 - chosen["accuracy"])
    assert flipped_senses["scalar_mix"]["accuracy"] == pytest.approx(1 - senses["scalar_mix"]["accuracy"])
    assert [layer["accuracy"] for layer in flipped_senses["layers"]] == pytest.approx(
        [1 - layer["accuracy"] for layer in senses["layers"]])
    assert senses["scalar_mix"]["cv_accuracy"] == permuted_senses["scalar_mix"]["cv_accuracy"]


def test_threshold_rule_calls_a_score_at_the_threshold_same_sense():
    """Adjacent floats have no midpoint: the threshold is then the upper score itself, and the rule
    "T iff score >= threshold" must call that score T (a strict > called the T pair F)."""
    low = 0.5
    high = float(np.nextafter(low, 1.0))
    scores, labels = np.array([low, high]), np.array([False, True])
    threshold = fit_threshold(scores, labels)
    assert threshold == high
    assert ThresholdRule().predict(threshold, scores).tolist() == [False, True]


def test_each_layers_held_out_accuracy_is_scored_on_its_own_cosines():
    rng = np.random.default_rng(4)
    train, y_train = _constructed_targets(40, 3, 8, good_layer=1, rng=rng)
    held, y_eval = _constructed_targets(30, 3, 8, good_layer=1, rng=rng)
    train_cos = WicGrams.from_targets(train).layer_cosines()
    eval_cos = WicGrams.from_targets(held).layer_cosines()
    result = evaluate_senses(WicGrams.from_targets(train), y_train, [0, 1, 2], n_folds=2, seed=0,
                             evaluation=WicGrams.from_targets(held), y_eval=y_eval)
    for column, entry in enumerate(result["layers"]):
        t, _ = brute_threshold(train_cos[:, column], y_train)
        assert entry["accuracy"] == pytest.approx(accuracy(eval_cos[:, column], y_eval, t))
    assert result["layers"][1]["accuracy"] == 1.0


def test_candidate_sets_are_the_runs_then_the_best_layers():
    scores = [0.9, 0.55, 0.6, 0.8, 0.7, 0.5]
    runs = [tuple(range(a, b + 1)) for a in range(6) for b in range(a, 6)]
    best_first = sorted(range(6), key=lambda i: (-scores[i], i))  # [0, 3, 4, 2, 1, 5]
    tops = [tuple(sorted(best_first[:k])) for k in (2, 3, 4)]
    assert tops == [(0, 3), (0, 3, 4), (0, 2, 3, 4)]  # none of them a run
    assert candidate_sets(6, scores) == runs + tops
    assert candidate_sets(3, [0.1, 0.3, 0.2]) == [(0,), (0, 1), (0, 1, 2), (1,), (1, 2), (2,)]  # tops are runs


def test_recommendation_ties_go_to_fewer_layers_a_lower_top_layer_then_the_configured_pooling():
    """Layer 2 repeats layer 1, which alone separates the senses, and layer 0 is faint noise: the runs (0, 1),
    (0, 1, 2), (1,), (1, 2), (2,) all score 1.0. The winner is (1,): one layer, the lower top; and of two
    pooling modes that tie, the configured (first) one."""
    rng = np.random.default_rng(6)
    targets, labels = _constructed_targets(40, 3, 8, good_layer=1, rng=rng)
    targets[:, 2] = targets[:, 1]
    targets[:, 0] *= 1e-3
    grams = WicGrams.from_targets(targets)
    chosen = recommend({"mean": grams, "first": grams}, labels, [0, 1, 2], n_folds=2, seed=0)
    assert chosen["cv_accuracy"] == 1.0
    assert (chosen["layers"], chosen["pooling"]) == ([1], "mean")
    perfect = [(r["layers"], r["pooling"]) for r in chosen["ranking"] if r["cv_accuracy"] == 1.0]
    assert perfect[:4] == [([1], "mean"), ([1], "first"), ([2], "mean"), ([2], "first")]


def test_a_token_index_one_past_the_sentence_end_is_refused(tmp_path):
    """Index i of a sentence of n tokens must be below n: i == n (one past the
    end, an off-by-one in a converted file) is refused naming the line. The
    earlier error test only used an index far outside the sentence."""
    rows = ["run\tV\t3-0\tI ran .\tYou ran ."]
    with pytest.raises(AnalysisInputError, match=r"line 1: token indices '3-0' are outside the sentences \(3 and 3"):
        read_wic(_write_wic(tmp_path / "wic", rows, ["T"]))
    rows = ["run\tV\t1-3\tI ran .\tYou ran ."]
    with pytest.raises(AnalysisInputError, match=r"line 1: token indices '1-3' are outside the sentences"):
        read_wic(_write_wic(tmp_path / "wic2", rows, ["T"]))


def test_whitespace_only_last_lines_are_no_pairs(tmp_path):
    """Lines of spaces or tabs at the end of the data and gold files are blank
    lines at the end, which are ignored like empty ones. Only empty trailing
    lines were tried before; a gold line of spaces kept would be read as a
    blank label line in the middle and refused."""
    rows = ["run\tV\t1-2\tI ran home .\tShe has ran some tests .", "run\tV\t0-1\tRan fast !\tI ran home ."]
    directory = tmp_path / "wic"
    directory.mkdir()
    (directory / "train.data.txt").write_text("\n".join(rows) + "\n \n\t\n", encoding="utf8")
    (directory / "train.gold.txt").write_text("F\nT\n  \n", encoding="utf8")
    data = read_wic(directory)
    assert data.n_pairs == 2 and data.labels.tolist() == [False, True]


def test_majority_class_of_no_pairs_is_a_tie_at_rate_zero():
    """No pairs: neither label is commoner and the rate is 0 rather than a
    division by zero (only non-empty label sets were tried before)."""
    from spacy_ctxembed.analysis.wic import majority_class

    assert majority_class(np.zeros(0, dtype=bool)) == {"majority_label": "T/F", "majority_rate": 0.0}
    assert majority_class(np.array([True, False, False])) == {"majority_label": "F", "majority_rate": 2 / 3}


def test_scalar_mix_logits_are_centred_when_a_single_layer_wins():
    """ScalarMixFit.logits are documented as centred (sum 0) with softmax
    equal to the weights. A fit from the mean start stays centred by itself;
    here only layer 0 carries the senses, so a single-layer start (logits
    far from centred) wins, which is where the centring is needed. Not seen
    before: the brute-force test's optimum lies inside the simplex."""
    rng = np.random.default_rng(7)
    n = 80
    labels = np.arange(n) % 2 == 0
    content_u = rng.normal(size=(n, 8))
    content_v = np.where(labels[:, None], content_u, rng.normal(size=(n, 8)))
    noise_u, noise_v = rng.normal(size=(2, n, 2, 8))
    u = np.concatenate([content_u[:, None] + 0.1 * rng.normal(size=(n, 1, 8)), noise_u], axis=1)
    v = np.concatenate([content_v[:, None] + 0.1 * rng.normal(size=(n, 1, 8)), noise_v], axis=1)
    fitted = fit_scalar_mix(WicGrams.from_targets(np.concatenate([u, v]).astype(np.float32)), labels)
    assert fitted.weights[0] > 0.99
    assert abs(float(np.sum(fitted.logits))) < 1e-9
    np.testing.assert_allclose(fitted.weights, np.exp(fitted.logits) / np.exp(fitted.logits).sum(), rtol=1e-9)


def test_a_recommendation_without_a_pooling_keeps_the_configured_one():
    """recommend gives pooling None for a component whose pooling it did not
    vary; the block then keeps its own setting (v2: in model.encoder; v1: a
    component setting) rather than gaining pooling = None. Only blocks with
    a pooling given were tried before. The caller's block is not edited."""
    from spacy_ctxembed.analysis.recommend import recommended_block

    v2 = {"factory": "ctxembed_bert", "model": {"encoder": {"pooling": "first", "layers": [-1], "window": 128},
                                                 "combiner": {"@layers": "spacy-ctxembed.ScalarMix.v1"}}}
    edited = recommended_block(v2, [2, 3], None)
    assert edited["model"]["encoder"] == {"pooling": "first", "layers": [2, 3], "window": 128}
    assert edited["model"]["combiner"] == {"@layers": "spacy-ctxembed.MeanLayers.v1"}
    assert v2["model"]["encoder"]["layers"] == [-1]  # a copy was edited
    v1 = {"factory": "ctxembed_bert", "pooling": "mean", "layers": [-1], "combine": "scalar_mix"}
    assert recommended_block(v1, [1], None) == {"factory": "ctxembed_bert", "pooling": "mean", "layers": [1],
                                                "combine": "mean"}
    assert "pooling" not in recommended_block({"factory": "ctxembed_bert"}, [1], None)


def test_the_ranking_lists_the_ten_best_candidates_in_order():
    """The recommendation's ranking holds the 10 best candidates (documented),
    best first, each with its own cross-validated accuracy, recomputed here
    with the brute-force threshold on sklearn's folds. Before, no test had
    more than 10 candidates, so the cut at 10 was never seen."""
    rng = np.random.default_rng(8)
    train, y_train = _constructed_targets(40, 4, 8, good_layer=1, rng=rng)
    grams = WicGrams.from_targets(train)
    chosen = recommend({"mean": grams}, y_train, [0, 1, 2, 3], n_folds=2, seed=0)
    assert chosen["n_candidates"] > 10 and len(chosen["ranking"]) == 10
    assert chosen["ranking"][0] == {"layers": chosen["layers"], "pooling": "mean", "cv_accuracy": chosen["cv_accuracy"]}
    values = [entry["cv_accuracy"] for entry in chosen["ranking"]]
    assert values == sorted(values, reverse=True)
    splits = list(StratifiedKFold(n_splits=2, shuffle=True, random_state=0).split(np.zeros(len(y_train)), y_train))
    for entry in chosen["ranking"]:
        weights = np.zeros(4)
        weights[entry["layers"]] = 1.0
        cosines = grams.cosines(weights)[:, 0]
        right = 0
        for fit, score in splits:
            t, _ = brute_threshold(cosines[fit], y_train[fit])
            right += int(((cosines[score] >= t) == y_train[score]).sum())
        assert entry["cv_accuracy"] == pytest.approx(right / len(y_train))


def test_nan_target_vectors_and_scores_are_refused():
    """(The library API: a pipeline's component refuses such outputs itself.) A NaN target vector has a
    NaN norm, which `WicGrams.cosines` took for no vector: the pair got a cosine of 0, was not counted in
    pairs_without_vector, and was fitted and scored as a real pair. A NaN score sorted last in
    `fit_threshold`, below no cut, and was counted as right or wrong whatever the threshold."""
    rng = np.random.default_rng(3)
    targets = rng.normal(size=(2 * 6, 2, 4)).astype(np.float32)
    targets[6 + 4, 1, 0] = np.nan  # pair 4's second target, in layer 1
    with pytest.raises(ValueError, match=r"^targets: 1 of 6 pairs have a target vector with NaN or inf "
                                         r"\(the first: pair 4\)"):
        WicGrams.from_targets(targets)
    with pytest.raises(ValueError, match=r"^fit_threshold: 1 of 4 scores are NaN or inf"):
        fit_threshold(np.array([0.1, np.nan, 0.5, 0.7]), np.array([0, 1, 1, 1], bool))


def test_a_threshold_of_no_scores_or_an_accuracy_of_nothing_held_out_is_refused():
    with pytest.raises(ValueError, match=r"^fit_threshold: no scores$"):
        fit_threshold(np.zeros(0), np.zeros(0, bool))
    scores, labels = np.array([0.1, 0.9, 0.2, 0.8]), np.array([0, 1, 0, 1], bool)
    with pytest.raises(ValueError, match=r"^held_out_accuracy: give splits or evaluation data$"):
        held_out_accuracy(ThresholdRule(), scores, labels)
    with pytest.raises(ValueError, match=r"^held_out_accuracy: give splits or evaluation data$"):
        held_out_accuracy(ThresholdRule(), scores, labels, x_eval=scores)  # (its labels missing)


def test_a_scalar_mix_of_one_layer_is_a_logistic_regression_on_its_cosine():
    """One layer (a from_trf pipeline whose transformer outputs only its last): the weight is 1, and
    scale and bias are sklearn's LogisticRegression(C=1) on the pairs' cosines, computed here."""
    rng = np.random.default_rng(4)
    n = 40
    labels = np.arange(n) % 3 == 0
    u = rng.normal(size=(n, 1, 6))
    v = np.where(labels[:, None, None], u + 0.8 * rng.normal(size=u.shape), rng.normal(size=u.shape))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # (no log(0) for the starts near other layers: there are none)
        fit = fit_scalar_mix(WicGrams.from_targets(np.concatenate([u, v]).astype(np.float32)), labels)
    a, b = u[:, 0].astype(np.float32).astype(np.float64), v[:, 0].astype(np.float32).astype(np.float64)
    cosines = np.einsum("pd,pd->p", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    sk = LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000).fit(cosines[:, None], labels)
    assert fit.weights.tolist() == [1.0]
    assert fit.scale == pytest.approx(sk.coef_[0, 0], abs=1e-4)
    assert fit.bias == pytest.approx(sk.intercept_[0], abs=1e-4)
    assert fit.threshold == pytest.approx(brute_threshold(cosines, labels)[0], abs=1e-6)
