"""When the optimizer steps the component's weights, and with what: only what a
gradient reached, after the backward pass of the batch, and under
`nlp.use_params(averages)` the optimizer's averages of the encoder too."""
import copy
import threading

import numpy
import pytest
import spacy
import torch
from spacy.training import Example
from thinc.api import SGD, Adam

from spacy_ctxembed.errors import NonFiniteOutputs
from spacy_ctxembed.models.listener import ContextualListenerNode

from .conftest import ctx_config
from .test_training import TAGS, WORDS, _encoder_params, _listener, _pipeline, _train_step

TEXT = " ".join(WORDS)


def _decaying_adam():
    """spaCy's default optimizer is Adam with weight decay: it moves weights on a zero gradient too."""
    return Adam(0.01, L2=0.1, L2_is_weight_decay=True, grad_clip=1.0)


def _sgd_flow(nlp, examples, optimizer):
    nlp.update(examples, sgd=optimizer)


@pytest.mark.parametrize("flow", [_train_step, _sgd_flow], ids=["spacy train", "nlp.update(sgd=...)"])
def test_a_listener_at_grad_factor_zero_leaves_the_combiner_alone(tiny_bert_dir, flow):
    """The combined vectors are read by a listener at grad_factor 0 only: the
    combiner gets no gradient, so weight decay must leave it (and the doc
    vectors) as initialised."""
    nlp, examples = _pipeline(tiny_bert_dir, combine="scalar_mix",
                              tok2vec=_listener(grad_factor=0.0, mix_layers=False))
    mix = nlp.get_pipe("ctxembed_bert").combiner
    s, gamma, vectors = mix.get_param("s").copy(), mix.get_param("gamma").copy(), nlp(TEXT)._.ctx_vectors.copy()
    assert gamma.tolist() == [1.0]  # the premise: ScalarMix starts at gamma 1, where decay would shrink it
    optimizer = _decaying_adam()
    for _ in range(5):
        flow(nlp, examples, optimizer)
    numpy.testing.assert_array_equal(mix.get_param("gamma"), gamma)
    numpy.testing.assert_array_equal(mix.get_param("s"), s)
    numpy.testing.assert_array_equal(nlp(TEXT)._.ctx_vectors, vectors)


def _tagger_and_ner(model_dir, *, tagger, ner):
    nlp, _ = _pipeline(model_dir, tok2vec=tagger)
    nlp.add_pipe("ner", config={"model": {
        "@architectures": "spacy.TransitionBasedParser.v2", "state_type": "ner", "hidden_width": 16,
        "maxout_pieces": 2, "use_upper": False, "tok2vec": ner}})
    example = Example.from_dict(nlp.make_doc(TEXT), {"words": WORDS, "tags": TAGS,
                                                     "entities": ["O", "O", "O", "O", "U-LOC"]})
    spacy.util.fix_random_seed(0)
    nlp.initialize(lambda: [example])
    return nlp, [example]


def test_no_gradient_from_the_trained_listeners_leaves_the_encoder_alone(tiny_bert_dir):
    """The tagger's listener is at grad_factor 0; the NER's would train the
    encoder, but the NER is frozen (excluded, as `spacy train` runs it): no
    gradient reaches the encoder, so weight decay must not move it."""
    nlp, examples = _tagger_and_ner(tiny_bert_dir, tagger=_listener(grad_factor=0.0), ner=_listener())
    before = _encoder_params(nlp)
    optimizer = _decaying_adam()
    for _ in range(3):
        nlp.update(examples, sgd=False, exclude=["ner"])
        for name, proc in nlp.pipeline:
            if name != "ner":
                proc.finish_update(optimizer)
    module = nlp.get_pipe("ctxembed_bert").encoder.shims[0]._model
    assert all(p.grad is None for p in module.parameters())
    assert all(torch.equal(before[k], v) for k, v in _encoder_params(nlp).items())


def test_released_tok2vec_at_grad_factor_zero_leaves_its_encoder_alone(tiny_bert_dir):
    """ContextualTok2Vec.v2 (what replace_listeners made before v3) runs its
    encoder in training mode at grad_factor 0, as released, but sends it no
    gradient: weight decay must not move the copy."""
    from spacy.util import registry

    nlp, _ = _pipeline(tiny_bert_dir)
    tok2vec = registry.get("architectures", "spacy-ctxembed.ContextualTok2Vec.v2")(
        embedder=nlp.get_pipe("ctxembed_bert").model.copy(), width=8, grad_factor=0.0)
    docs = [nlp.make_doc(TEXT)]
    tok2vec.initialize(X=docs)
    module = next(shim for node in tok2vec.walk() for shim in node.shims)._model
    before = {k: v.detach().clone() for k, v in module.named_parameters()}
    optimizer = _decaying_adam()
    for _ in range(3):
        Y, backprop = tok2vec.begin_update(docs)
        backprop([numpy.ones_like(y) for y in Y])
        tok2vec.finish_update(optimizer)
    assert all(torch.equal(before[k], v) for k, v in module.named_parameters())


