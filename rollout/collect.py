"""``bin/collect``: sample ``n`` responses per prompt, verify them, store an offline dataset.

Reproducible and resumable: each prompt is sampled with its own seed derived from
the run seed and its id, so responses do not depend on batching, sharding or
resumption; shards are written atomically and the manifest after each one, so a
killed run resumes (run the same command again) without losing or duplicating a row.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

import rewards
from rewards.files import TextError, hold_directory, is_disk_full
from rollout.cli import UsageError, parse_config, pause_point, print_config, save_config
from rollout.dataset import DatasetWriter, merge, read_manifest, read_rows
from rollout.engines import EngineFlags, SamplingConfig, context_length, prompt_seed
from rollout.sources import SourceError, load_source
from rollout.templates import TEMPLATES, Template, TemplateError, default_template


@dataclass
class CollectConfig(EngineFlags):
    out: str = field(default=None, metadata={"help": "output directory of the offline dataset (required); an existing one is resumed"})
    model: str = field(default=None, metadata={"help": "checkpoint directory or hub name (default: the embedded base model)"})
    source: str = field(default="world:train", metadata={"help": "world:SPLIT, a JSONL/JSON/Parquet/CSV file, a save_to_disk directory, or a hub dataset name"})
    format: str = field(default="auto", metadata={"help": "field layout: auto, plain, gsm8k, math500, math, minerva, olympiad, aime24, amc23"})
    question_field: str = field(default=None, metadata={"help": "field holding the question (overrides the format)"})
    answer_field: str = field(default=None, metadata={"help": "field holding the gold answer (overrides the format)"})
    hub_split: str = field(default="test", metadata={"help": "split of a hub or save_to_disk dataset"})
    strict: bool = field(default=False, metadata={"help": "reject a source with rows lacking a gold answer instead of skipping them"})
    template: str = field(default=None, metadata={"help": f"prompt template: {', '.join(TEMPLATES)}, or a file holding {{question}} (default: world for the world, else qwen-boxed, the Qwen2.5-Math harness prompt)"})
    n: int = field(default=4, metadata={"help": "responses sampled per prompt", "min": 1})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature", "min": 0})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling threshold", "above": 0, "max": 1})
    max_tokens: int = field(default=160, metadata={"help": "most tokens per response", "min": 1})
    stop: str = field(default=None, metadata={"help": "comma-separated stop strings (default: the template's; qwen-boxed stops at </s>, <|im_end|>, <|endoftext|>)"})
    skip: int = field(default=0, metadata={"help": "skip the first N prompts", "min": 0})
    limit: int = field(default=None, metadata={"help": "then use at most N prompts", "min": 1})
    shard: str = field(default="0/1", metadata={"help": "I/N: take every N-th prompt starting at I (for several processes or machines)"})
    seed: int = field(default=0, metadata={"help": "run seed; each prompt's seed derives from it and the prompt id"})
    data_parallel_size: int = field(default=1, metadata={"help": "vLLM data parallelism: this many engines, each on its own GPUs and --shard, merged into --out", "min": 1})
    shard_size: int = field(default=256, metadata={"help": "prompts per parquet shard (the unit of resumption)", "min": 1})
    force: bool = field(default=False, metadata={"help": "append to an output directory made with different parameters, or write into one bin/collect did not make"})
    extraction: str = field(default=rewards.DEFAULT_EXTRACTION, metadata={"help": "answer extraction: boxed (last box, else 'the answer is'), qwen (the Qwen2.5-Math harness: then the last number), math-verify (its own extraction over the whole response)", "choices": list(rewards.EXTRACTIONS)})
    scoring_deadline: float = field(default=rewards.DEFAULT_DEADLINE_SECONDS, metadata={"help": "seconds one response may take to score before its worker is killed and it scores 0 (counted)", "above": 0})


def parse_shard(spec: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", spec or "")
    if not m or int(m[2]) < 1 or int(m[1]) >= int(m[2]):
        raise UsageError(f"--shard must be I/N with 0 <= I < N (got {spec!r})")
    return int(m[1]), int(m[2])


def resolve_model(model: str) -> str:
    """A local checkpoint directory, or a hub name found in the local cache or on a reachable hub."""
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UsageError(f"{path} is not a model checkpoint (no config.json)")
        return str(path)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", model) and not model.startswith("."):
        return _hub_model(model)
    raise UsageError(f"model not found: {model}")


def _hub_model(name: str) -> str:
    """A hub name, once it is known to be loadable: cached locally, or the hub answers (checked once,
    in seconds, rather than after the hub client's retries: 23 s measured with no network)."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, snapshot_download

    try:
        snapshot_download(name, local_files_only=True)
        return name
    except Exception:  # not cached (or cached only in part): the hub must have it
        pass
    not_local = f"model {name} is neither a local directory nor in the Hugging Face cache"
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise UsageError(f"{not_local}, and HF_HUB_OFFLINE is set")
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as e:
        raise UsageError(f"{not_local}, and the hub ({host}) cannot be reached: {e.strerror or e}") from None
    return name


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def toolkit_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("offline-rl")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None, world: Callable[[str], list] | None = None, default_model: str | None = None,
         engine=None) -> dict:
    """``engine``: a live engine already holding the model's weights (rounds), used and left open."""
    cfg = parse_config(CollectConfig, argv, "collect", __doc__)
    if cfg.out is None:
        raise UsageError("--out is required")
    shard_index, shard_count = parse_shard(cfg.shard)
    model = resolve_model(cfg.model or default_model)
    if cfg.data_parallel_size > 1:
        return data_parallel(cfg, sys.argv[1:] if argv is None else list(argv))
    try:
        loaded = load_source(cfg.source, cfg.format, cfg.question_field, cfg.answer_field, cfg.hub_split, world)
    except (SourceError, FileNotFoundError, TextError) as e:
        raise UsageError(str(e)) from None
    if loaded.skipped_without_gold and cfg.strict:
        raise UsageError(f"{cfg.source}: {loaded.skipped_without_gold} rows have no gold answer (--strict)")
    records = loaded.records[cfg.skip :]
    records = records[: cfg.limit] if cfg.limit is not None else records
    records = records[shard_index::shard_count]
    if not records:
        raise UsageError(f"no prompts to collect from {cfg.source} (after --skip/--limit/--shard)")
    tokenizer = load_tokenizer(model)
    try:
        template = Template(cfg.template or default_template(loaded.description["kind"], tokenizer), tokenizer)
    except (TemplateError, TextError) as e:
        raise UsageError(str(e)) from None

    out = Path(cfg.out)
    identity = {"model": model, "source": loaded.description, "template": cfg.template, "backend": cfg.backend,
                "sampling": {"n": cfg.n, "temperature": cfg.temperature, "top_p": cfg.top_p,
                             "max_tokens": cfg.max_tokens, "stop": cfg.stop},
                "seed": cfg.seed, "shard": cfg.shard, "dtype": cfg.dtype}
    hold_directory(out, "collect", force=cfg.force, owned=is_collect_directory)
    done_ids: set[str] = set()
    if (out / "manifest.json").exists():
        previous = read_manifest(out)
        differs = sorted(k for k, v in identity.items() if previous.get("identity", {}).get(k) != v)
        fixed = [k for k in ("model", "sampling") if k in differs and "identity" in previous]
        if fixed:  # ratio learners divide by these rows' log-probs: they must all be of one policy
            raise UsageError(f"{out} was sampled with different {' and '.join(fixed)}; even --force cannot append "
                             "rows of another behaviour policy; choose another --out")
        if differs and not cfg.force:
            raise UsageError(f"{out} was collected with different {', '.join(differs)}; "
                             "choose another --out, or --force to append anyway")
        done_ids = {r["prompt_id"] for r in read_rows(out, columns=["prompt_id"])}

    print_config(cfg)
    return collect(cfg, model, template, records, loaded, identity, out, done_ids, engine)


