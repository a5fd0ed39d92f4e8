"""Helpers for the analysis tests (no tests here): a small corpus, a small WiC folder, tiny pipelines,
and the contextuality measures computed the plain way, as independent references."""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .conftest import make_nlp

MOTION = ["I ran to the park this morning .", "The dog ran across the field .", "He ran home after school ."]
OPERATE = ["She ran some significance tests .", "We ran the experiment again .", "They ran a small shop in town ."]
CORPUS_LINES = [line.replace(" .", ".") for line in MOTION + OPERATE] * 3 + ["Nothing here runs."]

#: A CoNLL-U corpus as (documents of (sentences of words)); SpaceAfter=No before each final ".".
CONLLU_DOCS = [
    [["I", "ran", "to", "the", "park", "."], ["The", "dog", "ran", "across", "the", "field", "."],
     ["She", "ran", "some", "tests", "."]],
    [["We", "ran", "the", "experiment", "again", "."], ["They", "ran", "a", "shop", "."]],
]

_SAVED: Dict[Tuple[Path, str], Path] = {}


def write_corpus(directory: Path) -> Path:
    path = directory / "corpus.txt"
    path.write_text("\n".join(CORPUS_LINES) + "\n", encoding="utf8")
    return path


def write_conllu(directory: Path) -> Path:
    """`CONLLU_DOCS` as a .conllu file with # newdoc lines."""
    lines = []
    for doc in CONLLU_DOCS:
        lines.append("# newdoc")
        for sentence in doc:
            for i, word in enumerate(sentence, start=1):
                misc = "SpaceAfter=No" if i + 1 == len(sentence) else "_"
                lines.append(f"{i}\t{word}\t_\t_\t_\t_\t_\t_\t_\t{misc}")
            lines.append("")
    path = directory / "corpus.conllu"
    path.write_text("\n".join(lines) + "\n", encoding="utf8")
    return path


def wic_pairs(held_out: bool = False) -> List[Tuple[str, bool]]:
    """30 pairs of 'ran' (12 T, 18 F) as WiC data lines: T when both sentences use the same sense.

    held_out: the same pairs (and labels) of other sentences ("again" before each final "."): none of
    them is a pair of the others, as --wic-eval pairs must not be --wic-train pairs.
    """
    pairs = []
    sentences = [(s.replace(" .", " again .") if held_out else s, sense)
                 for group, sense in ((MOTION, "motion"), (OPERATE, "operate")) for s in group]
    for first, sense1 in sentences:
        for second, sense2 in sentences:
            if first == second:
                continue
            index1, index2 = first.split(" ").index("ran"), second.split(" ").index("ran")
            pairs.append((f"run\tV\t{index1}-{index2}\t{first}\t{second}", sense1 == sense2))
    return pairs


def write_wic(directory: Path, stem: str = "train", part: Optional[slice] = None, held_out: bool = False) -> Path:
    """`wic_pairs(held_out)` (or the `part` of them) as STEM.data.txt + STEM.gold.txt in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    pairs = wic_pairs(held_out)[part or slice(None)]
    (directory / f"{stem}.data.txt").write_text("\n".join(row for row, _ in pairs) + "\n", encoding="utf8")
    (directory / f"{stem}.gold.txt").write_text("\n".join("T" if same else "F" for _, same in pairs) + "\n",
                                               encoding="utf8")
    return directory


def saved_pipeline(tiny_bert_dir: Path, tmp_path_factory, combine: str = "scalar_mix") -> Path:
    """A saved tiny pipeline that keeps only its top layer, mixed by `combine` (built once)."""
    key = (tiny_bert_dir, combine)
    if key not in _SAVED:
        path = tmp_path_factory.mktemp(f"analysis-pipeline-{combine}")
        make_nlp(tiny_bert_dir, layers=[-1], combine=combine).to_disk(path)
        _SAVED[key] = path
    return _SAVED[key]


# ---------------------------------------------------------------- plain references


def _units(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def exact_anisotropy(vectors: np.ndarray) -> float:
    """The mean cosine over all pairs of distinct tokens, from the full cosine matrix (no zero rows)."""
    cosines = _units(vectors) @ _units(vectors).T
    upper = np.triu_indices(len(cosines), k=1)
    return float(cosines[upper].mean())


def plain_self_similarity(vectors: np.ndarray, words: Sequence[str], min_count: int) -> float:
    """Per word with >= min_count occurrences, the mean cosine over pairs of its occurrences; averaged."""
    per_word = []
    for word in sorted(set(words)):
        rows = [i for i, w in enumerate(words) if w == word]
        if len(rows) >= min_count:
            units = _units(vectors[rows])
            per_word.append(np.mean([units[i] @ units[j] for i in range(len(rows)) for j in range(len(rows))
                                     if i != j]))
    return float(np.mean(per_word))


def plain_intra_sentence(vectors: np.ndarray, sentences: Sequence[int]) -> float:
    """Per sentence of >= 2 tokens, the mean cosine between each token and the sentence's mean; averaged."""
    per_sentence = []
    for sentence in sorted(set(sentences)):
        rows = [i for i, s in enumerate(sentences) if s == sentence]
        if len(rows) >= 2:
            mean = np.asarray(vectors[rows], dtype=np.float64).mean(axis=0)
            per_sentence.append(np.mean([float(_units(vectors[[i]])[0] @ mean / np.linalg.norm(mean))
                                         for i in rows]))
    return float(np.mean(per_sentence))
