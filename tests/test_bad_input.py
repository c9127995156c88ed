"""Bad input, table-driven, across every command: one line on stderr, exit 2, no traceback, and every file
that existed before is byte-identical afterwards (nothing is created either).

The commands run in-process through the same ``run()`` wrapper as ``bin/*`` (a subprocess each would cost
~1-4 s of imports per row); ``test_cli.py`` keeps a few subprocess checks of the entry points themselves.
"""

from __future__ import annotations

import errno
import json
import shutil
import time
from pathlib import Path

import pytest

from offline_rl.embedded import world
from offline_rl.embedded.base_model import DEFAULT_BASE_MODEL
from rollout.dataset import DatasetWriter
from rollout.runtime import run
from tests.conftest import make_rows


def _commands():
    """Each command's main with the context offline-rl gives it (the embedded world and base model)."""
    from offline_rl import cli

    return {name: load() for name, (_, load) in cli.COMMANDS.items()}


def run_command(command: str, args: list[str], capfd) -> tuple[int, str]:
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(lambda _: _commands()[command](args), command)
    return exit_info.value.code, capfd.readouterr().err


def run_alone(command: str, args: list[str], capfd) -> tuple[int, str]:
    """``run_command``, its holds on output directories ending with it as they would with its own process."""
    from rollout.files import release

    try:
        return run_command(command, args, capfd)
    finally:
        release(set())


