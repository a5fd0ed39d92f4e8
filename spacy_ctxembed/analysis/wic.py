"""Sense separation on WiC (Pilehvar & Camacho-Collados 2019), per layer.

A WiC pair is one word in two sentences, labelled T (same sense) or F. A
layer (or a mix of layers) separates senses if the cosine between the word's
two vectors is higher for T pairs; its accuracy is that of the rule
"T when the cosine >= a threshold", with the threshold fitted to maximise
accuracy on the training pairs and scored on pairs it was not fitted on:
the evaluation file when there is one, else k-fold cross-validation on the
training file (stratified, shuffled with the seed; the accuracy is over all
pairs, each predicted by the fold that left it out). Every accuracy is read
against the majority-class rate of the scored pairs (`majority_class`): a
fitted threshold can be "call every pair F", which scores exactly that.

Rules scored the same way (`held_out_accuracy`):

* one layer, and the mean of all layers (the vectors averaged, as the
  MeanLayers combiner does, then the cosine): `ThresholdRule`;
* a fitted scalar mix (`ScalarMixRule`, `fit_scalar_mix`): layer weights
  w = softmax(s), the vector sum_j w_j * layer_j (what a ScalarMix combiner
  with logits s gives, up to its scale gamma, which no cosine sees), and a
  threshold on that vector's cosine, fitted on the training pairs only: s (with
  a scale a and bias b) is fitted to the logistic loss of a * cosine + b
  (L-BFGS from a few starts, keeping the lowest loss: it has local minima at
  single layers), then the threshold is fitted on the mixed cosines as for
  one layer;
* as an extra, logistic regression on the per-layer cosines
  (`CosineLogisticRule`: standardised, L2, C = 1). Its coefficients can be
  negative: it is not a mix of layers and no combiner can apply it.

Cosines come from per-pair Gram matrices between the layers of the two
target vectors (`WicGrams`), so the cosine of any mean of layers is exact
and costs no pass over the vectors.
"""
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, FrozenSet, List, Optional, Protocol, Sequence, Tuple, Union

import numpy as np
from numpy.typing import NDArray
from spacy.language import Language
from spacy.tokens import Doc
from tqdm import tqdm

from ..textlines import decode_file, not_text_refusal, not_utf8, split_lines
from .errors import AnalysisInputError
from .extract import doc_layers, run_docs
from .source import component_shim

LABELS = {"T": True, "F": False}


@dataclass
class WicData:
    """WiC pairs, with their sentences deduplicated.

    Rows 0..n-1 of `sentence_of`/`target_of` are the pairs' first sentences,
    rows n..2n-1 their second ones: `sentences[sentence_of[r]]` holds the
    target word at token `target_of[r]`.
    """

    source: str
    lemmas: List[str]
    labels: NDArray[np.bool_]
    sentences: List[Tuple[str, ...]]
    sentence_of: NDArray[np.int64]
    target_of: NDArray[np.int64]

    @property
    def n_pairs(self) -> int:
        return int(self.labels.shape[0])

    def describe(self) -> dict:
        return {"path": self.source, "pairs": self.n_pairs, "same_sense": int(self.labels.sum()),
                "distinct_sentences": len(self.sentences), **majority_class(self.labels)}

    def pair_keys(self) -> List[FrozenSet[Tuple[Tuple[str, ...], int]]]:
        """Each pair as the model sees it: its two sentences, each with its target index, in either order.
        The lemma and POS are left out: they change no vector, so no cosine."""
        sides = [(self.sentences[s], int(t)) for s, t in zip(self.sentence_of, self.target_of)]
        return [frozenset((sides[p], sides[p + self.n_pairs])) for p in range(self.n_pairs)]

    def subset(self, keep: NDArray[np.bool_]) -> "WicData":
        """The pairs where `keep` is True, with only their sentences."""
        pairs = np.flatnonzero(keep)
        rows = np.concatenate([pairs, pairs + self.n_pairs])
        used, sentence_of = np.unique(self.sentence_of[rows], return_inverse=True)
        return WicData(source=self.source, lemmas=[self.lemmas[p] for p in pairs], labels=self.labels[pairs],
                       sentences=[self.sentences[s] for s in used],
                       sentence_of=sentence_of.reshape(-1).astype(np.int64), target_of=self.target_of[rows])


