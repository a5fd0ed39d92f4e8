"""Sense separation on WiC, and what int8 costs.

For each WiC pair (the same word in two sentences, labelled same sense T or not
F), the cosine of the word's two contextual vectors should be higher for T
pairs. Reported per setting: ROC AUC of that cosine for telling T from F (0.5 is
chance; a static vector scores exactly 0.5), and, for the non-default
precisions, the vector differences from exact fp32 over every token.

    python benchmarks/wic_separation.py --data-dir ../shared/data [--n 1000]
"""
import argparse
from pathlib import Path

import numpy
import spacy
from spacy.tokens import Doc


def read_wic(data_dir: Path, n: int):
    rows = (data_dir / "wic" / "train.data.txt").read_text(encoding="utf8").splitlines()[:n]
    gold = (data_dir / "wic" / "train.gold.txt").read_text(encoding="utf8").split()[:n]
    for row, label in zip(rows, gold):
        _, _, positions, s1, s2 = row.split("\t")
        i1, i2 = map(int, positions.split("-"))
        yield s1.split(" "), i1, s2.split(" "), i2, label == "T"


def roc_auc(scores, labels) -> float:
    """Probability that a random T pair scores above a random F pair (ties count half)."""
    scores, labels = numpy.asarray(scores), numpy.asarray(labels)
    pos, neg = scores[labels], scores[~labels]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def embed_pairs(nlp, pairs):
    docs1 = list(nlp.pipe(Doc(nlp.vocab, words=w) for w, _, _, _, _ in pairs))
    docs2 = list(nlp.pipe(Doc(nlp.vocab, words=w) for _, _, w, _, _ in pairs))
    return docs1, docs2


def main(args):
    pairs = list(read_wic(args.data_dir, args.n))
    labels = [p[4] for p in pairs]
    results = {}
    for precision in ("fp32", "int8"):
        nlp = spacy.blank("en")
        nlp.add_pipe("ctxembed_bert", config={"model": {"encoder": {"precision": precision}}})
        nlp.initialize()
        docs1, docs2 = embed_pairs(nlp, pairs)
        cosines = [d1[i1].similarity(d2[i2]) for d1, d2, (_, i1, _, i2, _) in zip(docs1, docs2, pairs)]
        vectors = numpy.concatenate([d._.ctx_vectors for d in docs1 + docs2])
        results[precision] = (roc_auc(cosines, labels), vectors)
    exact = results["fp32"][1]
    print(f"{len(pairs)} WiC train pairs ({sum(labels)} same-sense)")
    print(f"{'precision':>9} {'WiC AUC':>8} {'max |diff|':>10} {'mean cos to fp32':>16} {'min cos':>8}")
    for precision, (auc, vectors) in results.items():
        diff = numpy.abs(vectors - exact).max()
        cos = (vectors * exact).sum(1) / numpy.linalg.norm(vectors, axis=1) / numpy.linalg.norm(exact, axis=1)
        print(f"{precision:>9} {auc:>8.4f} {diff:>10.4f} {cos.mean():>16.4f} {cos.min():>8.4f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--n", type=int, default=1000)
    main(parser.parse_args())
