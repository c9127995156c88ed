"""``bin/collect``: sample ``n`` responses per prompt, verify them, store an offline dataset.

Reproducible and resumable: each prompt is sampled with its own seed derived from
the run seed and its id, so responses do not depend on batching, sharding or
resumption; shards are written atomically and the manifest after each one, so a
killed run resumes (run the same command again) without losing or duplicating a row.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

import rewards
from rollout.dataset import DatasetWriter, merge, read_manifest, read_rows
from rollout.engines import ENGINES, EngineFlags, SamplingFlags, context_length, prompt_seed, start_engine
from rollout.files import TextError, hold_directory
from rollout.models import git_commit, load_tokenizer, resolve_model, toolkit_version
from rollout.runtime import (
    CONFIG_NAME,
    CommandContext,
    UsageError,
    parse_config,
    pause_point,
    print_config,
    save_config,
)
from rollout.sources import SourceError, load_source
from rollout.templates import TEMPLATES, Template, TemplateError, default_template


@dataclass
class CollectConfig(SamplingFlags, EngineFlags):
    out: str = field(default=None, metadata={
        "help": "output directory of the offline dataset (required); an existing one is resumed"})
    model: str = field(default=None, metadata={
        "help": "checkpoint directory or hub name (default: the embedded base model)"})
    source: str = field(default="world:train", metadata={
        "help": "world:SPLIT, a JSONL/JSON/Parquet/CSV file, a save_to_disk directory, or a hub dataset name"})
    format: str = field(default="auto", metadata={
        "help": "field layout: auto, plain, gsm8k, math500, math, minerva, olympiad, aime24, amc23"})
    question_field: str = field(default=None, metadata={
        "help": "field holding the question (overrides the format)", "advanced": True})
    answer_field: str = field(default=None, metadata={
        "help": "field holding the gold answer (overrides the format)", "advanced": True})
    hub_split: str = field(default="test", metadata={
        "help": "split of a hub or save_to_disk dataset", "advanced": True})
    strict: bool = field(default=False, metadata={
        "help": "reject a source with rows lacking a gold answer instead of skipping them", "advanced": True})
    template: str = field(default=None, metadata={
        "help": f"prompt template: {', '.join(TEMPLATES)}, or a file holding {{question}} (default: world for the "
                "world, else qwen-boxed, the Qwen2.5-Math harness prompt)"})
    n: int = field(default=4, metadata={"help": "responses sampled per prompt", "min": 1})
    skip: int = field(default=0, metadata={"help": "skip the first N prompts", "min": 0, "advanced": True})
    prompts: int = field(default=None, metadata={"help": "then use at most N prompts", "min": 1})
    shard: str = field(default="0/1", metadata={
        "help": "I/N: take every N-th prompt starting at I (for several processes or machines)", "advanced": True})
    seed: int = field(default=0, metadata={"help": "run seed; each prompt's seed derives from it and the prompt id"})
    data_parallel_size: int = field(default=1, metadata={
        "help": "data parallelism: this many engines, each on its own GPUs and --shard (OUT/dp-I), merged into --out; "
                "processes on this machine, or Ray tasks with --ray-address", "min": 1, "advanced": True})
    ray_address: str = field(default=None, metadata={
        "help": "run the --data-parallel-size engines as Ray tasks: local (a cluster of this machine, stopped at the "
                "end), auto (the running cluster), or HOST:PORT; OUT must be storage every node shares (pip install "
                "'offline-rl[ray]')", "advanced": True})
    shard_size: int = field(default=256, metadata={
        "help": "prompts per parquet shard (the unit of resumption)", "min": 1, "advanced": True})
    force: bool = field(default=False, metadata={
        "help": "append to an output directory made with different parameters, or write into one bin/collect did "
                "not make"})
    extraction: str = field(default=rewards.DEFAULT_EXTRACTION, metadata={
        "help": "answer extraction: boxed (last box, else 'the answer is'), qwen (the Qwen2.5-Math harness: then the "
                "last number), math-verify (its own extraction over the whole response)",
        "choices": list(rewards.EXTRACTIONS)})
    scoring_deadline: float = field(default=rewards.DEFAULT_DEADLINE_SECONDS, metadata={
        "help": "seconds one response may take to score before its worker is killed and it scores 0 (counted)",
        "above": 0, "advanced": True})


def parse_shard(spec: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", spec or "")
    if not m or int(m[2]) < 1 or int(m[1]) >= int(m[2]):
        raise UsageError(f"--shard must be I/N with 0 <= I < N (got {spec!r})")
    return int(m[1]), int(m[2])


def run_collect(cfg: CollectConfig, *, context: CommandContext | None = None) -> dict:
    """``bin/collect``. From the ``context``: the loader of ``world:SPLIT`` sources, the model when none is named, and
    an engine already holding the model's weights (rounds, comparisons), used and left open."""
    context = context or CommandContext()
    if cfg.out is None:
        raise UsageError("--out is required")
    shard_index, shard_count = parse_shard(cfg.shard)
    cfg.check_engine()
    model = resolve_model(cfg.model or context.default_model)
    if cfg.data_parallel_size > 1 or cfg.ray_address:
        return data_parallel(cfg, context)
    try:
        loaded = load_source(cfg.source, cfg.format, cfg.question_field, cfg.answer_field, cfg.hub_split, context.world)
    except (SourceError, FileNotFoundError, TextError) as e:
        raise UsageError(str(e)) from None
    if loaded.skipped_without_gold and cfg.strict:
        raise UsageError(f"{cfg.source}: {loaded.skipped_without_gold} rows have no gold answer (--strict)")
    records = loaded.records[cfg.skip :]
    records = records[: cfg.prompts] if cfg.prompts is not None else records
    records = records[shard_index::shard_count]
    if not records:
        raise UsageError(f"no prompts to collect from {cfg.source} (after --skip/--prompts/--shard)")
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
    engine = context.engine
    own_engine = engine is None
    if own_engine and ENGINES[cfg.backend].start_before_writing:  # a server asked (it answers, serves the model,
        engine = start_engine(cfg, model)  # answers completions as vLLM does) before anything is written
    hold_directory(out, "collect", force=cfg.force, owned=is_collect_directory)
    done_ids = resumed_prompts(out, identity, cfg.force)
    print_config(cfg, out=out)
    return collect(cfg, model, template, records, loaded, identity, out, done_ids, engine, own_engine)


