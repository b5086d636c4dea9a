"""`gptoss chat`: the terminal front end of assistant.ChatSession (rich output, readline input)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import click
from rich.console import Console
from rich.markup import escape

from .errors import handle_user_errors, user_error_types
from .generate import DTYPES, EFFORTS, memory_option, sampling_options
from .group import Ranks, load_engine, run_command
from .launch import distributed_option, relaunch

HELP = """[bold]commands[/]
  /effort low|medium|high   reasoning effort for the next turns
  /system [TEXT]            show or set the instructions (empty TEXT clears them)
  /reset                    forget the conversation
  /save FILE, /load FILE    conversation as JSON
  /tools                    tools the model can call
  /stats                    speed and cache figures
  /quit                     leave (or Ctrl-D)
  Ctrl-C stops a running answer; the partial answer is kept and marked.
  End a line with \\ to continue on the next line, or wrap a block in triple quotes.
"""


def _history_file() -> Path:
    base = os.environ.get("GPTOSS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache"), "gptoss-metal")
    return Path(base) / "chat_history"


class TerminalChat:
    def __init__(self, session, console: Console, show_reasoning: bool = True):
        self.session = session
        self.console = console
        self.show_reasoning = show_reasoning
        self._readline = None
        try:
            import readline

            self._readline = readline
            hist = _history_file()
            hist.parent.mkdir(parents=True, exist_ok=True)
            if hist.exists():
                readline.read_history_file(str(hist))
            readline.set_history_length(1000)
        except (ImportError, OSError):
            pass

    def _save_history(self) -> None:
        if self._readline is not None:
            try:
                self._readline.write_history_file(str(_history_file()))
            except OSError:
                pass

    def read_message(self) -> Optional[str]:
        """One user message (multi-line aware); None at end of input. Ctrl-C at the prompt ends the line
        first, so the "interrupted" that follows is not printed after the `>>> `."""
        try:
            return self._read_message()
        except KeyboardInterrupt:
            print(flush=True)
            raise

    def _read_message(self) -> Optional[str]:
        try:
            line = input(">>> ")
        except EOFError:
            return None
        if line.strip().startswith('"""'):
            lines = [line.strip()[3:]]
            while True:
                nxt = input("... ")
                if nxt.rstrip().endswith('"""'):
                    lines.append(nxt.rstrip()[:-3])
                    break
                lines.append(nxt)
            return "\n".join(lines).strip("\n")
        lines = []
        while line.endswith("\\"):
            lines.append(line[:-1])
            line = input("... ")
        lines.append(line)
        return "\n".join(lines)

    # -- slash commands ----------------------------------------------------------------------

    def command(self, text: str) -> bool:
        """Handle a /command; False means quit."""
        name, _, arg = text[1:].partition(" ")
        arg = arg.strip()
        s = self.session
        if name in ("quit", "exit", "q"):
            return False
        if name == "help":
            self.console.print(HELP)
        elif name == "effort":
            if arg:
                s.set_effort(arg)
            self.console.print(f"reasoning effort: [bold]{s.effort}[/]")
        elif name == "system":
            if arg or text.strip() != "/system":
                s.system = arg or None
            self.console.print(f"instructions: {escape(s.system) if s.system else '(none)'}")
        elif name == "reset":
            s.reset()
            self.console.print("conversation cleared")
        elif name == "save":
            if not arg:
                raise click.UsageError("/save FILE")
            s.save(arg)
            self.console.print(f"saved {len(s.messages)} messages to {escape(arg)}")
        elif name == "load":
            if not arg:
                raise click.UsageError("/load FILE")
            s.load(arg)
            self.console.print(f"loaded {len(s.messages)} messages from {escape(arg)}")
        elif name == "tools":
            names = s.tool_names()
            self.console.print("tools: " + (", ".join(names) if names else "(none; start with --python-tool)"))
            if s.python is not None:
                for line in s.python.describe():
                    self.console.print(f"  python {escape(line)}")
        elif name == "stats":
            self.print_stats()
        else:
            self.console.print(f"[red]unknown command /{escape(name)}[/] (try /help)")
        return True

    def print_stats(self) -> None:
        s = self.session
        pc = s.engine.prompt_cache
        if s.last_turn is not None:
            self.console.print(f"last turn: {s.last_turn.line()}")
        total_pre = sum(r.prefilled for r in s.history_reports)
        total_reused = sum(r.reused for r in s.history_reports)
        self.console.print(f"session: {len(s.history_reports)} turns, {total_pre} tokens prefilled, "
                           f"{total_reused} reused; context {len(pc.tokens)} tokens; KV cache "
                           f"{pc.cache.nbytes / 1e6:.1f} MB; effort {s.effort}")

    # -- a turn ------------------------------------------------------------------------------

    def turn(self, text: str) -> None:
        from gptoss_metal.harmony_io import PreambleDelta, ReasoningDelta, TextDelta, ToolCallBegin, ToolCallEnd
        from gptoss_metal.assistant.session import StepLimitReached, ToolResult

        c = self.console
        mode = None  # what is being printed: "reasoning" | "answer" | "tool"
        gen = self.session.send(text)
        # until the first words arrive (a long prompt prefills for a while), say that it is working
        waiting = c.status("[dim]working... (Ctrl-C stops)[/]") if c.is_terminal else None
        if waiting is not None:
            waiting.start()
        try:
            for ev in gen:
                if waiting is not None:
                    waiting.stop()
                    waiting = None
                if isinstance(ev, ReasoningDelta):
                    if not self.show_reasoning:
                        continue
                    if mode != "reasoning":
                        c.print("\n[dim bold]thinking[/]")
                        mode = "reasoning"
                    c.print(ev.text, end="", style="dim italic", markup=False, highlight=False)
                elif isinstance(ev, (TextDelta, PreambleDelta)):
                    if mode != "answer":
                        c.print()
                        mode = "answer"
                    c.print(ev.text, end="", markup=False, highlight=False)
                elif isinstance(ev, ToolCallBegin):
                    c.print(f"\n[cyan]-> {escape(ev.recipient)}[/] ", end="")
                    mode = "tool"
                elif isinstance(ev, ToolCallEnd):
                    c.print(escape(ev.arguments[:500]), style="cyan", markup=False)
                elif isinstance(ev, ToolResult):
                    shown = ev.output if len(ev.output) < 800 else ev.output[:800] + " ..."
                    c.print(f"[cyan]<- {escape(ev.name)} ({ev.status})[/]\n{escape(shown)}")
                    mode = None
                elif isinstance(ev, StepLimitReached):
                    c.print(f"\n[yellow]stopped after {ev.steps} tool steps[/]")
        except KeyboardInterrupt:
            if waiting is not None:
                waiting.stop()
                waiting = None
            gen.close()
            c.print(" [yellow]\\[interrupted][/]")
        finally:
            if waiting is not None:
                waiting.stop()
        c.print()
        if self.session.last_turn is not None:
            c.print(f"[cyan]{escape(self.session.last_turn.line())}[/]")

    def loop(self) -> None:
        c = self.console
        c.print("[bold]gptoss chat[/] - /help for commands, Ctrl-D to quit")
        try:
            while True:
                try:
                    text = self.read_message()
                except KeyboardInterrupt:
                    c.print("[dim](Ctrl-D or /quit to leave)[/]")
                    continue
                if text is None:
                    c.print()
                    break
                if not text.strip():
                    continue
                try:
                    if text.startswith("/"):
                        if not self.command(text.strip()):
                            break
                        continue
                    self.turn(text)
                except (click.UsageError,) + user_error_types() as e:
                    c.print(f"[red]{escape(str(e))}[/]")
        finally:
            self._save_history()
            self.session.close()


