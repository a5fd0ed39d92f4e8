"""The input of a distributed run, cut into shards that any worker can read on its own.

Planning (on the driver) reads each input once, streaming: it counts the rows
and records where every shard starts (a byte offset in a text or JSONL file, a
row number in a Parquet file), and hashes every input's bytes (Parquet too) so
that a resumed run can tell whether its input changed. A shard never spans two files, and doc ids
run on across files in the order the files are given: row ``r`` of the whole
input is doc ``r``, whether it is embedded or rejected.

Reading (on a worker) turns one shard back into rows: ``(doc_id, text)`` for
each doc to embed, and a record with a reason for each row that cannot be
one. A row is rejected, never dropped: a line that is empty or blank, bytes
that are not UTF-8 (in a line or in a Parquet value), a JSONL line that is
not a JSON object or lacks the text field, a JSON string with a lone
surrogate escape ("\\ud800": valid JSON, but not text that UTF-8 or spaCy can
hold), a null or blank Parquet value, a text longer than the pipeline's
``nlp.max_length``. Errors that concern a whole input (a
file that cannot be read, a Parquet file without the text column, a file
that changed since planning) raise `InputError`.
"""
import hashlib
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterator, List, Optional, Sequence, Tuple

from ..fileio import file_sha256
from ..textlines import HEAD_BYTES, SUFFIXES, bad_byte, line_bounds, not_text_refusal

#: The input formats (`--input-format`): the kinds `textlines.SUFFIXES` names, in its order.
KINDS = tuple(dict.fromkeys(SUFFIXES.values()))


class InputError(ValueError):
    """An input that cannot be read as asked: the message names the file and what is wrong."""


@dataclass(frozen=True)
class Shard:
    """Rows [start_row, start_row + n_rows) of one input file; doc ids from `first_id`."""

    index: int
    path: str
    kind: str
    text_key: str
    first_id: int
    n_rows: int
    start: int  # text/jsonl: the byte offset of the shard's first line; parquet: its first row
    stop: int  # text/jsonl: the byte offset after its last line; parquet: the row after its last
    first_line: int  # 1-based line (text/jsonl) or 0-based row (parquet) of the shard's first row
    size: int  # the file's size and mtime at planning: a worker refuses a file that changed
    mtime_ns: int

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Shard":
        return cls(**{key: data[key] for key in cls.__dataclass_fields__})


@dataclass
class Rejected:
    """A row that is not in the output, and why."""

    doc_id: int
    source: str
    line: Optional[int]  # text/jsonl: 1-based line
    row: Optional[int]  # parquet: 0-based row in its file
    reason: str

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def input_files(paths: Sequence[str], kind: Optional[str] = None) -> List[Tuple[Path, str]]:
    """The files to read, with their kind: each path is a file, or a directory whose
    files are all read, sorted by name. Names starting with "." or "_" are
    skipped (hidden files, `_SUCCESS` markers, as Spark and pyarrow do); a
    subdirectory is an error, not silently skipped. `kind` (text, jsonl or
    parquet) overrides what the file names say."""
    if kind is not None and kind not in KINDS:
        raise InputError(f"input format {kind!r}: expected one of {', '.join(KINDS)}")
    if not paths:
        raise InputError("no input given")
    files: List[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            entries = [p for p in path.iterdir() if not p.name.startswith((".", "_"))]
            subdirs = sorted(p.name for p in entries if p.is_dir())
            if subdirs:
                raise InputError(f"input {given}: the directory has subdirectories ({', '.join(subdirs[:5])}); "
                                 "give their files or the subdirectories themselves")
            found = sorted(entries)
            if not found:
                raise InputError(f"input {given}: the directory has no files")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise InputError(f"input {given}: no such file or directory")
    result = []
    for path in files:
        if not path.exists():  # (a link to nothing, in a directory)
            raise InputError(f"input {path}: no such file (a link to a file that is not there?)")
        if not path.is_file():
            # A pipe, socket or device: a run reads each input twice (planning,
            # then its shards by byte offset), and a pipe's bytes are gone after
            # the first read, so its shards would come out empty or hang.
            raise InputError(f"input {path} is not a regular file (a pipe, socket or device); "
                             "embed --ray reads each input twice: save it to a file first")
        if not os.access(path, os.R_OK):
            raise InputError(f"input {path}: permission denied")
        try:  # (the manifest and the rejected rows record it, as JSON: UTF-8)
            str(path).encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"input {ascii(str(path))}: the file name is not UTF-8, which the run's manifest "
                             "cannot record; rename the file") from None
        file_kind = kind or SUFFIXES.get(path.suffix.lower())
        if file_kind is None:
            raise InputError(
                f"input {path}: cannot tell its format from the name; expected {', '.join(SUFFIXES)} "
                "or an explicit format (--input-format text|jsonl|parquet)"
            )
        result.append((path.resolve(), file_kind))
    return result