def test_a_step_asked_for_before_the_backward_pass_follows_it(exact_bert_dir):
    """`nlp.update(examples, sgd=...)` calls the component's finish_update right
    after its update, before its listeners call back. Each step must be plain
    SGD on the gradient at the weights of its own forward pass, as a float64
    copy of the model computes it with torch (every word is one word piece, so
    the token vectors are the pieces' hidden states)."""
    from transformers import AutoTokenizer, BertModel

    nlp, examples = _pipeline(exact_bert_dir)
    component = nlp.get_pipe("ctxembed_bert")
    listener = next(n for n in nlp.get_pipe("tagger").model.walk() if isinstance(n, ContextualListenerNode))
    docs = [eg.predicted for eg in examples]
    reference = BertModel.from_pretrained(exact_bert_dir, attn_implementation="eager").double()
    inputs = AutoTokenizer.from_pretrained(exact_bert_dir)(TEXT, return_tensors="pt")
    assert inputs["input_ids"].shape[1] == len(WORDS) + 2  # [CLS] words [SEP]
    learn_rate = 0.05
    optimizer = SGD(learn_rate, L2=0.0, grad_clip=0.0)
    start = {k: v.detach().clone() for k, v in reference.named_parameters()}
    for seed in (1, 2):
        d_layers = numpy.random.default_rng(seed).standard_normal((3, len(WORDS), 32))
        component.update(examples)
        component.finish_update(optimizer)  # as nlp.update(sgd=...) calls it
        outputs, backprop = listener.begin_update(docs)
        backprop([d_layers.astype("float32")])

        states = reference(**inputs, output_hidden_states=True).hidden_states
        loss = (torch.stack([states[i][0, 1:-1] for i in (0, 1, 2)]) * torch.from_numpy(d_layers)).sum()
        params = dict(reference.named_parameters())
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        with torch.no_grad():
            for param, grad in zip(params.values(), grads):
                if grad is not None:
                    param -= learn_rate * grad
        ours = _encoder_params(nlp)
        for name, param in params.items():
            torch.testing.assert_close(ours[name].double(), param.detach(), rtol=1e-5, atol=2e-6,
                                       msg=lambda m, name=name, seed=seed: f"step {seed}, {name}: {m}")
    # The premise: the steps are far larger than the tolerance.
    assert max(float((v.detach() - start[k]).abs().max()) for k, v in reference.named_parameters()) > 1e-2


def _elmo_pipeline(tmp_path):
    from .elmo_fixture import write_elmo_fixture

    options, weights = write_elmo_fixture(tmp_path / "elmo")
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_elmo", config=ctx_config(options_file=str(options), weight_file=str(weights),
                                                    trainable=True, cache_mb=16, store_layers=True))
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": _listener(8)}})
    examples = [Example.from_dict(nlp.make_doc(TEXT), {"words": WORDS, "tags": TAGS})]
    nlp.initialize(lambda: examples)
    return nlp, examples, "ctxembed_elmo"


def _bert_pipeline(tiny_bert_dir):
    nlp, examples = _pipeline(tiny_bert_dir, cache_mb=16, store_layers=True)
    return nlp, examples, "ctxembed_bert"


@pytest.mark.parametrize("encoder", ["bert", "elmo"])
def test_use_params_puts_the_optimizers_averages_in_the_encoder(tiny_bert_dir, tmp_path, encoder):
    """`spacy train` evaluates (and saves model-best) under
    `nlp.use_params(optimizer.averages)`: the fine-tuned encoder's weights must
    be its averages there (as the heads' are), exactly the trained ones after,
    and the feature cache must serve neither's layers for the other's."""
    nlp, examples, name = _bert_pipeline(tiny_bert_dir) if encoder == "bert" else _elmo_pipeline(tmp_path)
    optimizer = Adam(0.01, L2=0.0, grad_clip=0.0, use_averages=True)
    for _ in range(4):
        _train_step(nlp, examples, optimizer)
    shim = nlp.get_pipe(name).encoder.shims[0]
    trained = {k: v.detach().clone() for k, v in shim._model.named_parameters()}
    averaged = {k[1]: v for k, v in optimizer.averages.items() if k[0] == shim.id and k[1] in trained}
    assert averaged and any(not numpy.array_equal(trained[k].numpy(), v) for k, v in averaged.items())
    layers = nlp(TEXT)._.ctx_layers.copy()  # (and cached)
    with nlp.use_params(optimizer.averages):
        inside = dict(shim._model.named_parameters())
        for k, v in averaged.items():
            numpy.testing.assert_array_equal(inside[k].detach().numpy(), v, err_msg=k)
        for k in trained.keys() - averaged.keys():  # never stepped: as trained
            assert torch.equal(inside[k], trained[k])
        assert not numpy.allclose(nlp(TEXT)._.ctx_layers, layers, atol=1e-6)
    for k, v in shim._model.named_parameters():
        assert torch.equal(v, trained[k]), k
    numpy.testing.assert_array_equal(nlp(TEXT)._.ctx_layers, layers)


def test_frozen_annotating_listener_of_a_trained_upstream_says_what_to_do(tiny_bert_dir):
    """The NER is frozen and annotating (it predicts on the training docs), its
    upstream is trained but not annotating: the upstream is not disabled, it
    ran its update; the error says what would work."""
    nlp, examples = _tagger_and_ner(tiny_bert_dir, tagger=_listener(), ner=_listener())
    with pytest.raises(ValueError) as error:
        nlp.update(examples, sgd=False, exclude=["ner"], annotates=["ner"])
    message = str(error.value)
    assert "'ctxembed_bert' to [training] annotating_components" in message
    assert "nlp.replace_listeners('ctxembed_bert'" in message
    assert "disabled" not in message


