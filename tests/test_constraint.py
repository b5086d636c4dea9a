"""Structured outputs: harmony_io.token_masks (llguidance on o200k_harmony) and harmony_io.constraint.

The constraint is driven the way a decode loop will drive it: a "model" proposes logits (random, with
preferences), a plain numpy sampler picks the best token the mask allows, the constraint is fed it.
What comes out must parse as harmony (our StreamParser), end as the request demands, and carry JSON
that validates against the request's schemas (`jsonschema`), whatever the model preferred.
"""

from __future__ import annotations

import json
from typing import Optional

import jsonschema
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptoss_metal.harmony_io import HarmonyIOError, StreamParser, TextDelta, ToolCallEnd, encoding
from gptoss_metal.harmony_io import token_masks as g
from gptoss_metal.harmony_io.constraint import (
    JSON_OBJECT,
    ConstraintViolation,
    HarmonyConstraint,
    OutputConstraint,
    output_constraint,
)
from gptoss_metal.harmony_io.parser import MessageEnd
from gptoss_metal.harmony_io.tokens import CALL, CHANNEL, END, ENDOFTEXT, MESSAGE, RETURN, START, VOCAB_SIZE

from peer_data import peer_file

V = VOCAB_SIZE
CONTROL = np.arange(g.FIRST_SPECIAL, V)
MATH = {
    "type": "object",
    "properties": {
        "steps": {"type": "array", "items": {
            "type": "object", "properties": {"explanation": {"type": "string"}, "output": {"type": "string"}},
            "required": ["explanation", "output"], "additionalProperties": False}},
        "final_answer": {"type": "string"},
    },
    "required": ["steps", "final_answer"], "additionalProperties": False,
}
REPORT = {  # what pydantic writes: $defs, $ref, anyOf with null, enum
    "$defs": {"Unit": {"enum": ["celsius", "fahrenheit"], "type": "string"},
              "Reading": {"type": "object", "required": ["city", "temperature", "unit"],
                          "properties": {"city": {"type": "string"}, "temperature": {"type": "number"},
                                         "unit": {"$ref": "#/$defs/Unit"},
                                         "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}}}},
    "type": "object", "required": ["readings", "summary"],
    "properties": {"readings": {"type": "array", "items": {"$ref": "#/$defs/Reading"}}, "summary": {"type": "string"}},
}
SCHEMAS = {"math": MATH, "json_object": JSON_OBJECT, "report": REPORT}


@pytest.fixture(scope="module")
def peer_tools() -> dict[str, dict]:
    """The gpt-oss compatibility tests' function tools: name -> parameters schema."""
    return {t["name"]: t["parameters"] for t in json.loads(peer_file("gptoss/compatibility-test/tools.json").read_text())}


# -- a model and a sampler -----------------------------------------------------------------------


def allowed_bits(mask: np.ndarray) -> np.ndarray:
    return np.unpackbits(mask.view(np.uint8), bitorder="little")[:V].astype(bool)


class NoisyModel:
    """Random logits (a bank of vectors, one drawn per step) plus preferences.

    `prefer` adds fixed logits to some tokens (a model that wants to stop: huge values on the stop
    tokens). Now and then it also favours control tokens and closing quotes/brackets, as a real
    model ends its messages and strings, and more often as its output grows (up to 9 steps in 10),
    so that runs end in a bounded number of steps (an open-ended json_object can otherwise nest on).
    """

    def __init__(self, seed: int, prefer: Optional[dict[int, float]] = None, nudges: bool = True):
        self.rng = np.random.default_rng(seed)
        self.bank = self.rng.standard_normal((8, V)).astype(np.float32)
        self.prefer = prefer or {}
        self.nudges = nudges
        self.steps = 0

    def logits(self) -> np.ndarray:
        out = self.bank[self.rng.integers(len(self.bank))].copy()
        for t, bias in self.prefer.items():
            out[t] += bias
        self.steps += 1
        if self.nudges and self.rng.random() < min(0.9, 0.3 + self.steps / 2000):
            out[closers()] += 50.0 + 20.0 * self.rng.random(len(closers()), dtype=np.float32)  # a random closer
        if self.nudges and self.rng.random() < 0.1:
            out[CONTROL] += 60.0
        return out


def closers() -> np.ndarray:
    global _CLOSERS
    if _CLOSERS is None:
        _CLOSERS = np.array([i for i, b in enumerate(g.token_bytes()) if b.strip() and not b.strip(b'"]} ')])
    return _CLOSERS


_CLOSERS: Optional[np.ndarray] = None


def generate(constraint: HarmonyConstraint, model: NoisyModel, max_steps: int = 4000) -> list[int]:
    """Sample under the constraint's masks until a stop token; checks every mask on the way."""
    out: list[int] = []
    for _ in range(max_steps):
        mask = constraint.next_mask()
        assert mask is not None and mask.dtype == np.int32 and mask.shape == (g.MASK_WORDS,)
        bits = allowed_bits(mask)
        assert bits.any(), f"empty mask in state {constraint.state}"
        assert not bits[ENDOFTEXT] and not bits[g.FIRST_SPECIAL], "<|endoftext|> / <|startoftext|> allowed"
        row = np.full(g.MASK_WORDS, 0, dtype=np.int32)
        assert constraint.fill_mask(row) and np.array_equal(row, mask)
        token = int(np.argmax(np.where(bits, model.logits(), -np.inf)))
        constraint.feed(token)
        out.append(token)
        if token in (RETURN, CALL):
            assert constraint.done and constraint.next_mask() is None and not constraint.fill_mask(row)
            return out
    pytest.fail(f"no stop token within {max_steps} steps (state {constraint.state})")


def parse(tokens: list[int], recipients) -> tuple[list, str, list[ToolCallEnd]]:
    """(message ends, final answer text, tool calls) as our harmony parser reads the tokens."""
    parser = StreamParser(recipients)
    events = [e for t in tokens for e in parser.feed(t)] + parser.finish()
    ends = [e for e in events if isinstance(e, MessageEnd)]
    answer = "".join(e.text for e in events if isinstance(e, TextDelta))
    return ends, answer, [e for e in events if isinstance(e, ToolCallEnd)]


def valid(schema: dict, text: str) -> None:
    jsonschema.validate(json.loads(text), schema)


# -- the engine's view of the vocabulary ---------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=0, max_size=40))
def test_the_engine_tokenizes_text_as_harmony_does(text):
    assert g.grammar_tokenizer().tokenize_str(text) == encoding().encode(text, allowed_special=set(),
                                                                        disallowed_special=())


def test_the_engine_knows_every_id_and_the_control_tokens():
    tok = g.grammar_tokenizer()
    assert tok.vocab_size == V
    enc = encoding()
    for t in (0, 90, 10848, 199997):
        assert tok.decode_bytes([t]) == bytes(enc._inner.decode_bytes([t]))
    for t in (RETURN, CALL, CHANNEL, MESSAGE, START, END, ENDOFTEXT, V - 1):
        assert tok.is_special_token(t)
    assert not tok.is_special_token(199997)


@settings(max_examples=30, deadline=None)
@given(st.sets(st.integers(0, V - 1), max_size=20), st.booleans())
def test_mask_helpers_round_trip(ids, text):
    mask = g.mask_of(ids, text=text)
    assert not mask.flags.writeable
    expect = set(ids) | (set(range(g.FIRST_SPECIAL)) if text else set())
    got = g.allowed_ids(mask)
    assert len(got) == len(expect) and set(got.tolist()) == expect
    for t in list(ids)[:5] + [0, V - 1]:
        assert g.allows(mask, t) == (t in expect)


def test_an_unsupported_schema_is_a_user_error():
    with pytest.raises(HarmonyIOError, match="cannot constrain"):
        HarmonyConstraint(OutputConstraint(answer_schema={"type": "object", "properties": {"a": {"type": "nope"}}}))


# -- what the model writes naturally is allowed ---------------------------------------------------


def natural_outputs() -> list[str]:
    return [
        '<|channel|>analysis<|message|>The user wants the math steps. "x" = {1}.<|end|>'
        '<|start|>assistant<|channel|>final<|message|>{"steps":[{"explanation":"divide","output":"x = 2"}],'
        '"final_answer":"2"}<|return|>',
        '<|channel|>final<|message|>' + json.dumps({"steps": [], "final_answer": "ok"}, indent=2) + "<|return|>",
        '<|channel|>final<|message|>' + json.dumps({"steps": [], "final_answer": "x \u2014 \u3042\n\"q\""}) + "<|return|>",
        '<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary '
        'to=functions.get_weather <|constrain|>json<|message|>{"location":"Tokyo"}<|call|>',
        '<|channel|>commentary to=functions.generate_chart json<|message|>{"data": [[1, 2.5]], "chart_type": "bar"}<|call|>',
        ' to=functions.query_database<|channel|>commentary <|constrain|>json<|message|>'
        '{"table":"users","columns":["id"],"limit":3}<|call|>',
        '<|channel|>commentary<|message|>Let me check.<|end|><|start|>assistant to=functions.get_system_health'
        '<|channel|>commentary <|constrain|>json<|message|>{}<|call|>',
    ]


@pytest.mark.parametrize("index", range(7))
def test_natural_harmony_outputs_are_allowed_token_by_token(peer_tools, index):
    spec = OutputConstraint(answer_schema=MATH, functions=peer_tools)
    c = HarmonyConstraint(spec)
    tokens = encoding().encode(natural_outputs()[index], allowed_special="all")
    for i, t in enumerate(tokens):
        mask = c.next_mask()
        assert g.allows(mask, t), f"token {i} {encoding().decode([t])!r} refused in state {c.state}"
        c.feed(t)
    assert c.done


# -- random models under the constraint -----------------------------------------------------------


# A model may keep reasoning (message after message) forever; the reasoning budget is what bounds it.
BUDGETS = st.sampled_from([0, 40, 400])


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(sorted(SCHEMAS)), BUDGETS)
def test_answers_validate_whatever_the_model_prefers(seed, schema_name, budget):
    schema = SCHEMAS[schema_name]
    constraint = HarmonyConstraint(OutputConstraint(answer_schema=schema, max_reasoning_tokens=budget))
    tokens = generate(constraint, NoisyModel(seed))
    assert constraint.reasoning_tokens <= budget
    assert tokens[-1] == RETURN
    ends, answer, calls = parse(tokens, [])
    assert not calls
    assert [e.stop for e in ends][-1] == "return" and all(e.stop == "end" for e in ends[:-1])
    assert all(e.channel == "analysis" for e in ends[:-1]) and ends[-1].channel == "final"
    valid(schema, answer)


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["auto", "required", "generate_chart", "get_system_health"]), BUDGETS)
def test_strict_tool_calls_and_tool_choice(peer_tools, seed, choice, budget):
    spec = OutputConstraint(answer_schema=MATH if choice == "auto" else None, functions=peer_tools, tool_choice=choice,
                            max_reasoning_tokens=budget)
    tokens = generate(HarmonyConstraint(spec), NoisyModel(seed))
    recipients = [f"functions.{n}" for n in peer_tools]
    ends, answer, calls = parse(tokens, recipients)
    assert all(e.stop == "end" for e in ends[:-1])
    if tokens[-1] == RETURN:
        assert choice == "auto" and not calls
        valid(MATH, answer)
        return
    assert len(calls) == 1 and calls[0].known and ends[-1].stop == "call"
    name = calls[0].recipient.removeprefix("functions.")
    if choice not in ("auto", "required"):
        assert name == choice
    valid(peer_tools[name], calls[0].arguments)
    assert all(e.channel in ("analysis", "commentary") for e in ends)


