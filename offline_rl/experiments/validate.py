"""Every input of a comparison checked before any stage runs, in one place: bin/compare calls
:func:`check_comparison` before it writes or starts anything. The checks are the stages' own (bin/train's
:func:`~offline_rl.train.micro_batch`, :func:`~offline_rl.views.check_view` and
:func:`~offline_rl.policies.ratio_temperature`, the flags' bounds), asked of every run and every setting of a sweep
at once.

What a stage would otherwise find out an hour in: each run's training data (it exists, is a finished offline
dataset and not a model, holds what the learner's view needs: samples with log-probs for a ratio learner, pairs of
rewards for DPO), its batches (micro-batches divide them), its rate, and the selection split of a sweep (one split
that exists, is not a reported benchmark under any spelling, and is not the split the data was drawn from).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from offline_rl.embedded import world
from offline_rl.embedded.base_model import DEFAULT_BASE_MODEL
from offline_rl.evaluate import SHARED_BENCHMARKS, load_benchmark, shared_file
from offline_rl.experiments.plan import AFTER_RL, CompareConfig, Run, demonstrations_for, parse_runs
from offline_rl.experiments.report import check_reference
from offline_rl.experiments.sweep import SELECT_ON
from offline_rl.heldout import check_heldout
from offline_rl.learners import LEARNERS
from offline_rl.policies import ratio_temperature
from offline_rl.train import TrainConfig, check_fit, micro_batch, report_targets
from offline_rl.views import check_view
from rollout.dataset import complete_manifests, is_complete, read_manifest
from rollout.models import resolve_model
from rollout.runtime import UsageError, check_bounds, parse_mapping

COLLECTED = {"kind": "world", "split": "train"}  # the source of the dataset compare collects (bin/collect's default)


@dataclass(frozen=True)
class Comparison:
    """A comparison whose every input was checked: its settings resolved (the selection split of a sweep), runs,
    seeds, and where its data and demonstrations are (or will be)."""

    cfg: CompareConfig
    runs: list[Run]
    seeds: list[int]
    out: Path
    data: Path
    demonstrations: Path | None


def check_comparison(cfg: CompareConfig) -> Comparison:
    """Every stage's input, before any work: one line (UsageError) for the first that is wrong."""
    if cfg.out is None:
        raise UsageError("--out is required")
    cfg.evaluation.require_own_engine("compare")
    runs = parse_runs(cfg)
    seeds = parse_seeds(cfg.seeds)
    report_targets(cfg.report_to)
    check_after_rl(cfg, runs)
    names = ["base", *dict.fromkeys(r.sweep or r.name for r in runs)]
    check_reference(cfg.reference, names + [f"{n}{AFTER_RL}" for n in names if cfg.after_rl])
    for name in cfg.evaluation.benchmarks.split(","):  # bad benchmarks fail now, not after an hour of training
        if name.strip():
            load_benchmark(name.strip(), cfg.evaluation)
    check_heldout(cfg.evaluation.heldout_text)  # and held-out text that is not text
    out = Path(cfg.out)
    data = Path(cfg.data) if cfg.data else out / "data"
    if cfg.data and cfg.prompts is not None:
        raise UsageError(f"--prompts bounds the prompts compare collects, and --data {cfg.data} is collected "
                         "already: drop --prompts (its demonstrations are those of its own prompts)")
    demonstrations = demonstrations_for(cfg, out, data, runs)
    if cfg.data and not (data / "manifest.json").is_file():
        raise UsageError(f"{data} is not an offline dataset (no manifest.json); omit --data to collect one")
    if cfg.data and read_manifest(data).get("complete") is not True:
        raise UsageError(f"{data} is an unfinished collection (complete: false); run its bin/collect again to "
                         "finish it")
    if cfg.model:
        resolve_model(cfg.model)
    if cfg.after_rl and cfg.data and not (data / "collect_config.json").is_file():
        raise UsageError(f"--after-rl samples as --data was sampled (bin/iterate --sample-like), and {data} was not "
                         "made by bin/collect: give a collected dataset, or omit --data to collect one")
    sources = {}  # every dataset a run trains on: its manifest (planned, for what compare makes itself)
    for run in runs:
        sources.update(check_run(cfg, run, out, data, demonstrations))
    cfg = check_select_on(cfg, runs, sources)
    return Comparison(cfg, runs, seeds, out, data, demonstrations)


def check_after_rl(cfg: CompareConfig, runs: list[Run]) -> None:
    """The after-RL stage: its rounds given when any of its settings is, the budget's steps split into them, and no
    sweep (every setting would be followed by RL, and only the chosen one reported)."""
    if not cfg.after_rl:
        given = [flag for flag, value in (("--after-rl-lr", cfg.after_rl_lr), ("--after-rl-n", cfg.after_rl_n))
                 if value is not None]
        if given:
            raise UsageError(f"{given[0]} sets the after-RL stage, which has no rounds: add --after-rl ROUNDS")
        return
    if cfg.steps % cfg.after_rl:
        raise UsageError(f"--after-rl {cfg.after_rl}: the {cfg.steps} steps of --steps do not split into "
                         f"{cfg.after_rl} rounds")
    if any(r.sweep for r in runs):
        raise UsageError("--after-rl with a sweep would follow every swept setting with RL and report one: "
                         "sweep first, then compare the chosen settings after RL")


