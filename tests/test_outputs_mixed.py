"""Host and device outputs mixed: a doc from a DocBin (numpy) meets a GPU doc (cupy).

Without a GPU, `DeviceArray` stands in for a cupy array where it matters: numpy
refuses to convert it (cupy raises TypeError on implicit conversion) and `.get()`
copies it to the host. tests/test_gpu.py runs the same cases with cupy.
"""
from types import SimpleNamespace

import numpy
import pytest
import spacy
from spacy.tokens import Doc

from spacy_ctxembed import restore_vectors
from spacy_ctxembed.outputs import install_extensions, similarity, write_outputs


class DeviceArray:
    """A stand-in for a cupy array: shape and size, `.get()`, and no implicit conversion."""

    def __init__(self, array: numpy.ndarray) -> None:
        self._array = numpy.array(array)
        self.shape, self.size, self.dtype = self._array.shape, self._array.size, self._array.dtype

    def get(self) -> numpy.ndarray:
        return self._array.copy()

    def __len__(self) -> int:
        return len(self._array)

    def __array__(self, *args, **kwargs):
        # cupy's words: a device array never becomes a numpy array by accident.
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()`")


def test_the_stand_in_is_refused_by_numpy_as_cupy_is():
    with pytest.raises(TypeError):
        numpy.asarray(DeviceArray(numpy.zeros((2, 3), dtype="float32")))


def _cosine(u, v) -> float:
    u, v = numpy.asarray(u, dtype="float64"), numpy.asarray(v, dtype="float64")
    return float(u @ v / numpy.linalg.norm(u) / numpy.linalg.norm(v))


def test_similarity_of_a_host_and_a_device_vector():
    rng = numpy.random.default_rng(0)
    u, v = rng.standard_normal((2, 16)).astype("float32")
    host = SimpleNamespace(vector=u, text="host")
    device = SimpleNamespace(vector=DeviceArray(v), text="device")
    assert similarity(host, device) == pytest.approx(_cosine(u, v), abs=1e-6)
    assert similarity(device, host) == pytest.approx(_cosine(u, v), abs=1e-6)


@pytest.mark.parametrize("device_first", [False, True], ids=["host-then-device", "device-then-host"])
def test_from_docs_joins_host_and_device_outputs(device_first):
    install_extensions()
    nlp = spacy.blank("en")
    rng = numpy.random.default_rng(1)
    host, device = nlp("It was nice out."), nlp("I ran to the park.")
    host_layers = rng.standard_normal((2, len(host), 8)).astype("float32")
    device_layers = rng.standard_normal((2, len(device), 8)).astype("float32")
    write_outputs(host, "ctxembed_bert", host_layers.mean(axis=0), host_layers, primary=True, set_doc_tensor=False)
    write_outputs(device, "ctxembed_bert", DeviceArray(device_layers.mean(axis=0)), DeviceArray(device_layers),
                  primary=True, set_doc_tensor=False)
    docs, layers = [host, device], [host_layers, device_layers]
    if device_first:
        docs, layers = docs[::-1], layers[::-1]
    joined = restore_vectors(Doc.from_docs(docs, exclude=["tensor"]))
    expected = numpy.concatenate(layers, axis=1)
    assert isinstance(joined._.ctx_vectors, numpy.ndarray) and isinstance(joined._.ctx_layers, numpy.ndarray)
    numpy.testing.assert_array_equal(joined._.ctx_layers, expected)
    numpy.testing.assert_array_equal(joined._.ctx_vectors, numpy.concatenate([x.mean(axis=0) for x in layers]))
    numpy.testing.assert_array_equal(joined[len(docs[0])].vector, layers[1][:, 0].mean(axis=0))
