"""How the serving core coordinates with other processes: not at all (`Alone`), or in lockstep.

A model spread over several ranks (distributed.py) needs every rank to run exactly the forward passes
rank 0 runs: every rank holds a share of the experts, so every pass is a group effort (one all_sum per
MoE layer). Only rank 0 talks to the user; it tells the others, over the group, what to run:

- each generation when rank 0 admits it (prompt tokens and parameters, seed resolved on rank 0); while
  rank 0 has none, an idle message every HEARTBEAT_S, so a follower never waits on a silent group
  longer than that and its watchdog can use a short deadline; a close message when rank 0's core closes;
- the sampled tokens, inside the graph (distributed.BroadcastSampler), so decoding stays pipelined;
- before each prefill chunk, whether rank 0 stops the generation there (a cancelled client);
- a stop during decoding rides on the token stream: rank 0 forces a stop id as its next choice, and
  every rank's generation ends at that same step (rank 0 drains the tokens it no longer delivers).

Everything else the core decides follows from tokens alone and is identical on every rank: prompt reuse
(trim or restore), prefill chunking, speculation (decisions from tokens only), the end of a generation.
In lockstep the core decodes one sequence at a time.

The serving core talks to a `Coordination`; `Alone` is the one for a single process and does nothing.
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any, ContextManager, NoReturn, Optional

from .distributed import BroadcastSampler, DistributedGroup, broadcast_bytes, broadcast_ints
from .generate import default_prefill_chunk
from .sampling import SamplerState
from .sequence import Sequence, SequenceSpec

if TYPE_CHECKING:
    from .rank_watchdog import RankWatchdog

HEARTBEAT_S = 0.5
IDLE, REQUEST, CLOSE = 0, 1, 2


class Alone:
    """One process: generations are batched, nothing is announced, a cancel ends a generation at once."""

    leader = True
    batches = True
    heartbeat_s: Optional[float] = None  # an idle core sleeps until there is work

    def announce(self, spec: SequenceSpec) -> None:
        pass

    def idle(self) -> None:
        pass

    def close(self) -> None:
        pass

    def agree(self, flag: bool) -> bool:
        return flag

    def sampler(self, spec: SequenceSpec) -> SamplerState:
        return SamplerState(spec.temperature, spec.top_p, spec.seed)

    def resolve(self, spec: SequenceSpec) -> SequenceSpec:
        return spec

    def deadline(self, what: str) -> ContextManager[Any]:
        return nullcontext()

    def cancel_decoding(self, seq: Sequence) -> bool:
        """A cancelled sequence is decoding: True ends it now; False means it ends on its own (a forced
        stop id) while the tokens it still draws are drained."""
        return True

    def failed(self, e: BaseException, user_error: bool) -> None:
        """A generation failed; alone, that ends only that generation."""


class Lockstep:
    """The messages between rank 0's serving core and the followers', under the group's watchdog."""

    batches = False

    def __init__(self, group: DistributedGroup, guard: Optional["RankWatchdog"] = None):
        self.group = group
        self.guard = guard
        self.heartbeat_s: Optional[float] = HEARTBEAT_S if group.leader else None

    @property
    def leader(self) -> bool:
        return self.group.leader

    # -- rank 0 -> everyone ---------------------------------------------------------------------

    def _send(self, kind: int, spec: Optional[SequenceSpec] = None) -> None:
        with self.deadline("sending a request to the other ranks"):
            broadcast_ints([kind], 1, self.group)
            if kind == REQUEST:
                broadcast_bytes(json.dumps(asdict(spec)).encode(), self.group)

    def announce(self, spec: SequenceSpec) -> None:
        self._send(REQUEST, spec)

    def idle(self) -> None:
        self._send(IDLE)

    def close(self) -> None:
        self._send(CLOSE)

    def receive(self) -> tuple[int, Optional[SequenceSpec]]:
        """A follower: the next message from rank 0 (a silent rank 0 ends the group after the deadline)."""
        with self.deadline("waiting for rank 0"):
            (kind,) = broadcast_ints(None, 1, self.group)
            if kind != REQUEST:
                return kind, None
            fields = json.loads(broadcast_bytes(None, self.group))
            fields["prompt"], fields["stop_ids"] = tuple(fields["prompt"]), tuple(fields["stop_ids"])
            return kind, SequenceSpec(**fields)

    def agree(self, flag: bool) -> bool:
        """Rank 0's `flag` on every rank (a host round trip: used once per prefill chunk)."""
        (value,) = broadcast_ints([int(flag)] if self.leader else None, 1, self.group)
        return bool(value)

    # -- sampling, stops, deadlines, failures ------------------------------------------------------

    def resolve(self, spec: SequenceSpec) -> SequenceSpec:
        """Rank 0 fixes what followers must not choose for themselves: the seed of an unseeded
        generation, and the prefill chunk (ranks may differ in backend, and chunking decides the passes)."""
        seed = int(spec.seed) & 0xFFFFFFFF if spec.seed is not None else int.from_bytes(os.urandom(4), "little")
        return replace(spec, seed=seed, prefill_chunk=spec.prefill_chunk or default_prefill_chunk())

    def sampler(self, spec: SequenceSpec) -> SamplerState:
        return BroadcastSampler(self.group, spec.temperature, spec.top_p, spec.seed)

    def cancel_decoding(self, seq: Sequence) -> bool:
        # every rank's generation ends at the same step, on a forced stop id (without stop ids it runs to
        # its budget; rank 0 drains it all the same)
        if seq.spec.stop_ids:
            seq.sampler.force(seq.spec.stop_ids[0])
        return False

    def deadline(self, what: str) -> ContextManager[Any]:
        return self.guard.deadline(what) if self.guard is not None else nullcontext()

    def failed(self, e: BaseException, user_error: bool) -> None:
        """Anything but a user error ends the group (a lost rank surfaces as an MLX error, and the ranks
        could no longer agree)."""
        if not user_error:
            self.fatal(e)

    def fatal(self, e: BaseException) -> NoReturn:
        """A failure that is not one generation's (a lost rank, a bug): the group cannot go on."""
        if self.guard is not None:
            self.guard.fail(e)
        os._exit(1)  # pragma: no cover - without a guard (tests drive the core directly) still never hang
