"""`embed`'s input, opened and checked before the model loads.

A text input (a path, or '-' for stdin) is split into lines on "\\n" only; a
trailing "\\r" (CRLF files) is dropped and a UTF-8 byte order mark at the very
start is dropped. Every other character, form feed, "\\x85" and "\\u2028"
included, stays inside its line. Lines are numbered from 1; a line that is
empty after `str.strip()` is blank: it is skipped, but still counted, so every
doc keeps the number of the line it came from. stdin is copied to an anonymous
temporary file first, so that it is checked (and counted for the progress bar)
exactly like a path.

A ``.jsonl``, ``.ndjson`` or ``.parquet`` input is refused: those are read by
``embed --ray`` (read as text, JSONL would be embedded as JSON syntax). So
is a token-per-line CoNLL file (``.conllu``, ``.conll``, ``.iob``,
``.iob2``), whose lines are markup, not docs.

A ``.spacy`` DocBin input is loaded whole (it holds token data, not vectors: a
small fraction of the output); its docs are numbered from 1 in the same way
and docs whose text is blank are skipped.
"""
import hashlib
import numbers
import os
import reprlib
import stat
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Dict, Iterator, Optional, Tuple, Union

from spacy.tokens import Doc, DocBin
from spacy.vocab import Vocab

from ..embedded import LINE_KEY
from ..outputs import drop_outputs
from ..textlines import HEAD_BYTES, file_kind, line_bounds, not_text_refusal
from .errors import CliError, UsageError

CHUNK = 1 << 20


class InputChanged(CliError):
    """The input's bytes differ from what was planned and hashed: what was embedded is of the old input."""


@dataclass
class Input:
    """What `embed` reads: checked, counted and hashed (to recognise it on --resume)."""

    label: str  # the path as given, or "<stdin>"
    kind: str  # "text" or "docbin"
    sha256: str
    n_records: int  # lines (text) or docs (DocBin)
    n_docs: int  # the records that are not blank
    path: Optional[Path] = None  # the resolved path (None for stdin)
    longest: int = 0  # text: the longest line's characters
    spool: Optional[IO[bytes]] = None  # stdin's copy
    doc_bin: Optional[DocBin] = field(default=None, repr=False)
    #: While `records` reads a text input: the lines read and their running SHA-256.
    _reading: Optional[Tuple[int, Any]] = field(default=None, repr=False)

    @property
    def n_blank(self) -> int:
        return self.n_records - self.n_docs

    def records(self, vocab: Vocab, after: int = 0) -> Iterator[Tuple[Union[str, Doc], int]]:
        """(text or doc, line number) for each non-blank record numbered above `after`."""
        if self.kind == "docbin":
            assert self.doc_bin is not None
            for number, doc in enumerate(self.doc_bin.get_docs(vocab), start=1):
                if number > after and doc.text.strip():
                    # An earlier embed's output as input: its outputs (of other components,
                    # maybe other models; or 0.1's plain `ctx_vectors`, which hold no store)
                    # would be carried into this run's as if it made them.
                    drop_outputs(doc)
                    yield doc, number
            return
        digest = hashlib.sha256()
        offset = 0
        with self._open() as f:
            for number, raw in enumerate(f, start=1):
                digest.update(raw)
                self._reading = (number, digest)
                if number > after:
                    text = _decode(raw, number, offset, self.label)
                    if text.strip():
                        yield text, number
                offset += len(raw)
        if digest.hexdigest() != self.sha256:
            raise InputChanged(f"INPUT {self.label} changed while it was being embedded; the output was not finished")

    def read_so_far(self) -> Dict[str, Any]:
        """What `records` has read of a text input: {"input_lines", "input_sha256"}
        of the lines up to the last it yielded ({} for a DocBin, or before a read).
        A shard committed now records what it was embedded from: an input edited
        during a run, then put back, must not pass its edited docs off as its own
        on --resume (`check_kept`)."""
        if self._reading is None:
            return {}
        lines, digest = self._reading
        return {"input_lines": lines, "input_sha256": digest.copy().hexdigest()}

    def check_kept(self, shard: Dict[str, Any], kept: str) -> None:
        """Refuse to continue from docs that were embedded from other lines than the
        input's (`read_so_far`, recorded with `shard`, their last). kept: what they are."""
        lines, recorded = shard.get("input_lines"), shard.get("input_sha256")
        if self.kind != "text" or not isinstance(lines, int) or not isinstance(recorded, str):
            return  # (a DocBin, or a run of an earlier version: not recorded)
        digest = hashlib.sha256()
        with self._open() as f:
            for number, raw in enumerate(f, start=1):
                if number > lines:
                    break
                digest.update(raw)
        if digest.hexdigest() != recorded:
            raise UsageError(
                f"{kept} were embedded from other text than INPUT {self.label} has in lines 1-{lines} (it was "
                "changed while they were embedded, and put back since); pass --overwrite to start over")

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()

    def _open(self) -> IO[bytes]:
        if self.spool is not None:
            self.spool.seek(0)
            return _Unclosing(self.spool)  # type: ignore[return-value]
        assert self.path is not None
        return self.path.open("rb")


class _Unclosing:
    """Iterate a file in a `with` block without closing it (stdin's spool is reread on --resume)."""

    def __init__(self, f: IO[bytes]):
        self.f = f

    def __enter__(self) -> IO[bytes]:
        return self.f

    def __exit__(self, *exc: object) -> None:
        return None


