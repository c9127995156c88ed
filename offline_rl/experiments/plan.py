"""The comparison's plan: its settings, the runs it compares, and the stages (each a command's function and its
configs) that make them. Nothing here runs anything; :mod:`offline_rl.experiments.compare` does.

A run is a name, a learner, the data it trains on (the dataset, the demonstrations, or a path), its own flags
(bin/train's and the learner's), and optionally rounds (bin/iterate, collecting from its own policy at the same
budget). ``--learners sft,dft`` makes one run per learner with no flags; ``--runs FILE.yaml`` lists them in full:

    - {name: dft_seq, learner: dft, data: demonstrations, flags: {weighting: sequence}}
    - {name: grpo, learner: grpo, rounds: 100, n: 8, batch_size: round}

A run in rounds may sample its own group size (``n``): its prompts per round are then as many as keep its sampled
responses the dataset's. ``batch_size`` is a run's own (a number), or ``round``: each round's steps go once through
all of its samples (GRPO's recipe).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from offline_rl.embedded.base_model import DEFAULT_BASE_MODEL
from offline_rl.evaluate import EvalConfig
from offline_rl.experiments.iterate import IterateConfig
from offline_rl.experiments.sweep import SELECT_ON, check_grid, parse_sweep, setting_name
from offline_rl.learners import LEARNERS
from offline_rl.train import TrainConfig
from rollout.collect import CollectConfig
from rollout.dataset import is_complete, read_manifest
from rollout.demonstrations import ImportConfig
from rollout.files import read_text
from rollout.runtime import UsageError, parse_mapping, stage, with_flags

ROOT = Path(__file__).resolve().parents[2]

# bin/train settings the comparison sets for every run (its budget and bookkeeping): a run's flags may not
COMPARE_OWNS = ("learner", "data", "out", "model", "steps", "batch_size", "seed", "save_every", "log_every",
                "report_to", "resume", "init_from", "schedule_steps", "force")
DATASET_MODEL = "{dataset model}"  # in a planned config: the dataset's model, known once it is collected
AFTER_RL = "+rl"  # NAME+rl: NAME followed by the after-RL stage (no run's own name holds a +)
AFTER_RL_LR, AFTER_RL_N = 5e-5, 8  # GRPO's rate chosen in results/embedded-sweep, and its recipe's group size


@dataclass
class CompareConfig:
    """bin/compare's own settings: the runs, the seeds, the shared budget; every evaluation takes the rest from the
    config it holds, whose flags are bin/compare's too (bin/eval's: sampling, engine, benchmarks)."""

    out: str = field(default=None, metadata={"help": "comparison directory (required); run again to resume"})
    data: str = field(default=None, metadata={
        "help": "offline dataset from bin/collect (default: collect one into OUT/data with bin/collect's defaults)"})
    model: str = field(default=None, metadata={"help": "initial model of every learner (default: the dataset's model)"})
    prompts: int = field(default=None, metadata={
        "help": "when collecting (no --data): use at most N prompts of the source", "min": 1})
    learners: str = field(default="sft,rft,dft,dpo,ppo,iwsft,adft", metadata={
        "help": f"comma-separated learners, one run each ({', '.join(LEARNERS)}); ignored with --runs"})
    runs: str = field(default=None, metadata={
        "help": "YAML file listing the runs: name, learner, data (dataset, demonstrations or a path), flags "
                "(bin/train's and the learner's), rounds"})
    demonstrations: str = field(default="world", metadata={
        "help": "demonstrations for --demonstration-learners: world (the world's reference solutions of --data's "
                "prompts, when they come from the world), a bin/import dataset directory, or none", "advanced": True})
    demonstration_learners: str = field(default="sft", metadata={
        "help": "comma-separated run names trained on the demonstrations instead of --data", "advanced": True})
    seeds: str = field(default="0,1,2", metadata={"help": "comma-separated seeds (training and evaluation sampling)"})
    steps: int = field(default=150, metadata={"help": "optimizer steps per learner (the shared budget)", "min": 1})
    batch_size: int = field(default=32, metadata={"help": "sequences (DPO: pairs) per optimizer step", "min": 1})
    lr: float = field(default=2e-4, metadata={
        "help": "peak learning rate (warm-up + cosine), scaled by a learner's recipe", "above": 0, "max": 1})
    sweep: str = field(default=None, metadata={
        "help": "FLAG=V1,V2,...: every run trained at each value (with every seed), the value reported chosen on "
                "--select-on (a run's own sweep in --runs wins)"})
    select_on: str = field(default=None, metadata={
        "help": f"with a sweep: the held-out benchmark its values are chosen on (default: {SELECT_ON}); never one of "
                "--benchmarks (the reported ones), nor the split the data was drawn from", "advanced": True})
    report_to: str = field(default="tensorboard", metadata={
        "help": "trackers of every training, as bin/train takes them: tensorboard, wandb, trackio, none",
        "advanced": True})
    reference: str = field(default=None, metadata={
        "help": "the run every other is compared with, in differences with paired 95-percent intervals (default: sft "
                "where there is one, else the base model)", "advanced": True})
    heldout_every: int = field(default=0, metadata={
        "help": "every training logs the held-out NLL and its policy's entropy there every N steps (bin/train "
                "--heldout-every; 0: never)", "min": 0, "advanced": True})
    after_rl: int = field(default=0, metadata={
        "help": "judge every model again after the same online RL: the base and each run, each seed, followed by this "
                "many rounds of GRPO from its final weights (bin/iterate --learner grpo --sample-like DATA: the "
                "dataset's prompts shared over the rounds, the same seeds, groups of --after-rl-n, each round's "
                "samples once in its steps, --steps in all, at --after-rl-lr), reported as NAME+rl beside NAME; "
                "0: none", "min": 0, "advanced": True})
    after_rl_lr: float = field(default=None, metadata={
        "help": f"the after-RL stage's peak rate (default: {AFTER_RL_LR:g}, GRPO's rate chosen on valid in "
                "results/embedded-sweep)", "above": 0, "max": 1, "advanced": True})
    after_rl_n: int = field(default=None, metadata={
        "help": f"the after-RL stage's group size, responses per prompt (default: {AFTER_RL_N}, GRPO's recipe)",
        "min": 2, "advanced": True})
    report_only: bool = field(default=False, metadata={
        "help": "only write the differences, forgetting and entropy of OUT's report again from its evaluations (a "
                "comparison kept without its runs); --reference may change", "advanced": True})
    force: bool = field(default=False, metadata={
        "help": "reuse an OUT made with different settings, or one bin/compare did not make"})
    # every evaluation's settings (its model, name, seed and output are each stage's; --backend: the collection's too)
    # the forgetting panel in every comparison unless --heldout-text none
    evaluation: EvalConfig = stage(EvalConfig(heldout_text="world:pretrain"))


# bin/compare --help: these of bin/eval's flags too (the rest: --help-all)
COMMON = ("benchmarks", "k", "problems", "temperature", "max_tokens", "backend")
# bin/eval's flags each evaluation sets itself (they would be ignored): refused, with what to use instead
SET_BY_STAGES = {"seed": "; --seeds", "name": ""}


@dataclass(frozen=True)
class Run:
    name: str
    learner: str
    data: str = "dataset"  # dataset, demonstrations, or a dataset directory
    flags: tuple = ()  # (option, value) pairs: bin/train's and the learner's own
    rounds: int | None = None  # trained in this many rounds by bin/iterate, collecting its own samples
    n: int | None = None  # rounds: responses sampled per prompt (default: the dataset's)
    batch_size: int | str | None = None  # its own sequences per step, or "round": all of a round's samples once
    sweep: str | None = None  # one setting of the sweep of this run name (its value among the flags)
    swept: str | None = None  # the flag that sweep varies

    def batch(self, shared: int) -> int | str:
        return shared if self.batch_size is None else self.batch_size

    def lr(self, shared: float) -> float:
        """The run's peak rate: its own, or the shared one times its learner's recipe (as bin/train prints it)."""
        flags = dict(self.flags)
        if "lr" in flags:
            return float(flags["lr"])
        scale = float(flags.get("lr_scale", LEARNERS[self.learner].lr_scale))  # a recipe's own rate (dpo.py)
        return float(f"{shared * scale:g}")


@dataclass
class Stage:
    name: str
    command: str  # collect, import, train, iterate, eval
    configs: tuple  # the command function's configs
    done: Path  # the stage's completion mark, written last by its command
    samples: str | None = None  # the model a collection or evaluation samples from (the live engine loads it)
    given: frozenset = frozenset()  # iterate: the settings the run gives, which the dataset's do not replace
    needs: str | None = None  # the stage whose output it starts from: skipped when that one failed

    def finished(self) -> bool:
        """A dataset is finished when its manifest says so (collect writes the manifest first); the
        other stages when their mark exists."""
        if self.done.name == "manifest.json":
            return is_complete(self.done.parent)
        if self.command == "eval" and self.configs[0].force and self.done.exists():  # --force: other settings, again
            return _same_evaluation(self.done.parent, self.configs[0])
        return self.done.exists()


def _same_evaluation(where: Path, planned: EvalConfig) -> bool:
    """Whether the evaluation saved in ``where`` has ``planned``'s settings (but its model, label and output)."""
    volatile = ("out", "force", "name", "model")
    try:
        saved = json.loads((where / "eval_config.json").read_text())
    except (OSError, ValueError):
        return False
    wanted = json.loads(json.dumps({k: v for k, v in asdict(planned).items() if k not in volatile}, default=str))
    default = json.loads(json.dumps(asdict(EvalConfig()), default=str))  # a setting newer than the saved file's
    return all(saved.get(k, default.get(k)) == v for k, v in wanted.items())


