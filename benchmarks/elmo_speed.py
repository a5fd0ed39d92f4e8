"""ELMo throughput and peak memory: ctxembed_elmo against AllenNLP 2.10.1's _ElmoBiLm.

Both arms embed the same sentences (UD English EWT dev, gold tokens) with the
full-size configuration (2 x 4096 LSTM, 512 projection, 2048 character
filters, 2 highway layers) and the same random weights in the released layout,
on CPU with 2 torch threads. Each run is a fresh process; arms alternate.

- ctxembed: the whole spaCy component, docs in, vectors attached (sentences
  length-sorted into batches by the component itself).
- allennlp: `_ElmoBiLm` on `batch_to_ids` of 32-sentence batches, also
  length-sorted, so the comparison does not credit our sorting.

    bash benchmarks/setup_allennlp.sh /tmp/allennlp
    python benchmarks/elmo_speed.py --allennlp /tmp/allennlp --data-dir ../shared/data
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from corpora import conllu_sentences

ROOT = Path(__file__).resolve().parents[1]


def read_sentences(data_dir: Path, n: int):
    return conllu_sentences(data_dir / "ud_english_ewt" / "en_ewt-ud-dev.conllu", n)


def run_ctxembed(weights_dir: Path, sentences, threads: int, max_batch_items: int = 4096):
    import spacy
    import torch
    from spacy.tokens import Doc

    torch.set_num_threads(threads)
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_elmo", config={"model": {"encoder": {
        "options_file": str(weights_dir / "options.json"), "weight_file": str(weights_dir / "weights.hdf5"),
        "max_batch_items": max_batch_items}}})
    nlp.initialize()
    docs = [Doc(nlp.vocab, words=words) for words in sentences]
    start = time.perf_counter()
    for doc in nlp.pipe(docs, batch_size=len(docs)):
        assert doc._.ctx_vectors.shape[0] == len(doc)
    return time.perf_counter() - start


def run_allennlp(weights_dir: Path, sentences, threads: int, allennlp_dir: Path):
    sys.path[:0] = [str(allennlp_dir / "site"), str(allennlp_dir / "stubs")]
    import torch

    torch.set_num_threads(threads)
    import allennlp.common.file_utils as file_utils
    import allennlp.modules.elmo as elmo
    import allennlp.modules.elmo_lstm as elmo_lstm

    for module in (file_utils, elmo, elmo_lstm):  # local files only: no cache lookups
        module.cached_path = lambda path, *args, **kwargs: path
    bilm = elmo._ElmoBiLm(str(weights_dir / "options.json"), str(weights_dir / "weights.hdf5"),
                          requires_grad=False).eval()
    ordered = sorted(sentences, key=len, reverse=True)
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(ordered), 32):
            bilm(elmo.batch_to_ids(ordered[i : i + 32]))
    return time.perf_counter() - start


def run_long(weights_dir: Path, threads: int, n_tokens: int):
    """One sentence of n_tokens tokens through the component."""
    words = [("word", "other", "thing")[i % 3] for i in range(n_tokens)]
    return run_ctxembed(weights_dir, [words], threads)


def child(args):
    sentences = read_sentences(args.data_dir, args.n_sentences)
    if args.arm == "ctxembed":
        seconds = run_ctxembed(args.weights_dir, sentences, args.threads)
    elif args.arm == "allennlp":
        seconds = run_allennlp(args.weights_dir, sentences, args.threads, args.allennlp)
    else:
        seconds = run_long(args.weights_dir, args.threads, 5000)
        sentences = [["x"] * 5000]
    words = sum(len(s) for s in sentences)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"arm": args.arm, "words": words, "seconds": seconds, "peak_rss_mb": peak_mb}))


def main(args):
    sys.path.insert(0, str(ROOT))
    from tests.elmo_fixture import FULL_SIZE, write_elmo_fixture

    with tempfile.TemporaryDirectory() as tmp:
        weights_dir = Path(tmp)
        write_elmo_fixture(weights_dir, FULL_SIZE)
        results = {"ctxembed": [], "allennlp": []}
        for _ in range(args.repeats):
            for arm in results:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", "--arm", arm, "--weights-dir", str(weights_dir),
                     "--data-dir", str(args.data_dir), "--n-sentences", str(args.n_sentences),
                     "--threads", str(args.threads), "--allennlp", str(args.allennlp)],
                    check=True, capture_output=True, text=True,
                ).stdout
                results[arm].append(json.loads(out.strip().splitlines()[-1]))
                print(arm, results[arm][-1], flush=True)
        long_run = json.loads(subprocess.run(
            [sys.executable, __file__, "--child", "--arm", "long", "--weights-dir", str(weights_dir),
             "--data-dir", str(args.data_dir), "--threads", str(args.threads)],
            check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    summary = {}
    for arm, runs in results.items():
        summary[arm] = {
            "words_per_s": statistics.median(r["words"] / r["seconds"] for r in runs),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
        }
    print(f"\n{args.n_sentences} sentences, {results['ctxembed'][0]['words']} words, "
          f"{args.threads} threads, median of {args.repeats}")
    for arm, s in summary.items():
        print(f"{arm:>9}: {s['words_per_s']:8.1f} words/s  peak RSS {s['peak_rss_mb']:7.0f} MB")
    ours, theirs = summary["ctxembed"], summary["allennlp"]
    print(f"throughput ratio ctxembed/allennlp: {ours['words_per_s'] / theirs['words_per_s']:.2f}")
    print(f"peak RSS ratio ctxembed/allennlp: {ours['peak_rss_mb'] / theirs['peak_rss_mb']:.2f}")
    print(f"5,000-token sentence: {long_run['seconds']:.1f} s, peak RSS {long_run['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--allennlp", type=Path, default=Path("/tmp/allennlp"))
    parser.add_argument("--n-sentences", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--arm", default="ctxembed")
    parser.add_argument("--weights-dir", type=Path)
    args = parser.parse_args()
    child(args) if args.child else main(args)