def _ner_pipeline(model_dir):
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=model_dir, layers=[0, 1, 2], combine="scalar_mix",
                                                    trainable=True))
    nlp.add_pipe("ner", config={"model": {
        "@architectures": "spacy.TransitionBasedParser.v2", "state_type": "ner", "hidden_width": 16,
        "maxout_pieces": 2, "use_upper": False, "tok2vec": _listener(mix_layers=False)}})
    with_entities = Example.from_dict(nlp.make_doc(" ".join(WORDS)),
                                      {"words": WORDS, "entities": ["O", "O", "O", "O", "U-LOC"]})
    no_entities = Example.from_dict(nlp.make_doc("You walked to a park"), {"words": "You walked to a park".split()})
    nlp.initialize(lambda: [with_entities])
    return nlp, with_entities, no_entities


def test_accumulated_gradients_are_stepped_when_the_last_batch_got_no_callback(tiny_bert_dir):
    """`spacy train` with accumulate_gradient = 2: NER calls back for the first
    batch and skips the second (no entity annotation). The first batch's
    gradient must be stepped at finish_update, as with one batch: it was held
    back until the next update (after evaluation and model-best)."""
    spacy.util.fix_random_seed(0)
    nlp, with_entities, no_entities = _ner_pipeline(tiny_bert_dir)
    component = nlp.get_pipe("ctxembed_bert")
    optimizer = SGD(0.05, L2=0.0, grad_clip=0.0)
    before, mix_before = _encoder_params(nlp), component.combiner.get_param("s").copy()
    grads = {}
    nlp.update([with_entities], sgd=False)
    nlp.update([no_entities], sgd=False)
    for name, param in component.encoder.shims[0]._model.named_parameters():
        if param.grad is not None:
            grads[name] = param.grad.detach().clone()
    assert grads and any(float(g.abs().max()) > 0 for g in grads.values())
    for _, proc in nlp.pipeline:
        proc.finish_update(optimizer)
    after = _encoder_params(nlp)
    for name, grad in grads.items():  # plain SGD: exactly one step of the first batch's gradient
        torch.testing.assert_close(after[name], before[name] - 0.05 * grad, rtol=0, atol=1e-6)
    assert not numpy.array_equal(component.combiner.get_param("s"), mix_before)


def test_a_listener_that_skipped_a_batch_is_not_taken_for_one_in_training(tiny_bert_dir):
    """NER skips a batch without entity annotation: its listener keeps that batch
    (a later callback cannot be ruled out), and an error on other docs later took
    it for an upstream being trained ("add it to annotating_components") where
    the upstream was disabled."""
    spacy.util.fix_random_seed(0)
    nlp, _, no_entities = _ner_pipeline(tiny_bert_dir)
    nlp.update([no_entities], sgd=nlp.resume_training())
    with nlp.select_pipes(disable=["ctxembed_bert"]), pytest.raises(ValueError, match="it is disabled"):
        nlp("A new text")


@pytest.mark.parametrize("mix_layers", [False, True])
def test_a_copy_at_encoder_lr_scale_zero_runs_its_encoder_frozen(tiny_bert_dir, mix_layers):
    """The component runs an encoder at `encoder_lr_scale = 0` frozen (no dropout,
    no graph); the copy `replace_listeners` made of it, for a listener of the
    vectors, ran it with dropout and a backward pass that moved nothing: the
    tagger trained on noised features. (The tiny BERT has dropout 0.1.)"""
    nlp, _ = _pipeline(tiny_bert_dir, combine="scalar_mix", encoder_lr_scale=0.0,
                       tok2vec=_listener(mix_layers=mix_layers))
    nlp.replace_listeners("ctxembed_bert", "tagger", ["model.tok2vec"])
    copy = next(node for node in nlp.get_pipe("tagger").model.walk() if node.name == "ctxembed-grad-factor")
    shim = next(shim for node in copy.walk() for shim in node.shims)
    docs = [nlp.make_doc(TEXT)]
    first, backprop = copy.begin_update(docs)
    second, _ = copy.begin_update(docs)
    numpy.testing.assert_array_equal(first[0], second[0])  # no dropout
    backprop([numpy.ones_like(y) for y in first])
    assert all(param.grad is None for param in shim._model.parameters())  # no graph
    # The mix of a listener of the vectors still trains: its gradient is there.
    if not mix_layers:
        mix = next(node for node in copy.walk() if node.name == "scalar_mix")
        assert float(numpy.abs(mix.get_grad("s")).sum()) > 0


