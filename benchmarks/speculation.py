"""Prompt-lookup speculation: tokens accepted per verification and speed-up, on code editing and on chat.

    python benchmarks/speculation.py                      # CPU: the small preset's width, 4 layers
    python benchmarks/speculation.py --preset 20b --layers 24     # a GPU (the default there)

Random weights never copy their context, so the measured model follows a *target* continuation: a
wrapper runs the real model's forward pass (its full cost, caches included) and then makes the logits
pick the target token at every position. Greedy generation therefore reproduces the target exactly,
with and without speculation, and what speculation gains is what it gains for a model that writes
that text. Two targets:

- code editing: the prompt holds a 300-line Python file and asks for one change; the target answer
  is the whole file with that one line changed (what agents and editors make models do);
- chat: the target is ordinary prose that quotes nothing from the prompt.

Reported per case: verification passes, draft tokens accepted per pass, decode tok/s with and without
speculation (same process, alternating, medians) and the ratio. mlx-lm's speculative mode needs a draft
model and a trimmable cache; it is attempted on the same checkpoint and its error is reported.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).parent))
from depth_compare import backend, ensure_checkpoint  # noqa: E402

from gptoss_metal.harmony_io import encoding, render_prompt  # noqa: E402
from gptoss_metal.metal_runtime import GenerationStats, generate, load  # noqa: E402


def python_file(lines: int = 300) -> str:
    out = ["import math", "", ""]
    i = 0
    while len(out) < lines:
        out += [f"def area_{i}(radius: float, scale: float = {i % 7 + 1}.0) -> float:",
                f'    """Area of disc number {i}, scaled by {i % 7 + 1}."""',
                f"    value = math.pi * radius ** 2 * scale + {i * 3 % 11}",
                "    return round(value, 3)", "", ""]
        i += 1
    return "\n".join(out[:lines]) + "\n"


CHAT_ANSWER = ("Sourdough starts with a culture of wild yeast and lactic acid bacteria. Feed it flour and water "
               "at the same time each day, keep it somewhere warm, and within a week it should double after each "
               "feeding. Mix the dough the evening before, let it rise slowly in a cool kitchen, shape it in the "
               "morning, and bake it in a very hot covered pot so the crust blisters and the crumb stays open. ") * 2


class FollowTarget:
    """The real model's forward pass (all its cost), with logits that pick `target[p]` after position p."""

    def __init__(self, model, target_by_position: dict[int, int]):
        self.model, self.target = model, target_by_position
        self.args = model.args

    def make_cache(self, trim_slack: int = 0):
        return self.model.make_cache(trim_slack)

    def __call__(self, tokens: mx.array, cache=None) -> mx.array:
        start = cache.offset if cache is not None else 0
        logits = self.model(tokens, cache)
        T, V = tokens.shape[1], logits.shape[-1]
        want = [self.target.get(start + i, 0) for i in range(T)]
        forced = mx.where(mx.arange(V)[None, :] == mx.array(want)[:, None], 100.0, -100.0)
        return logits * 0 + forced[None].astype(logits.dtype)  # keeps the model's work in the graph


def run_case(model, prompt: list[int], answer: list[int], rounds: int) -> dict:
    target = {len(prompt) - 1 + i: t for i, t in enumerate(answer)}
    follower = FollowTarget(model, target)
    out: dict = {"off": [], "on": [], "stats": None}
    for r in range(rounds):
        for mode in (["off", "on"] if r % 2 == 0 else ["on", "off"]):
            stats = GenerationStats()
            toks = list(generate(follower, prompt, max_tokens=len(answer), temperature=0.0, stats=stats,
                                 speculate=mode == "on"))
            assert toks == answer, "the target was not reproduced"
            out[mode].append(stats.decode_tps)
            if mode == "on":
                out["stats"] = stats
    st = out["stats"]
    return {"tokens": len(answer), "passes": st.verifications, "drafted": st.drafted_tokens,
            "accepted": st.accepted_tokens, "off": statistics.median(out["off"]), "on": statistics.median(out["on"])}