def is_collect_directory(out: Path) -> bool:
    """A dataset, or what a collection that died before its first write left (its configuration only)."""
    if (out / "manifest.json").exists():
        return True
    return all(p.name.startswith("collect_config") or (p.name == "data" and not any(p.iterdir()))
               for p in out.iterdir() if not p.name.startswith("."))


def data_parallel(cfg: CollectConfig, argv: list[str]) -> dict:
    """vLLM's offline data parallelism: one engine process per rank, each on its own GPUs and its
    own --shard of the prompts (into OUT/dp-I), then one merged dataset in OUT."""
    import os

    if cfg.shard != "0/1":
        raise UsageError("--data-parallel-size already shards the prompts; drop --shard")
    size, tp = cfg.data_parallel_size, cfg.tensor_parallel_size
    out = Path(cfg.out)
    hold_directory(out, "collect", force=cfg.force, owned=is_collect_directory)
    procs = []
    for rank in range(size):
        env = dict(os.environ)
        # ranks sharing a CPU: split its cores rather than oversubscribe them (spin-waiting threads)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // size)))
        if "CUDA_VISIBLE_DEVICES" not in os.environ:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(rank * tp + g) for g in range(tp))
        # a repeated flag's last value wins: each rank is this command, re-pointed
        command = [sys.executable, sys.argv[0], *argv, "--out", str(out / f"dp-{rank}"), "--shard", f"{rank}/{size}",
                   "--data-parallel-size", "1"]
        procs.append(subprocess.Popen(command, env=env))
    failed = [rank for rank, p in enumerate(procs) if p.wait() != 0]
    if failed:
        raise RuntimeError(f"data-parallel ranks {failed} failed; rerun the same command to resume them")
    manifest = merge(out, [out / f"dp-{rank}" for rank in range(size)])
    print(f"merged {size} data-parallel ranks: {manifest['counts']['responses']} responses -> {out}")
    return manifest