def parse_runs(cfg: CompareConfig) -> list[Run]:
    """The runs of ``--runs FILE``, or one per name of ``--learners``; each checked (learner, flags, rounds) now."""
    on_demonstrations = {n.strip() for n in cfg.demonstration_learners.split(",") if n.strip()}
    if cfg.runs is None:
        names = [n.strip() for n in cfg.learners.split(",") if n.strip()]
        entries = [{"name": n, "learner": n} for n in names]
    else:
        entries = _runs_file(Path(cfg.runs))
    runs = []
    shared_sweep = parse_sweep(cfg.sweep)
    for i, entry in enumerate(entries):
        where = f"--runs {cfg.runs} entry {i + 1}" if cfg.runs else f"--learners {entry.get('name')!r}"
        entry = dict(entry)
        own_sweep = entry.pop("sweep", None)
        run = _run(entry, where, on_demonstrations)
        if run.name in {r.name for r in runs}:
            raise UsageError(f"{where}: the name {run.name!r} is taken")
        if run.rounds is not None and cfg.steps % run.rounds:
            raise UsageError(f"{where}: {cfg.steps} budget steps do not split into {run.rounds} rounds")
        runs += _settings(run, own_sweep, shared_sweep, where)
    if not runs:
        raise UsageError("need at least one run (--learners or --runs)")
    return runs


