"""Harmony stream-parser overhead per token on a realistic generation (target: <= 20 us/token).

    python benchmarks/parser_overhead.py [--repeats 20]

The stream: reasoning, a commentary preamble, a tool call, then (as a second generation) a long
final answer with multi-byte text. Measures StreamParser.feed over every token, plus the
Chat Completions delta mapping the server adds, and openai-harmony's own StreamableParser as the
peer on the same tokens.
"""

from __future__ import annotations

import argparse
import statistics
import time

from openai_harmony import Role, StreamableParser

from gptoss_metal.harmony_io import ChatStreamMapper, StreamParser, encoding

REASONING = ("The user asks about the weather in Oslo. I should call the weather tool with the city name, "
             "then summarise the answer briefly in Celsius and mention wind if it is strong. ") * 8
ANSWER = ("Right now in Oslo it is 4 °C with light rain; wind from the south-west at 5 m/s. "
          "Tomorrow looks drier — around 6 °C. ありがとう! ") * 12


def stream() -> list[int]:
    enc = encoding()
    s = (f"<|channel|>analysis<|message|>{REASONING}<|end|>"
         "<|start|>assistant<|channel|>commentary<|message|>Let me check the forecast.<|end|>"
         "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
         '<|message|>{"city": "Oslo", "unit": "celsius"}<|call|>')
    s2 = f"<|channel|>analysis<|message|>{REASONING[:200]}<|end|><|start|>assistant<|channel|>final<|message|>{ANSWER}<|return|>"
    return enc.encode(s, allowed_special="all") + enc.encode(s2, allowed_special="all")


def time_ours(tokens: list[int], with_mapping: bool) -> float:
    p = StreamParser(["functions.get_weather"])
    m = ChatStreamMapper() if with_mapping else None
    t0 = time.perf_counter()
    for t in tokens:
        evs = p.feed(t)
        if m is not None:
            for e in evs:
                m(e)
    p.finish()
    return (time.perf_counter() - t0) / len(tokens)


def time_library(tokens: list[int]) -> float:
    p = StreamableParser(encoding(), Role.ASSISTANT, strict=False)
    t0 = time.perf_counter()
    for t in tokens:
        try:
            p.process(t)
        except Exception:  # noqa: BLE001
            p = StreamableParser(encoding(), None, strict=False)
    return (time.perf_counter() - t0) / len(tokens)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    tokens = stream()
    time_ours(tokens, True)  # warm caches (token bytes)
    ours = statistics.median(time_ours(tokens, False) for _ in range(args.repeats))
    mapped = statistics.median(time_ours(tokens, True) for _ in range(args.repeats))
    lib = statistics.median(time_library(tokens) for _ in range(args.repeats))
    print(f"tokens per stream: {len(tokens)}")
    print(f"StreamParser.feed:                  {ours * 1e6:6.2f} us/token")
    print(f"StreamParser.feed + chat deltas:    {mapped * 1e6:6.2f} us/token")
    print(f"openai-harmony StreamableParser:    {lib * 1e6:6.2f} us/token (peer, process() only)")
    print(f"ratio ours/library: {ours / lib:.2f}")


if __name__ == "__main__":
    main()
