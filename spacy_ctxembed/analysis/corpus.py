"""The corpus an analysis runs on: read and checked once, made into docs per pipeline.

Three formats, chosen by the file name (its suffix in any case):

* ``*.spacy``: a DocBin; its docs keep their tokens and sentence boundaries.
* ``*.conllu``: Universal Dependencies. Documents follow ``# newdoc`` lines
  (without any, every sentence is its own doc); tokens are the surface tokens
  (a multiword token such as "don't" stays one token, its syntactic words are
  skipped), spaces follow ``SpaceAfter=No``, and the sentences are the file's.
* anything else but another format's name (CoNLL, IOB, JSONL, Parquet: refused,
  not read as text): UTF-8 text, one doc per line; blank lines are skipped, and the
  pipeline's tokenizer splits each line. A line has no sentence boundaries
  unless the pipeline has a component that sets them (sentencizer, senter).

Each pipeline tokenizes the records itself (``Corpus.docs``), so two pipelines
with different tokenizers can be compared on the same corpus.
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Union, cast

from spacy.language import Language
from spacy.tokens import Doc, DocBin
from spacy.vocab import Vocab

from ..textlines import HEAD_BYTES, decode_file, file_kind, line_bounds, not_text_refusal, not_utf8, split_lines
from .errors import AnalysisInputError

KINDS = ("text", "docbin", "conllu")


@dataclass
class _ConlluDoc:
    words: List[str] = field(default_factory=list)
    spaces: List[bool] = field(default_factory=list)
    sent_starts: List[Optional[Union[bool, int]]] = field(default_factory=list)


@dataclass
class Corpus:
    """The records of a corpus file, checked; `docs` turns them into docs."""

    path: Path
    kind: str
    records: Union[List[str], List[_ConlluDoc], DocBin] = field(repr=False)
    n_docs: int
    #: The file's line number of each text record (blank lines are not records);
    #: empty: numbered 1, 2, ... (a corpus made from a list of texts).
    line_numbers: List[int] = field(default_factory=list, repr=False)

    def check_line_lengths(self, max_length: int, pipeline: str) -> None:
        """Refuse, before anything is embedded, text lines longer than the
        pipeline's tokenizer takes (its nlp.max_length): spaCy's own error
        (E088) would come once the line is reached, naming neither the file
        nor the line. (Docs made from words or a DocBin are not held to it.)"""
        over = [(number, len(text)) for text, number in self._lines() if len(text) > max_length]
        if over:
            raise self._too_long(*over[0], max_length, pipeline, more=len(over) - 1)

    def _lines(self) -> Iterator[Tuple[str, int]]:
        """A text corpus's records with their line numbers (none for another kind)."""
        if self.kind != "text":
            return iter(())
        records = cast(List[str], self.records)
        return zip(records, self.line_numbers or range(1, len(records) + 1))

    def _too_long(self, number: int, chars: int, max_length: int, pipeline: str, more: int = 0
                  ) -> AnalysisInputError:
        others = "" if not more else ", as does 1 more line" if more == 1 else f", as do {more:,} more lines"
        return AnalysisInputError(
            f"CORPUS {self.path}: line {number} has {chars:,} characters, more than the nlp.max_length "
            f"({max_length:,}) of {pipeline}{others}; split {'them' if more else 'it'} into shorter lines")

    def docs(self, nlp: Language, max_words: Optional[int] = None, *, pipeline: str = "the pipeline"
             ) -> Iterator[Doc]:
        """The corpus as docs for `nlp` (tokenized, not yet processed), in file order.

        max_words: stop once this many tokens have been given (the doc that
            crosses the limit is given whole); None for all.
        pipeline: how errors name `nlp` ("the pipeline en_core_web_sm").
        """
        n_words = 0
        docs = self._all_docs(nlp, pipeline)
        # The limit is checked before the next doc is made: a line past it is never tokenized.
        while max_words is None or n_words < max_words:
            doc = next(docs, None)
            if doc is None:
                return
            n_words += len(doc)
            yield doc

    def _all_docs(self, nlp: Language, pipeline: str) -> Iterator[Doc]:
        if isinstance(self.records, DocBin):
            for doc in self.records.get_docs(nlp.vocab):
                if len(doc):
                    yield doc
        elif self.kind == "text":
            for text, number in self._lines():
                if len(text) > nlp.max_length:  # (reached with --max-words, which is checked as it goes)
                    raise self._too_long(number, len(text), nlp.max_length, pipeline)
                yield nlp.make_doc(text)
        else:
            for record in cast(List[_ConlluDoc], self.records):
                yield Doc(nlp.vocab, words=record.words, spaces=record.spaces, sent_starts=record.sent_starts)


def read_corpus(path: Union[str, Path]) -> Corpus:
    """Read and check CORPUS (see the module doc for the formats)."""
    path = Path(path)
    if not path.exists():
        raise AnalysisInputError(f"CORPUS {path}: no such file")
    if not path.is_file():
        raise AnalysisInputError(f"CORPUS {path}: not a file (expected a text file, a .spacy DocBin or a .conllu file)")
    kind = file_kind(path)
    if kind == "conll":
        raise AnalysisInputError(
            f"CORPUS {path}: a token-per-line file (by its suffix {path.suffix}), whose lines would be analysed as "
            f"text; make it a .spacy DocBin first (python -m spacy convert {path} . --converter ner, for CoNLL NER "
            "and IOB), or convert it to CoNLL-U")
    if kind in ("jsonl", "parquet"):
        raise AnalysisInputError(
            f"CORPUS {path}: a {kind} file (by its suffix {path.suffix}), whose lines would be analysed "
            "as text; analyze reads a text file (one doc per line), a .spacy DocBin or a .conllu file")
    records: Union[List[str], List[_ConlluDoc], DocBin]
    line_numbers: List[int] = []
    if kind == "docbin":
        records = _read_docbin(path)
        n_docs = sum(1 for doc in records.get_docs(Vocab()) if len(doc))
    elif kind == "conllu":
        records = _read_conllu(path)
        n_docs = len(records)
    else:
        records, line_numbers = _read_text(path)
        n_docs = len(records)
    if n_docs == 0:
        raise AnalysisInputError(f"CORPUS {path}: no docs with text in this {kind} file")
    return Corpus(path, kind, records, n_docs, line_numbers)


