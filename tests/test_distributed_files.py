"""The distributed run's files without Ray: planning and reading input shards,
writing shard files, proving completeness, and rows back to docs.

References are independent: Python's own `bytes.split(b"\\n")`, `json.loads`
and pyarrow's reading of the whole file, never the planner read back by itself.
"""
import hashlib
import json
import os
import re
import shutil

import numpy
import pytest
import spacy
from hypothesis import example, given, settings
from hypothesis import strategies as st

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from spacy_ctxembed.distributed import embed_corpus  # noqa: E402
from spacy_ctxembed.distributed.shards import (  # noqa: E402
    META_KEY,
    ShardMismatch,
    build_table,
    check_complete,
    committed,
    docs_from_table,
    read_docs,
    run_digest,
    shard_name,
    write_shard,
)
from spacy_ctxembed.distributed.sources import InputError, input_files, plan_shards, read_shard  # noqa: E402
from spacy_ctxembed.outputs import stored_signature  # noqa: E402

from .conftest import ctx_config, make_nlp  # noqa: E402


def _read_all(path, shard_size, kind=None, text_key="text"):
    shards, identities = plan_shards(input_files([str(path)], kind), shard_size, text_key)
    docs, rejected = [], []
    for shard in shards:
        d, r = read_shard(shard)
        docs += d
        rejected += r
    return shards, identities, docs, rejected


# Lines with the bytes that matter most often: a BOM, "\r", blanks, invalid UTF-8.
PIECES = st.sampled_from([b"\xef\xbb\xbf", b"\r", b" ", b"\t", b"a", b"\xc3\xa9", b"\xff", b"\xc3", b"\x85"])
LINE = st.one_of(st.binary(max_size=12), st.lists(PIECES, max_size=6).map(b"".join)).filter(lambda b: b"\n" not in b)


# The signatures of binary formats (compressed, archives, images, executables, .npy).
SIGNATURES = (b"\x1f\x8b", b"\xfd7zXZ\x00", b"(\xb5/\xfd", b"PK\x03\x04", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff",
              b"\x7fELF", b"\x93NUMPY")


@settings(max_examples=60, deadline=None)
@given(lines=st.lists(LINE, min_size=1, max_size=20), shard_size=st.integers(1, 7), trailing=st.booleans())
@example(lines=[b"(\xb5/\xfd"], shard_size=1, trailing=False)  # (zstd's signature: drawn once by chance)
def test_text_rows_match_a_plain_split(tmp_path_factory, lines, shard_size, trailing):
    path = tmp_path_factory.mktemp("t") / "in.txt"
    data = b"\n".join(lines) + (b"\n" if trailing else b"")
    path.write_bytes(data)
    # The reference: split on "\n" only (a final "\n" ends the last line), drop a
    # final "\r" and a leading BOM, decode or reject; blank is rejected.
    parts = data.split(b"\n")
    if parts[-1] == b"":
        parts.pop()
    if not parts:
        with pytest.raises(InputError, match="no rows"):
            _read_all(path, shard_size)
        return
    # A file that starts with a binary format's signature is refused whole (bzip2's
    # "BZh" only with its block magic after it: text may start "BZh").
    if data.startswith(SIGNATURES) or (data[:3] == b"BZh" and data[4:10] == b"1AY&SY"):
        with pytest.raises(InputError, match="not text"):
            _read_all(path, shard_size)
        return
    # A file that starts with a UTF-16 or UTF-32 byte order mark, or whose first 4096 bytes
    # have byte lanes of high bytes (UTF-32: the upper two of each 4 mostly NUL; UTF-16:
    # one of each 2 mostly below 0x20, with a NUL among them), is refused whole.
    head = data[:4096]

    def mostly(lane, test):
        return len(lane) > 0 and 4 * sum(1 for b in lane if test(b)) >= 3 * len(lane)

    marked = head.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff"))
    utf32 = any(mostly(head[i::4], lambda b: b == 0) and mostly(head[i + 1::4], lambda b: b == 0) for i in (0, 2))
    utf16 = any(0 in head[i::2] and mostly(head[i::2], lambda b: b < 32) for i in (0, 1))
    if marked or (len(head) >= 4 and (utf32 or utf16)):
        with pytest.raises(InputError, match="looks like UTF-(16|32)"):
            _read_all(path, shard_size)
        return
    shards, _, docs, rejected = _read_all(path, shard_size)
    expected_docs, expected_rejected = [], []
    for i, raw in enumerate(parts):
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        if i == 0 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            expected_rejected.append(i)
            continue
        (expected_docs.append((i, text)) if text.strip() else expected_rejected.append(i))
    assert docs == expected_docs
    assert [r.doc_id for r in rejected] == expected_rejected
    assert [r.line for r in rejected] == [i + 1 for i in expected_rejected]
    assert sum(s.n_rows for s in shards) == len(parts)
    assert all(s.n_rows <= shard_size for s in shards)


def test_text_rejections_say_why(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"\xef\xbb\xbfone\r\n\n   \nbad \xff byte\ntwo")
    _, identities, docs, rejected = _read_all(path, 2)
    assert docs == [(0, "one"), (4, "two")]
    assert [(r.doc_id, r.line, r.reason) for r in rejected] == [
        (1, 2, "empty line"), (2, 3, "blank line (whitespace only)"),
        (3, 4, "not UTF-8: byte 0xff at column 5"),
    ]
    assert identities[0]["rows"] == 5
    path.write_bytes(b"\xef\xbb\xbfa\xffb\n")  # the column counts from after the BOM
    assert _read_all(path, 2)[3][0].reason == "not UTF-8: byte 0xff at column 2"


def test_the_text_key_is_checked_on_the_first_json_object_not_the_first_line(tmp_path):
    """A JSONL file whose first lines are a JSON array and an empty line: the wrong --text-key is
    still one error, naming the first record that is an object (line 3), not every row rejected."""
    path = tmp_path / "in.jsonl"
    path.write_text('[1, 2]\n\n{"body": "a"}\n{"body": "b"}\n', encoding="utf8")
    with pytest.raises(InputError, match=r"the first JSON record \(line 3\) has no field 'text' \(--text-key\); "
                                         r"its fields: body$"):
        _read_all(path, 10)


def test_jsonl_empty_and_blank_lines_are_rejected_as_such(tmp_path):
    """An empty or whitespace-only JSONL line is no JSON to parse: rejected as empty or blank, not "not JSON"."""
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "a"}\n\n \t\n{"text": "b"}\n', encoding="utf8")
    _, _, docs, rejected = _read_all(path, 2)
    assert docs == [(0, "a"), (3, "b")]
    assert [(r.doc_id, r.line, r.reason) for r in rejected] == [
        (1, 2, "empty line"), (2, 3, "blank line (whitespace only)")]


def test_jsonl_rows_and_rejections(tmp_path):
    path = tmp_path / "in.jsonl"
    records = [{"text": "first doc", "id": 1}, "not an object", None, {"text": None}, {"body": "x"},
               {"text": 3}, {"text": "  "}, {"text": "last doc"}]
    lines = [json.dumps(r) if r is not None else "{broken" for r in records]
    # A field given twice: which value is the text cannot be told (json.loads keeps the last, silently).
    # Another field given twice, or the text field twice in a nested object, is not the text's concern.
    lines += ['{"text": "one", "text": "two"}', '{"text": "kept", "id": 1, "id": 2, "meta": {"text": 1, "text": 2}}']
    path.write_text("\n".join(lines) + "\n", encoding="utf8")
    _, _, docs, rejected = _read_all(path, 3)
    assert docs == [(0, "first doc"), (7, "last doc"), (9, "kept")]
    assert {r.doc_id: r.reason for r in rejected}[8] == "field 'text' given more than once"
    reasons = {r.doc_id: r.reason for r in rejected}
    assert reasons[1] == "not a JSON object: str"
    assert reasons[2].startswith("not JSON: ")
    assert reasons[3] == "field 'text' is null, not a string"
    assert reasons[4] == "no field 'text'"
    assert reasons[5] == "field 'text' is int, not a string"
    assert reasons[6] == "blank text (whitespace only)"


def test_a_json_record_nested_too_deeply_is_rejected_not_the_run_failed(tmp_path):
    """Valid JSON nested 1,000 deep makes Python's decoder raise RecursionError,
    which stopped the run (on the first line: the driver, while planning) naming
    neither the file nor the line. It is a bad row like any other."""
    deep = "[" * 5000 + "]" * 5000
    for first in (True, False):
        path = tmp_path / f"in-{first}.jsonl"
        lines = [deep, json.dumps({"text": "a doc"})] if first else [json.dumps({"text": "a doc"}), deep]
        path.write_text("\n".join(lines) + "\n", encoding="utf8")
        _, _, docs, rejected = _read_all(path, 10)
        assert docs == [(1 if first else 0, "a doc")]
        assert [(r.doc_id, r.reason) for r in rejected] == [(0 if first else 1,
                                                             "not JSON that can be read: nested too deeply")]


def test_text_that_is_not_unicode_is_rejected_in_every_format(tmp_path):
    """A lone surrogate (JSON's "\\ud800", valid JSON) or bytes that are not UTF-8 (in a
    line, or in a Parquet string value from a writer that does not check) are one
    rejected row each: they used to stop the whole run in spaCy's tokenizer or in pyarrow."""
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"text": "ok"}\n{"text": "lone \\ud800 surrogate"}\n{"text": "pair \\ud83d\\ude00 ok"}\n',
                     encoding="utf8")
    _, _, docs, rejected = _read_all(jsonl, 2)
    assert docs == [(0, "ok"), (2, "pair \U0001f600 ok")]
    assert [(r.doc_id, r.line, r.reason) for r in rejected] == [
        (1, 2, "field 'text' is not valid Unicode: lone surrogate U+D800 at character 6")]

    raw = [b"ok", b"lone \xed\xa0\x80 surrogate", b"bad \xff byte", None]
    parquet = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": pa.array(raw, pa.binary()).view(pa.string())}), parquet, row_group_size=3)
    _, _, docs, rejected = _read_all(parquet, 2)
    assert docs == [(0, "ok")]
    assert [(r.doc_id, r.row, r.reason) for r in rejected] == [
        (1, 1, "not UTF-8: byte 0xed at column 6"), (2, 2, "not UTF-8: byte 0xff at column 5"), (3, 3, "null text")]

    text = tmp_path / "in.txt"  # decoded strictly: UTF-8-encoded surrogates never become text
    text.write_bytes(b"ok\nlone \xed\xa0\x80 surrogate\n")
    _, _, docs, rejected = _read_all(text, 2)
    assert docs == [(0, "ok")] and [r.reason for r in rejected] == ["not UTF-8: byte 0xed at column 6"]


