"""Where a line's text starts and ends: one rule for every reader of line-based input.

Lines are split on "\\n" only. A trailing "\\r" (CRLF files) is not part of the
text, nor is a UTF-8 byte order mark at the very start of a file; every other
character, form feed, "\\x85" and "\\u2028" included, stays inside its line.

What kind of input a file name says is one rule too, `file_kind` (by the
suffix in lower case), for every reader: `embed --ray` reads the kinds in
`SUFFIXES`; `embed` without it reads text and DocBins, `analyze` those and
CoNLL-U, and each refuses the other kinds in its own words.
"""
from pathlib import Path
from typing import List, Tuple, Union

BOM = b"\xef\xbb\xbf"
#: The kinds of line or row input that `embed --ray` reads.
SUFFIXES = {".txt": "text", ".text": "text", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
#: Every kind a suffix names. "conllu" and "conll" (CoNLL NER, IOB) are
#: token-per-line: read as text, their docs would be their markup (comment
#: lines, tab-separated token rows).
KINDS = {**SUFFIXES, ".spacy": "docbin", ".conllu": "conllu", ".conll": "conll", ".iob": "conll", ".iob2": "conll"}


def file_kind(path: Union[str, Path]) -> str:
    """What a file holds by its suffix, in any case (`KINDS`); "text" for any other name."""
    return KINDS.get(Path(path).suffix.lower(), "text")


def line_bounds(raw: bytes, first: bool) -> Tuple[int, int]:
    """(start, end) of the text in `raw`, one line with or without its "\\n"; `first`: the file's first line."""
    start = len(BOM) if first and raw.startswith(BOM) else 0
    end = len(raw)
    if raw.endswith(b"\n"):
        end -= 1
    if end > start and raw[end - 1 : end] == b"\r":
        end -= 1
    return start, end


def decode_file(raw: bytes) -> str:
    """A whole file's text for `split_lines`: a byte order mark at its start
    dropped, and no newline translation (`Path.read_text` would make a lone
    "\\r" a line break). A UnicodeDecodeError's positions count from the file's first byte."""
    start = len(BOM) if raw.startswith(BOM) else 0
    try:
        return raw[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        raise UnicodeDecodeError(e.encoding, raw, start + e.start, start + e.end, e.reason) from None


def split_lines(text: str) -> List[str]:
    """A decoded file's lines by the same rule (`str.splitlines` would also
    split at "\\x85", "\\u2028" and form feeds): no empty line after a final "\\n"."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]