def test_use_params_with_a_backward_pass_waiting_leaves_the_next_update_as_without(tiny_bert_dir):
    """NER skips a batch (no entities), so the embedder's backward pass waits for
    the next update; evaluating under `nlp.use_params(averages)` in between
    swapped the encoder's weights in place under its graph, and the next update
    failed (torch: "modified by an inplace operation"). It runs first now, and
    the training is the same as without the evaluation."""
    results = []
    for evaluate in (False, True):
        spacy.util.fix_random_seed(0)
        nlp, examples = _tagger_and_ner(tiny_bert_dir, tagger=_listener(), ner=_listener())
        tags_only = [Example.from_dict(nlp.make_doc(TEXT), {"words": WORDS, "tags": TAGS})]
        optimizer = Adam(0.01, L2=0.0, grad_clip=0.0, use_averages=True)
        nlp.update(examples, sgd=optimizer)
        nlp.update(tags_only, sgd=optimizer)  # the tagger calls back, NER skips: the backward pass waits
        assert nlp.get_pipe("ctxembed_bert")._pending_backward is not None  # the premise
        if evaluate:
            with nlp.use_params(optimizer.averages):
                nlp(TEXT)
        nlp.update(examples, sgd=optimizer)
        results.append(_encoder_params(nlp))
    without, with_evaluation = results
    for name, value in without.items():
        torch.testing.assert_close(with_evaluation[name], value, rtol=0, atol=1e-7, msg=name)


@pytest.mark.parametrize("in_thread", [False, True], ids=["here", "in-a-thread-joined"])
def test_a_save_after_nlp_update_with_a_listener_disabled_has_the_last_step(tiny_bert_dir, tmp_path, in_thread):
    """spaCy's loop `with nlp.select_pipes(disable=[...]): nlp.update(batch, sgd=...)`
    with another listening component disabled: each batch's backward pass (and
    the step asked for it) waits for that listener, which never calls back, and
    runs at the next update. The last batch's step was not in the saved
    pipeline; it is, as the next update would have applied it. Also where the
    loop ran in a thread that has ended (a save in another thread while it runs
    leaves the step to it: tests/test_threads.py)."""
    def trained(n_updates):
        nlp, examples = _pipeline(tiny_bert_dir)
        nlp.add_pipe("tagger", name="tagger2", config={"model": {"@architectures": "spacy.Tagger.v2",
                                                                 "tok2vec": _listener()}})
        nlp.get_pipe("tagger2").initialize(lambda: examples, nlp=nlp)
        optimizer = Adam(0.01)
        with nlp.select_pipes(disable=["tagger2"]):
            for _ in range(n_updates):
                nlp.update(examples, sgd=optimizer)
        return nlp

    def trained_here_or_in_a_thread(n_updates):
        if not in_thread:
            return trained(n_updates)
        done = []
        thread = threading.Thread(target=lambda: done.append(trained(n_updates)))
        thread.start()
        thread.join(300)
        assert done, "the training thread did not finish"
        return done[0]

    nlp = trained_here_or_in_a_thread(3)
    in_memory = _encoder_params(nlp)
    nlp.to_disk(tmp_path / "p")
    saved = spacy.load(tmp_path / "p").get_pipe("ctxembed_bert").encoder.shims[0]._model.state_dict()
    # What a 4th update applies before its own forward pass: the 3rd batch's step.
    reference = _encoder_params(trained(4))
    assert any(not torch.equal(in_memory[k], reference[k]) for k in reference)  # the premise: a step was waiting
    for name, value in reference.items():
        torch.testing.assert_close(saved[name], value, rtol=0, atol=0)
    # to_bytes alike.
    nlp = trained_here_or_in_a_thread(3)
    loaded = spacy.blank("en").from_config(nlp.config).from_bytes(nlp.to_bytes())
    for name, value in reference.items():
        torch.testing.assert_close(loaded.get_pipe("ctxembed_bert").encoder.shims[0]._model.state_dict()[name],
                                   value, rtol=0, atol=0)


def test_a_training_batch_with_nan_is_refused_before_any_listener_is_updated(tiny_bert_dir):
    """Weights that diverged in training: `update` refuses the batch (no
    listener gets it), naming the learning rate."""
    nlp, examples = _pipeline(tiny_bert_dir, tok2vec=_listener())
    module = nlp.get_pipe("ctxembed_bert").encoder.shims[0]._model
    with torch.no_grad():
        module.embeddings.word_embeddings.weight.fill_(float("nan"))
    tagger = nlp.get_pipe("tagger")
    heads = {(node.id, n): node.get_param(n).copy() for node in tagger.model.walk() for n in node.param_names
             if node.has_param(n)}
    with pytest.raises(NonFiniteOutputs) as excinfo:
        nlp.update(examples, sgd=nlp.resume_training())
    message = str(excinfo.value)
    assert message.startswith("[ctxembed_bert] the model gave nan or inf for 1 of the 1 docs")
    assert "this training batch is refused (no listening component is updated on it)" in message
    assert "(weights that diverged in training: lower [training.optimizer] learn_rate)" in message
    for node in tagger.model.walk():
        for n in node.param_names:
            if node.has_param(n):
                numpy.testing.assert_array_equal(node.get_param(n), heads[(node.id, n)])


