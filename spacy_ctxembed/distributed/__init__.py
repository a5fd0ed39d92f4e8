"""Corpus embedding on Ray Data: many actors, Parquet shards, exactly once, resumable.

    from spacy_ctxembed.distributed import embed_corpus, read_docs
    embed_corpus("corpus.jsonl", "out/", actors=4)          # a local Ray, or address="auto"
    docs = list(read_docs("out/", nlp.vocab))                 # Docs with vectors and hooks

Ray is imported only when a run starts: install it with the `[ray]` extra.
See docs/scaling.md.
"""
from .actor import ModelChanged
from .extra import MissingExtra
from .run import DifferentRun, NoGPUs, NoRayAt, OutputInUse, OutputNotWritable, ShardsFailed, embed_corpus
from .shards import Float16Overflow, ShardMismatch, docs_from_table, read_docs
from .sources import InputError

__all__ = ["DifferentRun", "Float16Overflow", "InputError", "MissingExtra", "ModelChanged", "NoGPUs", "NoRayAt",
           "OutputInUse", "OutputNotWritable", "ShardMismatch", "ShardsFailed", "docs_from_table", "embed_corpus",
           "read_docs"]