def held_out(train: WicData, evaluation: WicData) -> Tuple[WicData, Optional[str]]:
    """The evaluation pairs that are not also training pairs (`WicData.pair_keys`), and a note saying how
    many were left out (None: none was). A pair in both would score its own fitted threshold: its
    "held-out" accuracy would be a training accuracy. Raise `AnalysisInputError` when every one is."""
    seen = set(train.pair_keys())
    in_train = np.array([key in seen for key in evaluation.pair_keys()], dtype=bool)
    count = int(in_train.sum())
    if count == 0:
        return evaluation, None
    if count == evaluation.n_pairs:
        raise AnalysisInputError(f"--wic-eval {evaluation.source}: all {count} of its pairs are also in --wic-train "
                                 f"{train.source} (the same sentences and target tokens): none is held out")
    return evaluation.subset(~in_train), (
        f"--wic-eval: {count} of its {evaluation.n_pairs} pairs are also in --wic-train (the same sentences and "
        f"target tokens, in either order): left out, the accuracy is on the other {evaluation.n_pairs - count}")


def majority_class(labels: NDArray[np.bool_]) -> dict:
    """The accuracy of always answering the commoner label: the baseline any WiC accuracy is read against.

    RETURNS: ``majority_label`` ("T", "F", or "T/F" when they are as common)
    and ``majority_rate`` (its share of the pairs).
    """
    same = int(np.count_nonzero(labels))
    different = int(labels.shape[0]) - same
    label = "T" if same > different else "F" if different > same else "T/F"
    return {"majority_label": label, "majority_rate": max(same, different) / max(same + different, 1)}


def majority_rule(baseline: dict) -> str:
    """The rule of a `majority_class` baseline, in words: "always F", or "T and F as common"."""
    label = baseline["majority_label"]
    return "T and F as common" if label == "T/F" else f"always {label}"


def read_wic(directory: Path, option: str = "--wic-train") -> WicData:
    """Read every ``*.data.txt`` of a WiC directory with its ``*.gold.txt``."""
    directory = Path(directory)
    if not directory.is_dir():
        what = "not a directory" if directory.exists() else "no such directory"
        raise AnalysisInputError(f"{option} {directory}: {what} (expected a folder with *.data.txt and *.gold.txt)")
    data_files = sorted(directory.glob("*.data.txt"))
    if not data_files:
        raise AnalysisInputError(f"{option} {directory}: no *.data.txt file in this directory")
    rows: List[Pair] = []
    for data_file in data_files:
        gold_file = data_file.with_name(data_file.name[: -len(".data.txt")] + ".gold.txt")
        if not gold_file.is_file():
            raise AnalysisInputError(f"{option} {directory}: {data_file.name} has no {gold_file.name} next to it")
        rows += _read_pairs(data_file, gold_file, option)
    if not rows:
        # (--wic-eval failed after the corpus was embedded, "no WiC sentence was embedded", naming no folder)
        raise AnalysisInputError(f"{option} {directory}: no pairs in {', '.join(f.name for f in data_files)} "
                                 "(only blank lines, or empty)")
    sentences: Dict[Tuple[str, ...], int] = {}
    sides = [tuple(row[1]) for row in rows] + [tuple(row[3]) for row in rows]
    sentence_of = [sentences.setdefault(words, len(sentences)) for words in sides]
    targets = [row[2] for row in rows] + [row[4] for row in rows]
    return WicData(
        source=str(directory), lemmas=[row[0] for row in rows], labels=np.array([row[5] for row in rows], bool),
        sentences=list(sentences), sentence_of=np.array(sentence_of, np.int64), target_of=np.array(targets, np.int64),
    )


Pair = Tuple[str, List[str], int, List[str], int, bool]  # lemma, sentence 1, index 1, sentence 2, index 2, label


