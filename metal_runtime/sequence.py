"""One generation as the serving core runs it: what was asked, and where it stands.

A `SequenceSpec` is the request in token ids (prompt, budget, sampling, stops); a `Sequence` is its
state on the decode thread: the prompt cache it holds, its sampler (randomness addressed by token
index: sampling.py), the tokens generated so far and its figures. The single-sequence loop
(generate.SoloRun) and the batched step (batch.BatchDecoder) both advance the same Sequence, so moving
it from one to the other is one rewind of its cache; nothing else about it changes.

The two rules every caller shares live here: how much room a prompt leaves in the context
(`context_room`), and why a generation ended (`Sequence.finish_reason`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Optional, Protocol, Sequence as Seq

import numpy as np

from .errors import ContextOverflowError, GenerationError
from .sampling import SamplerState, TokenLogprob

if TYPE_CHECKING:
    from .cache import ModelCache
    from .prompt_cache import PromptCache
    from .slots import Slot


MAX_TOP_LOGPROBS = 20  # what OpenAI's APIs allow


def context_room(context_length: int, prompt_tokens: int) -> int:
    """Tokens that may still be generated after a prompt of `prompt_tokens` (prompt + answer fit the
    context). The one rule: the API, the chat session and the runtime all size budgets with it."""
    return context_length - prompt_tokens


class TokenConstraint(Protocol):
    """Which tokens may come next (structured outputs), told every token drawn. Token ids only: what it
    follows (harmony, a JSON schema) is its own business."""

    def next_mask(self) -> Optional[np.ndarray]:
        """The next token's allowed set as a packed bitmask (int32 words, bit t % 32 of word t // 32), or
        None when anything may come."""

    def feed(self, token: int) -> None: ...


@dataclass
class GenerationStats:
    """Figures of one generation, filled in while it runs (read them during or after)."""

    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens that were already in the cache
    prefilled_tokens: int = 0  # prompt tokens actually computed
    queued_seconds: float = 0.0  # waiting for a free sequence slot or KV room
    prefill_seconds: float = 0.0
    generated_tokens: int = 0
    decode_seconds: float = 0.0
    first_token_seconds: float = 0.0
    finish_reason: Optional[str] = None  # "stop" | "length" | "cancelled" | "error"
    stop_token: Optional[int] = None
    generated: list[int] = field(default_factory=list)
    verifications: int = 0  # speculative verification passes
    drafted_tokens: int = 0  # draft tokens verified
    accepted_tokens: int = 0  # draft tokens kept

    @property
    def prefill_tps(self) -> float:
        return self.prefilled_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        n = self.generated_tokens - 1  # the first token's time is part of time-to-first-token
        return n / self.decode_seconds if self.decode_seconds > 0 and n > 0 else 0.0

    def add_speculation(self, other: "GenerationStats") -> None:
        self.verifications += other.verifications
        self.drafted_tokens += other.drafted_tokens
        self.accepted_tokens += other.accepted_tokens

    def summary(self) -> str:
        text = (f"prefill {self.prefilled_tokens} tok ({self.prefill_tps:.1f} tok/s), "
                f"reused {self.reused_tokens} tok, decode {self.generated_tokens} tok ({self.decode_tps:.1f} tok/s)")
        if self.verifications:
            text += (f", speculation: {self.accepted_tokens} of {self.drafted_tokens} drafted tokens accepted "
                     f"in {self.verifications} passes")
        return text


@dataclass(frozen=True)
class SequenceSpec:
    """What one generation asks for, in token ids. `prompt` ends where the model's answer begins."""

    prompt: tuple[int, ...]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: Optional[int] = None
    stop_ids: tuple[int, ...] = ()
    speculate: bool = True
    cache_key: Optional[str] = None  # the conversation: finds its prompt cache again
    prefill_chunk: Optional[int] = None  # None: this backend's default
    logprobs: Optional[int] = None  # each drawn token's logprob and this many alternatives (None: none)
    masked: bool = False  # rank 0 masks its draws (a constraint): every rank decodes the masked way

    def check(self, context_length: int, vocab_size: int) -> None:
        """Refuse what cannot run (a user error, before anything is queued)."""
        if not self.prompt:
            raise GenerationError("the prompt is empty")
        if self.max_tokens < 1:
            raise GenerationError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if min(self.prompt) < 0 or max(self.prompt) >= vocab_size:
            raise GenerationError(f"prompt token ids must be in [0, {vocab_size})")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise GenerationError(f"top logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {self.logprobs}")
        if context_room(context_length, len(self.prompt)) < 1:
            raise ContextOverflowError(f"the prompt has {len(self.prompt)} tokens and the model's context holds "
                                       f"{context_length}: nothing can be generated")

    def budget(self, context_length: int) -> int:
        return min(self.max_tokens, context_room(context_length, len(self.prompt)))


