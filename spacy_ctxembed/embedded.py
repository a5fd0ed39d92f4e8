"""What `embed` writes, read back: the layout of a finished output and its readers.

OUTPUT is a directory, complete when it has a ``manifest.json`` (`embed`
writes it last, then renames the directory into place: `cli.output`).

``--format docbin``::

    OUTPUT/manifest.json
    OUTPUT/shard-000000.spacy     # DocBin, --shard-size docs, vectors in user data,
    OUTPUT/shard-000001.spacy     # doc.user_data["line"]: the input line number
    ...

``--format npy``::

    OUTPUT/manifest.json
    OUTPUT/vectors.npy            # float32 (n_tokens, width), docs one after another
    OUTPUT/docs.jsonl             # per doc: line, text, tokens, start, end (rows)
"""
import hashlib
import json
import os
from functools import partial
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, Tuple, cast

import numpy
from spacy import registry
from spacy.tokens import Doc, DocBin
from spacy.training import Example
from spacy.training.corpus import Corpus
from spacy.vocab import Vocab

from .errors import shortened
from .fileio import EMBED_LAYOUT
from .outputs import restore_vectors, span_as_doc
from .outputs.store import doc_stores, is_store_key, user_data_of

LAYOUT = EMBED_LAYOUT
LAYOUT_VERSION = 1
MANIFEST = "manifest.json"
VECTORS = "vectors.npy"
DOCS = "docs.jsonl"
SHARD = "shard-{:06d}.spacy"
LINE_KEY = "line"  # doc.user_data[LINE_KEY]: the doc's 1-based input line number


