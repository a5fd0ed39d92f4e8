"""A smoke run of the `spacy project` workflow: every arm, ELMo with the test fixture."""
import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import spacy

from .conftest import SHARED_DATA
from .elmo_fixture import write_elmo_fixture

ROOT = Path(__file__).resolve().parents[1]


ARMS = {"all": ("cnn", "bert", "elmo"), "all-finetune": ("bert-ft", "st")}


@pytest.fixture(scope="module")
def small_bert_dir(tmp_path_factory, minilm_dir) -> Path:
    """A random 2-layer, 32-wide BERT with the MiniLM tokenizer and 512
    positions (the st arm's 128-token windows need more than the conftest's
    tiny BERT's 64): the BERT arms' plumbing at a fraction of MiniLM's time.
    (The README's set-up command runs the embedded MiniLM itself.)"""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("small-bert")
    torch.manual_seed(0)
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
              ).save_pretrained(path, safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(path)
    return path


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "wnut17").is_dir(), reason="needs ../shared/data")
def test_workflow_smoke_run(tmp_path, small_bert_dir):
    """Both workflows on tiny data: every arm trains, is evaluated, and reaches the comparison.
    (The two workflows run side by side, each in its own copy of the project: most of
    their time is single-threaded process start-up. The comparison of all arms is then
    made again from both copies' metrics, as one project directory would hold them.)"""
    options, weights = write_elmo_fixture(tmp_path / "elmo")
    runs = {}
    with contextlib.ExitStack() as logs:
        for workflow in ARMS:
            project = tmp_path / workflow
            project.mkdir()
            for item in ("project.yml", "configs", "scripts"):
                source = ROOT / item
                (shutil.copytree if source.is_dir() else shutil.copy)(source, project / item)
            # (Output to a file, not a pipe: a full pipe would hold one run up while the other is waited for.)
            log = logs.enter_context((tmp_path / f"{workflow}.log").open("w"))
            runs[workflow] = subprocess.Popen(
                [sys.executable, "-m", "weasel", "run", workflow, str(project),
                 "--vars.data_dir", str(SHARED_DATA), "--vars.n_sentences", "40", "--vars.max_steps", "10",
                 "--vars.eval_frequency", "5", "--vars.ft_max_steps", "4", "--vars.ft_eval_frequency", "2",
                 "--vars.elmo_options", str(options), "--vars.elmo_weights", str(weights),
                 "--vars.bert_model", str(small_bert_dir)],
                cwd=project, stdout=log, stderr=subprocess.STDOUT,
            )
        returncodes = {workflow: run.wait() for workflow, run in runs.items()}
    for workflow, returncode in returncodes.items():
        assert returncode == 0, workflow + ": " + (tmp_path / f"{workflow}.log").read_text()[-6000:]
    merged = tmp_path / "all"  # (the project directory the comparison of all arms is made in)
    for directory in ("metrics", "training"):
        shutil.copytree(tmp_path / "all-finetune" / directory, merged / directory, dirs_exist_ok=True)
    subprocess.run([sys.executable, "scripts/compare_arms.py"], cwd=merged, check=True, capture_output=True)
    comparison = json.loads((merged / "metrics" / "comparison.json").read_text())
    assert set(comparison) == {arm for arms in ARMS.values() for arm in arms}
    for arm, row in comparison.items():
        assert {"UD LAS", "UD tag acc", "WNUT-17 NER F"} <= set(row), arm
        for task in ("UD", "WNUT-17"):
            costs = ("train min", "train CPU min", "words/s", "MB")
            assert all(row[f"{task} {cost}"] > 0 for cost in costs), (arm, row)
    assert comparison["bert-ft"]["UD max_steps"] == 4 and comparison["bert"]["UD max_steps"] == 10
    table = (merged / "metrics" / "comparison.md").read_text()
    assert table.startswith("| arm |") and "| st |" in table and "UD train min" in table
    assert (merged / "metrics" / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    for task in ("ud", "wnut17"):
        for arm in comparison:
            assert (merged / "training" / f"{task}-{arm}" / "model-best").is_dir()
    # WNUT-17 keeps its own label strings.
    ner = spacy.load(merged / "training" / "wnut17-bert" / "model-best").get_pipe("ner")
    assert {"person", "creative-work"} <= set(ner.labels)
    # The fine-tuned arm saved its own encoder; st is spacy-transformers' own component.
    assert (merged / "training" / "wnut17-bert-ft" / "model-best" / "ctxembed_bert" / "model").is_dir()
    assert spacy.load(merged / "training" / "wnut17-st" / "model-best").pipe_names == ["transformer", "ner"]


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "wnut17").is_dir(), reason="needs ../shared/data")
def test_elmo_arm_is_skipped_without_weights(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_arm.py"), "ud", "elmo"],
                            cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "skipped" in result.stdout and not (tmp_path / "training").exists()


def test_the_frozen_bert_arm_mixes_every_layer_of_the_model_it_is_given(tmp_path):
    """The configs list MiniLM's 7 hidden states: with another --bert-model the
    frozen arm mixed the bottom half of a 12-layer model without a word (and a
    4-layer one failed at initialize). run_arm.py passes the model's own layers."""
    import argparse
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("run_arm", ROOT / "scripts" / "run_arm.py")
    run_arm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_arm)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 12}))
    for model, depth in ((str(tmp_path), 12), ("", 6)):
        args = argparse.Namespace(arm="bert", bert_model=model, mixed_precision=False)
        overrides = run_arm.arm_overrides(args)
        at = overrides.index("--components.ctxembed_bert.model.encoder.layers")
        assert json.loads(overrides[at + 1]) == list(range(depth + 1))
    ft = run_arm.arm_overrides(argparse.Namespace(arm="bert-ft", bert_model=str(tmp_path), mixed_precision=False))
    assert "--components.ctxembed_bert.model.encoder.layers" not in ft  # (the fine-tuned arm takes the top layer)


