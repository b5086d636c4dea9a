"""openai/harmony's rendering fixtures and docs/format.md examples, through our public API.

Each case builds, with `render_prompt` / `render_tool_result`, what openai/harmony's own tests build
with the library (src/tests.rs, tests/test_harmony.py at v0.0.8), and must give the fixture's exact
tokens. The peers' fixtures have no system message where the library test renders none; we always
render one, so those cases compare what follows it. Cases that differ on purpose show, in the
test, that applying our documented rule to the peer's expectation gives our rendering.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gptoss_metal.harmony_io import encoding, render_prompt, render_tool_result
from gptoss_metal.harmony_io.tokens import END, START
from peer_data import harmony_text

CHATGPT = "You are ChatGPT, a large language model trained by OpenAI."
CAPITAL = "What is the capital of the largest country in the world?"
ROBOT = "Answer the user's questions like a robot."


def E(s: str) -> list[int]:
    return encoding().encode(s, allowed_special="all")


def D(tokens: list[int]) -> str:
    return encoding().decode(tokens)


def fn(name: str, description: str, parameters: dict | None = None) -> dict:
    spec = {"name": name, "description": description}
    if parameters is not None:
        spec["parameters"] = parameters
    return {"type": "function", "function": spec}


FORMAT = {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"}
THREE_TOOLS = [
    fn("get_location", "Gets the location of the user."),  # no parameters: `() => any`
    fn("get_current_weather", "Gets the current weather in the provided location.", {
        "type": "object", "required": ["location"], "properties": {
            "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
            "format": FORMAT}}),
    fn("get_multiple_weathers", "Gets the current weather in the provided list of locations.", {
        "type": "object", "required": ["locations"], "properties": {
            "locations": {"type": "array", "items": {"type": "string"},
                          "description": 'List of city and state, e.g. ["San Francisco, CA", "New York, NY"]'},
            "format": FORMAT}}),
]
KITCHENSINK = fn("kitchensink", "A function with various complex schemas.", {
    "description": "params object", "type": "object", "properties": {
        "string": {"type": "string", "title": "STRING", "description": "A string", "examples": ["hello", "world"]},
        "string_nullable": {"type": "string", "nullable": True, "description": "A nullable string",
                            "default": "the default"},
        "string_enum": {"type": "string", "enum": ["a", "b", "c"]},
        "oneof_string_or_number": {"oneOf": [{"type": "string", "default": "default_string_in_oneof"},
                                             {"type": "number", "description": "numbers can happen too"}],
                                   "description": "a oneof", "default": 20}}})
LOOKUP_WEATHER = fn(
    "lookup_weather",
    "Use this tool to lookup the weather in a given location. Call it with the parameter 'location', "
    "can be any textual description of a location.",
    {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]})
DOCS_HISTORY = [  # docs/format.md "Function calling": the prompt of block 14, the model's block 15, block 17
    {"role": "system", "content": "Use a friendly tone."},
    {"role": "user", "content": "What is the weather like in SF?"},
    {"role": "assistant", "reasoning": "Need to use function get_weather.",
     "tool_calls": [{"id": "c1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"location":"San Francisco"}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": '{"sunny": true, "temperature": 20}'},
]


def without_header(tokens: list[int]) -> list[int]:
    """Our prompt minus its leading system (and developer) messages, for fixtures rendered without them."""
    out = list(tokens)
    while out and out[0] == START and D(out[1:2]) in ("system", "developer"):
        out = out[out.index(END) + 1:]
    return out


CASES = {
    "test-data/test_simple_convo.txt":
        lambda: render_prompt([{"role": "user", "content": "What is 2 + 2?"}], model_identity=CHATGPT),
    "test-data/test_render_functions_with_parameters.txt":
        lambda: render_prompt([{"role": "system", "content": "Always respond in riddles"},
                               {"role": "user", "content": "What is the weather like in SF?"}],
                              tools=THREE_TOOLS + [KITCHENSINK], reasoning_effort="high", current_date="2025-06-28"),
    "test-data/test_no_tools.txt": lambda: render_prompt([], current_date="2025-06-28"),
    "test-data/test_browser_tool_only.txt":
        lambda: render_prompt([], current_date="2025-06-28", builtin_tools=["browser"]),
    "test-data/test_browser_and_function_tool.txt":
        lambda: render_prompt([], current_date="2025-06-28", builtin_tools=["browser"], tools=[LOOKUP_WEATHER]),
    "test-data/test_browser_and_python_tool.txt":
        lambda: render_prompt([], current_date="2025-06-28", builtin_tools=["browser", "python"]),
    "test-data/test_browser_and_python_tool.txt#python-first":
        lambda: render_prompt([], current_date="2025-06-28", builtin_tools=["python", "browser"]),
    "test-data/test_dropping_cot_by_default.txt":  # the per-turn rule drops what the library's auto_drop drops
        lambda: without_header(render_prompt([
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "reasoning": "User asks: “What is 2 + 2?” Simple arithmetic. Provide answer.",
             "content": "2 + 2 equals 4."},
            {"role": "user", "content": "What about 9 / 2?"}])),
    "test-data/test_preserve_cot.txt":
        lambda: without_header(render_prompt([
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "reasoning": 'User asks a simple question: "What is 2 + 2?" The answer: 4.',
             "content": "2 + 2 equals 4."},
            {"role": "user", "content": "What about 9 / 2?"}], keep_analysis=True)),
    "test-data/test_tool_response_parsing.txt":  # the test renders the tool message and drops its <|end|>
        lambda: render_tool_result("browser.search", '{"result": "https://openai.com/"}', builtin=True)[:-1],
    "test-data/test_tool_response_parsing.txt#via-history":  # the same message as a browser call's result
        lambda: last_message(render_prompt([
            {"role": "user", "content": "q"},
            {"role": "assistant", "tool_calls": [{"id": "b1", "type": "function", "function": {
                "name": "browser.search", "arguments": '{"query": "openai"}'}}]},
            {"role": "tool", "tool_call_id": "b1", "channel": "commentary",
             "content": '{"result": "https://openai.com/"}'}], builtin_tools=["browser"]))[:-1],
    "docs-examples/format_md_block14_function_calling_prompt.txt":
        lambda: render_prompt(DOCS_HISTORY[:2], tools=THREE_TOOLS, reasoning_effort="high",
                              model_identity=CHATGPT, current_date="2025-06-28"),
    "docs-examples/format_md_block17_tool_message.txt":
        lambda: render_tool_result("get_weather", '{"sunny": true, "temperature": 20}'),
    "docs-examples/format_md_block18_function_calling_with_tool_result.txt":  # the model's own tokens as history
        lambda: render_prompt(
            DOCS_HISTORY[:2] + [dict(DOCS_HISTORY[2], exact_history=[
                {"tokens": E("<|start|>assistant") + E(harmony_text(
                    "docs-examples/format_md_block15_receiving_tool_call.txt")), "channel": "commentary"}])]
            + DOCS_HISTORY[3:], tools=THREE_TOOLS, reasoning_effort="high", current_date="2025-06-28"),
}
for effort in ("low", "medium", "high"):
    CASES[f"test-data/test_simple_convo_{effort}_effort.txt"] = (
        lambda e=effort: render_prompt([{"role": "system", "content": ROBOT}, {"role": "user", "content": CAPITAL}],
                                       reasoning_effort=e, model_identity=CHATGPT))
    CASES[f"test-data/test_simple_convo_{effort}_effort_no_instruction.txt"] = (
        lambda e=effort: render_prompt([{"role": "user", "content": CAPITAL}], reasoning_effort=e,
                                       model_identity=CHATGPT))


def last_message(tokens: list[int]) -> list[int]:
    """The last message before the trailing `<|start|>assistant`."""
    starts = [i for i, t in enumerate(tokens) if t == START]
    return tokens[starts[-2]:starts[-1]]


def fixture(case: str) -> str:
    text = harmony_text(case.split("#")[0])
    return text.replace("\x0b", "")  # docs block 18 has a stray vertical tab after <|call|> in the original


@pytest.mark.parametrize("case", sorted(CASES))
def test_fixture_renders_token_for_token(case):
    ours = CASES[case]()
    want = fixture(case)
    assert D(ours) == want
    assert ours == E(want)


def test_docs_history_rerendered_from_chat_messages_is_the_docs_example_token_for_token():
    """Without the model's tokens, history is rendered from OpenAI shapes; its call is written in the order
    the model writes it (channel, then `to=`, then the content type), so it is format.md's example exactly."""
    ours = render_prompt(DOCS_HISTORY, tools=THREE_TOOLS, reasoning_effort="high", current_date="2025-06-28")
    want = fixture("docs-examples/format_md_block18_function_calling_with_tool_result.txt")
    assert D(ours) == want and ours == E(want)