def wants_to_stop(seed: int) -> NoisyModel:
    """Every stop token far above anything else: left alone, this model ends its turn at once."""
    return NoisyModel(seed, prefer={RETURN: 1000.0, CALL: 990.0, ENDOFTEXT: 995.0, END: 980.0,
                                    **{int(t): 5.0 for t in closers()}}, nudges=False)


@pytest.mark.parametrize("seed", range(3))
def test_a_model_that_would_stop_at_once_still_answers_valid_json(seed):
    tokens = generate(HarmonyConstraint(OutputConstraint(answer_schema=REPORT)), wants_to_stop(seed))
    _, answer, _ = parse(tokens, [])
    valid(REPORT, answer)
    assert isinstance(json.loads(answer)["readings"], list)


@pytest.mark.parametrize("seed", range(2))
def test_a_model_that_would_stop_at_once_still_calls_when_required(peer_tools, seed):
    spec = OutputConstraint(functions=peer_tools, tool_choice="required")
    tokens = generate(HarmonyConstraint(spec), wants_to_stop(seed))
    assert tokens[-1] == CALL
    _, _, calls = parse(tokens, [f"functions.{n}" for n in peer_tools])
    valid(peer_tools[calls[0].recipient.removeprefix("functions.")], calls[0].arguments)


