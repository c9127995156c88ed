"""``bin/eval``: sample k answers per problem and report avg@k, pass@k and maj@k per benchmark.

A benchmark is one of the embedded world's splits (``test-id``), one of the six
real benchmarks by short name (``gsm8k``, ``math500``, ``minerva``, ``olympiad``,
``aime24``, ``amc23``; their files in ``--benchmark-dir``), a local JSONL/JSON/Parquet/CSV
file, or a hub dataset name. Prompts use collect's templates; answers are scored
by :func:`rewards.score_batch`. Writes a table to stdout and, with ``--out``,
``results.json`` and every generation in ``generations.parquet``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import rewards
from offline_rl import embedded
from offline_rl.embedded import world
from rewards.normalize import normalize_answer
from rollout.dataset import atomic_write_bytes, write_json
from rollout.engines import ENGINES, EngineFlags, SamplingFlags, context_length, prompt_seed, start_engine
from rollout.files import Finished, TextError, hold_directory
from rollout.model_cards import forget_evaluation, is_our_checkpoint, record_evaluation
from rollout.models import load_tokenizer, resolve_model
from rollout.runtime import CommandContext, UsageError, parse_config, print_config, save_config
from rollout.sources import SourceError, load_source
from rollout.templates import TEMPLATES, Template, TemplateError, default_template

# the shared benchmarks' files as published (../shared/data/benchmarks/), by short name
SHARED_BENCHMARKS = {"gsm8k": "gsm8k_test", "math500": "math500_test", "minerva": "minerva_math_test",
                     "olympiad": "olympiadbench_test", "aime24": "aime24_test", "amc23": "amc23_test"}


@dataclass
class EvalConfig(SamplingFlags, EngineFlags):
    model: str = field(default=None, metadata={
        "help": "checkpoint directory or hub name (default: the embedded base model)"})
    benchmarks: str = field(default=",".join(world.TEST_SPLITS), metadata={
        "help": "comma-separated (default: every world test split): world splits, "
                "gsm8k/math500/minerva/olympiad/aime24/amc23 (with --benchmark-dir), JSONL/Parquet files or hub names"})
    benchmark_dir: str = field(default=None, metadata={
        "help": "folder holding the short-named benchmarks' files (e.g. ../shared/data/benchmarks)"})
    hub_split: str = field(default="test", metadata={
        "help": "split of a hub or save_to_disk benchmark", "advanced": True})
    template: str = field(default=None, metadata={
        "help": f"prompt template: {', '.join(TEMPLATES)}, or a file holding {{question}} (default: world for world "
                "splits, else qwen-boxed, the Qwen2.5-Math harness prompt)"})
    k: int = field(default=4, metadata={"help": "samples per problem", "min": 1})
    problems: int = field(default=None, metadata={
        "help": "evaluate only the first N problems of each benchmark", "min": 1})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    out: str = field(default=None, metadata={
        "help": "directory for results.json and generations.parquet (default: print only)"})
    name: str = field(default=None, metadata={
        "help": "label of this model in tables (default: the model path's last part)"})
    force: bool = field(default=False, metadata={"help": "write into an --out that bin/eval did not make, or replace "
                                                 "another model's or setting's finished evaluation"})
    heldout_text: str = field(default=None, metadata={
        "help": "also measure the model's mean NLL per token on held-out text (what it forgot): world:pretrain (text "
                "of the kind the embedded base model was trained on), a .jsonl file with a text field or a text file "
                "of blank-line-separated documents; none: not measured"})
    extraction: str = field(default=rewards.DEFAULT_EXTRACTION, metadata={
        "help": "answer extraction: boxed (last box, else 'the answer is'), qwen (the Qwen2.5-Math harness: then the "
                "last number), math-verify (its own extraction over the whole response)",
        "choices": list(rewards.EXTRACTIONS)})


# ---------------------------------------------------------------- metrics

def avg_at_k(correct: list[list[float]]) -> float:
    """Mean accuracy over all k samples of all problems."""
    return sum(map(sum, correct)) / max(1, sum(map(len, correct)))


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator of pass@k from n samples of which c are correct (Chen et al. 2021):
    ``1 - C(n-c, k) / C(n, k)``, as a product so that large n neither overflows nor loses precision."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def pass_ks(k: int) -> list[int]:
    """The k's reported for pass@k: powers of two up to k, and k itself."""
    return sorted({2**i for i in range(k.bit_length()) if 2**i <= k} | {k})