@pytest.mark.parametrize("grad_factor, n_docs", [(0.5, 1), (1.0, 2)])
def test_the_embedders_loss_is_the_sum_of_squares_of_the_gradients_it_is_sent(
        tiny_bert_dir, monkeypatch, grad_factor, n_docs):
    """The embedder's loss is the sum of the squared gradients its listener sends it (after its
    grad_factor), computed here from the arrays it is sent, in float64: for every doc of the
    batch, not the first only (whose gradient alone would then reach the encoder)."""
    to_embedder = []
    receive = ContextualListenerNode.receive

    def receiving(self, batch_id, outputs, backprop, upstream, **told):
        def recorded(d_outputs):
            to_embedder.extend(numpy.array(d, dtype="float64") for d in d_outputs)
            return backprop(d_outputs)
        return receive(self, batch_id, outputs, recorded, upstream, **told)

    monkeypatch.setattr(ContextualListenerNode, "receive", receiving)
    nlp, examples = _pipeline(tiny_bert_dir, tok2vec=_listener(grad_factor=grad_factor))
    if n_docs == 2:
        words, tags = WORDS[::-1], TAGS[::-1]
        examples = [*examples, Example.from_dict(nlp.make_doc(" ".join(words)), {"words": words, "tags": tags})]
    optimizer = nlp.resume_training()
    _train_step(nlp, examples, optimizer)  # (the tagger's output layer starts at zero: so do its gradients)
    to_embedder.clear()
    losses = {}
    nlp.update(examples, sgd=optimizer, losses=losses)
    assert len(to_embedder) == n_docs and all(numpy.abs(d).max() > 0 for d in to_embedder)
    expected = sum(float((d ** 2).sum()) for d in to_embedder)
    assert losses["ctxembed_bert"] == pytest.approx(expected, rel=1e-4)


def test_a_component_at_encoder_lr_scale_zero_runs_its_encoder_frozen(tiny_bert_dir):
    """encoder_lr_scale = 0 on a trainable encoder: no graph and no gradient for
    it (as for the copy in test_a_copy_at_encoder_lr_scale_zero_runs_its_encoder_frozen),
    and what the listener reads is the prediction's layers, without dropout."""
    nlp, examples = _pipeline(tiny_bert_dir, tok2vec=_listener(), encoder_lr_scale=0.0)
    before = _encoder_params(nlp)
    optimizer = nlp.resume_training()
    for _ in range(2):
        nlp.update(examples, sgd=optimizer, drop=0.5)
    module = nlp.get_pipe("ctxembed_bert").encoder.shims[0]._model
    assert all(p.grad is None for p in module.parameters())
    assert all(torch.equal(before[k], v) for k, v in _encoder_params(nlp).items())


def test_a_save_under_use_params_leaves_the_listeners_record_as_it_was(tiny_bert_dir, tmp_path):
    """`spacy train` saves model-best inside `nlp.use_params(optimizer.averages)`:
    the saved listener records the averaged encoder it was saved next to. After
    the block the pipeline predicts with its own weights again, and its
    listener's record is the one from before the block, not the averages'."""
    nlp, examples, _ = _bert_pipeline(tiny_bert_dir)
    optimizer = Adam(0.01, L2=0.0, grad_clip=0.0, use_averages=True)
    for _ in range(3):
        _train_step(nlp, examples, optimizer)
    node = next(n for n in nlp.get_pipe("tagger").model.walk() if isinstance(n, ContextualListenerNode))
    before = copy.deepcopy(node.record())
    with nlp.use_params(optimizer.averages):
        nlp.to_disk(tmp_path / "best")
        inside = copy.deepcopy(node.record())
    assert inside != before  # the premise: the save recorded the averages
    assert node.record() == before


def test_an_encoder_only_listeners_at_grad_factor_zero_read_runs_frozen_and_cached(tiny_bert_dir, monkeypatch):
    """No listener sends the trainable encoder a gradient (grad_factor 0): an
    update runs it as frozen, with no graph, and the feature cache serves the
    docs it has seen (the encoder is not run again for them)."""
    from spacy_ctxembed.models.bert import get_runner

    nlp, examples = _pipeline(tiny_bert_dir, cache_mb=16, tok2vec=_listener(grad_factor=0.0))
    runner = get_runner(nlp.get_pipe("ctxembed_bert").encoder)
    asked = []
    embed = runner.embed

    def recorded(docs, *args, **kwargs):
        asked.append(kwargs.get("grad", args[0] if args else False))
        return embed(docs, *args, **kwargs)

    monkeypatch.setattr(runner, "embed", recorded)
    optimizer = nlp.resume_training()
    _train_step(nlp, examples, optimizer)
    assert asked and not any(asked)  # the first time: run, without a graph
    asked.clear()
    _train_step(nlp, examples, optimizer)
    assert asked == []  # served from the cache


