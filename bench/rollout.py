"""Rollout engines side by side: vLLM vs plain transformers on the embedded base model.

Same prompts (world test-id), same n, temperature 1, natural (unequal) response
lengths. Reports warm-up seconds (engine start + a first small batch) and
steady-state generated tokens/s, and their ratio.

    .venv/bin/python bench/rollout.py [--prompts 200] [--n 4]
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(name, make_engine, prompt_ids, warmup_ids, sampling):
    start = time.time()
    engine = make_engine()
    engine.generate(warmup_ids, sampling, use_tqdm=False)
    warmup = time.time() - start
    start = time.time()
    outputs = engine.generate(prompt_ids, sampling, use_tqdm=False)
    seconds = time.time() - start
    tokens = sum(len(s.token_ids) for samples in outputs for s in samples)
    engine.close()
    lengths = [len(s.token_ids) for samples in outputs for s in samples]
    print(f"{name:>5}: warm-up {warmup:6.1f} s | {tokens:7d} tokens in {seconds:6.1f} s = "
          f"{tokens / seconds:8.0f} tokens/s"
          f" | response length {min(lengths)}-{max(lengths)}", flush=True)
    return {"warmup_s": warmup, "tokens_per_s": tokens / seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--hf-batch", type=int, default=64, help="sequences per transformers generate() call")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from offline_rl.embedded import world
    from offline_rl.embedded.base_model import DEFAULT_BASE_MODEL
    from rollout.engines import HFEngine, SamplingConfig, VLLMEngine
    from rollout.templates import Template

    model = str(DEFAULT_BASE_MODEL)
    template = Template("world", AutoTokenizer.from_pretrained(model))
    problems = world.load_split("test-id")[: args.prompts]
    prompt_ids = [template.token_ids(template.render(p.question)) for p in problems]
    warmup_ids = prompt_ids[:8]
    sampling = SamplingConfig(n=args.n, temperature=1.0, max_tokens=160)
    print(f"{len(prompt_ids)} prompts x {args.n} samples, temperature 1.0, embedded base model, float32")
    vllm = measure("vllm", lambda: VLLMEngine(model, seed=0, dtype="float32"), prompt_ids, warmup_ids, sampling)
    hf = measure("hf", lambda: HFEngine(model, seed=0, dtype="float32", batch_size=args.hf_batch), prompt_ids,
                 warmup_ids, sampling)
    print(f"vLLM / transformers steady-state tokens/s: {vllm['tokens_per_s'] / hf['tokens_per_s']:.2f}x; "
          f"warm-up {vllm['warmup_s']:.1f} s vs {hf['warmup_s']:.1f} s")


if __name__ == "__main__":
    main()