def main(argv: list[str] | None = None, *, context: CommandContext | None = None) -> dict:
    return run_collect(parse_config(CollectConfig, argv, "collect", __doc__), context=context)


def resumed_prompts(out: Path, identity: dict, force: bool) -> set[str]:
    """The prompts an earlier run into ``out`` finished, once its settings are known to match this run's."""
    if not (out / "manifest.json").exists():
        return set()
    previous = read_manifest(out)
    differs = sorted(k for k, v in identity.items() if previous.get("identity", {}).get(k) != v)
    fixed = [k for k in ("model", "sampling") if k in differs and "identity" in previous]
    if fixed:  # ratio learners divide by these rows' log-probs: they must all be of one policy
        raise UsageError(f"{out} was sampled with different {' and '.join(fixed)}; even --force cannot append "
                         "rows of another behaviour policy; choose another --out")
    if differs and not force:
        raise UsageError(f"{out} was collected with different {', '.join(differs)}; "
                         "choose another --out, or --force to append anyway")
    return {r["prompt_id"] for r in read_rows(out, columns=["prompt_id"])}


def is_collect_directory(out: Path) -> bool:
    """A dataset, or what a collection that died before its first write left (its configuration only)."""
    if (out / "manifest.json").exists():
        return True
    return all(p.name.startswith("collect_config") or p.name == CONFIG_NAME
               or (p.name == "data" and not any(p.iterdir())) for p in out.iterdir() if not p.name.startswith("."))


def data_parallel(cfg: CollectConfig, context: CommandContext) -> dict:
    """Data parallelism: one engine per rank, each on its own GPUs and its own --shard of the prompts (into
    OUT/dp-I, each resumable as a collection of its own), then one merged dataset in OUT. The ranks are processes
    on this machine, or Ray tasks anywhere on a cluster (``--ray-address``)."""
    if cfg.shard != "0/1":
        raise UsageError("--data-parallel-size already shards the prompts; drop --shard")
    size = cfg.data_parallel_size
    out = Path(cfg.out)
    if cfg.ray_address:
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise UsageError("--ray-address: ray is not installed; pip install 'offline-rl[ray]'")
        from rollout.ray_collect import check_address

        check_address(cfg.ray_address)  # reached within seconds, before anything is written
    hold_directory(out, "collect", force=cfg.force, owned=is_collect_directory)
    print_config(cfg, out=out)
    ranks = [replace(cfg, out=str(out / f"dp-{rank}"), shard=f"{rank}/{size}", data_parallel_size=1, ray_address=None)
             for rank in range(size)]
    context = CommandContext(world=context.world, default_model=context.default_model)  # each rank starts its engine
    if cfg.ray_address:
        from rollout.ray_collect import run_ranks

        run_ranks(cfg.ray_address, run_collect, ranks, context)
    else:
        local_ranks(ranks, context)
    manifest = merge(out, [Path(rank.out) for rank in ranks])
    print(f"merged {size} data-parallel ranks: {manifest['counts']['responses']} responses -> {out}")
    return manifest