def test_ongoing_analysis_is_kept_and_tool_messages_take_the_canonical_form():
    """test_does_not_drop_if_ongoing_analysis: the reasoning of a turn still in its tool loop is kept,
    as the library keeps it. The fixture's tool message was built without channel and recipient
    (`<|start|>functions.lookup_weather<|message|>`); ours is format.md's tool message (docs block 17,
    above), `... to=assistant<|channel|>commentary`. And the library wrote the call `to=` first; ours is in
    the model's order (docs block 18, above). Those two substitutions turn the fixture into ours."""
    ours = without_header(render_prompt([
        {"role": "user", "content": "What is the weather in SF?"},
        {"role": "assistant", "reasoning": "User asks: “What is the weather in SF?” We need to use lookup_weather tool.",
         "tool_calls": [{"id": "w", "type": "function",
                         "function": {"name": "lookup_weather", "arguments": '{"location": "San Francisco"}'}}]},
        {"role": "tool", "tool_call_id": "w", "content": '{"temperature": 20, "description": "sunny"}'},
    ], tools=[LOOKUP_WEATHER]))
    want = fixture("test-data/test_does_not_drop_if_ongoing_analysis.txt")
    canonical = want.replace("<|start|>functions.lookup_weather<|message|>",
                             "<|start|>functions.lookup_weather to=assistant<|channel|>commentary<|message|>").replace(
        "<|start|>assistant to=functions.lookup_weather<|channel|>commentary <|constrain|>json",
        "<|start|>assistant<|channel|>commentary to=functions.lookup_weather <|constrain|>json")
    assert canonical != want
    assert D(ours) == canonical and ours == E(canonical)


