"""`spacy package` on a pipeline, then load the built package in a fresh interpreter."""
import subprocess
import sys
import tarfile

import numpy


def assert_packages_and_loads(nlp, weights_file: str, text: str, tmp_path) -> None:
    """Package `nlp` as an sdist, check it ships `weights_file`, install it into a
    scratch directory, load it by package name in a new process, compare vectors."""
    original = nlp(text)._.ctx_vectors
    nlp.to_disk(tmp_path / "pipeline")
    (tmp_path / "packages").mkdir()
    subprocess.run(
        [sys.executable, "-m", "spacy", "package", str(tmp_path / "pipeline"), str(tmp_path / "packages"),
         "--name", "ctxembed_test", "--version", "0.0.1", "--build", "sdist", "--force"],
        check=True, capture_output=True,
    )
    sdist = next((tmp_path / "packages").rglob("*.tar.gz"))
    with tarfile.open(sdist) as tar:
        assert any(name.endswith(weights_file) for name in tar.getnames())
    assert "spacy-ctxembed" in next((tmp_path / "packages").rglob("meta.json")).read_text()
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(tmp_path / "site"), str(sdist)],
        check=True, capture_output=True,
    )
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path / 'site')!r}); import spacy, numpy; "
        f"doc = spacy.load('en_ctxembed_test')({text!r}); "
        f"numpy.save({str(tmp_path / 'v.npy')!r}, doc._.ctx_vectors)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    numpy.testing.assert_allclose(numpy.load(tmp_path / "v.npy"), original, atol=1e-6)