def _read_pairs(data_file: Path, gold_file: Path, option: str) -> List[Pair]:
    lines = _lines(data_file, option)
    gold = [g.strip() for g in _lines(gold_file, option)]
    if "" in gold:
        # (dropping it would put the labels after it on the wrong pairs)
        raise AnalysisInputError(f"{option} {data_file.parent}: {gold_file.name} line {gold.index('') + 1}: "
                                 "a blank line (only blank lines at the end are ignored); expected T or F")
    if len(gold) != len(lines):
        raise AnalysisInputError(f"{option} {data_file.parent}: {data_file.name} has {len(lines)} lines but "
                                 f"{gold_file.name} has {len(gold)} labels")
    pairs = []
    for number, (line, label) in enumerate(zip(lines, gold), start=1):
        where = f"{option} {data_file.parent}: {data_file.name} line {number}"
        fields = line.split("\t")
        if len(fields) != 5:
            raise AnalysisInputError(f"{where}: expected 5 tab-separated fields (lemma, POS, i-j, sentence 1, "
                                     f"sentence 2), got {len(fields)}")
        if label not in LABELS:
            raise AnalysisInputError(f"{option} {data_file.parent}: {gold_file.name} line {number}: "
                                     f"expected T or F, got {label!r}")
        words1, words2 = (_words(fields[k], f"{where}: sentence {k - 2}") for k in (3, 4))
        # ASCII digits only: int() would also take "+1", " 1 " and "1_0"
        indices = re.fullmatch(r"([0-9]+)-([0-9]+)", fields[2])
        if indices is None:
            raise AnalysisInputError(f"{where}: token indices {fields[2]!r}: expected i-j")
        index1, index2 = int(indices[1]), int(indices[2])
        if not (0 <= index1 < len(words1) and 0 <= index2 < len(words2)):
            raise AnalysisInputError(f"{where}: token indices {fields[2]!r} are outside the sentences "
                                     f"({len(words1)} and {len(words2)} tokens)")
        pairs.append((fields[0], words1, index1, words2, index2, LABELS[label]))
    return pairs


def _lines(path: Path, option: str) -> List[str]:
    """The file's lines (`split_lines`: a byte order mark is no text), without the blank lines at its end,
    which are no pairs."""
    lines = split_lines(_read_utf8(path, option))
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _read_utf8(path: Path, option: str) -> str:
    raw = path.read_bytes()
    refused = not_text_refusal(raw, f"{option} {path.parent}: {path.name}")
    if refused:
        raise AnalysisInputError(refused)
    try:
        return decode_file(raw)
    except UnicodeDecodeError as e:
        raise AnalysisInputError(f"{option} {path.parent}: {path.name} {not_utf8(raw, e.start)}") from None


def _words(sentence: str, where: str) -> List[str]:
    """The tokens of a WiC sentence (single spaces between them). An empty token (two spaces in a row,
    a space at either end) would shift the `i-j` indices and spaCy refuses it (E031) only after
    embedding, so it is refused here, with the file and line."""
    words = sentence.split(" ")
    if "" in words:
        raise AnalysisInputError(f"{where} {sentence!r}: an empty token (two spaces in a row, or a space at "
                                 "either end); expected tokens separated by single spaces")
    return words


# ---------------------------------------------------------------- vectors


def multi_piece_sentences(nlp: Language, name: str, data: WicData) -> Optional[NDArray[np.bool_]]:
    """Per distinct sentence: does a target token in it have more than one wordpiece?

    A token fed by a single wordpiece gets that piece's state whatever the
    pooling, so only these sentences need to be embedded again for another
    pooling mode. None when that cannot be told (an encoder other than BERT's: ELMo's, or one that pools
    an upstream transformer's wordpieces, as ctxembed_from_trf and a TrfEncoder.v2 in ctxembed_bert do):
    all do.
    """
    from ..models.bert import BertShim

    shim = component_shim(nlp, name)
    if not isinstance(shim, BertShim):
        return None
    docs = [Doc(nlp.vocab, words=list(words)) for words in data.sentences]
    plan = shim.get_runner().plan(docs)
    pieces = np.bincount(plan.alignment.token_index, minlength=int(plan.token_offsets[-1]))
    lengths = np.diff(plan.token_offsets)[data.sentence_of]
    if not ((data.target_of >= 0) & (data.target_of < lengths)).all():  # (else it would read another sentence's)
        raise AnalysisInputError(f"{data.source}: a target index lies outside its sentence")
    many = pieces[plan.token_offsets[data.sentence_of] + data.target_of] > 1
    return np.bincount(data.sentence_of, weights=many, minlength=len(data.sentences)) > 0


