"""The output of a distributed run: one Parquet file per input shard.

Columns, one row per embedded doc, in doc-id order:

- ``doc_id`` (int64): the doc's row in the whole input, from 0;
- ``text`` (string): the doc's text, exactly as read;
- ``tokens`` (list<string>) and ``idx`` (list<int32>): spaCy's tokens and
  their character offsets in ``text``;
- ``vectors`` (list<list<float32>>, or float16): one vector per token.

A shard file is written under a hidden temporary name and renamed into
place, so it is either absent or complete: its presence is the commit. Its
Parquet key-value metadata (``spacy_ctxembed``) says which rows it covers and
holds the rejected rows of its range, so the docs and the rejections of a
shard are committed together. `check_complete` proves, from the files alone,
that every input row is in exactly one place.
"""
import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy
from spacy.tokens import Doc
from spacy.vocab import Vocab

from ..errors import is_int
from ..fileio import atomic_path, read_json
from ..outputs import install_extensions, write_outputs
from .extra import require_ray_extra
from .sources import Rejected, Shard

MANIFEST = "manifest.json"  # OUTDIR's files (run.py writes them)
SHARDS = "shards"
META_KEY = b"spacy_ctxembed"
DTYPES = ("float32", "float16")
DOC_ID_KEY = "doc_id"  # doc.user_data[DOC_ID_KEY] on docs rebuilt from rows


class ShardMismatch(ValueError):
    """The files of a run do not hold every input row exactly once."""


class Float16Overflow(ValueError):
    """`--float16` (dtype "float16"): the model gave a vector value that float16 stores as inf."""


def shard_name(index: int) -> str:
    return f"part-{index:06d}.parquet"


def schema(dtype: str = "float32"):
    import pyarrow as pa

    value = pa.float16() if dtype == "float16" else pa.float32()
    return pa.schema([
        ("doc_id", pa.int64()), ("text", pa.string()), ("tokens", pa.list_(pa.string())),
        ("idx", pa.list_(pa.int32())), ("vectors", pa.list_(pa.list_(value))),
    ])


def build_table(
    doc_ids: Sequence[int], texts: Sequence[str], tokens: Sequence[List[str]], idx: Sequence[numpy.ndarray],
    vectors: Sequence[numpy.ndarray], dtype: str = "float32",
):
    """The shard's table, built column-wise from flat arrays (no per-value Python)."""
    import pyarrow as pa

    counts = numpy.array([len(t) for t in tokens], dtype=numpy.int64)
    offsets = pa.array(numpy.concatenate([[0], numpy.cumsum(counts)]).astype(numpy.int32))
    width = int(vectors[0].shape[1]) if len(vectors) else 0
    for doc_id, rows, n in zip(doc_ids, vectors, counts):
        if rows.shape != (n, width):
            raise ValueError(f"doc {doc_id}: vectors of shape {rows.shape} for {n} tokens of width {width}")
    total = int(counts.sum())
    if total * width >= 2**31:
        # Parquet lists carry int32 offsets: a shard holds fewer than 2**31 vector values.
        raise ValueError(f"a shard of {len(doc_ids)} docs holds {total} token vectors of width {width}, more "
                         "values than a Parquet list can hold (2**31); lower the shard size (--shard-size)")
    flat = numpy.concatenate([v.reshape(-1) for v in vectors]) if len(vectors) else numpy.zeros(0)
    if dtype == "float16":
        with numpy.errstate(over="ignore"):
            half = flat.astype(numpy.float16)
        if numpy.isinf(half).any():  # (one pass over the shard; which doc and value, only then)
            _check_float16_range(doc_ids, counts * width, flat, half)
        flat = half
    else:
        flat = flat.astype(numpy.float32, copy=False)
    inner = pa.ListArray.from_arrays(
        pa.array(numpy.arange(0, total * width + 1, max(width, 1), dtype=numpy.int32)[: total + 1]),
        pa.array(flat),
    )
    flat_idx = numpy.concatenate(idx).astype(numpy.int32) if len(idx) else numpy.zeros(0, numpy.int32)
    flat_tokens = [t for doc_tokens in tokens for t in doc_tokens]
    columns = [
        pa.array(numpy.asarray(doc_ids, dtype=numpy.int64)),
        pa.array(list(texts), type=pa.string()),
        pa.ListArray.from_arrays(offsets, pa.array(flat_tokens, type=pa.string())),
        pa.ListArray.from_arrays(offsets, pa.array(flat_idx)),
        pa.ListArray.from_arrays(offsets, inner),
    ]
    return pa.Table.from_arrays(columns, schema=schema(dtype))


