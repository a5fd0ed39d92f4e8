"""Reading the shared corpora for the benchmarks."""
from pathlib import Path
from typing import List

TEXT_PREFIX = "# text = "


def conllu_sentences(path: Path, limit: int = 0) -> List[List[str]]:
    """The word forms of the first `limit` sentences (0 = all) of a CoNLL-U file."""
    sentences: List[List[str]] = []
    words: List[str] = []
    for line in path.open(encoding="utf8"):
        if not line.strip():
            if words:
                sentences.append(words)
                words = []
                if len(sentences) == limit:
                    break
        elif not line.startswith("#"):
            cols = line.split("\t")
            if cols[0].isdigit():  # skip multiword-token ranges and empty nodes
                words.append(cols[1])
    return sentences


def conllu_documents(path: Path) -> List[List[str]]:
    """The raw sentence texts (`# text = ...`) of a CoNLL-U file, grouped by `# newdoc`."""
    documents: List[List[str]] = [[]]
    for line in path.open(encoding="utf8"):
        if line.startswith("# newdoc"):
            documents.append([])
        elif line.startswith(TEXT_PREFIX):
            documents[-1].append(line[len(TEXT_PREFIX):].rstrip("\n"))
    return [doc for doc in documents if doc]
