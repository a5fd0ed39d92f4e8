"""An analysis from end to end: for each pipeline, contextuality and sense separation per layer,
the recommended layers and the sense explorer, as one JSON-able dict (`report` writes it out).
"""
import copy
import importlib
import math
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import ContextManager, Dict, Iterator, List, Optional, Sequence, Tuple, cast

import numpy as np
from numpy.typing import NDArray
from spacy.language import Language
from tqdm import tqdm

from ..errors import MissingExtra, SettingError, install_extra
from ..settings import normalize_layers
from ..types import POOLING_MODES
from .corpus import Corpus
from .errors import AnalysisInputError
from .explorer import explore_word, unit_rows
from .extract import CorpusLayers, embed_corpus, word_form
from .metrics import layer_report
from .recommend import config_snippet, python_snippet, recommend
from .source import (
    Edit,
    PipelineSource,
    all_layer_edits,
    choose_component,
    edited_config,
    encoder_settings,
    factory_of,
    n_available_layers,
    pooling_modes,
    upstream_edits,
)
from .wic import (
    WicData,
    WicGrams,
    check_folds,
    evaluate_senses,
    held_out,
    majority_class,
    multi_piece_sentences,
    target_vectors,
)

#: What the ``analysis`` extra installs, as the error messages say it.
ANALYSIS_EXTRA = install_extra("analysis")
#: (module, distribution, oldest usable version) of every package the analysis imports beyond the core ones.
EXTRA_PACKAGES = (("sklearn", "scikit-learn", (1, 2)), ("scipy", "scipy", None),
                  ("threadpoolctl", "threadpoolctl", None), ("matplotlib", "matplotlib", (3, 6)))


def check_extra() -> None:
    """Raise `MissingExtra` naming the first package of the ``analysis`` extra that is missing or too old."""
    for module, package, oldest in EXTRA_PACKAGES:
        try:
            imported = importlib.import_module(module)
        except ImportError:
            raise MissingExtra(f"the analysis needs {package}, which is not installed: {ANALYSIS_EXTRA}",
                               package, "analysis") from None
        found = re.match(r"(\d+)\.(\d+)", str(getattr(imported, "__version__", "")))
        if oldest is not None and found is not None and tuple(map(int, found.groups())) < oldest:
            raise MissingExtra(f"the analysis needs {package} >= {'.'.join(map(str, oldest))}, found "
                               f"{imported.__version__}: {ANALYSIS_EXTRA}", package, "analysis")


