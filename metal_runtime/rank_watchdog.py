"""One rank's failure ends every rank, with one clear message and never a hang.

MLX's ring backend does not fail cleanly on its own: a peer's death usually surfaces as
`RuntimeError: [ring] connection to a peer was lost`, but a collective already queued behind the
failed one (pipelined decode) can wait forever, and a peer that is alive but stuck always blocks the
others. `mlx.launch` SIGTERMs the local ranks when one exits non-zero, does nothing when one exits 0,
and leaves the ranks orphaned when it is killed itself. So every rank runs under a `RankWatchdog`:

- one exit path: `run(main)` turns every way `main` ends (return, sys.exit, exception) into at
  most one line `gptoss: [rank r/N] ...` and `os._exit` (a normal interpreter exit with the ring's
  threads alive was seen to crash with SIGSEGV); a non-zero code makes the launcher stop the local
  ranks, and the closed sockets fail the remote ranks' collectives;
- a watchdog thread: work that involves the other ranks runs under `deadline(...)`; past it, the
  rank ends ("no answer from the other ranks"). A C-level backstop (faulthandler) ends the process
  even if the watchdog cannot get the GIL. It also ends the rank when its parent (the launcher) is gone.
  A deadline is entered once per decoded token, so entering and leaving one only sets state: the
  watchdog moves the backstop along on its next poll (arming faulthandler starts a thread, ~40 us),
  and a deadline arms it at once only when none is armed or the armed one is off by over BACKSTOP_SLACK_S;
- SIGINT: a no-op Python handler and a wakeup fd, so Ctrl-C is seen even while the main thread is
  blocked inside a collective; the watchdog ends the rank (exit 130; rank 0 says "interrupted", the
  others stay quiet). SIGTERM and SIGHUP keep their default action (they end even a rank whose
  threads are stuck, and mlx.launch waits for the ranks it SIGTERMs);
- a rank that sees a peer's connection drop waits LOST_GRACE_S before saying so: mlx.launch stops
  the surviving ranks (quietly) when one fails, so usually only the failing rank speaks.

Rank 0 uses `timeout`, the others `timeout + FOLLOWER_GRACE`, so that normally the rank closest to
the user reports a stuck group.
"""

from __future__ import annotations

import faulthandler
import os
import select
import signal
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from typing import Callable, Iterator, NoReturn, Optional, TextIO

DEFAULT_TIMEOUT_S = 60.0
FOLLOWER_GRACE_S = 5.0
BACKSTOP_S = 5.0  # the C-level backstop fires this long after a deadline the watchdog missed
BACKSTOP_SLACK_S = 1.0  # a deadline's own entry re-arms the backstop only when it is off by more than this
POLL_S = 0.25
LOST = ("connection to a peer was lost", "[ring]", "[jaccl]")
# When a rank fails, mlx.launch stops the others with SIGTERM within ~0.1-0.4 s: a rank that sees the
# connection drop waits this long before speaking, so that usually only the failing rank does.
LOST_GRACE_S = 1.5


def group_timeout(env=os.environ) -> float:
    """GPTOSS_GROUP_TIMEOUT (seconds): how long a rank waits for the others before giving up."""
    try:
        return max(1.0, float(env.get("GPTOSS_GROUP_TIMEOUT", DEFAULT_TIMEOUT_S)))
    except ValueError:
        return DEFAULT_TIMEOUT_S


INTERRUPTED = "interrupted"