def problem_ids_digest(prompt_ids: list[str]) -> str:
    """What names a benchmark's problems in order, short enough to store with every evaluation (the paired
    intervals of a comparison check that two evaluations answered the same problems)."""
    return hashlib.sha256("\n".join(prompt_ids).encode()).hexdigest()[:16]


def mean_token_entropy(samples: list[list[float]]) -> float | None:
    """The mean entropy per sampled token of the distribution the samples were drawn from, estimated from their own
    log-probs: at each position E[-log q(x_t) | prefix] is the entropy of q there, so the mean of -log q(x_t) over
    every sampled token estimates the mean per-position entropy along the model's own samples, with no extra pass."""
    tokens = sum(map(len, samples))
    return -sum(map(sum, samples)) / tokens if tokens else None


def _answer_key(pred: str) -> str:
    return re.sub(r"\s+", "", normalize_answer(pred))


def wrong_answer_pairs(preds: list[str], correct: list[float]) -> list[tuple[str, str]]:
    """The pairs of distinct wrong answers of one problem whose equivalence maj@k needs (earlier first)."""
    keys = list(dict.fromkeys(_answer_key(p) for p, ok in zip(preds, correct, strict=True)
                              if not ok and _answer_key(p)))
    return [(keys[i], keys[j]) for i in range(len(keys)) for j in range(i + 1, len(keys))]


def majority_correct(preds: list[str], correct: list[float], equal: dict[tuple[str, str], bool] | None = None) -> float:
    """maj@k: is the largest group of equivalent answers the right one?

    Answers are grouped by verifier equivalence: every correct answer joins one group (each equals
    the gold), and wrong answers join each other's group when the verifier finds them equal
    (``equal[(earlier, later)]``, from :func:`wrong_answer_pairs`; without it, equal normalised text).
    So ``["1/3" (right), "0.5", "\\frac{1}{2}"]`` is lost 1 to 2. Samples without an answer do not vote.
    Ties go to the group whose first sample came first: a function of the samples in order.
    """
    equal = equal or {}
    group_of: dict[str, str] = {}  # answer key -> its group's first key
    votes: Counter[str] = Counter()
    first: dict[str, int] = {}
    for i, (pred, ok) in enumerate(zip(preds, correct, strict=True)):
        key = "\0correct" if ok else _answer_key(pred)
        if not key:
            continue
        if key not in group_of:
            group_of[key] = next((g for g in dict.fromkeys(group_of.values()) if g != "\0correct"
                                  and equal.get((g, key), False)), key)
        group = group_of[key]
        votes[group] += 1
        first.setdefault(group, i)
    if not votes:
        return 0.0
    winner = min(votes, key=lambda key: (-votes[key], first[key]))
    return 1.0 if winner == "\0correct" else 0.0


def equal_wrong_answers(preds: list[list[str]], correct: list[list[float]]) -> dict[tuple[str, str], bool]:
    """Verifier equivalence of every pair of distinct wrong answers within each problem, scored in one
    parallel, deadline-bounded batch (the scoring path of collect and eval)."""
    from rewards.batch import equivalent_batch

    pairs = sorted({pair for p, c in zip(preds, correct, strict=True) for pair in wrong_answer_pairs(p, c)})
    if not pairs:
        return {}
    result = equivalent_batch([later for _, later in pairs], [earlier for earlier, _ in pairs])
    return {pair: reward == 1.0 for pair, reward in zip(pairs, result.rewards, strict=True)}


def benchmark_metrics(correct: list[list[float]], preds: list[list[str]], lengths: list[list[int]],
                      truncated: list[list[bool]], k: int) -> dict:
    n_samples = max(1, sum(map(len, correct)))
    metrics = {"problems": len(correct), f"avg@{k}": avg_at_k(correct)}
    for j in pass_ks(k):
        metrics[f"pass@{j}"] = sum(pass_at_k(len(c), int(sum(c)), j) for c in correct) / max(1, len(correct))
    equal = equal_wrong_answers(preds, correct)
    metrics[f"maj@{k}"] = (sum(majority_correct(p, c, equal) for p, c in zip(preds, correct, strict=True))
                           / max(1, len(correct)))
    metrics["mean_response_tokens"] = sum(map(sum, lengths)) / n_samples
    metrics["truncation_rate"] = sum(map(sum, truncated)) / n_samples
    return metrics


# ---------------------------------------------------------------- benchmarks

@dataclass
class Benchmark:
    name: str
    records: list[dict]  # {"prompt_id", "question", "gold"}
    kind: str  # world, file, disk, hub


