"""Harmony's control token ids (o200k_harmony), checked against the encoding at first use."""

from __future__ import annotations

import functools

from .vocab import encoding

ENDOFTEXT = 199999
RETURN = 200002
CONSTRAIN = 200003
CHANNEL = 200005
START = 200006
END = 200007
MESSAGE = 200008
CALL = 200012
FIRST_SPECIAL = 199998  # o200k_harmony: every id from here on is a control/reserved token
VOCAB_SIZE = 201088  # ids from here on are not tokens of o200k_harmony

NAMES = {
    ENDOFTEXT: "<|endoftext|>", RETURN: "<|return|>", CONSTRAIN: "<|constrain|>", CHANNEL: "<|channel|>",
    START: "<|start|>", END: "<|end|>", MESSAGE: "<|message|>", CALL: "<|call|>",
}
# Generation stops on these: the assistant's stop tokens plus <|endoftext|>.
STOP_IDS = (RETURN, CALL, ENDOFTEXT)


@functools.lru_cache(maxsize=1)
def verify_token_ids() -> None:
    """Fail loudly if the installed openai-harmony numbers its control tokens differently."""
    enc = encoding()
    for tid, name in NAMES.items():
        got = enc.encode(name, allowed_special="all")
        if got != [tid]:
            raise RuntimeError(f"openai-harmony encodes {name} as {got}, expected [{tid}]")
    assert set(enc.stop_tokens_for_assistant_actions()) == {RETURN, CALL}


def assistant_header() -> list[int]:
    """`<|start|>assistant`: what a prompt ends with and what each assistant message starts with."""
    return [START] + encoding().encode("assistant")
