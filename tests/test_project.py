"""A smoke run of the `spacy project` workflow: every arm, ELMo with the test fixture."""
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


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "wnut17").is_dir(), reason="needs ../shared/data")
def test_workflow_smoke_run(tmp_path):
    for item in ("project.yml", "configs", "scripts"):
        source = ROOT / item
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / item)
    options, weights = write_elmo_fixture(tmp_path / "elmo")
    result = subprocess.run(
        [sys.executable, "-m", "weasel", "run", "all", str(tmp_path),
         "--vars.data_dir", str(SHARED_DATA), "--vars.n_sentences", "40", "--vars.max_steps", "10",
         "--vars.eval_frequency", "5", "--vars.elmo_options", str(options), "--vars.elmo_weights", str(weights)],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    comparison = json.loads((tmp_path / "metrics" / "comparison.json").read_text())
    assert set(comparison) == {"cnn", "bert", "elmo"}
    assert all({"UD LAS", "UD tag acc", "WNUT-17 NER F"} <= set(scores) for scores in comparison.values())
    assert (tmp_path / "metrics" / "comparison.md").read_text().startswith("| arm |")
    assert (tmp_path / "metrics" / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    for task in ("ud", "wnut17"):
        for arm in ("cnn", "bert", "elmo"):
            assert (tmp_path / "training" / f"{task}-{arm}" / "model-best").is_dir()
    # WNUT-17 keeps its own label strings.
    ner = spacy.load(tmp_path / "training" / "wnut17-bert" / "model-best").get_pipe("ner")
    assert {"person", "creative-work"} <= set(ner.labels)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "wnut17").is_dir(), reason="needs ../shared/data")
def test_elmo_arm_is_skipped_without_weights(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_arm.py"), "ud", "elmo"],
                            cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "skipped" in result.stdout and not (tmp_path / "training").exists()