def plan_shards(
    files: Sequence[Tuple[Path, str]], shard_size: int, text_key: str = "text"
) -> Tuple[List[Shard], List[Dict[str, Any]]]:
    """Cut the input into shards of at most `shard_size` rows.

    Returns the shards and, per file, what identifies it (path, kind, rows,
    size, and the SHA-256 of its bytes).
    """
    if shard_size < 1:
        raise InputError(f"shard_size {shard_size}: expected a positive number of rows")
    shards: List[Shard] = []
    identities = []
    first_id = 0
    for path, kind in files:
        st = path.stat()
        if kind == "parquet":
            pieces, fingerprint = _plan_parquet(path, shard_size, text_key)
        else:
            pieces, fingerprint = _plan_lines(path, kind, shard_size, text_key)
        n_rows = sum(piece[3] for piece in pieces)
        for start, stop, first_line, rows in pieces:
            shards.append(Shard(
                index=len(shards), path=str(path), kind=kind, text_key=text_key, first_id=first_id,
                n_rows=rows, start=start, stop=stop, first_line=first_line, size=st.st_size,
                mtime_ns=st.st_mtime_ns,
            ))
            first_id += rows
        # No mtime: a copied or touched input with the same bytes is the same input.
        identities.append({"path": str(path), "kind": kind, "rows": n_rows, "size": st.st_size, **fingerprint})
    if first_id == 0:
        raise InputError(f"the input has no rows ({', '.join(str(p) for p, _ in files)}): nothing to embed")
    return shards, identities


Piece = Tuple[int, int, int, int]  # start, stop (bytes or rows), first line or row, rows


def _plan_lines(path: Path, kind: str, shard_size: int, text_key: str) -> Tuple[List[Piece], Dict[str, str]]:
    digest = hashlib.sha256()
    pieces: List[Piece] = []
    offset = start = 0
    n_lines = 0
    checked_key = kind != "jsonl"
    try:
        with path.open("rb") as f:
            refused = not_text_refusal(f.read(HEAD_BYTES), f"input {path}")
            if refused:
                raise InputError(refused)
            f.seek(0)
            for raw in f:
                if n_lines and n_lines % shard_size == 0:
                    pieces.append((start, offset, n_lines - shard_size + 1, shard_size))
                    start = offset
                n_lines += 1
                digest.update(raw)
                if not checked_key:
                    checked_key = _check_first_record(raw, n_lines, path, text_key)
                offset += len(raw)
    except OSError as e:
        raise InputError(f"input {path}: cannot be read ({e.strerror or e})") from None
    if n_lines % shard_size:
        rows = n_lines % shard_size
        pieces.append((start, offset, n_lines - rows + 1, rows))
    elif n_lines:
        pieces.append((start, offset, n_lines - shard_size + 1, shard_size))
    return pieces, {"sha256": digest.hexdigest()}


def _check_first_record(raw: bytes, number: int, path: Path, text_key: str) -> bool:
    """Whether the JSONL check is done: the first JSON object must have the text
    field. A wrong --text-key is one error here, not every row rejected."""
    try:
        record = json.loads(_line_text(raw, number == 1))
    except (ValueError, RecursionError):  # not UTF-8 or not JSON: rejected when read; look at the next line
        return False
    if not isinstance(record, dict):
        return False
    if text_key not in record:
        fields = ", ".join(sorted(map(str, record))[:20]) or "none"
        raise InputError(
            f"input {path}: the first JSON record (line {number}) has no field {text_key!r} "
            f"(--text-key); its fields: {fields}"
        )
    return True