def known_benchmarks() -> str:
    return (f"{', '.join(world.SPLITS)}, {', '.join(SHARED_BENCHMARKS)}, a JSONL/JSON/Parquet/CSV file, or a hub "
            "dataset name")


def shared_file(name: str, benchmark_dir: str | None) -> Path:
    if benchmark_dir is None:
        raise UsageError(f"benchmark {name} needs --benchmark-dir, the folder holding {SHARED_BENCHMARKS[name]}.jsonl")
    folder = Path(benchmark_dir).expanduser()
    if not folder.is_dir():
        raise UsageError(f"benchmark dir not found: {folder}")
    stem = SHARED_BENCHMARKS[name]
    found = [folder / f"{stem}{ext}" for ext in (".jsonl", ".parquet", ".json") if (folder / f"{stem}{ext}").is_file()]
    if not found:
        raise UsageError(f"{folder} holds no {stem}.jsonl for benchmark {name}")
    return found[0]


def load_benchmark(name: str, cfg: EvalConfig) -> Benchmark:
    if name in world.SPLITS:
        return Benchmark(name, load_source(f"world:{name}", world=world.load_split).records, "world")
    if name in SHARED_BENCHMARKS:
        spec, fmt = str(shared_file(name, cfg.benchmark_dir)), name
    elif Path(name).expanduser().exists() or re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        spec, fmt = name, "auto"
    else:
        raise UsageError(f"unknown benchmark {name!r}; known: {known_benchmarks()}")
    try:
        loaded = load_source(spec, fmt, hub_split=cfg.hub_split)
    except (SourceError, FileNotFoundError, TextError) as e:
        raise UsageError(str(e)) from None
    if not loaded.records:
        raise UsageError(f"benchmark {name} has no problems with a gold answer")
    label = name if name in SHARED_BENCHMARKS or loaded.description["kind"] == "hub" else Path(name).stem
    return Benchmark(label, loaded.records, loaded.description["kind"])


# ---------------------------------------------------------------- the command

def run_eval(cfg: EvalConfig, *, context: CommandContext | None = None) -> dict:
    """``bin/eval``. From the ``context`` (default: the embedded one): the model when none is named, and an engine
    already holding the model's weights (rounds, comparisons), used and left open."""
    context = context or embedded.context()
    names = [b.strip() for b in cfg.benchmarks.split(",") if b.strip()]
    cfg.check_engine()
    if not names:
        raise UsageError(f"no benchmark given; known: {known_benchmarks()}")
    benchmarks = [load_benchmark(name, cfg) for name in names]  # every one checked before any sampling
    for b in benchmarks:
        b.records = b.records[: cfg.problems]
    from offline_rl.heldout import load_heldout, measure_checkpoint  # torch, only here

    heldout = load_heldout(cfg.heldout_text)
    model = resolve_model(cfg.model or context.default_model)
    tokenizer = load_tokenizer(model)
    try:
        templates = {b.name: Template(cfg.template or default_template(b.kind, tokenizer), tokenizer)
                     for b in benchmarks}
    except (TemplateError, TextError) as e:
        raise UsageError(str(e)) from None
    engine = context.engine
    own_engine = engine is None
    if own_engine and ENGINES[cfg.backend].start_before_writing:  # a server asked before anything is written
        engine = start_engine(cfg, model)
    out = Path(cfg.out) if cfg.out else None
    identity = eval_identity(cfg, model)
    if out is not None:  # writable, ours, and not another model's or setting's evaluation: checked before sampling
        hold_directory(out, "eval", force=cfg.force, owned=lambda d: (d / "eval_config.json").is_file(),
                       finished=Finished("evaluation of {model}", "results.json", identity, saved_identity))
        replaced = previous_model(out)
        if replaced is not None and is_our_checkpoint(replaced):  # replaced (rerun, --force): its record goes too
            forget_evaluation(replaced, out)
        (out / "results.json").unlink(missing_ok=True)  # a rerun: the old results no longer mark it finished
        save_config(cfg, out / "eval_config.json")
    print_config(cfg, out=out)
    results, generations = evaluate(model, benchmarks, templates, cfg, engine, own_engine)
    print(format_table({results["name"]: results}, [b.name for b in benchmarks], cfg.k))
    if heldout is not None:  # a pass of its own over the held-out text, after the sampling
        results["heldout"] = measure_checkpoint(model, heldout, context_length(model, cfg.max_model_len))
        print(f"held-out NLL {results['heldout']['nll']:.4f} nats/token on {heldout.spec} "
              f"({results['heldout']['tokens']} tokens)")
    if out is not None:
        write_generations(out / "generations.parquet", generations)
        write_json(out / "results.json", results)  # last: its presence marks a finished evaluation
    if is_our_checkpoint(model):  # a record beside the weights; the model card is not rewritten
        record_evaluation(model, str(out) if out is not None else f"{results['name']} (seed {cfg.seed}, printed)",
                          results, out, identity)
    return results


