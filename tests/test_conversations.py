"""Stored conversations (SQLite), the page's turn runner (Workspace), exports and the data folder."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from doubles import ScriptedModel
from gptoss_metal.assistant import (
    BuiltinTool,
    ContextFull,
    ConversationStore,
    StopSignal,
    Engine,
    NoSuchConversation,
    StoreError,
    ToolOutput,
    ToolResult,
    TurnFinished,
    Workspace,
    user_data_dir,
)
from gptoss_metal.assistant.export import to_json, to_markdown
from gptoss_metal.assistant.session import ChatSession
from gptoss_metal.harmony_io import PYTHON, ReasoningDelta, TextDelta, encoding
from gptoss_metal.harmony_io.tokens import assistant_header


def E(s: str) -> list[int]:
    return encoding().encode(s, allowed_special="all")


ANALYSIS = "<|channel|>analysis<|message|>{}<|end|><|start|>assistant"
FINAL = "<|channel|>final<|message|>{}<|return|>"
PY_CALL = "<|channel|>analysis to=python <|constrain|>code<|message|>{}<|call|>"


class FakePython(BuiltinTool):
    """Stands in for the sandboxed interpreter where a test is about the loop, not the sandbox."""

    spec = PYTHON

    def __init__(self):
        self.closed = False
        self.calls: list[str] = []

    def run(self, code: str) -> ToolOutput:
        self.calls.append(code)
        return ToolOutput("42\n", "ok")

    def close(self):
        self.closed = True


@pytest.fixture
def store(tmp_path) -> ConversationStore:
    return ConversationStore(tmp_path / "conversations.sqlite3")


def workspace(store, replies, cache_slots=1, hold_at=None, **kw):
    model = ScriptedModel([E(r) for r in replies], hold_at=hold_at)
    engine = Engine(model, model_id="scripted", cache_slots=cache_slots)
    return Workspace(engine, store, temperature=0.0, python_factory=FakePython, **kw), model


def test_the_stored_date_is_read_back_not_todays(tmp_path, monkeypatch):
    """A fixed clock: the date a conversation was created with is what a reopened store returns, whatever
    day the test runs on (schema 1 read SQLite's CURRENT_DATE keyword instead of the column)."""
    from gptoss_metal.assistant import conversations

    monkeypatch.setattr(conversations, "today", lambda: "2031-05-06")
    created = ConversationStore(tmp_path / "c.sqlite3").create()
    assert created.current_date == "2031-05-06"
    assert ConversationStore(tmp_path / "c.sqlite3").get(created.id).current_date == "2031-05-06"


# The schema the first release wrote (user_version 1), verbatim: its date column is `current_date`.
SCHEMA_1 = """
CREATE TABLE conversations (id TEXT PRIMARY KEY, title TEXT NOT NULL, created REAL NOT NULL,
    updated REAL NOT NULL, system TEXT, effort TEXT NOT NULL, python INTEGER NOT NULL, current_date TEXT NOT NULL);
CREATE TABLE messages (conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    position INTEGER NOT NULL, body TEXT NOT NULL, figures TEXT, PRIMARY KEY (conversation_id, position));
PRAGMA user_version = 1;
"""


def test_a_schema_1_database_keeps_its_dates_and_messages(tmp_path):
    path = tmp_path / "conversations.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_1)
        db.execute("INSERT INTO conversations VALUES ('c_old', 'Old', 1.0, 2.0, NULL, 'low', 0, '2025-01-02')")
        db.execute("""INSERT INTO messages VALUES ('c_old', 0, '{"role": "user", "content": "hi"}', NULL)""")
    db.close()
    store = ConversationStore(path)
    old = store.get("c_old")
    assert (old.title, old.effort, old.current_date, old.messages) == ("Old", "low", "2025-01-02",
                                                                       [{"role": "user", "content": "hi"}])
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    db.close()
    assert ConversationStore(path).get("c_old").current_date == "2025-01-02"  # a second open migrates nothing
    assert store.get(store.create(current_date="2025-03-04").id).current_date == "2025-03-04"


def test_store_round_trip_survives_reopening(tmp_path, store):
    c = store.create(system="Be brief.", effort="high", python=True, current_date="2026-11-23")
    msgs = [{"role": "user", "content": "héllo"}, {"role": "assistant", "content": "hi", "exact_history": [
        {"channel": "final", "recipient": None, "stop": "return", "tokens": [1, 2, 3]}]}]
    assert store.save_messages(c.id, msgs, {1: {"prompt_tokens": 9}})
    again = ConversationStore(tmp_path / "conversations.sqlite3").get(c.id)
    assert again.messages == msgs and again.figures == {1: {"prompt_tokens": 9}}
    assert (again.system, again.effort, again.python, again.current_date) == ("Be brief.", "high", True, "2026-11-23")
    view = again.view()
    assert "exact_history" not in view["messages"][1] and view["messages"][1]["figures"] == {"prompt_tokens": 9}
    assert store.update(c.id, title="Renamed", effort="low", system=None, python=False)
    got = store.get(c.id)
    assert (got.title, got.effort, got.system, got.python) == ("Renamed", "low", None, False)
    d = store.create()
    assert [s["id"] for s in store.list()] == [d.id, c.id]
    assert store.delete(c.id) and store.get(c.id) is None and not store.delete(c.id)
    assert not store.save_messages(c.id, msgs, {})  # a deleted conversation is not resurrected
    with sqlite3.connect(tmp_path / "conversations.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0  # cascade


def test_saving_from_a_position_replaces_only_the_tail(store):
    c = store.create()
    msgs = [{"role": "user", "content": f"m{i}"} for i in range(4)]
    assert store.save_messages(c.id, msgs, {1: {"prompt_tokens": 1}, 3: {"prompt_tokens": 3}})
    # a regenerated last turn: positions 2 and 3 replaced by three new messages, the head kept as stored
    new = msgs[:2] + [{"role": "user", "content": "again"}, {"role": "assistant", "content": "a"},
                      {"role": "assistant", "content": "b"}]
    assert store.save_messages(c.id, new, {1: {"prompt_tokens": 1}, 4: {"prompt_tokens": 5}}, first=2)
    got = store.get(c.id)
    assert got.messages == new and got.figures == {1: {"prompt_tokens": 1}, 4: {"prompt_tokens": 5}}
    assert store.save_messages(c.id, new[:2], {1: {"prompt_tokens": 1}}, first=2)  # a turn that did not happen
    assert store.get(c.id).messages == msgs[:2]


def test_store_refuses_a_file_that_is_not_a_database(tmp_path):
    bad = tmp_path / "conversations.sqlite3"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable conversation database"):
        ConversationStore(bad)


def test_data_dir_follows_platform_conventions(tmp_path):
    home = Path("/home/u")
    assert user_data_dir({}, "darwin", home) == home / "Library/Application Support/gptoss-metal"
    assert user_data_dir({}, "linux", home) == home / ".local/share/gptoss-metal"
    assert user_data_dir({"XDG_DATA_HOME": "/x"}, "linux", home) == Path("/x/gptoss-metal")
    assert user_data_dir({"XDG_DATA_HOME": "rel"}, "linux", home) == home / ".local/share/gptoss-metal"
    assert user_data_dir({"GPTOSS_DATA_DIR": str(tmp_path)}, "darwin", home) == tmp_path


def test_turn_with_python_call_is_stored_with_figures_and_title(store):
    ws, _ = workspace(store, [ANALYSIS.format("Compute.") + PY_CALL.format("print(6*7)"),
                              FINAL.format("It is **42**.")])
    c = store.create(python=True, current_date="2026-11-23")
    items = list(ws.run_turn(c.id, "What is 6*7?"))
    assert [i for i in items if isinstance(i, ToolResult)][0].output == "42\n"
    assert "".join(i.text for i in items if isinstance(i, TextDelta)) == "It is **42**."
    done = items[-1]
    assert isinstance(done, TurnFinished) and not done.interrupted and done.figures["steps"] == 2
    got = store.get(c.id)
    assert got.title == "What is 6*7?"
    assert [m["role"] for m in got.messages] == ["user", "assistant", "tool", "assistant"]
    assert got.messages[1]["tool_calls"][0]["function"] == {"name": "python", "arguments": "print(6*7)"}
    assert got.figures[3]["prompt_tokens"] > 0 and got.figures[3]["finish_reason"] == "stop"


def test_resumed_conversation_reprefills_only_the_new_message(tmp_path, store):
    replies = [FINAL.format("One."), FINAL.format("Two.")]
    ws, model = workspace(store, replies)
    c = store.create(current_date="2026-11-23")
    list(ws.run_turn(c.id, "first"))
    # a new Workspace (a restarted page) on the same engine: the stored exact history re-renders
    # the very prompt the cache holds
    ws2 = Workspace(ws.engine, ConversationStore(tmp_path / "conversations.sqlite3"), temperature=0.0)
    items = list(ws2.run_turn(c.id, "second"))
    fig = items[-1].figures
    new_part = E("<|end|><|start|>user<|message|>second<|end|>") + assistant_header()
    assert fig["prefilled_tokens"] == len(new_part)
    assert fig["reused_tokens"] == fig["prompt_tokens"] - len(new_part)


def test_switching_conversations_keeps_each_cache_with_slots(store):
    ws, _ = workspace(store, [FINAL.format("A1."), FINAL.format("B1."), FINAL.format("A2.")], cache_slots=3)
    a = store.create(current_date="2026-11-23")
    b = store.create(current_date="2026-11-23")
    list(ws.run_turn(a.id, "alpha"))
    list(ws.run_turn(b.id, "beta"))
    fig = list(ws.run_turn(a.id, "alpha again"))[-1].figures
    new_part = E("<|end|><|start|>user<|message|>alpha again<|end|>") + assistant_header()
    assert fig["prefilled_tokens"] == len(new_part)  # conversation B did not evict A's cache


def test_regenerate_and_edit_replace_the_last_turn(store):
    ws, _ = workspace(store, [FINAL.format("First answer."), FINAL.format("Second answer."),
                              FINAL.format("Edited answer.")])
    c = store.create(current_date="2026-11-23")
    list(ws.run_turn(c.id, "question"))
    list(ws.run_turn(c.id, None, mode="regenerate"))
    got = store.get(c.id)
    assert [m.get("content") for m in got.messages] == ["question", "Second answer."]
    list(ws.run_turn(c.id, "better question", mode="edit"))
    got = store.get(c.id)
    assert [m.get("content") for m in got.messages] == ["better question", "Edited answer."]
    assert list(got.figures) == [1]
    with pytest.raises(NoSuchConversation):
        list(ws.run_turn("c_missing", "x"))


def test_stop_mid_answer_keeps_the_partial_answer_marked(store):
    long_answer = FINAL.format("word " * 300)
    ws, model = workspace(store, [ANALYSIS.format("Thinking.") + long_answer], hold_at=20)
    c = store.create(current_date="2026-11-23")
    stop = StopSignal()
    threading.Thread(target=lambda: model.reached.wait(120) and (stop.set(), model.release.set())).start()
    items = list(ws.run_turn(c.id, "talk", stop=stop))  # stopped while the model is at its 20th token
    assert items[-1].interrupted and items[-1].figures["finish_reason"] == "interrupted"
    last = store.get(c.id).messages[-1]
    assert last["interrupted"] and 0 < len(last["content"]) < len("word " * 300)
    assert any(isinstance(i, ReasoningDelta) for i in items)
    assert model.decoded == 20  # no pass after the one in flight: the engine stopped, not just the reader


def test_context_full_is_a_clear_error_and_leaves_no_trace():
    model = ScriptedModel([E(FINAL.format("x"))])
    model.args.max_position_embeddings = 40
    s = ChatSession(Engine(model), current_date="2026-11-23")
    with pytest.raises(ContextFull, match="context holds 40"):
        list(s.send("hello " * 50))
    assert s.messages == []


def test_exports(store):
    ws, _ = workspace(store, [ANALYSIS.format("Compute.") + PY_CALL.format("print('```')"),
                              FINAL.format("Done: `42`.")])
    c = store.create(python=True, system="Be brief.", current_date="2026-11-23")
    list(ws.run_turn(c.id, "go"))
    conv = store.get(c.id)
    data = to_json(conv)
    assert data["version"] == 2 and data["messages"][1]["exact_history"]
    # the JSON export loads into a terminal chat session
    path = Path(store.path.parent / "export.json")
    path.write_text(json.dumps(data))
    s = ChatSession(ws.engine)
    s.load(path)
    assert s.messages == conv.messages and s.system == "Be brief."
    md = to_markdown(conv)
    assert md.startswith("# go\n") and "## You\n\ngo" in md and "## Assistant\n\nDone: `42`." in md
    assert "````python\nprint('```')\n````" in md and "**Output of python**" in md and "> Be brief." in md


def test_a_builtin_tool_is_one_object_whose_spec_declares_it_and_whose_runner_answers():
    """The session declares exactly the built-ins it holds runners for (the declaration is the spec's,
    harmony_io.PYTHON), and a call addressed to one is answered by that very object."""
    tool = FakePython()
    model = ScriptedModel([E(ANALYSIS.format("Compute.") + PY_CALL.format("print(6*7)")), E(FINAL.format("42."))])
    s = ChatSession(Engine(model, model_id="scripted"), python_tool=tool, temperature=0.0)
    prompt = s.render()
    assert prompt.builtin_tools == ("python",) and prompt.recipients == ["python"]
    assert "## python" in encoding().decode(prompt.tokens)
    assert "## python" not in encoding().decode(ChatSession(Engine(model, model_id="scripted")).render().tokens)
    results = [i for i in s.send("6*7?") if isinstance(i, ToolResult)]
    assert tool.calls == ["print(6*7)"]
    assert [(r.name, r.output, r.status) for r in results] == [("python", "42\n", "ok")]
    s.close()
    assert tool.closed


def test_assistant_errors_are_their_own_and_end_in_one_line_at_each_edge(capsys):
    """ContextFull, NoSuchConversation and the store's errors are the assistant's (not harmony's) user
    errors: the CLI prints one line and exits 1, the chat page's API sends a clean error event."""
    from gptoss_metal.assistant import AssistantError
    from gptoss_metal.cli.errors import handle_user_errors
    from gptoss_metal.harmony_io import HarmonyIOError
    from gptoss_metal.server.page_api import PageService

    for error in (ContextFull, NoSuchConversation, StoreError):
        assert issubclass(error, AssistantError) and not issubclass(error, HarmonyIOError)

    @handle_user_errors
    def chat() -> None:
        raise ContextFull("the conversation is 9 tokens long")

    with pytest.raises(SystemExit) as exited:
        chat()
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "error:" in err and "9 tokens long" in err and "Traceback" not in err
    codes = {type(e).__name__: PageService._error_event(e)["code"]
             for e in (ContextFull("x"), NoSuchConversation("x"), AssistantError("the message is empty"))}
    assert codes == {"ContextFull": "context_length_exceeded", "NoSuchConversation": "not_found",
                     "AssistantError": "invalid_request"}
