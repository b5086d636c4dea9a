"""The streaming parser: real-world misparses, truncation anywhere, never raising, token accounting."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptoss_metal.harmony_io import (
    Done, MessageBegin, MessageEnd, PreambleDelta, ReasoningDelta, StreamParser, TextDelta, ToolCallBegin,
    ToolCallDelta, ToolCallEnd, encoding,
)
from gptoss_metal.harmony_io.events import TEXT_EVENTS

TOOLS = ["functions.get_weather", "python"]
CONTROL = [199998, 199999, 200000, 200001, 200002, 200003, 200005, 200006, 200007, 200008, 200012, 200018]


def E(s: str) -> list[int]:
    return encoding().encode(s, allowed_special="all")


def parse(tokens, tools=TOOLS, finish=True):
    p = StreamParser(tools)
    events = []
    for t in tokens:
        events += p.feed(t)
    if finish:
        events += p.finish()
    return events


def texts(events, kind):
    return "".join(e.text for e in events if isinstance(e, kind))


def test_reasoning_then_final():
    ev = parse(E("<|channel|>analysis<|message|>Let me think.<|end|><|start|>assistant<|channel|>final<|message|>Hi!<|return|>"))
    assert texts(ev, ReasoningDelta) == "Let me think." and texts(ev, TextDelta) == "Hi!"
    ends = [e for e in ev if isinstance(e, MessageEnd)]
    assert [(e.channel, e.stop) for e in ends] == [("analysis", "end"), ("final", "return")]
    assert isinstance(ev[-1], Done) and ev[-1].reason == "stop"
    assert sum(isinstance(e, Done) for e in ev) == 1  # finish() adds nothing after a Done


@pytest.mark.parametrize("stream", [
    "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"Oslo\"}<|call|>",
    " to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{\"city\":\"Oslo\"}<|call|>",
    "<|channel|>commentary to=functions.get_weather json<|message|>{\"city\":\"Oslo\"}<|call|>",
    "<|channel|>commentary to=functions.get_weatherjson<|message|>{\"city\":\"Oslo\"}<|call|>",
    "<|channel|>analysis to=get_weather<|message|>{\"city\":\"Oslo\"}<|call|>",
    "<|channel|>analysis to=functions.get_weather code<|message|>{\"city\":\"Oslo\"}<|call|>",
])
def test_tool_call_variants(stream):
    ev = parse(E(stream))
    begin = [e for e in ev if isinstance(e, ToolCallBegin)]
    end = [e for e in ev if isinstance(e, ToolCallEnd)]
    assert len(begin) == 1 and begin[0].recipient == "functions.get_weather" and begin[0].known
    assert end[0].arguments == '{"city":"Oslo"}' == texts(ev, ToolCallDelta)
    assert ev[-1] == Done("tool_call")


def test_python_call_on_analysis_channel():
    ev = parse(E("<|channel|>analysis to=python code<|message|>print(1+1)<|call|>"))
    assert [e.recipient for e in ev if isinstance(e, ToolCallBegin)] == ["python"]
    assert [e.content_type for e in ev if isinstance(e, ToolCallBegin)] == ["code"]


def test_unknown_recipient_is_a_call_marked_unknown_and_stray_words_are_not_calls():
    ev = parse(E("<|channel|>commentary to=functions.launch <|constrain|>json<|message|>{}<|call|>"))
    (b,) = [e for e in ev if isinstance(e, ToolCallBegin)]
    assert b.recipient == "functions.launch" and not b.known
    ev = parse(E("<|channel|>final foo<|message|>bar<|return|>"))
    assert not any(isinstance(e, ToolCallBegin) for e in ev) and texts(ev, TextDelta) == "bar"


def test_library_misparses_are_repaired():
    ev = parse(E("<|channel|>analysis<|channel|>final<|message|>answer<|return|>"))
    assert texts(ev, TextDelta) == "answer" and not any(isinstance(e, ToolCallBegin) for e in ev)
    ev = parse(E("<|channel|>final <|constrain|>json<|message|>{\"a\":1}<|return|>"))
    (b,) = [e for e in ev if isinstance(e, MessageBegin)]
    assert b.recipient is None and b.content_type == "<|constrain|>json" and texts(ev, TextDelta) == '{"a":1}'


def test_text_before_any_header_and_channel_less_messages_are_final():
    ev = parse(E("Just text, no header.<|return|>"))
    assert texts(ev, TextDelta) == "Just text, no header."
    ev = parse(E("<|message|>plain<|return|>"))
    assert texts(ev, TextDelta) == "plain"
    ev = parse(E("<|channel|>commentary<|message|>Let me check.<|end|>"))
    assert texts(ev, PreambleDelta) == "Let me check."


def test_missing_message_token_in_a_later_message_is_salvaged():
    ev = parse(E("<|channel|>analysis<|message|>hmm<|end|><|start|>assistant<|channel|>final The answer is 4.<|return|>"))
    assert texts(ev, ReasoningDelta) == "hmm"
    assert texts(ev, TextDelta) == " The answer is 4."


def test_stop_tokens_are_distinguished():
    stops = {}
    for name, tok in (("end", "<|end|>"), ("return", "<|return|>"), ("call", "<|call|>")):
        ev = parse(E(f"<|channel|>final<|message|>x{tok}"), finish=False)
        stops[name] = [e.stop for e in ev if isinstance(e, MessageEnd)]
    assert stops == {"end": ["end"], "return": ["return"], "call": ["call"]}
    # <|call|> closing a non-tool message is a stop, not a tool call
    assert parse(E("<|channel|>final<|message|>x<|call|>"))[-1] == Done("stop")
    assert parse(E("<|channel|>final<|message|>x<|endoftext|>"))[-1] == Done("stop")


@pytest.mark.parametrize("cut", range(1, 30))
def test_truncation_anywhere_ends_as_length(cut):
    full = E("<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather"
             " <|constrain|>json<|message|>{\"city\":\"Paris\"}<|call|>")
    ev = parse(full[:cut])
    assert isinstance(ev[-1], Done)
    if cut < len(full):
        assert ev[-1].reason == "length"


def test_multibyte_utf8_split_across_tokens_and_truncated_mid_character():
    enc = encoding()
    word = "𝔘𝔫𝔦 and 🦙"  # each of these characters spans 2-3 tokens of partial UTF-8
    assert len(enc.encode("🦙")) == 3
    ev = parse(E("<|channel|>final<|message|>") + enc.encode(word) + E("<|return|>"))
    assert texts(ev, TextDelta) == word
    deltas = [e for e in ev if isinstance(e, TextDelta)]
    assert all("\ufffd" not in d.text for d in deltas)
    # cut inside the llama's bytes: the partial character becomes one U+FFFD at finish
    ev = parse(E("<|channel|>final<|message|>ok ") + enc.encode("🦙")[:2])
    assert texts(ev, TextDelta) == "ok \ufffd"
    assert ev[-1] == Done("length")


def test_stray_special_tokens_are_ignored_without_losing_text():
    ev = parse(E("<|channel|>final<|message|>a<|channel|>b<|constrain|>c<|message|>d<|return|>"))
    assert texts(ev, TextDelta) == "abcd"
    ev = parse([200018, 200001] + E("<|channel|>final<|message|>x<|return|>"))
    assert texts(ev, TextDelta) == "x"


def _accounted(events) -> list[int]:
    out = []
    for e in events:
        out += list(e.tokens)
    return out


def _text_tokens(tokens) -> list[int]:
    return [t for t in tokens if t < 199998]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 201087), st.sampled_from(CONTROL)), max_size=60))
def test_property_never_raises_and_accounts_for_every_text_token(tokens):
    p = StreamParser(TOOLS)
    events = []
    for t in tokens:
        events += p._feed(t)  # the unguarded path: a bug must show here, not be swallowed
    events += p.finish()
    assert _accounted(events) == _text_tokens(tokens)
    assert isinstance(events[-1], Done)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([
    "<|start|>", "assistant", "<|channel|>", "analysis", "final", "commentary", " to=functions.get_weather",
    " to=python", " <|constrain|>", "json", "<|message|>", "Hello", " world", "{\"a\": 1}", "<|end|>",
    "<|return|>", "<|call|>", "é", "🙂", " foo",
]), max_size=40))
def test_property_harmony_like_streams(pieces):
    tokens = [t for p in pieces for t in E(p)]
    p = StreamParser(TOOLS)
    events = []
    for t in tokens:
        events += p._feed(t)
    events += p.finish()
    assert _accounted(events) == _text_tokens(tokens)
    # deltas and the closing MessageEnd texts agree
    for kind in TEXT_EVENTS:
        assert isinstance(texts(events, kind), str)


THEN_ANSWER = "<|start|>assistant<|channel|>analysis<|message|>Thinking.<|end|><|start|>assistant<|channel|>final" \
              "<|message|>Answer.<|return|>"


@pytest.mark.parametrize("abandoned", [
    "<|channel|>commentary?commentary?<|end|>",  # llama.cpp #27720: a channel word twice
    "<|channel|>commentary to=assistant<|channel|>commentary?<|end|>",  # llama.cpp #27720: a doubled header
    "<|channel|>??<|end|>",  # llama.cpp #27720: a channel that is none
    "<|channel|>commentary to=functions.get_weather <|constrain|>write: edit file with content.<|end|>",  # tiles #145
    "<|channel|>commentary to=functions.get_weather <|constrain|>json<|end|>",  # a call header with no call
    "<|channel|>analysis to=functions.get_weather code<|end|>",
])
def test_a_header_abandoned_before_its_message_shows_nothing_and_is_no_call(abandoned):
    """Reported gpt-oss outputs: a header that went wrong, closed with <|end|> before <|message|>; the model
    then starts over. Nothing of it is shown and no call is made of it; its tokens stay in the record."""
    tokens = E(abandoned + THEN_ANSWER)
    ev = parse(tokens)
    assert texts(ev, TextDelta) == "Answer." and texts(ev, ReasoningDelta) == "Thinking."
    assert texts(ev, PreambleDelta) == "" and not any(isinstance(e, (ToolCallBegin, ToolCallEnd)) for e in ev)
    assert [e.reason for e in ev if isinstance(e, Done)] == ["stop"]
    first = next(e for e in ev if isinstance(e, MessageEnd))
    assert list(first.message_tokens) == E("<|start|>assistant" + abandoned)  # exact history keeps it


@pytest.mark.parametrize("stream", [
    '<|channel|>analysis to=functions.get_weather code<|message|>{"city": "Oslo"}<|call|>',  # seen with gpt-oss-20b
    '<|channel|>analysis to=functions.get_weather <|constrain|>json<|message|>{"city": "Oslo"}<|call|>',
    '<|channel|>commentary to=functions.get_weather <|constrain|>json some words<|message|>{"city": "Oslo"}<|call|>',
])
def test_a_call_from_the_analysis_channel_or_with_words_after_its_content_type_is_a_call(stream):
    ev = parse(E(stream))
    (end,) = [e for e in ev if isinstance(e, ToolCallEnd)]
    assert (end.recipient, end.arguments, end.known) == ("functions.get_weather", '{"city": "Oslo"}', True)
    assert [e.reason for e in ev if isinstance(e, Done)] == ["tool_call"]