# -- harmony's rules ------------------------------------------------------------------------------


def feed_text(c: HarmonyConstraint, text: str) -> None:
    for t in encoding().encode(text, allowed_special="all"):
        c.feed(t)


def test_no_final_answer_when_a_call_is_required(peer_tools):
    c = HarmonyConstraint(OutputConstraint(functions=peer_tools, tool_choice="required"))
    with pytest.raises(ConstraintViolation):
        feed_text(c, "<|channel|>final")
    c = HarmonyConstraint(OutputConstraint(functions=peer_tools, tool_choice="get_weather"))
    feed_text(c, "<|channel|>analysis<|message|>hm<|end|><|start|>assistant<|channel|>commentary")
    with pytest.raises(ConstraintViolation):
        feed_text(c, " to=functions.detect_language")


def test_control_tokens_inside_messages():
    c = HarmonyConstraint(OutputConstraint(answer_schema=MATH))
    feed_text(c, "<|channel|>analysis<|message|>thinking")
    mask = c.next_mask()
    assert g.allows(mask, END) and g.allows(mask, 0)
    for t in (RETURN, CALL, START, CHANNEL, MESSAGE, ENDOFTEXT):
        assert not g.allows(mask, t)
    c.feed(END)
    assert g.allowed_ids(c.next_mask()).tolist() == [START]
    with pytest.raises(ConstraintViolation):
        c.feed(RETURN)
    c = HarmonyConstraint(OutputConstraint(answer_schema=MATH))
    feed_text(c, '<|channel|>final<|message|>{"steps":[],"final_answer":"4"')
    assert not g.allows(c.next_mask(), RETURN)
    feed_text(c, "}")
    assert g.allowed_ids(c.next_mask()).tolist() == [RETURN]  # complete: only the stop token
    with pytest.raises(ConstraintViolation):
        c.feed(END)