def _check_float16_range(doc_ids: Sequence[int], sizes: numpy.ndarray, flat: numpy.ndarray,
                         half: numpy.ndarray) -> None:
    """Refuse vectors that float16 (`half`, `flat` converted) would store as inf
    (|x| >= 65520, where rounding to the nearest float16 overflows): a model
    with large activations must not lose them without a word. (An inf in
    `flat` stays inf, as in float32.)"""
    overflow = numpy.isinf(half) & numpy.isfinite(flat)
    if overflow.any():
        first = int(numpy.flatnonzero(overflow)[0])
        doc = int(numpy.searchsorted(numpy.cumsum(sizes), first, side="right"))
        raise Float16Overflow(
            f"--float16: doc {doc_ids[doc]} has a vector value of {float(flat[first]):.6g}, beyond float16's range "
            f"(largest {float(numpy.finfo(numpy.float16).max):.0f}), which would be stored as inf "
            f"({int(overflow.sum())} such values in this shard); run without --float16 to store float32")


def write_shard(out_dir: Path, shard: Shard, table, rejected: Sequence[Rejected], info: Dict[str, Any]) -> Path:
    """Write the shard's file atomically; its metadata records the range, the rejections and `info`."""
    import pyarrow.parquet as pq

    meta = {"shard": shard.index, "first_id": shard.first_id, "n_rows": shard.n_rows, "docs": table.num_rows,
            "rejected": [r.to_dict() for r in rejected], **info}
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta, ensure_ascii=False).encode("utf8")})
    path = out_dir / shard_name(shard.index)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def shard_meta(path: Path) -> Optional[Dict[str, Any]]:
    """The metadata of a committed shard file; None if it is unreadable, or lacks
    the row range and rejected rows that `write_shard` records (then the shard is redone)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(path).metadata or {}
        meta = json.loads(metadata[META_KEY])
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None
    # (Metadata rewritten by other tools: a resume read these as they were, and failed on a
    # bare KeyError or TypeError instead of embedding the shard anew.)
    if not (isinstance(meta, dict) and isinstance(meta.get("rejected"), list)
            and all(is_int(meta.get(key)) for key in ("first_id", "n_rows"))):
        return None
    return meta


def run_digest(identity: Dict[str, Any]) -> str:
    """A digest of a run's identity (its inputs, settings and model: what the
    manifest records), which each of its shard files records too. The actors
    of a run whose driver was killed can outlive it for a while and still
    commit shards: into a run started over (`overwrite`) with another model,
    say, where the file would read as that run's own."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf8")).hexdigest()[:16]


def of_run(meta: Dict[str, Any], run: Optional[str]) -> bool:
    """Whether a shard's metadata says that the run of digest `run` wrote it
    (shards written by earlier versions, and `run` None, say nothing: taken as its)."""
    return run is None or meta.get("run") in (None, run)


def _shard_ids(path: Path, meta: Dict[str, Any]) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """A shard file's doc ids (its ``doc_id`` column) and its rejected rows' (its metadata's)."""
    import pyarrow.parquet as pq

    ids = pq.read_table(path, columns=["doc_id"]).column(0).to_numpy()
    return ids, numpy.array([r["doc_id"] for r in meta.get("rejected", ())], dtype=numpy.int64)


def holds_its_docs(path: Path, meta: Dict[str, Any]) -> bool:
    """Whether the file at `path` still holds the docs its metadata says it was
    written with: as many rows, and their doc ids those of its range that it did
    not reject, in order. Rows dropped or added since, rows reordered (sorted by
    another column) or doc ids edited (a user's edit with pyarrow, which keeps the
    metadata) make it no longer the shard its run committed: read, its docs would
    come out of doc-id order, or under other rows' ids. (Metadata without the
    count says nothing of it.)"""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_metadata(path).num_rows
        if rows != meta.get("docs", rows):
            return False
        ids, rejected = _shard_ids(path, meta)
        first, n_rows = int(meta["first_id"]), int(meta["n_rows"])
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
        return False
    # Increasing, inside the range, none rejected too, and as many as the range lacks: each of its rows once.
    return (bool((numpy.diff(ids) > 0).all()) and (len(ids) == 0 or (ids[0] >= first and ids[-1] < first + n_rows))
            and not numpy.isin(ids, rejected).any() and len(ids) + len(rejected) == n_rows)