@dataclass
class AnalysisSettings:
    """Sample sizes, seed and sizes of an analysis (the CLI option of each in parentheses).

    min_count: occurrences a word needs for self-similarity and MEV (--min-count).
    n_pairs: random token pairs for the anisotropy baseline; None: all pairs, exactly (--anisotropy-pairs).
    max_occurrences: occurrences per word used by self-similarity and MEV,
        sampled with the seed; None: all (--max-occurrences).
    seed: every random choice: pairs, samples, folds, k-means; 0 .. 2**32 - 1 (--seed).
    batch_size: corpus docs per nlp.pipe batch (--batch-size).
    wic_batch_size: WiC sentences per nlp.pipe batch (--wic-batch-size): short
        sentences pad less in large batches, which the encoder sorts by length.
    max_words: use the corpus up to this many tokens; None: all (--max-words).
    n_folds: cross-validation folds on the WiC training pairs (--folds).
    poolings: pooling modes for WiC; None: all the encoder has (--pooling).
    component: the contextual component to analyse in each pipeline that names
        none of its own (`PipelineSource.component`: --component, --compare-component);
        None: the pipeline's only one.
    words: the words the sense explorer explores (--word).
    explore_layers: layers the explorer uses (negative: from the top); None:
        the recommended ones, else the pipeline's configured ones (--explore-layers).
    max_clusters, n_examples, n_neighbours, explore_max_occurrences: the
        explorer's sizes (--max-clusters, --examples, --neighbours, --explore-max-occurrences).
    threads: torch threads while the analysis runs; 0: torch's default (--threads).
        The NumPy/BLAS part always runs on one thread.

    In n_pairs, max_occurrences, max_words and explore_max_occurrences, 0
    means the same as None (all), as on the command line.
    """

    min_count: int = 5
    n_pairs: Optional[int] = 1000
    max_occurrences: Optional[int] = None
    seed: int = 0
    batch_size: int = 32
    wic_batch_size: int = 512
    max_words: Optional[int] = None
    n_folds: int = 5
    poolings: Optional[List[str]] = None
    component: Optional[str] = None
    explore_layers: Optional[List[int]] = None
    max_clusters: int = 6
    n_examples: int = 3
    n_neighbours: int = 5
    explore_max_occurrences: Optional[int] = 1000
    words: List[str] = field(default_factory=list)
    threads: int = 0

    def __post_init__(self) -> None:
        self._zero_is_all()

    def _zero_is_all(self) -> None:
        for name in ZERO_IS_ALL.values():
            if getattr(self, name) == 0:
                setattr(self, name, None)

    def check(self) -> None:
        """Raise `AnalysisInputError` naming the first setting out of range (by its CLI option)."""
        self._zero_is_all()
        for option, name in (("--word", "words"), ("--pooling", "poolings")):
            # (a string is a sequence too: words="ran" explored "r", "a" and "n", silently)
            if isinstance(getattr(self, name), str):
                raise AnalysisInputError(f"{option} {getattr(self, name)!r}: AnalysisSettings.{name} takes a list "
                                         f"of them, not a string")
        minimums = {"--min-count": (self.min_count, 2), "--anisotropy-pairs": (self.n_pairs, 1),
                    "--max-occurrences": (self.max_occurrences, 2), "--batch-size": (self.batch_size, 1),
                    "--wic-batch-size": (self.wic_batch_size, 1),
                    "--max-words": (self.max_words, 1), "--folds": (self.n_folds, 2),
                    "--max-clusters": (self.max_clusters, 2), "--examples": (self.n_examples, 1),
                    "--neighbours": (self.n_neighbours, 1),
                    "--explore-max-occurrences": (self.explore_max_occurrences, 3), "--threads": (self.threads, 0)}
        for option, (value, minimum) in minimums.items():
            if value is not None and value < minimum:
                expected = f"0 (all) or at least {minimum}" if option in ZERO_IS_ALL else f"at least {minimum}"
                raise AnalysisInputError(f"{option} {value}: expected {expected}")
        if not 0 <= self.seed <= MAX_SEED:
            raise AnalysisInputError(f"--seed {self.seed}: expected 0 .. {MAX_SEED}")
        for mode in self.poolings or ():
            if mode not in POOLING_MODES:
                raise AnalysisInputError(f"--pooling {mode!r}: expected one of {', '.join(POOLING_MODES)}")


#: The largest seed numpy's legacy RandomState, which scikit-learn seeds its folds and k-means with, takes.
MAX_SEED = 2**32 - 1
#: The settings where 0 (or None) means "all", by CLI option.
ZERO_IS_ALL = {"--anisotropy-pairs": "n_pairs", "--max-occurrences": "max_occurrences", "--max-words": "max_words",
               "--explore-max-occurrences": "explore_max_occurrences"}