def test_the_reasoning_budget_forces_the_answer():
    c = HarmonyConstraint(OutputConstraint(answer_schema=JSON_OBJECT, max_reasoning_tokens=3))
    feed_text(c, "<|channel|>analysis<|message|>")
    for _ in range(3):
        assert g.allows(c.next_mask(), 0)
        c.feed(0)
    assert g.allowed_ids(c.next_mask()).tolist() == [END]
    feed_text(c, "<|end|><|start|>assistant<|channel|>")
    with pytest.raises(ConstraintViolation):
        feed_text(c, "analysis")
    c = HarmonyConstraint(OutputConstraint(answer_schema=JSON_OBJECT, max_reasoning_tokens=0))
    with pytest.raises(ConstraintViolation):
        feed_text(c, "<|channel|>analysis")


def test_after_the_turn_nothing_more():
    c = HarmonyConstraint(OutputConstraint(answer_schema=JSON_OBJECT))
    feed_text(c, "<|channel|>final<|message|>{}<|return|>")
    assert c.done and c.state == "done"
    with pytest.raises(ConstraintViolation):
        c.feed(START)


# -- from OpenAI request shapes -----------------------------------------------------------------


def test_output_constraint_from_both_apis_shapes(peer_tools):
    assert output_constraint(None, None, None) is None
    assert output_constraint({"type": "text"}, [{"type": "function", "function": {"name": "f"}}], "auto") is None
    chat = output_constraint({"type": "json_schema", "json_schema": {"name": "m", "schema": MATH, "strict": True}})
    responses = output_constraint({"type": "json_schema", "name": "m", "schema": MATH, "strict": True})
    assert chat == responses and chat.answer_schema == MATH
    assert output_constraint({"type": "json_object"}).answer_schema == JSON_OBJECT
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": peer_tools["get_weather"],
                                               "strict": True}},
             {"type": "function", "name": "loose", "parameters": {"type": "object"}}]
    spec = output_constraint(None, tools, {"type": "function", "function": {"name": "loose"}})
    assert spec.functions == {"get_weather": peer_tools["get_weather"], "loose": None}
    assert spec.tool_choice == "loose" and spec.call_recipients == ("functions.loose",)
    assert output_constraint(None, tools, {"type": "function", "name": "get_weather"}).tool_choice == "get_weather"
    assert output_constraint(None, tools, "required").tool_choice == "required"
    for bad in [({"type": "yaml"}, None, None), (None, tools, "sometimes"), (None, tools, {"type": "function"}),
                (None, tools, {"type": "function", "name": "nope"}), (None, None, "required"),
                ({"type": "json_schema", "json_schema": {"name": "x"}}, None, None)]:
        with pytest.raises(HarmonyIOError):
            output_constraint(*bad)


def test_a_loose_named_call_has_free_arguments_but_a_forced_header():
    tools = [{"type": "function", "name": "loose", "parameters": {"type": "object"}}]
    c = HarmonyConstraint(output_constraint(None, tools, "required"))
    feed_text(c, "<|channel|>commentary to=functions.loose<|message|>not json at all")
    assert c.message == "call" and c.recipient == "functions.loose"
    assert g.allows(c.next_mask(), CALL) and not g.allows(c.next_mask(), RETURN)