def assert_one_line(code: int, stderr: str, *fragments: str) -> None:
    assert code == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def assert_fails_with(code: int, stderr: str, *fragments: str) -> None:
    """Exit 2, no traceback, and the error as the last line (progress and the resolved config may precede it)."""
    assert code == 2, stderr
    assert "Traceback" not in stderr
    last = [line for line in stderr.splitlines() if line.strip()][-1]
    for fragment in fragments:
        assert fragment in last, last


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _import_sources(ws: Path) -> None:
    """Source files an import must refuse in one line: wrong encodings, broken JSON, wrong field types."""
    good = {"problem": "1+1?", "solution": "1 + 1 = \\boxed{2}"}
    (ws / "latin1.jsonl").write_bytes((json.dumps(good) + "\n").encode() + '{"problem": "größer"}\n'.encode("latin-1"))
    (ws / "utf16.jsonl").write_bytes((json.dumps(good) + "\n").encode("utf-16"))
    (ws / "nul.jsonl").write_bytes(b'{"problem": "x\x00", "sol\x00ution": 1}\n')
    (ws / "array.jsonl").write_text(json.dumps([good, good], indent=1))
    (ws / "lines.json").write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    (ws / "broken.json").write_text('[{"problem": "1+1?", "solution": ')
    (ws / "object.json").write_text(json.dumps(good))
    (ws / "scalar.jsonl").write_text(json.dumps(good) + "\n3\n")
    (ws / "list.jsonl").write_text(json.dumps(good) + "\n[1, 2]\n")
    (ws / "garbage.parquet").write_bytes(b"PAR1 but not really")
    (ws / "garbage.csv").write_bytes(b"problem,solution\n\xff\xfe,x\n")
    for name, row in {"null-question": {**good, "problem": None}, "list-question": {**good, "problem": ["1+1?"]},
                      "dict-solution": {**good, "solution": {"text": "2"}}, "number-question": {**good, "problem": 2},
                      "empty-solution": {**good, "solution": "  "}, "bool-gold": {**good, "answer": True},
                      "list-gold": {**good, "answer": [2]},
                      "wrong-order": {"messages": [{"role": "assistant", "content": "2"}, {"role": "user", "content": "1+1?"}]},
                      "no-user": {"messages": [{"role": "assistant", "content": "2"}]},
                      "content-list": {"messages": [{"role": "user", "content": ["1+1?"]}, {"role": "assistant", "content": "2"}]},
                      "openr1-mismatch": {**good, "answer": "2", "generations": ["a", "b"], "correctness_math_verify": [True]}}.items():
        first = ({"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]}
                 if "messages" in row else {**good, "answer": "2"} if "answer" in row else good)
        (ws / f"{name}.jsonl").write_text(json.dumps(first) + "\n" + json.dumps(row) + "\n")
    (ws / "dup-ids.jsonl").write_text(json.dumps({**good, "id": "q1"}) + "\n" + json.dumps({**good, "id": "q1"}) + "\n")
    (ws / "plain.jsonl").write_text(json.dumps({"q": "1+1?", "s": "2", "a": "2"}) + "\n" + json.dumps({"q": "2+2?", "s": "4"}) + "\n")


def _compare_runs(ws: Path, model: str) -> None:
    """Runs files whose every fault a comparison must find before its first stage (ws/demos: the workspace's
    finished import, made by the fixture)."""
    for name, entry in {"data-missing": f"data: {ws}/nowhere", "data-model": f"data: {ws}/model",
                        "data-upward": f"data: {ws}/../..", "data-unfinished": f"data: {ws}/incomplete",
                        "ppo-on-demos": "learner: ppo, data: demonstrations",
                        "dpo-on-demos": "learner: dpo, data: demonstrations",
                        "ppo-on-import": f"learner: ppo, data: {ws}/demos", "micro": "flags: {micro_batch_size: 3}",
                        "sweep-and-flag": "sweep: {lr: [1e-4, 2e-4]}, flags: {lr: 3e-4}",
                        "sweep-and-scale": "sweep: {lr: [1e-4, 2e-4]}, flags: {lr_scale: 2}",
                        "sweep-twice": "sweep: {lr: [1e-4, 0.0001]}", "sweep-null": "sweep: {lr: [1e-4, null]}",
                        "lr-flag": "flags: {lr: 3e-4}", "scale-huge": "flags: {lr_scale: 1.0e+300}",
                        "sweep-micro": "sweep: {micro_batch_size: [4, 5]}"}.items():
        learner = "" if "learner:" in entry else "learner: dft, "
        (ws / f"runs-{name}.yaml").write_text(f"- {{name: {name.split('-')[0]}, {learner}{entry}}}\n")


# recorded sampling that is not the plain tempered policy: a truncation (allowed by --approximate-ratios) or a penalty
NOT_NEUTRAL = {"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.05, "presence_penalty": 0.5, "frequency_penalty": 0.5}


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_model_dir) -> Path:
    """One workspace of good and damaged inputs, shared by every row (each row checks it is left unchanged)."""
    ws = tmp_path_factory.mktemp("bad-input")
    model = str(tiny_model_dir)
    sampled = {"temperature": 1.0, "top_p": 1.0}
    manifests = {"ds-t07": {"sampling": {**sampled, "temperature": 0.7}}, "ds-topp": {"sampling": {**sampled, "top_p": 0.9}},
                 **{f"ds-{name}": {"sampling": {**sampled, name: value}} for name, value in NOT_NEUTRAL.items()},
                 "ds-other-model": {"model": str(DEFAULT_BASE_MODEL)}, "no-sampling": {"sampling": None},
                 "ds-server-declared": {"backend": "openai", "logprobs_mode": "processed_logprobs"},
                 "ds-server-undeclared": {"backend": "openai"},
                 "collected": {"model": str(DEFAULT_BASE_MODEL), "identity": {
                     "model": str(DEFAULT_BASE_MODEL), "sampling": {"n": 4, "temperature": 1.0, "top_p": 1.0,
                                                                    "max_tokens": 160, "stop": None}}}}
    for name in ("ds", "ds2", "incomplete", "truncated-manifest", "truncated-shard", "missing-shard", "all-wrong",
                 "no-logprobs", *manifests):
        writer = DatasetWriter(ws / name, {"model": model, "source": {"kind": "world", "split": "train"},
                                           "sampling": sampled, **manifests.get(name, {})})
        rows = make_rows(reward=lambda p, i: 0.0) if name == "all-wrong" else make_rows()
        writer.write_shard([{**r, "behavior_logprobs": []} for r in rows] if name == "no-logprobs" else rows)
        if name != "incomplete":
            writer.finish()
    manifest = (ws / "truncated-manifest" / "manifest.json").read_bytes()
    (ws / "truncated-manifest" / "manifest.json").write_bytes(manifest[: len(manifest) // 2])
    shard = ws / "truncated-shard" / "data" / "shard-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:100])
    (ws / "missing-shard" / "data" / "shard-00000.parquet").unlink()

    (ws / "foreign").mkdir()
    (ws / "foreign" / "thesis.tex").write_text("precious")
    (ws / "file.txt").write_text("a file, not a directory")
    (ws / "latin1.csv").write_bytes("question,answer\nCombien font deux et deux ? Réponse,4\n".encode("latin-1"))
    (ws / "latin1.txt").write_bytes("Frage: {question}\nAntwort (größer):".encode("latin-1"))
    (ws / "latin1.yaml").write_bytes("n: 2\n# größer\n".encode("latin-1"))
    (ws / "types.yaml").write_text("n: four\n")
    (ws / "list.yaml").write_text("n: [1, 2]\n")
    (ws / "lr.yaml").write_text("lr: fast\n")
    (ws / "unknown.yaml").write_text("temprature: 0.7\n")
    (ws / "empty.jsonl").write_text("")
    (ws / "nofield.jsonl").write_text(json.dumps({"q": "1+1", "answer": "2"}) + "\n")
    (ws / "nogold.jsonl").write_text(json.dumps({"question": "1+1", "answer": ""}) + "\n"
                                     + json.dumps({"question": "2+2", "answer": "4"}) + "\n")
    _import_sources(ws)
    (ws / "nan.yaml").write_text("lr: .nan\n")
    (ws / "inf.yaml").write_text("temperature: .inf\n")
    (ws / "runs-owned.yaml").write_text("- {name: dft, learner: dft, flags: {steps: 9}}\n")
    (ws / "runs-out.yaml").write_text("- {name: dft, learner: dft, flags: {out: elsewhere}}\n")
    (ws / "runs-seed.yaml").write_text("- {name: dft, learner: dft, flags: {seed: 3}}\n")
    (ws / "runs-data.yaml").write_text("- {name: dft, learner: dft, flags: {data: elsewhere}}\n")
    (ws / "runs-alias.yaml").write_text("- {name: dft, learner: rft}\n")
    (ws / "runs-foreign-flag.yaml").write_text("- {name: dft, learner: dft, flags: {beta: 0.5}}\n")
    (ws / "runs-unknown-flag.yaml").write_text("- {name: dft, learner: dft, flags: {max_steps: 9}}\n")
    (ws / "runs-nan.yaml").write_text("- {name: dft, learner: dft, flags: {lr: .nan}}\n")
    (ws / "runs-view.yaml").write_text("- {name: dft, learner: dft, flags: {view: pairs}}\n")
    (ws / "runs-lora.yaml").write_text("- {name: dft, learner: dft, flags: {lora_rank: 4, "
                                       "lora_target_modules: c_attn}}\n")
    (ws / "runs-twice.yaml").write_text("- {name: a, learner: dft}\n- {name: a, learner: sft}\n")
    (ws / "runs-rounds.yaml").write_text("- {name: x, learner: rft, rounds: 7}\n")
    (ws / "runs-scale.yaml").write_text("- {name: x, learner: rft, flags: {lr_scale: -1}}\n")
    (ws / "runs-key.yaml").write_text("- {name: x, learner: rft, colour: red}\n")
    (ws / "runs-not-list.yaml").write_text("name: x\n")
    (ws / "runs-flags-list.yaml").write_text("- {name: x, learner: rft, flags: [1, 2]}\n")
    (ws / "placeholder.txt").write_text("Q: {question}\nHint: {answer}\nA:")
    _compare_runs(ws, model)
    (ws / "broken-model").mkdir()
    (ws / "broken-model" / "config.json").write_text("{not json")
    shutil.copytree(tiny_model_dir, ws / "model")
    shutil.copytree(tiny_model_dir, ws / "truncated-weights")
    weights = ws / "truncated-weights" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    # a training run with a checkpoint: dft, 2 steps
    args = ["--data", str(ws / "ds"), "--out", str(ws / "run"), "--steps", "2", "--batch-size", "2",
            "--save-every", "1"]
    from offline_rl.train import main as train_main

    train_main(["--learner", "dft", *args])
    # a finished result of every other writer, which another run must not replace: the model's evaluation (recorded
    # in ws/run/evaluations.json), an inspection, an export, an import
    _commands()["eval"](["--model", str(ws / "run"), *[a.format(ws=ws) for a in FINISHED_EVAL]])
    _commands()["inspect"]([str(ws / "ds"), "--out", str(ws / "inspected")])
    _commands()["export"](["--format", "trl-sft", str(ws / "ds"), str(ws / "exported")])
    _commands()["import"](["--source", "world:train", "--prompts", "2", "--model", str(ws / "model"), "--out",
                           str(ws / "demos")])
    from rollout.files import release_unused

    release_unused()  # the in-process runs' holds end as the process of a real run would
    return ws


FINISHED_EVAL = ["--benchmarks", "test-id", "--problems", "1", "--k", "1", "--max-tokens", "4", "--backend", "hf",
                 "--out", "{ws}/eval"]


TRAIN = ["--data", "{ws}/ds", "--out", "{ws}/new"]
IMPORT = ["--out", "{ws}/new"]
ITERATE = ["--learner", "rft", "--out", "{ws}/new", "--backend", "hf"]
OPENAI = ["--out", "{ws}/new", "--prompts", "1", "--backend", "openai", "--endpoint"]
RAY = ["--out", "{ws}/new", "--prompts", "1", "--data-parallel-size", "2", "--ray-address"]
COMPARE = ["--out", "{ws}/new"]
SWEPT = [*COMPARE, "--sweep", "lr=1e-4,2e-4"]
CASES = [
    # collect: ranges, choices, types
    ("collect", ["--out", "{ws}/new", "--prompts", "-1"], "--prompts must be >= 1"),
    ("collect", ["--out", "{ws}/new", "--n", "0"], "--n must be >= 1"),
    ("collect", ["--out", "{ws}/new", "--top-p", "0"], "--top-p must be > 0"),
    ("collect", ["--out", "{ws}/new", "--temperature", "-1"], "--temperature must be >= 0"),
    ("collect", ["--out", "{ws}/new", "--shard-size", "0"], "--shard-size must be >= 1"),
    ("collect", ["--out", "{ws}/new", "--dtype", "float33"], "invalid choice: 'float33'"),
    ("collect", ["--out", "{ws}/new", "--kv-cache-gib", "0"], "--kv-cache-gib must be > 0"),
    ("collect", ["--out", "{ws}/new", "--n", "four"], "invalid int value: 'four'"),
    ("collect", ["--out", "{ws}/new", "--shard", "2/2"], "--shard"),
    ("collect", ["--prompts", "1"], "--out is required"),
    # collect: files
    ("collect", ["--out", "{ws}/new", "--source", "{ws}/missing.jsonl"], "not found"),
    ("collect", ["--out", "{ws}/new", "--source", "{ws}/latin1.csv"], "latin1.csv line 2: not UTF-8"),
    ("collect", ["--out", "{ws}/new", "--prompts", "1", "--template", "{ws}/latin1.txt"], "latin1.txt line 2: not UTF-8"),
    ("collect", ["--out", "{ws}/new", "--prompts", "1", "--template", "{ws}/foreign"], "cannot read"),
    ("collect", ["--out", "{ws}/new", "--prompts", "1", "--template", "nope"], "unknown template"),
    ("collect", ["--out", "{ws}/new", "--prompts", "1", "--template", "chat"], "chat template"),
    ("collect", ["--out", "{ws}/new", "--config", "{ws}/latin1.yaml"], "latin1.yaml line 2: not UTF-8"),
    ("collect", ["--out", "{ws}/new", "--config", "{ws}/types.yaml"], "invalid int value: 'four'"),
    ("collect", ["--out", "{ws}/new", "--config", "{ws}/list.yaml"], "n must be a single int"),
    ("collect", ["--out", "{ws}/new", "--config", "{ws}/unknown.yaml"], "unknown option: temprature"),
    ("collect", ["--out", "{ws}/new", "--source", "{ws}/empty.jsonl"], "no prompts"),
    ("collect", ["--out", "{ws}/new", "--source", "{ws}/nofield.jsonl", "--format", "plain"], "no field 'question'"),
    ("collect", ["--out", "{ws}/new", "--source", "{ws}/nogold.jsonl", "--strict"], "1 rows have no gold"),
    # collect: models and output directories
    ("collect", ["--out", "{ws}/new", "--model", "{ws}/nowhere"], "model not found"),
    ("collect", ["--out", "{ws}/new", "--model", "{ws}/broken-model"], "cannot load model"),
    ("collect", ["--out", "{ws}/new", "--model", "org/typo"], "neither a local directory nor in the Hugging Face cache"),
    ("collect", ["--out", "{ws}/file.txt", "--prompts", "1"], "is a file, not a directory"),
    ("collect", ["--out", "{ws}/foreign", "--prompts", "1"], "not made by collect"),
    ("collect", ["--out", "{ws}/run", "--prompts", "1"], "not made by collect"),
    ("collect", ["--out", "{ws}/ds", "--prompts", "1"], "collected with different"),
    ("collect", ["--out", "{ws}/truncated-manifest", "--prompts", "1"], "manifest.json is damaged"),
    ("collect", ["--out", "{ws}/collected", "--prompts", "1", "--temperature", "0.5", "--force"], "even --force"),
    # train
    ("train", [*TRAIN, "--batch-size", "0"], "--batch-size must be >= 1"),
    ("train", [*TRAIN, "--micro-batch-size", "0"], "--micro-batch-size must be >= 1"),
    ("train", [*TRAIN, "--log-every", "0"], "--log-every must be >= 1"),
    ("train", [*TRAIN, "--lr", "-1"], "--lr must be > 0"),
    ("train", [*TRAIN, "--epochs", "0"], "--epochs must be > 0"),
    ("train", [*TRAIN, "--steps", "-1"], "--steps must be >= 1"),
    ("train", [*TRAIN, "--config", "{ws}/lr.yaml"], "invalid float value: 'fast'"),
    ("train", [*TRAIN, "--learner", "nope"], "unknown learner 'nope'"),
    ("train", [*TRAIN, "--base-model", "{ws}/model"], "--base-model is read by learners anchored to a base model"),
    ("train", ["--learner", "dpo", "--data", "{ws}/all-wrong", "--out", "{ws}/new"], "no preference pairs for dpo: of 3 prompts 0 are all-right, 3 all-wrong"),
    ("train", [*TRAIN, "--learner", "dft", "--beta", "0.5"], "--beta is a flag of dpo, not of dft"),
    ("train", [*TRAIN, "--learner", "rft", "--clip-eps", "0.1"],
     "--clip-eps is a flag of ppo, grpo, psft, chord, not of rft"),
    # the learners of issue 35: a flag of another learner, data each cannot use
    ("train", [*TRAIN, "--learner", "psft", "--beta", "0.5"], "--beta is a flag of dpo, not of psft"),
    ("train", [*TRAIN, "--learner", "pear", "--topk", "5"], "--topk is a flag of eaft, not of pear"),
    ("train", [*TRAIN, "--learner", "eaft", "--snapshot-every", "2"],
     "--snapshot-every is a flag of psft, not of eaft"),
    ("train", [*TRAIN, "--learner", "sft", "--mismatch-correction", "token-tis"],
     "--mismatch-correction is a flag of ppo, iwsft, nft, grpo, not of sft"),
    ("train", [*TRAIN, "--learner", "eaft", "--topk", "1"], "--topk must be >= 2"),
    ("train", [*TRAIN, "--learner", "pear", "--level", "word"], "invalid choice: 'word'"),
    ("train", [*TRAIN, "--learner", "ppo", "--mismatch-correction", "token"], "invalid choice: 'token'"),
    ("train", [*TRAIN, "--learner", "grpo", "--mismatch-threshold", "1"], "--mismatch-threshold must be > 1"),
    ("train", ["--learner", "psft", "--data", "{ws}/all-wrong", "--out", "{ws}/new"], "pass rate 0.000 (0 accepted"),
    ("train", ["--learner", "eaft", "--data", "{ws}/all-wrong", "--out", "{ws}/new"], "pass rate 0.000 (0 accepted"),
    ("train", ["--learner", "pear", "--data", "{ws}/no-logprobs", "--out", "{ws}/new"], "needs the sampling policy's"),
    ("train", ["--learner", "pear", "--data", "{ws}/ds-topp", "--out", "{ws}/new"], "top-p 0.9"),
    ("train", ["--learner", "pear", "--data", "{ws}/demos", "--out", "{ws}/new"], "bin/rescore --logprobs-model"),
    ("train", ["--learner", "ppo", "--mismatch-correction", "token-mis", "--approximate-ratios", "--data",
               "{ws}/ds,{ws}/ds-other-model", "--out", "{ws}/new"], "recomputes the model that sampled the data"),
    ("train", ["--learner", "chord", "--data", "{ws}/ds", "--out", "{ws}/new"], "chord needs --expert-data"),
    ("train", ["--learner", "chord", "--data", "{ws}/ds", "--out", "{ws}/new", "--expert-data", "{ws}/all-wrong"],
     "holds no accepted rows to imitate"),
    ("train", ["--learner", "chord", "--data", "{ws}/ds", "--out", "{ws}/new", "--expert-data", "{ws}/incomplete"],
     "unfinished (complete: false)"),
    ("train", ["--learner", "chord", "--data", "{ws}/demos", "--out", "{ws}/new", "--expert-data", "{ws}/demos"],
     "holds demonstrations"),
    ("train", [*TRAIN, "--learner", "grpo", "--expert-data", "{ws}/demos"], "--expert-data is a flag of chord"),
    ("train", [*TRAIN, "--learner", "chord", "--expert-data", "{ws}/demos", "--mu-peak", "2"],
     "--mu-peak must be <= 1"),
    ("iterate", [*ITERATE, "--learner", "chord"], "chord needs --expert-data"),
    ("rescore", ["--data", "{ws}/ds", "--logprobs-model", "{ws}/model"], "holds samples"),
    ("rescore", ["--data", "{ws}/demos", "--logprobs-model", "{ws}/broken-model"], "cannot load model"),
    ("train", [*TRAIN, "--learner", "dpo", "--pairing", "best"], "invalid choice: 'best'"),
    # LoRA, precision: before any weight is read
    ("train", [*TRAIN, "--lora-rank", "4", "--lora-target-modules", "q_proj,c_attn"], "has no such module"),
    ("train", [*TRAIN, "--lora-rank", "4", "--lora-target-modules", "embed_tokens"], "embed_tokens is not a linear"),
    ("train", [*TRAIN, "--lora-dropout", "0.1"], "--lora-dropout sets a LoRA adapter: give --lora-rank too"),
    ("train", [*TRAIN, "--lora-rank", "4", "--init-from", "{ws}/run/checkpoints/step-1"],
     "under LoRA continues the schedule of a finished run"),
    ("train", [*TRAIN, "--precision", "fp8"], "invalid choice: 'fp8'"),
    ("iterate", [*ITERATE, "--lora-rank", "4", "--lora-target-modules", "c_attn"], "has no such module"),
    # ratio learners: exact or refused, on every dataset of --data
    ("train", ["--learner", "ppo", "--data", "{ws}/no-logprobs", "--out", "{ws}/new"], "needs the sampling policy's log-probs"),
    ("train", ["--learner", "ppo", "--data", "{ws}/ds-topp", "--out", "{ws}/new"], "top-p 0.9"),
    ("train", ["--learner", "iwsft", "--data", "{ws}/ds,{ws}/ds-topp", "--out", "{ws}/new"], "--approximate-ratios"),
    ("train", ["--learner", "adft", "--data", "{ws}/ds,{ws}/ds-t07", "--out", "{ws}/new"], "different temperatures"),
    ("train", ["--learner", "ppo", "--data", "{ws}/no-sampling", "--out", "{ws}/new"], "does not record the temperature"),
    ("train", ["--learner", "adft", "--data", "{ws}/ds-other-model", "--model", "{ws}/model", "--out", "{ws}/new"],
     "not by the initial model"),
    ("train", ["--learner", "dpo", "--reference", "behavior", "--data", "{ws}/ds,{ws}/ds-topp", "--out", "{ws}/new"],
     "top-p 0.9"),
    ("train", ["--learner", "dpo", "--reference", "behavior", "--data", "{ws}/ds-t07", "--out", "{ws}/new"],
     "temperature 1"),
    # ... and the sampling a dataset records is the plain tempered policy's, for every ratio learner
    ("train", ["--learner", "ppo", "--data", "{ws}/ds-top_k", "--out", "{ws}/new"], "sampled with top-k 20: a ratio to a truncated"),
    ("train", ["--learner", "grpo", "--data", "{ws}/ds-repetition_penalty", "--out", "{ws}/new"], "sampled with repetition penalty 1.05: its behaviour log-probs are of a penalised distribution"),
    ("train", ["--learner", "nft", "--data", "{ws}/ds-min_p", "--out", "{ws}/new"], "sampled with min-p 0.05: a ratio to a truncated"),
    ("train", ["--learner", "iwsft", "--data", "{ws}/ds,{ws}/ds-presence_penalty", "--out", "{ws}/new"], "ds-presence_penalty was sampled with presence penalty 0.5"),
    ("train", ["--learner", "adft", "--data", "{ws}/ds-frequency_penalty", "--out", "{ws}/new"], "sampled with frequency penalty 0.5"),
    ("train", ["--learner", "dpo", "--reference", "behavior", "--data", "{ws}/ds-repetition_penalty", "--out", "{ws}/new"], "sampled with repetition penalty 1.05"),
    ("train", ["--learner", "ppo", "--data", "{ws}/ds-presence_penalty", "--approximate-ratios", "--out", "{ws}/new"], "penalised distribution, not the model's at any temperature"),
    ("train", ["--learner", "rft", "--data", "{ws}/all-wrong", "--out", "{ws}/new"], "pass rate 0.000 (0 accepted of 6"),
    ("train", ["--learner", "dft", "--data", "{ws}/all-wrong", "--out", "{ws}/new"], "pass rate 0.000 (0 accepted of 6"),
    ("train", ["--data", "{ws}/none", "--out", "{ws}/new"], "not an offline dataset"),
    ("train", ["--data", "{ws}/truncated-manifest", "--out", "{ws}/new"], "manifest.json is damaged"),
    ("train", ["--data", "{ws}/truncated-shard", "--out", "{ws}/new"], "shard-00000.parquet is damaged"),
    ("train", ["--data", "{ws}/missing-shard", "--out", "{ws}/new"], "missing from data/"),
    ("train", [*TRAIN, "--model", "{ws}/truncated-weights"], "cannot load model"),
    ("train", [*TRAIN, "--model", "{ws}/broken-model"], "cannot load model"),
    ("train", ["--data", "{ws}/ds", "--out", "{ws}/foreign"], "not made by train"),
    ("train", ["--data", "{ws}/ds", "--out", "{ws}/ds2"], "not made by train"),
    ("train", ["--data", "{ws}/ds", "--out", "{ws}/file.txt"], "is a file, not a directory"),
    ("train", ["--learner", "rft", "--data", "{ws}/ds", "--out", "{ws}/run", "--steps", "2", "--batch-size", "2",
               "--save-every", "1", "--resume"], "different learner ('dft', now 'rft')"),
    ("train", ["--learner", "dft", "--data", "{ws}/ds", "--out", "{ws}/run", "--steps", "4", "--batch-size", "2",
               "--lr", "1e-3", "--save-every", "1", "--resume"], "lr (0.0002, now 0.001); schedule_steps (2, now 4); steps (2, now 4)"),
    ("train", ["--learner", "dft", "--data", "{ws}/ds2", "--out", "{ws}/run", "--steps", "2", "--batch-size", "2",
               "--save-every", "1", "--resume"], "different data"),
    ("train", ["--learner", "dft", "--data", "{ws}/ds", "--out", "{ws}/run", "--steps", "2", "--batch-size", "2"],
     "holds checkpoints"),
    # a finished result of another run, refused naming it (the same run may repeat, --force replaces: each command's
    # own tests)
    ("train", ["--learner", "asft", "--data", "{ws}/ds", "--out", "{ws}/run", "--steps", "2", "--batch-size", "2"],
     "holds a finished dft model trained on"),
    ("train", ["--data", "{ws}/ds2", "--out", "{ws}/run", "--steps", "2", "--batch-size", "2"],
     "made with other settings: data ("),
    ("train", ["--data", "{ws}/ds", "--out", "{ws}/run", "--steps", "3", "--batch-size", "2"], "steps (2, now 3)"),
    ("eval", ["--model", "{ws}/model", *FINISHED_EVAL], "{ws}/eval holds a finished evaluation of {ws}/run"),
    ("eval", ["--model", "{ws}/run", *FINISHED_EVAL, "--k", "2"], "made with other settings: k (1, now 2)"),
    ("eval", ["--model", "{ws}/run", *FINISHED_EVAL, "--problems", "2"], "problems (1, now 2)"),
    ("inspect", ["{ws}/ds", "--view", "all", "--out", "{ws}/inspected"], "holds a finished inspection of"),
    ("inspect", ["{ws}/ds2", "--out", "{ws}/inspected"], "made with other settings: data ("),
    ("inspect", ["{ws}/ds", "--model", "{ws}/run", "--out", "{ws}/inspected"], "made with other settings: model ("),
    ("export", ["--format", "trl-grpo", "{ws}/ds", "{ws}/exported"], "holds a finished trl-sft export of"),
    ("export", ["--format", "trl-sft", "{ws}/ds2", "{ws}/exported"], "made with other settings: data ("),
    ("import", ["--source", "world:train", "--prompts", "3", "--model", "{ws}/model", "--out", "{ws}/demos"],
     "holds a finished import of world:train made with other settings: prompts (2, now 3)"),
    ("import", ["--source", "world:valid", "--prompts", "2", "--model", "{ws}/model", "--out", "{ws}/demos"],
     "source ('world:train', now 'world:valid')"),
    ("collect", ["--out", "{ws}/demos", "--prompts", "1"], "was sampled with different"),
    ("collect", ["--out", "{ws}/eval", "--prompts", "1"], "not made by collect"),
    ("train", ["--data", "{ws}/ds", "--out", "{ws}/exported"], "not made by train"),
    # eval
    ("eval", ["--problems", "0"], "--problems must be >= 1"),
    ("eval", ["--k", "0"], "--k must be >= 1"),
    ("eval", ["--top-p", "1.5"], "--top-p must be <= 1"),
    ("eval", ["--benchmarks", "test-id,mmlu"], "unknown benchmark 'mmlu'"),
    ("eval", ["--benchmarks", "gsm8k"], "--benchmark-dir"),
    ("eval", ["--benchmarks", "gsm8k", "--benchmark-dir", "{ws}/nowhere"], "benchmark dir not found"),
    ("eval", ["--benchmarks", "aime24", "--benchmark-dir", "{ws}"], "holds no aime24_test.jsonl"),
    ("eval", ["--model", "{ws}/foreign"], "not a model checkpoint"),
    ("eval", ["--problems", "1", "--out", "{ws}/file.txt"], "is a file, not a directory"),
    ("eval", ["--problems", "1", "--out", "{ws}/foreign"], "not made by eval"),
    ("eval", ["--problems", "1", "--out", "/sys/kernel/offline-rl-eval"], "cannot create"),  # read-only, even for root
    ("train", [*TRAIN[:2], "--out", "/sys/kernel/offline-rl-train"], "cannot create"),
    ("eval", ["--problems", "1", "--template", "{ws}/latin1.txt"], "not UTF-8"),
    # compare
    ("compare", ["--out", "{ws}/new", "--steps", "0"], "--steps must be >= 1"),
    ("compare", ["--out", "{ws}/new", "--sweep", "lr=1e-4"], "at least two values"),
    ("compare", ["--out", "{ws}/new", "--sweep", "lr=1e-4,2e-4", "--select-on", "test-id"], "must not be one that reports it"),
    ("compare", ["--out", "{ws}/new", "--sweep", "seed=1,2"], "it cannot be swept"),
    ("compare", ["--out", "{ws}/new", "--sweep", "beta=0.1,0.2"], "sweep has an unknown option: beta"),
    ("compare", ["--out", "{ws}/new", "--backend", "openai", "--endpoint", "http://127.0.0.1:9"], "a server only serves its own model"),
    ("iterate", ["--out", "{ws}/new", "--backend", "openai", "--endpoint", "http://127.0.0.1:9"], "a server only serves its own model"),
    ("collect", ["--out", "{ws}/new", "--backend", "openai"], "--backend openai needs --endpoint"),
    ("eval", ["--out", "{ws}/new", "--backend", "openai"], "--backend openai needs --endpoint"),
    ("compare", ["--out", "{ws}/new", "--learners", "dft,ddpg"], "--learners 'ddpg': needs a name"),
    ("compare", ["--out", "{ws}/new", "--seeds", "0,one"], "--seeds"),
    ("compare", ["--out", "{ws}/new", "--benchmarks", "mmlu"], "unknown benchmark 'mmlu'"),
    ("compare", ["--out", "{ws}/new", "--runs", "{ws}/nope.yaml"], "no such file"),
    ("compare", ["--out", "{ws}/new", "--data", "{ws}/none"], "not an offline dataset"),
    ("compare", ["--out", "{ws}/new", "--data", "{ws}/incomplete"], "unfinished collection"),
    ("compare", ["--out", "{ws}/foreign"], "not made by compare"),
    # import: every source format read, or refused naming the file and line; field types checked
    ("import", [*IMPORT, "--source", "{ws}/latin1.jsonl"], "latin1.jsonl line 2: not UTF-8"),
    ("import", [*IMPORT, "--source", "{ws}/utf16.jsonl"], "utf16.jsonl line 1: not UTF-8"),
    ("import", [*IMPORT, "--source", "{ws}/nul.jsonl"], "nul.jsonl line 1: not a JSON object"),
    ("import", [*IMPORT, "--source", "{ws}/array.jsonl"], "array.jsonl line 1: not a JSON object"),
    ("import", [*IMPORT, "--source", "{ws}/lines.json"], "lines.json line 2: not valid JSON"),
    ("import", [*IMPORT, "--source", "{ws}/broken.json"], "broken.json line 1: not valid JSON"),
    ("import", [*IMPORT, "--source", "{ws}/object.json"], "expected a JSON list"),
    ("import", [*IMPORT, "--source", "{ws}/scalar.jsonl"], "row 1 is not an object"),
    ("import", [*IMPORT, "--source", "{ws}/list.jsonl"], "row 1 is not an object"),
    ("import", [*IMPORT, "--source", "{ws}/garbage.parquet"], "not a readable Parquet file"),
    ("import", [*IMPORT, "--source", "{ws}/garbage.csv"], "garbage.csv: not UTF-8"),
    ("import", [*IMPORT, "--source", "{ws}/null-question.jsonl"], "row 1: its question field 'problem' is NoneType"),
    ("import", [*IMPORT, "--source", "{ws}/list-question.jsonl"], "row 1: its question field 'problem' is list"),
    ("import", [*IMPORT, "--source", "{ws}/dict-solution.jsonl"], "row 1: its solution field 'solution' is dict"),
    ("import", [*IMPORT, "--source", "{ws}/number-question.jsonl"], "question field 'problem' is int"),
    ("import", [*IMPORT, "--source", "{ws}/empty-solution.jsonl"], "row 1: empty question or solution"),
    ("import", [*IMPORT, "--source", "{ws}/bool-gold.jsonl", "--format", "openr1"], "gold field 'answer' is bool"),
    ("import", [*IMPORT, "--source", "{ws}/list-gold.jsonl", "--format", "openr1"], "gold field 'answer' is list"),
    ("import", [*IMPORT, "--source", "{ws}/wrong-order.jsonl", "--format", "messages"], "row 1: messages need a user turn followed"),
    ("import", [*IMPORT, "--source", "{ws}/no-user.jsonl", "--format", "messages"], "need a user turn"),
    ("import", [*IMPORT, "--source", "{ws}/content-list.jsonl", "--format", "messages"], "content is not text"),
    ("import", [*IMPORT, "--source", "{ws}/openr1-mismatch.jsonl", "--format", "openr1"], "lists of one length"),
    ("import", [*IMPORT, "--source", "{ws}/dup-ids.jsonl"], "repeats the id 'q1'"),
    ("import", [*IMPORT, "--source", "{ws}/plain.jsonl", "--format", "plain", "--question-field", "q",
                "--solution-field", "s", "--answer-field", "a"], "row 1 has no field 'a'"),
    ("import", [*IMPORT, "--source", "world:train", "--template", "{ws}/placeholder.txt"], "unknown placeholder {answer}"),
    ("import", [*IMPORT, "--source", "world:train", "--scoring-deadline", "nan"], "--scoring-deadline must be a finite number"),
    ("import", [*IMPORT, "--source", "world:nope"], "unknown"),
    ("import", ["--source", "world:train"], "--out are required"),
    ("import", [*IMPORT, "--source", "{ws}/nowhere.jsonl"], "not found"),
    # non-finite numbers, from flags and from YAML
    ("train", [*TRAIN, "--lr", "nan"], "--lr must be a finite number"),
    ("train", [*TRAIN, "--config", "{ws}/nan.yaml"], "--lr must be a finite number"),
    ("collect", ["--out", "{ws}/new", "--config", "{ws}/inf.yaml"], "--temperature must be a finite number"),
    ("eval", ["--temperature", "inf"], "--temperature must be a finite number"),
    ("rescore", ["--data", "{ws}/ds", "--deadline", "nan"], "--deadline must be a finite number"),
    # incomplete and repeated data, for every reader
    ("train", ["--data", "{ws}/incomplete", "--out", "{ws}/new"], "unfinished (complete: false)"),
    ("train", ["--data", "{ws}/ds,{ws}/ds", "--out", "{ws}/new"], "named twice"),
    ("train", ["--data", "{ws}/ds,{ws}/../" + "{wsname}/ds", "--out", "{ws}/new"], "named twice"),
    ("export", ["--format", "trl-sft", "--data", "{ws}/incomplete", "--out", "{ws}/new"], "unfinished (complete: false)"),
    ("inspect", ["--out", "{ws}/new"], "DATA (or --data) is required"),
    ("inspect", ["{ws}/incomplete", "--out", "{ws}/new"], "unfinished (complete: false)"),
    ("inspect", ["{ws}/none", "--out", "{ws}/new"], "not an offline dataset"),
    ("inspect", ["{ws}/ds", "--view", "pairs", "--out", "{ws}/new"], "--view"),
    ("export", ["--format", "trl-sft", "--data", "{ws}/ds,{ws}/ds", "--out", "{ws}/new"], "named twice"),
    ("rescore", ["--data", "{ws}/incomplete"], "unfinished collection"),
    ("merge", ["--out", "{ws}/new", "--data", "{ws}/ds,{ws}/ds-t07"], "has sampling"),
    ("merge", ["--out", "{ws}/new", "--data", "{ws}/ds,{ws}/ds-other-model"], "has model"),
    ("merge", ["--out", "{ws}/new", "--data", "{ws}/ds-server-declared,{ws}/ds-server-undeclared"],
     "has logprobs_mode None"),
    ("iterate", [*ITERATE, "--sample-like", "{ws}/incomplete"], "not a dataset made by bin/collect"),
    # trackers
    ("train", [*TRAIN, "--report-to", "wandb"], "no W&B credentials"),
    ("compare", ["--out", "{ws}/new", "--report-to", "wandb"], "no W&B credentials"),
    ("iterate", [*ITERATE, "--report-to", "wandb"], "no W&B credentials"),
    # compare: every run's flags checked before any stage
    ("compare", ["--out", "{ws}/new", "--runs", "{ws}/runs-owned.yaml"], "steps is set by the comparison"),
    ("compare", ["--out", "{ws}/new", "--runs", "{ws}/runs-out.yaml"], "out is set by the comparison"),
    ("compare", ["--out", "{ws}/new", "--runs", "{ws}/runs-seed.yaml"], "seed is set by the comparison"),
    ("compare", ["--out", "{ws}/new", "--runs", "{ws}/runs-data.yaml"], "data is set by the comparison"),
    ("compare", ["--out", "{ws}/new", "--runs", "{ws}/runs-alias.yaml"], "may not be named 'dft'"),
    ("compare", ["--out", "{ws}/new", "--runs", "{ws}/runs-foreign-flag.yaml"], "unknown option: beta"),
    ("compare", ["--out", "{ws}/new", "--runs", "{ws}/runs-unknown-flag.yaml"], "unknown option: max_steps"),
    ("compare", ["--out", "{ws}/new", "--runs", "{ws}/runs-nan.yaml"], "--lr must be a finite number"),
    ("compare", ["--out", "{ws}/new", "--runs", "{ws}/runs-twice.yaml"], "the name 'a' is taken"),
    ("compare", ["--out", "{ws}/new", "--runs", "{ws}/runs-rounds.yaml"], "do not split into 7 rounds"),
    ("compare", ["--out", "{ws}/new", "--runs", "{ws}/runs-scale.yaml"], "lr_scale must be a positive number"),
    ("compare", ["--out", "{ws}/new", "--runs", "{ws}/runs-key.yaml"], "unknown key 'colour'"),
    ("compare", ["--out", "{ws}/new", "--runs", "{ws}/runs-not-list.yaml"], "must hold a list of runs"),
    ("compare", ["--out", "{ws}/new", "--runs", "{ws}/runs-flags-list.yaml"], "flags must be a mapping"),
    ("compare", ["--out", "{ws}/new", "--runs", "{ws}/latin1.yaml"], "not UTF-8"),
    ("compare", ["--out", "{ws}/new", "--seeds", "0,0"], "a seed is named twice"),
    ("compare", ["--out", "{ws}/new", "--learners", "sft,dft", "--reference", "ppo"],
     "--reference ppo: no run of that name in this comparison (runs: base, sft, dft)"),
    ("compare", ["--out", "{ws}/new", "--heldout-text", "{ws}/latin1.jsonl"], "--heldout-text"),
    ("compare", ["--out", "{ws}/new", "--learners", "sft", "--reference", "sft+rl"], "--reference sft+rl: no run"),
    ("compare", ["--out", "{ws}/new", "--after-rl-lr", "1e-4"], "--after-rl-lr sets the after-RL stage, which has no"),
    ("compare", ["--out", "{ws}/new", "--after-rl-n", "4"], "--after-rl-n sets the after-RL stage, which has no"),
    ("compare", ["--out", "{ws}/new", "--after-rl", "7", "--steps", "100"], "do not split into 7 rounds"),
    ("compare", ["--out", "{ws}/new", "--after-rl", "2", "--sweep", "lr=1e-4,2e-4"], "--after-rl with a sweep"),
    ("compare", ["--out", "{ws}/new", "--after-rl", "2", "--data", "{ws}/ds"], "was not made by bin/collect"),
    ("compare", ["--out", "{ws}/new", "--after-rl", "2", "--after-rl-n", "1"], "--after-rl-n must be >= 2"),
    ("compare", ["--out", "{ws}/new", "--report-only"], "holds no comparison's report"),
    ("compare", ["--out", "{ws}/foreign", "--report-only"], "holds no comparison's report"),
    ("eval", ["--out", "{ws}/new", "--heldout-text", "{ws}/latin1.jsonl"], "not UTF-8 text"),
    ("eval", ["--out", "{ws}/new", "--heldout-text", "{ws}/nul.jsonl"], "is not text (it holds NUL bytes)"),
    ("eval", ["--out", "{ws}/new", "--heldout-text", "{ws}/plain.jsonl"], "line 1: needs a text field"),
    ("eval", ["--out", "{ws}/new", "--heldout-text", "{ws}/missing.txt"], "no such file"),
    ("train", ["--data", "{ws}/ds", "--out", "{ws}/new", "--heldout-every", "2", "--heldout-text", "{ws}/nul.jsonl"],
     "is not text"),
    ("compare", ["--out", "{ws}/new", "--top-p", "0"], "--top-p must be > 0"),
    ("compare", ["--out", "{ws}/new", "--learners", "dft", "--config", "{ws}/nan.yaml"], "--lr must be a finite number"),
    # iterate: the rounds' own settings, the learner's flags and view, checked before any round
    ("iterate", [*ITERATE, "--save-every", "1"], "--save-every is set by bin/iterate"),
    ("iterate", [*ITERATE, "--init-from", "{ws}/run"], "--init-from is set by bin/iterate"),
    ("iterate", [*ITERATE, "--resume"], "--resume is set by bin/iterate"),
    ("iterate", [*ITERATE, "--beta", "0.2"], "--beta is a flag of dpo, not of rft"),
    ("iterate", [*ITERATE, "--view", "groups"], "rft trains on the accepted view, not on groups"),
    ("iterate", [*ITERATE, "--learner", "dpo", "--view", "groups"], "dpo trains on the pairs view"),
    ("iterate", [*ITERATE, "--lr", "nan"], "--lr must be a finite number"),
    ("iterate", [*ITERATE, "--steps", "3", "--rounds", "2"], "do not split evenly into 2 rounds"),
    ("iterate", [*ITERATE, "--learner", "ddpg"], "unknown learner"),
    ("iterate", [*ITERATE, "--prompts-per-round", "5000"], "exceeds the 3000 prompts"),
    ("iterate", [*ITERATE, "--benchmarks", "mmlu", "--eval-every", "1"], "unknown benchmark 'mmlu'"),
    ("iterate", [*ITERATE, "--sample-like", "{ws}/ds"], "not a dataset made by bin/collect"),
    ("iterate", [*ITERATE, "--config", "{ws}/nan.yaml"], "--lr must be a finite number"),
    # iterate: a flag each round sets itself, a batch of no known size, a budget that trains nothing
    ("iterate", [*ITERATE, "--data", "{ws}/ds"], "--data is set by bin/iterate itself each round; --sample-like"),
    ("iterate", [*ITERATE, "--prompts", "8"], "--prompts is set by bin/iterate itself each round; --prompts-per-round"),
    ("iterate", [*ITERATE, "--whole-batches", "--steps", "4"], "set by bin/iterate itself each round; --round-batches"),
    ("iterate", [*ITERATE, "--data-parallel-size", "2"], "--data-parallel-size is set by bin/iterate"),
    ("iterate", [*ITERATE, "--name", "x", "--eval-every", "1"], "--name is set by bin/iterate itself each round"),
    ("iterate", [*ITERATE, "--learner", "grpo", "--round-batches"], "--round-batches needs --steps"),
    ("iterate", [*ITERATE, "--learner", "grpo", "--round-batches", "--steps", "4", "--n", "1"], "the groups view"),
    ("iterate", [*ITERATE, "--learner", "dpo", "--n", "1"], "two or more samples per prompt; no round would train"),
    # compare: an evaluation's own settings are each stage's
    ("compare", ["--out", "{ws}/new", "--seed", "1"], "--seed is set by bin/compare itself for each evaluation"),
    ("compare", ["--out", "{ws}/new", "--name", "x"], "--name is set by bin/compare itself for each evaluation"),
    # merge
    ("merge", ["--out", "{ws}/ds", "--data", "{ws}/ds"], "one of the inputs"),
    ("merge", ["--out", "{ws}/ds2", "--data", "{ws}/ds"], "not made by merge"),
    ("merge", ["--out", "{ws}/new", "--data", "{ws}/ds,{ws}/ds"], "named twice"),
    ("merge", ["--out", "{ws}/new", "--data", "{ws}/ds,{ws}/missing"], "not an offline dataset"),
    ("merge", ["--out", "{ws}/new", "--data", "{ws}/truncated-manifest"], "damaged"),
    ("merge", ["--data", "{ws}/ds"], "--out"),
    # rescore
    ("rescore", ["--data", "{ws}/missing"], "no such directory"),
    ("rescore", ["--data", "{ws}/foreign"], "not an offline dataset"),
    ("rescore", ["--data", "{ws}/truncated-manifest"], "unreadable manifest"),
    ("rescore", ["--data", "{ws}/missing-shard"], "missing from data/"),
    ("rescore", ["--data", "{ws}/truncated-shard"], "unreadable shard"),
    ("rescore", ["--data", "{ws}/ds", "--deadline", "0"], "--deadline must be > 0"),
    # compare: every stage's input checked before the first (issue 37): runs' data, batches, sweeps, selection split
    ("compare", [*COMPARE, "--runs", "{ws}/runs-data-missing.yaml"], "nowhere: no such dataset directory"),
    ("compare", [*COMPARE, "--runs", "{ws}/runs-data-model.yaml"], "is a model, not an offline dataset"),
    ("compare", [*COMPARE, "--runs", "{ws}/runs-data-upward.yaml"], "is not an offline dataset"),
    ("compare", [*COMPARE, "--runs", "{ws}/runs-data-unfinished.yaml"], "unfinished (complete: false)"),
    ("compare", [*COMPARE, "--runs", "{ws}/runs-ppo-on-demos.yaml"], "run 'ppo': ppo needs the sampling"),
    ("compare", [*COMPARE, "--runs", "{ws}/runs-dpo-on-demos.yaml"], "only demonstrations"),
    ("compare", [*COMPARE, "--runs", "{ws}/runs-ppo-on-import.yaml"], "demos holds demonstrations"),
    ("compare", [*COMPARE, "--data", "{ws}/demos", "--learners", "dpo"], "no preference pairs"),
    ("compare", [*COMPARE, "--data", "{ws}/ds-topp", "--learners", "ppo"], "top-p 0.9"),
    ("compare", [*COMPARE, "--runs", "{ws}/runs-view.yaml"], "dft trains on the accepted or all view"),
    ("compare", [*COMPARE, "--runs", "{ws}/runs-lora.yaml"], "run 'dft': --lora-target-modules c_attn"),
    ("compare", [*COMPARE, "--runs", "{ws}/runs-micro.yaml"], "32 is not a multiple of --micro-batch-size 3"),
    ("compare", [*COMPARE, "--runs", "{ws}/runs-sweep-micro.yaml", "--batch-size", "8"], "'sweep@micro_batch_size=5'"),
    ("compare", [*COMPARE, "--learners", "rft", "--sweep", "micro_batch_size=3,4"], "multiple of --micro-batch-size 3"),
    ("compare", [*COMPARE, "--runs", "{ws}/runs-sweep-and-flag.yaml"], "is set in its flags and lr swept by its own"),
    ("compare", [*COMPARE, "--runs", "{ws}/runs-sweep-and-scale.yaml"], "lr_scale is set in its flags"),
    ("compare", [*COMPARE, "--runs", "{ws}/runs-lr-flag.yaml", "--sweep", "lr=1e-4,2e-4"], "swept by --sweep"),
    ("compare", [*COMPARE, "--runs", "{ws}/runs-sweep-twice.yaml"], "names the value 0.0001 twice"),
    ("compare", [*COMPARE, "--runs", "{ws}/runs-sweep-null.yaml"], "sweep lr has an empty value"),
    ("compare", [*COMPARE, "--sweep", "lr=1e-4,1e-4"], "names the value 0.0001 twice"),
    ("compare", [*COMPARE, "--sweep", "lr=1e-4,,2e-4"], "an empty value"),
    ("compare", [*COMPARE, "--sweep", "lr=1e-4,2e-4,"], "an empty value"),
    ("compare", [*SWEPT, "--lr", "3e-4"], "--lr is swept by --sweep lr=1e-4,2e-4"),
    ("compare", [*SWEPT, "--select-on", "nope"], "--select-on nope: unknown benchmark"),
    ("compare", [*SWEPT, "--select-on", ""], "--select-on is empty"),
    ("compare", [*SWEPT, "--select-on", "valid,test-ood"], "names several splits"),
    ("compare", [*SWEPT, "--select-on", "world:test-id"], "reported --benchmarks (as test-id)"),
    ("compare", [*SWEPT, "--select-on", "train"], "the split the training data"),
    ("compare", [*SWEPT, "--data", "{ws}/ds", "--learners", "rft", "--select-on", "world:train"], "ds was drawn from"),
    ("compare", [*COMPARE, "--select-on", "valid"], "nothing is swept"),
    ("compare", [*COMPARE, "--data", "{ws}/ds", "--prompts", "5"], "drop --prompts"),
    ("compare", [*COMPARE, "--lr", "1e308"], "--lr must be <= 1"),
    ("compare", [*COMPARE, "--runs", "{ws}/runs-scale-huge.yaml"], "--lr must be <= 1"),
    ("compare", [*COMPARE, "--learners", "asft", "--sweep", "kl-coef=0.1,1e308"], "--kl-coef must be <= 1000"),
    # extreme values that make a loss non-finite at once, refused before any loading
    ("train", [*TRAIN, "--learner", "asft", "--kl-coef", "1e308"], "--kl-coef must be <= 1000"),
    ("train", [*TRAIN, "--learner", "adft", "--anchor-coef", "1e308"], "--anchor-coef must be <= 1000"),
    ("train", [*TRAIN, "--learner", "dpo", "--beta", "1e308"], "--beta must be <= 1000"),
    ("train", [*TRAIN, "--learner", "prob", "--alpha", "1e308"], "--alpha must be <= 1000"),
    ("train", [*TRAIN, "--learner", "iwsft", "--max-weight", "1e308"], "--max-weight must be <= 1000"),
    ("train", [*TRAIN, "--lr", "1e308"], "--lr must be <= 1"),
    ("train", [*TRAIN, "--weight-decay", "1e308"], "--weight-decay must be <= 1"),
    ("train", [*TRAIN, "--epochs", "1e308"], "--epochs must be <= 1000"),
    ("iterate", [*ITERATE, "--lr", "1e308"], "--lr must be <= 1"),
    ("iterate", [*ITERATE, "--learner", "asft", "--kl-coef", "1e308"], "--kl-coef must be <= 1000"),
    ("iterate", [*ITERATE, "--micro-batch-size", "3"], "--batch-size 16 is not a multiple of --micro-batch-size 3"),
    # inspect: one dataset, named once
    ("inspect", ["{ws}/ds", "--data", "{ws}/ds2", "--out", "{ws}/new"], "and --data both name the dataset"),
    ("inspect", ["{ws}/ds", "--data={ws}/ds2", "--out", "{ws}/new"], "both name the dataset"),
    # make-base
    ("make-base", ["--out", "{ws}/new", "--steps", "0"], "--steps must be >= 1"),
    ("make-base", ["--out", "{ws}/foreign"], "not made by make-base"),
    # collect --backend openai: the endpoint a URL, and a server that answers as vLLM does, before any write;
    # {server}/CASE answers as tests/test_server.py's WRONG_ANSWERS[CASE] says
    ("collect", [*OPENAI, "localhost:8000"], "--endpoint 'localhost:8000' is not a server's URL"),
    ("collect", [*OPENAI, "htp://127.0.0.1:8000"], "is not a server's URL"),
    ("collect", [*OPENAI, "http://:8000"], "is not a server's URL"),
    ("collect", [*OPENAI, "http://127.0.0.1:port"], "is not a server's URL"),
    ("eval", ["--out", "{ws}/new", "--backend", "openai", "--endpoint", "127.0.0.1:8000"], "is not a server's URL"),
    ("eval", ["--out", "{ws}/new", "--problems", "1", "--backend", "openai", "--endpoint", "{server}/models-404"], "/v1/models answered HTTP 404"),
    ("collect", [*OPENAI, "http://127.0.0.1:9"], "http://127.0.0.1:9/v1/models: connection refused"),
    ("collect", [*OPENAI, "{server}/models-500"], "answered HTTP 500: 'Internal Server Error' (retried 2 times)"),
    ("collect", [*OPENAI, "{server}/models-bad-json"], "/v1/models answered something, not JSON"),
    ("collect", [*OPENAI, "{server}/models-html"], "/v1/models answered an HTML page, not JSON: '<!DOCTYPE"),
    ("collect", [*OPENAI, "{server}/models-not-a-list"], "not a list of models"),
    ("collect", [*OPENAI, "{server}/models-two-others"], "the server serves a, b, not"),
    ("collect", [*OPENAI, "{server}/models-404"], "/v1/models answered HTTP 404"),
    ("collect", [*OPENAI, "{server}/no-index"], "/no-index/v1/completions answered a choice without 'index'"),
    ("collect", [*OPENAI, "{server}/completions-html"], "/v1/completions answered an HTML page, not JSON"),
    ("collect", [*OPENAI, "{server}/completions-not-json"], "/v1/completions answered something, not JSON: 'OK'"),
    ("collect", [*OPENAI, "{server}/completions-list"], "not a completion"),
    ("collect", [*OPENAI, "{server}/token-ids-strings"], "token_ids [\"5\"], not a list of token ids"),
    ("collect", [*OPENAI, "{server}/text-number"], "a choice whose text is 5, not a string"),
    ("collect", [*OPENAI, "{server}/logprobs-strings"], "not numbers"),
    ("collect", [*OPENAI, "{server}/no-token-ids"], "without token ids"),
    ("collect", [*OPENAI, "{server}/two-choices"], "2 choices, not n = 1"),
    ("collect", [*OPENAI, "{server}/completions-400"], "/completions-400/v1/completions answered HTTP 400"),
    # collect --ray-address: reached within seconds (a closed port), before any write; Ray's logs not shown
    ("collect", [*RAY, "127.0.0.1:9"], "--ray-address 127.0.0.1:9: no Ray cluster at"),
    ("collect", [*RAY, "ray://127.0.0.1:9"], "no Ray cluster at 127.0.0.1:9 (connection refused)"),
    ("collect", [*RAY, "head-node"], "'head-node' is not local, auto, HOST:PORT or ray://HOST:PORT"),
]


@pytest.fixture(scope="module")
def server():
    """A stand-in vLLM server on 127.0.0.1 that answers wrongly in each way the rows name, stopped at the end."""
    from tests.test_server import wrong_server

    with wrong_server() as url:
        yield url


@pytest.mark.parametrize("command,args,fragment", CASES, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(ws, server, capfd, monkeypatch, command, args, fragment):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # org/typo: refused at once, not after the hub client's retries
    before = snapshot(ws)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(ws / "no-netrc"))
    _commands()  # every command's module imported before the clock: the time limit is the refusal's
    start = time.time()
    code, stderr = run_command(command, [a.format(ws=ws, wsname=ws.name, server=server) for a in args], capfd)
    assert_one_line(code, stderr, fragment.replace("{ws}", str(ws)))
    assert snapshot(ws) == before
    if command in ("compare", "iterate") or "--ray-address" in args:  # refused before any stage, engine, cluster
        assert time.time() - start < 5 and "engine" not in stderr.lower()


@pytest.mark.parametrize("command, args", [("train", TRAIN), ("iterate", ITERATE)])
def test_a_precision_contradicting_accelerates_is_one_line(ws, capfd, monkeypatch, command, args):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # as accelerate launch exports its config's
    before = snapshot(ws)
    code, stderr = run_command(command, [a.format(ws=ws) for a in args] + ["--precision", "fp16"], capfd)
    assert_one_line(code, stderr, "--precision fp16 contradicts accelerate's mixed_precision bf16")
    assert snapshot(ws) == before


def test_the_table_covers_every_writer_and_the_listed_classes():
    assert len(CASES) >= 220
    assert {c for c, _, _ in CASES} >= {"collect", "train", "eval", "compare", "merge", "rescore"}


# ---------------------------------------------------------------- a full disk

def _disk_full(path):
    return OSError(errno.ENOSPC, "No space left on device", str(path))


def _second_shard_fills_the_disk(monkeypatch):
    """Every dataset write fails at its second shard; returns the real writer, to put back."""
    import rollout.dataset

    real = rollout.dataset.atomic_write_bytes

    def second_shard_fails(path, data):
        if path.name == "shard-00001.parquet":
            raise _disk_full(path)
        real(path, data)

    monkeypatch.setattr(rollout.dataset, "atomic_write_bytes", second_shard_fails)
    return real


def test_disk_full_during_collect_is_one_line_and_resumes(tmp_path, tiny_model_dir, capfd, monkeypatch):
    import rollout.dataset
    from rollout.dataset import read_manifest, read_rows

    out = tmp_path / "data"
    args = ["--out", str(out), "--model", str(tiny_model_dir), "--backend", "hf", "--prompts", "4", "--n", "1",
            "--max-tokens", "8", "--shard-size", "2"]
    real = _second_shard_fills_the_disk(monkeypatch)
    code, stderr = run_command("collect", args, capfd)
    assert_fails_with(code, stderr, "no space left on device", "shard-00001.parquet")
    manifest = read_manifest(out)
    assert manifest["complete"] is False and manifest["shards"] == ["shard-00000.parquet"]  # nothing to trust
    assert not (out / "data" / "shard-00001.parquet").exists()

    monkeypatch.setattr(rollout.dataset, "atomic_write_bytes", real)
    code, _ = run_command("collect", args, capfd)  # space again: the same command resumes
    assert code == 0
    assert read_manifest(out)["complete"] is True
    assert sorted(r["prompt_id"] for r in read_rows(out, ["prompt_id"])) == [p.id for p in world.load_split("train")[:4]]


def test_disk_full_during_the_final_save_of_train_leaves_no_model(tmp_path, tiny_model_dir, capfd, monkeypatch):
    from transformers import PreTrainedModel

    writer = DatasetWriter(tmp_path / "ds", {"model": str(tiny_model_dir)})
    writer.write_shard(make_rows())
    writer.finish()
    real = PreTrainedModel.save_pretrained

    def fails_midway(self, directory, *args, **kwargs):
        real(self, directory, *args, **kwargs)  # the weights' bytes are written, then the disk fills
        raise _disk_full(Path(directory) / "model.safetensors")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", fails_midway)
    out = tmp_path / "run"
    code, stderr = run_command("train", ["--learner", "rft", "--data", str(tmp_path / "ds"), "--out", str(out),
                                         "--steps", "1", "--batch-size", "2"], capfd)
    assert_fails_with(code, stderr, "no space left on device")
    assert not (out / "config.json").exists() and not (out / "model.safetensors").exists()  # does not load as a model
    assert not (out / "train_summary.json").exists()  # nor count as a finished training


def test_disk_full_during_eval_leaves_no_results(tmp_path, tiny_model_dir, capfd, monkeypatch):
    import offline_rl.evaluate

    def fails(path, generations):
        raise _disk_full(path)

    monkeypatch.setattr(offline_rl.evaluate, "write_generations", fails)
    code, stderr = run_command("eval", ["--model", str(tiny_model_dir), "--benchmarks", "test-id", "--problems", "2",
                                        "--k", "1", "--max-tokens", "4", "--backend", "hf", "--out",
                                        str(tmp_path / "ev")], capfd)
    assert_fails_with(code, stderr, "no space left on device", "generations.parquet")
    assert not (tmp_path / "ev" / "results.json").exists()  # compare would not take it as finished


def test_disk_full_during_import_is_one_line_and_the_same_command_resumes(tmp_path, tiny_model_dir, capfd, monkeypatch):
    import rollout.dataset
    from rollout.dataset import read_manifest, read_rows

    args = ["--source", "world:train", "--model", str(tiny_model_dir), "--prompts", "6", "--shard-size", "2"]
    whole = tmp_path / "whole"
    assert run_command("import", [*args, "--out", str(whole)], capfd)[0] == 0
    out = tmp_path / "data"
    real = _second_shard_fills_the_disk(monkeypatch)
    code, stderr = run_command("import", [*args, "--out", str(out)], capfd)
    assert_fails_with(code, stderr, "no space left on device", "run the same command again")
    assert not (out / "manifest.json").exists()  # nothing half-imported passes for a dataset
    monkeypatch.setattr(rollout.dataset, "atomic_write_bytes", real)
    assert run_command("import", [*args, "--out", str(out)], capfd)[0] == 0  # space again: the same command
    assert read_rows(out) == read_rows(whole) and read_manifest(out)["counts"] == read_manifest(whole)["counts"]
