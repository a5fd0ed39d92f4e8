"""Docs that paste and configs that are complete.

Every ```ini block in the README and docs/ parses as spaCy parses a config,
with no comment swallowed into a value; every shipped config passes
`spacy debug config`.
"""
import re
from pathlib import Path

import pytest
import spacy
from spacy.tokens import DocBin
from thinc.api import Config

from spacy_ctxembed.models.hf_loading import resolve_model_dir

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONFIGS = sorted((ROOT / "configs").glob("*.cfg"))


def _ini_blocks():
    for path in DOCS:
        text = path.read_text(encoding="utf8")
        for i, match in enumerate(re.finditer(r"```ini\n(.*?)```", text, flags=re.S)):
            yield pytest.param(match.group(1), id=f"{path.name}-{i}")


def _values(config):
    for value in config.values():
        if isinstance(value, dict):
            yield from _values(value)
        else:
            yield value


def _with_parents(block: str) -> str:
    """A fragment as it sits in a whole config: after its parent sections
    (`[components]` for `[components.ner.model]`), which it does not repeat."""
    sections = re.findall(r"^\[([^\]]+)\]", block, flags=re.M)
    parents = []
    for section in sections:
        parts = section.split(".")
        for n in range(1, len(parts)):
            parent = ".".join(parts[:n])
            if parent not in sections and parent not in parents:
                parents.append(parent)
    return "".join(f"[{parent}]\n" for parent in parents) + block


@pytest.mark.parametrize("block", list(_ini_blocks()))
def test_config_blocks_parse_as_written(block):
    config = Config().from_str(_with_parents(block), interpolate=False)
    assert config, "an empty block"
    swallowed = [v for v in _values(config) if isinstance(v, str) and "#" in v]
    assert not swallowed, f"comments inside values: {swallowed}"


def test_there_are_blocks_to_check():
    assert len(list(_ini_blocks())) >= 4


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "tiny.spacy"
    DocBin(docs=[spacy.blank("en")("A tiny doc .")]).to_disk(path)
    return path


@pytest.mark.parametrize("config_path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_pass_spacy_debug_config(config_path, tiny_corpus, capsys):
    from spacy.cli.debug_config import debug_config

    overrides = {"paths.train": str(tiny_corpus), "paths.dev": str(tiny_corpus)}
    if "bert_model" in Config().from_disk(config_path, interpolate=False)["paths"]:
        # What run_arm.py passes: spacy-transformers needs a model directory, ctxembed takes null.
        overrides["paths.bert_model"] = str(resolve_model_dir(None, component="test"))
    debug_config(config_path, overrides=overrides)
    assert "Config is valid" in capsys.readouterr().out


def _listeners(block, path=()):
    """(path, settings) of every block with an `upstream` setting, however deeply nested."""
    if isinstance(block, dict):
        if "upstream" in block:
            yield path, block
        for key, value in block.items():
            yield from _listeners(value, path + (key,))


@pytest.mark.parametrize("config_path", [p for p in CONFIGS if "cnn" not in p.name], ids=lambda p: p.name)
def test_shipped_configs_name_the_upstream(config_path):
    config = Config().from_disk(config_path, interpolate=False)
    pipeline = config["nlp"]["pipeline"]
    for name, block in config["components"].items():
        listeners = list(_listeners(block.get("model", {})))
        if name in pipeline[1:]:  # every component after the embedder listens to it
            assert listeners, (config_path.name, name)
        for path, listener in listeners:
            assert listener["upstream"] in pipeline[: pipeline.index(name)], (config_path.name, name, path)


@pytest.mark.parametrize("config_path", [p for p in CONFIGS if "cnn" not in p.name], ids=lambda p: p.name)
def test_shipped_configs_use_the_v2_names(config_path):
    text = config_path.read_text(encoding="utf8")
    for old in ("BertEmbedder.v1", "ElmoEmbedder.v1", "TrfPooler.v1", "ContextualListener.v1"):
        assert old not in text