def committed(out_dir: Path, shards: Sequence[Shard], run: Optional[str] = None) -> Dict[int, Dict[str, Any]]:
    """The planned shards whose files are in `out_dir`, cover their planned rows, still
    hold the docs they were written with (`holds_its_docs`) and were written by the
    run of digest `run` (`run_digest`)."""
    done = {}
    for shard in shards:
        path = out_dir / shard_name(shard.index)
        if path.exists():
            meta = shard_meta(path)
            if (meta is not None and (meta["first_id"], meta["n_rows"]) == (shard.first_id, shard.n_rows)
                    and of_run(meta, run) and holds_its_docs(path, meta)):
                done[shard.index] = meta
    return done


def check_complete(out_dir: Path, shards: Sequence[Shard], run: Optional[str] = None
                   ) -> Tuple[int, List[Dict[str, Any]]]:
    """Prove that every planned row is in exactly one shard file, as a doc or as a rejection,
    written by the run of digest `run` (`run_digest`; None: not checked).

    Reads each file's ``doc_id`` column and metadata. Returns (docs, rejected
    records in doc-id order); raises `ShardMismatch` naming what is missing,
    duplicated or another run's.
    """
    rejected: List[Dict[str, Any]] = []
    n_docs = 0
    missing: List[int] = []
    twice: List[int] = []
    for shard in shards:  # shards own disjoint id ranges, so each is checked on its own
        path = out_dir / shard_name(shard.index)
        meta = shard_meta(path) if path.exists() else None
        if meta is None:
            raise ShardMismatch(f"shard {shard.index} ({path.name}) is missing or unreadable")
        if not of_run(meta, run):
            raise ShardMismatch(another_run(shard.index))
        ids, rejected_ids = _shard_ids(path, meta)
        all_ids = numpy.concatenate([ids, rejected_ids])
        outside = all_ids[(all_ids < shard.first_id) | (all_ids >= shard.first_id + shard.n_rows)]
        if len(outside):
            raise ShardMismatch(f"shard {shard.index} holds doc ids outside its rows: {outside[:5].tolist()}")
        seen = numpy.bincount(all_ids - shard.first_id, minlength=shard.n_rows)
        missing.extend((numpy.flatnonzero(seen == 0) + shard.first_id).tolist())
        twice.extend((numpy.flatnonzero(seen > 1) + shard.first_id).tolist())
        n_docs += len(ids)
        rejected.extend(meta["rejected"])
    if missing or twice:
        raise ShardMismatch(
            f"the output does not hold every row exactly once: {len(missing)} missing "
            f"(doc ids {missing[:5]}), {len(twice)} more than once (doc ids {twice[:5]})"
        )
    rejected.sort(key=lambda r: r["doc_id"])
    return n_docs, rejected


# Rows back to docs ---------------------------------------------------------


def another_run(index: int) -> str:
    """Why a shard file cannot be read as its run's."""
    return (f"shard {index} ({shard_name(index)}) was written by another run (other inputs, settings or model: "
            "an actor of an earlier run that outlived its driver); run embed --ray again, which embeds it anew")


def docs_from_table(table, vocab: Vocab, component: str = "ctxembed", signature: Optional[str] = None
                    ) -> Iterator[Doc]:
    """Docs with the shard rows' tokens and vectors, as the pipeline left them.

    `table`: shard rows as a pyarrow Table or RecordBatch (a shard file read
    with `pyarrow.parquet`, any filtered or sliced part of it) or a pandas
    DataFrame. Each doc's text is rebuilt exactly from `text`, `tokens` and
    `idx`; `token.vector`, `span.vector`, `doc.vector`, `.similarity()` and
    `doc._.ctx_vectors` give the stored vectors (as float32), and
    `doc.user_data["doc_id"]` the row's doc id. A row whose tokens do not
    rebuild its text raises ValueError. `signature`: what made the vectors
    (`pipeline.signature`, which each shard's metadata records: `read_docs`
    passes it shard by shard); None: their outputs do not say what made
    them. (Not read from `table`'s own metadata: pyarrow keeps the first
    file's where it reads several, which may be another run's.)
    """
    require_ray_extra("docs_from_table", ("pyarrow",))
    import pyarrow as pa

    install_extensions()
    if not isinstance(table, (pa.Table, pa.RecordBatch)):
        table = pa.Table.from_pandas(table, preserve_index=False)
    batches = table.combine_chunks().to_batches() if isinstance(table, pa.Table) else [table]
    for batch in batches:
        doc_ids = batch.column("doc_id").to_pylist()
        texts = batch.column("text").to_pylist()
        tokens = batch.column("tokens").to_pylist()
        idx = batch.column("idx").to_pylist()
        rows, bounds = _vector_rows(batch.column("vectors"))
        for i, doc_id in enumerate(doc_ids):
            doc = _rebuild_doc(vocab, int(doc_id), texts[i], tokens[i], idx[i])
            write_outputs(doc, component, rows[bounds[i] : bounds[i + 1]], None, primary=True, set_doc_tensor=False,
                          signature=signature)
            doc.user_data[DOC_ID_KEY] = int(doc_id)
            yield doc