def test_jsonl_wrong_text_key_is_one_clear_error(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"body": "a", "id": 1}\n{"body": "b"}\n', encoding="utf8")
    with pytest.raises(InputError, match=r"no field 'text' \(--text-key\); its fields: body, id"):
        _read_all(path, 10)
    assert [t for _, t in _read_all(path, 10, text_key="body")[2]] == ["a", "b"]


def test_parquet_rows_across_row_groups(tmp_path):
    path = tmp_path / "in.parquet"
    texts = [f"doc number {i}" if i % 5 else None for i in range(23)]
    texts[7] = ""
    pq.write_table(pa.table({"id": list(range(23)), "body": texts}), path, row_group_size=4)
    shards, _, docs, rejected = _read_all(path, 6, text_key="body")
    reference = pq.read_table(path).column("body").to_pylist()
    assert docs == [(i, t) for i, t in enumerate(reference) if t]
    assert [(r.doc_id, r.row, r.reason) for r in rejected] == [
        (i, i, "null text" if t is None else "empty text") for i, t in enumerate(reference) if not t
    ]
    assert [s.n_rows for s in shards] == [6, 6, 6, 5]


def test_a_reader_of_many_shards_decodes_each_row_group_once(tmp_path, monkeypatch):
    """Parquet is read a row group at a time, and writers make them large: each
    shard within one decoded the whole group, so reading a file's shards grew
    with shards x group size. A reader that keeps its last group (an actor's
    `RowGroups`) decodes each group once for consecutive shards, and gives the
    rows a fresh read gives, also across files and across groups."""
    from spacy_ctxembed.distributed.sources import RowGroups

    paths = []
    for name, rows, group_size in (("a", 23, 23), ("b", 17, 5)):
        paths.append(tmp_path / f"{name}.parquet")
        pq.write_table(pa.table({"text": [f"{name} doc {i}" if i % 6 else None for i in range(rows)]}),
                       paths[-1], row_group_size=group_size)
    shards, _ = plan_shards(input_files([str(p) for p in paths]), 4, "text")
    fresh = [read_shard(shard) for shard in shards]
    decoded = []
    read_row_group = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group",
                        lambda self, i, **kw: decoded.append(i) or read_row_group(self, i, **kw))
    row_groups = RowGroups()
    kept = [read_shard(shard, row_groups=row_groups) for shard in shards]
    assert decoded == [0, 0, 1, 2, 3]  # a's one group, then b's four (its first two shards share group 0)
    assert [(docs, [(r.doc_id, r.row, r.reason) for r in rejected]) for docs, rejected in kept] == \
        [(docs, [(r.doc_id, r.row, r.reason) for r in rejected]) for docs, rejected in fresh]
    assert sum(len(docs) + len(rejected) for docs, rejected in kept) == 23 + 17


def test_parquet_column_errors(tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"body": ["a"], "n": [1]}), path)
    with pytest.raises(InputError, match=r"no column 'text' \(--text-key\); its columns: body, n"):
        _read_all(path, 10)
    with pytest.raises(InputError, match="column 'n' holds int64, not strings"):
        _read_all(path, 10, text_key="n")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        _read_all(broken, 10)


def test_a_parquet_file_with_two_text_columns_is_refused_naming_it(tmp_path):
    """pyarrow writes a file with two columns of one name: it failed planning with
    KeyError "Column text does not exist in schema", naming no file."""
    path = tmp_path / "twice.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"])], names=["text", "text"]), path)
    with pytest.raises(InputError, match=rf"^input {re.escape(str(path))}: 2 columns named 'text' \(--text-key\)"):
        _read_all(path, 10)


def test_doc_ids_run_on_across_files_of_a_directory(tmp_path):
    (tmp_path / "b.txt").write_text("three\nfour\n", encoding="utf8")
    (tmp_path / "a.txt").write_text("one\ntwo\n", encoding="utf8")
    (tmp_path / ".hidden.txt").write_text("never\n", encoding="utf8")
    _, identities, docs, _ = _read_all(tmp_path, 10)
    assert docs == [(0, "one"), (1, "two"), (2, "three"), (3, "four")]
    assert [os.path.basename(i["path"]) for i in identities] == ["a.txt", "b.txt"]


def test_a_subdirectory_is_an_error_not_skipped(tmp_path):
    (tmp_path / "a.txt").write_text("one\n", encoding="utf8")
    (tmp_path / "part=1").mkdir()
    with pytest.raises(InputError, match=r"has subdirectories \(part=1\)"):
        input_files([str(tmp_path)])


def test_a_directory_of_no_files_is_an_input_error(tmp_path):
    """A directory whose only entries are hidden files or markers (skipped) has
    nothing to embed: an error naming it, not an empty run."""
    quiet = tmp_path / "quiet"
    quiet.mkdir()
    (quiet / ".hidden.txt").write_text("one\n", encoding="utf8")
    (quiet / "_SUCCESS").write_bytes(b"")
    with pytest.raises(InputError, match=rf"^input {re.escape(str(quiet))}: the directory has no files$"):
        input_files([str(quiet)])


def test_input_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="no such file or directory"):
        input_files([str(tmp_path / "missing.txt")])
    (tmp_path / "x.csv").write_text("a\n", encoding="utf8")
    with pytest.raises(InputError, match="cannot tell its format"):
        input_files([str(tmp_path / "x.csv")])
    assert input_files([str(tmp_path / "x.csv")], "text")[0][1] == "text"
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="no rows"):
        plan_shards(input_files([str(empty)]), 10)
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.txt"
        locked.write_text("a\n", encoding="utf8")
        locked.chmod(0)
        with pytest.raises(InputError, match="permission denied"):
            input_files([str(locked)])


def test_an_input_whose_file_name_is_not_utf8_is_refused_naming_it(tmp_path, in_process):
    """A file name that is not UTF-8 (in a directory given) failed the run once OUTDIR was
    made, writing the manifest: "UnicodeEncodeError: 'utf-8' codec can't encode character
    '\\udcff'", no file named, and OUTDIR left holding shards/ without a manifest."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / os.fsdecode(b"caf\xe9.txt")).write_bytes(b"One doc.\n")
    with pytest.raises(InputError, match=r"^input '.*caf\\udce9\.txt': the file name is not UTF-8"):
        embed_corpus(inputs, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_pipe_given_or_found_in_a_directory_is_refused_by_name(tmp_path):
    """A run reads each input twice (planning, then its shards by offset): a pipe's
    second read would be empty, or block with no writer."""
    folder = tmp_path / "in"
    folder.mkdir()
    pipe = folder / "in.txt"
    os.mkfifo(pipe)
    with pytest.raises(InputError, match=r"in\.txt is not a regular file \(a pipe, socket or device\)"):
        input_files([str(pipe)])
    with pytest.raises(InputError, match=r"in\.txt is not a regular file"):
        input_files([str(folder)])
    pipe.unlink()
    (tmp_path / "elsewhere.txt").write_text("one\n", encoding="utf8")
    (folder / "b.txt").symlink_to(tmp_path / "elsewhere.txt")  # a link to a file is read as the file
    assert [p.name for p, _ in input_files([str(folder)])] == ["elsewhere.txt"]
    (folder / "c.txt").symlink_to(tmp_path / "gone.txt")  # (a link to nothing: not "a pipe")
    with pytest.raises(InputError, match=r"c\.txt: no such file \(a link to a file that is not there\?\)"):
        input_files([str(folder)])


def test_a_file_changed_after_planning_is_refused(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("one\ntwo\n", encoding="utf8")
    shards, _ = plan_shards(input_files([str(path)]), 10)
    path.write_text("one\ntwo\nthree\n", encoding="utf8")
    with pytest.raises(InputError, match="changed since the run was planned"):
        read_shard(shards[0])


def test_a_file_deleted_after_planning_is_refused_naming_it(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("one\ntwo\n", encoding="utf8")
    shards, _ = plan_shards(input_files([str(path)]), 10)
    path.unlink()
    with pytest.raises(InputError) as caught:
        read_shard(shards[0])
    assert str(caught.value) == f"input {path}: cannot be read (No such file or directory)"


def test_a_parquet_file_edited_in_place_is_another_input(tmp_path):
    """One letter changed, without statistics or compression: every size and
    offset in the footer stays as it was (the footer was the identity once,
    and a resumed run kept the old rows' shards). The bytes tell them apart."""
    path = tmp_path / "in.parquet"
    identities = []
    for text in ("comme a", "comme z"):
        pq.write_table(pa.table({"text": ["first row", text, "last row"]}), path,
                       compression="NONE", write_statistics=False)
        identities.append(plan_shards(input_files([str(path)]), 2)[1][0])
        footers = pq.ParquetFile(path).metadata.to_dict()
        identities[-1]["footer"] = footers
    before, after = identities
    assert before.pop("footer") == after.pop("footer")  # (what made the case)
    assert before != after
    assert before["size"] == after["size"] and before["sha256"] != after["sha256"]
    assert after["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


# Shard files -----------------------------------------------------------------


def _docs(texts):
    nlp = spacy.blank("en")
    return [nlp(t) for t in texts]


def _table_for(docs, doc_ids, seed=0, dtype="float32"):
    rng = numpy.random.default_rng(seed)
    vectors = [rng.normal(size=(len(d), 5)).astype(numpy.float32) for d in docs]
    table = build_table(doc_ids, [d.text for d in docs], [[t.text for t in d] for d in docs],
                        [numpy.array([t.idx for t in d], numpy.int32) for d in docs], vectors, dtype=dtype)
    return table, vectors


def test_rows_rebuild_docs_with_their_vectors(tmp_path):
    docs = _docs(["I ran  to the park.\n", " Leading space", "Tabs\tand\u00a0odd   gaps!"])
    table, vectors = _table_for(docs, [4, 5, 9])
    pq.write_table(table, tmp_path / "s.parquet")
    table = pq.read_table(tmp_path / "s.parquet")
    # the columns, in order, with the types issue 12 names
    assert [(field.name, field.type) for field in table.schema] == [
        ("doc_id", pa.int64()), ("text", pa.string()), ("tokens", pa.list_(pa.string())),
        ("idx", pa.list_(pa.int32())), ("vectors", pa.list_(pa.list_(pa.float32())))]
    rebuilt = list(docs_from_table(table, spacy.blank("en").vocab))
    for doc, new, rows, doc_id in zip(docs, rebuilt, vectors, [4, 5, 9]):
        assert new.text == doc.text and [t.text for t in new] == [t.text for t in doc]
        assert new.user_data["doc_id"] == doc_id
        numpy.testing.assert_array_equal(numpy.stack([t.vector for t in new]), rows)
        numpy.testing.assert_allclose(new[0:2].vector, rows[0:2].mean(axis=0), rtol=1e-6)
        assert new[0].has_vector
    # pandas rows work the same way
    again = list(docs_from_table(table.to_pandas(), spacy.blank("en").vocab))
    numpy.testing.assert_array_equal(again[2]._.ctx_vectors, vectors[2])


def test_rows_rebuild_docs_that_say_what_made_their_vectors(tmp_path):
    """The docs carry the signature given (`read_docs` gives each shard's, from
    its metadata), so that a listener or `.similarity()` checks them as any
    component's outputs: they said nothing, and a listening component read
    another model's as its features. Never the table's own metadata: pyarrow
    keeps the first file's where it reads several (two runs' shards), and
    every row would say the first run's model made it (found by a review helper)."""
    docs = _docs(["a b c", "d e"])
    table, _ = _table_for(docs, [0, 1])
    meta = {"component": "ctxembed", "signature": "encoder=x; weights=0123"}
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode("utf8")})
    vocab = spacy.blank("en").vocab
    given = list(docs_from_table(table, vocab, signature="encoder=y; weights=4567"))
    assert [stored_signature(doc, "ctxembed") for doc in given] == ["encoder=y; weights=4567"] * 2
    assert [stored_signature(doc, "ctxembed") for doc in docs_from_table(table, vocab)] == [None, None]


