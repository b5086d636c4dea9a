"""llguidance vs xgrammar on gpt-oss's tokenizer (o200k_harmony, 201,088 ids): the engine choice, measured.

    python benchmarks/grammar_engines.py [--walks 20] [--seed 0]

xgrammar is not a dependency (it requires torch, plus triton and transformers on Linux); install it
beside the project to compare (`pip install xgrammar` and a torch wheel), else only llguidance runs.

For each engine and each schema (json_object, OpenAI-style strict schemas, the gpt-oss compatibility
tests' function tools, a pydantic model with $defs/anyOf/enums):
- build cost: the engine's tokenizer once, then each schema's compilation (no cache);
- correctness: (a) valid documents, compact and pretty-printed, tokenized as the model would
  (harmony's own BPE), are allowed token by token and the stop token is allowed exactly at the end;
  (b) random walks (a random allowed token each step, i.e. random logits under the mask) end in a
  document that parses and validates against the schema (`jsonschema`);
- cost per token of computing a mask (median, p99; CPU time of the thread) over those steps.
Both engines get the same JSON settings: JSON Schema's semantics (extra properties where the schema
allows them) and whitespace bounded to 20 characters between tokens.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata as md
import json
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from gptoss_metal.harmony_io import encoding
from gptoss_metal.harmony_io import token_masks as g
from gptoss_metal.harmony_io.tokens import RETURN, VOCAB_SIZE

PEER_TOOLS = Path(__file__).resolve().parents[2] / "shared" / "peer-data" / "gptoss" / "compatibility-test" / "tools.json"
MAX_STEPS = 600
# Mask costs are this thread's CPU time: on a shared machine wall-clock time mostly measures who else is
# running (both engines compute a mask on the calling thread). Compile times are wall-clock.
cpu_clock = time.thread_time


def pydantic_schema() -> dict:
    from enum import Enum
    from typing import Optional as Opt

    from pydantic import BaseModel

    class Unit(str, Enum):
        celsius = "celsius"
        fahrenheit = "fahrenheit"

    class Reading(BaseModel):
        city: str
        temperature: float
        unit: Unit
        note: Opt[str] = None

    class Report(BaseModel):
        readings: list[Reading]
        summary: str

    return Report.model_json_schema()


MATH = {  # OpenAI's structured-outputs example (strict)
    "type": "object",
    "properties": {
        "steps": {"type": "array", "items": {
            "type": "object", "properties": {"explanation": {"type": "string"}, "output": {"type": "string"}},
            "required": ["explanation", "output"], "additionalProperties": False}},
        "final_answer": {"type": "string"},
    },
    "required": ["steps", "final_answer"], "additionalProperties": False,
}


def cases() -> list[tuple[str, dict, list]]:
    """(name, schema, valid documents)."""
    out = [
        ("json_object", g_json_object(), [{"answer": "Paris", "confidence": 0.9, "sources": [1, 2, {"x": None}]},
                                          {}]),
        ("math (strict)", MATH, [{"steps": [{"explanation": "8x + 7 = -23, so 8x = -30", "output": "8x = -30"},
                                            {"explanation": "divide by 8", "output": "x = -3.75"}],
                                  "final_answer": "x = -3.75"}]),
        ("pydantic report", pydantic_schema(), [{"readings": [{"city": "Oslo", "temperature": 4.5, "unit": "celsius",
                                                               "note": None},
                                                              {"city": "Zürich", "temperature": -1, "unit": "fahrenheit"}],
                                                 "summary": "Cold — ありがとう"}]),
    ]
    if PEER_TOOLS.exists():
        tools = {t["name"]: t["parameters"] for t in json.loads(PEER_TOOLS.read_text())}
        out += [
            ("get_weather (tool)", tools["get_weather"], [{"location": "Tokyo"}]),
            ("generate_chart (tool)", tools["generate_chart"],
             [{"data": [[1, 2.5], [3, 4e-3]], "chart_type": "scatter", "title": "Sales", "x_label": "month"}]),
            ("query_database (tool)", tools["query_database"],
             [{"table": "users", "columns": ["id", "name"], "filters": "age > 30", "limit": 10}]),
        ]
    return out


def g_json_object() -> dict:
    from gptoss_metal.harmony_io.constraint import JSON_OBJECT
    return dict(JSON_OBJECT)


def renderings(doc) -> list[str]:
    """Compact, pretty-printed, and ASCII-only (`\\u2014` escapes, as Python's json.dumps writes)."""
    return [json.dumps(doc, separators=(",", ":"), ensure_ascii=False), json.dumps(doc, indent=2, ensure_ascii=False),
            json.dumps(doc)]


# -- engines: compile(schema) once, matcher(compiled) per sequence, fill(m, out), consume(m, token) ------


class LLGuidance:
    name = "llguidance"

    def __init__(self):
        t0 = time.perf_counter()
        self.tok = g.grammar_tokenizer()
        self.tokenizer_s = time.perf_counter() - t0
        self.version = md.version("llguidance")

    def compile(self, schema: dict):
        import llguidance
        return llguidance.LLMatcher(self.tok, g.json_grammar(schema, "<|return|>"), log_level=0)

    @staticmethod
    def matcher(compiled):
        return compiled.deep_copy()  # what harmony_io.token_masks.GrammarCache hands out

    @staticmethod
    def fill(m, out: np.ndarray) -> None:
        g.fill_from(m, out)

    @staticmethod
    def consume(m, token: int) -> bool:
        return m.consume_token(token)


class XGrammar:
    name = "xgrammar"

    def __init__(self):
        import xgrammar as xgr

        self.xgr = xgr
        t0 = time.perf_counter()
        vocab = g.token_bytes() + [b""] * (VOCAB_SIZE - g.FIRST_SPECIAL)  # empty: special (never text)
        info = xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, vocab_size=VOCAB_SIZE, stop_token_ids=[RETURN])
        self.compiler = xgr.GrammarCompiler(info, cache_enabled=False)
        self.tokenizer_s = time.perf_counter() - t0
        self.special = len(info.special_token_ids)
        self.version = md.version("xgrammar")

    def compile(self, schema: dict):
        compiled = self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=True, max_whitespace_cnt=20,
                                                     strict_mode=False)
        return compiled

    def matcher(self, compiled):
        return self.xgr.GrammarMatcher(compiled)

    @staticmethod
    def fill(m, out: np.ndarray) -> None:
        m.fill_next_token_bitmask(out.reshape(1, -1), 0)

    @staticmethod
    def consume(m, token: int) -> bool:
        return m.accept_token(token)


