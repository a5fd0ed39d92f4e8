"""What the contextual vectors capture, layer by layer.

* :mod:`.metrics`: Ethayarajh (2019)'s geometry measures as pure functions
  over arrays (no spaCy pipeline needed).
* :mod:`.corpus`, :mod:`.source`, :mod:`.extract`: reading a corpus, loading
  a pipeline with every layer stored, collecting the layers of every token.
* :mod:`.wic`: sense separation on WiC (thresholds, cross-validation, the
  fitted scalar mix); :mod:`.recommend`: the layers to use, as a config snippet.
* :mod:`.explorer`: one word's occurrences clustered, projected, and their neighbours.
* :mod:`.run`: the whole analysis (`analyze`); :mod:`.report`: analysis.json,
  the plots and report.html.

``python -m spacy_ctxembed analyze`` runs it from the command line; see
docs/analysis.md.
"""
from .corpus import Corpus, read_corpus
from .errors import AnalysisInputError
from .explorer import choose_clusters, explore_word, nearest_neighbours, unit_rows
from .extract import CorpusLayers, embed_corpus
from .metrics import (
    adjusted,
    anisotropy,
    intra_sentence_similarity,
    layer_report,
    max_explainable_variance,
    mev_baseline,
    self_similarity,
)
from .recommend import candidate_sets, config_snippet, python_snippet, recommend
from .report import check_output, render_html, summary, write_report
from .run import AnalysisSettings, analyze, analyze_pipeline, contextuality
from .source import PipelineSource
from .wic import (
    CosineLogisticRule,
    ScalarMixFit,
    ScalarMixRule,
    ThresholdRule,
    WicData,
    WicGrams,
    evaluate_senses,
    fit_scalar_mix,
    fit_threshold,
    folds,
    held_out,
    held_out_accuracy,
    read_wic,
    scalar_mix_loss,
    target_vectors,
)

__all__ = [
    "AnalysisInputError",
    "AnalysisSettings",
    "Corpus",
    "CorpusLayers",
    "CosineLogisticRule",
    "PipelineSource",
    "ScalarMixFit",
    "ScalarMixRule",
    "ThresholdRule",
    "WicData",
    "WicGrams",
    "adjusted",
    "analyze",
    "analyze_pipeline",
    "anisotropy",
    "candidate_sets",
    "check_output",
    "choose_clusters",
    "config_snippet",
    "contextuality",
    "embed_corpus",
    "evaluate_senses",
    "explore_word",
    "fit_scalar_mix",
    "fit_threshold",
    "folds",
    "held_out",
    "held_out_accuracy",
    "intra_sentence_similarity",
    "layer_report",
    "max_explainable_variance",
    "mev_baseline",
    "nearest_neighbours",
    "python_snippet",
    "read_corpus",
    "read_wic",
    "recommend",
    "render_html",
    "scalar_mix_loss",
    "self_similarity",
    "summary",
    "target_vectors",
    "unit_rows",
    "write_report",
]