def target_vectors(
    nlp: Language, name: str, data: WicData, *, batch_size: int = 64, desc: str = "WiC",
    only: Optional[NDArray[np.bool_]] = None, base: Optional[NDArray[np.float32]] = None,
) -> NDArray[np.float32]:
    """(2n, n_layers, width): every layer of each pair's target token (rows as in `WicData`).

    The sentences are whitespace-tokenized already: each becomes
    ``Doc(words=sentence)`` and runs through the analysed component (and what
    it needs upstream). only, base: embed only the sentences where `only` is
    True and take the other rows from `base`.
    """
    chosen = np.arange(len(data.sentences)) if only is None else np.flatnonzero(only)
    out = None if base is None else base.copy()
    # the rows (pair sides) of each chosen sentence, grouped by one sort
    order = np.argsort(data.sentence_of, kind="stable")
    bounds = np.searchsorted(data.sentence_of[order], np.arange(len(data.sentences) + 1))
    docs = (Doc(nlp.vocab, words=list(data.sentences[s])) for s in chosen)
    with tqdm(total=len(chosen), unit="sentence", desc=desc, file=sys.stderr) as progress:
        for s, doc in zip(chosen, run_docs(nlp, name, docs, batch_size)):
            layers = doc_layers(doc, name)
            if out is None:
                out = np.zeros((data.sentence_of.shape[0], *layers[:, 0].shape), dtype=np.float32)
            rows = order[bounds[s]:bounds[s + 1]]
            out[rows] = layers[:, data.target_of[rows]].transpose(1, 0, 2)
            progress.update(1)
    if out is None:
        raise ValueError("no WiC sentence was embedded")
    return out


@dataclass
class WicGrams:
    """Per pair, the dot products between the layers of its two target vectors.

    cross[p, i, j] = u_i . v_j, first[p, i, j] = u_i . u_j, second[p, i, j] = v_i . v_j
    for the pair's first (u) and second (v) target vector, layers i, j.
    """

    cross: NDArray[np.float64]
    first: NDArray[np.float64]
    second: NDArray[np.float64]

    @classmethod
    def from_targets(cls, targets: NDArray[np.float32]) -> "WicGrams":
        n = targets.shape[0] // 2
        # A NaN side has a NaN norm, which `cosines` would take for no vector: a silent cosine of 0.
        bad = np.flatnonzero(~np.isfinite(targets).reshape(targets.shape[0], -1).all(axis=1)) % max(n, 1)
        if bad.size:
            raise ValueError(f"targets: {np.unique(bad).size} of {n} pairs have a target vector with NaN or inf "
                             f"(the first: pair {bad.min()}); a cosine with it is undefined")
        u, v = targets[:n].astype(np.float64), targets[n:].astype(np.float64)
        return cls(np.einsum("pid,pjd->pij", u, v), np.einsum("pid,pjd->pij", u, u), np.einsum("pid,pjd->pij", v, v))

    @classmethod
    def from_stacked(cls, stacked: NDArray[np.float64]) -> "WicGrams":
        """The inverse of `stacked`."""
        return cls(*(np.ascontiguousarray(stacked[:, k]) for k in range(3)))

    def stacked(self) -> NDArray[np.float64]:
        """(n_pairs, 3, n_layers, n_layers): cross, first, second; rows index pairs (for cross-validation)."""
        return np.stack([self.cross, self.first, self.second], axis=1)

    @property
    def n_layers(self) -> int:
        return int(self.cross.shape[1])

    def pairs_without_vector(self) -> int:
        """Pairs where a side is the zero vector in some layer (their cosine there is 0)."""
        first, second = np.diagonal(self.first, axis1=1, axis2=2), np.diagonal(self.second, axis1=1, axis2=2)
        return int(((first == 0) | (second == 0)).any(axis=1).sum())

    def cosines(self, weights: NDArray[np.float64]) -> NDArray[np.float64]:
        """(n_pairs, n_mixes): the cosine between w . layers of each side, for each row w of `weights`.

        With w = one-hot this is one layer's cosine; with w = all ones, that of
        the mean of all layers (the scale of w does not change a cosine).
        A pair where either side is the zero vector gets 0, as spaCy's similarity does.
        """
        w = np.atleast_2d(np.asarray(weights, dtype=np.float64))

        def quadratic(gram: NDArray[np.float64]) -> NDArray[np.float64]:
            return np.einsum("pij,mi,mj->pm", gram, w, w, optimize=True)

        norms = np.sqrt(np.maximum(quadratic(self.first), 0) * np.maximum(quadratic(self.second), 0))
        dots = quadratic(self.cross)
        return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)

    def layer_cosines(self) -> NDArray[np.float64]:
        return self.cosines(np.eye(self.n_layers))

    def mean_cosines(self) -> NDArray[np.float64]:
        return self.cosines(np.ones((1, self.n_layers)))[:, 0]


# ---------------------------------------------------------------- rules


