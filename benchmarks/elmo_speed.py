"""ELMo throughput and peak memory: ctxembed_elmo against AllenNLP 2.10.1's _ElmoBiLm.

Both arms embed the same sentences (UD English EWT dev, gold tokens) with the
full-size configuration (2 x 4096 LSTM, 512 projection, 2048 character
filters, 2 highway layers) and the same random weights in the released layout,
on CPU with 2 torch threads. Each run is a fresh process; arms alternate.

- ctxembed: the whole spaCy component, docs in, vectors attached (sentences
  length-sorted into batches by the component itself).
- ctxembed_compiled: the same with `compile = true` (the LSTM step through
  torch.compile).
- allennlp: `_ElmoBiLm` on `batch_to_ids` of 32-sentence batches
  (`--allennlp-batch`; the GPU engine's reference arm took 64), also
  length-sorted, so the comparison does not credit our sorting.

The batches are not the same size: the component cuts by its default
`max_batch_items` of 4,096 padded tokens, which on the first 200 UD EWT dev
sentences makes batches of 53, 141 and 6 sentences against AllenNLP's 32.
The ratio includes that choice.

Every arm first runs its first 16 sentences untimed (torch.compile compiles
there). With --gpu every arm runs on CUDA, the clock stops after a device
synchronisation, and peak GPU memory is torch's max_memory_allocated plus
cupy's pool (where spaCy's arrays live), as in bert_speed.py. The arms run in
--arms order, each repeat.

    bash benchmarks/setup_allennlp.sh /tmp/allennlp
    python benchmarks/elmo_speed.py --allennlp /tmp/allennlp --data-dir ../shared/data [--gpu]
"""
import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from arms import run_arm
from corpora import conllu_sentences

ROOT = Path(__file__).resolve().parents[1]


def read_sentences(data_dir: Path, n: int):
    return conllu_sentences(data_dir / "ud_english_ewt" / "en_ewt-ud-dev.conllu", n)


WARM_UP = 16


def _synchronize(gpu: bool) -> None:
    if gpu:
        import torch

        torch.cuda.synchronize()


def _peak_gpu_mb() -> float:
    """torch's peak plus what cupy's pool holds (the combiner's vectors, doc.tensor)."""
    import torch

    try:
        import cupy
    except ImportError:  # no spaCy arrays on the GPU without it
        pool = 0
    else:
        pool = cupy.get_default_memory_pool().total_bytes()
    return (torch.cuda.max_memory_allocated() + pool) / 2**20


def run_ctxembed(weights_dir: Path, sentences, threads: int, max_batch_items: int = 4096, compile: bool = False,
                 gpu: bool = False, warm_up: bool = True):
    import spacy
    import torch
    from spacy.tokens import Doc

    torch.set_num_threads(threads)
    if gpu:
        spacy.require_gpu()
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_elmo", config={"model": {"encoder": {
        "@architectures": "spacy-ctxembed.ElmoEncoder.v3", "compile": compile,
        "options_file": str(weights_dir / "options.json"), "weight_file": str(weights_dir / "weights.hdf5"),
        "max_batch_items": max_batch_items}}})
    nlp.initialize()
    docs = [Doc(nlp.vocab, words=words) for words in sentences]
    if warm_up:
        list(nlp.pipe([Doc(nlp.vocab, words=words) for words in sentences[:WARM_UP]], batch_size=WARM_UP))
    _synchronize(gpu)
    start = time.perf_counter()
    for doc in nlp.pipe(docs, batch_size=len(docs)):
        assert doc._.ctx_vectors.shape[0] == len(doc)
    _synchronize(gpu)
    return time.perf_counter() - start


def run_allennlp(weights_dir: Path, sentences, threads: int, allennlp_dir: Path, gpu: bool = False,
                 batch_size: int = 32):
    # The stubs stand in for modules missing where setup_allennlp.sh ran; where a real
    # one is installed (torchvision on the GPU image, which transformers then imports
    # from), it must win over its stub.
    sys.path[:0] = [str(allennlp_dir / "site")]
    sys.path.append(str(allennlp_dir / "stubs"))
    import torch

    torch.set_num_threads(threads)
    import allennlp.common.file_utils as file_utils
    import allennlp.modules.elmo as elmo
    import allennlp.modules.elmo_lstm as elmo_lstm

    for module in (file_utils, elmo, elmo_lstm):  # local files only: no cache lookups
        module.cached_path = lambda path, *args, **kwargs: path
    bilm = elmo._ElmoBiLm(str(weights_dir / "options.json"), str(weights_dir / "weights.hdf5"),
                          requires_grad=False).eval()
    device = "cuda" if gpu else "cpu"
    bilm.to(device)
    ordered = sorted(sentences, key=len, reverse=True)
    with torch.no_grad():
        bilm(elmo.batch_to_ids(sentences[:WARM_UP]).to(device))
        # _ElmoBiLm keeps LSTM states between calls: start the timed run from zero, as on a first call.
        bilm._elmo_lstm.reset_states()
        _synchronize(gpu)
        start = time.perf_counter()
        for i in range(0, len(ordered), batch_size):
            bilm(elmo.batch_to_ids(ordered[i : i + batch_size]).to(device))
    _synchronize(gpu)
    return time.perf_counter() - start


