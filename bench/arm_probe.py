"""How much does each exploration source move the base? The generation stage of issue 14.

For held-out prompts, answers from the plain base, the base at the hot temperature, and the
base under each style arm of config.toml [explore] (instruction + demonstration), and for
each persona file the share of answers with each liked feature (bench/personalize.py's
liked_features). A taste can only be learned from comparisons if some source writes it.

    .venv/bin/python bench/arm_probe.py --personas bench/personas-extra --prompts 16 \
        --out bench/out/arm-probe
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from personalize import liked_features, liked_names, load_prompts, split_prompts  # noqa: E402
from personas import load_personas  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--personas", type=Path, default=ROOT / "bench" / "personas-extra")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" /
                   "prompts-dev.jsonl")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "arm-probe")
    args = p.parse_args(argv)

    import torch

    from adapters.base_model import load_base
    from assistant import explore as ex
    from assistant.config import load_config
    from assistant.engine import Engine, GenRequest

    torch.set_num_threads(1)
    config = load_config()
    base = load_base(config.model.path, config.cache_dir)
    engine = Engine(base.model, base.tokenizer, base.base_id)
    _, heldout = split_prompts(load_prompts(args.data), args.prompts, 0)
    arms = ex.parse_arms(config.explore.arms)
    e = config.explore
    sources = {"base": (None, 0.7), "hot": (None, e.hot_temperature)}
    sources.update({f"arm:{a.name}": (a, 0.7) for a in arms})
    answers: dict[str, list[str]] = {}
    started = time.monotonic()
    for name, (arm, temperature) in sources.items():
        reqs = []
        for i, prompt in enumerate(heldout):
            visible = [{"role": "user", "content": prompt}]
            messages = ex.arm_messages(visible, arm, e.demo_question) if arm else visible
            reqs.append(GenRequest(messages=messages, temperature=temperature,
                                   max_tokens=args.max_tokens, seed=i))
        futures = [engine.submit(r) for r in reqs]
        answers[name] = [f.result().candidates[0].text for f in futures]
        print(f"{name}: done ({time.monotonic() - started:.0f} s)", flush=True)
    engine.close()
    personas = load_personas(args.personas)
    table = {persona.name: {name: {k: round(sum(k in liked_features(persona, t)
                                                for t in texts) / len(texts), 3)
                                   for k in liked_names(persona)}
                            for name, texts in answers.items()} for persona in personas}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "answers.json").write_text(json.dumps(answers, indent=1))
    (args.out / "results.json").write_text(json.dumps(table, indent=1))
    lines = ["| persona | feature | " + " | ".join(sources) + " |",
             "| --- | --- |" + " --- |" * len(sources)]
    for persona, by_source in table.items():
        for k in liked_names(next(p for p in personas if p.name == persona)):
            lines.append(f"| {persona} | {k} | " + " | ".join(
                f"{by_source[s][k]:.2f}" for s in sources) + " |")
    words = {s: round(sum(len(t.split()) for t in a) / len(a), 1) for s, a in answers.items()}
    lines += ["", "Mean words: " + ", ".join(f"{s} {w}" for s, w in words.items())]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
