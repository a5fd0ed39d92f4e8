"""The gate that keeps a component's loads apart from its predictions across threads."""
import threading
import time

import pytest

from spacy_ctxembed.pipeline.load_gate import LoadGate


def _wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_waiting_load_goes_before_predictions_that_start_after_it():
    # Threads that keep predicting, their calls overlapping, would otherwise
    # keep a load out for good.
    gate, order = LoadGate(), []
    release_first = threading.Event()
    first_in = threading.Event()

    def first_prediction():
        with gate.predicting():
            first_in.set()
            release_first.wait(10)
        order.append("first prediction")

    def load():
        with gate.loading():
            order.append("load")

    def later_prediction():
        with gate.predicting():
            order.append("later prediction")

    threads = [threading.Thread(target=first_prediction)]
    threads[0].start()
    assert first_in.wait(10)
    threads.append(threading.Thread(target=load))
    threads[1].start()
    _wait_until(lambda: gate._waiting_writers == 1)
    threads.append(threading.Thread(target=later_prediction))
    threads[2].start()
    time.sleep(0.05)
    assert order == []  # the load waits for the first prediction, the later one for the load
    release_first.set()
    for thread in threads:
        thread.join(10)
    assert order == ["first prediction", "load", "later prediction"]


def test_the_gate_is_reentrant_and_a_prediction_nests_while_a_load_waits():
    gate = LoadGate()
    with gate.loading():
        with gate.loading(), gate.predicting():  # a load that loads again, or predicts
            pass
    inner_done, load_done = threading.Event(), threading.Event()
    with gate.predicting():
        loader = threading.Thread(target=lambda: (gate.loading().__enter__(), load_done.set()))
        loader.start()
        _wait_until(lambda: gate._waiting_writers == 1)
        with gate.predicting():  # this thread already predicts: no wait for the load
            inner_done.set()
        assert not load_done.is_set()
    assert inner_done.is_set()
    loader.join(10)
    assert load_done.is_set()


def test_a_load_that_fails_leaves_the_gate_free():
    gate = LoadGate()
    try:
        with gate.loading():
            raise ValueError("bad bytes")
    except ValueError:
        pass
    done = threading.Event()
    thread = threading.Thread(target=lambda: (gate.predicting().__enter__(), done.set()))
    thread.start()
    thread.join(10)
    assert done.is_set()


def test_a_load_interrupted_while_it_waits_lets_later_predictions_in():
    gate = LoadGate()
    release, holding = threading.Event(), threading.Event()

    def prediction():
        with gate.predicting():
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=prediction, daemon=True)
    holder.start()
    assert holding.wait(10)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    real_wait = gate._condition.wait
    gate._condition.wait = interrupted  # the waiting load is interrupted (Ctrl-C)
    with pytest.raises(KeyboardInterrupt):
        with gate.loading():
            pass
    gate._condition.wait = real_wait
    later = threading.Event()
    thread = threading.Thread(target=lambda: (gate.predicting().__enter__(), later.set()), daemon=True)
    thread.start()
    try:
        assert later.wait(5), "a prediction waited for a load that was no longer coming"
    finally:
        release.set()
        holder.join(10)
