"""WNUT-17 (TOKEN<TAB>TAG, IOB2) -> a .spacy DocBin, one doc per sentence.

Keeps the dataset's own label strings (person, location, corporation, product,
creative-work, group). Whitespace-only lines, including a lone TAB as in the
train file, end a sentence.
"""
import sys
from pathlib import Path

import spacy
from spacy.tokens import Doc, DocBin


def read_sentences(path: Path):
    words, tags = [], []
    for line in path.read_text(encoding="utf8").splitlines():
        if not line.strip():
            if words:
                yield words, tags
            words, tags = [], []
            continue
        token, tag = line.rsplit("\t", 1)
        words.append(token)
        tags.append(tag.strip())
    if words:
        yield words, tags


def main(source: Path, output: Path, limit: int = 0) -> None:
    vocab = spacy.blank("en").vocab
    doc_bin = DocBin()
    for i, (words, tags) in enumerate(read_sentences(source)):
        if limit and i >= limit:
            break
        doc_bin.add(Doc(vocab, words=words, ents=tags))
    output.parent.mkdir(parents=True, exist_ok=True)
    doc_bin.to_disk(output)
    print(f"{len(doc_bin)} sentences -> {output}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0)
