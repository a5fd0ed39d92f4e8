"""One pipeline from several threads; fork handling only where it is needed."""
import os
import subprocess
import sys

import numpy
import spacy

from .conftest import ctx_config, run_in_threads

TEXTS = ["I ran to the park .", "Yesterday I ran some significance tests on the data .", "Short", ""] * 4


def _nlp(model_dir, initialize=True, **settings):
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=model_dir, layers=[1], store_layers=True, **settings))
    if initialize:
        nlp.initialize()
    return nlp


def test_two_threads_give_the_single_thread_vectors(tiny_bert_dir):
    nlp = _nlp(tiny_bert_dir)
    expected = [d._.ctx_layers.copy() for d in nlp.pipe(TEXTS)]
    results = run_in_threads(4, lambda: [d._.ctx_layers.copy() for d in nlp.pipe(TEXTS, batch_size=3)])
    for result in results:
        for got, want in zip(result, expected):
            numpy.testing.assert_allclose(got, want, atol=1e-6)


def test_eight_threads_making_the_first_call_load_once(tiny_bert_dir):
    nlp = _nlp(tiny_bert_dir, initialize=False)
    loads = []
    pipe = nlp.get_pipe("ctxembed_bert")
    original = pipe.initialize

    def counting_initialize(*args, **kwargs):
        loads.append(1)
        return original(*args, **kwargs)

    pipe.initialize = counting_initialize
    results = run_in_threads(8, lambda: nlp(TEXTS[1])._.ctx_vectors.copy())
    assert len(loads) == 1
    module = pipe.encoder.shims[0]._model
    assert not any(p.is_meta for p in module.parameters())
    reference = _nlp(tiny_bert_dir)(TEXTS[1])._.ctx_vectors
    for result in results:
        numpy.testing.assert_array_equal(result, reference)


def test_blank_pipeline_then_fork_leaves_torch_alone():
    code = (
        "import os, torch, spacy\n"
        "torch.set_num_threads(2)\n"
        "nlp = spacy.blank('en')\n"  # imports spacy_ctxembed through the entry points
        "assert nlp.has_factory('ctxembed_bert')\n"
        "r, w = os.pipe()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.write(w, f\"{torch.get_num_threads()} {os.environ.get('TOKENIZERS_PARALLELISM')}\".encode())\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "print(os.read(r, 100).decode())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["2", "None"]