def mlx_lm_speculative(path: Path, draft_path: Path, prompt_lengths=(64, 300)) -> list[str]:
    """mlx-lm's speculative mode (a draft model) on gpt_oss: is its greedy output its plain greedy output?

    Its sliding-window layers use a rotating cache that cannot be trimmed once it wrapped; verification
    rejects drafts and trims. Same checkpoint, a second random checkpoint of the same shape as the draft.
    """
    import numpy as np
    from mlx_lm.generate import generate_step, speculative_generate_step
    from mlx_lm.sample_utils import make_sampler
    from mlx_lm.utils import load_model

    model, draft = load_model(path)[0], load_model(draft_path)[0]
    lines = []
    for n in prompt_lengths:
        prompt = mx.array(np.random.default_rng(0).integers(0, 199_998, n).tolist())
        plain = [int(t) for t, _ in generate_step(prompt, model, max_tokens=24, sampler=make_sampler(temp=0.0))]
        try:
            spec = [int(t) for t, _, _ in speculative_generate_step(prompt, model, draft, num_draft_tokens=4,
                                                                   max_tokens=24, sampler=make_sampler(temp=0.0))]
        except Exception as e:  # noqa: BLE001 - what a user of mlx-lm would see
            lines.append(f"{n}-token prompt: {type(e).__name__}: {e}")
            continue
        if spec == plain:
            lines.append(f"{n}-token prompt: greedy output identical to its plain greedy output")
        else:
            first = next(i for i, (x, y) in enumerate(zip(spec, plain)) if x != y)
            lines.append(f"{n}-token prompt: greedy output DIFFERS from its plain greedy output from token {first}")
    return lines


def main() -> None:
    gpu = backend() != "cpu"
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="20b" if gpu else "small", choices=["small", "20b"])
    ap.add_argument("--layers", type=int, default=24 if gpu else 4)
    ap.add_argument("--rounds", type=int, default=3 if gpu else 2)
    ap.add_argument("--lines", type=int, default=300, help="size of the edited file")
    ap.add_argument("--workdir", default="benchmarks/.work")
    a = ap.parse_args()
    path = ensure_checkpoint(Path(a.workdir), a.layers, 201088, a.preset)
    model = load(path)
    enc = encoding()
    source = python_file(a.lines)
    middle = source.count("def area_") // 2
    edited = source.replace(f"def area_{middle}(radius: float", f"def area_{middle}(radius: int")
    assert edited != source
    code_prompt = render_prompt([{"role": "user", "content": f"Change area_{middle} to take an int radius. Reply with "
                                  "the whole file.\n\n```python\n" + source + "```"}], reasoning_effort="low")
    code_answer = enc.encode("<|channel|>final<|message|>```python\n" + edited + "```<|return|>",
                             allowed_special="all")
    chat_prompt = render_prompt([{"role": "user", "content": "How do I bake sourdough bread?"}],
                                reasoning_effort="low")
    chat_answer = enc.encode("<|channel|>final<|message|>" + CHAT_ANSWER + "<|return|>", allowed_special="all")
    results = {f"code editing ({a.lines}-line file, one change)": run_case(model, code_prompt, code_answer, a.rounds),
               "chat (no quoting)": run_case(model, chat_prompt, chat_answer, a.rounds)}
    print(f"\n### prompt-lookup speculation: {a.preset} width, {a.layers} layers, {a.rounds} rounds (medians)\n")
    print(f"Machine: {platform.system()} {platform.machine()}; MLX {mx.__version__} ({backend()}).\n")
    print("| case | answer tokens | verification passes | accepted per pass | decode tok/s off | decode tok/s on "
          "| speed-up |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        per = r["accepted"] / r["passes"] if r["passes"] else 0.0
        print(f"| {name} | {r['tokens']} | {r['passes']} | {per:.2f} | {r['off']:.2f} | {r['on']:.2f} | "
              f"{r['on'] / r['off']:.2f}x |")
    window = model.args.sliding_window
    print(f"\nmlx-lm's speculative mode (speculative_generate_step, a draft model of the same shape, 4 drafts), "
          f"sliding window {window}:")
    for line in mlx_lm_speculative(path, ensure_checkpoint(Path(a.workdir), a.layers, 201088, a.preset, seed=1)):
        print(f"- {line}")
    print("- it has no prompt-lookup mode, so the cases above cannot be run with it.")


if __name__ == "__main__":
    main()
