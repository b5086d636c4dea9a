"""Concurrent generations decoded together: identical outputs, joining and leaving, budgets, reuse.

Ordering is observed where it happens: the serving core tells each generation's sink every token and
the end from the decode thread, so a log appended by the sinks is the decode thread's own order. Where a
test needs the decode thread to be at a given point (a request still running while another arrives), a
sink holds it there until the test has acted: no sleeps, no timing.
"""

from __future__ import annotations

import threading

import pytest

from gptoss_metal.assistant import Engine, Finished, StopSignal
from gptoss_metal.harmony_io import STOP_IDS
from gptoss_metal.metal_runtime import GenerationStats, load
from gptoss_metal.metal_runtime.sequence import SequenceSpec

PROMPTS = [[200006, 17360, 200008] + list(range(1000 + 7 * i, 1008 + 10 * i)) + [200007, 200006, 173781]
           for i in range(4)]
WAIT_S = 120  # a deadline for a broken engine, never a timing


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def model(request, tiny_runtime):
    return load(tiny_runtime, dtype=request.param)


def run(engine: Engine, prompt, max_tokens, out: dict, key, **kw) -> GenerationStats:
    stats = GenerationStats()
    for _ in engine.stream(prompt, max_tokens=max_tokens, temperature=kw.pop("temperature", 0.0), stats=stats, **kw):
        pass
    out[key] = list(stats.generated)
    return stats


class Log:
    """Events of several generations in the decode thread's order: (name, item) pairs."""

    def __init__(self):
        self.items: list[tuple[str, object]] = []
        self.finished: dict[str, threading.Event] = {}
        self.stats: dict[str, GenerationStats] = {}
        self.hooks: dict[str, object] = {}  # name -> callable(stats) run on the decode thread at each push

    def hold_at(self, name: str, tokens: int) -> tuple[threading.Event, threading.Event]:
        """Make `name`'s generation (the decode thread) stop at its `tokens`-th token until released:
        (reached, release)."""
        reached, release = threading.Event(), threading.Event()

        def hook(st):
            if len(st.generated) == tokens and not reached.is_set():
                reached.set()
                assert release.wait(WAIT_S)

        self.hooks[name] = hook
        return reached, release

    def submit(self, engine: Engine, name: str, prompt, max_tokens: int, **kw):
        """Submit to the engine's serving core with a sink that logs (token ids: no parser in between)."""
        self.finished[name] = threading.Event()
        self.stats[name] = stats = GenerationStats()
        log = self

        class Sink:
            def token(self, token: int, logprob=None) -> None:
                log.items.append((name, token))
                hook = log.hooks.get(name)
                if hook is not None:
                    hook(stats)

            def end(self, st: GenerationStats, error) -> None:
                log.items.append((name, Finished(st, error)))
                log.finished[name].set()

        spec = SequenceSpec(prompt=tuple(prompt), max_tokens=max_tokens, temperature=kw.pop("temperature", 0.0),
                            stop_ids=tuple(STOP_IDS), **kw)
        return engine.core.submit(spec, Sink(), stats)

    def wait(self, *names: str) -> None:
        for n in names:
            assert self.finished[n].wait(WAIT_S), f"{n} did not finish"

    def index(self, name: str, pred) -> int:
        return next(i for i, (n, item) in enumerate(self.items) if n == name and pred(item))


def finished(item) -> bool:
    return isinstance(item, Finished)


def anything(item) -> bool:
    return True


@pytest.fixture(scope="module")
def alone(model):
    engine = Engine(model, max_sequences=1)
    out: dict = {}
    for i, p in enumerate(PROMPTS):
        run(engine, p, 40, out, i, speculate=False)
    engine.close()
    return out


