"""Convert the corpora the workflow trains on to .spacy: UD English EWT and WNUT-17, train and dev.

    python scripts/convert.py DATA_DIR CORPUS_DIR [N_SENTENCES]

Writes CORPUS_DIR/ud/{train,dev}.spacy (convert_ud.py) and
CORPUS_DIR/wnut17/{train,dev}.spacy (convert_wnut17.py), keeping the first
N_SENTENCES of each file when given (for smoke runs). One process for the four
files: each Python start that loads spaCy also imports every installed spaCy
plugin, which takes longer than a smoke run's conversions.
"""
import sys
from pathlib import Path

import convert_ud
import convert_wnut17

#: (converter, file under DATA_DIR, .spacy file under CORPUS_DIR)
FILES = [
    (convert_ud, "ud_english_ewt/en_ewt-ud-train.conllu", "ud/train.spacy"),
    (convert_ud, "ud_english_ewt/en_ewt-ud-dev.conllu", "ud/dev.spacy"),
    (convert_wnut17, "wnut17/wnut17train.conll", "wnut17/train.spacy"),
    (convert_wnut17, "wnut17/emerging.dev.conll", "wnut17/dev.spacy"),
]


def main(data_dir: Path, corpus_dir: Path, limit: int = 0) -> None:
    for converter, source, output in FILES:
        converter.main(data_dir / source, corpus_dir / output, limit)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0)