def test_float16_rows(tmp_path):
    docs = _docs(["a b c"])
    table, vectors = _table_for(docs, [0], dtype="float16")
    assert table.schema.field("vectors").type == pa.list_(pa.list_(pa.float16()))
    pq.write_table(table, tmp_path / "h.parquet")
    doc = next(docs_from_table(pq.read_table(tmp_path / "h.parquet"), spacy.blank("en").vocab))
    numpy.testing.assert_array_equal(doc._.ctx_vectors, vectors[0].astype(numpy.float16).astype(numpy.float32))


def test_float16_refuses_values_it_would_store_as_inf():
    docs = _docs(["a b c", "d e"])
    rng = numpy.random.default_rng(1)
    vectors = [rng.normal(size=(3, 5)).astype(numpy.float32), rng.normal(size=(2, 5)).astype(numpy.float32)]
    args = ([7, 8], [d.text for d in docs], [[t.text for t in d] for d in docs],
            [numpy.array([t.idx for t in d], numpy.int32) for d in docs])
    # 65504 is float16's largest value; up to 65519.99 rounds down to it, 65520 rounds to inf.
    vectors[1][1, 3] = -65519.0
    table = build_table(*args, vectors, dtype="float16")
    assert table.column("vectors").to_pylist()[1][1][3] == -65504.0
    vectors[1][0, 2] = 70000.0
    with pytest.raises(ValueError, match=r"--float16: doc 8 has a vector value of 70000.*stored as inf \(1 such"):
        build_table(*args, vectors, dtype="float16")
    assert build_table(*args, vectors).column("vectors").to_pylist()[1][0][2] == 70000.0  # float32 keeps it


def test_a_shard_too_big_for_parquet_lists_is_refused_naming_the_setting():
    n, width = 2**16, 2**15  # 2**31 values: one past what int32 list offsets can address
    huge = numpy.broadcast_to(numpy.zeros(1, numpy.float32), (n, width))  # no memory behind it
    with pytest.raises(ValueError, match=r"more values than a Parquet list can hold.*--shard-size"):
        build_table([0], ["x"], [["x"] * n], [numpy.zeros(n, numpy.int32)], [huge])


def test_rows_whose_tokens_do_not_rebuild_the_text_are_refused():
    table = pa.table({"doc_id": [0], "text": ["a b"], "tokens": [["a", "c"]], "idx": [[0, 2]],
                      "vectors": [[[1.0], [2.0]]]})
    with pytest.raises(ValueError, match="doc 0: its tokens and offsets do not rebuild its text"):
        list(docs_from_table(table, spacy.blank("en").vocab))


def test_a_text_that_ends_in_one_space_is_rebuilt_with_it():
    """spaCy keeps a single trailing space as the last token's whitespace, not as a token:
    the rebuilt doc must end in it too."""
    docs = _docs(["A doc that ends in a space ", "Two  spaces  "])
    assert docs[0][-1].whitespace_ == " "
    table, _ = _table_for(docs, [0, 1])
    rebuilt = list(docs_from_table(table, spacy.blank("en").vocab))
    assert [doc.text for doc in rebuilt] == [doc.text for doc in docs]

@pytest.mark.parametrize("tokens, idx, text", [
    (["a", "b"], [0, 2], "ab"),  # the text rebuilt is right, the offsets are not its tokens'
    (["a", "b"], [0, 1], "abc"),  # the offsets are right, the text has more than the tokens
    (["a", "b"], [0], "ab"),  # fewer offsets than tokens
])
def test_rows_whose_offsets_do_not_rebuild_the_text_are_refused(tokens, idx, text):
    table = pa.table({"doc_id": [3], "text": [text], "tokens": [tokens], "idx": [idx],
                      "vectors": [[[1.0]] * len(tokens)]})
    with pytest.raises(ValueError, match="^doc 3: "):
        list(docs_from_table(table, spacy.blank("en").vocab))

def _plan_and_write(tmp_path, lines, shard_size):
    path = tmp_path / "in.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf8")
    shards, _ = plan_shards(input_files([str(path)]), shard_size)
    out = tmp_path / "shards"
    out.mkdir()
    for shard in shards:
        rows, rejected = read_shard(shard)
        docs = _docs([t for _, t in rows])
        table, _ = _table_for(docs, [i for i, _ in rows], seed=shard.index)
        write_shard(out, shard, table, rejected, {"component": "x"})
    return shards, out


