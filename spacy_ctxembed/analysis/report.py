"""The analysis written out: ``analysis.json`` (every number), PNG plots and ``report.html``.

Plots are drawn on matplotlib `Figure` objects with the Agg canvas, never
through pyplot, so nothing global (backend, current figure) is touched.
``report.html`` is one self-contained file: its CSS is inline and its
images are the same PNGs as base64 data URIs.
"""
import base64
import contextlib
import html
import io
import json
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple

from .errors import AnalysisInputError
from .wic import majority_rule

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: reports are not locked against each other
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from matplotlib.figure import Figure

JSON_FILE, HTML_FILE = "analysis.json", "report.html"
CONTEXTUALITY_PNG, WIC_PNG = "contextuality.png", "wic.png"
#: Lines of example contexts under an explorer plot.
MAX_TEXT_LINES = 30
MEASURES = (("self_similarity", "self-similarity"), ("intra_sentence_similarity", "intra-sentence similarity"),
            ("max_explainable_variance", "max explainable variance"))
#: The names of the files a report writes (`explorer_png_name` for the explorer's): those of an earlier
#: run in --output are removed by the next report, so that no plot of another run sits beside its numbers.
#: No other file in --output is touched.
REPORT_FILES = re.compile(r"analysis\.json|report\.html|contextuality\.png|wic\.png|explorer-\d+-\d+-[\w-]*\.png",
                          re.ASCII)
#: The hidden folder a report is written into before its files move in (`write_report`).
STAGING_PREFIX, STAGING_SUFFIX = ".analysis-", ".tmp"
STAGING = re.compile(re.escape(STAGING_PREFIX) + r"\w+" + re.escape(STAGING_SUFFIX), re.ASCII)
#: How long a report waits for another one being written into the same --output (`_writing_alone`).
#: A writer holds it while it moves its files in, a second or so: one holding it longer is stuck (stopped).
REPORT_LOCK_WAIT_S = 60.0


