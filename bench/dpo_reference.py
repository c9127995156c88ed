"""DPO reference pass, peak memory and time: before (the initial model on the CPU, full-vocabulary
projection) vs now (``dpo.reference_from_model``: training device, chunked float32 projection).

A Qwen2.5-0.5B-shaped model cut to one layer (the reference pass's memory is the projection's,
not the layers'): vocabulary 151,936, hidden 896; 2 pairs = 4 sequences x 1,024 tokens. Each
method runs in a fresh process; reported: peak RSS above the process's state before the pass
(CPU, sampled every 2 ms) or torch.cuda.max_memory_allocated (GPU), the model's own weights included in both.

    .venv/bin/python bench/dpo_reference.py [--tokens 1024] [--vocab 151936] [--hidden 896]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def before(pairs, context, batch_size: int = 32):
    """The reference pass as it was: float32 model on the CPU, every logit of the batch at once."""
    import torch
    from transformers import AutoModelForCausalLM

    from offline_rl.projection import token_logprobs
    from offline_rl.views import collate

    with torch.no_grad():
        model = AutoModelForCausalLM.from_pretrained(context.model_path, dtype=torch.float32).eval()
        flat = [e for p in pairs for e in (p.chosen, p.rejected)]
        sums = []
        for begin in range(0, len(flat), batch_size):
            batch = collate(flat[begin : begin + batch_size], context.tokenizer.eos_token_id)
            sums += (token_logprobs(model, batch) * batch["response_mask"]).sum(-1).tolist()
    return sums


class PeakRSS:
    """Peak resident memory above its level at entry, sampled every 2 ms from /proc (ru_maxrss would
    report the process's earlier import-time peak instead)."""

    def __enter__(self):
        import os
        import threading

        self.page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.peak = self._rss()
        self.running = True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _watch(self):
        import time

        while self.running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def extra_mib(self) -> float:
        return (self.peak - self.base) / 2**20


def run_one(method: str, tokens: int, vocab: int, hidden: int, model_dir: str) -> dict:
    import torch

    from offline_rl.learners import dpo
    from offline_rl.views import Example

    generator = torch.Generator().manual_seed(0)

    def example(i: int) -> Example:
        ids = torch.randint(1, vocab, (tokens,), generator=generator).tolist()
        return Example(f"p{i // 2}", ids[:24], ids[24:], reward=float(i % 2 == 0))

    pairs = [dpo.Pair(example(2 * i), example(2 * i + 1)) for i in range(2)]
    context = SimpleNamespace(model_path=model_dir, tokenizer=SimpleNamespace(eos_token_id=0, pad_token_id=0),
                              accelerator=None, logit_chunk_size=256)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        from accelerate import Accelerator

        context.accelerator = Accelerator(mixed_precision="bf16")
        torch.cuda.reset_peak_memory_stats()
    start = time.time()
    with PeakRSS() as rss:
        if method == "before":
            sums = before(pairs, context)
        else:
            done = dpo.reference_from_model(pairs, context)
            sums = [v for p in done for v in (p.chosen.reference_logprob, p.rejected.reference_logprob)]
    seconds = time.time() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else rss.extra_mib
    return {"method": method, "device": device, "seconds": seconds, "peak_mib": peak, "sums": sums}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1024, help="tokens per sequence (4 sequences)")
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.tokens, args.vocab, args.hidden, args.model_dir)))
        return
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    with tempfile.TemporaryDirectory() as model_dir:
        torch.manual_seed(0)
        config = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4864,
                             num_hidden_layers=1, num_attention_heads=14, num_key_value_heads=2,
                             max_position_embeddings=4096, tie_word_embeddings=True)
        Qwen2ForCausalLM(config).save_pretrained(model_dir)
        results = {}
        for method in ("before", "now"):
            done = subprocess.run([sys.executable, __file__, "--one", method, "--tokens", str(args.tokens), "--vocab",
                                   str(args.vocab), "--hidden", str(args.hidden), "--model-dir", model_dir],
                                  capture_output=True, text=True, check=True)
            results[method] = r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{method:>6} ({r['device']}): peak memory {r['peak_mib']:8.0f} MiB, {r['seconds']:6.2f} s",
                  flush=True)
    old, new = results["before"], results["now"]
    gap = max(abs(a - b) for a, b in zip(old["sums"], new["sums"], strict=True))
    print(f"now / before: memory {new['peak_mib'] / old['peak_mib']:.3f}x, "
          f"time {new['seconds'] / old['seconds']:.2f}x; "
          f"largest difference of a sequence log-prob {gap:.2e} nats (4 x {args.tokens} tokens, vocab {args.vocab})")


if __name__ == "__main__":
    main()