def test_a_text_beyond_max_length_is_rejected_with_its_reason(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("short\n" + "x" * 11 + "\nten chars!\n", encoding="utf8")
    (shard,), _ = plan_shards(input_files([str(path)]), 10)
    rows, rejected = read_shard(shard, max_length=10)
    assert rows == [(0, "short"), (2, "ten chars!")]
    assert [r.to_dict() for r in rejected] == [{"doc_id": 1, "source": str(path), "line": 2, "row": None,
                                                "reason": "11 characters, more than the pipeline's nlp.max_length "
                                                          "(10)"}]


def test_the_actor_rejects_a_text_beyond_its_pipelines_max_length(tmp_path, tiny_bert_dir):
    from spacy_ctxembed.distributed.actor import ShardEmbedder

    from .conftest import make_nlp

    make_nlp(tiny_bert_dir).to_disk(tmp_path / "nlp")
    path = tmp_path / "in.txt"
    path.write_text("A short line.\n" + "word " * 10 + "\nAnother.\n", encoding="utf8")
    (shard,), _ = plan_shards(input_files([str(path)]), 10)
    (tmp_path / "shards").mkdir()
    embedder = ShardEmbedder(str(tmp_path / "shards"), str(tmp_path / "nlp"), None, False, 8, "float32", 1)
    embedder.nlp.max_length = 40
    summary = embedder.embed_shard(shard)
    assert (summary["docs"], summary["rejected"]) == (2, 1)
    n_docs, rejected = check_complete(tmp_path / "shards", [shard])
    assert n_docs == 2 and [(r["doc_id"], r["line"]) for r in rejected] == [(1, 2)]
    assert rejected[0]["reason"] == "50 characters, more than the pipeline's nlp.max_length (40)"


def test_an_outdir_inside_the_model_folder_is_not_a_change_of_the_model(tmp_path, tiny_bert_dir):
    """`embed --ray -m . -o vectors`: the run's own files (the lock, the shards) in the
    model's folder were read as a change of the model, and every actor refused it."""
    from spacy_ctxembed.distributed.actor import ShardEmbedder
    from spacy_ctxembed.fileio import model_identity

    from .conftest import make_nlp

    model = tmp_path / "nlp"
    make_nlp(tiny_bert_dir).to_disk(model)
    recorded = model_identity(str(model))  # (the driver: before OUTDIR exists)
    (model / "vectors" / "shards").mkdir(parents=True)
    (model / "vectors" / ".lock").write_text("")
    (model / "vectors" / "manifest.json").write_text(json.dumps({"identity": {}, "shards": [], "complete": False}))
    path = tmp_path / "in.txt"
    path.write_text("A doc.\n", encoding="utf8")
    (shard,), _ = plan_shards(input_files([str(path)]), 10)
    args = (str(model / "vectors" / "shards"), str(model), None, False, 8, "float32", 1)
    assert ShardEmbedder(*args, model_identity=recorded).embed_shard(shard)["docs"] == 1
    # The model's own files still count, and so does a folder that only looks like a run's.
    assert model_identity(str(model)) == recorded
    (model / "notes").mkdir()
    (model / "notes" / "manifest.json").write_text(json.dumps({"shards": []}))
    assert model_identity(str(model)) != recorded


def test_an_actor_refuses_a_model_that_changed_after_the_run_started(tmp_path, tiny_bert_dir):
    """Actors load the model at their own start, later than the driver checksummed
    it (one restarted after a crash, many shards on): a folder replaced meanwhile
    gave one complete output of two models' vectors. What an actor loads must be
    what the run recorded."""
    from spacy_ctxembed.distributed.actor import ModelChanged, ShardEmbedder
    from spacy_ctxembed.fileio import model_identity

    from .conftest import make_nlp

    make_nlp(tiny_bert_dir).to_disk(tmp_path / "nlp")
    recorded = model_identity(str(tmp_path / "nlp"))
    (tmp_path / "shards").mkdir()
    args = (str(tmp_path / "shards"), str(tmp_path / "nlp"), None, False, 8, "float32", 1)
    path = tmp_path / "in.txt"
    path.write_text("A doc.\n", encoding="utf8")
    (shard,), _ = plan_shards(input_files([str(path)]), 10)
    assert ShardEmbedder(*args, model_identity=recorded).embed_shard(shard)["docs"] == 1  # the same files
    make_nlp(tiny_bert_dir, pooling="first").to_disk(tmp_path / "nlp")  # replaced, as model-best is saved
    # (At its first shard, not when the actor is made: Ray reports that as "the actor died", without the error.)
    embedder = ShardEmbedder(*args, model_identity=recorded)
    with pytest.raises(ModelChanged, match=r"^embed_corpus: model = '.*nlp': its files changed after this run "
                                           r"started .* so its shards would mix two models' vectors"):
        embedder.embed_shard(shard)


def test_a_shard_whose_actor_died_each_time_is_named(tmp_path, tiny_bert_dir, monkeypatch):
    """A shard that kills its actor every time (out of memory on one huge doc)
    failed the run after Ray's retries naming only an actor id. Each start of a
    shard is counted in a hidden file, removed once the shard is committed; a
    shard started more than once and never committed is the one to name."""
    from spacy_ctxembed.distributed.actor import ShardEmbedder, attempts_name
    from spacy_ctxembed.distributed.run import failed_shards

    from .conftest import make_nlp

    make_nlp(tiny_bert_dir).to_disk(tmp_path / "nlp")
    path = tmp_path / "in.txt"
    path.write_text("".join(f"Doc {i}.\n" for i in range(6)), encoding="utf8")
    shards, _ = plan_shards(input_files([str(path)]), 3)
    out = tmp_path / "shards"
    out.mkdir()
    embedder = ShardEmbedder(str(out), str(tmp_path / "nlp"), None, False, 8, "float32", 1)
    embedder.embed_shard(shards[0])
    assert not (out / attempts_name(0)).exists()  # committed: no count left
    import spacy_ctxembed.distributed.actor as actor

    def killed(*args, **kwargs):
        raise SystemExit("killed")  # (as the actor's death: nothing after this runs)

    monkeypatch.setattr(actor, "write_shard", killed)
    for _ in range(3):  # the actor killed inside shard 1, three times (Ray restarts it and retries)
        with pytest.raises(SystemExit):
            embedder.embed_shard(shards[1])
    assert failed_shards(out, shards) == [f"shard 1 (doc ids 3-5, {path} from line 4: started 3 times)"]


def test_check_complete_accepts_every_row_once(tmp_path):
    shards, out = _plan_and_write(tmp_path, ["a", "", "b", "c", "  ", "d", "e"], 3)
    n_docs, rejected = check_complete(out, shards)
    assert n_docs == 5 and [r["doc_id"] for r in rejected] == [1, 4]
    assert set(committed(out, shards)) == {0, 1, 2}
    assert not list(out.glob(".*"))  # no temporary files left


def _tamper(out, index, change):
    """Rewrite shard `index`'s file with `change(table)`, keeping its metadata (what a buggy writer would do)."""
    path = out / shard_name(index)
    table = pq.read_table(path)
    pq.write_table(change(table).replace_schema_metadata(table.schema.metadata), path)
    return path


def test_check_complete_finds_a_lost_doc(tmp_path):
    shards, out = _plan_and_write(tmp_path, ["a", "b", "c", "d"], 2)
    _tamper(out, 1, lambda table: table.slice(0, 1))
    with pytest.raises(ShardMismatch, match=r"1 missing \(doc ids \[3\]\), 0 more than once"):
        check_complete(out, shards)


def test_check_complete_finds_a_duplicated_doc(tmp_path):
    shards, out = _plan_and_write(tmp_path, ["a", "b", "c", "d"], 2)
    _tamper(out, 0, lambda table: pa.concat_tables([table, table.slice(1, 1)]))
    with pytest.raises(ShardMismatch, match=r"0 missing \(doc ids \[\]\), 1 more than once \(doc ids \[1\]\)"):
        check_complete(out, shards)


def test_check_complete_finds_a_doc_in_the_wrong_shard_and_a_missing_shard(tmp_path):
    shards, out = _plan_and_write(tmp_path, ["a", "b", "c", "d"], 2)
    path = _tamper(out, 0, lambda table: table.set_column(0, "doc_id", pa.array([0, 2], pa.int64())))
    with pytest.raises(ShardMismatch, match=r"shard 0 holds doc ids outside its rows: \[2\]"):
        check_complete(out, shards)
    path.unlink()
    assert set(committed(out, shards)) == {1}
    with pytest.raises(ShardMismatch, match="shard 0 .* is missing"):
        check_complete(out, shards)


def test_an_unreadable_shard_file_is_not_committed(tmp_path):
    shards, out = _plan_and_write(tmp_path, ["a", "b", "c", "d"], 2)
    (out / shard_name(1)).write_bytes(b"truncated")
    assert set(committed(out, shards)) == {0}


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
@pytest.mark.parametrize("encoding,named", [("utf-16", "UTF-16"), ("utf-16-le", "UTF-16LE")])
def test_a_utf16_input_is_refused_when_the_run_is_planned(tmp_path, suffix, encoding, named):
    """`embed --ray` embedded a UTF-16 file's lines as their bytes (NULs between
    the letters) and rejected only the line with the byte order mark: the
    whole file is refused when the run is planned. UTF-8 with NUL characters
    in its lines (rare, but text) is still read."""
    path = tmp_path / f"u16{suffix}"
    lines = ['{"text": "Pretty good."}', '{"text": "Second."}'] if suffix == ".jsonl" else ["Pretty good.", "Second."]
    path.write_bytes("\n".join(lines + [""]).encode(encoding))
    with pytest.raises(InputError, match=rf"^input {re.escape(str(path))} looks like {named}, not UTF-8 .*"
                                         rf"iconv -f {named} -t UTF-8$"):
        plan_shards(input_files([str(path)]), 10)
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"A line with a NUL \x00 in it, and more text after it.\n")
    (shard,), _ = plan_shards(input_files([str(nul)]), 10)
    rows, rejected = read_shard(shard)
    assert [text for _, text in rows] == ["A line with a NUL \x00 in it, and more text after it."] and not rejected


def test_float16_names_the_doc_whose_first_value_overflows():
    # The first value of a doc lies at the previous doc's end in the flat array:
    # the doc named must be the one it belongs to, not the one before.
    docs = _docs(["a b c", "d e"])
    vectors = [numpy.zeros((3, 5), numpy.float32), numpy.zeros((2, 5), numpy.float32)]
    vectors[1][0, 0] = 70000.0
    args = ([7, 8], [d.text for d in docs], [[t.text for t in d] for d in docs],
            [numpy.array([t.idx for t in d], numpy.int32) for d in docs])
    with pytest.raises(ValueError, match=r"--float16: doc 8 has a vector value of 70000"):
        build_table(*args, vectors, dtype="float16")


def test_a_slice_of_a_table_rebuilds_its_own_rows():
    docs = _docs(["a b c", "d e", "f g h i"])
    table, vectors = _table_for(docs, [0, 1, 2])
    vocab = spacy.blank("en").vocab
    for part, ids in ((table.slice(1, 2), [1, 2]), (table.slice(2, 1).to_batches()[0], [2])):
        rebuilt = list(docs_from_table(part, vocab))
        assert [doc.user_data["doc_id"] for doc in rebuilt] == ids
        for doc, doc_id in zip(rebuilt, ids):
            assert doc.text == docs[doc_id].text
            numpy.testing.assert_array_equal(doc._.ctx_vectors, vectors[doc_id])


def test_a_shard_file_of_another_plan_with_the_same_first_row_is_not_committed(tmp_path):
    # (A run planned with another shard size: shard 0 starts at row 0 in both plans.)
    shards, out = _plan_and_write(tmp_path, ["a", "b", "c", "d"], 2)
    assert set(committed(out, shards)) == {0, 1}
    replanned, _ = plan_shards(input_files([str(tmp_path / "in.txt")]), 3)
    assert replanned[0].first_id == shards[0].first_id and replanned[0].n_rows != shards[0].n_rows
    assert committed(out, replanned) == {}


def test_a_shard_of_a_run_with_another_model_and_the_same_settings_is_not_this_runs(tmp_path):
    """The run digest each shard records covers the model's identity: an actor
    of a run started over (--overwrite) with another model, the input and
    every other setting the same, that outlived its driver and committed a
    shard afterwards, had it taken for this run's (another model's vectors
    among this one's, silently)."""
    path = tmp_path / "in.txt"
    path.write_text("a\nb\nc\nd\n", encoding="utf8")
    shards, _ = plan_shards(input_files([str(path)]), 2)
    out = tmp_path / "shards"
    out.mkdir()
    identity = {"inputs": [{"path": str(path)}], "text_key": "text", "shard_size": 2, "dtype": "float32",
                "model": {"name": "/models/a", "sha256": "a" * 64, "ctxembed": "1"}, "config_sha256": None}
    other = {**identity, "model": {"name": "/models/a", "sha256": "b" * 64, "ctxembed": "1"}}
    for shard in shards:
        rows, rejected = read_shard(shard)
        table, _ = _table_for(_docs([t for _, t in rows]), [i for i, _ in rows], seed=shard.index)
        write_shard(out, shard, table, rejected, {"component": "x", "run": run_digest(identity)})
    assert set(committed(out, shards, run=run_digest(identity))) == {0, 1}
    assert check_complete(out, shards, run=run_digest(identity))[0] == 4
    assert committed(out, shards, run=run_digest(other)) == {}
    with pytest.raises(ShardMismatch, match=r"shard 0 \(part-000000\.parquet\) was written by another run"):
        check_complete(out, shards, run=run_digest(other))


def test_shards_written_before_run_digests_existed_are_taken_as_the_runs(tmp_path):
    """A shard file whose metadata records no run digest (written by an earlier
    version) says nothing about its run: a run that has a digest keeps it,
    calls itself complete with it and reads it back, rather than embed it anew."""
    shards, out = _plan_and_write(tmp_path, ["a", "b c", "d"], 2)  # (metadata without "run")
    identity = {"inputs": [{"path": str(tmp_path / "in.txt")}], "shard_size": 2, "dtype": "float32"}
    digest = run_digest(identity)
    assert set(committed(out, shards, run=digest)) == {0, 1}
    assert check_complete(out, shards, run=digest)[0] == 3
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"complete": True, "identity": identity, "shards": [{"index": s.index} for s in shards]}), encoding="utf8")
    assert [doc.text for doc in read_docs(tmp_path, spacy.blank("en").vocab)] == ["a", "b c", "d"]


def test_without_a_run_digest_to_check_shards_are_taken_whatever_run_they_name(tmp_path):
    """`run` None (a manifest without an identity object, as earlier versions wrote)
    checks nothing: shards that record a digest are read, not refused as another run's."""
    path = tmp_path / "in.txt"
    path.write_text("a\nb c\nd\n", encoding="utf8")
    shards, _ = plan_shards(input_files([str(path)]), 2)
    out = tmp_path / "shards"
    out.mkdir()
    for shard in shards:
        rows, rejected = read_shard(shard)
        table, _ = _table_for(_docs([t for _, t in rows]), [i for i, _ in rows], seed=shard.index)
        write_shard(out, shard, table, rejected, {"component": "x", "run": "0123456789abcdef"})
    assert set(committed(out, shards)) == {0, 1}
    assert check_complete(out, shards)[0] == 3
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"complete": True, "shards": [{"index": s.index} for s in shards]}), encoding="utf8")
    assert [doc.text for doc in read_docs(tmp_path, spacy.blank("en").vocab)] == ["a", "b c", "d"]