def start_engine(cfg: EngineFlags, model: str):
    """The engine, or one line saying why it would not start (a bad --dtype, no room for the KV cache, ...)."""
    try:
        return cfg.engine(model, cfg.seed)
    except Exception as e:  # vLLM and torch raise many types; the first line names the cause
        if is_disk_full(e):
            raise
        raise UsageError(f"the {cfg.backend} engine did not start for {model}: "
                         f"{(str(e).strip().splitlines() or [type(e).__name__])[0]}") from None


class LiveEngine:
    """One engine for many checkpoints of one architecture: each ``hold(model)`` loads that model's weights in
    place (vLLM's own weight reload) unless it already holds them, and starts the engine the first time
    (``restart``: a new engine for every new model instead). Every hold empties the prefix cache, so that a
    stage samples exactly as it would in a fresh engine (per-request seeds make the rest independent of what
    ran before). The owner closes it."""

    def __init__(self, flags: EngineFlags, restart: bool = False):
        self.flags, self.restart = flags, restart
        self.engine, self.model = None, None
        self.last = None  # what the last hold did: started, loaded in place, held
        self.starts = self.loads = 0  # engines started, checkpoints loaded in place

    def hold(self, model: str) -> float | None:
        """Make the engine hold ``model``'s weights; the milliseconds that took (None: it already held them)."""
        if self.model == model:
            self.engine.reset_cache()
            self.last = "held"
            return None
        start = time.perf_counter()
        self.model = None  # until the new weights are in: a failed load leaves no weights to trust
        if self.engine is not None and not self.restart:
            self.engine.load_weights(model)
            self.last = "loaded in place"
            self.loads += 1
        else:
            self.close()
            self.engine = start_engine(self.flags, model)
            self.last = "started"
            self.starts += 1
        self.model = model
        return 1000 * (time.perf_counter() - start)

    def make_room(self) -> None:
        """Before training beside it in this process: an engine that holds accelerator memory is closed (the next
        hold starts a new one); on CPU it stays, its KV cache bounded."""
        if self.engine is not None and self.engine.holds_device_memory:
            self.close()

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        self.engine, self.model = None, None