@click.command("chat")
@click.argument("model_path", type=click.Path())
@click.option("--effort", type=EFFORTS, default="medium", show_default=True)
@click.option("--hide-reasoning", is_flag=True, help="Do not show the model's reasoning.")
@click.option("--python-tool", is_flag=True,
              help="Let the model run Python in a contained, stateful interpreter: own temp folder, "
                   "time/CPU/memory/process/output limits, no network, no reading your home folder and no "
                   "writes outside its folder where the OS allows (Linux Landlock + namespaces, macOS "
                   "sandbox-exec). `gptoss doctor` says what applies here.")
@click.option("--python-tool-read", "python_tool_read", multiple=True, type=click.Path(exists=True),
              help="A file or folder the python tool may also read (never write); repeatable.")
@click.option("--system", default=None, help="Instructions for the model.")
@click.option("--dtype", type=DTYPES, default="bfloat16", show_default=True)
@memory_option
@sampling_options
@distributed_option
@handle_user_errors
def chat_cmd(model_path: str, effort: str, hide_reasoning: bool, python_tool: bool, python_tool_read: tuple[str, ...],
             system: str | None, dtype: str, max_memory: int | None, max_tokens: int, temperature: float,
             top_p: float, seed: int | None, no_speculate: bool, hostfile: str | None) -> None:
    """Chat with the converted model at MODEL_PATH in the terminal.

    Spread over several Macs (--distributed or mlx.launch) Ctrl-C ends the session on every Mac.
    """
    relaunch(hostfile)
    run_command(lambda ranks: _chat(ranks, model_path, effort, hide_reasoning, python_tool, python_tool_read, system,
                                    dtype, max_memory, max_tokens, temperature, top_p, seed, no_speculate))


def _chat(ranks: Ranks | None, model_path: str, effort: str, hide_reasoning: bool, python_tool: bool,
          python_tool_read: tuple[str, ...], system: str | None, dtype: str, max_memory: int | None, max_tokens: int,
          temperature: float, top_p: float, seed: int | None, no_speculate: bool) -> None:
    from gptoss_metal.harmony_io import today
    from gptoss_metal.assistant.session import ChatSession
    from gptoss_metal.assistant.tools.python_tool import PythonTool

    if python_tool_read and not python_tool:
        raise click.UsageError("--python-tool-read needs --python-tool")

    console = Console(highlight=False)
    with console.status("loading model..."):
        engine = load_engine(ranks, model_path, dtype=dtype, speculate=not no_speculate, max_memory=max_memory)
    tool = PythonTool(read_paths=python_tool_read) if python_tool else False
    session = ChatSession(engine, system=system, effort=effort, python_tool=tool, temperature=temperature,
                          top_p=top_p, max_tokens=max_tokens, seed=seed, current_date=today())
    TerminalChat(session, console, show_reasoning=not hide_reasoning).loop()


def register(group: click.Group) -> None:
    group.add_command(chat_cmd)