def jsonable(value: Any) -> Any:
    """`value` with numpy scalars as Python numbers and non-finite floats as None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def check_output(outdir: Path) -> None:
    """Raise `AnalysisInputError` ("--output DIR: ...") unless a report can be written to `outdir`.

    For a check before the analysis runs, so that a bad --output does not cost
    a whole run. It creates nothing: a temporary file is made and removed in
    the nearest folder on the path that exists (`outdir` itself, or where
    `write_report` will create it).
    """
    outdir = Path(outdir)
    existing = outdir
    while not (existing.exists() or existing.is_symlink()) and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        what = "exists" if existing == outdir else f"{existing} exists"
        raise AnalysisInputError(f"--output {outdir}: {what} and is not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise AnalysisInputError(f"--output {outdir}: cannot write in {existing} ({e.strerror or e})") from None


def write_report(result: dict, outdir: Path) -> List[Path]:
    """Write analysis.json, the PNGs and report.html into `outdir` (created if need be).

    Every file is rendered, then written into a hidden temporary folder in
    `outdir`; only then are the report files of an earlier run removed
    (`REPORT_FILES`, no other file) and the new ones moved in, analysis.json
    and report.html last. So an interrupted or failed write leaves no
    truncated file, and no plot of one run sits beside another run's numbers.
    """
    outdir = Path(outdir)
    check_output(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    images = plots(result)
    files = {**images, JSON_FILE: (json.dumps(jsonable(result), indent=1, allow_nan=False) + "\n").encode("utf-8"),
             HTML_FILE: render_html(result, images).encode("utf-8")}
    with _writing_alone(outdir):  # (so another staging folder there is a killed run's)
        staging = Path(tempfile.mkdtemp(dir=outdir, prefix=STAGING_PREFIX, suffix=STAGING_SUFFIX))
        try:
            for name, data in files.items():
                (staging / name).write_bytes(data)
            for earlier in list(outdir.iterdir()):
                if REPORT_FILES.fullmatch(earlier.name) and not earlier.is_dir():
                    earlier.unlink()
                elif earlier != staging and earlier.is_dir() and STAGING.fullmatch(earlier.name):
                    shutil.rmtree(earlier, ignore_errors=True)  # a killed run's staging folder
            for name in files:  # in order: the PNGs, then analysis.json and report.html, which refer to them
                os.replace(staging / name, outdir / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return [outdir / name for name in files]


@contextlib.contextmanager
def _writing_alone(outdir: Path) -> Iterator[None]:
    """An exclusive lock on `outdir` while a report's files go in; waits up to
    `REPORT_LOCK_WAIT_S` for another report being written there.

    Two runs writing into one --output at once each took the other's staging
    folder for a killed run's and removed it (one failed with a FileNotFoundError,
    its report lost), or one's plots were left beside the other's numbers. The
    lock is a `flock` of the directory itself: it leaves no file there, and goes
    with a killed run. Where the file system refuses it, the report is written
    unlocked, as before.
    """
    if fcntl is None:
        yield
        return
    fd = os.open(outdir, os.O_RDONLY)
    try:
        deadline = time.monotonic() + REPORT_LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise AnalysisInputError(
                        f"--output {outdir}: another analyze run has been writing its report there for over "
                        f"{REPORT_LOCK_WAIT_S:g} s; run this one again once it has finished, or choose another "
                        "--output") from None
                time.sleep(0.05)
            except OSError:  # (no flock on this file system: unlocked)
                break
        yield
    finally:
        os.close(fd)  # (releases the lock)


# ---------------------------------------------------------------- plots


def _png(figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def explorer_png_name(pipeline: int, word_index: int, word: str) -> str:
    return f"explorer-{pipeline + 1}-{word_index + 1}-{re.sub(r'[^A-Za-z0-9_-]+', '_', word)[:40]}.png"


def plots(result: dict) -> Dict[str, bytes]:
    """Every PNG of the report, by file name."""
    images = {CONTEXTUALITY_PNG: plot_contextuality(result["pipelines"])}
    if any(p.get("wic") for p in result["pipelines"]):
        images[WIC_PNG] = plot_wic(result["pipelines"], result["wic"])
    for p, pipeline in enumerate(result["pipelines"]):
        for w, (word, explored) in enumerate(pipeline["explorer"].items()):
            if explored.get("clusters"):
                images[explorer_png_name(p, w, word)] = plot_explorer(explored, pipeline["label"])
    return images


def plot_contextuality(pipelines: Sequence[dict]) -> bytes:
    """Anisotropy and the three measures (raw solid, anisotropy-adjusted dashed) per layer."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 7.5), layout="constrained")
    axes = figure.subplots(2, 2).ravel()
    for p, pipeline in enumerate(pipelines):
        colour, label = f"C{p}", _short(pipeline["label"])
        x = [layer["layer"] for layer in pipeline["layers"]]
        axes[0].plot(x, [_nan(layer["anisotropy"]) for layer in pipeline["layers"]], "o-", color=colour, label=label)
        for ax, (key, _) in zip(axes[1:], MEASURES):
            ax.plot(x, [_nan(layer[key]) for layer in pipeline["layers"]], "o-", color=colour, label=f"{label}: raw")
            ax.plot(x, [_nan(layer[f"{key}_adjusted"]) for layer in pipeline["layers"]], "s--", color=colour,
                    label=f"{label}: adjusted")
    for ax, title in zip(axes, ["anisotropy (mean cosine of random token pairs)"] + [t for _, t in MEASURES]):
        ax.set_title(title)
        _layer_axis(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _png(figure)


def plot_wic(pipelines: Sequence[dict], wic: dict) -> bytes:
    return _png(wic_figure(pipelines, wic))


def wic_figure(pipelines: Sequence[dict], wic: dict) -> "Figure":
    """WiC accuracy per layer for each pooling mode; the mean of layers, the fitted scalar mix and the
    majority-class baseline as lines; how the accuracy was measured (`wic`'s protocol) in the title."""
    from matplotlib.figure import Figure

    shown = [p for p in pipelines if p.get("wic")]
    figure = Figure(figsize=(5.5 * len(shown) + 1, 4.8), layout="constrained")
    figure.suptitle(f"WiC accuracy: {wic['protocol']}", fontsize=9)
    baseline = wic["majority_baseline"]
    # one y scale for every panel: pipelines side by side are compared by the height of their curves
    axes = figure.subplots(1, len(shown), squeeze=False, sharey=True)[0]
    for ax, pipeline in zip(axes, shown):
        # in grey: what answering one label for every pair scores; a rule is worth its margin over it
        ax.axhline(baseline["majority_rate"], color="0.5", linestyle="-.",
                   label=f"{_majority(baseline)} ({baseline['majority_rate']:.3f})")
        for m, (mode, scores) in enumerate(pipeline["wic"].items()):
            x = [layer["layer"] for layer in scores["layers"]]
            ax.plot(x, [layer["accuracy"] for layer in scores["layers"]], "o-", color=f"C{m}", label=f"pooling {mode}")
        base = pipeline["wic"][pipeline["pooling"] or "none"]
        pooled = f" ({pipeline['pooling']})" if pipeline["pooling"] else ""  # (ELMo: one vector a token)
        ax.axhline(base["mean_of_layers"]["accuracy"], color="k", linestyle="--", label=f"mean of all layers{pooled}")
        ax.axhline(base["scalar_mix"]["accuracy"], color="k", linestyle=":", label=f"fitted scalar mix{pooled}")
        ax.set_title(_short(pipeline["label"]))
        _layer_axis(ax)
        ax.set_ylabel("WiC accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return figure


def plot_explorer(explored: dict, label: str) -> bytes:
    return _png(explorer_figure(explored, label))


def explorer_figure(explored: dict, label: str) -> "Figure":
    """The occurrences in 2-D (PCA), coloured by cluster, with example contexts below."""
    from matplotlib.figure import Figure

    lines: List[Tuple[str, str]] = []
    for cluster in explored["clusters"]:
        near = ", ".join(n["word"] for n in cluster["neighbours"])
        lines.append((f"C{cluster['cluster']}", f"sense {cluster['cluster'] + 1}; nearest other words: {near}"))
        lines += [(f"C{cluster['cluster']}", f"    {_cut(example, 110)}") for example in cluster["examples"]]
    lines = lines[:MAX_TEXT_LINES]
    text_height = 0.17 * len(lines) + 0.2  # inches: one line of 8-point text, plus a margin
    figure = Figure(figsize=(10, 5.5 + text_height), layout="constrained")
    scatter, text = figure.subplots(2, 1, height_ratios=[5.5, text_height])
    for cluster in explored["clusters"]:
        points = [pt for pt in explored["points"] if pt["cluster"] == cluster["cluster"]]
        scatter.scatter([pt["x"] for pt in points], [pt["y"] for pt in points], color=f"C{cluster['cluster']}",
                        alpha=0.7, label=f"sense {cluster['cluster'] + 1} ({cluster['size']})")
    ratios = explored["pca_explained_variance"]
    scatter.set_xlabel(f"PC 1 ({ratios[0]:.0%} of variance)")
    scatter.set_ylabel(f"PC 2 ({ratios[1]:.0%})")
    scatter.set_title(f"{explored['word']!r}: {_occurrences(explored)}, layers {explored['layers']}, "
                      f"pooling {explored.get('pooling')} - {_short(label)}")
    scatter.legend(fontsize=8)
    scatter.grid(alpha=0.3)
    text.axis("off")
    for row, (colour, line) in enumerate(lines):
        text.text(0, 1 - row / len(lines), line, color=colour, fontsize=8, va="top", family="monospace",
                  transform=text.transAxes)
    return figure


def _occurrences(explored: dict) -> str:
    """How many occurrences the explorer shows: "10 of 183 occurrences (sampled)" when it sampled them."""
    shown, total = len(explored["points"]), explored["n_occurrences"]
    return f"{total} occurrences" if shown == total else f"{shown} of {total} occurrences (sampled)"


def _majority(baseline: dict) -> str:
    """The majority-class rule of `wic.majority_baseline`, in words."""
    return f"majority class ({majority_rule(baseline)})"


def _layer_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _nan(value: Optional[float]) -> float:
    return float("nan") if value is None else float(value)


def _short(label: str, n: int = 48) -> str:
    return label if len(label) <= n else "…" + label[-(n - 1):]


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


# ---------------------------------------------------------------- html

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 90em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
td.text { text-align: left; }
.side { display: flex; gap: 2em; flex-wrap: wrap; align-items: flex-start; }
pre { background: #f4f4f4; padding: 0.8em; }
img { max-width: 100%; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _number(value: Any) -> str:
    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.3f}"


def _image(images: Dict[str, bytes], name: str, alt: str) -> str:
    data = base64.b64encode(images[name]).decode("ascii")
    return f'<p><img src="data:image/png;base64,{data}" alt="{_e(alt)}" title="{_e(name)}"></p>'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="text">{_e(c)}</td>' if isinstance(c, str) else f"<td>{_number(c)}</td>"
                         for c in row) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _layer_table(pipeline: dict) -> str:
    keys = ["anisotropy"] + [k for key, _ in MEASURES for k in (key, f"{key}_adjusted")]
    with_wic = any("wic_accuracy" in layer for layer in pipeline["layers"])
    header = ["layer", "anisotropy", "self-sim", "adj.", "intra-sim", "adj.", "MEV", "adj."]
    header += [_wic_column(pipeline)] if with_wic else []
    # How many words self-similarity and MEV average over (those with --min-count occurrences), per layer.
    header += ["words (self-sim, MEV)"]
    rows = [[str(layer["layer"])] + [layer[k] for k in keys] + ([layer.get("wic_accuracy")] if with_wic else [])
            + [str(layer.get("n_words", "–"))] for layer in pipeline["layers"]]
    return _table(header, rows)


def _wic_column(pipeline: dict) -> str:
    """The per-layer table's WiC header: its accuracies are the configured pooling's,
    one of the several the WiC table beside it shows."""
    return f"WiC ({pipeline['pooling']} pooling)" if pipeline["pooling"] else "WiC"


def _wic_tables(pipeline: dict, baseline: dict) -> str:
    modes = list(pipeline["wic"])
    rows = [[str(layer["layer"])] + [pipeline["wic"][m]["layers"][i]["accuracy"] for m in modes]
            for i, layer in enumerate(pipeline["wic"][modes[0]]["layers"])]
    rows.append(["mean of layers"] + [pipeline["wic"][m]["mean_of_layers"]["accuracy"] for m in modes])
    rows.append(["fitted scalar mix"] + [pipeline["wic"][m]["scalar_mix"]["accuracy"] for m in modes])
    rows.append(["logistic regression on layer cosines"]
                + [pipeline["wic"][m]["logistic_regression"]["accuracy"] for m in modes])
    rows.append([_majority(baseline)] + [baseline["majority_rate"]] * len(modes))
    return _table(["layer"] + [f"pooling {m}" for m in modes], rows)


def _explorer_html(pipeline: dict, p: int, images: Dict[str, bytes]) -> str:
    parts = []
    for w, (word, explored) in enumerate(pipeline["explorer"].items()):
        parts.append(f"<h3>{_e(word)} <small>({_e(_short(pipeline['label']))})</small></h3>")
        if not explored.get("clusters"):
            parts.append(f"<p>{_e(explored.get('note', 'no occurrences'))}</p>")
            continue
        parts.append(f"<p>{_e(_occurrences(explored))}, layers {_e(explored['layers'])}, pooling "
                     f"{_e(explored.get('pooling'))}; "
                     f"k = {explored['k']} by silhouette {_e(explored['silhouettes'])}</p>")
        parts.append(_image(images, explorer_png_name(p, w, word), f"sense explorer for {word}"))
        rows = [[f"sense {c['cluster'] + 1} ({c['size']})", " | ".join(c["examples"]),
                 ", ".join(f"{n['word']} ({n['similarity']:.2f})" for n in c["neighbours"])]
                for c in explored["clusters"]]
        parts.append(_table(["cluster", "examples (nearest the centre)", "nearest other words"], rows))
    return "".join(parts)


def render_html(result: dict, images: Dict[str, bytes]) -> str:
    """The whole report as one HTML page, images inline."""
    pipelines = result["pipelines"]
    corpus = result["corpus"]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        "<title>spacy-ctxembed analysis</title>", f"<style>{STYLE}</style></head><body>",
        "<h1>What the contextual vectors capture, layer by layer</h1>",
        f"<p>Corpus {_e(corpus['path'])} ({_e(corpus['kind'])}, {corpus['docs_in_file']} docs in the file). "
        "Pipelines: "
        + "; ".join(f"{_e(p['label'])} (component {_e(p['component'])}, {len(p['layer_ids'])} layers; analysed "
                    f"{p['corpus_docs']} docs, {p['corpus_tokens']} tokens, {p['corpus_sentences']} sentences)"
                    for p in pipelines) + ".</p>",
        "<h2>Contextuality per layer</h2>",
        "<p>Ethayarajh (2019): self-similarity (words with at least "
        f"{result['settings']['min_count']} occurrences), intra-sentence similarity and maximum explainable "
        "variance; adjusted = raw minus the layer's anisotropy baseline.</p>",
        _image(images, CONTEXTUALITY_PNG, "contextuality per layer"),
        '<div class="side">' + "".join(f"<section><h3>{_e(_short(p['label']))}</h3>{_layer_table(p)}</section>"
                                       for p in pipelines) + "</div>",
    ]
    if result.get("wic"):
        baseline = result["wic"]["majority_baseline"]
        parts += [
            "<h2>Sense separation (WiC)</h2>",
            f"<p>{_e(result['wic']['protocol'])}; {result['wic']['train']['pairs']} training pairs"
            + (f", {result['wic']['eval']['pairs']} evaluation pairs" if result["wic"].get("eval") else "") + ". "
            f"{_e(_baseline_sentence(baseline))}</p>",
            _image(images, WIC_PNG, "WiC accuracy per layer"),
            '<div class="side">' + "".join(f"<section><h3>{_e(_short(p['label']))}</h3>{_wic_tables(p, baseline)}"
                                           "</section>" for p in pipelines if p.get("wic")) + "</div>",
            "<h2>Recommended layers</h2>",
        ]
        for p in pipelines:
            rec = p.get("recommendation")
            if rec:
                parts.append(f"<h3>{_e(_short(p['label']))}</h3><p>layers {_e(rec['layers'])}, pooling "
                             f"{_e(rec['pooling'])}: {_e(rec['note'])}</p>"
                             f"<pre>{_e(rec['config'])}</pre><pre>{_e(rec['python'])}</pre>")
    if any(p["explorer"] for p in pipelines):
        parts.append("<h2>Sense explorer</h2>")
        parts += [_explorer_html(p, i, images) for i, p in enumerate(pipelines)]
    notes = [f"{p['label']}: {note}" for p in pipelines for note in p["notes"]]
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- text


def _baseline_sentence(baseline: dict) -> str:
    pairs = {"train": "--wic-train", "eval": "--wic-eval"}[baseline["pairs"]]
    return (f"The {_majority(baseline)} scores {baseline['majority_rate']:.3f} on the {pairs} pairs the "
            "accuracies are measured on: a rule is only worth its margin over that.")


def summary(result: dict) -> str:
    """A plain-text digest for the terminal: per-layer numbers and the recommended config."""
    out = []
    for pipeline in result["pipelines"]:
        out.append(f"== {pipeline['label']} (component {pipeline['component']}, layers {pipeline['layer_ids']})")
        with_wic = "wic" in pipeline
        wic_column = f"  {_wic_column(pipeline)}" if with_wic else ""
        out.append("layer  aniso  selfsim    adj  intra    adj    MEV    adj" + wic_column)
        for layer in pipeline["layers"]:
            values = [layer["anisotropy"]] + [layer[k] for key, _ in MEASURES for k in (key, f"{key}_adjusted")]
            if with_wic:
                values.append(layer["wic_accuracy"])
            out.append(f"{layer['layer']:>5}  " + " ".join(f"{_number(v):>6}" for v in values))
        if with_wic:
            out.append(f"WiC: {_baseline_sentence(result['wic']['majority_baseline'])}")
            for mode, scores in pipeline["wic"].items():
                # Chosen on the training folds: with --wic-eval, `accuracy` is held out and must not choose.
                best = max(scores["layers"], key=lambda s: s["cv_accuracy"])
                mix = scores["scalar_mix"]
                weights = ", ".join(f"{w:.2f}" for w in mix["weights"])
                # (Against the training pairs' baseline, as the choice was made on them.)
                none = ("" if best["cv_accuracy"] > (result["wic"].get("train") or {}).get("majority_rate", 0.0) else
                        " (no layer beats the majority class in cross-validation)")
                out.append(f"WiC pooling {mode}: best layer (by cross-validation) {best['layer']} "
                           f"{best['accuracy']:.3f}{none}, mean of layers "
                           f"{scores['mean_of_layers']['accuracy']:.3f}, fitted scalar mix {mix['accuracy']:.3f} "
                           f"(weights {weights})")
        rec = pipeline.get("recommendation")
        if rec:
            out += ["", rec["config"], "# or in Python:", rec["python"]]
        out += [f"note: {note}" for note in pipeline["notes"]]
        out.append("")
    return "\n".join(out)