def test_four_concurrent_greedy_streams_equal_each_stream_alone(model, alone):
    engine = Engine(model, max_sequences=4)
    out: dict = {}
    threads = [threading.Thread(target=run, args=(engine, p, 40, out, i)) for i, p in enumerate(PROMPTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    engine.close()
    assert [out[i] for i in range(4)] == [alone[i] for i in range(4)]


def test_requests_join_and_leave_a_running_generation_exactly(model, alone):
    """A starts alone (pipelined, speculative), B and C join mid-way (batch), end early; A goes on alone."""
    engine = Engine(model, max_sequences=4)
    log = Log()
    reached, release = log.hold_at("a", 6)
    log.submit(engine, "a", PROMPTS[0], 40)
    assert reached.wait(WAIT_S)
    handles = [log.submit(engine, i, PROMPTS[i], 8) for i in (1, 2)]
    release.set()
    log.wait("a", 1, 2)
    engine.close()
    assert log.stats["a"].generated == alone[0]
    assert log.stats[1].generated == alone[1][:8] and log.stats[2].generated == alone[2][:8]
    assert all(h.done for h in handles)
    # B and C ran while A was running: their ends come before A's
    assert log.index(1, finished) < log.index("a", finished) and log.index(2, finished) < log.index("a", finished)


@pytest.mark.parametrize("others", [0, 1, 3])
def test_seeded_sampling_is_the_same_alone_and_under_any_concurrency(model, others):
    """temperature 1, seed 42: the same tokens alone and beside others that join and leave while it runs
    (its randomness is addressed by token index, whichever loop draws it: sampling.py)."""
    engine = Engine(model, max_sequences=4)
    alone_out: dict = {}
    run(engine, PROMPTS[0], 30, alone_out, "x", temperature=1.0, seed=42)
    log = Log()
    reached, release = log.hold_at("x", 4)
    log.submit(engine, "x", PROMPTS[0], 30, temperature=1.0, seed=42)
    assert reached.wait(WAIT_S)
    for i in range(1, others + 1):
        log.submit(engine, i, PROMPTS[i], 6 * i, temperature=1.0, seed=100 + i)
    release.set()
    log.wait("x", *range(1, others + 1))
    engine.close()
    assert log.stats["x"].generated == alone_out["x"]


def test_a_cancelled_request_stops_at_the_next_step_and_leaves_the_others_untouched(model, alone):
    engine = Engine(model, max_sequences=2)
    log = Log()
    handles, told = {}, []

    def cancel_b(st):
        if len(st.generated) == 5 and not told:
            told.append(len(st.generated))
            handles["b"].cancel()  # on the decode thread, between two steps

    log.hooks["b"] = cancel_b
    log.submit(engine, "a", PROMPTS[0], 40)
    handles["b"] = log.submit(engine, "b", PROMPTS[1], 40)
    log.wait("a", "b")
    assert log.stats["a"].generated == alone[0]
    got = log.stats["b"].generated
    assert got == alone[1][: told[0]]  # dropped at the very next step
    assert log.stats["b"].finish_reason == "cancelled" and engine.active == 0
    # the cancelled conversation's cache is consistent: continuing it reuses what was generated
    st = run(engine, PROMPTS[1] + got, 4, {}, "b2", speculate=False)
    assert st.reused_tokens >= len(PROMPTS[1]) + len(got) - 1
    engine.close()


def test_a_stop_signal_ends_a_stream_and_frees_its_sequence():
    from doubles import ScriptedModel

    from gptoss_metal.harmony_io import TextDelta, encoding

    reply = encoding().encode("<|channel|>final<|message|>" + "word " * 50 + "<|return|>", allowed_special="all")
    engine = Engine(ScriptedModel([reply]), max_sequences=1)
    stop = StopSignal()
    stats = GenerationStats()
    texts = 0
    for ev in engine.stream(PROMPTS[0], max_tokens=100, temperature=0.0, stats=stats, stop=stop):
        texts += isinstance(ev, TextDelta)
        if texts == 3:
            stop.set()
    n = len(stats.generated)
    assert stats.finish_reason == "cancelled" and stats.generated == reply[:n] and n < len(reply) - 40
    assert engine.active == 0 and engine.waiting == 0
    engine.close()


def test_kv_budget_makes_a_request_wait_instead_of_overcommitting(model):
    worst = model.args.kv_bytes(len(PROMPTS[1]) + 16, model.dtype.size)  # prompt + max_tokens
    engine = Engine(model, max_sequences=2, kv_budget_bytes=int(worst * 1.5))  # room for one, not two
    log = Log()
    reached, release = log.hold_at(0, 1)
    log.submit(engine, 0, PROMPTS[0], 16)
    assert reached.wait(WAIT_S)  # 0 runs when 1 arrives
    log.submit(engine, 1, PROMPTS[1], 16)
    release.set()
    log.wait(0, 1)
    engine.close()
    assert len(log.stats[0].generated) == len(log.stats[1].generated) == 16
    assert log.index(0, finished) < log.index(1, anything)  # the second waited for the first to end


def test_each_conversation_keeps_its_prompt_cache(model):
    engine = Engine(model, max_sequences=2)
    out: dict = {}
    convs = {0: list(PROMPTS[0]), 1: list(PROMPTS[1])}
    reused = {0: [], 1: []}
    for turn in range(2):
        for c in (0, 1):
            st = run(engine, convs[c], 4, out, (c, turn), speculate=False)
            reused[c].append(st.reused_tokens)
            convs[c] = convs[c] + out[(c, turn)] + [200007, 200006, 173781]  # next turn continues it
    engine.close()
    # second turns reuse everything their own first turn left in the cache, despite the interleaving
    assert reused[0][1] >= len(PROMPTS[0]) and reused[1][1] >= len(PROMPTS[1])


def test_a_new_request_starts_while_others_decode(model):
    engine = Engine(model, max_sequences=4)
    log = Log()
    reached, release = log.hold_at(2, 2)
    for i in range(3):
        log.submit(engine, i, PROMPTS[i], 60)
    assert reached.wait(WAIT_S)  # the others are decoding
    log.submit(engine, 3, PROMPTS[3], 2)
    release.set()
    log.wait(0, 1, 2, 3)
    engine.close()
    # it did not wait for the long ones to finish
    assert all(log.index(3, finished) < log.index(i, finished) for i in range(3))


def test_a_full_queue_refuses_at_admission(model):
    from gptoss_metal.metal_runtime.serving import EngineBusy

    engine = Engine(model, max_sequences=1, max_queue=1)
    log = Log()
    reached, release = log.hold_at("run", 1)
    log.submit(engine, "run", PROMPTS[0], 4)
    assert reached.wait(WAIT_S)  # it left the queue
    log.submit(engine, "wait", PROMPTS[1], 4)  # the queue holds one
    with pytest.raises(EngineBusy):
        log.submit(engine, "refused", PROMPTS[2], 4)
    release.set()
    log.wait("run", "wait")
    engine.close()