def test_keep_analysis_between_finals_after_the_per_turn_rule():
    """test_keep_analysis_between_finals renders a *finished* conversation (render_conversation) and
    keeps the last turn's reasoning. We render prompts for the next turn, where the per-turn rule drops
    the reasoning of every turn that ended in a final answer (format.md: drop previous CoT once the
    final answer is given). Removing those analysis messages from the peer's expectation gives ours."""
    messages = [{"role": "user", "content": "What is 2 + 2?"},
                {"role": "assistant", "reasoning": "thinking 2+2", "content": "4"},
                {"role": "user", "content": "What is 3 + 5?"},
                {"role": "assistant", "reasoning": "thinking 3+5", "content": "8"}]
    ours = without_header(render_prompt(messages))
    assert ours[-2:] == E("<|start|>assistant")
    want = fixture("test-data/test_keep_analysis_between_finals.txt")
    per_turn = want.replace("<|start|>assistant<|channel|>analysis<|message|>thinking 3+5<|end|>", "")
    assert per_turn != want and "thinking" not in per_turn
    assert ours[:-2] == E(per_turn)
    # and with the rule off, both turns keep their reasoning (the library's auto_drop would drop the first)
    kept = D(without_header(render_prompt(messages, keep_analysis=True)))
    assert "thinking 2+2" in kept and want.split("<|start|>user<|message|>What is 3 + 5?<|end|>")[1] in kept


