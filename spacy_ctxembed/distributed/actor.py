"""The work of one Ray actor: load the pipeline once, then embed whole shards."""
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy
from spacy.tokens import Doc
from thinc.api import to_numpy

from ..alignment import token_char_spans
from ..errors import first_line
from ..fileio import MODEL_CHANGED, model_identity
from ..pipeline.build import load_pipeline, primary_component
from .shards import build_table, write_shard
from .sources import RowGroups, Shard, read_shard


class ShardEmbedder:
    """A Ray Data callable class: `map_batches(ShardEmbedder, compute=ActorPoolStrategy(...))`.

    Each input row is one planned shard (its `Shard` as JSON, column
    ``shard``). The actor reads the shard's rows itself, runs them through
    `nlp.pipe`, and commits the shard's Parquet file; it returns one summary
    row per shard. A shard is the unit that Ray retries: if the actor dies,
    the restarted actor writes the same file again, and the rename makes the
    second write replace the first whole.
    """

    def __init__(
        self,
        out_dir: str,
        model: Optional[str],
        config: Optional[str],
        use_gpu: bool,
        batch_size: int,
        dtype: str,
        threads: int,
        model_identity: Optional[Dict[str, Any]] = None,
        run: Optional[str] = None,
    ) -> None:
        """model_identity: what the driver recorded of the model (`fileio.model_identity`).
        run: the run's digest (`shards.run_digest`), recorded in each shard file."""
        import torch

        # Ray gives the actor its CPUs through OMP_NUM_THREADS; torch reads that
        # only at start-up, so say it again in case torch was imported earlier.
        torch.set_num_threads(max(threads, 1))
        self.nlp = load_pipeline(model=model, config=config, gpu_id=0 if use_gpu else -1)
        # Checked at the first shard, not here: Ray reports an error raised while an
        # actor is made as "the actor died", without the error itself.
        self._unchecked: Optional[tuple] = (model, config, model_identity)
        self.out_dir = Path(out_dir)
        self.batch_size = batch_size
        self.dtype = dtype
        self.run = run
        # (`load_pipeline` refused a pipeline without one: `check_writes_vectors`.)
        self.component = primary_component(self.nlp)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.row_groups = RowGroups()  # (the next shard is often in the same Parquet row group)

    def __call__(self, batch: Dict[str, numpy.ndarray]) -> Dict[str, numpy.ndarray]:
        summaries: Dict[str, List[Any]] = {key: [] for key in SUMMARY}
        for spec in batch["shard"]:
            summary = self.embed_shard(Shard.from_dict(json.loads(str(spec))))
            for key in SUMMARY:
                summaries[key].append(summary[key])
        return {key: numpy.asarray(values) for key, values in summaries.items()}

    def embed_shard(self, shard: Shard) -> Dict[str, Any]:
        if self._unchecked is not None:
            _check_model(*self._unchecked)
            self._unchecked = None
        start = time.perf_counter()
        attempts = self.out_dir / attempts_name(shard.index)
        with open(attempts, "a", encoding="utf8") as f:  # (a line per start: see `failed_shards`)
            f.write(f"{self.worker}\n")
        docs, rejected = read_shard(shard, self.nlp.max_length, self.row_groups)
        doc_ids = [doc_id for doc_id, _ in docs]
        texts, tokens, idx, vectors = [], [], [], []
        for doc in _failure_named(self.nlp.pipe((text for _, text in docs), batch_size=self.batch_size), shard, docs):
            rows = doc._.ctx_vectors
            if rows is None:
                raise ValueError(f"[{self.component}] left no vectors on a doc of shard {shard.index}")
            texts.append(doc.text)
            tokens.append([t.text for t in doc])
            idx.append(token_char_spans(doc)[0].astype(numpy.int32))
            vectors.append(to_numpy(rows))  # cupy on GPU
        table = build_table(doc_ids, texts, tokens, idx, vectors, dtype=self.dtype)
        # What made the vectors (`pipeline.signature`), for the docs read back (`read_docs`):
        # listeners and similarity check them as any component's outputs.
        signature = getattr(self.nlp.get_pipe(self.component), "signature", None) if docs else None
        write_shard(self.out_dir, shard, table, rejected,
                    {"component": self.component, "dtype": self.dtype, "worker": self.worker, "signature": signature,
                     "run": self.run})
        attempts.unlink(missing_ok=True)
        return {"shard": shard.index, "docs": len(docs), "rejected": len(rejected),
                "tokens": sum(len(t) for t in tokens), "seconds": time.perf_counter() - start,
                "pid": os.getpid(), "host": socket.gethostname()}


SUMMARY = ("shard", "docs", "rejected", "tokens", "seconds", "pid", "host")


class PipelineFailed(RuntimeError):
    """The pipeline raised on a doc of a shard: the message names the doc it failed at
    or after (its file and line or row), the shard's rows, and the pipeline's error."""


def _failure_named(pipe: Iterator[Doc], shard: Shard, docs: List[Tuple[int, str]]) -> Iterator[Doc]:
    """The docs `nlp.pipe` gives; what it raises, as a `PipelineFailed`. (Its own
    error named no row: one doc among a corpus's millions, of some shard.) The
    docs come in order, so the doc it failed on is the first not given, or one
    after it in the same batch."""
    given = 0
    while True:
        try:
            doc = next(pipe)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001 - any error of the pipeline's: it is raised on, named
            doc_id = docs[given][0] if given < len(docs) else shard.first_id + shard.n_rows - 1
            where = "row" if shard.kind == "parquet" else "line"
            raise PipelineFailed(
                f"the pipeline failed on doc {doc_id} ({shard.path}, {where} "
                f"{shard.first_line + doc_id - shard.first_id}) or a doc after it in shard {shard.index} (doc ids "
                f"{shard.first_id}-{shard.first_id + shard.n_rows - 1}): {first_line(e)}") from e
        given += 1
        yield doc


class ModelChanged(RuntimeError):
    """The model an actor loaded is not the one the run recorded when it started."""

    def __init__(self, model: Optional[str]) -> None:
        super().__init__(f"embed_corpus: model = {model!r}: {MODEL_CHANGED} (a model changed on purpose makes "
                         "another run: overwrite)")
        self.model = model

    def __reduce__(self) -> Tuple[Any, ...]:
        # Raised in an actor, it reaches the driver pickled: by default remade from its
        # message (args), as ModelChanged(message), which said the message twice over.
        return ModelChanged, (self.model,)


def _check_model(model: Optional[str], config: Optional[str], recorded: Optional[Dict[str, Any]]) -> None:
    """The files an actor loaded its pipeline from must be those the driver checksummed
    when the run started. Actors load them later, each at its own start (one restarted
    after a crash, many shards on): a model folder replaced meanwhile (`spacy train`
    saving model-best there) would give one "complete" output of two models' vectors.
    Checked after loading: a folder replaced before or during the load differs now."""
    if recorded is None:
        return
    from thinc.api import Config

    parsed = None if config is None else Config().from_str(config, interpolate=False)
    now = model_identity(model, parsed)
    if now != recorded:
        raise ModelChanged(model)


def attempts_name(index: int) -> str:
    """The hidden file an actor appends a line to each time it starts shard `index`,
    removed once the shard is committed."""
    return f".attempts-{index:06d}"