def _run_arm_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_arm", ROOT / "scripts" / "run_arm.py")
    run_arm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_arm)
    return run_arm


@pytest.mark.parametrize("arm, steps, message", [
    # (`--vars.max_steps 20` alone, eval_frequency's 200 left: model-best was the pipeline
    # after step 0, evaluated and recorded under max_steps 20)
    ("cnn", {"max_steps": 20, "eval_frequency": 200}, r"--max-steps 20 is not a multiple of --eval-frequency 200:"
                                                      r".* steps 1\.\.20 would be trained and never scored"),
    ("bert-ft", {"max_steps": 250, "eval_frequency": 100},
     r".*steps 201\.\.250 .*\(vars ft_max_steps, ft_eval_frequency\)"),
    ("bert", {"max_steps": 0, "patience": 50}, r"--patience 50 is below --eval-frequency 200"),
    ("cnn", {"eval_frequency": 0}, r"--eval-frequency 0: must be at least 1"),
])
def test_steps_that_would_never_be_scored_are_refused_before_training(tmp_path, monkeypatch, arm, steps, message):
    """run_arm.py evaluates model-best, which spacy train saves only at its
    evaluations: steps past the last one were trained for nothing, and the
    metrics said max_steps of a pipeline that had not had them."""
    import argparse

    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(task="ud", arm=arm, **{"max_steps": 2000, "patience": 800, "eval_frequency": 200,
                                                    **steps}, bert_model="", gpu_id=-1, mixed_precision=False,
                              elmo_options="", elmo_weights="")
    with pytest.raises(SystemExit, match=f"^ud-{arm}: " + message):
        _run_arm_module().main(args)
    assert not (tmp_path / "training").exists()


def test_the_project_defaults_score_every_step():
    import srsly

    run_arm = _run_arm_module()
    v = srsly.read_yaml(ROOT / "project.yml")["vars"]
    run_arm.check_steps("ud-bert", v["max_steps"], v["eval_frequency"], v["patience"])
    run_arm.check_steps("ud-bert-ft", v["ft_max_steps"], v["ft_eval_frequency"], None)


def test_convert_reruns_when_the_data_it_reads_changes(tmp_path, monkeypatch):
    """`convert` listed only its scripts as deps: new data at the same data_dir
    left the old corpus in place ("Skipping 'convert': nothing changed")."""
    from weasel.util import load_project_config

    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import convert

    shutil.copy(ROOT / "project.yml", tmp_path)
    project = load_project_config(tmp_path, overrides={"vars.data_dir": "/data"})
    command = next(c for c in project["commands"] if c["name"] == "convert")
    assert {f"/data/{source}" for _, source, _ in convert.FILES} <= set(command["deps"])
    assert {f"corpus/{output}" for _, _, output in convert.FILES} == set(command["outputs"])
    # (and `spacy project assets` downloads them where `--vars.data_dir assets` reads them)
    assert {f"assets/{source}" for _, source, _ in convert.FILES} == {asset["dest"] for asset in project["assets"]}


def test_every_training_command_declares_what_run_arm_writes():
    """The train-* commands declared no outputs, so `spacy project run` trained every arm
    again on each call, however long it took, where nothing had changed."""
    import srsly

    commands = [c for c in srsly.read_yaml(ROOT / "project.yml")["commands"] if c["name"].startswith("train-")]
    assert len(commands) == 10
    for command in commands:
        name = command["name"][len("train-"):]
        task, arm = name.split("-", 1)
        assert command["script"][0].startswith(f"python scripts/run_arm.py {task} {arm} "), command
        assert command["outputs"] == [f"training/{name}/model-best", f"metrics/{name}.json"], command
