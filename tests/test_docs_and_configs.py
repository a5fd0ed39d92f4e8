"""Docs that paste and configs that are complete.

Every ```ini block in the README and docs/ parses as spaCy parses a config,
with no comment swallowed into a value; every shipped config passes
`spacy debug config`.
"""
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator, Tuple

import pytest
import spacy
from spacy.tokens import DocBin
from thinc.api import Config

from spacy_ctxembed.models.hf_loading import resolve_model_dir

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONFIGS = sorted((ROOT / "configs").glob("*.cfg"))


def fenced_blocks(language: str) -> Iterator[Tuple[Path, int, str]]:
    """Each ```LANGUAGE block of the README and docs/: its file, its place among the
    file's blocks of that language, and its text."""
    for path in DOCS:
        text = path.read_text(encoding="utf8")
        for i, match in enumerate(re.finditer(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)):
            yield path, i, match.group(1)


def _ini_blocks():
    for path, i, block in fenced_blocks("ini"):
        yield pytest.param(block, id=f"{path.name}-{i}")


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


def _readme_block(tag: str) -> str:
    """The ```bash block after the line "<!-- tag -->", as .ci/run reads it."""
    text = (ROOT / "README.md").read_text(encoding="utf8")
    match = re.search(rf"^<!-- {tag} -->\n```bash\n(.*?)```", text, flags=re.S | re.M)
    assert match, tag
    return match.group(1)


def _readme_component_blocks(factory: str) -> Config:
    """The README's ```ini block that starts with `[components.FACTORY]`."""
    text = (ROOT / "README.md").read_text(encoding="utf8")
    for match in re.finditer(r"```ini\n(.*?)```", text, flags=re.S):
        if match.group(1).startswith(f"[components.{factory}]\n"):
            return Config().from_str(_with_parents(match.group(1)), interpolate=False)
    raise AssertionError(f"no [components.{factory}] block in the README")


def _sections(block, path=()):
    """(path, setting names) of every section of a config block."""
    yield path, {key for key, value in block.items() if not isinstance(value, dict)}
    for key, value in block.items():
        if isinstance(value, dict):
            yield from _sections(value, path + (key,))


@pytest.mark.parametrize("factory", ["ctxembed_bert", "ctxembed_elmo"])
def test_readme_component_blocks_have_every_setting(factory):
    """The README's config blocks show every setting the component's config has, v1 ones included."""
    nlp = spacy.blank("en")
    nlp.add_pipe(factory)
    actual = dict(_sections(nlp.config["components"][factory]))
    shown = dict(_sections(_readme_component_blocks(factory)["components"][factory]))
    assert shown == actual