def test_an_update_in_another_thread_runs_the_backward_pass_an_earlier_one_left(tiny_bert_dir):
    """Updates run by a pool of threads (`asyncio.to_thread`, an executor), each
    in a thread that stays alive, accumulating gradients, with a listening
    component disabled: the backward pass the first update left waiting for it
    was dropped by the next update, made in another thread, which put its own
    in its place without running it (that batch's gradient was lost, silently).
    The next update runs it, in whatever thread."""
    def trained(in_two_threads):  # (gradients of two updates, then one step)
        spacy.util.fix_random_seed(0)
        nlp, examples = _pipeline(tiny_bert_dir)
        nlp.add_pipe("tagger", name="tagger2", config={"model": {"@architectures": "spacy.Tagger.v2",
                                                                 "tok2vec": _listener()}})
        nlp.get_pipe("tagger2").initialize(lambda: examples, nlp=nlp)
        with nlp.select_pipes(disable=["tagger2"]):
            if in_two_threads:
                first_done, hold = threading.Event(), threading.Event()

                def first():
                    nlp.update(examples)
                    first_done.set()
                    hold.wait(60)  # (alive, as a pool's thread is)

                pool_thread = threading.Thread(target=first)
                pool_thread.start()
                try:
                    assert first_done.wait(60)
                    second = threading.Thread(target=lambda: nlp.update(examples))
                    second.start()
                    second.join(60)
                finally:
                    hold.set()
                    pool_thread.join(60)
            else:
                for _ in range(2):
                    nlp.update(examples)
            optimizer = Adam(0.01)
            for _, proc in nlp.pipeline:
                proc.finish_update(optimizer)
        return _encoder_params(nlp)

    here, in_threads = trained(False), trained(True)
    for name, value in here.items():
        torch.testing.assert_close(in_threads[name], value, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("mix_layers", [True, False])
def test_a_batch_left_by_an_earlier_update_never_trains_a_frozen_upstream(exact_bert_dir, mix_layers):
    """The tagger is left out of one nlp.update, so its listener keeps that
    batch; in the next, the embedder is frozen and annotating (left out, as
    `spacy train` runs frozen components). The tagger must read the docs'
    outputs: the old batch's gradient stepped the frozen encoder (by 0.1) and
    combiner, and on other docs the update failed ("mismatched batch")."""
    nlp, examples = _pipeline(exact_bert_dir, combine="scalar_mix", tok2vec=_listener(mix_layers=mix_layers))
    component = nlp.get_pipe("ctxembed_bert")
    optimizer = SGD(0.05, L2=0.0, grad_clip=0.0)
    for _ in range(2):  # (the tagger's softmax starts at zero: no gradient reaches its listener before)
        nlp.update(examples, sgd=optimizer)
    other = [Example.from_dict(nlp.make_doc("You walked to a park"),
                               {"words": "You walked to a park".split(), "tags": TAGS})]
    for batch in (examples, other):
        nlp.update(examples, sgd=optimizer, exclude=["tagger"])
        encoder, mix = _encoder_params(nlp), component.combiner.get_param("s").copy()
        tagger = nlp.get_pipe("tagger").model.get_ref("softmax").get_param("W").copy()
        nlp.update(batch, sgd=optimizer, exclude=["ctxembed_bert"], annotates=["ctxembed_bert"])
        assert all(torch.equal(encoder[k], v) for k, v in _encoder_params(nlp).items())
        numpy.testing.assert_array_equal(component.combiner.get_param("s"), mix)
        assert not numpy.array_equal(nlp.get_pipe("tagger").model.get_ref("softmax").get_param("W"), tagger)


@pytest.mark.parametrize("annotating, serving", [(False, False), (True, False), (True, True)],
                         ids=["copies", "copies of annotated docs", "a serving thread between"])
def test_the_batch_is_read_by_a_listener_given_copies_of_its_docs(tiny_bert_dir, annotating, serving):
    """Not every component hands its model the update's Doc objects: spaCy's
    EntityLinker (`use_gold_ents`) copies them. Its listener reads the batch
    the embedder sent, and its gradient steps the encoder, also where the
    embedder annotated the update's docs (`annotating_components`: the copies
    hold its outputs). A thread serving the pipeline meanwhile annotates other
    docs: only an annotation in the training thread supersedes the batch
    (else the listener read the copies' outputs, and no gradient)."""
    nlp, examples = _pipeline(tiny_bert_dir)
    component = nlp.get_pipe("ctxembed_bert")
    listener = next(n for n in nlp.get_pipe("tagger").model.walk() if isinstance(n, ContextualListenerNode))
    component.update(examples)
    docs = [eg.predicted for eg in examples]
    if annotating:
        docs = list(component.pipe(docs))  # as nlp.update(annotates=...) does, right after the update
    if serving:
        thread = threading.Thread(target=lambda: nlp("Other words here"))
        thread.start()
        thread.join()
    copies = [doc.copy() for doc in docs]
    assert all(bool(doc.user_data) is annotating for doc in copies)  # the premise: outputs to read instead, or none
    outputs, backprop = listener.begin_update(copies)
    backprop([numpy.ones_like(o) for o in outputs])
    before = _encoder_params(nlp)
    component.finish_update(SGD(0.05, L2=0.0, grad_clip=0.0))
    assert any(not torch.equal(before[k], v) for k, v in _encoder_params(nlp).items())


@pytest.mark.parametrize("between", ["nlp(text)", "nlp.evaluate"])
def test_a_prediction_between_updates_leaves_the_batch_to_a_listener_updated_without_the_embedder(
        tiny_bert_dir, between):
    """A hand-written loop updates the embedder without the tagger, predicts in
    the same thread (a look at the output, an evaluation), then updates the
    tagger without the embedder (not annotating): the tagger reads the earlier
    batch, and its gradient steps the encoder. (Dropped at a prediction of
    other docs in the training thread, as a first version of the fix for a
    superseded batch did, the update failed: "doc has no layers from
    upstream".)"""
    nlp, examples = _pipeline(tiny_bert_dir)
    optimizer = SGD(0.05, L2=0.0, grad_clip=0.0)
    for _ in range(2):  # (the tagger's softmax starts at zero: no gradient reaches its listener before)
        nlp.update(examples, sgd=optimizer)
    nlp.update(examples, sgd=optimizer, exclude=["tagger"])
    if between == "nlp(text)":
        nlp("You walked to a park")
    else:
        nlp.evaluate([Example.from_dict(nlp.make_doc("You walked to a park"),
                                        {"words": "You walked to a park".split(), "tags": TAGS})])
    before = _encoder_params(nlp)
    nlp.update(examples, sgd=optimizer, exclude=["ctxembed_bert"])
    assert any(not torch.equal(before[k], v) for k, v in _encoder_params(nlp).items())


def _mix_and_two_taggers(model_dir):
    nlp, examples = _pipeline(model_dir, combine="scalar_mix", tok2vec=_listener(mix_layers=False))
    nlp.add_pipe("tagger", name="tagger2", config={"model": {"@architectures": "spacy.Tagger.v2",
                                                             "tok2vec": _listener(mix_layers=False)}})
    nlp.get_pipe("tagger2").initialize(lambda: examples, nlp=nlp)
    return nlp, examples


def _embedder_weights(nlp):
    embedder = nlp.get_pipe("ctxembed_bert")
    mix = {name: embedder.combiner.get_param(name).copy() for name in embedder.combiner.param_names}
    return mix, {k: v.detach().clone() for k, v in embedder.encoder.shims[0]._model.named_parameters()}



def _assert_as_saved(nlp, saved_mix, saved_encoder):
    """The embedder's weights are exactly those saved (`_embedder_weights`)."""
    mix, encoder = _embedder_weights(nlp)
    for name, value in saved_mix.items():
        numpy.testing.assert_array_equal(mix[name], value, err_msg=name)
    for name, value in saved_encoder.items():
        torch.testing.assert_close(encoder[name], value, rtol=0, atol=0, msg=name)

@pytest.mark.parametrize(("left", "load"), [("accumulated", "bytes"), ("waiting", "disk")])
def test_a_load_drops_the_gradients_training_left(exact_bert_dir, tmp_path, left, load):
    """A checkpoint loaded back mid-accumulation (`nlp.update(sgd=False)`, then
    `nlp.from_bytes`/`from_disk`): the encoder's gradients went with its old
    weights, but the scalar mix kept thinc's (or a backward pass still waiting
    for a listener added them), and the next step moved the loaded mix alone
    by the old weights' gradient. Both are dropped: a step with no new gradient
    leaves the loaded weights as saved, and the next update steps the embedder
    as in a pipeline that loaded them fresh."""
    nlp, examples = _mix_and_two_taggers(exact_bert_dir)
    for _ in range(2):
        nlp.update(examples, sgd=Adam(0.01))
    saved_mix, saved_encoder = _embedder_weights(nlp)
    saved = nlp.to_bytes()
    nlp.to_disk(tmp_path / "p")
    for _ in range(2):
        with nlp.select_pipes(disable=["tagger2"] if left == "waiting" else []):
            nlp.update(examples, sgd=False)
    embedder = nlp.get_pipe("ctxembed_bert")
    assert (embedder._pending_backward is not None) == (left == "waiting")  # the premise
    nlp.from_bytes(saved) if load == "bytes" else nlp.from_disk(tmp_path / "p")
    embedder.finish_update(SGD(0.1, L2=0.0, grad_clip=0.0))
    _assert_as_saved(nlp, saved_mix, saved_encoder)
    # The next update: as in a pipeline of the same config that loaded the weights fresh.
    fresh = spacy.blank("en").from_config(nlp.config).from_bytes(saved)
    for pipeline in (nlp, fresh):
        pipeline.update(examples, sgd=SGD(0.1, L2=0.0, grad_clip=0.0))
    (mix, encoder), (want_mix, want_encoder) = _embedder_weights(nlp), _embedder_weights(fresh)
    assert any(not numpy.array_equal(want_mix[name], saved_mix[name]) for name in saved_mix)  # it stepped
    for name, value in want_mix.items():
        numpy.testing.assert_allclose(mix[name], value, rtol=0, atol=1e-7, err_msg=name)
    for name, value in want_encoder.items():
        torch.testing.assert_close(encoder[name], value, rtol=0, atol=1e-7, msg=name)


def test_a_load_drops_the_batch_a_listener_holds(exact_bert_dir):
    """A hand-written loop that loads a checkpoint while a listener still holds
    the embedder's last batch (its component left out of that update), then
    updates that component alone: it read the batch, outputs of the weights
    before the load, and its gradient went through the old batch's backprop
    into the loaded weights (the mix moved 0.34). The load drops the batch, so
    the update is refused: its docs hold no outputs."""
    nlp, examples = _mix_and_two_taggers(exact_bert_dir)
    nlp.update(examples, sgd=Adam(0.01))
    saved = nlp.to_bytes()
    saved_mix, saved_encoder = _embedder_weights(nlp)
    with nlp.select_pipes(disable=["tagger2"]):
        nlp.update(examples, sgd=False)
    nlp.from_bytes(saved)
    # (The error spoke of annotating_components alone, not of the load that dropped the batch; found by a
    # review helper.)
    with pytest.raises(ValueError, match=r"(?s)no vectors from upstream 'ctxembed_bert'.*'ctxembed_bert' did send "
                                         r"this listener its outputs for a batch in training, but its weights were "
                                         r"loaded before this component read them"):
        nlp.get_pipe("tagger2").update(examples, sgd=SGD(0.1, L2=0.0, grad_clip=0.0))
    nlp.get_pipe("ctxembed_bert").finish_update(SGD(0.1, L2=0.0, grad_clip=0.0))
    _assert_as_saved(nlp, saved_mix, saved_encoder)


@pytest.mark.parametrize("left", ["accumulated", "waiting", "waiting step"])
def test_a_load_past_the_component_drops_the_gradients_training_left(exact_bert_dir, left):
    """Weights loaded into the embedder's model past the component (thinc's
    `Model.from_bytes`, as `[initialize] init_tok2vec` loads them, or a loop
    restoring a checkpoint) mid-accumulation: the next step moved the loaded
    mix by the gradients of the weights before (0.196 on the tiny BERT with
    dropout), as did a backward pass still waiting for a listener, and the
    step asked for it (0.039), taken at the next update. A load of the
    component's own drops those; this one is noticed before any of them runs
    (found by a review helper)."""
    nlp, examples = _mix_and_two_taggers(exact_bert_dir)
    nlp.update(examples, sgd=Adam(0.01))
    embedder = nlp.get_pipe("ctxembed_bert")
    saved = embedder.model.to_bytes()
    saved_mix, saved_encoder = _embedder_weights(nlp)
    with nlp.select_pipes(disable=["tagger2"] if left != "accumulated" else []):
        for _ in range(1 if left == "waiting step" else 2):
            nlp.update(examples, sgd=SGD(0.1, L2=0.0, grad_clip=0.0) if left == "waiting step" else False)
    assert (embedder._pending_backward is not None) == (left != "accumulated")  # the premise
    embedder.model.from_bytes(saved)
    if left == "waiting step":
        nlp.update(examples, sgd=False)
    else:
        embedder.finish_update(SGD(0.1, L2=0.0, grad_clip=0.0))
    _assert_as_saved(nlp, saved_mix, saved_encoder)


def test_a_load_that_keeps_the_encoder_drops_its_gradients_too(exact_bert_dir, tmp_path):
    """`from_disk` with the model folder excluded loads the combiner and keeps the
    encoder's module: the torch gradients accumulated on it with
    `nlp.update(sgd=False)` are dropped with the combiner's, so the next update
    steps as in a pipeline that holds the same weights and no gradients, rather
    than adding the old batches' gradient to the encoder's step."""
    nlp, examples = _mix_and_two_taggers(exact_bert_dir)
    nlp.update(examples, sgd=Adam(0.01))
    embedder = nlp.get_pipe("ctxembed_bert")
    embedder.to_disk(tmp_path / "embedder")
    nlp.update(examples, sgd=False)
    assert any(p.grad is not None and bool(p.grad.abs().sum()) for p in embedder.encoder.shims[0]._model.parameters())
    embedder.from_disk(tmp_path / "embedder", exclude=["model"])
    fresh = spacy.blank("en").from_config(nlp.config).from_bytes(nlp.to_bytes())  # (bytes carry no gradients)
    for pipeline in (nlp, fresh):
        pipeline.update(examples, sgd=SGD(0.1, L2=0.0, grad_clip=0.0))
    (mix, encoder), (want_mix, want_encoder) = _embedder_weights(nlp), _embedder_weights(fresh)
    for name, value in want_encoder.items():
        torch.testing.assert_close(encoder[name], value, rtol=0, atol=1e-7, msg=name)
    for name, value in want_mix.items():
        numpy.testing.assert_allclose(mix[name], value, rtol=0, atol=1e-7, err_msg=name)


def test_a_load_between_a_listeners_forward_and_backward_pass_keeps_the_old_batchs_gradient_out(exact_bert_dir):
    """The embedder's weights loaded (here, or in another thread) after a
    listening component's forward pass on the batch it sent, before that
    pass's backward: the gradient is of the outputs of the weights before
    the load, and reaches none of the loaded ones; the component's own
    weights still learn from it."""
    nlp, examples = _mix_and_two_taggers(exact_bert_dir)
    nlp.update(examples, sgd=Adam(0.01))
    saved = nlp.to_bytes()
    saved_mix, saved_encoder = _embedder_weights(nlp)
    with nlp.select_pipes(disable=["tagger2"]):
        nlp.update(examples, sgd=False)  # (the embedder sends tagger2 this batch too)
    model = nlp.get_pipe("tagger2").model
    scores, backprop = model.begin_update([example.predicted for example in examples])
    nlp.from_bytes(saved)
    backprop(numpy.ones_like(scores))
    embedder = nlp.get_pipe("ctxembed_bert")
    embedder.finish_update(SGD(0.1, L2=0.0, grad_clip=0.0))
    _assert_as_saved(nlp, saved_mix, saved_encoder)
    before = [param.copy() for param in (node.get_param("W") for node in model.walk() if node.has_param("W"))]
    model.finish_update(SGD(0.1, L2=0.0, grad_clip=0.0))
    after = [node.get_param("W") for node in model.walk() if node.has_param("W")]
    assert any(not numpy.array_equal(a, b) for a, b in zip(after, before))
