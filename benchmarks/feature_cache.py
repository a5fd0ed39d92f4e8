"""The training feature cache: the embedder's time per epoch over the same docs.

A frozen, annotating embedder sees the same training docs every epoch. With
`cache_mb` set, epoch 1 computes and stores their layers and later epochs look
them up. This times `nlp.pipe` of the ctxembed_bert component (training settings
of configs/tagger_bert_listener.cfg) over UD English EWT train sentences, epoch
by epoch.

    python benchmarks/feature_cache.py --data-dir ../shared/data [--n 3000] [--epochs 3]
"""
import argparse
import time
from pathlib import Path

import spacy
import torch
from corpora import conllu_sentences
from spacy.tokens import Doc


def main(args):
    torch.set_num_threads(2)
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config={"store_layers": True, "cache_mb": args.cache_mb,
                                          "model": {"encoder": {"layers": [-4, -3, -2, -1]}}})
    nlp.initialize()
    sentences = conllu_sentences(args.data_dir / "ud_english_ewt" / "en_ewt-ud-train.conllu", args.n)
    times = []
    for epoch in range(1, args.epochs + 1):
        docs = [Doc(nlp.vocab, words=words) for words in sentences]  # fresh docs, as training makes
        start = time.perf_counter()
        for _ in nlp.pipe(docs, batch_size=64):
            pass
        times.append(time.perf_counter() - start)
        print(f"epoch {epoch}: {times[-1]:6.2f} s  ({times[-1] / times[0]:.3f} of epoch 1)", flush=True)
    cache = nlp.get_pipe("ctxembed_bert").cache
    words = sum(map(len, sentences))
    print(f"{len(sentences)} sentences, {words} words; cache {len(cache)} docs, {cache.nbytes / 2**20:.0f} MB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cache-mb", type=int, default=4096)
    main(parser.parse_args())