def _plan_parquet(path: Path, shard_size: int, text_key: str) -> Tuple[List[Piece], Dict[str, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"input {path}: not a readable Parquet file ({e})") from None
    schema = parquet.schema_arrow
    if text_key not in schema.names:
        raise InputError(f"input {path}: no column {text_key!r} (--text-key); its columns: {', '.join(schema.names)}")
    if schema.names.count(text_key) > 1:  # (pyarrow writes such a file; it then reads as no such column)
        raise InputError(f"input {path}: {schema.names.count(text_key)} columns named {text_key!r} (--text-key): "
                         "which holds the text cannot be told")
    column_type = schema.field(text_key).type
    if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
        raise InputError(f"input {path}: column {text_key!r} holds {column_type}, not strings")
    n_rows = parquet.metadata.num_rows
    pieces = [(start, min(start + shard_size, n_rows), start, min(shard_size, n_rows - start))
              for start in range(0, n_rows, shard_size)]
    return pieces, {"sha256": _file_sha256(path)}


def _file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, as a text or JSONL file's. (Not of the
    Parquet footer alone: one letter changed in place can leave every size,
    offset and statistic in it as it was, and a resumed run would then keep
    shards of the old rows.)"""
    try:
        return file_sha256(path)
    except OSError as e:
        raise InputError(f"input {path}: cannot be read ({e.strerror or e})") from None


# Reading a shard -----------------------------------------------------------


class RowGroups:
    """The Parquet row group read last, kept for the reader's next shard.

    A Parquet file can only be read a whole row group at a time, and writers
    make them large (pyarrow and pandas: about a million rows), so each
    shard within one decoded the whole group's text column: reading all of
    a file's shards grew with shards x group size (125 times the time at 16
    times the rows, from 25k rows in one group). An actor that keeps the group
    it read last decodes it once for the consecutive shards it is given.
    The column kept is what reading a shard of that group holds anyway, but
    kept, it is held until the reader's next Parquet read (through the
    shard's embedding too): one group's at a time. Keyed by the file's size
    and modification time too, as `_check_unchanged` holds a shard's file to
    them.
    """

    def __init__(self) -> None:
        self._key: Optional[Tuple[str, int, int, int, str]] = None
        self._column: Any = None

    def column(self, shard: Shard, parquet: Any, group: int) -> Any:
        key = (shard.path, shard.size, shard.mtime_ns, group, shard.text_key)
        if key != self._key:
            self._key, self._column = None, None  # (the group before is freed before the next is read)
            self._column = parquet.read_row_group(group, columns=[shard.text_key]).column(0)
            self._key = key
        return self._column


def read_shard(
    shard: Shard, max_length: Optional[int] = None, row_groups: Optional[RowGroups] = None
) -> Tuple[List[Tuple[int, str]], List[Rejected]]:
    """The shard's rows: ``[(doc_id, text)]`` to embed, and the rejected rows.

    max_length: the pipeline's `nlp.max_length`; a longer text is rejected
    (spaCy's tokenizer would refuse it, E088, and fail the whole run).
    row_groups: where a reader of many shards keeps the Parquet row group it
    read last (`RowGroups`); none: each shard reads its groups afresh.
    """
    _check_unchanged(shard)
    if shard.kind == "parquet":
        rows = _read_parquet_rows(shard, row_groups or RowGroups())
    else:
        rows = _read_line_rows(shard)
    docs: List[Tuple[int, str]] = []
    rejected: List[Rejected] = []
    for doc_id, location, text, reason in rows:
        if reason is None and text is not None and not text.strip():
            reason = _blank_reason(text, "line" if shard.kind == "text" else "text")
        if reason is None and text is not None and max_length is not None and len(text) > max_length:
            reason = f"{len(text):,} characters, more than the pipeline's nlp.max_length ({max_length:,})"
        if reason is None and text is not None:
            docs.append((doc_id, text))
        else:
            line, row = (None, location) if shard.kind == "parquet" else (location, None)
            rejected.append(Rejected(doc_id, shard.path, line, row, reason or "no text"))
    if len(docs) + len(rejected) != shard.n_rows:
        raise InputError(f"input {shard.path} changed since it was planned: shard {shard.index} has "
                         f"{len(docs) + len(rejected)} rows, planned {shard.n_rows}")
    return docs, rejected


RowResult = Tuple[int, int, Optional[str], Optional[str]]  # doc_id, line or row, text, reason to reject


def _check_unchanged(shard: Shard) -> None:
    try:
        st = os.stat(shard.path)
    except OSError as e:
        raise InputError(f"input {shard.path}: cannot be read ({e.strerror or e})") from None
    if (st.st_size, st.st_mtime_ns) != (shard.size, shard.mtime_ns):
        raise InputError(f"input {shard.path} changed since the run was planned (size or modification time)")


def _read_line_rows(shard: Shard) -> Iterator[RowResult]:
    with open(shard.path, "rb") as f:
        f.seek(shard.start)
        data = f.read(shard.stop - shard.start)
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":  # the "\n" that ends the last line
        lines.pop()
    for i, raw in enumerate(lines):
        number = shard.first_line + i
        doc_id = shard.first_id + i
        try:
            text = _line_text(raw, number == 1)
        except UnicodeDecodeError as e:
            yield doc_id, number, None, _not_utf8(e)
            continue
        if shard.kind == "text":
            yield doc_id, number, text, None
        else:
            yield (doc_id, number, *_json_text(text, shard.text_key))


def _line_text(raw: bytes, first: bool) -> str:
    start, end = line_bounds(raw, first)
    return raw[start:end].decode("utf-8")


def _not_utf8(error: UnicodeDecodeError) -> str:
    """The reason to reject bytes that do not decode; the column counts bytes, from 1."""
    return f"not UTF-8: {bad_byte(error.object, error.start)}"


def _blank_reason(text: str, what: str) -> str:
    return f"empty {what}" if not text else f"blank {what} (whitespace only)"


class _Record(dict):
    """A JSON object, with the keys it gave more than once (json.loads keeps the last value)."""

    twice: FrozenSet[str] = frozenset()


def _record(pairs: List[Tuple[str, Any]]) -> _Record:
    record = _Record(pairs)
    if len(record) < len(pairs):
        record.twice = frozenset(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
    return record


def _json_text(line: str, key: str) -> Tuple[Optional[str], Optional[str]]:
    if not line.strip():
        return None, _blank_reason(line, "line")
    try:
        record = json.loads(line, object_pairs_hook=_record)
    except ValueError as e:
        return None, f"not JSON: {e}"
    except RecursionError:  # (valid JSON nested about 1,000 deep: Python's decoder gives up)
        return None, "not JSON that can be read: nested too deeply"
    if not isinstance(record, dict):
        return None, f"not a JSON object: {type(record).__name__}"
    if key not in record:
        return None, f"no field {key!r}"
    if key in getattr(record, "twice", ()):  # (which value is the text cannot be told: json.loads kept the last)
        return None, f"field {key!r} given more than once"
    value = record[key]
    if not isinstance(value, str):
        return None, f"field {key!r} is {'null' if value is None else type(value).__name__}, not a string"
    surrogate = _lone_surrogate(value)
    if surrogate is not None:
        return None, f"field {key!r} is not valid Unicode: {surrogate}"
    return value, None


def _lone_surrogate(text: str) -> Optional[str]:
    """Where `text` has a lone surrogate, or None. JSON's "\\ud800" escapes decode
    to one; it cannot be encoded to UTF-8, so spaCy's tokenizer (and the
    shard's Parquet file) would fail on it and stop the whole run."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"lone surrogate U+{ord(text[e.start]):04X} at character {e.start + 1}"
    return None


def _read_parquet_rows(shard: Shard, row_groups: RowGroups) -> Iterator[RowResult]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(shard.path)
    row = 0
    for group in range(parquet.metadata.num_row_groups):
        n = parquet.metadata.row_group(group).num_rows
        if row + n > shard.start and row < shard.stop:
            column = row_groups.column(shard, parquet, group)
            lo, hi = max(shard.start - row, 0), min(shard.stop - row, n)
            # Read as bytes: a writer that does not validate UTF-8 can store any bytes in a
            # string column, and pyarrow's own decoding would fail the whole shard on them.
            for i, raw in enumerate(column.slice(lo, hi - lo).cast(pa.large_binary()).to_pylist()):
                file_row = row + lo + i
                doc_id = shard.first_id + file_row - shard.start
                yield (doc_id, file_row, *_parquet_text(raw))
        row += n


def _parquet_text(raw: Optional[bytes]) -> Tuple[Optional[str], Optional[str]]:
    if raw is None:
        return None, "null text"
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return None, _not_utf8(e)