def _read_text(path: Path) -> Tuple[List[str], List[int]]:
    """The lines with text, and their line numbers in the file."""
    lines, numbers = [], []
    with path.open("rb") as f:
        _refuse_wide(f.read(HEAD_BYTES), f"CORPUS {path}")
        f.seek(0)
        for number, raw in enumerate(f, start=1):
            start, end = line_bounds(raw, first=number == 1)
            try:
                line = raw[start:end].decode("utf-8")
            except UnicodeDecodeError as e:
                raise AnalysisInputError(f"CORPUS {path}: {not_utf8(raw, start + e.start, number)}") from None
            if line.strip():
                lines.append(line)
                numbers.append(number)
    return lines, numbers


def _refuse_wide(head: bytes, what: str) -> None:
    refused = not_text_refusal(head, what)
    if refused:
        raise AnalysisInputError(refused)


def _read_docbin(path: Path) -> DocBin:
    try:
        return DocBin().from_disk(path)
    except Exception as e:  # zlib, msgpack, spaCy: whatever a file that is not a DocBin raises
        raise AnalysisInputError(f"CORPUS {path}: not a readable .spacy DocBin ({type(e).__name__})") from None


def _read_conllu(path: Path) -> List[_ConlluDoc]:
    """Docs of surface tokens with spaces and sentence starts (module doc)."""
    sentences: List[_ConlluDoc] = []
    starts_doc: List[bool] = []  # per sentence: a "# newdoc" came before it
    current = _ConlluDoc()
    newdoc = False
    skip_until = 0  # the last word id covered by the current multiword token
    raw = path.read_bytes()
    _refuse_wide(raw, f"CORPUS {path}")
    try:
        text = decode_file(raw)
    except UnicodeDecodeError as e:
        raise AnalysisInputError(f"CORPUS {path}: {not_utf8(raw, e.start)}") from None
    for number, line in enumerate(split_lines(text), start=1):
        if line.startswith("#"):
            newdoc = newdoc or line.startswith("# newdoc")
            continue
        if not line.strip():
            # A blank line ends a sentence only after its tokens: one after a comment block alone
            # ("# newdoc" then a blank line) or a second in a row keeps a "# newdoc" for the next
            # sentence, which otherwise joined the document before it.
            if current.words:
                sentences.append(current)
                starts_doc.append(newdoc)
                current, newdoc, skip_until = _ConlluDoc(), False, 0
            continue
        columns = line.split("\t")
        if len(columns) != 10:
            raise AnalysisInputError(
                f"CORPUS {path}: line {number}: expected 10 tab-separated CoNLL-U columns, got {len(columns)}"
            )
        token_id, form, misc = columns[0], columns[1], columns[9]
        if "." in token_id:  # an empty node: not in the text
            continue
        first, last = _word_ids(token_id, f"CORPUS {path}: line {number}")
        if last > first:  # a multiword token: its surface form stands for its words
            skip_until = last
        elif first <= skip_until:
            continue
        if not form:  # spaCy refuses an empty word (E031) only when the doc is made, naming no file or line
            raise AnalysisInputError(f"CORPUS {path}: line {number}: empty FORM (column 2)")
        current.sent_starts.append(not current.words)
        current.words.append(form)
        current.spaces.append("SpaceAfter=No" not in misc.split("|"))
    if current.words:
        sentences.append(current)
        starts_doc.append(newdoc)
    return _group_docs(sentences, starts_doc)


def _word_ids(token_id: str, where: str) -> Tuple[int, int]:
    """The first and last word id of a token line: (i, i) for word i, (i, j) for a multiword token i-j."""
    try:
        ids = [int(i) for i in token_id.split("-")]
    except ValueError:
        ids = []
    if len(ids) not in (1, 2):
        raise AnalysisInputError(f"{where}: bad token id {token_id!r}")
    if len(ids) == 2 and ids[1] <= ids[0]:
        # a reversed range would silently skip the words after it
        raise AnalysisInputError(f"{where}: bad token id {token_id!r}: a multiword token's range goes from a lower "
                                 "word id to a higher one")
    return ids[0], ids[-1]


def _group_docs(sentences: List[_ConlluDoc], starts_doc: List[bool]) -> List[_ConlluDoc]:
    # Without document structure each sentence stands alone: no invented context.
    docs: List[_ConlluDoc] = [] if any(starts_doc) else sentences
    if any(starts_doc):
        for sentence, new in zip(sentences, starts_doc):
            if new or not docs:
                docs.append(_ConlluDoc())
            docs[-1].words += sentence.words
            docs[-1].spaces += sentence.spaces
            docs[-1].sent_starts += sentence.sent_starts
    for doc in docs:
        doc.spaces[-1] = False  # no trailing space after a doc's last token
    return docs
