"""Where a line's text starts and ends: one rule for every reader of line-based input.

Lines are split on "\\n" only. A trailing "\\r" (CRLF files) is not part of the
text, nor is a UTF-8 byte order mark at the very start of a file; every other
character, form feed, "\\x85" and "\\u2028" included, stays inside its line.

What kind of input a file name says is one rule too, `file_kind` (by the
suffix in lower case), for every reader: `embed --ray` reads the kinds in
`SUFFIXES`; `embed` without it reads text and DocBins, `analyze` those and
CoNLL-U, and each refuses the other kinds in its own words. Which files are not
UTF-8 text is one rule too, told by their first bytes (`not_text_refusal`).
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


#: The bytes below 0x20: the high byte of every character of UTF-16 text in
#: Latin, Greek, Cyrillic, Hebrew, Arabic, Indic or Thai script (U+0000 to
#: U+1FFF), whose low bytes then decode as UTF-8 all the same.
_LOW = bytes(range(32))


def _mostly(lane: bytes, count: int) -> bool:
    """Whether `count` is three quarters or more of the bytes of `lane`."""
    return 4 * count >= 3 * len(lane) > 0


def wide_encoding(head: bytes) -> Optional[str]:
    """"UTF-16" or "UTF-32" where a file's first bytes (`HEAD_BYTES` of them)
    say it is, with the byte order where no mark says it ("UTF-16LE", ..., as
    iconv names them); else None. Without a mark, by the byte lanes of the
    characters' high bytes: in UTF-32 the upper two bytes of each unit are
    mostly NUL; in UTF-16 one byte in two is mostly below 0x20, some of them
    NUL (a space, a newline). Such a file is mostly valid UTF-8, and would be
    embedded as its bytes: NULs or control characters between the letters.
    (UTF-8 has a NUL only for a NUL character, and no lane of control bytes:
    tab-separated or "T\nF\n" text has no NUL. CJK in UTF-16 is not caught
    here, and mostly not valid UTF-8.)"""
    for bom, encoding in WIDE_BOMS:
        if head.startswith(bom):
            return encoding
    if len(head) < 2:
        return None
    # A file of one UTF-16 character ("a\x00") is told too; UTF-32 needs a whole unit.
    for encoding, upper in (("UTF-32LE", (head[2::4], head[3::4])), ("UTF-32BE", (head[0::4], head[1::4]))):
        if len(head) >= 4 and all(_mostly(lane, lane.count(0)) for lane in upper):
            return encoding
    for encoding, high in (("UTF-16LE", head[1::2]), ("UTF-16BE", head[0::2])):
        if 0 in high and _mostly(high, len(high) - len(high.translate(None, _LOW))):
            return encoding
    return None


#: The first bytes of files that are not text, what they are, and what to do. A
#: compressed corpus above all: read as text it fails as another encoding, whose
#: suggested re-encoding then "works", and the compressed bytes are embedded.
BINARY_SIGNATURES = (
    (b"\x1f\x8b", "gzip-compressed", "decompress it first, e.g. gunzip -k"),
    (b"\xfd7zXZ\x00", "xz-compressed", "decompress it first, e.g. unxz -k"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed", "decompress it first, e.g. unzstd"),
    (b"PK\x03\x04", "a zip archive", "extract its text files first, e.g. unzip"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image", "give a text file"),
    (b"\xff\xd8\xff", "a JPEG image", "give a text file"),
    (b"\x7fELF", "an executable (ELF)", "give a text file"),
    (b"\x93NUMPY", "a NumPy .npy array", "give a text file"),
)


def binary_kind(head: bytes) -> Optional[Tuple[str, str]]:
    """(what the file is, what to do) where its first bytes are a known binary
    format's signature (bzip2's "BZh" only with the block magic after it: text
    may start "BZh"); else None."""
    for signature, kind, advice in BINARY_SIGNATURES:
        if head.startswith(signature):
            return kind, advice
    if head[:3] == b"BZh" and head[4:10] == b"1AY&SY":
        return "bzip2-compressed", "decompress it first, e.g. bunzip2 -k"
    return None


def not_text_refusal(head: bytes, what: str) -> Optional[str]:
    """Why a file whose first bytes are `head` (`HEAD_BYTES` of them are read)
    is refused: a known binary format (`binary_kind`), or UTF-16 or UTF-32
    (`wide_encoding`), for the reader's error (`what`: "INPUT name"); None for
    a file that is neither."""
    binary = binary_kind(head)
    if binary is not None:
        return f"{what} is {binary[0]}, not text: {binary[1]}"
    encoding = wide_encoding(head[:HEAD_BYTES])
    if encoding is None:
        return None
    return (f"{what} looks like {encoding}, not UTF-8 (a byte order mark, or NUL and control bytes between its "
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


def not_utf8(raw: bytes, position: int, first_line: int = 1) -> str:
    """Where `raw` stops decoding as UTF-8, at byte `position` (a UnicodeDecodeError's start in `raw`), for a
    reader's error: the line, the byte and its column, and what to do. `raw` starts at line `first_line`
    (1: the file's start, whose byte order mark is no column); the column counts the line's bytes from 1,
    as `embed --ray` gives it in rejected.jsonl. A file offset alone left the user counting bytes."""
    line_start = raw.rfind(b"\n", 0, position) + 1
    if line_start == 0 and first_line == 1 and raw.startswith(BOM):
        line_start = len(BOM)
    line = first_line + raw.count(b"\n", 0, position)
    return (f"line {line} is not UTF-8 ({bad_byte(raw, position, line_start)}): "
            "re-encode it, e.g. iconv -f latin1 -t utf-8")


def bad_byte(raw: bytes, position: int, line_start: int = 0) -> str:
    """"byte 0xff at column 3": the byte at `position` of `raw` that does not
    decode, and its column in the line that starts at `line_start`, counting
    bytes from 1 (the readers' errors and `embed --ray`'s rejected rows)."""
    return f"byte 0x{raw[position]:02x} at column {position - line_start + 1}"


def split_lines(text: str) -> List[str]:
    """A decoded file's lines by the same rule (`str.splitlines` would also
    split at "\\x85", "\\u2028" and form feeds): no empty line after a final "\\n"."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]