def fit_threshold(scores: NDArray[np.float64], labels: NDArray[np.bool_]) -> float:
    """The threshold t for which "same sense iff score >= t" is most accurate on (scores, labels).

    Every cut between two distinct sorted scores is tried (at their midpoint),
    plus calling every pair T (t = -inf) or F (t = +inf); ties go to the
    lowest threshold.
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    if scores.size == 0:
        raise ValueError("fit_threshold: no scores")
    if not np.isfinite(scores).all():  # (NaN sorts last and is below no cut: the count of right answers is off)
        raise ValueError(f"fit_threshold: {int((~np.isfinite(scores)).sum())} of {scores.size} scores are NaN or "
                         "inf")
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], labels[order]
    # cut k calls the k lowest scores F: right are the Fs below it and the Ts above it
    correct = np.concatenate(([0], np.cumsum(~y))) + (y.sum() - np.concatenate(([0], np.cumsum(y))))
    possible = np.ones(s.size + 1, dtype=bool)
    possible[1:-1] = s[1:] > s[:-1]  # no threshold falls between equal scores
    k = int(np.flatnonzero(possible & (correct == correct[possible].max()))[0])
    if k == 0:
        return float("-inf")
    if k == s.size:
        return float("inf")
    middle = s[k - 1] + (s[k] - s[k - 1]) / 2
    return float(middle if middle > s[k - 1] else s[k])  # adjacent floats have no midpoint


#: How `evaluate_senses` gives a threshold that calls every pair one label: JSON has no infinity, and
#: null would read as "missing".
ALL_SAME, ALL_DIFFERENT = "all_same", "all_different"


def threshold_value(threshold: float) -> Union[float, str]:
    """`threshold` as the results give it: -inf is `ALL_SAME` (every pair T), +inf `ALL_DIFFERENT`."""
    if threshold == float("-inf"):
        return ALL_SAME
    if threshold == float("inf"):
        return ALL_DIFFERENT
    return threshold


class Rule(Protocol):
    def fit(self, x: NDArray[np.float64], y: NDArray[np.bool_]) -> Any: ...

    def predict(self, fitted: Any, x: NDArray[np.float64]) -> NDArray[np.bool_]: ...


class ThresholdRule:
    """x: (n,) scores; same sense iff x >= the fitted threshold."""

    def fit(self, x: NDArray[np.float64], y: NDArray[np.bool_]) -> float:
        return fit_threshold(x, y)

    def predict(self, fitted: float, x: NDArray[np.float64]) -> NDArray[np.bool_]:
        return np.asarray(x) >= fitted


class CosineLogisticRule:
    """x: (n, n_layers) per-layer cosines; logistic regression on the standardised cosines (not a mix)."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def fit(self, x: NDArray[np.float64], y: NDArray[np.bool_]) -> Any:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=self.seed)).fit(x, y)

    def predict(self, fitted: Any, x: NDArray[np.float64]) -> NDArray[np.bool_]:
        return np.asarray(fitted.predict(x), dtype=bool)


@dataclass
class ScalarMixFit:
    """A scalar mix fitted on WiC pairs: same sense iff cos(w . u, w . v) >= threshold.

    weights: w = softmax(logits), one per layer, summing to 1.
    logits: s, centred (a ScalarMix combiner's ``s`` parameter gives these weights).
    scale, bias: a and b of the logistic model a * cosine + b the weights were fitted with.
    loss: its objective at the fit (`scalar_mix_loss`).
    threshold: fitted on the mixed cosines for accuracy, as `fit_threshold` does.
    """

    weights: NDArray[np.float64]
    logits: NDArray[np.float64]
    scale: float
    bias: float
    loss: float
    threshold: float


def _softmax(s: NDArray[np.float64]) -> NDArray[np.float64]:
    e = np.exp(s - s.max())
    return np.asarray(e / e.sum(), dtype=np.float64)


