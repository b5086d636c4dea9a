"""openai/harmony's parsing fixtures and parser tests through our StreamParser, and malformed output.

The expectations come from the peer: its fixtures in ../shared/peer-data, the messages its parser tests
expect (tests/test_harmony.py, src/tests.rs at v0.0.8, transcribed below with their names), and the
installed openai-harmony's own non-strict parser run live on the same tokens. We compare in
substance: per message its channel, recipient, content type and text, plus which of our event kinds
carried it, the Done reasons, and that every text token is accounted for exactly once. Surrounding
whitespace of text salvaged from a header that lacked `<|message|>` is not substance (the peer trims
it; we keep the model's tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai_harmony import Role, StreamableParser

from gptoss_metal.harmony_io import (
    Done, MessageBegin, MessageEnd, PreambleDelta, ReasoningDelta, StreamParser, TextDelta, ToolCallBegin,
    ToolCallDelta, ToolCallEnd, encoding, render_prompt,
)
from gptoss_metal.harmony_io.tokens import FIRST_SPECIAL
from peer_data import harmony_text, harmony_token_ids

KIND = {ReasoningDelta: "reasoning", TextDelta: "text", PreambleDelta: "preamble", ToolCallDelta: "tool"}
WEATHER = ["functions.get_weather"]


def E(s: str) -> list[int]:
    return encoding().encode(s, allowed_special="all")


@dataclass
class Read:
    """Our parser's reading of a token stream."""

    messages: list[dict] = field(default_factory=list)
    kinds: list[set] = field(default_factory=list)
    calls: list[ToolCallEnd] = field(default_factory=list)
    begins: list[ToolCallBegin] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    ends: list[MessageEnd] = field(default_factory=list)
    accounted: bool = False

    @property
    def visible(self) -> str:
        return "".join(m["text"] for m, k in zip(self.messages, self.kinds) if k & {"text", "preamble"})


def read(tokens: list[int], tools: Optional[list[str]] = WEATHER) -> Read:
    p = StreamParser(tools)
    events = []
    for t in tokens:
        events += p._feed(t)  # unguarded: a parser bug must fail here, not be swallowed by feed()
    events += p.finish("stop")
    r = Read()
    accounted = []
    for ev in events:
        accounted += list(ev.tokens)
        if isinstance(ev, MessageBegin):
            r.messages.append({"channel": ev.channel, "recipient": ev.recipient, "content_type": ev.content_type,
                               "text": ""})
            r.kinds.append(set())
        elif type(ev) in KIND:
            r.messages[-1]["text"] += ev.text
            r.kinds[-1].add(KIND[type(ev)])
        elif isinstance(ev, ToolCallBegin):
            r.begins.append(ev)
        elif isinstance(ev, ToolCallEnd):
            r.calls.append(ev)
        elif isinstance(ev, MessageEnd):
            r.ends.append(ev)
        elif isinstance(ev, Done):
            r.done.append(ev.reason)
    r.accounted = accounted == [t for t in tokens if 0 <= t < FIRST_SPECIAL or t >= 201088]
    return r


def upstream(tokens: list[int], role: Optional[Role] = Role.ASSISTANT) -> list[dict]:
    """The installed openai-harmony's non-strict reading (the peer, live)."""
    p = StreamableParser(encoding(), role, strict=False)
    for t in tokens:
        p.process(t)
    p.process_eos()
    return [{"channel": m.channel, "recipient": m.recipient, "content_type": m.content_type,
             "text": "".join(c.text for c in m.content)} for m in p.messages]


def substance(messages: list[dict]) -> list[dict]:
    return [dict(m, text=m["text"].strip()) for m in messages]


def msg(text, channel=None, recipient=None, content_type=None) -> dict:
    return {"channel": channel, "recipient": recipient, "content_type": content_type, "text": text}


REFUSE_TAIL = ("<|start|>assistant<|channel|>analysis<|message|>We must refuse<|end|>"
               "<|start|>assistant<|channel|>final<|message|>I'm sorry, but I can't help with that.<|return|>")
REFUSED = [msg("We must refuse", "analysis"), msg("I'm sorry, but I can't help with that.", "final")]

