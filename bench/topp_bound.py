"""Why top-p chooses among the 8,192 most likely tokens: what it changes, what it costs.

`python bench/topp_bound.py MODEL_DIR` prints two things, as JSON lines:

- for temperatures 0.7, 1.0 and 1.5, the share of decoding steps where the K most
  likely tokens (K = 256, 1,024, 8,192) hold less than 95 % of the probability, i.e.
  where bounding top-p (default 0.95) to K candidates changes the nucleus; greedy-free
  replies of 150 tokens to 5 prompts, logits from `Generator.forward_batch`;
- seconds for a batch of 4 x 128 tokens with `sampling_topk` 0 (the whole vocabulary)
  and 8,192, top_p 0.95, on the CPU, 4 repeats interleaved.

CUDA's top-p kernel refuses more than 8,192 classes (see `bot.engine.generation`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import ctranslate2
import numpy as np

from bot.model.bundle import load_model_bundle

PROMPTS = [
    "Tell me a story about a dragon who learns to cook.",
    "Explain how vaccines work.",
    "Write a poem about the sea.",
    "What should I pack for a hike?",
    "Summarise the history of Rome in a few paragraphs.",
]


def main(model_dir: Path) -> None:
    bundle = load_model_bundle(model_dir)
    generator = ctranslate2.Generator(str(model_dir), device="cpu", compute_type="int8",
                                      intra_threads=1)
    masses: dict[tuple[float, int], list[np.ndarray]] = {}
    for prompt in PROMPTS:
        ids = bundle.encode_chat(None, prompt)
        tokens = [bundle.tokenizer.id_to_token(i) for i in ids]
        out = generator.generate_batch([tokens], max_length=150, sampling_topk=0,
                                       sampling_topp=0.95, include_prompt_in_result=True)
        logits = np.array(generator.forward_batch([out[0].sequences[0]]))[0][len(tokens) - 1:]
        for temperature in (0.7, 1.0, 1.5):
            z = logits / temperature
            z = z - z.max(-1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(-1, keepdims=True)
            ranked = -np.sort(-p, axis=-1)
            for k in (256, 1024, 8192):
                masses.setdefault((temperature, k), []).append(ranked[:, :k].sum(-1))
    for (temperature, k), parts in sorted(masses.items()):
        mass = np.concatenate(parts)
        print(json.dumps({"temperature": temperature, "k": k, "steps": len(mass),
                          "share_below_0.95": round(float((mass < 0.95).mean()), 4),
                          "min_mass": round(float(mass.min()), 4)}))
    ids = bundle.encode_chat(None, "Tell me a long story about a dragon.")
    tokens = [bundle.tokenizer.id_to_token(i) for i in ids]
    for repeat in range(4):
        for topk in (0, 8192):
            start = time.perf_counter()
            generator.generate_batch([tokens] * 4, max_length=128, min_length=128,
                                     sampling_topk=topk, sampling_topp=0.95,
                                     sampling_temperature=0.7, include_prompt_in_result=False)
            print(json.dumps({"repeat": repeat, "sampling_topk": topk,
                              "seconds": round(time.perf_counter() - start, 3)}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
