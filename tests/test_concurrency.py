"""Concurrent requests decoded together: identical outputs, joining and leaving, budgets, reuse."""

from __future__ import annotations

import threading
import time

import pytest

from gptoss_metal.assistant import Engine, TurnStats
from gptoss_metal.metal_runtime import load

PROMPTS = [[200006, 17360, 200008] + list(range(1000 + 7 * i, 1008 + 10 * i)) + [200007, 200006, 173781]
           for i in range(4)]


@pytest.fixture(scope="module")
def model(tiny_runtime):
    return load(tiny_runtime, dtype="float32")


def run(engine: Engine, prompt, max_tokens, out: dict, key, on_token=None, **kw) -> TurnStats:
    stats = TurnStats()
    n = 0
    for _ in engine.stream(prompt, max_tokens=max_tokens, temperature=0.0, stats=stats, **kw):
        n += 1
        if on_token is not None:
            on_token(len(stats.generated))
    out[key] = list(stats.generated)
    return stats


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
        t.join(120)
    engine.close()
    assert [out[i] for i in range(4)] == [alone[i] for i in range(4)]


def test_requests_join_and_leave_a_running_generation_exactly(model, alone):
    """A starts alone (pipelined, speculative), B and C join mid-way (batch), end early; A goes on alone."""
    engine = Engine(model, max_sequences=4)
    out: dict = {}
    started = threading.Event()
    a = threading.Thread(target=run, args=(engine, PROMPTS[0], 40, out, "a"),
                         kwargs={"on_token": lambda n: n >= 6 and started.set()})
    a.start()
    assert started.wait(60)
    joiners = [threading.Thread(target=run, args=(engine, PROMPTS[i], 8, out, i)) for i in (1, 2)]
    for t in joiners:
        t.start()
    for t in joiners + [a]:
        t.join(120)
    engine.close()
    assert out["a"] == alone[0]
    assert out[1] == alone[1][:8] and out[2] == alone[2][:8]


def test_a_cancelled_request_leaves_the_others_untouched(model, alone):
    engine = Engine(model, max_sequences=2)
    out: dict = {}
    b_stats = TurnStats()

    def b():
        for _ in engine.stream(PROMPTS[1], max_tokens=40, temperature=0.0, stats=b_stats,
                               should_stop=lambda: len(b_stats.generated) >= 5):  # polled by the decode thread
            pass

    ta = threading.Thread(target=run, args=(engine, PROMPTS[0], 40, out, "a"))
    tb = threading.Thread(target=b)
    ta.start()
    tb.start()
    ta.join(120)
    tb.join(120)
    assert out["a"] == alone[0]
    got = list(b_stats.generated)
    assert 5 <= len(got) <= 6 and got == alone[1][: len(got)]  # stopped within a token of being told
    assert engine.active == 0
    # the cancelled conversation's cache is consistent: continuing it reuses what was generated
    st = run(engine, PROMPTS[1] + got, 4, out, "b2", speculate=False)
    assert st.reused_tokens >= len(PROMPTS[1]) + len(got) - 1
    engine.close()


def test_kv_budget_makes_a_request_wait_instead_of_overcommitting(model):
    worst = model.args.kv_bytes(len(PROMPTS[1]) + 16, 4)  # prompt + max_tokens, float32 keys and values
    engine = Engine(model, max_sequences=2, kv_budget_bytes=int(worst * 1.5))  # room for one, not two
    out: dict = {}
    stats: dict = {}

    def go(i):
        stats[i] = run(engine, PROMPTS[i], 16, out, i)

    threads = [threading.Thread(target=go, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join(120)
    engine.close()
    assert len(out[0]) == len(out[1]) == 16
    waited = max(stats[0].queued_seconds, stats[1].queued_seconds)
    ran = min(stats[0].decode_seconds + stats[0].prefill_seconds, stats[1].decode_seconds + stats[1].prefill_seconds)
    assert waited >= 0.5 * ran  # the second one waited for the first to finish


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
    out: dict = {}
    first_token: dict = {}
    busy = [threading.Thread(target=run, args=(engine, PROMPTS[i], 60, out, i)) for i in range(3)]
    for t in busy:
        t.start()
    time.sleep(0.5)
    t0 = time.perf_counter()
    run(engine, PROMPTS[3], 2, out, 3, on_token=lambda n: first_token.setdefault(3, time.perf_counter()))
    still_running = engine.active
    for t in busy:
        t.join(120)
    engine.close()
    assert first_token[3] - t0 < 30
    assert still_running >= 1  # it did not wait for the long ones to finish
