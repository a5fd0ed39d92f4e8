"""The gradient a trained ctxembed_bert sends into its encoder and its scalar mix,
against PyTorch autograd through `transformers`' own BertModel in float64, with
the pooling, the windows' stitching and the mix written out here.

test_training_steps checks one window of one-piece words, with no mix; here
the words have several pieces (some shared by two tokens), the doc has
whitespace tokens and runs over several overlapping windows (a word longer
than their overlap is cut between two), and three listeners send their
gradients (of the layers, of the mixed vectors; at several grad_factors),
which reach the encoder summed, once."""
import itertools

import numpy
import pytest
import spacy
import torch
from spacy.training import Example

from .conftest import ctx_config, send_random_gradients
from .reference import token_pieces

TEXTS = ["Unbelievably  heterogeneous tokenization works\n\nwonderfully , antidisestablishmentarianism !",
         "We can't believe it's gonna work , e.g. 3.5kg",
         "short one"]
LAYERS = [0, 2]
WINDOW = 8
#: The listening components: whether each mixes the layers itself (else it
#: reads the vectors), and its grad_factor.
LISTENERS = {"tagger_a": (True, 0.5), "tagger_b": (False, 2.0), "tagger_c": (True, -1.5)}


def _listener(**settings):
    return {"@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 8, **settings}


def _pool(states, mode):
    """states: (k pieces, n_layers, width) -> (n_layers, width)."""
    if mode == "mean":
        return states.mean(0)
    if mode == "max":
        return states.max(0).values
    return states[0] if mode == "first" else states[-1]


@pytest.mark.parametrize("pooling", ["mean", "first", "last", "max"])
def test_encoder_and_mix_gradients_match_autograd_through_transformers(exact_bert_dir, pooling):
    from transformers import AutoTokenizer, BertModel

    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=exact_bert_dir, layers=LAYERS, combine="scalar_mix",
                                                    trainable=True, pooling=pooling, window=WINDOW, stride=6))
    for name, (mix_layers, factor) in LISTENERS.items():
        nlp.add_pipe("tagger", name=name, config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": _listener(
            grad_factor=factor, mix_layers=mix_layers)}})
    examples = [Example.from_dict(doc, {"tags": ["X"] * len(doc)}) for doc in map(nlp.make_doc, TEXTS)]
    nlp.initialize(lambda: examples)
    component = nlp.get_pipe("ctxembed_bert")
    mix = component.combiner
    mix.set_param("s", numpy.array([-0.7, 0.9], dtype="f"))  # not the plain mean
    mix.set_param("gamma", numpy.array([1.3], dtype="f"))
    docs = [eg.predicted for eg in examples]

    component.update(examples)
    sent = send_random_gradients(nlp, LISTENERS, docs)
    grads = {k: p.grad for k, p in component.encoder.shims[0]._model.named_parameters() if p.grad is not None}

    tokenizer = AutoTokenizer.from_pretrained(exact_bert_dir)
    reference = BertModel.from_pretrained(exact_bert_dir, attn_implementation="eager").double()
    s = torch.tensor([-0.7, 0.9], dtype=torch.float64, requires_grad=True)
    gamma = torch.tensor([1.3], dtype=torch.float64, requires_grad=True)
    loss = torch.zeros((), dtype=torch.float64)
    windows_used = set()
    for i, doc in enumerate(docs):
        encoding = tokenizer(doc.text, add_special_tokens=False, return_offsets_mapping=True)
        ids = encoding["input_ids"]
        n = len(ids)
        # Every window the doc may be cut into; which one each token is taken
        # from is read off the forward pass below (its choice is tested in
        # test_long_docs): its gradient must go through that one run alone.
        starts = list(range(0, n - WINDOW, 6)) + [max(n - WINDOW, 0)]
        runs = {}
        for start in starts:
            framed = torch.tensor([[tokenizer.cls_token_id, *ids[start:start + WINDOW], tokenizer.sep_token_id]])
            hidden = reference(input_ids=framed, output_hidden_states=True).hidden_states
            runs[start] = torch.stack([hidden[layer][0, 1:-1] for layer in LAYERS], dim=1)  # (pieces, layers, width)
        forward = sent["tagger_a"][0][i]
        columns = []
        for t, pieces in enumerate(token_pieces(doc, encoding["offset_mapping"])):
            if not pieces:  # whitespace: zeros, and no gradient
                assert not forward[:, t].any()
                columns.append(torch.zeros((len(LAYERS), 32), dtype=torch.float64))
                continue
            # A token longer than the windows' overlap may be cut: its first
            # pieces from one window, the others from the next.
            owners = [[start for start in starts if start <= p < start + WINDOW] for p in pieces]
            candidates = {
                taken: _pool(torch.stack([runs[start][p - start] for p, start in zip(pieces, taken)]), pooling)
                for taken in itertools.product(*owners) if list(taken) == sorted(taken)}
            errors = {taken: float((c.detach() - torch.from_numpy(forward[:, t]).double()).abs().max())
                      for taken, c in candidates.items()}
            taken = min(errors, key=errors.get)
            assert errors[taken] < 1e-5, (t, doc[t].text, errors)
            windows_used.update((i, start) for start in taken)
            columns.append(candidates[taken])
        layers = torch.stack(columns, dim=1)  # (n_layers, n_tokens, width)
        vectors = gamma * torch.tensordot(torch.softmax(s, 0), layers, dims=([0], [0]))
        numpy.testing.assert_allclose(vectors.detach().numpy(), sent["tagger_b"][0][i], atol=1e-5)
        for name, (mix_layers, factor) in LISTENERS.items():
            value = layers if mix_layers else vectors
            loss = loss + factor * (value * torch.from_numpy(sent[name][1][i]).double()).sum()
    assert len({i for i, _ in windows_used}) == len(docs) and len(windows_used) > len(docs)  # several windows
    params = dict(reference.named_parameters())
    expected = torch.autograd.grad(loss, [*params.values(), s, gamma], allow_unused=True)
    scale = max(float(g.abs().max()) for g in expected if g is not None)
    for name, want in zip(params, expected):
        if want is None:  # (BERT's pooler: not on the path)
            assert name not in grads or not grads[name].any(), name
            continue
        # (float32 against float64: off by 1e-7 of the largest gradient at most, measured)
        got = grads[name].double() if name in grads else torch.zeros_like(want)
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5 * scale, msg=name)
    # (The mix's gradients are float32 sums over every token: within a few float32 ulps of theirs.)
    numpy.testing.assert_allclose(mix.get_grad("s"), expected[-2].numpy(), rtol=1e-3, atol=5e-5)
    numpy.testing.assert_allclose(mix.get_grad("gamma"), expected[-1].numpy(), rtol=1e-5)