def scalar_mix_loss(
    params: NDArray[np.float64], grams: WicGrams, labels: NDArray[np.bool_], c: float = 1.0
) -> Tuple[float, NDArray[np.float64]]:
    """The objective `fit_scalar_mix` fits the weights to (a local minimum of it), and its gradient.

    params: (s_1..s_L, a, b). With w = softmax(s) and x_p the cosine of pair p
    under w, it is the mean logistic loss of z_p = a * x_p + b plus
    a**2 / (2 c n): sklearn's LogisticRegression(C=c) objective on the one
    feature x, divided by c * n.
    """
    n_layers = grams.n_layers
    s, a, b = params[:n_layers], float(params[n_layers]), float(params[n_layers + 1])
    y = labels.astype(np.float64)
    w = _softmax(s)
    cw, ctw = np.einsum("pij,j->pi", grams.cross, w), np.einsum("pij,i->pj", grams.cross, w)
    fw, sw = np.einsum("pij,j->pi", grams.first, w), np.einsum("pij,j->pi", grams.second, w)
    qc, qf, qs = cw @ w, fw @ w, sw @ w
    norms = np.sqrt(np.maximum(qf, 0) * np.maximum(qs, 0))
    ok = norms > 0  # a side without a vector: cosine 0, as in `WicGrams.cosines`
    safe = np.where(ok, norms, 1.0)
    x = np.where(ok, qc / safe, 0.0)
    loss, r, grad_ab = _logistic_loss(x, y, a, b, c)
    # d cos / d w = (C + C^T) w / |u||v| - cos * (F w / |u|^2 + S w / |v|^2)
    dx_dw = np.where(ok[:, None], (cw + ctw) / safe[:, None] - x[:, None] * (
        fw / np.where(ok, qf, 1.0)[:, None] + sw / np.where(ok, qs, 1.0)[:, None]), 0.0)
    grad_w = (a * r) @ dx_dw
    grad_s = w * (grad_w - w @ grad_w)  # through the softmax
    return loss, np.concatenate([grad_s, grad_ab])


def _logistic_loss(
    x: NDArray[np.float64], y: NDArray[np.float64], a: float, b: float, c: float
) -> Tuple[float, NDArray[np.float64], NDArray[np.float64]]:
    """The mean logistic loss of z = a * x + b plus a**2 / (2 c n); its derivative in each z_p, and in (a, b)."""
    from scipy.special import expit

    n = y.shape[0]
    z = a * x + b
    r = (expit(z) - y) / n
    loss = float(np.mean(np.logaddexp(0.0, z) - y * z) + a * a / (2 * c * n))
    return loss, r, np.array([float(r @ x) + a / (c * n), float(r.sum())])


