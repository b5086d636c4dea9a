"""A command run as one rank of a group (`mlx.launch --hostfile hosts.json -- gptoss CMD ...`), or alone.

Not launched, nothing changes: the command body runs as it always did. Launched as one of several
ranks, the body runs under the group's `RankWatchdog` (one exit path, watchdog, Ctrl-C): rank 0 runs the
command the user asked for with its share of the model; every other rank loads its share and follows
rank 0 until rank 0's engine closes, printing nothing unless something fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NoReturn, Optional

from gptoss_metal.metal_runtime.distributed import (
    DistributedGroup,
    init_group,
    launched_backend,
    launched_rank,
    launched_size,
)
from gptoss_metal.metal_runtime.rank_watchdog import RankWatchdog

from .errors import set_error_prefix, user_error_types

JOIN_TIMEOUT_S = 600.0  # every rank must start (ssh, imports) and connect


@dataclass
class Ranks:
    """This process's part in a group: the group, its guard, and (on rank 0) the engine to close last."""

    group: DistributedGroup
    guard: RankWatchdog
    engine: Optional[object] = None

    @property
    def leader(self) -> bool:
        return self.group.leader


def run_command(body: Callable[[Optional[Ranks]], None]) -> None:
    """Run `body(None)` alone, or `body(ranks)` as a rank of the group this process was launched into."""
    if launched_backend() is None:  # raises a clear DistributedError when launched wrongly
        body(None)
        return
    rank = launched_rank()
    guard = RankWatchdog(rank, launched_size()).install()
    set_error_prefix(f"[rank {rank}/{guard.size}] ")

    def main() -> int:
        with guard.deadline("joining the group", JOIN_TIMEOUT_S):
            group = init_group()
        guard.size = group.size
        ranks = Ranks(group, guard)
        try:
            body(ranks)
        except user_error_types() as e:
            guard.say(f"error: {e}")
            return 1
        finally:
            if ranks.leader and ranks.engine is not None:
                ranks.engine.close()  # tells the other ranks to stop following
        return 0

    guard.run(main)


def load_engine(ranks: Optional[Ranks], model_path: str, **options):
    """The command's engine: the whole model alone, this rank's share in a group.

    On a rank other than 0 it follows rank 0's engine until that closes, then ends the process: it never
    returns there.
    """
    from gptoss_metal.assistant import Engine

    if ranks is None:
        return Engine.load(model_path, **options)
    engine = Engine.load(model_path, group=ranks.group, guard=ranks.guard, **options)
    if not ranks.leader:
        _follow(engine)
    ranks.engine = engine
    return engine


def _follow(engine) -> NoReturn:
    engine.follow()
    raise SystemExit(0)
