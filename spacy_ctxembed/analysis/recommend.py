"""Which layers to use: the set of layers and the pooling that separate senses best on WiC.

Candidates, for every pooling mode tried: every run of consecutive layers
(one layer alone included) and the 2..4 layers with the best single-layer
accuracy, each combined as a plain mean (the MeanLayers combiner). Each is
scored by the cross-validated accuracy of its fitted cosine threshold on the
WiC training pairs (`wic`), never on the evaluation pairs, which only report
the chosen one's accuracy. Ties go to fewer layers, then to a lower top layer
(the encoder runs only up to the highest layer selected), then to the
configured pooling.

The winner's cross-validated accuracy is the best of many candidates scored
on the same folds, so it is optimistic: it is reported as ``cv_accuracy``
("selected on these folds"), and ``accuracy`` is only given when held-out
evaluation pairs score the chosen candidate. Each is read against the
majority-class baseline of the pairs it is measured on (the two sets of pairs
may be balanced differently): a winner no better than it (a threshold that
answers every pair alike fits such layers) separates nothing, which the note,
``beats_baseline`` and ``beats_eval_baseline`` say, rather than naming it the best.
"""
import copy
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from numpy.typing import NDArray
from thinc.api import Config

from .wic import ThresholdRule, WicGrams, folds, held_out_accuracy, majority_class, majority_rule

MAX_TOP = 4
MEAN_COMBINER = "spacy-ctxembed.MeanLayers.v1"


def candidate_sets(n_layers: int, single_scores: Sequence[float], max_top: int = MAX_TOP) -> List[Tuple[int, ...]]:
    """Positions of the candidate layer sets: all consecutive runs, then the best 2..max_top layers."""
    runs = [tuple(range(a, b + 1)) for a in range(n_layers) for b in range(a, n_layers)]
    ranked = np.argsort(-np.asarray(single_scores, dtype=np.float64), kind="stable")
    tops = [tuple(sorted(int(i) for i in ranked[:k])) for k in range(2, min(max_top, n_layers) + 1)]
    return runs + [t for t in tops if t not in runs]


def recommend(
    train: Dict[Optional[str], WicGrams], y_train: NDArray[np.bool_], layer_ids: Sequence[int], *,
    n_folds: int = 5, seed: int = 0,
    evaluation: Optional[Dict[Optional[str], WicGrams]] = None, y_eval: Optional[NDArray[np.bool_]] = None,
) -> dict:
    """The best candidate over all pooling modes in `train` (the configured mode first).

    RETURNS: ``layers`` (model indices), ``pooling``, ``cv_accuracy`` (the
    winner's cross-validated accuracy: selected on these folds, so optimistic),
    ``accuracy`` (on the evaluation pairs when given, else None), ``note``,
    ``beats_baseline`` (whether ``cv_accuracy`` is above the training pairs'
    majority-class rate), ``beats_eval_baseline`` (whether ``accuracy`` is
    above the evaluation pairs'; None without them, or where they are all of
    one label: nothing can beat that), ``n_candidates`` and
    ``ranking``: the 10 best candidates with their cv accuracy.
    """
    splits = folds(y_train, n_folds, seed)
    rule = ThresholdRule()
    scored = []
    for order, (pooling, grams) in enumerate(train.items()):
        singles = [held_out_accuracy(rule, c, y_train, splits=splits) for c in grams.layer_cosines().T]
        sets = candidate_sets(grams.n_layers, singles)
        cosines = grams.cosines(_weights(sets, grams.n_layers))
        for column, positions in enumerate(sets):
            cv = held_out_accuracy(rule, cosines[:, column], y_train, splits=splits)
            scored.append((-cv, len(positions), max(positions), order, pooling, positions))
    scored.sort(key=lambda item: item[:4])
    _, _, _, _, pooling, positions = scored[0]
    best = -scored[0][0]
    accuracy: Optional[float] = None
    eval_baseline: Optional[dict] = None
    if evaluation is not None and y_eval is not None:
        weights = _weights([positions], train[pooling].n_layers)
        accuracy = held_out_accuracy(rule, train[pooling].cosines(weights)[:, 0], y_train,
                                     x_eval=evaluation[pooling].cosines(weights)[:, 0], y_eval=y_eval)
        eval_baseline = majority_class(y_eval)
    baseline = majority_class(y_train)
    return {
        "layers": [int(layer_ids[p]) for p in positions], "pooling": pooling, "cv_accuracy": best,
        "accuracy": accuracy, "note": accuracy_note(best, accuracy, len(scored), baseline, eval_baseline),
        "beats_baseline": bool(best > baseline["majority_rate"]),
        "beats_eval_baseline": None if accuracy is None or eval_baseline is None or eval_baseline["majority_rate"] >= 1
        else bool(accuracy > eval_baseline["majority_rate"]),
        "n_candidates": len(scored),
        "ranking": [{"layers": [int(layer_ids[p]) for p in s[5]], "pooling": s[4], "cv_accuracy": -s[0]}
                    for s in scored[:10]],
    }