def test_a_table_of_vectors_of_different_widths_is_refused_not_read_as_other_rows(tmp_path):
    """A table (a DataFrame put together by hand) whose tokens' vectors are 2,
    1 and 3 wide: 6 values read as 3 rows of 2 fit, and the doc came back
    with its tokens given each other's values, silently."""
    vectors = [[[1.0, 2.0], [3.0], [4.0, 5.0, 6.0]]]
    table = pa.table({"doc_id": [0], "text": ["a b c"], "tokens": [["a", "b", "c"]], "idx": [[0, 2, 4]],
                      "vectors": vectors})
    with pytest.raises(ValueError, match=r"vectors of different widths in one table: \[1, 2, 3\]"):
        list(docs_from_table(table, spacy.blank("en").vocab))
    same = pa.table({"doc_id": [0], "text": ["a b c"], "tokens": [["a", "b", "c"]], "idx": [[0, 2, 4]],
                     "vectors": [[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]]})
    doc = next(docs_from_table(same, spacy.blank("en").vocab))
    numpy.testing.assert_array_equal(doc._.ctx_vectors, [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])


def test_float16_keeps_an_inf_the_vectors_already_hold():
    """Only values float16 would turn into inf are refused: an inf already in
    the float32 vectors stays inf, as with float32 (the refusal named it as a
    value "beyond float16's range")."""
    docs = _docs(["a b c", "d e"])
    vectors = [numpy.zeros((3, 5), numpy.float32), numpy.zeros((2, 5), numpy.float32)]
    vectors[1][0, 2] = numpy.inf
    args = ([7, 8], [d.text for d in docs], [[t.text for t in d] for d in docs],
            [numpy.array([t.idx for t in d], numpy.int32) for d in docs])
    assert build_table(*args, vectors, dtype="float16").column("vectors").to_pylist()[1][0][2] == numpy.inf


def test_a_doc_whose_vectors_are_of_another_width_is_refused():
    docs = _docs(["a b c", "d e"])
    vectors = [numpy.zeros((3, 5), numpy.float32), numpy.zeros((2, 4), numpy.float32)]
    args = ([0, 1], [d.text for d in docs], [[t.text for t in d] for d in docs],
            [numpy.array([t.idx for t in d], numpy.int32) for d in docs])
    with pytest.raises(ValueError, match=r"doc 1: vectors of shape \(2, 4\) for 2 tokens of width 5"):
        build_table(*args, vectors)


def test_only_the_files_byte_order_mark_is_dropped_whatever_shard_a_line_starts(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"\xef\xbb\xbfa\n\xef\xbb\xbfb\nc\n")
    for shard_size in (1, 2, 3):
        shards, _ = plan_shards(input_files([str(path)]), shard_size)
        docs = [doc for shard in shards for doc in read_shard(shard)[0]]
        assert docs == [(0, "a"), (1, "\ufeffb"), (2, "c")], shard_size


def test_a_directorys_hidden_files_and_markers_are_not_input(tmp_path):
    (tmp_path / "b.txt").write_text("two\n", encoding="utf8")
    (tmp_path / "a.txt").write_text("one\n", encoding="utf8")
    (tmp_path / "_SUCCESS").write_bytes(b"")  # Spark's marker
    (tmp_path / ".a.txt.crc").write_bytes(b"\x00")
    assert input_files([str(tmp_path)]) == [((tmp_path / "a.txt").resolve(), "text"),
                                            ((tmp_path / "b.txt").resolve(), "text")]


@pytest.fixture()
def in_process(monkeypatch):
    """embed_corpus with its Ray layer replaced by ShardEmbedder.embed_shard called in order."""
    import spacy_ctxembed.distributed.run as run
    from spacy_ctxembed.distributed.actor import ShardEmbedder

    calls = []

    def fake_run_ray(pending, shard_dir, model, config, batch_size, actors, cpus, gpus, dtype, address,
                     progress, on_shard, model_id=None, run=None):
        calls.append([s.index for s in pending])
        embedder = ShardEmbedder(str(shard_dir), model, config, False, batch_size, dtype, 1, model_identity=model_id,
                                 run=run)
        for shard in pending:
            summary = embedder.embed_shard(shard)
            if on_shard is not None:
                on_shard(summary)

    monkeypatch.setattr(run, "_run_ray", fake_run_ray)
    return calls


@pytest.fixture()
def small_run(tmp_path, tiny_bert_dir):
    model = tmp_path / "nlp"
    make_nlp(tiny_bert_dir).to_disk(model)
    path = tmp_path / "in.txt"
    # 5 rows: 3 docs, an empty line (doc id 1) and a blank one (doc id 3); shards of 2 rows: 3 shards.
    path.write_text("One doc.\n\nTwo docs here.\n  \nThree.\n", encoding="utf8")
    return path, model


def test_the_manifest_counts_every_row_docs_and_rejected(tmp_path, small_run, in_process):
    """A complete run's manifest: docs + rejected = rows of the input; no shard resumed on a first run."""
    path, model = small_run
    manifest = embed_corpus(path, tmp_path / "out", model=str(model), shard_size=2, progress=False)
    assert (manifest["complete"], manifest["docs"], manifest["rejected"], manifest["rows"]) == (True, 3, 2, 5)
    assert manifest["resumed_shards"] == 0
    recorded = json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf8"))
    assert (recorded["docs"], recorded["rejected"], recorded["rows"]) == (3, 2, 5)
    rejected = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    assert [(r["doc_id"], r["line"], r["reason"]) for r in rejected] == [
        (1, 2, "empty line"), (3, 4, "blank line (whitespace only)")]


def test_overwrite_of_a_complete_run_embeds_it_again(tmp_path, small_run, in_process):
    """overwrite=True on a complete output of the same run starts over: every shard is embedded
    again, none is kept, and the result is not reported as already complete."""
    path, model = small_run
    out = tmp_path / "out"
    embed_corpus(path, out, model=str(model), shard_size=2, progress=False)
    mtime = (out / "shards" / shard_name(0)).stat().st_mtime_ns
    redone = []
    again = embed_corpus(path, out, model=str(model), shard_size=2, progress=False, overwrite=True,
                         on_shard=redone.append)
    assert sorted(s["shard"] for s in redone) == [0, 1, 2]
    assert not again.get("already_complete") and again["resumed_shards"] == 0 and again["docs"] == 3
    assert (out / "shards" / shard_name(0)).stat().st_mtime_ns != mtime


def test_a_complete_run_with_a_shard_file_deleted_redoes_that_shard(tmp_path, small_run, in_process):
    """A manifest that says complete does not make a rerun a no-op when a shard file is gone:
    the missing shard is embedded again, the others are kept."""
    path, model = small_run
    out = tmp_path / "out"
    embed_corpus(path, out, model=str(model), shard_size=2, progress=False)
    (out / "shards" / shard_name(1)).unlink()
    redone = []
    again = embed_corpus(path, out, model=str(model), shard_size=2, progress=False, on_shard=redone.append)
    assert [s["shard"] for s in redone] == [1]
    assert not again.get("already_complete") and again["resumed_shards"] == 2
    assert pq.read_table(out / "shards").column("doc_id").to_pylist() == [0, 2, 4]


def test_a_shard_file_edited_since_it_was_committed_is_embedded_anew_and_never_read(tmp_path, small_run, in_process):
    """Shard files a user changed after the run: one with its doc dropped (pyarrow
    keeps the metadata), one replaced by a copy of another shard. A rerun called the
    run already complete, the doc lost without a word, and `read_docs` gave the
    copied docs twice and the dropped one not at all. Now `read_docs` refuses
    them, naming the file, and a rerun embeds them anew."""
    path, model = small_run
    out = tmp_path / "out"
    embed_corpus(path, out, model=str(model), shard_size=2, progress=False)
    vocab = spacy.blank("en").vocab
    shards = out / "shards"
    shutil.copy(shards / shard_name(2), tmp_path / "part-2.parquet")
    shutil.copy(shards / shard_name(0), shards / shard_name(2))
    with pytest.raises(ValueError, match=r"shard 2 \(part-000002\.parquet\) is missing, unreadable, or not the "
                                         r"file the run wrote"):
        list(read_docs(out, vocab))
    shutil.copy(tmp_path / "part-2.parquet", shards / shard_name(2))
    _tamper(shards, 1, lambda table: table.slice(0, 0))  # (its one doc, doc id 2, dropped)
    with pytest.raises(ValueError, match=r"shard 1 \(part-000001\.parquet\) is missing, unreadable, or not the "
                                         r"file the run wrote"):
        list(read_docs(out, vocab))
    shutil.copy(shards / shard_name(0), shards / shard_name(2))
    redone = []
    again = embed_corpus(path, out, model=str(model), shard_size=2, progress=False, on_shard=redone.append)
    assert sorted(s["shard"] for s in redone) == [1, 2] and not again.get("already_complete")
    assert [doc.user_data["doc_id"] for doc in read_docs(out, vocab)] == [0, 2, 4]


def test_a_shard_file_whose_metadata_lost_its_row_range_is_embedded_anew(tmp_path, small_run, in_process):
    """Shard files whose metadata another tool rewrote (not an object, or without the row
    range or the rejected rows): a rerun failed on a bare KeyError or TypeError. They are
    refused when read, and a rerun embeds them anew."""
    path, model = small_run
    out = tmp_path / "out"
    embed_corpus(path, out, model=str(model), shard_size=2, progress=False)
    vocab = spacy.blank("en").vocab
    for index, meta in ((0, lambda m: [m]), (1, lambda m: {k: v for k, v in m.items() if k != "first_id"}),
                        (2, lambda m: {k: v for k, v in m.items() if k != "rejected"})):  # (shard 2 rejects none)
        file = out / "shards" / shard_name(index)
        table = pq.read_table(file)
        rewritten = json.dumps(meta(json.loads(table.schema.metadata[META_KEY])))
        pq.write_table(table.replace_schema_metadata({META_KEY: rewritten.encode("utf8")}), file)
    with pytest.raises(ValueError, match=r"shard 0 \(part-000000\.parquet\) is missing, unreadable, or not the "
                                         r"file the run wrote"):
        list(read_docs(out, vocab))
    redone = []
    again = embed_corpus(path, out, model=str(model), shard_size=2, progress=False, on_shard=redone.append)
    assert [s["shard"] for s in redone] == [0, 1, 2] and again["resumed_shards"] == 0 and again["docs"] == 3
    assert [(doc.user_data["doc_id"], doc.text) for doc in read_docs(out, vocab)] == [
        (0, "One doc."), (2, "Two docs here."), (4, "Three.")]


