"""DFT loss memory and time: chunked (ours) vs a reference that materialises the full softmax.

Qwen2.5 vocabulary (151,936), 4 x 1,024 response tokens, hidden size 896 (Qwen2.5-0.5B).
Each method runs in a fresh process; reported: peak memory above the inputs (CPU: peak RSS;
GPU: torch.cuda.max_memory_allocated) and forward+backward seconds.

    .venv/bin/python bench/dft_loss.py [--tokens 4096] [--vocab 151936] [--hidden 896] [--chunk 256]
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_one(method: str, tokens: int, vocab: int, hidden: int, chunk: int) -> dict:
    import torch

    from offline_rl.data import _chunk_logprobs

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    lm_head = torch.nn.Linear(hidden, vocab, bias=False, device=device)
    h = torch.randn(tokens, hidden, device=device, requires_grad=True)
    targets = torch.randint(0, vocab, (tokens,), device=device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    start = time.time()
    if method == "reference":
        probs = torch.softmax(lm_head(h).float(), dim=-1)  # [N, V]: the full softmax
        p_t = probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        logprobs = p_t.log()
    else:
        logprobs = torch.cat([torch.utils.checkpoint.checkpoint(_chunk_logprobs, lm_head, h[i : i + chunk],
                                                                targets[i : i + chunk], (1.0,), False,
                                                                use_reentrant=False)[0]
                              for i in range(0, tokens, chunk)])
    loss = -(logprobs.detach().exp() * logprobs).sum()  # DFT: -sg(p) log p
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    return {"method": method, "device": device, "seconds": time.time() - start, "peak_extra_mib": peak,
            "loss": loss.item()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4 * 1024)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.tokens, args.vocab, args.hidden, args.chunk)))
        return
    results = {}
    for method in ("reference", "chunked"):
        done = subprocess.run([sys.executable, __file__, "--one", method, "--tokens", str(args.tokens), "--vocab",
                               str(args.vocab), "--hidden", str(args.hidden), "--chunk", str(args.chunk)],
                              capture_output=True, text=True, check=True)
        results[method] = json.loads(done.stdout.strip().splitlines()[-1])
        r = results[method]
        print(f"{method:>9} ({r['device']}): peak extra memory {r['peak_extra_mib']:8.0f} MiB, "
              f"forward+backward {r['seconds']:6.2f} s, loss {r['loss']:.6f}", flush=True)
    ref, ours = results["reference"], results["chunked"]
    print(f"chunked / reference: memory {ours['peak_extra_mib'] / ref['peak_extra_mib']:.3f}x, "
          f"time {ours['seconds'] / ref['seconds']:.2f}x  ({args.tokens} tokens, vocab {args.vocab}, chunk {args.chunk})")


if __name__ == "__main__":
    main()
