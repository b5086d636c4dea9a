"""Token masks for grammar-constrained decoding: o200k_harmony as the grammar engine sees it.

The engine is llguidance (chosen over xgrammar by measurement: BENCHMARKS.md "Constrained
decoding"). It needs the vocabulary as bytes per token id plus the special tokens by name, and the
o200k pre-tokenization pattern (used when it tokenizes forced text; with a wrong pattern its masks
are wrong, e.g. `{` silently dropped). All of it is read from openai-harmony's encoding here, so the
ids are the model's; `tests/test_constraint.py` checks the engine tokenizes as harmony does.

A mask is a packed bitmask: int32 words, bit `t % 32` of word `t // 32` set when token `t` is
allowed (the layout llguidance and xgrammar fill, and `metal_runtime.sampling.apply_token_bitmask`
reads). Building the engine's tokenizer takes a few seconds once per process (`warm_up()`);
compiling a grammar takes milliseconds and is cached by grammar text; a matcher per sequence is a
copy of the cached one (microseconds).
"""

from __future__ import annotations

import functools
import json
import threading
from collections import OrderedDict
from typing import Iterable, Optional

import llguidance
import numpy as np

from .errors import HarmonyIOError
from .tokens import ENDOFTEXT, FIRST_SPECIAL, VOCAB_SIZE
from .vocab import encoding

MASK_WORDS = (VOCAB_SIZE + 31) // 32

# o200k_base's pre-tokenization (tiktoken's published pattern; openai-harmony does not expose it).
O200K_PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])

# JSON whitespace: what JSON allows, but at most 20 characters between two tokens, so a model cannot
# stall in whitespace forever (a known failure of unbounded JSON grammars) while pretty-printed JSON
# (a newline and indentation) stays possible. Any `\uXXXX` escape is allowed (llguidance's default
# allows only \u00XX, refusing what json.dumps writes for non-ASCII text, e.g. `\u2014`).
JSON_OPTIONS = {"whitespace_pattern": r"[\x20\x0A\x0D\x09]{0,20}", "json_allow_general_unicode_escapes": True}
GRAMMAR_CACHE_SIZE = 64


def token_bytes() -> list[bytes]:
    """Every text token's bytes, by id (o200k: the id is the BPE rank)."""
    dec = encoding()._inner.decode_bytes
    return [bytes(dec([i])) for i in range(FIRST_SPECIAL)]


def special_tokens() -> dict[str, int]:
    """Control and reserved tokens by name (`<|channel|>` -> 200005), as harmony names them."""
    enc = encoding()
    return {enc.decode([i]): i for i in range(FIRST_SPECIAL, VOCAB_SIZE)}


@functools.lru_cache(maxsize=1)
def grammar_tokenizer() -> llguidance.LLTokenizer:
    """The engine's tokenizer for o200k_harmony (built once per process: seconds)."""
    ranks = {b: i for i, b in enumerate(token_bytes())}
    return llguidance.LLTokenizer.from_tiktoken(
        encoder=ranks, special_tokens=special_tokens(), pattern=O200K_PATTERN,
        eos_token=ENDOFTEXT, n_vocab=VOCAB_SIZE)


def warm_up() -> None:
    """Build the tokenizer now (e.g. on a server's start) instead of on the first constrained request."""
    grammar_tokenizer()


# -- grammars ------------------------------------------------------------------------------------


def lark_string(text: str) -> str:
    """`text` as a Lark string literal."""
    return json.dumps(text)


def json_grammar(schema: dict, terminator: str) -> str:
    """A JSON document valid for `schema`, then the control token `terminator` (e.g. `<|return|>`)."""
    if not isinstance(schema, dict):
        raise HarmonyIOError("a JSON schema must be an object")
    with_options = {**schema, "x-guidance": JSON_OPTIONS}
    return f"start: body {terminator}\nbody: %json {json.dumps(with_options)}\n"


class GrammarCache:
    """Compiled grammars by text; `matcher(grammar)` hands out a fresh matcher (a copy)."""

    def __init__(self, size: int = GRAMMAR_CACHE_SIZE):
        self.size = size
        self._compiled: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()

    def matcher(self, grammar: str) -> llguidance.LLMatcher:
        with self._lock:
            template = self._compiled.get(grammar)
            if template is not None:
                self._compiled.move_to_end(grammar)
                return template.deep_copy()
        template = llguidance.LLMatcher(grammar_tokenizer(), grammar, log_level=0)
        if template.is_error():
            raise HarmonyIOError(f"cannot constrain to this schema: {template.get_error()}")
        with self._lock:
            self._compiled[grammar] = template
            while len(self._compiled) > self.size:
                self._compiled.popitem(last=False)
        return template.deep_copy()


GRAMMARS = GrammarCache()


# -- masks ---------------------------------------------------------------------------------------


def empty_mask() -> np.ndarray:
    return np.zeros(MASK_WORDS, dtype=np.int32)


def mask_of(ids: Iterable[int], *, text: bool = False) -> np.ndarray:
    """A read-only mask allowing `ids` (and every text token when `text`)."""
    bits = np.zeros(MASK_WORDS * 32, dtype=bool)
    if text:
        bits[:FIRST_SPECIAL] = True
    bits[list(ids)] = True
    mask = np.packbits(bits, bitorder="little").view(np.int32).copy()
    mask.flags.writeable = False
    return mask


def allowed_ids(mask: np.ndarray) -> np.ndarray:
    """The token ids a mask allows (ascending)."""
    bits = np.unpackbits(np.ascontiguousarray(mask).view(np.uint8), bitorder="little")
    return np.flatnonzero(bits[:VOCAB_SIZE])


def allows(mask: np.ndarray, token: int) -> bool:
    return bool((int(mask[token >> 5]) >> (token & 31)) & 1)


def fill_from(matcher: llguidance.LLMatcher, out: np.ndarray) -> None:
    """The matcher's mask for the next token, written into `out` (int32 [MASK_WORDS], contiguous)."""
    if out.dtype != np.int32 or out.shape != (MASK_WORDS,) or not out.flags["C_CONTIGUOUS"]:
        raise ValueError(f"a mask row must be a contiguous int32 array of {MASK_WORDS} words")
    matcher.unsafe_compute_mask_ptr(out.ctypes.data, out.nbytes)


def describe_error(matcher: llguidance.LLMatcher) -> Optional[str]:
    return matcher.get_error() if matcher.is_error() else None