def local_ranks(ranks: list[CollectConfig], context: CommandContext) -> None:
    """Each rank's collection in a process of its own on this machine (vLLM's offline data parallelism)."""
    import multiprocessing
    import os

    spawn, procs, saved = multiprocessing.get_context("spawn"), [], dict(os.environ)
    tp = ranks[0].tensor_parallel_size
    try:
        for rank, rank_cfg in enumerate(ranks):
            # ranks sharing a CPU: split its cores rather than oversubscribe them (spin-waiting threads)
            os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // len(ranks))))
            if "CUDA_VISIBLE_DEVICES" not in saved:
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(rank * tp + g) for g in range(tp))
            procs.append(spawn.Process(target=_rank, args=(rank_cfg, context)))
            procs[-1].start()  # the child takes the environment as it is now
    finally:
        os.environ.clear()
        os.environ.update(saved)
    for p in procs:
        p.join()
    failed = [rank for rank, p in enumerate(procs) if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"data-parallel ranks {failed} failed; rerun the same command to resume them")


def _rank(cfg: CollectConfig, context: CommandContext) -> None:
    from rollout.runtime import run

    run(lambda _: run_collect(cfg, context=context), f"collect rank {cfg.shard}")


def collect(cfg: CollectConfig, model: str, template: Template, records: list[dict], loaded, identity: dict,
            out: Path, done_ids: set[str], engine=None, own_engine: bool = True) -> dict:
    """``engine``: one already holding the model's weights (closed at the end if ``own_engine``); None: one of
    its own, started here."""
    start = time.time()
    sampling = cfg.sampling(cfg.n, template.stop)
    kind = ENGINES[cfg.backend]
    writer = DatasetWriter(out, {
        "toolkit_version": toolkit_version(), "git_commit": git_commit(), "model": model,
        "source": loaded.description, "template": template.name, "sampling": kind.applied(sampling), "seed": cfg.seed,
        "backend": cfg.backend, "shard": cfg.shard, "verifier_version": rewards.VERIFIER_VERSION,
        "skipped_without_gold": loaded.skipped_without_gold, "identity": identity, "complete": False,
        "scoring_deadline_seconds": cfg.scoring_deadline, "extraction": cfg.extraction,
        "logprobs_mode": cfg.logprobs_mode(), **({"endpoint": cfg.endpoint} if kind.serves_own_model else {}),
    })  # the first write: from here on every crash point is resumable
    save_config(cfg, out / ("collect_config.json" if not done_ids
                            else f"collect_config.resume-{int(time.time())}.json"))
    pause_point("collect:started")
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
        chunk, prompts, prompt_ids = (list(column)
                                      for column in zip(*todo[begin : begin + cfg.shard_size], strict=True))
        # one scoring path: the worker pool with its hard per-item deadline, as in eval and rescore; each prompt's
        # samples are scored as they finish, while the rest of the shard samples
        scorer = rewards.StreamScorer(deadline=cfg.scoring_deadline, extraction=cfg.extraction)
        outputs = engine.generate(prompt_ids, sampling, seeds=[prompt_seed(cfg.seed, r["prompt_id"]) for r in chunk],
                                  use_tqdm=False, on_result=lambda i, samples, chunk=chunk, scorer=scorer: scorer.add(
                                      [((i, j), s.text, chunk[i]["gold"]) for j, s in enumerate(samples)]))
        scored, timed_out, _ = scorer.finish()
        pause_point(f"collect:{cfg.shard}:sampled-{len(writer.manifest['shards']) + 1}")  # mid-shard: nothing written
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
            f"  mean response length {s['mean_response_tokens']:.1f} tokens, "
            f"truncated {100 * s['truncation_rate']:.1f} %\n"
            f"  scoring time-outs {counts.get('scoring_timeouts', 0)} "
            f"(scored 0 after {manifest.get('scoring_deadline_seconds', '?')} s)"
            f"; prompts longer than the model's context, skipped: {manifest.get('prompts_too_long', 0)}")