# name -> (tokens, the messages the peer's test expects, our declared tools)
NON_STRICT = {
    "test_harmony.py::test_streamable_parser_missing_message_token": (
        E("I must refuse<|end|>" + REFUSE_TAIL), [msg("I must refuse")] + REFUSED, WEATHER),
    "test_harmony.py::test_streamable_parser_missing_message_token_other_initial_headers": (
        E("<|channel|>analysis I must refuse<|end|>" + REFUSE_TAIL), [msg("I must refuse", "analysis")] + REFUSED,
        WEATHER),
    "test_harmony.py::test_streamable_parser_missing_message_token_tool_call": (
        E("... Let's use the tool.<|end|><|start|>assistant to=functions.get_weather<|channel|>commentary json"
          '<|message|>{"location": "Tokyo"}<|call|>'),
        [msg("... Let's use the tool."), msg('{"location": "Tokyo"}', "commentary", "functions.get_weather", "json")],
        WEATHER),
    "tests.rs::test_missing_message_token_requires_non_strict_mode": (
        E("<|channel|>commentary Hello<|end|>"), [msg("Hello", "commentary")], WEATHER),
}


@pytest.mark.parametrize("name", sorted(NON_STRICT))
def test_peer_non_strict_parser_tests(name):
    tokens, expected, tools = NON_STRICT[name]
    r = read(tokens, tools)
    assert substance(r.messages) == expected
    assert substance(upstream(tokens)) == expected  # the peer's parser agrees with its own test
    assert r.accounted


FIXTURES = {
    # fixture -> (tokens, messages, kinds, Done reasons, declared tools)
    "test_simple_reasoning_response": (
        lambda: harmony_token_ids("test-data/test_simple_reasoning_response.txt"),
        [msg('User asks: "What is 2 + 2?" Simple arithmetic. Provide answer.', "analysis"), msg("2 + 2 = 4.", "final")],
        [{"reasoning"}, {"text"}], ["stop", "stop"], WEATHER),
    "test_simple_tool_call": (  # a bare `to=lookup_weather`: with no tools declared, taken as written
        lambda: harmony_token_ids("test-data/test_simple_tool_call.txt"),
        [msg('User asks: "What is the weather in Tokyo?" We need to use lookup_weather tool.', "analysis"),
         msg('{"location": "Tokyo"}', "analysis", "lookup_weather", "code")],
        [{"reasoning"}, {"tool"}], ["stop", "stop"], None),
    "test_simple_tool_call#declared": (  # ... and with the function declared, normalized to its namespace
        lambda: harmony_token_ids("test-data/test_simple_tool_call.txt"),
        [msg('User asks: "What is the weather in Tokyo?" We need to use lookup_weather tool.', "analysis"),
         msg('{"location": "Tokyo"}', "analysis", "functions.lookup_weather", "code")],
        [{"reasoning"}, {"tool"}], ["stop", "stop"], ["functions.lookup_weather"]),
    "format_md_block15_receiving_tool_call": (
        lambda: E(harmony_text("docs-examples/format_md_block15_receiving_tool_call.txt")),
        [msg("Need to use function get_weather.", "analysis"),
         msg('{"location":"San Francisco"}', "commentary", "functions.get_weather", "<|constrain|>json")],
        [{"reasoning"}, {"tool"}], ["tool_call"], WEATHER),
    "format_md_block19_preamble_output": (
        lambda: E(harmony_text("docs-examples/format_md_block19_preamble_output.txt")),
        [msg("{long chain of thought}", "analysis"),
         msg("**Action plan**:\n1. Generate an HTML file\n2. Generate a JavaScript for the Node.js server\n"
             "3. Start the server\n---\nWill start executing the plan step by step", "commentary"),
         msg('{"template": "basic_html", "path": "index.html"}', "commentary", "functions.generate_file",
             "<|constrain|>json")],
        [{"reasoning"}, {"preamble"}, {"tool"}], ["tool_call"], ["functions.generate_file"]),
}


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_peer_parsing_fixtures(name):
    tokens, expected, kinds, done, tools = FIXTURES[name]
    tokens = tokens()
    r = read(tokens, tools)
    assert r.messages == expected and r.kinds == kinds and r.done == done and r.accounted
    if tools is None:
        assert upstream(tokens) == expected