def _settings(run: Run, own_sweep, shared_sweep: tuple[str, list] | None, where: str) -> list[Run]:
    """The run, or one run per value of its sweep (a ``sweep: {flag: [values]}`` of its own, else ``--sweep``),
    each flag value checked now."""
    if own_sweep is not None:
        if not isinstance(own_sweep, dict) or len(own_sweep) != 1:
            raise UsageError(f"{where}: sweep must be one flag and its values, e.g. sweep: {{lr: [1e-4, 2e-4]}}")
        (flag, grid), = own_sweep.items()
        sweep = (str(flag).replace("-", "_"), check_grid(flag, grid, where))
    else:
        sweep = shared_sweep
    if sweep is None:
        return [run]
    flag, grid = sweep
    if flag in COMPARE_OWNS or flag == "lr_scale":
        raise UsageError(f"{where}: {flag} is set by the comparison for every run; it cannot be swept")
    beside = [k for k in dict(run.flags) if k == flag or (flag == "lr" and k == "lr_scale")]
    if beside:  # the sweep would replace the run's own value without a word
        swept_by = "its own sweep" if own_sweep is not None else "--sweep"
        raise UsageError(f"{where}: {beside[0]} is set in its flags and {flag} swept by {swept_by}; the flag would "
                         "be dropped: keep one of them")
    settings = []
    for value in grid:
        flags = {**dict(run.flags), flag: value}
        if flag == "lr":  # the swept rate is the run's own: no recipe scale on top
            flags.pop("lr_scale", None)
        parse_mapping((TrainConfig, LEARNERS[run.learner].config), {k: v for k, v in flags.items() if k != "lr_scale"},
                      f"{where} sweep")
        settings.append(replace(run, name=setting_name(run.name, flag, value), flags=tuple(flags.items()),
                                sweep=run.name, swept=flag))
    return settings


