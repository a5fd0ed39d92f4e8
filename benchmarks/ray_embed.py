"""Local Ray against one process, on the same cores: is the actor pool worth it here?

The corpus is the first N sentences of UD English EWT train (their `# text`
lines), one doc per line; the pipeline is the
default one (blank English + `ctxembed_bert`, the embedded all-MiniLM-L6-v2).
Each arm runs in a fresh process and writes its output, so the times include
everything a user waits for:

- `single`: `python -m spacy_ctxembed embed` (one process, torch on every core);
- `ray-2x1`: `embed --ray --actors 2 --cpus-per-actor 1`;
- `ray-1xN`: `embed --ray --actors 1 --cpus-per-actor N` (N = the cores).

For the Ray arms the time to the first finished shard (the driver's start
and imports, Ray's start, the actors' imports and model loads) is reported
apart from the steady rate.

    python benchmarks/ray_embed.py [--data ../shared/data] [--docs 4000] [--shard-size 250]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpora import conllu_documents  # noqa: E402

ARMS = ("single", "ray-2x1", "ray-1xN")


def run_arm(arm: str, corpus: Path, out: Path, shard_size: int, batch_size: int) -> dict:
    cores = os.cpu_count() or 1
    if arm == "single":
        command = [sys.executable, "-m", "spacy_ctxembed", "embed", str(corpus), "-o", str(out),
                   "--shard-size", str(shard_size), "--batch-size", str(batch_size), "--format", "npy"]
        start = time.perf_counter()
        subprocess.run(command, check=True, stderr=subprocess.DEVNULL)
        return {"arm": arm, "seconds": time.perf_counter() - start}
    actors, cpus = (2, 1) if arm == "ray-2x1" else (1, cores)
    # The first shard is timed from the parent's start, as the total is: the
    # steady rate takes the total less it, and a clock started in the child
    # after its interpreter's start and the import of spacy_ctxembed.distributed
    # (seconds, all in the total) would count those as steady work.
    # (The wall clock: the parent's perf_counter means nothing in the child.)
    code = f"""
import json, sys, time
from spacy_ctxembed.distributed import embed_corpus
start = float(sys.argv[1])
first = []
manifest = embed_corpus({str(corpus)!r}, {str(out)!r}, shard_size={shard_size}, batch_size={batch_size},
                        actors={actors}, cpus_per_actor={cpus}, progress=False,
                        on_shard=lambda s: first or first.append(time.time() - start))
print(json.dumps({{"first_shard": first[0], "seconds": time.time() - start, "docs": manifest["docs"]}}))
"""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code, repr(time.time())], check=True, capture_output=True,
                            text=True)
    total = time.perf_counter() - start
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    return {"arm": arm, "seconds": total, "first_shard": measured["first_shard"], "actors": actors,
            "cpus_per_actor": cpus}


def main(args) -> None:
    documents = conllu_documents(args.data / "ud_english_ewt" / "en_ewt-ud-train.conllu")
    texts = [sentence for doc in documents for sentence in doc][: args.docs]
    n_words = sum(len(t.split()) for t in texts)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(texts) + "\n", encoding="utf8")
        for arm in args.arms:
            row = run_arm(arm, corpus, Path(tmp) / arm, args.shard_size, args.batch_size)
            row["words_per_s"] = n_words / row["seconds"]
            if "first_shard" in row:
                # After the first shard, every shard but the first is steady work.
                rest = row["seconds"] - row["first_shard"]
                row["steady_words_per_s"] = n_words * (1 - args.shard_size / len(texts)) / rest if rest > 0 else None
            results.append(row)
            print(json.dumps(row), flush=True)
    summary = {"docs": len(texts), "words": n_words, "cores": os.cpu_count(), "results": results}
    if args.output:
        args.output.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{len(texts)} docs, {n_words} words (whitespace-split), {os.cpu_count()} cores")
    for row in results:
        extra = f", first shard after {row['first_shard']:.1f} s" if "first_shard" in row else ""
        print(f"{row['arm']:>8}: {row['seconds']:6.1f} s, {row['words_per_s']:8.0f} words/s{extra}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--docs", type=int, default=4000)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--output", type=Path, default=None)
    main(parser.parse_args())
