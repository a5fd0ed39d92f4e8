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
from typing import List, Optional, Tuple, Union

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


#: Byte order marks of encodings whose text decodes as UTF-8 all the same
#: (ASCII comes out with a NUL byte beside each character), longest first.
WIDE_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
             (b"\xfe\xff", "UTF-16"))
#: How much of a file's start `wide_encoding` reads.
HEAD_BYTES = 4096


#: The C0 control bytes but tab, newline and carriage return: rare in UTF-8
#: text, and half the bytes of UTF-16 text in Latin, Greek, Cyrillic, Hebrew or
#: Arabic script (whose high bytes are 0x00 to 0x06).
_CONTROLS = bytes(b for b in range(32) if b not in (9, 10, 13))


def wide_encoding(head: bytes) -> Optional[str]:
    """"UTF-16" or "UTF-32" where a file's first bytes (`HEAD_BYTES` of them)
    say it is: a byte order mark, or without one ("UTF-16LE", ..., as iconv
    names them), control bytes (NUL included) in a quarter or more of them.
    Else None. Such a file's lines are mostly valid UTF-8, and would be
    embedded as their bytes: NULs or control characters between the letters."""
    for bom, encoding in WIDE_BOMS:
        if head.startswith(bom):
            return encoding
    controls = len(head) - len(head.translate(None, _CONTROLS))
    if len(head) < 4 or controls * 4 < len(head):
        return None
    # Two NULs in a row: the upper half of a UTF-32 unit (UTF-16 has them only for a NUL character).
    wide = "UTF-32" if head.count(b"\x00\x00") * 8 >= len(head) else "UTF-16"
    # Without a mark, the byte order is iconv's to be told: the high bytes (zero, or
    # control bytes) come last in a little-endian unit, first in a big-endian one.
    if wide == "UTF-32":
        little = head[3::4].count(0) > head[0::4].count(0)
    else:
        little = sum(1 for b in head[1::2] if b < 32) > sum(1 for b in head[0::2] if b < 32)
    return wide + ("LE" if little else "BE")


def wide_encoding_advice(what: str, encoding: str) -> str:
    """The refusal of a file (`what`: "INPUT name") that `wide_encoding` found to be UTF-16 or UTF-32."""
    return (f"{what} looks like {encoding}, not UTF-8 (a byte order mark, or NUL bytes between its "
            f"characters: PowerShell's > and Notepad's \"Unicode\" write it): re-encode it, e.g. "
            f"iconv -f {encoding} -t UTF-8")


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