def parse_seeds(spec: str) -> list[int]:
    try:
        seeds = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated integers (got {spec!r})") from None
    if not seeds:
        raise UsageError("--seeds: need at least one seed")
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {spec}: a seed is named twice (its runs would be one)")
    return seeds


def check_run(cfg: CompareConfig, run: Run, out: Path, data: Path, demonstrations: Path | None) -> dict[str, dict]:
    """One run (one setting of a sweep): its rate, its batches, and the data it trains on as its learner needs it.
    Returns the manifests of that data (planned ones for what compare collects or imports itself)."""
    where = f"--runs {cfg.runs}: run {run.name!r}" if cfg.runs else f"--learners {run.name!r}"
    learner = LEARNERS[run.learner]
    (train, learner_cfg), _ = parse_mapping((TrainConfig, learner.config),
                                            {k: v for k, v in run.flags if k != "lr_scale"}, where)
    try:
        check_bounds(replace(train, lr=run.lr(cfg.lr)))  # a recipe's or lr_scale's rate too
        if learner.check is not None:  # the learner's own inputs (chord's expert dataset)
            learner.check(learner_cfg)
        batch = run.batch(cfg.batch_size)
        if batch != "round":  # a round's batch is its examples / its steps: whole micro-batches by construction
            micro_batch(batch, train.micro_batch_size, 1)
        model = cfg.model or (read_manifest(data)["model"] if cfg.data else str(DEFAULT_BASE_MODEL))
        check_fit(train, model)  # LoRA's targets, the precision, activation checkpointing
        if run.rounds is not None:  # it samples its own data, round by round, from the dataset's prompts
            check_view(learner, train.view or learner.views[0], {})
            return manifests_of(data, cfg, out, data)
        path = {"dataset": data, "demonstrations": demonstrations or data}.get(run.data, Path(run.data))
        manifests = manifests_of(path, cfg, out, data)
        check_view(learner, train.view or learner.views[0], manifests)
        if learner.behavior_ratio and all("planned" not in m for m in manifests.values()):
            ratio_temperature(manifests, model, run.learner, train.approximate_ratios)
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from None
    return manifests


def manifests_of(path: Path, cfg: CompareConfig, out: Path, data: Path) -> dict[str, dict]:
    """The manifest of the dataset at ``path``, which must be a finished one; for the dataset compare collects or
    the demonstrations it imports, the manifest they will have (marked ``planned``)."""
    if path == data and not cfg.data and not is_complete(path):  # collected by this comparison (or resumed)
        return {str(path): {"source": COLLECTED, "planned": True}}
    if path == out / "demonstrations" and not is_complete(path):
        return {str(path): {"kind": "demonstrations", "source": COLLECTED, "planned": True}}
    if not (path / "manifest.json").is_file():
        if (path / "config.json").is_file():
            raise UsageError(f"data {path} is a model, not an offline dataset (bin/collect's or bin/import's)")
        if not path.is_dir():
            raise UsageError(f"data {path}: no such dataset directory")
    return complete_manifests(str(path))


def check_select_on(cfg: CompareConfig, runs: list[Run], sources: dict[str, dict]) -> CompareConfig:
    """``cfg`` with the split a sweep's settings are chosen on (default valid): one split, that exists, is none of the
    reported benchmarks under any spelling, and is not the split any run's data was drawn from; without a sweep,
    none."""
    if not any(r.sweep for r in runs):
        if cfg.select_on is not None:
            raise UsageError(f"--select-on {cfg.select_on!r} chooses a sweep's setting, and nothing is swept "
                             "(--sweep, or a run's own sweep in --runs)")
        return cfg
    name = SELECT_ON if cfg.select_on is None else cfg.select_on.strip()
    if not name:
        raise UsageError(f"--select-on is empty: name the held-out split that chooses a sweep's setting ({SELECT_ON})")
    if "," in name:
        raise UsageError(f"--select-on {name!r} names several splits; a sweep's setting is chosen on one")
    split = identity(name, cfg.evaluation.benchmark_dir)
    for reported in (b.strip() for b in cfg.evaluation.benchmarks.split(",") if b.strip()):
        if identity(reported, cfg.evaluation.benchmark_dir) == split:
            also = "" if reported == name else f" (as {reported})"
            raise UsageError(f"--select-on {name} is one of the reported --benchmarks{also}: the split that chooses "
                             "a setting must not be one that reports it")
    for path, manifest in sources.items():
        source = manifest.get("source") or {}
        drawn = f"world:{source.get('split')}" if source.get("kind") == "world" else str(source.get("path"))
        if identity(drawn, cfg.evaluation.benchmark_dir) == split:
            raise UsageError(f"--select-on {name} is the split the training data {path} was drawn from: a setting "
                             f"chosen on it is chosen on the training prompts; choose on a held-out one ({SELECT_ON})")
    try:
        load_benchmark(name, cfg.evaluation)
    except UsageError as e:
        raise UsageError(f"--select-on {name}: {e}") from None
    return replace(cfg, select_on=name)


def identity(name: str, benchmark_dir: str | None) -> str:
    """One spelling per benchmark: ``test-id`` and ``world:test-id`` are one split, ``math500`` the file it names in
    ``--benchmark-dir``, a path its resolved self."""
    split = name.removeprefix("world:")
    if split in world.SPLITS:
        return f"world:{split}"
    if name in SHARED_BENCHMARKS:
        try:
            return str(shared_file(name, benchmark_dir).resolve())
        except UsageError:
            return name
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name