def analyze(
    corpus: Corpus, sources: Sequence[PipelineSource], settings: AnalysisSettings, *,
    wic_train: Optional[WicData] = None, wic_eval: Optional[WicData] = None,
) -> dict:
    """Analyse each pipeline on `corpus` (and WiC); see docs/analysis.md for every key.

    Everything is checked before anything is embedded: the settings, the
    WiC inputs (--folds against the training labels; evaluation pairs that
    are also training pairs are left out, `held_out`), the analysis extra,
    and each pipeline's plan (its component, its layers, --explore-layers
    against them).
    """
    settings.check()
    if not sources:  # (an empty report was written, its plot warning of no legend)
        raise AnalysisInputError("no pipeline to analyse: `sources` is empty (PipelineSource() is the embedded "
                                 "default)")
    spellings: Dict[str, str] = {}  # (the first spelling given of each word, for its note)
    for word in settings.words:
        spellings.setdefault(word_form(word), word)
    words, input_notes = explorer_words(settings.words)
    poolings = None if settings.poolings is None else list(dict.fromkeys(settings.poolings))
    settings = replace(settings, words=words, poolings=poolings)  # as run: analysis.json's settings say so too
    if wic_eval is not None and wic_train is None:
        raise AnalysisInputError("--wic-eval needs --wic-train: the thresholds are fitted on the training pairs")
    # (Given without what uses them, they were recorded in analysis.json's settings, and did nothing.)
    if settings.poolings and wic_train is None:
        raise AnalysisInputError(f"--pooling {settings.poolings} needs --wic-train: the poolings are "
                                 "tried on WiC only (the corpus is embedded once, as configured)")
    if settings.explore_layers and not settings.words:
        raise AnalysisInputError(f"--explore-layers {settings.explore_layers} needs --word: "
                                 "they are the layers of the sense explorer, which explores the words given")
    if wic_train is not None:
        check_folds(wic_train.labels, settings.n_folds)
    if wic_train is not None and wic_eval is not None:
        wic_eval, overlap = held_out(wic_train, wic_eval)
        if overlap is not None:
            input_notes.append(overlap)
    check_extra()
    started = time.perf_counter()
    with torch_threads(settings.threads):
        plans = [_plan(source, settings) for source in sources]
        if settings.max_words is None:  # (else only the lines reached count: checked as they are)
            for source, plan in zip(sources, plans):
                corpus.check_line_lengths(plan.max_length, f"the pipeline {source.label}")
        pipelines = [analyze_pipeline(source, corpus, settings, wic_train=wic_train, wic_eval=wic_eval, plan=plan,
                                      input_notes=input_notes, spellings=spellings)
                     for source, plan in zip(sources, plans)]
    distinct_labels(pipelines)
    return {
        "version": 2,  # 2: thresholds may be "all_same"/"all_different"; majority baselines
        # the file; what each pipeline analysed (its tokens, sentences) is in its own corpus_* keys
        "corpus": {"path": str(corpus.path), "kind": corpus.kind, "docs_in_file": corpus.n_docs},
        "settings": asdict(settings), "wic": _wic_inputs(settings, wic_train, wic_eval), "pipelines": pipelines,
        "seconds": round(time.perf_counter() - started, 2),
    }


def distinct_labels(pipelines: Sequence[dict]) -> None:
    """Make the pipelines' labels, which name them in the plots, tables and summary, distinct: a label that
    two share (one pipeline's two components, --model X --compare X) gets the pipeline's number and
    component ("source" keeps the label as given)."""
    labels = [pipeline["label"] for pipeline in pipelines]
    for number, pipeline in enumerate(pipelines, start=1):
        if labels.count(pipeline["label"]) > 1:
            pipeline["label"] = f"{pipeline['label']} [pipeline {number}, component {pipeline['component']}]"


def explorer_words(words: Sequence[str]) -> Tuple[List[str], List[str]]:
    """The --word values as the explorer matches them (`word_form`), each once, in the order first given;
    and a note for each that was given more than once (explored once, with one plot)."""
    given: Dict[str, List[str]] = {}
    for word in words:
        given.setdefault(word_form(word), []).append(word)
    notes = [f"--word {', '.join(map(repr, spellings))}: one word as the explorer matches words (lowercase), "
             f"explored once as {form!r}" for form, spellings in given.items() if len(spellings) > 1]
    return list(given), notes