@pytest.mark.parametrize("config_path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_give_every_setting_of_their_ctxembed_components(config_path):
    """The README says the configs are complete: each ctxembed component block
    writes out every setting its factory has (`spacy init fill-config` adds none)."""
    config = Config().from_str(config_path.read_text(encoding="utf8"), interpolate=False)
    for name, block in config["components"].items():
        factory = block.get("factory")
        if factory not in ("ctxembed_bert", "ctxembed_elmo", "ctxembed_from_trf"):
            continue
        nlp = spacy.blank("en")
        nlp.add_pipe(factory)
        expected = {key for key, value in nlp.config["components"][factory].items() if not isinstance(value, dict)}
        written = {key for key, value in block.items() if not isinstance(value, dict)}
        assert expected - written == set(), (name, sorted(expected - written))


def test_setup_command_can_run_twice():
    """One command line; its `embed` replaces an earlier output, whose directory git ignores."""
    setup = _readme_block("setup-command").strip()
    assert "\n" not in setup
    embed = next(part for part in setup.split("&&") if " embed " in part).split()
    assert "--overwrite" in embed
    output = embed[embed.index("-o") + 1]
    ignored = (ROOT / ".gitignore").read_text(encoding="utf8").splitlines()
    assert f"/{output}/" in ignored or f"/{output}" in ignored


def test_project_lock_is_ignored():
    """Issue 14: `project.lock` is not tracked and is ignored, so running the workflow leaves the tree clean."""
    ignored = (ROOT / ".gitignore").read_text(encoding="utf8").splitlines()
    assert "/project.lock" in ignored or "project.lock" in ignored
    if (ROOT / ".git").exists() and shutil.which("git"):
        tracked = subprocess.run(["git", "ls-files", "project.lock"], cwd=ROOT, capture_output=True, text=True)
        assert tracked.returncode == 0 and tracked.stdout.strip() == ""


@pytest.mark.parametrize("corpus", ["ud", "wnut17"])
def test_the_frozen_bert_and_elmo_arms_train_the_same_heads(corpus):
    """The ELMo arms kept the bare 96-wide listener after the BERT arms moved to a
    256-wide listener under a MaxoutWindowEncoder (+13.4 F on WNUT-17,
    docs/benchmarks.md): a comparison would have credited the head to the model.
    Everything but the embedder must be the same."""
    bert, elmo = (Config().from_disk(ROOT / "configs" / f"{corpus}-{arm}.cfg", interpolate=False)
                  for arm in ("bert", "elmo"))
    renamed = Config().from_str(elmo.to_str().replace("ctxembed_elmo", "ctxembed_bert"), interpolate=False)
    for section in ("training", "corpora", "initialize", "system"):
        assert renamed[section] == bert[section], section
    heads = [name for name in bert["components"] if name != "ctxembed_bert"]
    assert heads and all(renamed["components"][name] == bert["components"][name] for name in heads)
    assert renamed["nlp"]["pipeline"] == bert["nlp"]["pipeline"]


def test_the_analysis_library_parts_docs_names_are_its_public_names():
    """docs/analysis.md's "Library" section names the parts that work on their own: each is in
    `spacy_ctxembed.analysis.__all__` (what `from spacy_ctxembed.analysis import *` gives), as is every
    other name the package imports for its users (`unit_rows`, ...)."""
    import inspect

    import spacy_ctxembed.analysis as analysis

    text = (ROOT / "docs" / "analysis.md").read_text(encoding="utf8")
    section = text.split("\n## Library\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"\b([A-Za-z_]\w*)\b", section.split("```python\n", 1)[1].split("```", 1)[0]))
    named |= set(re.findall(r"`([A-Za-z_]\w*)`", section))
    parts = {name for name in named if not inspect.ismodule(getattr(analysis, name, analysis))}
    assert {"analyze", "PipelineSource", "explore_word", "choose_clusters", "embed_corpus"} <= parts  # the premise
    assert sorted(parts - set(analysis.__all__)) == []
    star: dict = {}
    exec("from spacy_ctxembed.analysis import *", star)
    assert parts <= set(star)
    imported = {name for name, value in vars(analysis).items() if not name.startswith("_")
                and not inspect.ismodule(value)}
    assert sorted(imported ^ set(analysis.__all__)) == []


def _github_anchors(path: Path) -> set:
    """The anchors GitHub gives the headings of a Markdown file: lowercased, every character
    but letters, digits, spaces, "-" and "_" dropped, spaces made "-", and "-1", "-2", ...
    after a repeated one. Headings inside fenced blocks are not headings."""
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf8"), flags=re.S | re.M)
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_the_links_between_the_docs_resolve():
    """Every relative link of the README and docs/ (`[x](file.md#anchor)`, `[x](#anchor)`)
    names a file that exists and, with an anchor, a heading of that file."""
    broken, checked = [], 0
    for path in DOCS:
        text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf8"), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            checked += 1
            if not linked.exists():
                broken.append(f"{path.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _github_anchors(linked):
                broken.append(f"{path.name}: {target} (no such heading)")
    assert checked >= 50  # the premise: the docs link to each other
    assert broken == []


def test_every_command_line_option_is_documented():
    """Every option of `python -m spacy_ctxembed embed|demo|analyze` is named in the README or docs/."""
    import typer.main

    from spacy_ctxembed.cli import app

    text = "\n".join(path.read_text(encoding="utf8") for path in DOCS)
    commands = typer.main.get_command(app).commands
    assert set(commands) == {"embed", "demo", "analyze"}
    missing = [f"{name} {option}" for name, command in commands.items() for param in command.params
               for option in param.opts
               if option.startswith("--") and not re.search(rf"(?<![\w-]){option}(?![\w-])", text)]
    assert missing == []