def accuracy_note(cv_accuracy: float, accuracy: Optional[float], n_candidates: int, baseline: dict,
                  eval_baseline: Optional[dict] = None) -> str:
    """What the recommendation's accuracy numbers are, in words (the config snippet's comment),
    each against the majority-class baseline (`majority_class`) of the pairs it is measured on:
    the training pairs' for the cross-validated one, the evaluation pairs' for the held-out one."""
    rate, always = baseline["majority_rate"], majority_rule(baseline)
    cv = (f"cross-validated accuracy {cv_accuracy:.3f} on the training pairs (selected on these folds: "
          f"the best of {n_candidates} candidates, so optimistic); majority-class baseline {rate:.3f} ({always})")
    if cv_accuracy <= rate:
        cv = (f"NO candidate beats the majority-class baseline: these layers separate the senses no better than "
              f"answering {always}; {cv}")
    if accuracy is None:
        return f"{cv}; --wic-eval gives a held-out accuracy"
    held_out = f"held-out accuracy {accuracy:.3f} on the --wic-eval pairs"
    if eval_baseline is not None:
        eval_rate, eval_always = eval_baseline["majority_rate"], majority_rule(eval_baseline)
        held_out += f", whose majority-class baseline is {eval_rate:.3f} ({eval_always})"
        if eval_rate >= 1.0:  # (pairs of one label: no rule can beat answering it)
            held_out += f": the --wic-eval pairs are all {eval_baseline['majority_label']}, and tell nothing"
        elif accuracy <= eval_rate:
            held_out = (f"NO better than the majority class on the --wic-eval pairs: these layers separate their "
                        f"senses no better than answering {eval_always}; {held_out}")
    return f"{held_out}; {cv}"


def _weights(sets: Sequence[Tuple[int, ...]], n_layers: int) -> NDArray[np.float64]:
    weights = np.zeros((len(sets), n_layers))
    for row, positions in enumerate(sets):
        weights[row, list(positions)] = 1.0
    return weights


def config_snippet(component: str, block: Dict[str, Any], layers: Sequence[int], pooling: Optional[str],
                   comment: str = "") -> str:
    """The component's config blocks with the recommended layers, pooling and a mean combiner.

    block: the component's block as configured (``nlp.config["components"][component]``);
        every other setting is kept, so the text replaces the ``[components.NAME...]``
        blocks of a config.cfg as it is (`recommended_block`).
    """
    edited = recommended_block(block, layers, pooling)
    text = Config({"components": {component: edited}}).to_str()
    # a config.cfg has its own [components] header
    text = text.split("\n", 2)[2] if text.startswith("[components]\n") else text
    return "".join(f"# {line}\n" for line in comment.splitlines()) + text + "\n"


def recommended_block(block: Dict[str, Any], layers: Sequence[int], pooling: Optional[str]) -> Dict[str, Any]:
    """A copy of a component's config block with the recommended layers, pooling and a mean combiner.

    In the v2 layout the layers live in the ``model.encoder`` block; a v1
    block keeps them (and ``combine``) as component settings.
    """
    edited = copy.deepcopy(dict(block))
    model = edited.get("model")
    if isinstance(model, dict) and "encoder" in model:
        settings = model["encoder"]
        model["combiner"] = {"@layers": MEAN_COMBINER}
    else:
        settings = edited
        edited["combine"] = "mean"
    settings["layers"] = [int(layer) for layer in layers]
    if pooling is not None:
        settings["pooling"] = pooling
    return edited


def python_snippet(component: str, block: Dict[str, Any], layers: Sequence[int], pooling: Optional[str]) -> str:
    """The same recommendation as an ``nlp.add_pipe`` call, with every configured setting.

    block: the component's block with its variables filled in (an
        interpolated config: ``${paths...}`` means nothing to add_pipe).
    """
    config = recommended_block(block, layers, pooling)
    factory = config.pop("factory", component)
    name = "" if component == factory else f", name={component!r}"
    return f"nlp.add_pipe({factory!r}{name}, config={config!r})"
