"""Collect metrics/TASK-ARM.json into metrics/comparison.{json,md} and a PNG chart."""
import json
from pathlib import Path

METRICS = {"ud": [("tag_acc", "UD tag acc"), ("dep_uas", "UD UAS"), ("dep_las", "UD LAS")],
           "wnut17": [("ents_f", "WNUT-17 NER F"), ("ents_p", "WNUT-17 NER P"), ("ents_r", "WNUT-17 NER R")]}
ARMS = ["cnn", "bert", "elmo"]


def main(metrics_dir: Path = Path("metrics")) -> None:
    table = {}
    for task, metrics in METRICS.items():
        for arm in ARMS:
            path = metrics_dir / f"{task}-{arm}.json"
            if path.exists():
                scores = json.loads(path.read_text())
                table.setdefault(arm, {}).update({label: round(100 * scores[key], 2) for key, label in metrics})
    (metrics_dir / "comparison.json").write_text(json.dumps(table, indent=2))
    labels = [label for metrics in METRICS.values() for _, label in metrics]
    lines = ["| arm | " + " | ".join(labels) + " |", "| --- |" + " ---: |" * len(labels)]
    for arm, scores in table.items():
        lines.append(f"| {arm} | " + " | ".join(f"{scores[label]:.2f}" if label in scores else "–"
                                                for label in labels) + " |")
    (metrics_dir / "comparison.md").write_text("\n".join(lines) + "\n")
    _chart(table, ["UD tag acc", "UD LAS", "WNUT-17 NER F"], metrics_dir / "comparison.png")
    print("\n".join(lines))


def _chart(table, labels, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("compare: the chart needs matplotlib: pip install 'spacy-ctxembed[analysis]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / max(len(table), 1)
    for i, (arm, scores) in enumerate(table.items()):
        xs = [j + i * width for j in range(len(labels))]
        ax.bar(xs, [scores.get(label, 0) for label in labels], width, label=arm)
    ax.set_xticks([j + width * (len(table) - 1) / 2 for j in range(len(labels))], labels)
    ax.set_ylabel("dev score (%)")
    ax.set_title("spacy-ctxembed: arms on dev")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