def test_a_shard_file_with_rows_dropped_or_added_since_is_not_committed(tmp_path):
    shards, out = _plan_and_write(tmp_path, ["a", "b", "c", "d", "e"], 2)
    _tamper(out, 1, lambda table: table.slice(0, 1))
    _tamper(out, 2, lambda table: pa.concat_tables([table, table]))
    assert set(committed(out, shards)) == {0}


@pytest.mark.parametrize("index, change", [
    (1, lambda table: table.take([1, 0, 2])),  # sorted by another column: the rows out of doc-id order
    (1, lambda table: table.set_column(0, "doc_id", pa.array([4, 3, 5], pa.int64()))),  # two rows' ids swapped
    (0, lambda table: table.set_column(0, "doc_id", pa.array([0, 2], pa.int64()))),  # a rejected row's id
], ids=["rows reordered", "ids swapped", "id of a rejected row"])
def test_a_shard_file_whose_doc_ids_were_edited_with_its_row_count_kept_is_not_committed_nor_read(
        tmp_path, index, change):
    """A shard file rewritten with its rows and metadata kept, but its rows
    reordered or doc ids edited, was taken as committed (a rerun: "already
    complete") and read: its docs out of doc-id order, or under another row's
    id (doc 3 read with doc 4's text and vectors). Now it is neither."""
    shards, out = _plan_and_write(tmp_path, ["a", "b", "", "c", "d", "e"], 3)
    (tmp_path / "manifest.json").write_text(json.dumps({"complete": True, "shards": [s.to_dict() for s in shards]}))
    vocab = spacy.blank("en").vocab
    assert [(d.user_data["doc_id"], d.text) for d in read_docs(tmp_path, vocab)] == [
        (0, "a"), (1, "b"), (3, "c"), (4, "d"), (5, "e")]
    _tamper(out, index, change)
    assert set(committed(out, shards)) == {0, 1} - {index}
    with pytest.raises(ValueError, match=rf"shard {index} \(part-00000{index}\.parquet\) is missing, unreadable, "
                                         r"or not the file the run wrote"):
        list(read_docs(tmp_path, vocab))


def test_a_shard_another_run_wrote_is_never_read_as_this_runs(tmp_path, small_run, in_process, monkeypatch):
    """The actors of a run whose driver was killed can still commit shards for
    a few seconds: into a run started over with other settings, such a file
    read as that run's own (float16 vectors where float32 were asked for, or
    another model's; found by a review helper). Each shard records its run's
    digest: `read_docs` refuses another run's, a run under way refuses to call
    itself complete with one, and running again embeds it anew."""
    import spacy_ctxembed.distributed.run as run

    path, model = small_run
    out, other = tmp_path / "out", tmp_path / "other"
    embed_corpus(path, out, model=str(model), shard_size=2, progress=False)
    embed_corpus(path, other, model=str(model), shard_size=2, dtype="float16", progress=False)
    vocab = spacy.blank("en").vocab
    own = [doc._.ctx_vectors.copy() for doc in read_docs(out, vocab)]
    late = other / "shards" / shard_name(1)
    shutil.copy(late, out / "shards" / shard_name(1))
    with pytest.raises(ValueError, match=r"shard 1 \(part-000001.parquet\) was written by another run"):
        list(read_docs(out, vocab))
    redone = []
    again = embed_corpus(path, out, model=str(model), shard_size=2, progress=False, on_shard=redone.append)
    assert [s["shard"] for s in redone] == [1] and again["resumed_shards"] == 2
    read = [doc._.ctx_vectors for doc in read_docs(out, vocab)]
    assert len(read) == len(own) == 3
    for vectors, expected in zip(read, own):
        assert vectors.dtype == numpy.float32
        numpy.testing.assert_array_equal(vectors, expected)
    # The file lands while a run is under way, after its own shard was written.
    in_process_run = run._run_ray

    def run_then_land(*args, **named):
        in_process_run(*args, **named)
        shutil.copy(late, out / "shards" / shard_name(1))

    monkeypatch.setattr(run, "_run_ray", run_then_land)
    with pytest.raises(ShardMismatch, match=r"shard 1 \(part-000001.parquet\) was written by another run"):
        embed_corpus(path, out, model=str(model), shard_size=2, progress=False, overwrite=True)
    assert not json.loads((out / "manifest.json").read_text(encoding="utf8"))["complete"]


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "embed_corpus: batch_size = 0; expected a positive integer"),
    ({"actors": 0}, "embed_corpus: actors = 0; expected a positive integer"),
    ({"actors": True}, "embed_corpus: actors = True; expected a positive integer"),
    ({"actors": numpy.bool_(True)}, f"embed_corpus: actors = {numpy.bool_(True)!r}; expected a positive integer"),
    ({"shard_size": numpy.float64(2.0)},
     f"embed_corpus: shard_size = {numpy.float64(2.0)!r}; expected a positive integer"),
    ({"cpus_per_actor": numpy.float64("nan")},
     f"embed_corpus: cpus_per_actor = {numpy.float64('nan')!r}; expected a positive number"),
    ({"cpus_per_actor": True}, "embed_corpus: cpus_per_actor = True; expected a positive number"),
    ({"cpus_per_actor": "2"}, "embed_corpus: cpus_per_actor = '2'; expected a positive number"),
    ({"shard_size": 0}, "embed_corpus: shard_size = 0; expected a positive integer"),
    ({"cpus_per_actor": 0.0}, "embed_corpus: cpus_per_actor = 0.0; expected a positive number"),
    ({"gpus_per_actor": -1.0}, "embed_corpus: gpus_per_actor = -1.0; expected 0 (CPU) or a positive number"),
    ({"dtype": "float64"}, "embed_corpus: dtype = 'float64'; expected one of float32, float16"),
    ({"model": "m", "config": "c.cfg"}, "give either a model or a config, not both"),
    ({"model": "no/such/pipeline"}, "embed_corpus: model = 'no/such/pipeline': no such directory or installed "
                                    "pipeline package"),
    ({"input_format": "csv"}, "input format 'csv': expected one of text, jsonl, parquet"),
])
def test_embed_corpus_refuses_bad_settings_before_anything_is_written(tmp_path, kwargs, message, in_process):
    """Settings that cannot make a run are refused by name and value; OUTDIR is not made."""
    path = tmp_path / "in.txt"
    path.write_text("A doc.\n", encoding="utf8")
    with pytest.raises(ValueError) as caught:
        embed_corpus(path, tmp_path / "out", progress=False, **kwargs)
    assert str(caught.value) == message
    assert not (tmp_path / "out").exists() and in_process == []


def test_a_folder_that_is_no_pipeline_or_no_input_is_refused_before_anything_is_written(tmp_path, in_process):
    path = tmp_path / "in.txt"
    path.write_text("A doc.\n", encoding="utf8")
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(ValueError) as caught:
        embed_corpus(path, tmp_path / "out", model=str(folder), progress=False)
    assert str(caught.value) == f"embed_corpus: model = {str(folder)!r}: not a saved spaCy pipeline (no config.cfg)"
    with pytest.raises(InputError) as caught:
        embed_corpus([], tmp_path / "out", progress=False)
    assert str(caught.value) == "no input given"
    assert not (tmp_path / "out").exists() and in_process == []


def test_a_config_whose_variables_cannot_be_filled_in_is_refused_before_any_actor(tmp_path, in_process):
    """A config (from Python: the CLI reads it first) with a variable it does not define: each
    actor failed on it as it loaded the pipeline, which Ray reports as the actor's death,
    without the error. Refused on the driver, naming the option and the variable; OUTDIR is not made."""
    path = tmp_path / "in.txt"
    path.write_text("A doc.\n", encoding="utf8")
    config = tmp_path / "config.cfg"
    config.write_text('[nlp]\nlang = "en"\npipeline = ["ctxembed_bert"]\n\n[components]\n\n'
                      '[components.ctxembed_bert]\nfactory = "ctxembed_bert"\nprimary = ${vars.primary}\n',
                      encoding="utf8")
    with pytest.raises(ValueError) as caught:
        embed_corpus(path, tmp_path / "out", config=config, progress=False)
    assert str(caught.value).startswith(
        "embed_corpus: config: Bad value substitution: option 'primary' in section 'components.ctxembed_bert' "
        "contains an interpolation key 'vars.primary'")
    assert not (tmp_path / "out").exists() and in_process == []


def test_a_rerun_of_a_complete_run_writes_nothing_but_a_cut_record_of_rejected_rows(tmp_path, small_run, in_process):
    """A complete run run again embeds nothing and leaves its files as they are; a
    rejected.jsonl cut since is written again whole, from the shards' metadata."""
    path, model = small_run
    out = tmp_path / "out"
    embed_corpus(path, out, model=str(model), shard_size=2, progress=False)
    rejected = out / "rejected.jsonl"
    written = (rejected.read_bytes(), rejected.stat().st_ino)
    again = embed_corpus(path, out, model=str(model), shard_size=2, progress=False)
    assert again["already_complete"] and in_process == [[0, 1, 2]]
    assert (rejected.read_bytes(), rejected.stat().st_ino) == written, "not written again"
    rejected.write_bytes(written[0].splitlines(keepends=True)[0])
    third = embed_corpus(path, out, model=str(model), shard_size=2, progress=False)
    assert third["already_complete"] and in_process == [[0, 1, 2]]
    assert rejected.read_bytes() == written[0]


def test_a_run_stopped_after_its_last_shard_is_completed_without_embedding_again(tmp_path, small_run, in_process):
    """Every shard committed, the manifest not yet complete (the driver was stopped before it
    wrote it): a rerun starts no actor, and completes the manifest and the rejected rows."""
    path, model = small_run
    out = tmp_path / "out"
    embed_corpus(path, out, model=str(model), shard_size=2, progress=False)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf8"))
    started = {key: value for key, value in manifest.items()
               if key not in ("complete", "docs", "rejected", "rows", "resumed_shards", "signature")}
    (out / "manifest.json").write_text(json.dumps({**started, "complete": False}), encoding="utf8")
    (out / "rejected.jsonl").unlink()
    again = embed_corpus(path, out, model=str(model), shard_size=2, progress=False)
    assert in_process == [[0, 1, 2]], "no shard embedded again"
    assert not again.get("already_complete")
    assert (again["complete"], again["docs"], again["rejected"], again["rows"], again["resumed_shards"]) == (
        True, 3, 2, 5, 3)
    assert json.loads((out / "manifest.json").read_text(encoding="utf8")) == again
    lines = (out / "rejected.jsonl").read_text(encoding="utf8").splitlines()
    assert [(r["doc_id"], r["line"]) for r in map(json.loads, lines)] == [(1, 2), (3, 4)]