@pytest.mark.parametrize("name", ["test_reasoning_system_message", "test_reasoning_system_message_no_instruction",
                                  "test_reasoning_system_message_with_dates"])
def test_required_channels_are_not_expressible_and_the_only_difference(name):
    """These fixtures declare `required channels` (analysis, final), which no request shape can ask for;
    our system message always offers all three channels. Nothing else differs."""
    args = {"test_reasoning_system_message": ("medium", None, "2024-06", "What is 2 + 2?"),
            "test_reasoning_system_message_no_instruction": ("high", None, "2024-06",
                                                            "What is the best place to eat candy in the world?"),
            "test_reasoning_system_message_with_dates": ("medium", "2021-01-01", "2021-01", "What is 42 * pi?")}
    effort, date, cutoff, question = args[name]
    ours = D(render_prompt([{"role": "user", "content": question}], reasoning_effort=effort, model_identity=CHATGPT,
                           current_date=date, knowledge_cutoff=cutoff))
    want = fixture(f"test-data/{name}.txt")
    assert ours == want.replace("# Valid channels: analysis, final.", "# Valid channels: analysis, commentary, final.")


@pytest.mark.parametrize("parameters", [None, {}, ...])
def test_function_without_parameters_renders_an_empty_parameter_list(parameters):
    """OpenAI: an omitted schema is an empty parameter list; harmony writes `() => any` (R1)."""
    spec = {"name": "ping", "description": "Ping."}
    if parameters is not ...:
        spec["parameters"] = parameters
    text = D(render_prompt([{"role": "user", "content": "x"}], tools=[{"type": "function", "function": spec}]))
    assert "type ping = () => any;" in text
    # an object schema with no properties still declares an (empty) argument object, as the library does
    text = D(render_prompt([{"role": "user", "content": "x"}], tools=[fn("ping", "Ping.", {"type": "object"})]))
    assert "type ping = (_: {\n}) => any;" in text


def test_builtin_tool_calls_and_results_keep_their_namespace():
    """A `browser.search` call and its result in history, with the browser built-in declared, render as
    format.md and gpt-oss's reference server write them: recipient `browser.search` (not
    `functions.browser.search`), on the analysis channel, the result answering on the call's channel."""
    text = D(render_prompt([
        {"role": "user", "content": "news?"},
        {"role": "assistant", "reasoning": "Search.", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "browser.search", "arguments": '{"query": "x"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "results"},
    ], builtin_tools=["browser"]))
    assert "functions.browser" not in text
    assert text.endswith("<|start|>assistant<|channel|>analysis to=browser.search<|message|>{\"query\": \"x\"}<|call|>"
                         "<|start|>browser.search to=assistant<|channel|>analysis<|message|>results<|end|>"
                         "<|start|>assistant")
    # python keeps its `code` content type; a function of the same name without the built-in is a function
    text = D(render_prompt([
        {"role": "user", "content": "compute"},
        {"role": "assistant", "tool_calls": [
            {"id": "p", "type": "function", "function": {"name": "python", "arguments": "print(1)"}}]},
        {"role": "tool", "tool_call_id": "p", "content": "1"}], builtin_tools=["python"]))
    assert "<|start|>assistant<|channel|>analysis to=python code<|message|>print(1)<|call|>" in text
    assert "<|start|>python to=assistant<|channel|>analysis<|message|>1<|end|>" in text


def test_every_peer_harmony_fixture_is_tested():
    """A fixture added to the peer data must get a case here or in the parser tests."""
    from peer_data import HARMONY, require

    require(HARMONY)
    here = Path(__file__).parent
    sources = (here / "test_peer_harmony_render.py").read_text() + (here / "test_peer_harmony_parser.py").read_text()
    covered = {case.split("#")[0] for case in CASES}
    files = sorted(HARMONY.glob("*/*.txt"))
    assert len(files) >= 29
    assert [f.name for f in files if f"{f.parent.name}/{f.name}" not in covered and f.stem not in sources] == []