def read_manifest(path: Path) -> Optional[Dict[str, Any]]:
    """The manifest of a complete output at `path`, or None."""
    try:
        manifest = json.loads((Path(path) / MANIFEST).read_text(encoding="utf8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("layout") == LAYOUT else None


def iter_docs(path: Path, vocab: Optional[Vocab] = None) -> Iterator[Doc]:
    """The docs of a complete ``--format docbin`` output, in input order, vectors restored.

    Each doc has ``doc.user_data["line"]`` (its input line) and ``doc._.ctx_vectors``.
    Every shard is read from the directory the manifest was read from (see
    `_OutputReader`): an output replaced while it is read gives an error, never
    a mix of two runs.
    """
    vocab = vocab if vocab is not None else Vocab()
    previous = 0  # the input line of the doc before
    with _OutputReader(path, "docbin") as reader:
        _check_shard_list(path, reader.manifest)
        for shard in reader.manifest["shards"]:
            data = reader.read(shard["file"])
            try:
                docs = DocBin().from_bytes(data).get_docs(vocab)
            except Exception as e:  # noqa: BLE001 - spaCy's E1014 names no file and speaks of v2 JSON; zlib, msgpack
                raise ValueError(f"{path}: {shard['file']} cannot be read as a DocBin ({type(e).__name__}): the file "
                                 "is damaged; embed the input again") from e
            wrong_size = shard_size_difference(shard, len(data))
            if wrong_size:
                raise ValueError(f"{path}: {wrong_size}: the file is damaged, or another's; embed the input again")
            # Of the same size and lines, a shard of another run (an input edited since, another
            # model) read as this one's: the checksum tells.
            _check_sha256(path, shard["file"], data, shard.get("sha256"))
            # A readable shard of the same size from elsewhere (another run's, or a copy of a
            # sibling): its docs' input lines are not the ones the manifest gives it.
            first, last = shard.get("first_line"), shard.get("last_line")
            count = 0
            for doc in docs:
                count += 1
                line = doc.user_data.get(LINE_KEY)
                if isinstance(first, int) and isinstance(last, int) and not (
                        isinstance(line, int) and max(first, previous + 1) <= line <= last):
                    raise ValueError(f"{path}: {shard['file']} holds a doc of input line {line!r}, where its "
                                     f"manifest gives it lines {first}-{last} (after line {previous}): the file is "
                                     "another's; embed the input again")
                previous = line if isinstance(line, int) else previous
                yield restore_vectors(doc)
            if count != shard["docs"]:
                raise ValueError(f"{path}: {shard['file']} holds {count} docs, its manifest says {shard['docs']}")


def _check_shard_list(path: Path, manifest: Dict[str, Any]) -> None:
    """The manifest's shards must hold its docs, and cover the input lines one after
    another: a shard's entry deleted (with its file or not) read as an output of fewer
    docs, without a word."""
    shards, docs = manifest["shards"], manifest.get("docs")
    listed = sum(shard.get("docs", 0) for shard in shards)
    if isinstance(docs, int) and listed != docs:
        raise ValueError(f"{path}: its {MANIFEST} lists shards of {listed} docs, where it says {docs} docs: a "
                         "shard's entry is missing or was edited; embed the input again")
    previous: Optional[int] = None  # the last input line of the shard before
    for shard in shards:
        first, last = shard.get("first_line"), shard.get("last_line")
        if not (isinstance(first, int) and isinstance(last, int)):
            return  # (not recorded: nothing to hold the shards to)
        if previous is not None and first != previous + 1:
            raise ValueError(f"{path}: its {MANIFEST} gives {shard.get('file')} input lines {first}-{last}, where the "
                             f"shard before ends at line {previous}: a shard's entry is missing or was edited; "
                             "embed the input again")
        previous = last


def _check_sha256(path: Path, name: str, data: bytes, written: Any) -> None:
    """The file `name` of the output at `path`, read as `data`, must have the SHA-256
    its manifest records (`written`; earlier versions recorded none: nothing to check)."""
    difference = sha256_difference(name, lambda: hashlib.sha256(data).hexdigest(), written)
    if difference:
        raise ValueError(f"{path}: {difference}: the file is another's, or was edited; embed the input again")


def sha256_difference(name: str, digest: Callable[[], str], written: Any) -> Optional[str]:
    """How the file `name`, whose SHA-256 `digest()` gives, differs from the one
    its manifest records (`written`); None where they agree, or where none is
    recorded (earlier versions recorded none: then the file is not hashed)."""
    if not isinstance(written, str):
        return None
    actual = digest()
    return None if actual == written else f"{name} has sha256 {actual[:12]}, where its manifest says {written[:12]}"


def shard_size_difference(shard: Dict[str, Any], size: int) -> Optional[str]:
    """How a docbin shard's file of `size` bytes differs from the size its manifest
    entry records; None where they agree, or where no size is recorded (earlier
    versions did not record it)."""
    written = shard.get("bytes")
    if not isinstance(written, int) or size == written:
        return None
    return f"{shard['file']} holds {size:,} bytes, where its manifest says {written:,}"


def load_npy(path: Path, mmap: bool = True) -> Tuple[numpy.ndarray, List[Dict[str, Any]]]:
    """(vectors, records) of a complete ``--format npy`` output; rows ``start:end`` are a doc's.

    Both files come from the directory the manifest was read from (see `_OutputReader`).
    """
    with _OutputReader(path, "npy") as reader:
        with reader.open(VECTORS) as f:
            version = numpy.lib.format.read_magic(f)
            read_header = numpy.lib.format.read_array_header_1_0 if version == (1, 0) else \
                numpy.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            # numpy's own errors for a cut file ("mmap length is greater than
            # file size", "cannot reshape") name neither the file nor the cause.
            stored, expected = os.fstat(f.fileno()).st_size - f.tell(), int(numpy.prod(shape)) * dtype.itemsize
            if stored != expected:
                raise ValueError(f"{path}: {VECTORS} holds {stored:,} bytes of rows, its header says {shape} "
                                 f"{dtype} ({expected:,} bytes): the file is damaged; embed the input again")
            vectors: numpy.ndarray
            if mmap:
                vectors = numpy.memmap(f, dtype=dtype, mode="r", offset=f.tell(), shape=shape,
                                       order="F" if fortran else "C")
            else:
                vectors = numpy.fromfile(f, dtype=dtype).reshape(shape, order="F" if fortran else "C")
        docs_data = reader.read(DOCS)
        # (Not `splitlines`: a text may hold U+2028 and the like, which JSON leaves as they are.)
        records = [json.loads(line) for line in docs_data.split(b"\n") if line]
    if shape[0] != reader.manifest.get("rows"):
        raise ValueError(f"{path}: {VECTORS} holds {shape[0]} rows, its manifest says {reader.manifest.get('rows')}")
    # Of the same rows, another model's vectors.npy (the same input) read as this model's.
    width = reader.manifest.get("width")
    if len(shape) == 2 and isinstance(width, int) and shape[1] != width:
        raise ValueError(f"{path}: {VECTORS} holds rows of {shape[1]} values, its manifest says {width}: the file "
                         "is another model's, or was edited; embed the input again")
    _check_records(path, records, reader.manifest.get("docs"), shape[0])
    # Of the same size and rows, another run's docs.jsonl (an input edited since) paired
    # its texts with these vectors: the checksum tells.
    _check_sha256(path, DOCS, docs_data, reader.manifest.get("docs_sha256"))
    return vectors, records


def _check_records(path: Path, records: List[Dict[str, Any]], docs: Any, rows: int) -> None:
    """docs.jsonl must hold the manifest's docs, their rows laid end to end over all
    of vectors.npy: one cut at a line's end (or a line lost) reads as fewer docs."""
    bounds = [(record.get("start"), record.get("end")) for record in records]
    chained = all(start == end for (_, end), (start, _) in zip([(0, 0), *bounds], bounds))
    if len(records) != docs or not chained or (bounds[-1][1] if bounds else 0) != rows:
        raise ValueError(f"{path}: {DOCS} holds {len(records)} docs whose rows do not make the manifest's {docs} "
                         f"docs of {rows} rows: the file is damaged; embed the input again")
    # A doc's tokens edited (one dropped, two joined) paired its rows with the wrong tokens.
    for record in records:
        tokens = record.get("tokens")
        if isinstance(tokens, list) and len(tokens) != record["end"] - record["start"]:
            raise ValueError(f"{path}: {DOCS}: the doc of input line {record.get('line')!r} lists {len(tokens)} "
                             f"tokens for its {record['end'] - record['start']} rows: the file was edited; embed "
                             "the input again")


class _OutputReader:
    """A complete output's manifest and files, all read through one open handle
    on its directory.

    `embed --overwrite` renames a finished run into place and then removes the
    old output. Files opened by path one after another could come from both
    runs; opened relative to the directory the manifest came from, they come
    from that run, or, once it is removed, not at all (an error).
    """

    def __init__(self, path: Path, fmt: str):
        self.path = Path(path)
        self.fmt = fmt
        self._fd: Optional[int] = None
        self.manifest: Dict[str, Any] = {}

    def __enter__(self) -> "_OutputReader":
        try:
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            manifest = json.loads(self.read(MANIFEST).decode("utf8"))
        except (OSError, ValueError):
            self.__exit__()
            raise ValueError(f"{self.path} is not a complete spacy-ctxembed {self.fmt} output (no readable "
                             f"{MANIFEST})") from None
        if not isinstance(manifest, dict) or manifest.get("layout") != LAYOUT:
            self.__exit__()
            layout = manifest.get("layout") if isinstance(manifest, dict) else None
            raise ValueError(f"{self.path}: its {MANIFEST} is not an embed output's (layout {layout!r}, not "
                             f"{LAYOUT!r})")
        if manifest.get("format") != self.fmt:
            self.__exit__()
            other = manifest.get("format")
            reader = {"docbin": "iter_docs", "npy": "load_npy"}.get(other) if isinstance(other, str) else None
            hint = f": read it with {reader}" if reader else ""
            raise ValueError(f"{self.path} is an embed output of format {other!r}, not {self.fmt!r}{hint}")
        self.manifest = manifest
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def open(self, name: str) -> IO[bytes]:
        try:
            fd = os.open(name, os.O_RDONLY, dir_fd=self._fd)
        except FileNotFoundError:
            if self._in_place():
                raise ValueError(f"{self.path}: {name} is missing, though its {MANIFEST} lists it: the output is "
                                 "damaged; embed the input again") from None
            raise ValueError(
                f"{self.path} was replaced or removed while it was being read ({name} is gone); read it again"
            ) from None
        return os.fdopen(fd, "rb")

    def _in_place(self) -> bool:
        """Whether the directory read from is still the one at `path` (not renamed or removed since)."""
        try:
            return os.path.samestat(os.fstat(cast(int, self._fd)), os.stat(self.path))
        except OSError:
            return False

    def read(self, name: str) -> bytes:
        with self.open(name) as f:
            return f.read()


READER = "spacy-ctxembed.EmbeddedCorpus.v1"


class EmbeddedCorpus(Corpus):
    """spaCy's `Corpus` of docs that hold a ctxembed component's outputs
    (`embed`'s docbin output, or DocBins saved with user data), to train
    listening components without their upstream.

    spaCy's `Corpus` gives each example a new predicted doc
    (`nlp.make_doc(reference.text)`, or the reference's words) without the
    reference's user data: a listener found no outputs there. Here the
    predicted doc takes the reference's outputs (placed by characters, so on
    its own tokens), also for a sentence cut (`max_length`, `gold_preproc`),
    and an augmenter's new predicted doc of the same text. One of other text
    (`spacy.lower_case.v1`, `spacy.orth_variants.v1`, ...) was never embedded:
    refused. An `embed` output is read with `iter_docs` (held to its
    manifest); a doc that holds no outputs is refused."""

    def __init__(self, path: Any, **settings: Any):
        super().__init__(path, **settings)
        self.augmenter = partial(self._augment, self.augmenter)

    def read_docbin(self, vocab: Vocab, locs: Any) -> Iterator[Doc]:
        path = Path(self.path)
        if not path.exists():
            raise ValueError(f"{READER} path = {str(path)!r}: no such file or directory; give the output of "
                             "`python -m spacy_ctxembed embed IN.spacy -o OUT` (OUT)")
        manifest = read_manifest(path)
        if manifest is not None and manifest.get("format") != "docbin":
            raise ValueError(f"{READER} path = {str(path)!r}: an embed output of format {manifest.get('format')!r}, "
                             "which holds no docs to train on: embed the input again with --format docbin")
        docs = iter_docs(path, vocab) if manifest is not None else super().read_docbin(vocab, locs)
        count = 0
        for doc in docs:
            if not len(doc):
                continue
            if not doc_stores(doc):
                raise ValueError(
                    f"{READER} path = {str(self.path)!r}: the doc {shortened(doc.text, 40)!r} holds "
                    "no ctxembed outputs: give the output of `python -m spacy_ctxembed embed IN.spacy -o OUT` "
                    "(OUT), or read this corpus with spacy.Corpus.v1 and an embedder in the pipeline")
            yield restore_vectors(doc)
            count += 1
            if count == self.limit:
                return

    def _make_example(self, nlp: Any, reference: Doc, gold_preproc: bool) -> Example:
        example = super()._make_example(nlp, reference, gold_preproc)
        # (a sentence's `as_doc()` reads them from the doc it was cut from)
        _give_outputs(example.predicted, span_as_doc(reference[:]))
        return example

    def _augment(self, augmenter: Callable, nlp: Any, example: Example) -> Iterator[Example]:
        """`augmenter`'s examples of `example`, their new predicted docs given its outputs."""
        for augmented in augmenter(nlp, example):
            if augmented.predicted is not example.predicted and not doc_stores(augmented.predicted):
                if augmented.predicted.text != example.predicted.text:
                    name = getattr(getattr(augmenter, "func", augmenter), "__name__", repr(augmenter))
                    raise ValueError(
                        f"{READER} augmenter = {name}: it made an example "
                        f"of other text ({shortened(augmented.predicted.text, 40)!r} from "
                        f"{shortened(example.predicted.text, 40)!r}), "
                        "which was not embedded: the stored outputs are the embedded text's. Set augmenter = null, "
                        "or train with the embedder in the pipeline and spacy.Corpus.v1 to augment")
                _give_outputs(augmented.predicted, example.predicted)
            yield augmented


def _give_outputs(doc: Doc, source: Doc) -> None:
    """Give `doc` the ctxembed outputs of `source`, a doc of the same text
    (placed by characters, so on `doc`'s own tokens)."""
    user_data_of(doc).update({key: value for key, value in user_data_of(source).items() if is_store_key(key)})
    restore_vectors(doc)


@registry.readers(READER)
def embedded_corpus(path: Optional[Path], gold_preproc: bool = False, max_length: int = 0, limit: int = 0,
                    augmenter: Optional[Callable] = None) -> EmbeddedCorpus:
    """`spacy.Corpus.v1` of docs embedded once: see `EmbeddedCorpus`."""
    if path is None:
        raise ValueError(f"{READER} path = None: give the output of `python -m spacy_ctxembed embed IN.spacy -o OUT` "
                         "(OUT), e.g. with --paths.train OUT on the command line")
    return EmbeddedCorpus(path, gold_preproc=gold_preproc, max_length=max_length, limit=limit, augmenter=augmenter)
