"""`analyze`: what the contextual vectors capture, layer by layer (docs/analysis.md).

A thin shell over `spacy_ctxembed.analysis`: it turns options into settings
and sources, runs `analyze`, writes the report and prints the per-layer
numbers and the recommended config on stdout (progress bars on stderr).
"""
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import MissingExtra
from .errors import UsageError
from .output import counted
from .pipelines import require_gpu

HELP = {
    "corpus": "A text file (one doc per line), a .spacy DocBin or a .conllu file",
    "output": "Directory for analysis.json, the PNG plots and report.html (created if need be; the report files "
              "of an earlier run there are replaced, other files left alone)",
    "model": "A saved pipeline (path or package) with a ctxembed component",
    "config": "A config.cfg to build the pipeline from (instead of --model)",
    "compare": "A second pipeline (saved pipeline, or a .cfg file) to analyse side by side",
    "component": "The contextual component to analyse, when the pipeline has several",
    "compare_component": "The contextual component of the --compare pipeline, when it has several",
    "wic_train": "A WiC folder (*.data.txt + *.gold.txt): thresholds and the mix are fitted on it",
    "wic_eval": "A WiC folder to report sense accuracy on (default: cross-validation on --wic-train)",
    "word": "A word to explore: its occurrences clustered by sense (repeatable)",
    "pooling": "Pooling modes to try on WiC (repeatable; default: all the encoder has)",
    "explore_layers": "Layers the sense explorer uses (repeatable; negative: from the top; default: the recommended "
                      "ones, else the configured)",
    "min_count": "Occurrences a word needs for self-similarity and MEV",
    "anisotropy_pairs": "Random token pairs for the anisotropy baseline (0: all pairs, exactly)",
    "max_occurrences": "Occurrences per word used by self-similarity and MEV, sampled (0: all)",
    "seed": "Seed of every random choice (pairs, samples, folds, k-means)",
    "batch_size": "Corpus docs per nlp.pipe batch",
    "wic_batch_size": "WiC sentences per nlp.pipe batch",
    "max_words": "Analyse only the first docs of the corpus, whole docs until this many tokens are reached (0: all)",
    "folds": "Cross-validation folds on the WiC training pairs",
    "max_clusters": "Most senses the explorer tries (k = 2 .. this, chosen by silhouette)",
    "examples": "Example contexts shown per sense",
    "neighbours": "Nearest other words shown per sense (each by its nearest occurrence)",
    "explore_max_occurrences": "Occurrences of a word the explorer clusters, sampled (0: all)",
    "threads": "Torch threads (0: torch's default); on a busy machine, 1 is often fastest",
    "gpu_id": "GPU to use; -1 for CPU",
}