def _runs_file(path: Path) -> list[dict]:
    import yaml

    if not path.is_file():
        raise UsageError(f"--runs {path}: no such file")
    try:
        entries = yaml.safe_load(read_text(path))
    except yaml.YAMLError as e:
        raise UsageError(f"--runs {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UsageError(f"--runs {path} must hold a list of runs (name, learner, data, flags, rounds)")
    return entries


def _run(entry: dict, where: str, on_demonstrations: set[str]) -> Run:
    known = [f.name for f in fields(Run) if f.name != "swept"]  # sweep: read by parse_runs
    unknown = set(entry) - set(known)
    if unknown:
        raise UsageError(f"{where}: unknown key {sorted(unknown)[0]!r}; known: {', '.join(known)}")
    name, learner = str(entry.get("name", "")), entry.get("learner", entry.get("name"))
    if learner not in LEARNERS or not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name == "base":
        raise UsageError(f"{where}: needs a name (letters, digits, _ . -; not 'base') and a known learner "
                         f"({', '.join(LEARNERS)})")
    if name in LEARNERS and name != learner:
        raise UsageError(f"{where}: a run of {learner} may not be named {name!r}, another learner's name")
    flags = entry.get("flags") or {}
    if not isinstance(flags, dict):
        raise UsageError(f"{where}: flags must be a mapping of option: value")
    flags = dict(flags)
    scale = flags.pop("lr_scale", None)
    _, given = parse_mapping((TrainConfig, LEARNERS[learner].config), flags, f"{where} flags")  # typed, checked now
    owned = sorted(given & set(COMPARE_OWNS))
    if owned:
        raise UsageError(f"{where}: {owned[0]} is set by the comparison for every run (its budget and outputs); "
                         "not a run's flag")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale < float("inf"):
            raise UsageError(f"{where}: lr_scale must be a positive number (got {scale!r})")
        flags["lr_scale"] = float(scale)
    rounds, n, batch = (_whole(entry, "rounds", where), _whole(entry, "n", where),
                        _whole(entry, "batch_size", where, "round"))
    if n is not None and rounds is None:
        raise UsageError(f"{where}: n (the group size it samples) needs rounds; offline runs train on the dataset's")
    if batch == "round" and rounds is None:
        raise UsageError(f"{where}: batch_size: round needs rounds (each round's samples, once)")
    data = str(entry.get("data", "demonstrations" if name in on_demonstrations else "dataset"))
    return Run(name, learner, data, tuple(flags.items()), rounds, n=n, batch_size=batch)


def _whole(entry: dict, key: str, where: str, word: str | None = None) -> int | str | None:
    """``entry[key]``: absent (None), a whole number >= 1, or ``word`` where one is allowed."""
    value = entry.get(key)
    if value is None or (word is not None and value == word):
        return value
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        also = f" or {word}" if word else ""
        raise UsageError(f"{where}: {key} must be a whole number >= 1{also} (got {value!r})")
    return value


def demonstrations_for(cfg: CompareConfig, out: Path, data: Path, runs: list[Run]) -> Path | None:
    """Where runs on demonstrations train: a given bin/import dataset, the world's reference solutions of the
    dataset's prompts imported into OUT/demonstrations (when its prompts are the world's), or nowhere (they use
    --data)."""
    if not any(r.data == "demonstrations" for r in runs) or cfg.demonstrations == "none":
        return None
    if cfg.demonstrations != "world":
        path = Path(cfg.demonstrations)
        if read_manifest(path).get("kind") != "demonstrations":
            raise UsageError(f"--demonstrations {path} is not a bin/import dataset")
        return path
    source = read_manifest(data).get("source", {}) if (data / "manifest.json").exists() else {"kind": "world"}
    if source.get("kind") != "world" or source.get("split", "train") != "train":
        return None  # no reference solutions for these prompts: they train on --data's accepted view
    return out / "demonstrations"


def plan(cfg: CompareConfig, out: Path, data: Path, runs: list[Run], seeds: list[int],
         demonstrations: Path | None = None) -> list[Stage]:
    """Every stage in order: collect (unless given), import the world's demonstrations (when used), then per seed
    the base model's evaluation and each run's training and evaluation."""
    stages = []
    collect = Stage("collect", "collect", (CollectConfig(out=str(data), backend=cfg.evaluation.backend, model=cfg.model,
                                                         prompts=cfg.prompts),), data / "manifest.json",
                    samples=cfg.model or str(DEFAULT_BASE_MODEL))
    if not collect.finished():
        stages.append(collect)
    if demonstrations is not None and demonstrations == out / "demonstrations":  # the world's, of the data's prompts
        imported = Stage("import", "import", (ImportConfig(source="world:train", out=str(demonstrations),
                                                           model=cfg.model or DATASET_MODEL, prompts_of=str(data)),),
                         demonstrations / "manifest.json")
        if not imported.finished():
            stages.append(imported)
    if any(r.sweep for r in runs):  # every model also evaluated on the split that chooses the swept settings
        cfg = with_flags(cfg, {"benchmarks": f"{cfg.evaluation.benchmarks},{cfg.select_on}"})
    for seed in seeds:
        stages.append(_evaluation(cfg, out, "base", cfg.model or DATASET_MODEL, seed))
        for run in runs:
            stages.append(_training(cfg, out, data, demonstrations, run, seed))
            stages.append(_evaluation(cfg, out, run.name, str(out / "runs" / f"{run.name}-s{seed}"), seed))
        for name in ["base", *(r.name for r in runs)] if cfg.after_rl else []:  # then every one judged after RL
            stages += _after_rl(cfg, out, data, name, seed)
    return stages


def _after_rl(cfg: CompareConfig, out: Path, data: Path, name: str, seed: int) -> list[Stage]:
    """``name``'s final weights followed by the same online GRPO as every other model's (its seed, the dataset's
    prompts and sampling, one rate), and that model's evaluation as ``name+rl``."""
    where = out / "runs" / f"{name}{AFTER_RL}-s{seed}"
    (train, learner), _ = parse_mapping((TrainConfig, LEARNERS["grpo"].config), {}, "--after-rl")
    own = {"n": cfg.after_rl_n or AFTER_RL_N}  # the base's model: the dataset's own, which --sample-like gives
    if name != "base" or cfg.model:
        own["model"] = str(out / "runs" / f"{name}-s{seed}") if name != "base" else cfg.model
    rounds = with_flags(IterateConfig(train=train), dict(
        learner="grpo", sample_like=str(data), out=str(where), rounds=cfg.after_rl, steps=cfg.steps,
        batch_size=cfg.batch_size, round_batches=True, seed=seed, lr=cfg.after_rl_lr or AFTER_RL_LR,
        backend=cfg.evaluation.backend, report_to=cfg.report_to, **own))
    trained = f"train {name} s{seed}" if name != "base" else None
    training = Stage(f"train {name}{AFTER_RL} s{seed}", "iterate", (rounds, learner), where / "iterate_summary.json",
                     given=frozenset(own), needs=trained)
    evaluation = _evaluation(cfg, out, f"{name}{AFTER_RL}", str(where), seed)
    return [training, replace(evaluation, needs=training.name)]


def _evaluation(cfg: CompareConfig, out: Path, name: str, model: str, seed: int) -> Stage:
    where = out / "evals" / f"{name}-s{seed}"
    evaluation = replace(cfg.evaluation, model=model, name=name, seed=seed, out=str(where), force=cfg.force)
    return Stage(f"eval {name} s{seed}", "eval", (evaluation,), where / "results.json", samples=model,
                 needs=f"train {name} s{seed}" if name != "base" else None)


def _training(cfg: CompareConfig, out: Path, data: Path, demonstrations: Path | None, run: Run, seed: int) -> Stage:
    where = out / "runs" / f"{run.name}-s{seed}"
    flags = {k: v for k, v in run.flags if k != "lr_scale"}
    (train, learner), _ = parse_mapping((TrainConfig, LEARNERS[run.learner].config), flags, f"run {run.name}")
    batch = run.batch(cfg.batch_size)
    settings = dict(learner=run.learner, out=str(where), model=cfg.model, batch_size=batch, seed=seed,
                    report_to=cfg.report_to, lr=run.lr(cfg.lr), heldout_every=cfg.heldout_every,
                    heldout_text=cfg.evaluation.heldout_text)
    if run.rounds is not None:  # collects its own samples: the dataset's prompts and sampling, split into rounds
        own = {"n": run.n} if run.n is not None else {}
        rounds = with_flags(IterateConfig(train=train), dict(
            learner=run.learner, sample_like=str(data), model=cfg.model, out=str(where), rounds=run.rounds,
            steps=cfg.steps, batch_size=cfg.batch_size if batch == "round" else batch, round_batches=batch == "round",
            seed=seed, lr=run.lr(cfg.lr), backend=cfg.evaluation.backend, report_to=cfg.report_to, **own))
        return Stage(f"train {run.name} s{seed}", "iterate", (rounds, learner), where / "iterate_summary.json",
                     given=frozenset({"model"} if cfg.model else set()) | set(own))
    source = {"dataset": data, "demonstrations": demonstrations or data}.get(run.data, Path(run.data))
    train = replace(train, **settings, data=str(source), steps=cfg.steps, save_every=max(1, cfg.steps // 3),
                    log_every=5)
    return Stage(f"train {run.name} s{seed}", "train", (train, learner), where / "train_summary.json")