def test_peer_streamable_parser_fixture_has_three_messages_and_the_browser_call():
    """test_streamable_parser: reasoning, a browser call (the model writes `code` for it), then the
    browser tool's reply. Our parser reads model output: the reply is not a call to `assistant`."""
    tokens = E(harmony_text("test-data/test_streamable_parser.txt"))
    assert len(upstream(tokens)) == 3
    for tools in (None, [], ["browser"]):
        r = read(tokens, tools)
        assert len(r.messages) == 3 and r.accounted
        assert [c.recipient for c in r.calls] == ["browser.search"]
        assert r.calls[0].known == (tools != [])  # a declared built-in namespace covers browser.search
        assert r.messages[2]["recipient"] is None and r.done[0] == "tool_call"


def test_docs_reasoning_output_with_its_newline_between_messages():
    """docs block 04 puts a newline between `<|end|>` and `<|start|>` (the peer's parser rejects it).
    We read both messages; the stray newline is accounted for and shown nowhere."""
    r = read(E(harmony_text("docs-examples/format_md_block04_reasoning_output.txt")))
    texts = [(m["channel"], m["text"]) for m in r.messages if m["text"]]
    assert texts == [("analysis", 'User asks: "What is 2 + 2?" Simple arithmetic. Provide answer.'),
                     ("final", "2 + 2 = 4.")]
    assert r.visible == "2 + 2 = 4." and r.accounted and r.done == ["stop"]


STRICT = {  # well-formed input and UTF-8 edge cases from the peer's tests, read the same by both
    "constrain_tokenized_correctly": E('<|start|>assistant to=functions.get_weather<|channel|>commentary '
                                       '<|constrain|>json<|message|>{"location": "Tokyo"}<|call|>'),
    "constrain_marker_adjacent": E('<|start|>assistant to=functions.get_weather<|channel|>commentary<|constrain|>json'
                                   '<|message|>{"location": "Tokyo"}<|call|>'),
    "channel_before_recipient_and_constrain_adjacent": E(
        '<|start|>assistant<|channel|>commentary to=functions.get_weather<|constrain|>json<|message|>'
        '{"latitude":48.8566,"longitude":2.3522}<|call|>'),
    "does_not_leak_bytes_between_messages": E("<|start|>assistant<|message|>") + [9552, 9552] + E(
        "<|end|><|start|>assistant<|message|>Hi<|end|>"),
    "flushes_partial_bytes_on_eos": E("<|start|>assistant<|message|>") + [9552] + E("Hi"),
    "waits_for_multi_token_utf8_sequence": E("<|start|>assistant<|message|>💖<|end|>"),
    "invalid_content_token_on_eos": E("<|start|>assistant<|channel|>analysis<|message|>Practice invalid token "
                                      "handling.") + [2**32 - 1],
    "invalid_utf8_decoding": E("<|start|>assistant<|message|>") + [9552, 9552] + E("worked<|end|>"),
    "invalid_utf8_split_across_tokens": E("<|start|>assistant<|message|>") + [9552] + E("XY<|end|>"),
    "invalid_utf8_multi_byte_token": E("<|start|>assistant<|message|>") + [9552] + E(" interesting<|end|>"),
    "tricky_utf8": E("<|start|>assistant<|message|>Hello Müller, Γειά σου, Привет, שלום, مرحبا, नमस्ते, こんにちは, "
                     "안녕하세요, 你好. Normalized (naïve) vs. decomposed (naïve) characters. Some emojis: "
                     "😊👋🏾👨‍👩‍👧‍👦🇺🇸.<|end|>"),
}


@pytest.mark.parametrize("name", sorted(STRICT))
def test_peer_parser_tests_character_for_character(name):
    tokens = STRICT[name]
    # our parser reads generated tokens (the prompt supplied <|start|>assistant); the peer reads from <|start|>
    r = read(tokens[2:] if tokens[:2] == E("<|start|>assistant") else tokens)
    assert r.messages == upstream(tokens, role=None) and r.accounted


# -- malformed output the peer rejects or misreads -------------------------------------------------