class Phase(Enum):
    WAITING = "waiting"  # for a free prompt cache or KV room
    PREFILL = "prefill"  # its new prompt tokens are being fed
    READY = "ready"  # the prompt is in, except its last token (the first decode step feeds it)
    SOLO = "solo"  # decoded alone (generate.SoloRun)
    BATCH = "batch"  # decoded beside others (batch.BatchDecoder)
    DONE = "done"


@dataclass(eq=False)
class Sequence:
    """A generation on the decode thread. `held + to_feed + generated + drained` is every token it put
    (or will have put) into its cache, in order."""

    spec: SequenceSpec
    sampler: SamplerState
    budget: int
    sink: Any = None  # serving.TokenSink: told each delivered token and the end
    stats: GenerationStats = field(default_factory=GenerationStats)
    phase: Phase = Phase.WAITING
    cancelled: threading.Event = field(default_factory=threading.Event)  # the one way to stop it
    released: threading.Event = field(default_factory=threading.Event)  # the decode thread is done with it
    solo: Any = None  # while decoded alone: its generate.SoloRun
    draining: bool = False  # lockstep: cancelled, its remaining tokens drawn (on every rank) but not delivered
    constraint: Optional[TokenConstraint] = None  # fed every drawn token by the loop that drew it
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per generated token, when asked for

    @property
    def host_chooses(self) -> bool:
        """Each token's choice needs the host between steps (a mask from the token before, or logprobs
        to read): decoded without speculation, the sampling queued once the previous token is known."""
        return self.constraint is not None or self.spec.masked or self.spec.logprobs is not None
    slot: Optional["Slot"] = None
    held: list[int] = field(default_factory=list)  # what the cache held and this prompt reuses
    to_feed: list[int] = field(default_factory=list)  # the rest of the prompt
    fed: int = 0  # how many of to_feed[:-1] are in the cache
    generated: list[int] = field(default_factory=list)
    drained: list[int] = field(default_factory=list)  # lockstep: fed after a forced stop, never delivered
    submitted: float = field(default_factory=time.perf_counter)
    prefill_started: float = 0.0
    first_token_at: Optional[float] = None

    @property
    def prompt_cache(self) -> "PromptCache":
        return self.slot.cache

    @property
    def kv(self) -> "ModelCache":
        return self.slot.cache.cache

    @property
    def tokens(self) -> list[int]:
        return self.held + self.to_feed + self.generated + self.drained

    @property
    def worst_case_tokens(self) -> int:
        """Positions its cache may come to hold (what KV admission reserves)."""
        return len(self.spec.prompt) + self.budget

    def start(self, slot: "Slot", held: Seq[int], to_feed: Seq[int]) -> None:
        now = time.perf_counter()
        self.slot, self.held, self.to_feed = slot, list(held), list(to_feed)
        st = self.stats
        st.queued_seconds = now - self.submitted
        st.prompt_tokens, st.reused_tokens, st.prefilled_tokens = len(self.spec.prompt), len(held), len(to_feed)
        self.prefill_started = now
        self.phase = Phase.PREFILL

    def record(self, token: int, logprob: Optional[TokenLogprob] = None) -> None:
        """One generated token (timing, figures); `finish_reason` then says whether it was the last."""
        if logprob is not None:
            self.logprobs.append(logprob)
        now = time.perf_counter()
        st = self.stats
        if self.first_token_at is None:
            self.first_token_at = now
            st.prefill_seconds = st.first_token_seconds = now - self.prefill_started
        else:
            st.decode_seconds = now - self.first_token_at
        self.generated.append(token)
        st.generated = self.generated
        st.generated_tokens = len(self.generated)

    def finish_reason(self) -> Optional[str]:
        """Why generation ends after the tokens so far: a stop id, or the budget (its token limit or the
        context's room); None while it goes on. The one rule, whichever loop decoded the tokens."""
        drawn = self.drained or self.generated
        if drawn and drawn[-1] in self.spec.stop_ids:
            return "stop"
        if len(self.generated) + len(self.drained) >= self.budget:
            return "length"
        return None