def _fit_scale(x: NDArray[np.float64], labels: NDArray[np.bool_], c: float) -> Tuple[float, float, float]:
    """(a, b, loss): the scale and bias that minimise `_logistic_loss` on the fixed cosines x."""
    from scipy.optimize import minimize

    y = labels.astype(np.float64)

    def objective(ab: NDArray[np.float64]) -> Tuple[float, NDArray[np.float64]]:
        loss, _, grad = _logistic_loss(x, y, float(ab[0]), float(ab[1]), c)
        return loss, grad

    found = minimize(objective, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B", options={"gtol": 1e-10})
    return float(found.x[0]), float(found.x[1]), float(found.fun)


#: The single layers `fit_scalar_mix` also starts near: those whose own cosine has the lowest loss.
LAYER_STARTS = 3
#: The weight a start near one layer gives it: close to that layer, but short of where the softmax
#: saturates (its gradient vanishes there, and the fit could not leave).
START_WEIGHT = 0.9
#: A logit that leaves one layer alone: softmax(ALONE * one_hot) gives the others e**-40 (about 4e-18) each.
ALONE = 40.0


def _mix_starts(grams: WicGrams, labels: NDArray[np.bool_], c: float) -> List[NDArray[np.float64]]:
    """The logits `fit_scalar_mix` starts from: the mean of the layers (s = 0), the layer best alone (lowest
    loss, ties to the lower layer) as it is, then near each of the `LAYER_STARTS` layers best alone.

    The loss has local minima at single layers, where the softmax saturates: a fit from the mean alone
    stopped at one layer while another alone did better (WiC, MiniLM, mean pooling: layer 4 at 0.6523
    against layer 6 at 0.6504), and a fit that heads for a layer only approaches its loss from above.
    """
    n_layers = grams.n_layers
    if n_layers == 1:
        return [np.zeros(1)]
    singles = grams.layer_cosines()
    best_alone = np.argsort([_fit_scale(singles[:, j], labels, c)[2] for j in range(n_layers)], kind="stable")
    near = np.log(START_WEIGHT / (1 - START_WEIGHT) * (n_layers - 1))  # the logit that gives START_WEIGHT
    one_hot = np.eye(n_layers)
    return [np.zeros(n_layers), ALONE * one_hot[best_alone[0]]] + [near * one_hot[j]
                                                                   for j in best_alone[:LAYER_STARTS]]


def fit_scalar_mix(grams: WicGrams, labels: NDArray[np.bool_], c: float = 1.0) -> ScalarMixFit:
    """Softmax layer weights and a threshold that separate the senses of (grams, labels).

    The weights are fitted to `scalar_mix_loss` (L-BFGS-B, exact gradient) from
    a few starts (`_mix_starts`: the mean of the layers, the layer best alone,
    and near each of the few layers best alone), each with the scale and bias
    best for its start weights; the lowest loss found wins (ties: the earlier
    start). The loss has local minima, so this is the best of these local fits,
    not a proven global minimum; as a fit never raises the loss of its start, it
    is no worse than the mean of the layers or any single layer. The threshold
    is then fitted on the mixed cosines (`fit_threshold`).
    """
    from scipy.optimize import minimize

    labels = np.asarray(labels, dtype=bool)
    n_layers = grams.n_layers
    best = None
    for start in _mix_starts(grams, labels, c):
        # from the best scale and bias of the start's own weights: the fit can only lower that loss
        a, b, _ = _fit_scale(grams.cosines(_softmax(start))[:, 0], labels, c)
        found = minimize(scalar_mix_loss, np.concatenate([start, [a, b]]), args=(grams, labels, c), jac=True,
                         method="L-BFGS-B", options={"maxiter": 1000, "gtol": 1e-8})
        if best is None or found.fun < best.fun:
            best = found
    assert best is not None
    s = best.x[:n_layers] - best.x[:n_layers].mean()
    weights = _softmax(s)
    return ScalarMixFit(weights=weights, logits=s, scale=float(best.x[n_layers]), bias=float(best.x[n_layers + 1]),
                        loss=float(best.fun), threshold=fit_threshold(grams.cosines(weights)[:, 0], labels))


class ScalarMixRule:
    """x: (n, 3, n_layers, n_layers) stacked Gram matrices (`WicGrams.stacked`); a fitted scalar mix."""

    def __init__(self, c: float = 1.0) -> None:
        self.c = c

    def fit(self, x: NDArray[np.float64], y: NDArray[np.bool_]) -> ScalarMixFit:
        return fit_scalar_mix(WicGrams.from_stacked(x), y, self.c)

    def predict(self, fitted: ScalarMixFit, x: NDArray[np.float64]) -> NDArray[np.bool_]:
        return WicGrams.from_stacked(x).cosines(fitted.weights)[:, 0] >= fitted.threshold


def folds(labels: NDArray[np.bool_], n_folds: int, seed: int) -> List[Tuple[NDArray[np.int64], NDArray[np.int64]]]:
    """Stratified, shuffled (train, test) index splits of the training pairs."""
    from sklearn.model_selection import StratifiedKFold

    check_folds(labels, n_folds)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(labels.shape[0]), labels))


def check_folds(labels: NDArray[np.bool_], n_folds: int) -> None:
    """Raise `AnalysisInputError` unless every fold can hold pairs of both labels (2 .. the smaller class)."""
    same = int(np.count_nonzero(labels))
    different = int(labels.shape[0]) - same
    if min(same, different) < 2:  # no --folds can work: the pairs are the problem
        raise AnalysisInputError(f"--wic-train: its pairs have {same} T and {different} F labels; the folds need "
                                 "at least 2 of each (every fold holds pairs of both labels)")
    if n_folds < 2 or n_folds > min(same, different):
        raise AnalysisInputError(f"--folds {n_folds}: expected 2 .. {min(same, different)} (the WiC training "
                                 f"pairs have {same} T and {different} F labels)")


def held_out_accuracy(
    rule: Rule, x: NDArray[np.float64], y: NDArray[np.bool_], *,
    splits: Optional[Sequence[Tuple[NDArray[np.int64], NDArray[np.int64]]]] = None,
    x_eval: Optional[NDArray[np.float64]] = None, y_eval: Optional[NDArray[np.bool_]] = None,
) -> float:
    """Accuracy of `rule` on pairs it was not fitted on.

    With `x_eval`: fitted on all of (x, y), scored on (x_eval, y_eval).
    Otherwise: each split's rule, fitted on its train part, predicts its test
    part; the accuracy is over all pairs.
    """
    if x_eval is not None and y_eval is not None:
        return float(np.mean(rule.predict(rule.fit(x, y), x_eval) == y_eval))
    if splits is None:
        raise ValueError("held_out_accuracy: give splits or evaluation data")
    right = np.zeros(y.shape[0], dtype=bool)
    for train, test in splits:
        right[test] = rule.predict(rule.fit(x[train], y[train]), x[test]) == y[test]
    return float(right.mean())