def eval_identity(cfg: EvalConfig, model: str) -> dict:
    """What makes an evaluation what it is: the model and every setting but where it is written and its label."""
    return {**{k: v for k, v in asdict(cfg).items() if k not in ("out", "force", "name")}, "model": model}


def saved_identity(out: Path) -> dict:
    """The identity of the finished evaluation in ``out``: its saved settings, and the model its results are of."""
    return {**json.loads((out / "eval_config.json").read_text()), "model": previous_model(out)}


def previous_model(out: Path) -> str | None:
    """The model whose finished evaluation ``out`` holds (None: none, or unreadable)."""
    try:
        return json.loads((out / "results.json").read_text())["model"]
    except (OSError, ValueError, LookupError, TypeError):
        return None


def main(argv: list[str] | None = None, *, context: CommandContext | None = None) -> dict:
    return run_eval(parse_config(EvalConfig, argv, "eval", __doc__), context=context)


def evaluate(model: str, benchmarks: list[Benchmark], templates: dict[str, Template], cfg: EvalConfig,
             engine=None, own_engine: bool = True) -> tuple[dict, list[dict]]:
    """Sample every benchmark's prompts in one pass through the engine (its tail of long responses paid once,
    not per benchmark), scoring each prompt's samples in a second thread as they finish. ``engine``: one already
    started (closed at the end if ``own_engine``); None: one of its own."""
    start = time.time()
    max_len = context_length(model, cfg.max_model_len)
    results = {"model": model, "name": cfg.name or Path(model).name, "k": cfg.k, "temperature": cfg.temperature,
               "top_p": cfg.top_p, "max_tokens": cfg.max_tokens, "seed": cfg.seed, "extraction": cfg.extraction,
               "verifier_version": rewards.VERIFIER_VERSION, "benchmarks": {}}
    prompts, samplings, outputs = {}, {}, {}
    passes: dict[tuple, list[tuple[str, int, list[int]]]] = {}  # sampling -> (benchmark, record, prompt ids)
    for bench in benchmarks:
        template = templates[bench.name]
        samplings[bench.name] = cfg.sampling(cfg.k, template.stop)
        prompts[bench.name] = [template.render(r["question"]) for r in bench.records]
        outputs[bench.name] = [[] for _ in bench.records]  # a prompt the model cannot read: k wrong answers, counted
        for i, prompt in enumerate(prompts[bench.name]):
            ids = template.token_ids(prompt)
            if max_len is None or len(ids) < max_len:
                passes.setdefault(tuple(samplings[bench.name].stop or ()), []).append((bench.name, i, ids))
    records = {b.name: b.records for b in benchmarks}
    # the samples' log-probs give the policy's entropy when they are those of the distribution sampled from
    mode = cfg.logprobs_mode()
    entropy = cfg.temperature > 0 and (mode == "processed_logprobs" or (mode == "raw_logprobs" and cfg.temperature == 1
                                                                          and cfg.top_p == 1))
    engine = engine or start_engine(cfg, model)
    scorer = rewards.StreamScorer(extraction=cfg.extraction)
    generation_seconds = 0.0
    try:
        for stop, todo in passes.items():  # one pass per distinct stop list (one, for the world's splits)
            sampling = cfg.sampling(cfg.k, list(stop))

            def finished(j: int, samples: list, todo=todo) -> None:
                name, i, _ = todo[j]
                outputs[name][i] = samples
                scorer.add([((name, i, k), s.text, records[name][i]["gold"]) for k, s in enumerate(samples)])

            began = time.perf_counter()
            engine.generate([ids for _, _, ids in todo], sampling, on_result=finished, logprobs=entropy,
                            seeds=[prompt_seed(cfg.seed, records[name][i]["prompt_id"]) for name, i, _ in todo])
            generation_seconds += time.perf_counter() - began
    finally:
        if own_engine:
            engine.close()
    waited = time.perf_counter()
    scored, timed_out, scoring_seconds = scorer.finish()
    generations: list[dict] = []
    for bench in benchmarks:
        metrics, rows = benchmark_results(bench, prompts[bench.name], outputs[bench.name], scored, cfg)
        metrics["prompts_too_long"] = sum(not samples for samples in outputs[bench.name])
        if entropy:
            metrics["entropy"] = mean_token_entropy([s.logprobs for samples in outputs[bench.name] for s in samples])
        metrics["scoring_timeouts"] = sum(name == bench.name for name, _, _ in timed_out)
        metrics["template"] = templates[bench.name].name
        metrics["sampling"] = ENGINES[cfg.backend].applied(samplings[bench.name])  # a manifest's form, stop included
        results["benchmarks"][bench.name] = metrics
        generations += rows
    results["wall_seconds"] = round(time.time() - start, 2)
    # where the time went: sampling; scoring (in the second thread, overlapping it); what was left after sampling
    # ended (the last chunk's scoring, maj@k's equivalence of wrong answers, the rows)
    results["generation_seconds"] = round(generation_seconds, 2)
    results["scoring_seconds"] = round(scoring_seconds, 2)
    results["after_sampling_seconds"] = round(time.perf_counter() - waited, 2)
    return results, generations