def load_tokenizer(model: str):
    """The model's tokenizer, checking on the way that the checkpoint loads at all."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        AutoConfig.from_pretrained(model)
        return AutoTokenizer.from_pretrained(model)
    except Exception as e:  # transformers raises OSError, ValueError, JSONDecodeError, KeyError...
        raise UsageError(f"cannot load model {model}: {(str(e).splitlines() or [type(e).__name__])[0]}") from None


def collect(cfg: CollectConfig, model: str, template: Template, records: list[dict], loaded, identity: dict,
            out: Path, done_ids: set[str], engine=None) -> dict:
    start = time.time()
    sampling = SamplingConfig(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                              stop=[s for s in cfg.stop.split(",") if s] if cfg.stop else (template.stop or None))
    writer = DatasetWriter(out, {
        "toolkit_version": toolkit_version(), "git_commit": git_commit(), "model": model,
        "source": loaded.description, "template": template.name, "sampling": asdict(sampling), "seed": cfg.seed,
        "backend": cfg.backend, "shard": cfg.shard, "verifier_version": rewards.VERIFIER_VERSION,
        "skipped_without_gold": loaded.skipped_without_gold, "identity": identity, "complete": False,
        "scoring_deadline_seconds": cfg.scoring_deadline, "extraction": cfg.extraction,
    })  # the first write: from here on every crash point is resumable
    save_config(cfg, out / ("collect_config.json" if not done_ids else f"collect_config.resume-{int(time.time())}.json"))
    pause_point("collect:started")
    own_engine = engine is None
    engine = engine or start_engine(cfg, model)
    # each prompt rendered and tokenised once: (record, prompt text, prompt token ids)
    todo = [(r, prompt, template.token_ids(prompt)) for r in records if r["prompt_id"] not in done_ids
            for prompt in [template.render(r["question"])]]
    # a prompt the model cannot hold would fail its whole shard, on every resume: skipped and counted, as in eval
    max_len = context_length(model, cfg.max_model_len)
    fits = [item for item in todo if max_len is None or len(item[2]) < max_len]
    too_long = len(todo) - len(fits)
    todo = fits
    writer.manifest["prompts_too_long"] = too_long
    accepted = responses = tokens = 0
    bar = tqdm(total=len(records) - too_long, initial=len(records) - too_long - len(todo), desc="collect",
               unit="prompt")
    for begin in range(0, len(todo), cfg.shard_size):
        chunk, prompts, prompt_ids = (list(column) for column in zip(*todo[begin : begin + cfg.shard_size], strict=True))
        # one scoring path: the worker pool with its hard per-item deadline, as in eval and rescore; each prompt's
        # samples are scored as they finish, while the rest of the shard samples
        scorer = rewards.StreamScorer(deadline=cfg.scoring_deadline, extraction=cfg.extraction)
        outputs = engine.generate(prompt_ids, sampling, seeds=[prompt_seed(cfg.seed, r["prompt_id"]) for r in chunk],
                                  use_tqdm=False, on_result=lambda i, samples, chunk=chunk, scorer=scorer: scorer.add(
                                      [((i, j), s.text, chunk[i]["gold"]) for j, s in enumerate(samples)]))
        scored, timed_out, _ = scorer.finish()
        rows = []
        for i, (record, prompt, ids, samples) in enumerate(zip(chunk, prompts, prompt_ids, outputs, strict=True)):
            for idx, s in enumerate(samples):
                pred, reward = scored[i, idx]
                rows.append({**record, "prompt": prompt, "prompt_token_ids": ids, "response_token_ids": s.token_ids,
                             "response": s.text, "behavior_logprobs": s.logprobs, "sample_idx": idx,
                             "finish_reason": s.finish_reason, "pred": pred, "reward": reward, "origin": "sample"})
                accepted += reward == 1.0
                responses += 1
                tokens += len(s.token_ids)
        writer.write_shard(rows, scoring_timeouts=len(timed_out))
        pause_point(f"collect:shard-{len(writer.manifest['shards'])}")
        bar.update(len(chunk))
        elapsed = time.time() - start
        bar.set_postfix(pass_rate=f"{accepted / responses:.3f}", tok_s=f"{tokens / elapsed:.0f}")
    bar.close()
    if own_engine:
        engine.close()
    summary = summarize(read_rows(out, columns=["prompt_id", "reward", "response_token_ids", "finish_reason"]), cfg.n)
    manifest = writer.finish(summary=summary, wall_seconds=round(writer.manifest.get("wall_seconds", 0)
                                                                   + time.time() - start, 2))
    print(format_summary(manifest, out))
    return manifest


def summarize(rows: list[dict], n: int) -> dict:
    """Pass rate, correct-per-prompt histogram (0/n .. n/n), mean length, truncation rate."""
    per_prompt: dict[str, int] = Counter()
    for r in rows:
        per_prompt[r["prompt_id"]] += r["reward"] == 1.0
    histogram = Counter(per_prompt.values())
    return {
        "pass_rate": sum(r["reward"] == 1.0 for r in rows) / max(1, len(rows)),
        "correct_per_prompt": {f"{k}/{n}": histogram.get(k, 0) for k in range(n + 1)},
        "mean_response_tokens": sum(len(r["response_token_ids"]) for r in rows) / max(1, len(rows)),
        "truncation_rate": sum(r["finish_reason"] == "length" for r in rows) / max(1, len(rows)),
    }


def format_summary(manifest: dict, out: Path) -> str:
    s, counts = manifest["summary"], manifest["counts"]
    histogram = "  ".join(f"{k}: {v}" for k, v in s["correct_per_prompt"].items())
    return (f"collected {counts['responses']} responses to {counts['prompts']} prompts -> {out}\n"
            f"  pass rate {s['pass_rate']:.3f} ({counts['accepted']} accepted)\n"
            f"  correct per prompt  {histogram}\n"
            f"  mean response length {s['mean_response_tokens']:.1f} tokens, truncated {100 * s['truncation_rate']:.1f} %\n"
            f"  scoring time-outs {counts.get('scoring_timeouts', 0)} (scored 0 after {manifest.get('scoring_deadline_seconds', '?')} s)"
            f"; prompts longer than the model's context, skipped: {manifest.get('prompts_too_long', 0)}")