def _vector_rows(column) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """All token vectors of a list<list<float>> column as one float32 matrix, and each row's bounds in it."""
    per_doc = column.value_lengths().to_numpy(zero_copy_only=False)
    tokens = column.flatten()  # respects slicing, unlike the raw offsets
    values = tokens.flatten().to_numpy(zero_copy_only=False)
    widths = tokens.value_lengths().to_numpy(zero_copy_only=False)
    width = int(widths[0]) if len(widths) else 0
    if len(widths) and (widths != width).any():
        raise ValueError(f"vectors of different widths in one table: {sorted(set(widths.tolist()))[:5]}")
    rows = values.astype(numpy.float32, copy=False).reshape(len(widths), width)
    return rows, numpy.concatenate([[0], numpy.cumsum(per_doc)])


def read_docs(out_dir: Path, vocab: Vocab, batch_rows: int = 512) -> Iterator[Doc]:
    """Every embedded doc of a finished `embed --ray` run in `out_dir`, in doc-id order
    (see `docs_from_table`), reading `batch_rows` rows at a time."""
    require_ray_extra("read_docs", ("pyarrow.parquet",))
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    manifest = read_json(out_dir / MANIFEST)
    if not manifest:
        # docs_from_table reads OUTDIR/shards: the same folder given here is a slip worth naming
        hint = (f"; it is the {SHARDS} folder of the run in {out_dir.parent}: give read_docs that"
                if out_dir.name == SHARDS and (out_dir.parent / MANIFEST).is_file() else "")
        raise ValueError(f"{out_dir} holds no readable {MANIFEST}: not the output of embed --ray{hint}")
    if not manifest.get("complete"):
        raise ValueError(f"the run in {out_dir} is not complete: run embed --ray again to finish it")
    identity = manifest.get("identity")
    run = run_digest(identity) if isinstance(identity, dict) else None
    for shard in manifest["shards"]:
        path = out_dir / SHARDS / shard_name(shard["index"])
        meta = shard_meta(path) if path.exists() else None
        if meta is not None and not of_run(meta, run):
            raise ValueError(f"{out_dir}: {another_run(shard['index'])}")
        # (As a run's resume takes a shard for done: a file deleted, rewritten without its
        # metadata, copied from another shard, or with rows dropped, added, reordered or
        # relabelled since, was read as it was: docs lost, given twice, out of order or under
        # another row's id, without a word.)
        planned = (shard.get("first_id"), shard.get("n_rows"))
        if (meta is None or not holds_its_docs(path, meta)
                or (None not in planned and (meta.get("first_id"), meta.get("n_rows")) != planned)):
            raise ValueError(f"{out_dir}: shard {shard['index']} ({path.name}) is missing, unreadable, or not the "
                             "file the run wrote (edited, or another shard's, since); run embed --ray again, which "
                             "embeds it anew")
        component, signature = meta.get("component", "ctxembed"), meta.get("signature")
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            yield from docs_from_table(batch, vocab, component=component,
                                       signature=signature if isinstance(signature, str) else None)


def _rebuild_doc(vocab: Vocab, doc_id: int, text: str, tokens: List[str], idx: List[int]) -> Doc:
    if len(tokens) != len(idx):
        raise ValueError(f"doc {doc_id}: {len(tokens)} tokens but {len(idx)} offsets")
    spaces = []
    for i, (token, start) in enumerate(zip(tokens, idx)):
        end = start + len(token)
        following = idx[i + 1] if i + 1 < len(idx) else len(text)
        # spaCy keeps at most one plain space after a token; any other gap is a token itself.
        spaces.append(following == end + 1 and text[end : following] == " ")
    doc = Doc(vocab, words=tokens, spaces=spaces)
    if doc.text != text or [t.idx for t in doc] != idx:
        raise ValueError(f"doc {doc_id}: its tokens and offsets do not rebuild its text")
    return doc