def test_one_layer_below_the_top_trains_through_the_shortened_encoder(exact_bert_dir):
    """`layers = [1]` of a 2-layer BERT runs only its first layer (`_first_layers`)
    and reads that layer's output as the top state (`top_state_only`); trained,
    that shortened copy is what runs forward and backward. Its gradient must be
    autograd's through `transformers`' full BertModel in float64, read at
    hidden_states[1]: the first layer's and the embeddings' weights get it, the
    layer above and the pooler get none."""
    from transformers import AutoTokenizer, BertModel

    from spacy_ctxembed.models.bert import get_runner

    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=exact_bert_dir, layers=[1], trainable=True))
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2",
                                                                   "tok2vec": _listener(mix_layers=True)}})
    doc = nlp.make_doc(TEXTS[1])
    examples = [Example.from_dict(doc, {"tags": ["X"] * len(doc)})]
    nlp.initialize(lambda: examples)
    component = nlp.get_pipe("ctxembed_bert")
    runner = get_runner(component.encoder)
    assert runner.top_state_only and runner.runner is not runner.encoder.module  # the premise: shortened
    docs = [eg.predicted for eg in examples]
    component.update(examples)
    (outputs, d_outputs), = send_random_gradients(nlp, ["tagger"], docs).values()
    grads = {k: p.grad for k, p in component.encoder.shims[0]._model.named_parameters() if p.grad is not None}

    tokenizer = AutoTokenizer.from_pretrained(exact_bert_dir)
    reference = BertModel.from_pretrained(exact_bert_dir, attn_implementation="eager").double()
    encoding = tokenizer(docs[0].text, return_offsets_mapping=True, return_tensors="pt")
    offsets = encoding.pop("offset_mapping")[0, 1:-1].tolist()
    states = reference(**encoding, output_hidden_states=True).hidden_states[1][0, 1:-1]
    layer = torch.stack([states[pieces].mean(0) if pieces else torch.zeros(32, dtype=torch.float64)
                         for pieces in token_pieces(docs[0], offsets)])
    assert outputs[0].shape == (1, len(docs[0]), 32)
    numpy.testing.assert_allclose(outputs[0][0], layer.detach().numpy(), atol=1e-5)
    loss = (layer * torch.from_numpy(d_outputs[0][0]).double()).sum()
    params = dict(reference.named_parameters())
    expected = dict(zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True)))
    assert {name for name, want in expected.items() if want is not None} == set(grads)
    assert any(name.startswith("encoder.layer.0.") for name in grads)
    scale = max(float(g.abs().max()) for g in expected.values() if g is not None)
    for name, got in grads.items():
        torch.testing.assert_close(got.double(), expected[name], rtol=1e-3, atol=1e-5 * scale, msg=name)
