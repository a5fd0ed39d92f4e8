"""fileio: atomic writes, JSON reads and the tree hashes that name a model folder's contents."""
import contextlib
import hashlib
import json
import os
import stat
from pathlib import Path

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


def test_an_interrupted_atomic_write_removes_its_temporary_too(tmp_path):
    """Ctrl-C (a BaseException, not an Exception) inside the block leaves no temporary behind."""
    with pytest.raises(KeyboardInterrupt):
        with fileio.atomic_path(tmp_path / "out.json") as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_an_atomic_write_gets_its_mode_from_the_umask_in_force(tmp_path):
    """0666 less the umask, whatever the umask is: not a fixed 0644."""
    old = os.umask(0o027)
    try:
        fileio.write_atomic(tmp_path / "a", b"x")
        in_force = os.umask(0o027)  # (reading it for the mode must not change it)
    finally:
        os.umask(old)
    assert oct(stat.S_IMODE((tmp_path / "a").stat().st_mode)) == oct(0o640)
    assert oct(in_force) == oct(0o027)


def test_the_temporary_is_a_hidden_tmp_file_beside_the_target(tmp_path):
    """Readers of the directory (globs of final names, pyarrow datasets) never see it,
    and the rename stays on one file system."""
    target = tmp_path / "part-000000.parquet"
    with fileio.atomic_path(target) as tmp:
        tmp = Path(tmp)
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".part-000000.parquet.") and tmp.name.endswith(".tmp")
        assert not target.exists()
        tmp.write_bytes(b"data")
    assert [p.name for p in tmp_path.iterdir()] == ["part-000000.parquet"]
    assert target.read_bytes() == b"data"


def test_an_atomic_write_is_flushed_to_disk_before_it_takes_its_name(tmp_path, monkeypatch):
    """The temporary's bytes are fsynced, then it is renamed: a crash never leaves
    the final name on a file whose bytes were not yet on disk."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    fileio.write_atomic(tmp_path / "a.json", b"{}")
    written = (tmp_path / "a.json").stat().st_ino
    assert events == [("fsync", written), ("replace", written)]


def test_read_json_of_a_directory_or_undecodable_bytes_is_unreadable_not_missing(tmp_path):
    (tmp_path / "dir.json").mkdir()
    (tmp_path / "latin1.json").write_bytes(b'{"a": "\xe9"}')
    assert fileio.read_json(tmp_path / "dir.json") == {}
    assert fileio.read_json(tmp_path / "latin1.json") == {}


def _config(text):
    from thinc.api import Config

    return Config().from_str(text, interpolate=False)


def test_config_files_lists_only_files_that_exist_and_resolves_a_relative_model_folder(tmp_path, monkeypatch):
    """A setting naming a file that is not there names nothing to hash; an encoder's
    `name` that is a folder in the working directory is listed as its absolute path."""
    (tmp_path / "model").mkdir()
    (tmp_path / "options.json").touch()
    monkeypatch.chdir(tmp_path)
    config = _config("""
        [components]
        [components.bert]
        [components.bert.model]
        name = "model"
        [components.elmo]
        [components.elmo.model]
        options_file = "options.json"
        weight_file = "missing.hdf5"
        """)
    assert fileio.config_files(config) == [tmp_path / "model", tmp_path / "options.json"]


def test_config_files_reads_a_config_whose_variables_cannot_be_filled_as_it_is(tmp_path, monkeypatch):
    (tmp_path / "options.json").touch()
    monkeypatch.chdir(tmp_path)
    config = _config("""
        [paths]
        weights = null
        [components]
        [components.elmo]
        [components.elmo.model]
        options_file = "options.json"
        weight_file = ${paths.nowhere}
        """)
    assert fileio.config_files(config) == [tmp_path / "options.json"]


def test_config_files_lists_what_components_are_built_from_not_other_blocks(tmp_path, monkeypatch):
    """A file setting outside [components] (a corpus, a logger) is not the model's."""
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "options.json").touch()
    monkeypatch.chdir(tmp_path)
    config = _config("""
        [corpora]
        [corpora.train]
        source = "pipeline"
        [components]
        [components.elmo]
        [components.elmo.model]
        options_file = "options.json"
        """)
    assert fileio.config_files(config) == [tmp_path / "options.json"]


def test_config_files_names_a_local_file_that_an_encoder_name_gives(tmp_path, monkeypatch):
    """`name` as a path to a file (another library's setting, not a model folder) is listed as it is."""
    (tmp_path / "lookups.bin").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    config = _config("""
        [components]
        [components.lookups]
        name = "./lookups.bin"
        """)
    assert fileio.config_files(config) == [tmp_path / "lookups.bin"]


def test_an_atomic_write_keeps_no_file_descriptor_open(tmp_path):
    """mkstemp's descriptor is closed: a run writing thousands of shards must not run out of them."""
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        pytest.skip("needs /proc/self/fd")
    fileio.write_atomic(tmp_path / "a", b"x")
    with fileio.atomic_path(tmp_path / "b") as tmp:
        Path(tmp).write_bytes(b"y")

    def into_tmp_path():
        found = []
        for fd in fds.iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd).startswith(str(tmp_path)):
                    found.append(os.readlink(fd))
        return found

    assert into_tmp_path() == []


def test_config_files_looks_into_lists_of_blocks(tmp_path, monkeypatch):
    (tmp_path / "options.json").touch()
    monkeypatch.chdir(tmp_path)
    config = _config("""
        [components]
        [components.multi]
        [components.multi.model]
        encoders = [{"options_file": "options.json"}]
        """)
    assert fileio.config_files(config) == [tmp_path / "options.json"]


def test_the_umask_is_read_without_being_set_where_linux_shows_it(monkeypatch):
    """Setting the umask to read it changes it for every thread for that moment."""
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs /proc/self/status")
    old = os.umask(0o027)
    try:
        def refuse(mask):
            raise AssertionError("the umask was set")

        monkeypatch.setattr(os, "umask", refuse)
        assert oct(fileio.umask()) == oct(0o027)
    finally:
        monkeypatch.undo()
        os.umask(old)