# -- measurements ------------------------------------------------------------------------------


def drive(engine, matcher, tokens: list[int], times: list[float]) -> Optional[str]:
    """Feed a valid document's tokens, checking each is allowed; None if all were (and the stop at the end)."""
    out = g.empty_mask()
    for i, t in enumerate(tokens + [RETURN]):
        t0 = cpu_clock()
        engine.fill(matcher, out)
        times.append(cpu_clock() - t0)
        if not g.allows(out, t):
            return f"token {i} ({encoding().decode([t])!r}) forbidden"
        if t != RETURN and g.allows(out, RETURN):
            return f"stop allowed early at token {i}"
        if not engine.consume(matcher, t):
            return f"token {i} refused by consume"
    return None


def walk(engine, matcher, rng: np.random.Generator, times: list[float]) -> tuple[Optional[str], int]:
    """Random allowed tokens until the stop token: (document text or None if cut at MAX_STEPS, steps)."""
    out = g.empty_mask()
    picked: list[int] = []
    for step in range(MAX_STEPS):
        t0 = cpu_clock()
        engine.fill(matcher, out)
        times.append(cpu_clock() - t0)
        ids = g.allowed_ids(out)
        if len(ids) == 0:
            raise AssertionError("empty mask")
        # uniform over the allowed tokens, but a closing token (quote, bracket, brace) and the stop token
        # often when allowed: uniform choices alone almost never end a string
        closing = ids[np.isin(ids, closers())]
        if g.allows(out, RETURN) and rng.random() < 0.5:
            t = RETURN
        elif len(closing) and rng.random() < 0.3:
            t = int(rng.choice(closing))
        else:
            t = int(rng.choice(ids))
        if not engine.consume(matcher, t):
            raise AssertionError(f"{engine.name} refused a token its own mask allowed")
        if t == RETURN:
            return encoding().decode(picked), step + 1
        picked.append(t)
    return None, MAX_STEPS