class RankWatchdog:
    """What one rank of a group runs under: one exit path, deadlines a watchdog thread enforces, Ctrl-C."""

    def __init__(self, rank: int, size: int, timeout: Optional[float] = None, stream: TextIO = sys.stderr):
        self.rank, self.size = rank, size
        base = group_timeout() if timeout is None else timeout
        self.timeout = base if rank == 0 else base + FOLLOWER_GRACE_S
        self.stream = stream
        self._armed: Optional[tuple[float, str, float]] = None  # (deadline, what, seconds allowed)
        self._lock = threading.Lock()
        self._backstop_lock = threading.Lock()
        self._backstop_at: Optional[float] = None  # when the armed faulthandler backstop fires; None: not armed
        self._watching = False  # the watchdog runs and keeps the backstop in step with the deadline
        self._ppid = os.getppid()
        self._sigfd: Optional[int] = None

    # -- setup --------------------------------------------------------------------------------

    def install(self) -> "RankWatchdog":
        """Take over SIGINT and start the watchdog (call from the main thread)."""
        rfd, wfd = os.pipe()
        os.set_blocking(wfd, False)
        self._sigfd = rfd
        signal.signal(signal.SIGINT, lambda *_: None)  # never a KeyboardInterrupt half-way through cleanup
        signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, name="gptoss-group-watchdog", daemon=True).start()
        self._watching = True
        return self

    # -- deadlines ----------------------------------------------------------------------------

    @contextmanager
    def deadline(self, what: str, seconds: Optional[float] = None) -> Iterator[None]:
        """Run the body under a deadline (`seconds`, default the group timeout); restores an outer one."""
        seconds = self.timeout if seconds is None else seconds
        outer = self._armed
        self._arm(time.monotonic() + seconds, what, seconds)
        try:
            yield
        finally:
            if outer is None:
                self._disarm()
            else:
                self._arm(max(outer[0], time.monotonic() + 1.0), outer[1], outer[2])

    def _arm(self, at: float, what: str, seconds: float) -> None:
        self._armed = (at, what, seconds)
        b = self._backstop_at  # read after the write above: see _sync_backstop
        if not self._watching or b is None or abs(b - (at + BACKSTOP_S)) > BACKSTOP_SLACK_S:
            self._sync_backstop()

    def _disarm(self) -> None:
        self._armed = None
        b = self._backstop_at
        if not self._watching or (b is not None and b - time.monotonic() < BACKSTOP_S):
            self._sync_backstop()  # the backstop is due soon: cancel it now rather than on the next poll

    def _sync_backstop(self, slack: float = 0.0) -> None:
        """Arm the C-level backstop BACKSTOP_S after the armed deadline, or cancel it when none is armed.

        Called by the watchdog every poll and by `_arm`/`_disarm` when the backstop is off. An `_arm`
        that sets the deadline and then reads `_backstop_at` and this, which clears `_backstop_at` and
        then reads the deadline, cannot both miss each other's write: the backstop is never cancelled
        under a deadline that `_arm` left to the watchdog.
        """
        with self._backstop_lock:
            if self._armed is None and self._backstop_at is not None:
                self._backstop_at = None
                if self._armed is None:
                    faulthandler.cancel_dump_traceback_later()
                    return
            armed = self._armed
            if armed is None:
                return
            target = armed[0] + BACKSTOP_S
            if self._backstop_at is None or abs(self._backstop_at - target) > slack:
                now = time.monotonic()
                delay = max(1.0 + BACKSTOP_S, target - now)
                faulthandler.dump_traceback_later(delay, exit=True, file=self.stream)
                self._backstop_at = now + delay

    # -- the exit path ------------------------------------------------------------------------

    def say(self, msg: str) -> None:
        who = f"[rank {self.rank}/{self.size}] " if self.size > 1 else ""
        # after Ctrl-C the cursor may sit after a prompt (`>>> ^C`): the message starts a line of its own,
        # as a shell's does
        lead = "\n" if msg == INTERRUPTED else ""
        try:
            self.stream.write(f"{lead}gptoss: {who}{msg}\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def fatal(self, msg: Optional[str], code: int = 1) -> NoReturn:
        """End this process now with `code`, saying `msg` (None: quietly). The first caller wins."""
        self._lock.acquire()  # a second caller (another thread) blocks until the process is gone
        try:
            if msg:
                self.say(msg)
            for s in (sys.stdout, sys.stderr):
                try:
                    s.flush()
                except (OSError, ValueError):
                    pass
        finally:
            os._exit(code)

    def fail(self, e: BaseException) -> NoReturn:
        """End this process for an exception (another rank's loss reads as such)."""
        text = str(e)
        if isinstance(e, RuntimeError) and any(m in text for m in LOST):
            time.sleep(LOST_GRACE_S)  # the launcher's SIGTERM usually ends us quietly meanwhile
            self.fatal("another rank stopped (connection lost); see mlx.launch's warning above")
        if os.environ.get("GPTOSS_DEBUG"):
            traceback.print_exception(e, file=self.stream)
        self.fatal(f"error: {type(e).__name__}: {text}" if text else f"error: {type(e).__name__}")

    def run(self, main: Callable[[], Optional[int]]) -> NoReturn:
        """Run `main` and end the process the one way: its code, or one message and a non-zero code."""
        try:
            code = main() or 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException as e:  # noqa: BLE001 - every failure ends the group the same way
            self.fail(e)
        self.fatal(None, code)

    # -- the watchdog -------------------------------------------------------------------------

    def _watch(self) -> None:
        while True:
            ready, _, _ = select.select([self._sigfd], [], [], POLL_S)
            if ready:
                data = os.read(self._sigfd, 64)
                if signal.SIGINT in data:
                    # every local rank gets Ctrl-C: only rank 0 speaks for it
                    self.fatal(INTERRUPTED if self.rank == 0 else None, 128 + signal.SIGINT)
            if os.getppid() != self._ppid:
                self.fatal("the launcher (mlx.launch) is gone; stopping")
            self._sync_backstop(slack=POLL_S)
            armed = self._armed
            if armed is not None and time.monotonic() > armed[0]:
                self.fatal(f"no answer from the other ranks for {armed[2]:.0f} s ({armed[1]}); "
                           "a rank is stuck or gone; stopping all ranks")
