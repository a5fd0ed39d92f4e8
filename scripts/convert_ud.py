"""UD CoNLL-U -> a .spacy DocBin with spaCy's own converter (10 sentences a doc).

An optional limit keeps only the first N sentences (for smoke runs).
"""
import sys
from pathlib import Path

from spacy.tokens import DocBin
from spacy.training.converters import conllu_to_docs


def main(source: Path, output: Path, limit: int = 0) -> None:
    text = source.read_text(encoding="utf8")
    if limit:
        text = "\n\n".join(text.split("\n\n")[:limit]) + "\n\n"
    docs = list(conllu_to_docs(text, n_sents=10, no_print=True))
    output.parent.mkdir(parents=True, exist_ok=True)
    DocBin(docs=docs).to_disk(output)
    print(f"{len(docs)} docs -> {output}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0)
