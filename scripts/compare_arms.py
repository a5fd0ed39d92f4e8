"""Collect metrics/TASK-ARM.json into metrics/comparison.{json,md,png}.

For each arm: the dev scores, and what they cost: the training wall time
and CPU time (less sensitive than wall time to other jobs on the machine),
inference words/s (`spacy evaluate`'s speed on dev) and the pipeline's size
on disk, per task. Arms that were not run are left out.
"""
import json
from pathlib import Path

METRICS = {"ud": [("tag_acc", "UD tag acc"), ("dep_uas", "UD UAS"), ("dep_las", "UD LAS")],
           "wnut17": [("ents_f", "WNUT-17 NER F"), ("ents_p", "WNUT-17 NER P"), ("ents_r", "WNUT-17 NER R")]}
COSTS = [("train_seconds", "train min", 1 / 60), ("train_cpu_seconds", "train CPU min", 1 / 60),
         ("speed", "words/s", 1.0), ("disk_mb", "MB", 1.0)]
TASK_NAMES = {"ud": "UD", "wnut17": "WNUT-17"}
ARMS = ["cnn", "bert", "bert-ft", "st", "elmo"]


def collect(metrics_dir: Path) -> dict:
    table: dict = {}
    for arm in ARMS:
        for task, metrics in METRICS.items():
            path = metrics_dir / f"{task}-{arm}.json"
            if not path.exists():
                continue
            scores = json.loads(path.read_text())
            row = table.setdefault(arm, {})
            row.update({label: round(100 * scores[key], 2) for key, label in metrics})
            for key, label, factor in COSTS:
                if scores.get(key) is not None:
                    row[f"{TASK_NAMES[task]} {label}"] = round(scores[key] * factor, 1)
            if scores.get("max_steps") is not None:
                row[f"{TASK_NAMES[task]} max_steps"] = scores["max_steps"]
    return table


def markdown(table: dict) -> str:
    labels = [label for metrics in METRICS.values() for _, label in metrics]
    labels += [f"{TASK_NAMES[task]} {label}" for task in METRICS for _, label, _ in COSTS]
    # (an arm's metrics may come from a run with other settings than its neighbours')
    labels += [f"{TASK_NAMES[task]} max_steps" for task in METRICS]
    lines = ["| arm | " + " | ".join(labels) + " |", "| --- |" + " ---: |" * len(labels)]
    for arm, row in table.items():
        lines.append(f"| {arm} | " + " | ".join(_cell(row.get(label)) for label in labels) + " |")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.2f}" if isinstance(value, float) else str(value)


def main(metrics_dir: Path = Path("metrics")) -> None:
    table = collect(metrics_dir)
    (metrics_dir / "comparison.json").write_text(json.dumps(table, indent=2))
    text = markdown(table)
    (metrics_dir / "comparison.md").write_text(text)
    _chart(table, metrics_dir / "comparison.png")
    print(text)


def _chart(table: dict, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("compare: the chart needs matplotlib: pip install 'spacy-ctxembed[analysis]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("dev score (%)", ["UD tag acc", "UD LAS", "WNUT-17 NER F"]),
              ("training wall time (min)", ["UD train min", "WNUT-17 train min"]),
              ("inference (words/s)", ["UD words/s", "WNUT-17 words/s"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(14, 3.8))
    width = 0.8 / max(len(table), 1)
    for ax, (title, labels) in zip(axes, panels):
        for i, (arm, row) in enumerate(table.items()):
            xs = [j + i * width for j in range(len(labels))]
            ax.bar(xs, [row.get(label, 0) for label in labels], width, label=arm)
        ax.set_xticks([j + width * (len(table) - 1) / 2 for j in range(len(labels))],
                      [label.replace(" train min", "").replace(" words/s", "") for label in labels])
        ax.set_title(title)
    axes[0].legend(fontsize="small")
    fig.suptitle("spacy-ctxembed workflow: arms on dev")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
