"""Beyond one process, side by side on this machine: FSDP2 against one process (step time), Ray collection with
2 workers against one process (rows/s), and the vLLM-server client against the offline engine (tokens/s).

- ``fsdp``: the same bin/train run (the shipped model, world demonstrations, ``--steps`` x ``--batch-size``) in one
  process, as 2-process DDP (torchrun, gloo) and as 2-process FSDP2 (``accelerate launch --config_file
  configs/accelerate/fsdp-cpu.yaml``); seconds per step from each run's train_summary.json (the loop, not start-up).
- ``ray``: bin/collect on ``--prompts`` world prompts x 4 samples in one process, then ``--ray-address local
  --data-parallel-size 2``; rows per second of the whole command (start-up, engines and merge included) and the
  rows compared.
- ``server``: ``vllm serve`` of the shipped model started (not timed), the same prompts sampled through
  ``OpenAIEngine`` at ``--concurrency``; the server stopped, the same prompts through the in-process engine;
  generated tokens per second of the sampling call alone, and the tokens compared.

    .venv/bin/python bench/scale.py [--what fsdp,ray,server] [--steps 20] [--prompts 64]
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent


def quiet(command: list[str], **kwargs) -> float:
    start = time.time()
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kwargs)
    if done.returncode:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return time.time() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fsdp(tmp: Path, args) -> None:
    quiet([sys.executable, "bin/import", "--source", "world:train", "--out", str(tmp / "demos"), "--prompts", "512"])
    train = ["bin/train", "--learner", "dft", "--data", str(tmp / "demos"), "--steps", str(args.steps), "--batch-size",
             str(args.batch_size), "--report-to", "none", "--log-every", str(args.steps)]
    sides = {
        "1 process": [sys.executable, *train, "--out", str(tmp / "one")],
        "DDP, 2 processes": [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
                             *train, "--out", str(tmp / "ddp")],
        "FSDP2, 2 processes": [str(BIN / "accelerate"), "launch", "--config_file", "configs/accelerate/fsdp-cpu.yaml",
                               "--main_process_port", str(free_port()), *train, "--out", str(tmp / "fsdp")],
    }
    per_step = {}
    for (name, command), out in zip(sides.items(), ("one", "ddp", "fsdp"), strict=True):
        quiet(command)
        summary = json.loads((tmp / out / "train_summary.json").read_text())
        per_step[name] = summary["seconds"] / summary["steps"]
    print(f"bin/train dft, {args.steps} steps x {args.batch_size} sequences, shipped model, CPU (2 cores)")
    print(f"{'':22}{'s/step':>9}{'vs 1 process':>14}")
    for name, seconds in per_step.items():
        print(f"{name:22}{seconds:>9.3f}{seconds / per_step['1 process']:>13.2f}x")


def ray(tmp: Path, args) -> None:
    from rollout.dataset import read_rows

    collect = [sys.executable, "bin/collect", "--prompts", str(args.prompts), "--n", "4", "--seed", "0",
               "--shard-size", "16"]
    one = quiet([*collect, "--out", str(tmp / "one")])
    two = quiet([*collect, "--out", str(tmp / "ray"), "--ray-address", "local", "--data-parallel-size", "2"])
    key = lambda r: (r["prompt_id"], r["sample_idx"], tuple(r["response_token_ids"]))  # noqa: E731
    same = sorted(map(key, read_rows(tmp / "one"))) == sorted(map(key, read_rows(tmp / "ray")))
    rows = args.prompts * 4
    print(f"bin/collect, {args.prompts} prompts x 4 samples, whole command (start-up, engines, merge)")
    print(f"{'':28}{'s':>8}{'rows/s':>9}{'ratio':>8}")
    print(f"{'1 process':28}{one:>8.1f}{rows / one:>9.2f}{1.0:>8.2f}")
    print(f"{'Ray, 2 workers (local)':28}{two:>8.1f}{rows / two:>9.2f}{one / two:>8.2f}")
    print(f"same rows: {same}")


def server(tmp: Path, args) -> None:
    from offline_rl.embedded import world
    from offline_rl.embedded.base_model import DEFAULT_BASE_MODEL
    from rollout.engines import SamplingConfig, VLLMEngine, prompt_seed
    from rollout.models import load_tokenizer
    from rollout.server import OpenAIEngine

    tokenizer = load_tokenizer(str(DEFAULT_BASE_MODEL))
    problems = world.load_split("train")[: args.prompts]
    prompts = [tokenizer(p.prompt)["input_ids"] for p in problems]
    seeds = [prompt_seed(0, p.id) for p in problems]
    sampling = SamplingConfig(n=4, temperature=1.0, top_p=1.0, max_tokens=160)
    port = free_port()
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": f"0-{os.cpu_count() - 1}", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
           "VLLM_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model",
                             str(DEFAULT_BASE_MODEL), "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
                             "--enforce-eager", "--no-enable-chunked-prefill", "--logprobs-mode", "processed_logprobs",
                             "--kv-cache-memory-bytes", str(1 << 30), "--max-num-seqs", "1024"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        client = OpenAIEngine(str(DEFAULT_BASE_MODEL), f"http://127.0.0.1:{port}", concurrency=args.concurrency)
        start = time.time()
        served = client.generate(prompts, sampling, seeds=seeds, use_tqdm=False)
        served_s = time.time() - start
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
    engine = VLLMEngine(str(DEFAULT_BASE_MODEL), dtype="float32")
    start = time.time()
    offline = engine.generate(prompts, sampling, seeds=seeds, use_tqdm=False)
    offline_s = time.time() - start
    engine.close()
    tokens = lambda out: sum(len(s.token_ids) for samples in out for s in samples)  # noqa: E731
    same = [[s.token_ids for s in x] for x in served] == [[s.token_ids for s in x] for x in offline]
    print(f"{args.prompts} prompts x 4 samples, up to 160 tokens, the sampling call alone")
    print(f"{'':34}{'s':>7}{'tokens/s':>10}{'ratio':>8}")
    print(f"{'offline engine (in process)':34}{offline_s:>7.1f}{tokens(offline) / offline_s:>10.0f}{1.0:>8.2f}")
    print(f"{f'vllm serve, client x{args.concurrency}':34}{served_s:>7.1f}{tokens(served) / served_s:>10.0f}"
          f"{offline_s / served_s * tokens(served) / tokens(offline):>8.2f}")
    print(f"same tokens: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--what", default="fsdp,ray,server")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    for what in args.what.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            {"fsdp": fsdp, "ray": ray, "server": server}[what](Path(tmp), args)
        print()


if __name__ == "__main__":
    main()
