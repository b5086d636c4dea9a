"""Rank 0's engine and the other ranks' followers: the same forward passes, in the same order.

Every rank holds a share of the experts, so every forward pass is a group effort (one all_sum per
MoE layer) and every rank must run exactly the passes rank 0 runs. Only rank 0 talks to the user;
it tells the others, over the group, what to run:

- each request when rank 0 admits it (prompt tokens and parameters, seed resolved on rank 0); while
  rank 0 has none, an idle message every HEARTBEAT_S, so a follower never waits on a silent group
  longer than that and its watchdog can use a short deadline; a close message when rank 0's engine
  closes;
- the sampled tokens, inside the graph (distributed.BroadcastSampler), so decoding stays pipelined;
- before each prefill chunk, whether rank 0 stops the request there (a cancelled client);
- a stop during decoding rides on the token stream: rank 0 forces a stop id as its next choice, and
  every rank's generation ends at that same step (rank 0 drains the tokens it no longer delivers).

Everything else the decode loop decides follows from tokens alone and is identical on every rank:
prompt reuse (trim or restore), prefill chunking, speculation (decisions from tokens only), the end
of a generation. In this mode the engine decodes one sequence at a time.
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ContextManager, NoReturn, Optional

from gptoss_metal.metal_runtime.distributed import (
    BroadcastSampler,
    DistributedGroup,
    broadcast_bytes,
    broadcast_ints,
)
from gptoss_metal.metal_runtime.rank_watchdog import RankWatchdog

HEARTBEAT_S = 0.5
IDLE, REQUEST, CLOSE = 0, 1, 2


@dataclass
class RequestMessage:
    """What a follower needs to run a request exactly as rank 0 does."""

    prompt: list[int]
    forced_prefix: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    tools: Optional[list[str]]
    stop_ids: list[int]
    speculate: bool
    prefill_chunk: int  # rank 0's: chunking decides how many passes run (ranks may differ in backend)


class Lockstep:
    """The messages between rank 0's decode thread and the followers, under the group's watchdog."""

    def __init__(self, group: DistributedGroup, guard: Optional[RankWatchdog] = None):
        self.group = group
        self.guard = guard

    @property
    def leader(self) -> bool:
        return self.group.leader

    # -- rank 0 -> everyone ---------------------------------------------------------------------

    def send(self, kind: int, message: Optional[RequestMessage] = None) -> None:
        """Rank 0: broadcast one message (IDLE, CLOSE, or a REQUEST)."""
        with self.deadline("sending a request to the other ranks"):
            broadcast_ints([kind], 1, self.group)
            if kind == REQUEST:
                broadcast_bytes(json.dumps(message.__dict__).encode(), self.group)

    def receive(self) -> tuple[int, Optional[RequestMessage]]:
        """A follower: the next message from rank 0 (a silent rank 0 ends the group after the deadline)."""
        with self.deadline("waiting for rank 0"):
            (kind,) = broadcast_ints(None, 1, self.group)
            if kind != REQUEST:
                return kind, None
            return kind, RequestMessage(**json.loads(broadcast_bytes(None, self.group)))

    def agree(self, flag: bool) -> bool:
        """Rank 0's `flag` on every rank (a host round trip: used once per prefill chunk)."""
        (value,) = broadcast_ints([int(flag)] if self.leader else None, 1, self.group)
        return bool(value)

    # -- sampling, deadlines, failures ------------------------------------------------------------

    def sampler(self, temperature: float, top_p: float, seed: int) -> BroadcastSampler:
        return BroadcastSampler(self.group, temperature, top_p, seed)

    @staticmethod
    def resolve_seed(seed: Optional[int]) -> int:
        """Rank 0 picks the seed of an unseeded request, so every rank's sampler starts alike."""
        return int(seed) & 0xFFFFFFFF if seed is not None else int.from_bytes(os.urandom(4), "little")

    def deadline(self, what: str) -> ContextManager[Any]:
        return self.guard.deadline(what) if self.guard is not None else nullcontext()

    def fatal(self, e: BaseException) -> NoReturn:
        """A failure that is not one request's (a lost rank, a bug): the group cannot go on."""
        if self.guard is not None:
            self.guard.fail(e)
        os._exit(1)  # pragma: no cover - without a guard (tests drive the loop directly) still never hang