SPLIT = E("<|channel|>commentary")[1:]


def test_commentary_is_split_across_tokens():
    assert len(SPLIT) == 2 and encoding().decode(SPLIT[:1]) == "comment"


@pytest.mark.parametrize("stream,channel,text", [
    ("<|channel|>commentary Hello<|end|>", "commentary", " Hello"),
    ("<|channel|>commentary<|end|>", "commentary", ""),
    ("<|channel|>commentaryHello<|end|>", "commentary", "Hello"),
    ("<|channel|>commentary\nHello<|end|>", "commentary", "Hello"),
    ("<|channel|>analysis<|message|>x<|end|><|start|>assistant<|channel|>commentary I will check.<|end|>",
     "commentary", " I will check."),
])
def test_split_channel_word_in_a_header_without_message_never_leaks(stream, channel, text):
    r = read(E(stream))
    last = r.messages[-1]
    assert (last["channel"], last["text"].lstrip("\n")) == (channel, text)
    assert "ary" not in r.visible and "comment" not in r.visible
    assert r.accounted


def test_split_channel_word_with_a_recipient_but_no_message_token_is_still_a_call():
    r = read(E('<|channel|>commentary to=functions.get_weather {"city": "Oslo"}<|call|>'))
    assert [(c.recipient, c.arguments.strip()) for c in r.calls] == [("functions.get_weather", '{"city": "Oslo"}')]
    assert r.visible == "" and r.done == ["tool_call"] and r.accounted


CALL_AFTER_END = ('<|channel|>analysis<|message|>Need weather.<|end|><|channel|>commentary to=functions.get_weather '
                  '<|constrain|>json<|message|>{"city": "Oslo"}<|call|>')


@pytest.mark.parametrize("stream", [
    CALL_AFTER_END,
    '<|channel|>analysis<|message|>Need weather.<|end|> to=functions.get_weather<|channel|>commentary '
    '<|constrain|>json<|message|>{"city": "Oslo"}<|call|>',
])
def test_a_header_after_end_without_start_is_recovered_as_a_tool_call(stream):
    r = read(E(stream))
    assert [(c.recipient, c.arguments, c.known) for c in r.calls] == [("functions.get_weather", '{"city": "Oslo"}', True)]
    assert r.visible == "" and r.done == ["tool_call"] and r.accounted
    assert [m["text"] for m in r.messages] == ["Need weather.", '{"city": "Oslo"}']


def test_a_final_after_end_without_start_is_the_answer():
    r = read(E("<|channel|>analysis<|message|>Think.<|end|><|channel|>final<|message|>Hi.<|return|>"))
    assert r.visible == "Hi." and r.messages[-1]["channel"] == "final" and r.done == ["stop"]