def test_numpy_counts_and_resources_are_taken_as_python_numbers(tmp_path, small_run, in_process, monkeypatch):
    """Counts and resources from numpy (a sweep's `numpy.arange`, a config read with numpy) are
    numbers like Python's: the run is made, the manifest (JSON) records plain ints, and Ray's
    layer is given plain ints and floats."""
    import spacy_ctxembed.distributed.run as run

    path, model = small_run
    given = {}
    fake = run._run_ray

    def spy(pending, shard_dir, model, config, batch_size, actors, cpus, gpus, *rest, **named):
        given.update(batch_size=batch_size, actors=actors, cpus=cpus, gpus=gpus)
        return fake(pending, shard_dir, model, config, batch_size, actors, cpus, gpus, *rest, **named)

    monkeypatch.setattr(run, "_run_ray", spy)
    manifest = embed_corpus(path, tmp_path / "out", model=str(model), shard_size=numpy.int64(2),
                            batch_size=numpy.int32(4), actors=numpy.uint8(1), cpus_per_actor=numpy.float32(1.0),
                            gpus_per_actor=numpy.int64(0), progress=False)
    assert (manifest["complete"], manifest["docs"], manifest["rows"]) == (True, 3, 5)
    recorded = json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf8"))
    assert recorded["identity"]["shard_size"] == 2 and type(recorded["identity"]["shard_size"]) is int
    assert in_process == [[0, 1, 2]]
    assert {k: (type(v), v) for k, v in given.items()} == {
        "batch_size": (int, 4), "actors": (int, 1), "cpus": (float, 1.0), "gpus": (float, 0.0)}


def test_a_manifest_without_a_readable_identity_is_refused_naming_it(tmp_path, in_process):
    """An OUTDIR whose manifest.json has no identity object is refused as unreadable, and left as it was."""
    path = tmp_path / "in.txt"
    path.write_text("A doc.\n", encoding="utf8")
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"identity": "garbled"}), encoding="utf8")
    with pytest.raises(FileExistsError) as caught:
        embed_corpus(path, out, progress=False)
    assert str(caught.value) == (f"{out / 'manifest.json'} is unreadable; use another output directory, "
                                 "or overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"] and in_process == []


def test_the_run_signature_is_none_where_shards_disagree(tmp_path):
    """The manifest's signature is the one all shards record; shards that record two models' are no one signature."""
    from spacy_ctxembed.distributed.run import _run_signature
    from spacy_ctxembed.distributed.shards import build_table, write_shard

    path = tmp_path / "in.txt"
    path.write_text("a\nb\n", encoding="utf8")
    shards, _ = plan_shards(input_files([str(path)]), 1)
    out = tmp_path / "shards"
    out.mkdir()

    def signed(*signatures):
        for shard, signature in zip(shards, signatures):
            table = build_table([shard.first_id], ["a"], [["a"]], [numpy.array([0], numpy.int32)],
                                [numpy.zeros((1, 4), numpy.float32)])
            write_shard(out, shard, table, [], {"signature": signature})
        return _run_signature(out, shards)

    sig_a, sig_b = "encoder=bert; layers=[-1]; weights=aaaa", "encoder=bert; layers=[-1]; weights=bbbb"
    assert signed(sig_a, sig_b) is None
    assert signed(sig_a, sig_a) == sig_a
    assert signed(sig_a, None) == sig_a  # (a shard of rejected rows only: it has no docs, and signs none)
    # One model's, as two versions signed it (the earlier with a path, the later with the encoder's
    # weights too): every field either has, where they agree on those both have.
    assert _signature_fields(signed("encoder=bert; name=/m; weights=aaaa",
                                    "encoder=bert; encoder_weights=eeee; weights=aaaa")) == {
        "encoder": "bert", "name": "/m", "encoder_weights": "eeee", "weights": "aaaa"}
    assert signed("encoder=bert; name=/m; weights=aaaa", "encoder=bert; encoder_weights=eeee; weights=bbbb") is None


def _signature_fields(signature):
    """A signature's "key=value; ..." fields, as `pipeline.signature.output_signature` writes them."""
    return dict(part.split("=", 1) for part in signature.split("; "))


def _record_signature(shard_dir, index, fields):
    """Rewrite shard `index`'s recorded signature as `fields` (its rows and other metadata kept):
    what a run of an earlier version, or of another model, left there."""
    path = shard_dir / shard_name(index)
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[META_KEY])
    meta["signature"] = "; ".join(f"{key}={value}" for key, value in fields.items())
    pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps(meta).encode("utf8")}), path)


def test_a_run_resumed_over_shards_of_an_earlier_version_records_its_models_signature(
        tmp_path, small_run, in_process):
    """A run resumed over shards an earlier version wrote, whose signatures lack
    `encoder_weights`, with shards of this version of the same model: the manifest's
    signature was None (docs read with it said nothing of what made them), as if two
    models had made them. It is the model's, every field of it; shards of another
    model (other weights) still make it None."""
    path, model = small_run
    out = tmp_path / "out"
    embed_corpus(path, out, model=str(model), shard_size=2, progress=False)
    fields = _signature_fields(stored_signature(spacy.load(model)("One doc."), "ctxembed_bert"))
    earlier = {key: value for key, value in fields.items() if key != "encoder_weights"}
    assert earlier != fields  # (the test's premise: this version's signatures have the field)
    for index in (0, 1):
        _record_signature(out / "shards", index, earlier)
    (out / "shards" / shard_name(2)).unlink()  # (the earlier run stopped before its last shard)
    resumed = embed_corpus(path, out, model=str(model), shard_size=2, progress=False)
    assert resumed["resumed_shards"] == 2 and in_process[-1] == [2]
    assert resumed["signature"] is not None and _signature_fields(resumed["signature"]) == fields
    recorded = json.loads((out / "manifest.json").read_text(encoding="utf8"))
    assert recorded["signature"] == resumed["signature"]
    # Shards of another model (other weights, as an earlier version recorded them): no one model's.
    _record_signature(out / "shards", 0, {**earlier, "weights": "0123456789abcdef"})
    (out / "shards" / shard_name(2)).unlink()
    assert embed_corpus(path, out, model=str(model), shard_size=2, progress=False)["signature"] is None


def test_a_file_rewritten_in_place_with_its_size_kept_is_refused(tmp_path):
    """A worker refuses an input whose modification time changed since planning, even with the same size
    (one letter edited in place)."""

    path = tmp_path / "in.txt"
    path.write_text("cat\ndog\n", encoding="utf8")
    (shard,), _ = plan_shards(input_files([str(path)]), 10)
    path.write_text("cat\nhog\n", encoding="utf8")
    later = shard.mtime_ns + 10**9
    os.utime(path, ns=(later, later))
    assert path.stat().st_size == shard.size
    with pytest.raises(InputError) as caught:
        read_shard(shard)
    assert str(caught.value) == f"input {path} changed since the run was planned (size or modification time)"


def test_a_shard_started_once_is_not_named_as_failed(tmp_path):
    """Only a shard started more than once without being committed is one whose actor kept dying;
    a shard in progress (started once) when the run failed is not named."""
    from spacy_ctxembed.distributed.actor import attempts_name
    from spacy_ctxembed.distributed.run import failed_shards

    path = tmp_path / "in.txt"
    path.write_text("".join(f"Doc {i}.\n" for i in range(4)), encoding="utf8")
    shards, _ = plan_shards(input_files([str(path)]), 2)
    out = tmp_path / "shards"
    out.mkdir()
    (out / attempts_name(0)).write_text("host:1\n", encoding="utf8")
    (out / attempts_name(1)).write_text("host:1\nhost:2\n", encoding="utf8")
    assert failed_shards(out, shards) == [f"shard 1 (doc ids 2-3, {path} from line 3: started 2 times)"]


def test_a_file_whose_rows_changed_behind_the_same_size_and_time_is_refused(tmp_path):
    """A shard that reads another number of rows than was planned is refused, even where the file's size
    and modification time were kept (a line break moved, the time put back)."""

    path = tmp_path / "in.txt"
    path.write_bytes(b"ab\ncd\n")
    (shard,), _ = plan_shards(input_files([str(path)]), 10)
    path.write_bytes(b"a\nb\ncd")  # the same 6 bytes, 3 lines
    os.utime(path, ns=(shard.mtime_ns, shard.mtime_ns))
    with pytest.raises(InputError) as caught:
        read_shard(shard)
    assert str(caught.value) == (f"input {path} changed since it was planned: shard 0 has 3 rows, planned 2")


def test_an_actors_summary_and_shard_metadata(tmp_path, tiny_bert_dir):
    """A shard's summary counts its docs, rejected rows and tokens; its file records the component,
    dtype and worker, and what made its vectors only where it has docs."""
    import socket

    from spacy_ctxembed.distributed.actor import ShardEmbedder
    from spacy_ctxembed.distributed.shards import shard_meta

    make_nlp(tiny_bert_dir).to_disk(tmp_path / "nlp")
    path = tmp_path / "in.txt"
    texts = ["One doc here.", "", "Two, and more words."]
    path.write_text("\n".join(texts) + "\n \n\n", encoding="utf8")  # shard 0: rows 0-2; shard 1: rows 3-4 (blank)
    shards, _ = plan_shards(input_files([str(path)]), 3)
    out = tmp_path / "shards"
    out.mkdir()
    embedder = ShardEmbedder(str(out), str(tmp_path / "nlp"), None, False, 8, "float32", 1)
    summary = embedder.embed_shard(shards[0])
    tokenizer = spacy.blank("en").tokenizer
    n_tokens = sum(len(tokenizer(t)) for t in texts if t)
    assert (summary["shard"], summary["docs"], summary["rejected"], summary["tokens"]) == (0, 2, 1, n_tokens)
    meta = shard_meta(out / shard_name(0))
    assert (meta["component"], meta["dtype"], meta["worker"]) == (
        "ctxembed_bert", "float32", f"{socket.gethostname()}:{os.getpid()}")
    assert isinstance(meta["signature"], str)
    empty = embedder.embed_shard(shards[1])
    assert (empty["docs"], empty["rejected"], empty["tokens"]) == (0, 2, 0)
    assert shard_meta(out / shard_name(1))["signature"] is None


