"""The training-inference mismatch under bf16: the trainer's token log-probs under bf16 autocast (the GPU
configuration) beside the engine's float32 ones, on the shipped model's own samples.

The engines sample and store float32 log-probs; the training loop runs the policy under bf16 autocast on an
accelerator, so at step 0 a ratio learner's log-ratio is not 0 but this difference. Reported with the float32
projection (``token_logprobs_at(..., float32=True)``: the lm_head matmul in float32, what ratio learners use) on
and off, at the loop's default chunk size. On CPU, torch's bf16 autocast stands in for the accelerator's.

    .venv/bin/python bench/bf16_mismatch.py [--prompts 64] [--n 2]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64, help="world train prompts")
    parser.add_argument("--n", type=int, default=2, help="samples per prompt (transformers engine, temperature 1)")
    parser.add_argument("--chunk-size", type=int, default=256, help="the loop's --logit-chunk-size")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from offline_rl.embedded import world
    from offline_rl.embedded.base_model import DEFAULT_BASE_MODEL
    from offline_rl.projection import token_logprobs_at
    from offline_rl.views import Example, collate
    from rollout.engines import HFEngine, SamplingConfig, prompt_seed
    from rollout.templates import Template

    model_dir = str(DEFAULT_BASE_MODEL)
    engine = HFEngine(model_dir, dtype="float32")
    template = Template("world", engine.tokenizer)
    problems = world.load_split("train")[: args.prompts]
    prompt_ids = [template.token_ids(template.render(p.question)) for p in problems]
    outputs = engine.generate(prompt_ids, SamplingConfig(n=args.n, temperature=1.0, max_tokens=160),
                              seeds=[prompt_seed(0, str(i)) for i in range(len(prompt_ids))], use_tqdm=False)
    engine.close()
    examples = [Example(str(i), ids, s.token_ids) for i, (ids, samples) in enumerate(zip(prompt_ids, outputs,
                                                                                         strict=True))
                for s in samples if s.token_ids]
    batch = collate(examples, pad_token_id=engine.tokenizer.pad_token_id or 0)
    where = batch["response_mask"].bool()  # [B, T]

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()  # float32 master weights
    with torch.no_grad():
        engine_logprobs = token_logprobs_at(model, batch, args.chunk_size)[0][where]  # what the engine stored
        print(f"{int(where.sum())} response tokens of {len(examples)} samples ({args.prompts} world train prompts, "
              f"temperature 1), shipped model; |log p(bf16 autocast) - log p(float32)| in nats:")
        for float32 in (False, True):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                trained = token_logprobs_at(model, batch, args.chunk_size, float32=float32)[0][where]
            gap = (trained - engine_logprobs).abs()
            print(f"  float32 projection {'on ' if float32 else 'off'}: mean {gap.mean():.2e}, max {gap.max():.2e}, "
                  f"mean |log-ratio| per sequence {_per_sequence(trained - engine_logprobs, where):.2e}")


def _per_sequence(differences, where) -> float:
    """The mean over sequences of |sum of the token differences|: a sequence-level ratio's error."""
    counts = where.sum(1).tolist()
    sums = [part.sum().abs() for part in differences.split(counts)]
    return float(sum(sums) / len(sums))


if __name__ == "__main__":
    main()