def run_long(weights_dir: Path, threads: int, n_tokens: int, gpu: bool = False):
    """One sentence of n_tokens tokens through the component, cold."""
    words = [("word", "other", "thing")[i % 3] for i in range(n_tokens)]
    return run_ctxembed(weights_dir, [words], threads, gpu=gpu, warm_up=False)


def child(args):
    sentences = read_sentences(args.data_dir, args.n_sentences)
    if args.arm in ("ctxembed", "ctxembed_compiled"):
        seconds = run_ctxembed(args.weights_dir, sentences, args.threads, compile=args.arm == "ctxembed_compiled",
                               gpu=args.gpu)
    elif args.arm == "allennlp":
        seconds = run_allennlp(args.weights_dir, sentences, args.threads, args.allennlp, gpu=args.gpu,
                               batch_size=args.allennlp_batch)
    else:
        seconds = run_long(args.weights_dir, args.threads, 5000, gpu=args.gpu)
        sentences = [["x"] * 5000]
    words = sum(len(s) for s in sentences)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"arm": args.arm, "words": words, "seconds": seconds, "peak_rss_mb": peak_mb}
    if args.gpu:
        result["peak_gpu_mb"] = _peak_gpu_mb()
    print(json.dumps(result))


def main(args):
    unknown = set(args.arms.split(",")) - {"ctxembed", "ctxembed_compiled", "allennlp"}
    if unknown:
        sys.exit(f"--arms: unknown {', '.join(sorted(unknown))}; known: ctxembed, ctxembed_compiled, allennlp")
    sys.path.insert(0, str(ROOT))
    from tests.elmo_fixture import FULL_SIZE, write_elmo_fixture

    with tempfile.TemporaryDirectory() as tmp:
        weights_dir = Path(tmp)
        write_elmo_fixture(weights_dir, FULL_SIZE)
        results = {arm: [] for arm in args.arms.split(",")}
        gpu = ["--gpu"] if args.gpu else []
        for _ in range(args.repeats):
            for arm in list(results):
                result = run_arm(arm, [
                    sys.executable, __file__, "--child", "--arm", arm, "--weights-dir", str(weights_dir),
                    "--data-dir", str(args.data_dir), "--n-sentences", str(args.n_sentences),
                    "--threads", str(args.threads), "--allennlp", str(args.allennlp),
                    "--allennlp-batch", str(args.allennlp_batch), *gpu])
                if result is not None:  # a failed arm is reported, and left out
                    results[arm].append(result)
                    print(arm, result, flush=True)
        long_run = None if args.no_long else run_arm("long", [
            sys.executable, __file__, "--child", "--arm", "long", "--weights-dir", str(weights_dir),
            "--data-dir", str(args.data_dir), "--threads", str(args.threads), *gpu])
    results = {arm: runs for arm, runs in results.items() if runs}
    if not results:
        sys.exit("every arm failed")
    summary = {}
    for arm, runs in results.items():
        summary[arm] = {
            "words_per_s": statistics.median(r["words"] / r["seconds"] for r in runs),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
        }
        if args.gpu:
            summary[arm]["peak_gpu_mb"] = statistics.median(r["peak_gpu_mb"] for r in runs)
    first = next(iter(results.values()))[0]
    print(f"\n{args.n_sentences} sentences, {first['words']} words, "
          f"{args.threads} threads, {'GPU' if args.gpu else 'CPU'}, median of {args.repeats}, "
          f"AllenNLP batches of {args.allennlp_batch} sentences")
    for arm, s in summary.items():
        gpu_mb = f"  peak GPU {s['peak_gpu_mb']:7.0f} MB" if args.gpu else ""
        print(f"{arm:>17}: {s['words_per_s']:8.1f} words/s  peak RSS {s['peak_rss_mb']:7.0f} MB{gpu_mb}")
    if "allennlp" in summary:
        theirs = summary["allennlp"]
        for arm in summary.keys() - {"allennlp"}:
            ours = summary[arm]
            print(f"{arm}/allennlp: throughput {ours['words_per_s'] / theirs['words_per_s']:.2f}, "
                  f"peak RSS {ours['peak_rss_mb'] / theirs['peak_rss_mb']:.2f}")
    if long_run:
        print(f"5,000-token sentence: {long_run['seconds']:.1f} s, peak RSS {long_run['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--allennlp", type=Path, default=Path("/tmp/allennlp"))
    parser.add_argument("--n-sentences", type=int, default=200)
    parser.add_argument("--allennlp-batch", type=int, default=32,
                        help="sentences per AllenNLP batch (the GPU engine's reference arm took 64)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--arms", default="ctxembed,allennlp", help="of ctxembed, ctxembed_compiled, allennlp")
    parser.add_argument("--gpu", action="store_true", help="run every arm on CUDA")
    parser.add_argument("--no-long", action="store_true", help="skip the 5,000-token sentence")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--arm", default="ctxembed")
    parser.add_argument("--weights-dir", type=Path)
    args = parser.parse_args()
    child(args) if args.child else main(args)