def test_an_actor_whose_pipeline_leaves_no_vectors_names_the_component_and_shard(tmp_path, tiny_bert_dir):
    """A pipeline that sets no doc._.ctx_vectors fails the shard with an error naming its component
    and the shard, and commits nothing."""
    from spacy_ctxembed.distributed.actor import ShardEmbedder

    make_nlp(tiny_bert_dir).to_disk(tmp_path / "nlp")
    path = tmp_path / "in.txt"
    path.write_text("A doc.\n", encoding="utf8")
    (shard,), _ = plan_shards(input_files([str(path)]), 10)
    out = tmp_path / "shards"
    out.mkdir()
    embedder = ShardEmbedder(str(out), str(tmp_path / "nlp"), None, False, 8, "float32", 1)
    embedder.nlp = spacy.blank("en")  # (its docs get no vectors)
    with pytest.raises(ValueError) as caught:
        embedder.embed_shard(shard)
    assert str(caught.value) == "[ctxembed_bert] left no vectors on a doc of shard 0"
    assert not (out / shard_name(0)).exists()


def test_a_doc_the_pipeline_fails_on_is_named_by_its_file_and_line(tmp_path, tiny_bert_dir):
    """A doc that makes the pipeline raise failed the run with the pipeline's own
    error alone ("a Ray actor failed: ValueError: ..."): which of a corpus's
    docs, in which shard, was not said. The error names the doc, its file and
    line, and the shard, and the pipeline's error; nothing is committed."""
    from spacy.language import Language

    from spacy_ctxembed.distributed.actor import PipelineFailed, ShardEmbedder

    @Language.component("fails_on_boom")
    def fails_on_boom(doc):
        if "BOOM" in doc.text:
            raise ValueError("cannot embed this doc")
        return doc

    make_nlp(tiny_bert_dir).to_disk(tmp_path / "nlp")
    path = tmp_path / "in.jsonl"
    texts = ["One.", "Two.", "Three.", "Four.", "Five goes BOOM.", ""]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf8")
    shards, _ = plan_shards(input_files([str(path)]), 3)
    out = tmp_path / "shards"
    out.mkdir()
    embedder = ShardEmbedder(str(out), str(tmp_path / "nlp"), None, False, 1, "float32", 1)
    embedder.nlp.add_pipe("fails_on_boom", first=True)
    embedder.embed_shard(shards[0])
    with pytest.raises(PipelineFailed) as caught:
        embedder.embed_shard(shards[1])
    assert str(caught.value) == (f"the pipeline failed on doc 4 ({path.resolve()}, line 5) or a doc after it in "
                                 "shard 1 (doc ids 3-5): ValueError: cannot embed this doc")
    assert isinstance(caught.value.__cause__, ValueError)
    assert not (out / shard_name(1)).exists()


def test_an_actors_model_changed_error_reaches_the_driver_as_it_was_raised():
    """Ray pickles an actor's error to the driver: ModelChanged was remade from its
    message as if that were the model, and said its message twice over."""
    import pickle

    from spacy_ctxembed.distributed import ModelChanged

    sent = ModelChanged("/models/nlp")
    received = pickle.loads(pickle.dumps(sent))
    assert (str(received), received.model) == (str(sent), "/models/nlp")


def test_an_explicit_input_format_overrides_the_file_name(tmp_path):
    """--input-format jsonl of a file named .txt reads it as JSONL (its text field), not as lines of JSON."""
    path = tmp_path / "records.txt"
    path.write_text('{"text": "One doc."}\n{"text": "Two."}\n', encoding="utf8")
    files = input_files([str(path)], kind="jsonl")
    assert files == [(path.resolve(), "jsonl")]
    (shard,), _ = plan_shards(files, 10)
    docs, rejected = read_shard(shard)
    assert docs == [(0, "One doc."), (1, "Two.")] and rejected == []


def test_a_parquet_column_of_large_strings_is_read(tmp_path):
    """pyarrow and Spark write large_string columns too: their texts are read as a string column's."""
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"text": pa.array(["One doc.", None, "Two."], type=pa.large_string())}), path)
    shards, _ = plan_shards(input_files([str(path)]), 2)
    rows = [read_shard(shard) for shard in shards]
    assert [d for docs, _ in rows for d in docs] == [(0, "One doc."), (2, "Two.")]
    assert [(r.doc_id, r.row, r.reason) for _, rejected in rows for r in rejected] == [(1, 1, "null text")]


def test_an_actor_names_the_last_primary_embedder_of_its_pipeline(tiny_bert_dir):
    """doc._.ctx_vectors is the last primary ctxembed component's (each primary one overwrites it;
    one with primary = false never sets it): the component whose signature a shard records."""
    from spacy_ctxembed.pipeline.build import NoContextualEmbedder, primary_component

    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", name="first", config=ctx_config(name=tiny_bert_dir))
    nlp.add_pipe("ctxembed_bert", name="second", config=ctx_config(name=tiny_bert_dir))
    assert primary_component(nlp) == "second"
    nlp.add_pipe("ctxembed_bert", name="third", config=ctx_config(name=tiny_bert_dir, primary=False))
    assert primary_component(nlp) == "second"
    only_secondary = spacy.blank("en")
    only_secondary.add_pipe("ctxembed_bert", name="third", config=ctx_config(name=tiny_bert_dir, primary=False))
    with pytest.raises(NoContextualEmbedder, match="no primary contextual embedder"):
        primary_component(only_secondary)


def test_an_actor_asks_for_its_gpu_and_its_threads(tmp_path, monkeypatch):
    """An actor with use_gpu loads its pipeline on GPU 0 (Ray gives each actor
    its own as device 0), one without on the CPU (-1); torch gets the actor's threads."""
    import torch

    import spacy_ctxembed.distributed.actor as actor

    calls = []
    monkeypatch.setattr(actor, "load_pipeline", lambda **kwargs: calls.append(kwargs) or spacy.blank("en"))
    monkeypatch.setattr(actor, "primary_component", lambda nlp: "ctxembed_bert")  # (no component in a blank one)
    before = torch.get_num_threads()
    try:
        actor.ShardEmbedder(str(tmp_path), "m", None, True, 8, "float32", 3)
        assert torch.get_num_threads() == 3
        actor.ShardEmbedder(str(tmp_path), "m", None, False, 8, "float32", 0)
        assert torch.get_num_threads() == 1  # (0 threads: at least one)
    finally:
        torch.set_num_threads(before)
    assert [call["gpu_id"] for call in calls] == [0, -1]


def test_an_actors_float16_shard_reads_back_as_its_docs(tmp_path, tiny_bert_dir):
    """A shard an actor wrote rebuilds its docs: the tokens at spaCy's character
    offsets (token starts, from a blank tokenizer here), the vectors as the
    pipeline gave them rounded to float16, and a file that says float16."""
    import pyarrow.parquet as pq

    from spacy_ctxembed.distributed.actor import ShardEmbedder
    from spacy_ctxembed.distributed.shards import shard_meta

    make_nlp(tiny_bert_dir).to_disk(tmp_path / "nlp")
    texts = ["One doc  here.", "Two, and more words."]
    path = tmp_path / "in.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf8")
    (shard,), _ = plan_shards(input_files([str(path)]), 10)
    out = tmp_path / "shards"
    out.mkdir()
    ShardEmbedder(str(out), str(tmp_path / "nlp"), None, False, 8, "float16", 1).embed_shard(shard)
    assert shard_meta(out / shard_name(0))["dtype"] == "float16"
    nlp = spacy.load(tmp_path / "nlp")
    tokenizer = spacy.blank("en").tokenizer
    rebuilt = list(docs_from_table(pq.read_table(out / shard_name(0)), spacy.blank("en").vocab))
    assert [doc.text for doc in rebuilt] == texts
    for doc, text in zip(rebuilt, texts):
        assert [t.idx for t in doc] == [t.idx for t in tokenizer(text)]
        expected = nlp(text)._.ctx_vectors.astype(numpy.float16).astype(numpy.float32)
        numpy.testing.assert_allclose(doc._.ctx_vectors, expected, rtol=1e-3, atol=1e-3)


def test_a_changed_model_is_told_with_what_to_do():
    """ModelChanged names the model and says what a changed model needs: another run."""
    from spacy_ctxembed.distributed.actor import ModelChanged

    assert str(ModelChanged("models/best")) == (
        "embed_corpus: model = 'models/best': its files changed after this run started (their checksum differs "
        "from the one the run recorded), so its shards would mix two models' vectors; rerun once it stays put "
        "(a model changed on purpose makes another run: overwrite)")


def test_an_actor_of_a_config_run_checks_the_files_the_config_names(tmp_path, tiny_bert_dir):
    """Without --model, the files a run's config names (here the encoder's model
    folder) are what the actor's check holds to the driver's record: the same
    files pass, a folder replaced since is refused."""
    import shutil

    from thinc.api import Config

    from spacy_ctxembed.distributed.actor import ModelChanged, _check_model
    from spacy_ctxembed.fileio import model_identity

    folder = tmp_path / "bert"
    shutil.copytree(tiny_bert_dir, folder)
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=folder))
    config = nlp.config.to_str()
    recorded = model_identity(None, Config().from_str(config, interpolate=False))
    _check_model(None, config, recorded)  # the same files
    (folder / "config.json").write_text((folder / "config.json").read_text().replace("}", ', "edited": 1}', 1))
    with pytest.raises(ModelChanged, match=r"^embed_corpus: model = None: its files changed"):
        _check_model(None, config, recorded)


def test_a_run_with_a_config_that_names_no_files_is_not_said_to_have_other_model_files(tmp_path):
    """A rerun with a config (one that names no files) where the recorded run had none: the
    refusal said "the model: other model files" beside the config's change, of the config's
    empty record of its files. Only a real difference of the model is named."""
    from spacy_ctxembed.distributed import DifferentRun
    from spacy_ctxembed.distributed.run import _recorded_run
    from spacy_ctxembed.distributed.shards import MANIFEST

    model = {"name": None, "sha256": "1" * 64, "ctxembed": "0.2.0"}
    then = {"shard_size": 2, "model": model, "config_sha256": None}
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST).write_text(json.dumps({"identity": then, "complete": True}), encoding="utf8")
    now = {"shard_size": 2, "model": {**model, "files": {}}, "config_sha256": "2" * 64}
    with pytest.raises(DifferentRun) as caught:
        _recorded_run(out, now, overwrite=False)
    assert caught.value.changes == {"config_sha256": "sha256 none then, 222222222222 now"}
    now["model"]["files"] = {"c/options.json": "3" * 64}
    with pytest.raises(DifferentRun) as caught:
        _recorded_run(out, now, overwrite=False)
    assert caught.value.changes["model"] == "the files its config names (c/options.json)"
