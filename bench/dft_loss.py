r"""DFT loss memory and time: chunked and fused (ours) vs a reference that materialises the full softmax.

Qwen2.5 vocabulary (151,936), 4 x 1,024 response tokens, hidden size 896 (Qwen2.5-0.5B).
Methods: ``reference`` (one [N, V] softmax), ``chunked`` (the checkpointed chunks: each chunk projected in
forward and again in backward), ``fused`` (offline_rl/fused.py: each chunk projected once, its gradients
computed in forward). Each method runs in a fresh process; reported: peak memory above the inputs (CPU: peak
RSS; GPU: torch.cuda.max_memory_allocated) and forward+backward seconds. ``--dtype bfloat16`` runs all three
under bf16 autocast (fp32 weights), as training on a GPU does.

    .venv/bin/python bench/dft_loss.py [--tokens 4096] [--vocab 151936] [--hidden 896] [--chunk 256] \
        [--dtype float32|bfloat16]
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_one(method: str, tokens: int, vocab: int, hidden: int, chunk: int, dtype: str = "float32") -> dict:
    import contextlib

    import torch

    from offline_rl.fused import fused_weighted_logprobs
    from offline_rl.projection import _chunk_logprobs

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
    autocast = (torch.autocast(device_type=device, dtype=torch.bfloat16) if dtype == "bfloat16"
                else contextlib.nullcontext())
    with autocast:
        loss = _loss(method, lm_head, h, targets, chunk, _chunk_logprobs, fused_weighted_logprobs)
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    return {"method": method, "device": device, "seconds": time.time() - start, "peak_extra_mib": peak,
            "loss": loss.item()}


def _loss(method, lm_head, h, targets, chunk, _chunk_logprobs, fused_weighted_logprobs):
    import torch

    from offline_rl.projection import LogitHead

    tokens = h.shape[0]
    if method == "fused":  # DFT: d loss / d log p = -sg(p); the surrogate's value is the loss itself
        return fused_weighted_logprobs(h, lm_head.weight, targets, chunk, lambda lp: -lp.exp())[0]
    if method == "reference":
        probs = torch.softmax(lm_head(h).float(), dim=-1)  # [N, V]: the full softmax
        p_t = probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        logprobs = p_t.log()
    else:
        logprobs = torch.cat([torch.utils.checkpoint.checkpoint(_chunk_logprobs, LogitHead(lm_head), h[i : i + chunk],
                                                                targets[i : i + chunk], (1.0,), False,
                                                                use_reentrant=False)[0]
                              for i in range(0, tokens, chunk)])
    return -(logprobs.detach().exp() * logprobs).sum()  # DFT: -sg(p) log p


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4 * 1024)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.tokens, args.vocab, args.hidden, args.chunk, args.dtype)))
        return
    results = {}
    for method in ("reference", "chunked", "fused"):
        done = subprocess.run([sys.executable, __file__, "--one", method, "--tokens", str(args.tokens), "--vocab",
                               str(args.vocab), "--hidden", str(args.hidden), "--chunk", str(args.chunk),
                               "--dtype", args.dtype], capture_output=True, text=True, check=True)
        results[method] = json.loads(done.stdout.strip().splitlines()[-1])
        r = results[method]
        print(f"{method:>9} ({r['device']}): peak extra memory {r['peak_extra_mib']:8.0f} MiB, "
              f"forward+backward {r['seconds']:6.2f} s, loss {r['loss']:.6f}", flush=True)
    ref = results["reference"]
    for method in ("chunked", "fused"):
        ours = results[method]
        print(f"{method} / reference ({args.dtype}): memory {ours['peak_extra_mib'] / ref['peak_extra_mib']:.3f}x, "
              f"time {ours['seconds'] / ref['seconds']:.2f}x  "
              f"({args.tokens} tokens, vocab {args.vocab}, chunk {args.chunk})")


if __name__ == "__main__":
    main()