def _threshold_scores(
    x: NDArray[np.float64], y: NDArray[np.bool_], splits, x_eval: Optional[NDArray[np.float64]],
    y_eval: Optional[NDArray[np.bool_]],
) -> dict:
    rule = ThresholdRule()
    threshold = rule.fit(x, y)
    cv = held_out_accuracy(rule, x, y, splits=splits)
    return {
        "accuracy": cv if x_eval is None else held_out_accuracy(rule, x, y, x_eval=x_eval, y_eval=y_eval),
        "cv_accuracy": cv, "threshold": threshold_value(threshold),
        "train_accuracy": float(np.mean(rule.predict(threshold, x) == y)),
    }


def evaluate_senses(
    train: WicGrams, y_train: NDArray[np.bool_], layer_ids: Sequence[int], *, n_folds: int = 5, seed: int = 0,
    evaluation: Optional[WicGrams] = None, y_eval: Optional[NDArray[np.bool_]] = None,
) -> dict:
    """WiC accuracy of every layer, of the mean of all layers, of the fitted scalar mix (and, as an
    extra, of logistic regression on the per-layer cosines).

    "accuracy" is on the evaluation pairs when given, else cross-validated;
    "cv_accuracy" is always cross-validated on the training pairs (what
    choices such as the recommended layers are made on). Thresholds, weights
    and coefficients are fitted on all the training pairs; the evaluation
    pairs only give "accuracy". A threshold that calls every pair one label
    is `ALL_SAME` or `ALL_DIFFERENT` (`threshold_value`).
    """
    splits = folds(y_train, n_folds, seed)
    per_layer, eval_layers = train.layer_cosines(), None if evaluation is None else evaluation.layer_cosines()
    layers = []
    for column, layer in enumerate(layer_ids):
        scores = _threshold_scores(per_layer[:, column], y_train, splits,
                                   None if eval_layers is None else eval_layers[:, column], y_eval)
        layers.append({"layer": int(layer), **scores})
    mean = _threshold_scores(train.mean_cosines(), y_train, splits,
                             None if evaluation is None else evaluation.mean_cosines(), y_eval)
    return {
        "layers": layers, "mean_of_layers": mean,
        "scalar_mix": _scalar_mix_scores(train, y_train, splits, evaluation, y_eval),
        "logistic_regression": _logistic_scores(per_layer, y_train, splits, eval_layers, y_eval, seed),
        "pairs_without_vector": {"train": train.pairs_without_vector(),
                                 "eval": None if evaluation is None else evaluation.pairs_without_vector()},
    }


def _scalar_mix_scores(
    train: WicGrams, y_train: NDArray[np.bool_], splits, evaluation: Optional[WicGrams],
    y_eval: Optional[NDArray[np.bool_]],
) -> dict:
    rule, x = ScalarMixRule(), train.stacked()
    fitted = rule.fit(x, y_train)
    cv = held_out_accuracy(rule, x, y_train, splits=splits)
    accuracy = cv
    if evaluation is not None and y_eval is not None:
        accuracy = float(np.mean(rule.predict(fitted, evaluation.stacked()) == y_eval))
    return {
        "accuracy": accuracy, "cv_accuracy": cv, "threshold": threshold_value(fitted.threshold),
        "train_accuracy": float(np.mean(rule.predict(fitted, x) == y_train)),
        "weights": [float(w) for w in fitted.weights], "logits": [float(s) for s in fitted.logits],
    }


def _logistic_scores(
    per_layer: NDArray[np.float64], y_train: NDArray[np.bool_], splits, eval_layers: Optional[NDArray[np.float64]],
    y_eval: Optional[NDArray[np.bool_]], seed: int,
) -> dict:
    rule = CosineLogisticRule(seed)
    fitted = rule.fit(per_layer, y_train)
    cv = held_out_accuracy(rule, per_layer, y_train, splits=splits)
    return {
        "accuracy": cv if eval_layers is None else held_out_accuracy(
            rule, per_layer, y_train, x_eval=eval_layers, y_eval=y_eval),
        "cv_accuracy": cv,
        "train_accuracy": float(np.mean(rule.predict(fitted, per_layer) == y_train)),
        "coefficients": [float(c) for c in fitted[-1].coef_[0]],
        "intercept": float(fitted[-1].intercept_[0]),
    }