def analyze(
    corpus: Path = typer.Argument(..., metavar="CORPUS", help=HELP["corpus"]),
    output: Path = typer.Option(..., "--output", "-o", help=HELP["output"]),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=HELP["model"]),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=HELP["config"]),
    compare: Optional[str] = typer.Option(None, "--compare", help=HELP["compare"]),
    component: Optional[str] = typer.Option(None, "--component", help=HELP["component"]),
    compare_component: Optional[str] = typer.Option(None, "--compare-component", help=HELP["compare_component"]),
    wic_train: Optional[Path] = typer.Option(None, "--wic-train", help=HELP["wic_train"]),
    wic_eval: Optional[Path] = typer.Option(None, "--wic-eval", help=HELP["wic_eval"]),
    word: List[str] = typer.Option([], "--word", "-w", help=HELP["word"]),
    pooling: List[str] = typer.Option([], "--pooling", help=HELP["pooling"]),
    explore_layers: List[int] = typer.Option([], "--explore-layers", help=HELP["explore_layers"]),
    min_count: int = typer.Option(5, "--min-count", help=HELP["min_count"]),
    anisotropy_pairs: int = typer.Option(1000, "--anisotropy-pairs", help=HELP["anisotropy_pairs"]),
    max_occurrences: int = typer.Option(0, "--max-occurrences", help=HELP["max_occurrences"]),
    seed: int = typer.Option(0, "--seed", help=HELP["seed"]),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help=HELP["batch_size"]),
    wic_batch_size: int = typer.Option(512, "--wic-batch-size", help=HELP["wic_batch_size"]),
    max_words: int = typer.Option(0, "--max-words", help=HELP["max_words"]),
    folds: int = typer.Option(5, "--folds", help=HELP["folds"]),
    max_clusters: int = typer.Option(6, "--max-clusters", help=HELP["max_clusters"]),
    examples: int = typer.Option(3, "--examples", help=HELP["examples"]),
    neighbours: int = typer.Option(5, "--neighbours", help=HELP["neighbours"]),
    explore_max_occurrences: int = typer.Option(1000, "--explore-max-occurrences",
                                                help=HELP["explore_max_occurrences"]),
    threads: int = typer.Option(0, "--threads", help=HELP["threads"]),
    gpu_id: int = typer.Option(-1, "--gpu-id", "-g", help=HELP["gpu_id"]),
) -> None:
    """Analyse what a pipeline's contextual vectors capture, layer by layer."""
    from ..analysis import (
        AnalysisInputError,
        AnalysisSettings,
        PipelineSource,
        check_output,
        read_corpus,
        read_wic,
        summary,
        write_report,
    )
    from ..analysis import analyze as run_analysis
    from ..analysis.run import check_extra

    try:
        check_extra()  # the [analysis] extra (EXTRA_PACKAGES): before anything is read or embedded
    except MissingExtra as e:
        raise UsageError(str(e)) from e
    if model is not None and config is not None:
        raise UsageError("give either --model or --config, not both")
    if gpu_id < -1:
        raise UsageError(f"--gpu-id {gpu_id}: expected a GPU number, or -1 for CPU")
    # 0 is "all" where the settings allow it (AnalysisSettings turns it into None)
    settings = AnalysisSettings(
        min_count=min_count, n_pairs=anisotropy_pairs, max_occurrences=max_occurrences, seed=seed,
        batch_size=batch_size, wic_batch_size=wic_batch_size, max_words=max_words, n_folds=folds,
        poolings=list(pooling) or None, explore_layers=list(explore_layers) or None,
        max_clusters=max_clusters, n_examples=examples, n_neighbours=neighbours,
        explore_max_occurrences=explore_max_occurrences, words=list(word), threads=threads,
    )
    try:
        # everything that needs no model is checked before one loads; `run_analysis` checks the rest
        # (--wic-eval without --wic-train, --folds against the WiC labels, each pipeline's component and
        # layers) before embedding
        settings.check()
        check_output(output)  # here, not after the whole run; it creates nothing
        corpus_data = read_corpus(corpus)
        train = None if wic_train is None else read_wic(wic_train, "--wic-train")
        evaluation = None if wic_eval is None else read_wic(wic_eval, "--wic-eval")
        if compare is None and compare_component is not None:
            raise AnalysisInputError(f"--compare-component {compare_component!r} needs --compare")
        main = PipelineSource(model=model) if config is None else PipelineSource.from_config_file(config)
        main.component = component
        sources = [main]
        if compare is not None:
            other = PipelineSource.from_argument(compare)
            other.component, other.component_option = compare_component, "--compare-component"
            sources.append(other)
        require_gpu(gpu_id)
        result = run_analysis(corpus_data, sources, settings, wic_train=train, wic_eval=evaluation)
        # printed first: a report that cannot be written (a full disk) does not take the run's numbers with it
        typer.echo(summary(result))
        written = write_report(result, output)
    except AnalysisInputError as e:
        raise UsageError(str(e)) from e
    n_plots = sum(1 for path in written if path.suffix == ".png")
    typer.echo(f"wrote analysis.json, {counted(n_plots, 'plot')} and report.html to {output} "
               f"({result['seconds']:.0f} s)", err=True)