def _wic_inputs(settings: AnalysisSettings, train: Optional[WicData], evaluation: Optional[WicData]
                ) -> Optional[dict]:
    """The WiC pairs, how they are scored, and the majority-class baseline of the scored pairs."""
    if train is None:
        return None
    protocol = (f"threshold fitted on {train.source}, accuracy on {evaluation.source}" if evaluation is not None
                else f"{settings.n_folds}-fold cross-validation on {train.source}")
    # "accuracy" is measured on the evaluation pairs when there are some: the baseline is theirs
    scored = train if evaluation is None else evaluation
    baseline = {"pairs": "train" if evaluation is None else "eval", **majority_class(scored.labels)}
    return {"train": train.describe(), "eval": None if evaluation is None else evaluation.describe(),
            "protocol": protocol, "majority_baseline": baseline}


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch runs on `n` intra-op threads inside the block (0: leave torch's setting alone)."""
    if n <= 0:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def one_blas_thread() -> ContextManager:
    """BLAS on one thread: MEV is many small SVDs, which threads slow down (3-8x measured on 2 busy
    cores) rather than speed up; the WiC fits and the explorer are many small products too."""
    from threadpoolctl import threadpool_limits

    return cast(ContextManager, threadpool_limits(limits=1, user_api="blas"))


@dataclass
class _Plan:
    """What to analyse in a pipeline, read from it as configured."""

    name: str  # the contextual component
    factory: str
    layer_ids: List[int]  # every layer the model has ([-1]: only the last is available)
    configured_layers: List[int]
    explore_layers: Optional[List[int]]  # --explore-layers as model indices; None: not given
    modes: List[Optional[str]]  # pooling modes, the configured one first
    block: dict  # the component's config block, as configured
    python_block: dict  # the same with its variables filled in
    edits: List[Edit]  # what makes it store every layer
    notes: List[str]
    max_length: int  # its nlp.max_length: the longest text line its tokenizer takes


def _plan(source: PipelineSource, settings: AnalysisSettings) -> _Plan:
    """Load the pipeline as configured (then drop it: one model at a time) and read the plan from it."""
    wanted = source.component if source.component is not None else settings.component
    as_configured = source.load(component=wanted)
    name = choose_component(as_configured, wanted, source.label, source.component_option)
    hidden_states = upstream_edits(as_configured, name)
    # from_trf: count the layers with the upstream transformer told to output them all
    n_layers = n_available_layers(source.load(hidden_states, component=name) if hidden_states else as_configured,
                                  name)
    notes = [] if n_layers else [
        "the upstream transformer outputs only its last layer (layer -1 below): build the pipeline with "
        "output_hidden_states = true in the transformer's transformer_config to see every layer "
        "(a saved spacy-transformers pipeline keeps the setting it was saved with)"]
    layer_ids = list(range(n_layers)) if n_layers else [-1]
    configured = encoder_settings(as_configured, name).get("layers", [-1])
    modes = pooling_modes(as_configured, name, settings.poolings)
    if settings.poolings and modes == [None]:  # (recorded in analysis.json's settings, as if they were tried)
        notes.append(f"--pooling {settings.poolings}: not tried on this pipeline: {factory_of(as_configured, name)} "
                     "has no pooling modes (one vector a token)")
    edits = all_layer_edits(as_configured, name, layer_ids, modes[0])
    if source.config is not None:
        edited_config(source.config, edits, source.option)  # (refused now, not after another pipeline's run)
    return _Plan(
        name=name, factory=factory_of(as_configured, name), layer_ids=layer_ids,
        configured_layers=list(normalize_layers(name, configured, n_layers)) if n_layers else [-1],
        explore_layers=_explore_layers(settings.explore_layers, name, n_layers, source.label), modes=modes,
        block=copy.deepcopy(dict(as_configured.config["components"][name])),
        python_block=copy.deepcopy(dict(as_configured.config.interpolate()["components"][name])),
        edits=edits, notes=notes, max_length=as_configured.max_length,
    )


def _explore_layers(wanted: Optional[List[int]], name: str, n_layers: Optional[int], label: str
                    ) -> Optional[List[int]]:
    """--explore-layers as the model's indices (negative: from the top), each once; None if not given."""
    if not wanted:
        return None
    if n_layers is None:  # only the last layer is available: it is layer -1
        if any(layer != -1 for layer in wanted):
            raise AnalysisInputError(f"--explore-layers {wanted}: the pipeline {label} gives only its last layer "
                                     "(-1)")
        return [-1]
    try:
        resolved = normalize_layers(name, wanted, n_layers)
    except SettingError as e:
        reason = str(e).split(": ", 1)[-1]
        raise AnalysisInputError(f"--explore-layers {wanted}: {reason} (pipeline {label})") from None
    return list(dict.fromkeys(resolved))


def analyze_pipeline(
    source: PipelineSource, corpus: Corpus, settings: AnalysisSettings, *,
    wic_train: Optional[WicData] = None, wic_eval: Optional[WicData] = None, plan: Optional[_Plan] = None,
    input_notes: Sequence[str] = (), spellings: Optional[Dict[str, str]] = None,
) -> dict:
    """Everything about one pipeline (one entry of ``analysis.json``'s ``pipelines``).

    plan: what `analyze` planned for it already (else it is planned here).
    input_notes: notes on the inputs that `analyze` changed (words merged, evaluation pairs that are also
        training pairs left out), first in the pipeline's notes.
    spellings: each explored word's spelling as first given, by its form (`word_form`), for the note of
        a word the pipeline's tokenizer splits (its exceptions are of the spelling: "Aug." stays whole,
        "aug." does not); the form where not given.
    """
    started = time.perf_counter()
    plan = plan if plan is not None else _plan(source, settings)
    nlp = source.load(plan.edits, new_combiner=plan.name, component=plan.name)
    docs = corpus.docs(nlp, settings.max_words, pipeline=f"the pipeline {source.label}")
    corpus_layers = embed_corpus(nlp, plan.name, docs, plan.layer_ids,
                                 batch_size=settings.batch_size, desc=f"corpus [{plan.name}]",
                                 total=None if settings.max_words is not None else corpus.n_docs)
    entry: dict = {
        "source": source.describe(), "label": source.label, "component": plan.name, "factory": plan.factory,
        "layer_ids": plan.layer_ids, "configured_layers": plan.configured_layers, "pooling": plan.modes[0],
        "width": int(corpus_layers.layers.shape[2]), "corpus_docs": len(corpus_layers.texts),
        "corpus_tokens": corpus_layers.n_tokens, "corpus_sentences": int(corpus_layers.sentence_ids[-1]) + 1,
        "layers": contextuality(corpus_layers, settings), "recommendation": None,
    }
    notes = list(input_notes) + plan.notes + empty_measure_notes(entry["layers"], settings.min_count)
    missing = max((layer["tokens_without_vector"] for layer in entry["layers"]), default=0)
    if missing:
        notes.append(f"up to {missing} of the corpus's {corpus_layers.n_tokens} tokens have no vector in a layer "
                     "(no wordpiece fed them, e.g. whitespace tokens); the contextuality measures leave them out "
                     "(tokens_without_vector, per layer)")
    if wic_train is not None:
        entry["wic"], entry["recommendation"] = _sense_separation(source, nlp, plan, settings, wic_train, wic_eval)
        configured = entry["wic"][plan.modes[0] or "none"]
        for layer, scores in zip(entry["layers"], configured["layers"]):
            layer["wic_accuracy"] = scores["accuracy"]
        skipped = configured["pairs_without_vector"]
        if skipped["train"] or skipped["eval"]:
            counts = f"{skipped['train']} training" + (f" and {skipped['eval']} evaluation" if skipped["eval"] else "")
            notes.append(f"WiC: {counts} pairs have a target token without a vector in some layer "
                         "(no wordpiece fed it): their cosine there is 0")
    else:
        notes.append("no recommendation: it is made on WiC (--wic-train)")
    # (The tokens the pipeline's tokenizer makes of each word it splits, for its note.)
    splits = {form: [token.text for token in nlp.make_doc((spellings or {}).get(form, form))]
              for form in explorer_words(settings.words)[0]}
    del nlp
    recommended = entry["recommendation"]["layers"] if entry["recommendation"] else None
    entry["explorer"] = explore(corpus_layers, plan.explore_layers or recommended or plan.configured_layers,
                                settings, splits={word: parts for word, parts in splits.items() if len(parts) > 1})
    for explored in entry["explorer"].values():
        explored["pooling"] = plan.modes[0]  # the corpus is embedded once, as configured
    if entry["explorer"] and recommended and not plan.explore_layers and (
            entry["recommendation"]["pooling"] != plan.modes[0]):
        notes.append(f"the sense explorer uses the recommended layers {recommended} with the configured pooling "
                     f"{plan.modes[0]!r} (the corpus is embedded once), not the recommended "
                     f"{entry['recommendation']['pooling']!r}")
    entry["notes"] = notes + [e["note"] for e in entry["explorer"].values() if "note" in e]
    entry["seconds"] = round(time.perf_counter() - started, 2)
    return entry


def _sense_separation(
    source: PipelineSource, nlp: Language, plan: _Plan, settings: AnalysisSettings, train: WicData,
    evaluation: Optional[WicData],
) -> Tuple[dict, dict]:
    """WiC scores per pooling mode, and the recommended layers with their config snippet.

    The evaluation pairs' labels only give the "accuracy" keys: every
    threshold, mix and choice is fitted on the training pairs.
    """
    grams, eval_grams = _wic_grams(source, nlp, plan, settings, train, evaluation)
    y_eval = None if evaluation is None else evaluation.labels
    with one_blas_thread():
        scores = {
            mode or "none": evaluate_senses(grams[mode], train.labels, plan.layer_ids, n_folds=settings.n_folds,
                                            seed=settings.seed, y_eval=y_eval,
                                            evaluation=None if eval_grams is None else eval_grams[mode])
            for mode in tqdm(plan.modes, desc="WiC fits", unit="pooling", file=sys.stderr)
        }
        chosen = recommend(grams, train.labels, plan.layer_ids, n_folds=settings.n_folds, seed=settings.seed,
                           evaluation=eval_grams, y_eval=y_eval)
    what = "layers and pooling" if chosen["pooling"] is not None else "layers"
    headline = (f"the {what} that separate WiC senses best;" if chosen["beats_baseline"]
                and chosen["beats_eval_baseline"] is not False else
                f"the best-scoring {what}, which separate WiC senses NO better than the majority class;")
    comment = "\n".join([f"spacy_ctxembed analyze: {headline}",
                         *(f"{part}" for part in chosen["note"].split("; ")), "other settings as in your pipeline"])
    chosen["config"] = config_snippet(plan.name, plan.block, chosen["layers"], chosen["pooling"], comment=comment)
    chosen["python"] = python_snippet(plan.name, plan.python_block, chosen["layers"], chosen["pooling"])
    return scores, chosen


#: Why a contextuality measure is NaN (null in analysis.json) in a layer, by the key that shows it.
EMPTY_MEASURES = (
    ("anisotropy", "fewer than two tokens have a vector: anisotropy and every adjusted value are null"),
    ("self_similarity", "no word has --min-count {min_count} occurrences with a vector: self-similarity and "
                        "max explainable variance are null"),
    ("intra_sentence_similarity", "no sentence has two tokens with a vector: intra-sentence similarity is null"),
)


def empty_measure_notes(layers: Sequence[dict], min_count: int) -> List[str]:
    """A note for each measure that is NaN in some layer (`contextuality`'s entries), saying why:
    a null in analysis.json must not read as a failure or a missing number."""
    notes = []
    for key, reason in EMPTY_MEASURES:
        empty = [layer["layer"] for layer in layers if not math.isfinite(layer[key])]
        if empty:
            where = "every layer" if len(empty) == len(layers) else f"layers {empty}"
            notes.append(f"{where}: {reason.format(min_count=min_count)}")
    return notes


def contextuality(corpus: CorpusLayers, settings: AnalysisSettings) -> List[dict]:
    """`metrics.layer_report` for each layer, one layer at a time (one float64 copy in memory),
    BLAS on one thread (`one_blas_thread`)."""
    report = []
    with one_blas_thread():
        for position in tqdm(range(len(corpus.layer_ids)), desc="contextuality", unit="layer", file=sys.stderr):
            entry = layer_report(corpus.layers[position:position + 1], corpus.word_ids, corpus.sentence_ids,
                                 min_count=settings.min_count, n_pairs=settings.n_pairs,
                                 max_occurrences=settings.max_occurrences, seed=settings.seed)[0]
            # Left out of every measure above (a zero vector has no direction): counted, not dropped silently.
            missing = int((~corpus.layers[position].any(axis=1)).sum())
            report.append({**entry, "layer": corpus.layer_ids[position], "tokens_without_vector": missing})
    return report


def _wic_grams(
    source: PipelineSource, nlp: Language, plan: _Plan, settings: AnalysisSettings, train: WicData,
    evaluation: Optional[WicData],
) -> Tuple[Dict[Optional[str], WicGrams], Optional[Dict[Optional[str], WicGrams]]]:
    """Per pooling mode, the WiC Gram matrices of the training (and evaluation) pairs.

    The first mode is what `nlp` runs. For each other mode the pipeline is
    loaded again with that pooling, and only the sentences whose target
    token has several wordpieces are embedded again (`multi_piece_sentences`);
    when there are none, the mode is not loaded at all.
    """
    datasets = {"train": train} if evaluation is None else {"train": train, "eval": evaluation}
    base = {kind: target_vectors(nlp, plan.name, data, batch_size=settings.wic_batch_size,
                                 desc=f"WiC {kind} [{plan.modes[0]}]") for kind, data in datasets.items()}
    redo = {kind: multi_piece_sentences(nlp, plan.name, data) for kind, data in datasets.items()}
    grams = {kind: {plan.modes[0]: WicGrams.from_targets(vectors)} for kind, vectors in base.items()}
    for mode in plan.modes[1:]:
        if all(only is not None and not only.any() for only in redo.values()):
            # no target has several wordpieces: every pooling gives the same vectors, no need to load
            for kind in datasets:
                grams[kind][mode] = grams[kind][plan.modes[0]]
            continue
        other = source.load(all_layer_edits(nlp, plan.name, plan.layer_ids, mode), new_combiner=plan.name,
                            component=plan.name)
        for kind, data in datasets.items():
            targets = target_vectors(other, plan.name, data, batch_size=settings.wic_batch_size,
                                     desc=f"WiC {kind} [{mode}]", only=redo[kind], base=base[kind])
            grams[kind][mode] = WicGrams.from_targets(targets)
        del other
    return grams["train"], grams.get("eval")


def explore(corpus: CorpusLayers, layer_ids: List[int], settings: AnalysisSettings,
            splits: Optional[Dict[str, List[str]]] = None) -> Dict[str, dict]:
    """The sense explorer for each of `settings.words` (each once, `explorer_words`), on the mean of `layer_ids`.
    splits: the words the pipeline's tokenizer splits, and their tokens (for the note of one not found)."""
    missing = [i for i in layer_ids if i not in corpus.layer_ids]
    if missing:
        raise AnalysisInputError(f"--explore-layers {layer_ids}: the model has layers {corpus.layer_ids}")
    if not settings.words:
        return {}
    units: NDArray[np.float64] = unit_rows(corpus.combined(layer_ids))
    with one_blas_thread():
        return {
            word: explore_word(corpus, units, word, layer_ids, max_clusters=settings.max_clusters,
                               n_examples=settings.n_examples, n_neighbours=settings.n_neighbours,
                               max_occurrences=settings.explore_max_occurrences, seed=settings.seed,
                               parts=(splits or {}).get(word))
            for word in tqdm(explorer_words(settings.words)[0], desc="sense explorer", unit="word", file=sys.stderr)
        }