def test_exact_history_of_a_recovered_message_renders_a_well_formed_prompt():
    """The recorded message gets the <|start|>assistant the model left out: spliced into the next
    prompt, it reads as harmony, and openai-harmony parses the whole prompt back."""
    r = read(E(CALL_AFTER_END))
    tokens = [m.message_tokens for m in r.ends]
    assert all(t[:2] == tuple(E("<|start|>assistant")) for t in tokens)
    history = [{"role": "user", "content": "Weather in Oslo?"},
               {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
                   "name": "get_weather", "arguments": '{"city": "Oslo"}'}}],
                "exact_history": [{"tokens": list(t), "channel": m.channel, "recipient": m.recipient}
                                  for t, m in zip(tokens, r.ends)]},
               {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    prompt = render_prompt(history, tools=[{"type": "function", "function": {"name": "get_weather"}}])
    text = encoding().decode(prompt)
    assert "<|end|><|channel|>" not in text
    assert ("<|start|>assistant<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>"
            "commentary to=functions.get_weather <|constrain|>json<|message|>") in text
    parsed = encoding().parse_messages_from_completion_tokens(prompt[:-2], role=None, strict=True)
    assert [m.author.role for m in parsed][-3:] == [Role.ASSISTANT, Role.ASSISTANT, Role.TOOL]


@pytest.mark.parametrize("stream,tools", [
    ("<|channel|>final Hello there<|message|>World<|return|>", None),
    ("<|channel|>final Hello there<|message|>World<|return|>", WEATHER),
    ("<|channel|>final foo<|message|>World<|return|>", []),
])
def test_stray_header_words_are_not_recipients(stream, tools):
    r = read(E(stream), tools)
    assert not r.calls and r.visible == "World" and r.done == ["stop"]


def test_a_message_addressed_to_the_assistant_is_not_a_tool_call():
    r = read(E("<|start|>browser.search to=assistant<|channel|>commentary<|message|>{}<|end|>"), tools=None)
    assert not r.begins and not r.calls


def test_declared_builtin_namespace_covers_its_calls():
    r = read(E('<|channel|>analysis to=browser.open<|message|>{"id": 1}<|call|>'), tools=["browser"])
    assert [(c.recipient, c.known) for c in r.calls] == [("browser.open", True)]
    r = read(E('<|channel|>commentary to=functions.other<|message|>{}<|call|>'), tools=WEATHER)
    assert [(c.recipient, c.known) for c in r.calls] == [("functions.other", False)]


HEADER_WORDS = ("analysis", "commentary", "final", "comment", "to=", "functions", "json", "assistant")


@st.composite
def malformed_turns(draw) -> list[int]:
    """Harmony-like output whose headers may lack `<|start|>assistant` or `<|message|>`, with content
    made of words that never occur in a header."""
    tokens: list[int] = []
    for i in range(draw(st.integers(1, 4))):
        if i and draw(st.booleans()):
            tokens += E("<|start|>assistant")
        channel = draw(st.sampled_from(["analysis", "commentary", "final"]))
        call = channel != "final" and draw(st.booleans())
        tokens += E(f"<|channel|>{channel}") + (E(" to=functions.get_weather") if call else [])
        if call and draw(st.booleans()):
            tokens += E(" <|constrain|>json")
        separator = draw(st.sampled_from(["<|message|>", "<|message|>", " ", "\n", ""]))
        tokens += E(separator)
        for piece in draw(st.lists(st.sampled_from([" Hello", " world", "Hi", '{"city": "Oslo"}', "é", " 42"]),
                                   max_size=4)):
            tokens += E(piece)
        tokens += E(draw(st.sampled_from(["<|end|>", "<|call|>" if call else "<|return|>"])))
    return tokens


def _calls_not_abandoned(tokens: list[int]) -> int:
    stops, message, start = set(E("<|end|><|call|><|return|>")), E("<|message|>")[0], E("<|start|>")[0]
    n, segment = 0, []
    for t in tokens + [start]:
        if t in stops or t == start:
            abandoned = t == E("<|end|>")[0] and message not in segment
            if "to=functions.get_weather" in encoding().decode(segment) and not abandoned:
                n += 1
            segment = []
        else:
            segment.append(t)
    return n


@settings(max_examples=300, deadline=None)
@given(malformed_turns())
def test_property_no_header_word_reaches_text_and_calls_stay_calls(tokens):
    r = read(tokens)
    assert r.accounted
    shown = "".join(m["text"] for m, k in zip(r.messages, r.kinds) if k - {"tool"})
    assert not any(w in shown for w in HEADER_WORDS), shown
    # every call header surfaces as a call (a word glued to the name without a space stays glued), except
    # one abandoned before its <|message|> with <|end|>: that is no call (parser.py)
    assert len(r.calls) == _calls_not_abandoned(tokens)
    assert all(c.recipient.startswith("functions.get_weather") for c in r.calls)


def test_peer_tool_response_parsing_fixture_is_a_tool_message_not_a_call():
    """test_tool_response_parsing parses a *tool's* message (`browser.search to=assistant`); our parser
    reads what the model generates, so it is no call to `assistant` and its text is all accounted for."""
    tokens = E(harmony_text("test-data/test_tool_response_parsing.txt"))
    assert [m["recipient"] for m in upstream(tokens, role=None)] == ["assistant"]
    for tools in (None, [], ["browser"]):
        r = read(tokens, tools)
        assert not r.calls and not r.begins and r.accounted
        assert [m["text"] for m in r.messages] == ['{"result": "https://openai.com/"}']