def benchmark_results(bench: Benchmark, prompts: list[str], outputs: list[list], scored: dict,
                      cfg: EvalConfig) -> tuple[dict, list[dict]]:
    """One benchmark's metrics and generation rows from its samples (``[]`` for a prompt too long to read)."""
    correct, preds, lengths, truncated, generations = [], [], [], [], []
    for i, (record, prompt, samples) in enumerate(zip(bench.records, prompts, outputs, strict=True)):
        if not samples:  # prompt too long: k wrong, empty answers
            correct.append([0.0] * cfg.k), preds.append([""] * cfg.k)
            lengths.append([0] * cfg.k), truncated.append([True] * cfg.k)
            continue
        verdicts = [scored[bench.name, i, j] for j in range(len(samples))]
        correct.append([reward for _, reward in verdicts])
        preds.append([pred for pred, _ in verdicts])
        lengths.append([len(s.token_ids) for s in samples])
        truncated.append([s.finish_reason == "length" for s in samples])
        for j, (s, (pred, reward)) in enumerate(zip(samples, verdicts, strict=True)):
            generations.append({"benchmark": bench.name, "prompt_id": record["prompt_id"],
                                "question": record["question"], "gold": record["gold"], "prompt": prompt,
                                "sample_idx": j, "response": s.text, "pred": pred, "reward": reward,
                                "response_tokens": len(s.token_ids), "finish_reason": s.finish_reason})
    metrics = benchmark_metrics(correct, preds, lengths, truncated, cfg.k)
    # what a comparison's paired intervals resample: each problem's correct samples, and which problems these were
    metrics["correct_per_problem"] = [int(sum(c)) for c in correct]
    metrics["problem_ids"] = problem_ids_digest([r["prompt_id"] for r in bench.records])
    return metrics, generations


def write_generations(path: Path, generations: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(generations), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def format_table(results_by_model: dict[str, dict], benchmarks: list[str], k: int) -> str:
    """A Markdown table narrow enough for a terminal: one row per model and benchmark; avg@k, pass@k, maj@k in %."""
    metrics = (f"avg@{k}", f"pass@{k}", f"maj@{k}")
    lines = ["| model | benchmark | " + " | ".join(metrics) + " |", "|---|---|" + "---:|" * len(metrics)]
    for name, res in results_by_model.items():
        for b in benchmarks:
            cells = [f"{100 * res['benchmarks'][b][m]:.1f}" if m in res["benchmarks"][b] else "–" for m in metrics]
            lines.append(f"| {name} | {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def avg_table(results_by_model: dict[str, dict], benchmarks: list[str], k: int) -> str:
    """avg@k in percent, one row per model and one column per benchmark, narrow enough for a terminal (the world's
    splits lose their ``test-`` prefix)."""
    names = [b.removeprefix("test-") for b in benchmarks]
    width = max(len(m) for m in [*results_by_model, f"avg@{k} (%)"])
    lines = [f"{f'avg@{k} (%)':<{width}}  " + "  ".join(f"{n:>6}" for n in names)]
    for model, res in results_by_model.items():
        cells = [f"{100 * res['benchmarks'][b][f'avg@{k}']:.1f}" for b in benchmarks]
        lines.append(f"{model:<{width}}  "
                     + "  ".join(f"{c:>{max(6, len(n))}}" for c, n in zip(cells, names, strict=True)))
    return "\n".join(lines)


def load_results(path: str | Path) -> dict:
    return json.loads((Path(path) / "results.json").read_text())