def open_input(input_path: str) -> Input:
    """Check and scan INPUT; raise `UsageError` with one line saying what is wrong."""
    if input_path == "-":
        return _scan_text(_spool_stdin(), "<stdin>", path=None)
    path = Path(input_path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UsageError(f"INPUT {input_path}: no such file") from None
    except OSError as e:
        raise UsageError(f"INPUT {input_path}: {e.strerror}") from None
    _refuse_other_formats(path, input_path)
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(
            f"INPUT {input_path} is a directory; expected a text file (one doc per line) or a .spacy DocBin"
        )
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"INPUT {input_path} is not a regular file; to read a pipe or a device, use '-' (stdin)")
    if not os.access(path, os.R_OK):
        raise UsageError(f"INPUT {input_path}: permission denied")
    if file_kind(path) == "docbin":
        return _scan_docbin(path, input_path)
    with path.open("rb") as f:
        return _scan_text(f, input_path, path=path.resolve())


def _refuse_other_formats(path: Path, label: str) -> None:
    """Refuse a name of another format than text: read as text, a JSONL file's docs
    would be its JSON syntax (and get vectors), Parquet would fail as "not UTF-8"
    (both are `embed --ray`'s), and a CoNLL file's lines are markup, not docs."""
    kind = file_kind(path)
    if kind in ("conllu", "conll"):
        instead = (f"write its sentences one per line first (python scripts/conllu_to_text.py {label} "
                   "sentences.txt), or analyse it with `analyze`, which reads CoNLL-U"
                   if kind == "conllu" else
                   f"make it a .spacy DocBin first (python -m spacy convert {label} . --converter ner, for "
                   "CoNLL NER and IOB), which embed reads with its tokens")
        raise UsageError(f"INPUT {label}: a token-per-line file (by its suffix {path.suffix}), whose lines would "
                         f"be embedded as text; {instead}")
    if kind in ("jsonl", "parquet"):
        raise UsageError(
            f"INPUT {label}: a {kind} file (by its suffix {path.suffix}) needs --ray, see docs/scaling.md; "
            "without --ray, INPUT is a text file (one doc per line) or a .spacy DocBin"
        )


def _spool_stdin() -> IO[bytes]:
    stream = getattr(sys.stdin, "buffer", sys.stdin)
    spool = tempfile.TemporaryFile(prefix="ctxembed-stdin-")
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            break
        if isinstance(chunk, str):  # a text-only stdin (some test harnesses)
            chunk = chunk.encode("utf8")
        spool.write(chunk)
    spool.seek(0)
    return spool


def _scan_text(f: IO[bytes], label: str, path: Optional[Path]) -> Input:
    refused = not_text_refusal(f.read(HEAD_BYTES), f"INPUT {label}")
    if refused:
        raise UsageError(refused)
    f.seek(0)
    digest = hashlib.sha256()
    n_lines = n_docs = offset = 0
    longest = 0
    for n_lines, raw in enumerate(f, start=1):  # noqa: B007 - n_lines is the count afterwards
        digest.update(raw)
        text = _decode(raw, n_lines, offset, label)
        if text.strip():
            n_docs += 1
            longest = max(longest, len(text))
        offset += len(raw)
    spool = f if path is None else None
    if n_docs == 0:
        if spool is not None:
            spool.close()
        what = "is empty" if n_lines == 0 else f"has only blank lines ({n_lines})"
        raise UsageError(f"INPUT {label} {what}: nothing to embed")
    return Input(label, "text", digest.hexdigest(), n_lines, n_docs, path=path, spool=spool, longest=longest)


def _decode(raw: bytes, number: int, offset: int, label: str) -> str:
    """The text of one raw line (see `textlines.line_bounds`)."""
    start, end = line_bounds(raw, first=number == 1)
    try:
        return raw[start:end].decode("utf-8")
    except UnicodeDecodeError as e:
        bad = offset + start + e.start
        raise UsageError(
            f"INPUT {label} is not UTF-8: line {number}, byte offset {bad} (0x{raw[start + e.start]:02x}); "
            "re-encode it, e.g. iconv -f latin1 -t utf-8"
        ) from None


def _scan_docbin(path: Path, label: str) -> Input:
    try:
        # One read for both: a file replaced between a hash and a second read would
        # have its docs embedded under another file's checksum.
        data = path.read_bytes()
        sha256 = hashlib.sha256(data).hexdigest()
        doc_bin = DocBin(store_user_data=True).from_bytes(data)
        n_docs, own_lines = 0, []
        for number, doc in enumerate(doc_bin.get_docs(Vocab()), start=1):
            if doc.text.strip():
                n_docs += 1
                line = doc.user_data.get(LINE_KEY, number)
                # (numpy's integers too; a numpy array has no plain truth)
                if not (isinstance(line, numbers.Integral) and not isinstance(line, bool) and line == number):
                    own_lines.append((number, line))
    except Exception as e:  # zlib, msgpack, spaCy: whatever a file that is not a DocBin raises
        what = (str(e).strip().splitlines() or [""])[0][:200]
        raise UsageError(f"INPUT {label} is not a readable .spacy DocBin ({type(e).__name__}: {what})") from None
    if n_docs == 0:
        raise UsageError(f"INPUT {label} has no docs with text ({len(doc_bin)} docs): nothing to embed")
    if own_lines:
        # The output's "line" is where each doc is in INPUT (what --resume and the
        # manifest count by); a "line" of the docs' own (an earlier embed's shard:
        # lines of its input) would otherwise be gone without a word.
        number, line = own_lines[0]
        many = len(own_lines) > 1
        warnings.warn(f"INPUT {label}: {len(own_lines)} doc{'s' * many} carr{'ies' if not many else 'y'} a "
                      f"user_data[{LINE_KEY!r}] of {'their' if many else 'its'} own (doc {number}: "
                      f"{reprlib.repr(line)}), replaced in the output by the doc's 1-based position in INPUT; "
                      "copy it to another key first to keep it", stacklevel=3)
    return Input(label, "docbin", sha256, len(doc_bin), n_docs, path=path.resolve(), doc_bin=doc_bin)
