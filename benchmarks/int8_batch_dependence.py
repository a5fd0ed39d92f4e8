"""How much an int8 doc's vectors depend on the other docs in its batch.

Dynamic int8 quantization picks each activation scale from the whole padded
forward batch, so a doc's vectors change with its batch neighbours. This
embeds each of N EWT dev sentences alone and inside one batch of N, in fp32
and in int8, and reports the cosine between the two runs per token.

    python benchmarks/int8_batch_dependence.py --data-dir ../shared/data --n 64
"""
import argparse
from pathlib import Path

import numpy
import spacy
import torch
from corpora import conllu_sentences


def vectors(precision: str, texts, alone: bool):
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config={"model": {"encoder": {"precision": precision}}})
    nlp.initialize()
    if alone:
        return [nlp(t)._.ctx_vectors for t in texts]
    return [d._.ctx_vectors for d in nlp.pipe(texts, batch_size=len(texts))]


def main(args) -> None:
    torch.set_num_threads(2)
    path = args.data_dir / "ud_english_ewt" / "en_ewt-ud-dev.conllu"
    texts = [" ".join(words) for words in conllu_sentences(path, args.n)]
    for precision in ("fp32", "int8"):
        alone, batched = vectors(precision, texts, True), vectors(precision, texts, False)
        a, b = numpy.concatenate(alone), numpy.concatenate(batched)
        cos = (a * b).sum(1) / numpy.linalg.norm(a, axis=1) / numpy.linalg.norm(b, axis=1)
        print(f"{precision}: alone vs in a batch of {len(texts)}: min cos {cos.min():.4f}, "
              f"mean cos {cos.mean():.4f}, max abs diff {numpy.abs(a - b).max():.2e}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--n", type=int, default=64)
    main(parser.parse_args())