@functools.lru_cache(maxsize=1)
def closers() -> np.ndarray:
    """Text tokens made only of `"`, `]`, `}` (and spaces)."""
    return np.array([i for i, b in enumerate(g.token_bytes()) if b.strip() and not b.strip(b'"]} ')], dtype=np.int64)


def installed_weight(dist: str) -> tuple[float, list[str]]:
    """MB installed by `dist` and its (non-extra) requirements present in this environment."""
    seen: set[str] = set()
    todo = [dist]
    total = 0
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            d = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        total += sum((f.size or 0) for f in (d.files or []))
        for req in d.requires or []:
            if "extra ==" in req:
                continue
            from packaging.requirements import Requirement
            r = Requirement(req)
            if r.marker is None or r.marker.evaluate():
                todo.append(r.name)
    return total / 1e6, sorted(seen)


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs) * 1e6, q))


def run(engine, walks: int, seed: int, validate: Callable[[dict, object], Optional[str]]) -> None:
    enc = encoding()
    print(f"\n## {engine.name} {engine.version}: tokenizer built in {engine.tokenizer_s:.2f} s")
    print("| schema | compile | mask median | mask p99 | mask max | valid docs allowed | walks valid (ended) |")
    print("|---|---|---|---|---|---|---|")
    all_times: list[float] = []
    rng = np.random.default_rng(seed)
    for name, schema, docs in cases():
        t0 = time.perf_counter()
        compiled = engine.compile(schema)
        compile_ms = (time.perf_counter() - t0) * 1e3
        times: list[float] = []
        failures = []
        n_docs = 0
        for doc in docs:
            for text in renderings(doc):
                n_docs += 1
                err = drive(engine, engine.matcher(compiled), enc.encode(text, allowed_special=set()), times)
                if err:
                    failures.append(err)
        ok = ended = 0
        for _ in range(walks):
            text, _steps = walk(engine, engine.matcher(compiled), rng, times)
            if text is None:
                continue
            ended += 1
            err = validate(schema, text)
            if err is None:
                ok += 1
            else:
                failures.append(f"walk output invalid: {err}: {text[:80]!r}")
        all_times += times
        docs_ok = n_docs - sum(1 for f in failures if not f.startswith("walk"))
        print(f"| {name} | {compile_ms:.1f} ms | {pct(times, 50):.0f} us | {pct(times, 99):.0f} us | "
              f"{max(times) * 1e6:.0f} us | {docs_ok}/{n_docs} | {ok}/{ended} ({ended}/{walks}) |")
        for f in failures[:3]:
            print(f"    ! {f}")
    print(f"all schemas: {len(all_times)} masks, median {pct(all_times, 50):.0f} us, p99 {pct(all_times, 99):.0f} us")


def validator():
    import jsonschema

    def validate(schema: dict, text: str) -> Optional[str]:
        try:
            value = json.loads(text)
        except ValueError as e:
            return f"not JSON ({e})"
        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError as e:
            return f"invalid ({e.message})"
        return None

    return validate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--walks", type=int, default=20, help="random walks per schema and engine")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, vocabulary {VOCAB_SIZE}")
    for dist in ("llguidance", "xgrammar"):
        try:
            mb, deps = installed_weight(dist)
            print(f"install weight: {dist} and its requirements here: {mb:.0f} MB ({', '.join(deps)})")
        except md.PackageNotFoundError:
            pass
    validate = validator()
    engines: list = [LLGuidance()]
    try:
        engines.append(XGrammar())
    except ImportError:
        print("xgrammar not installed: comparing llguidance alone")
    for engine in engines:
        run(engine, args.walks, args.seed, validate)
        if isinstance(engine, XGrammar):
            print(f"(xgrammar marked {engine.special} ids as special)")


if __name__ == "__main__":
    main()
