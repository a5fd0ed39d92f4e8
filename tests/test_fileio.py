"""fileio: atomic writes, JSON reads and the tree hashes that name a model folder's contents."""
import hashlib
import json
import os
import stat

import pytest

from spacy_ctxembed import fileio


def test_a_failed_atomic_write_leaves_neither_the_file_nor_a_temporary_one(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with fileio.atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_an_atomic_write_gets_the_mode_open_would_give(tmp_path):
    old = os.umask(0o022)
    try:
        fileio.write_atomic(tmp_path / "a", b"x")
        with open(tmp_path / "b", "wb") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o644


def test_read_json_tells_missing_from_unreadable_and_non_objects(tmp_path):
    (tmp_path / "obj.json").write_text('{"a": 1}')
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "bad.json").write_text("{not json")
    assert fileio.read_json(tmp_path / "obj.json") == {"a": 1}
    assert fileio.read_json(tmp_path / "list.json") == {}
    assert fileio.read_json(tmp_path / "bad.json") == {}
    assert fileio.read_json(tmp_path / "missing.json") is None


def test_tree_sha256_sees_a_file_renamed(tmp_path):

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.txt").write_bytes(b"same bytes")
    before = fileio.tree_sha256(tmp_path / "m")
    expected = hashlib.sha256(b"a.txt\0" + b"same bytes").hexdigest()
    assert before == expected
    (tmp_path / "m" / "a.txt").rename(tmp_path / "m" / "b.txt")
    assert fileio.tree_sha256(tmp_path / "m") != before


def test_a_model_folder_that_holds_a_run_marker_itself_is_still_hashed_whole(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"1")
    (model / "manifest.json").write_text(json.dumps({"layout": fileio.EMBED_LAYOUT}))
    before = fileio.tree_sha256(model)
    (model / "weights.bin").write_bytes(b"2")
    assert fileio.tree_sha256(model) != before
