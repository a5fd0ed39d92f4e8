"""How much do windowed vectors deviate from one full-context window?

Docs of real English (UD English EWT dev, consecutive sentences joined to
about 330 words) that fit the model's 510-piece window are embedded once in a
single window (the reference) and again with smaller windows at several
strides. Each token in an overlap takes its vector from the window where it has
the most context (spacy-ctxembed's rule). Printed per setting: the mean and the
5th-percentile cosine similarity to the reference, and the max abs difference.

    python benchmarks/window_overlap.py [--data-dir ../shared/data]
"""
import argparse
from pathlib import Path

import numpy
import spacy
from corpora import conllu_documents


def ewt_texts(data_dir: Path, n_docs: int, n_words: int):
    words, texts = [], []
    for sentence in (s for doc in conllu_documents(data_dir / "ud_english_ewt" / "en_ewt-ud-dev.conllu") for s in doc):
        words.extend(sentence.split())
        if len(words) >= n_words:
            texts.append(" ".join(words))
            words = []
            if len(texts) == n_docs:
                break
    return texts


def embed(text, window, stride):
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config={"model": {"encoder": {"window": window, "stride": stride}}})
    nlp.initialize()
    return nlp(text)._.ctx_vectors


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args()
    texts = ewt_texts(args.data_dir, n_docs=8, n_words=330)
    refs = [embed(t, 510, 510) for t in texts]
    print(f"{'window':>6} {'stride':>6} {'overlap':>7} {'mean cos':>9} {'p5 cos':>8} {'max |diff|':>10}")
    for window, stride in [(128, 128), (128, 112), (128, 96), (128, 64), (256, 256), (256, 192)]:
        cos, diff = [], []
        for text, ref in zip(texts, refs):
            got = embed(text, window, stride)
            c = (got * ref).sum(1) / numpy.linalg.norm(got, axis=1) / numpy.linalg.norm(ref, axis=1)
            cos.append(c)
            diff.append(numpy.abs(got - ref).max())
        cos = numpy.concatenate(cos)
        p5 = numpy.percentile(cos, 5)
        print(f"{window:>6} {stride:>6} {window - stride:>7} {cos.mean():>9.4f} {p5:>8.4f} {max(diff):>10.4f}")


if __name__ == "__main__":
    main()
