"""bin/import: every field layout into the dataset contract; views; learners on demonstrations, or refused."""

import csv
import json
from pathlib import Path

import datasets
import pytest

from offline_rl.embedded import world
from rollout import demonstrations
from rollout.dataset import COLUMNS, read_manifest, shard_files
from rollout.rescore import rescore
from rollout.runtime import CommandContext, UsageError, run

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "benchmarks"
SOLUTION = "We add 2 and 3 to get 5. The answer is \\boxed{5}."
WRONG = "We add 2 and 3 to get 6. The answer is \\boxed{6}."


def _import(tmp_path, model, source, *args) -> tuple[dict, list[dict]]:
    out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
    manifest = demonstrations.main(["--source", str(source), "--out", str(out), *args],
                                   context=CommandContext(world=world.load_split, default_model=str(model)))
    table = datasets.load_dataset("parquet", data_files=[str(f) for f in shard_files(out)], split="train")
    assert table.column_names == COLUMNS  # the full contract, readable by anyone's parquet loader
    rows = table.to_list()
    assert all(r["behavior_logprobs"] is None and r["origin"] == "demonstration" for r in rows)  # null, not []
    assert read_manifest(out) == manifest and manifest["complete"] and manifest["kind"] == "demonstrations"
    return manifest, rows


def _write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


LAYOUTS = [  # (format, file name, a right row, the same row with a wrong final answer)
    ("numina", "numina.parquet", {"problem": "2+3?", "solution": SOLUTION,
                                  "messages": [{"role": "user", "content": "2+3?"}]}, None),
    ("metamath", "metamath.jsonl", {"query": "2+3?", "response": "2 + 3 = 5\nThe answer is: 5"}, None),
    ("math", "math.jsonl", {"problem": "2+3?", "solution": SOLUTION}, None),
    ("gsm8k", "gsm8k.jsonl", {"question": "2+3?", "answer": "2+3=<<2+3=5>>5\n#### 5"}, None),
    ("openr1", "openr1.jsonl", {"problem": "2+3?", "solution": SOLUTION, "answer": "5"},
     {"problem": "2+3?", "solution": WRONG, "answer": "5"}),
    ("messages", "chat.jsonl", {"messages": [{"role": "user", "content": "2+3?"},
                                             {"role": "assistant", "content": SOLUTION}], "answer": "5"},
     {"messages": [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": WRONG}], "answer": "5"}),
]


@pytest.mark.parametrize("fmt, name, right, wrong", LAYOUTS, ids=[layout[0] for layout in LAYOUTS])
def test_every_layout_round_trips_with_answer_marking(tmp_path, tiny_model_dir, fmt, name, right, wrong):
    rows = [right, right] + ([wrong] if wrong else [])
    manifest, imported = _import(tmp_path, tiny_model_dir, _write(tmp_path / name, rows), "--template", "world")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert [r["reward"] for r in imported] == [1.0, 1.0] + ([0.0] if wrong else [])  # kept, marked
    assert manifest["counts"]["disagreeing"] == (1 if wrong else 0) and manifest["counts"]["responses"] == len(rows)
    assert imported[0]["gold"] == "5" and imported[0]["pred"] == "5"
    first = imported[0]
    assert first["prompt"] == "Question: 2+3?\nAnswer:"
    assert first["response_token_ids"][-1] == tokenizer.eos_token_id  # EOS after the solution
    assert tokenizer.decode(first["response_token_ids"][:-1]).strip() == first["response"].strip()
    assert len({r["prompt_id"] for r in imported}) == len(rows)


def test_plain_layout_csv_and_the_worlds_reference_solutions(tmp_path, tiny_model_dir):
    source = _write(tmp_path / "plain.csv", [{"q": "2+3?", "worked": SOLUTION, "gold": "5"}])
    manifest, rows = _import(tmp_path, tiny_model_dir, source, "--format", "plain", "--question-field", "q",
                             "--solution-field", "worked", "--answer-field", "gold", "--template", "world")
    assert rows[0]["reward"] == 1.0 and rows[0]["question"] == "2+3?"
    manifest, rows = _import(tmp_path, tiny_model_dir, "world:train", "--prompts", "50")
    problems = world.load_split("train")[:50]
    assert [r["prompt_id"] for r in rows] == [p.id for p in problems] and all(r["reward"] == 1.0 for r in rows)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)  # the tokens sft used to build from the world
    assert rows[0]["response_token_ids"] == tokenizer(" " + problems[0].solution)["input_ids"] + [tokenizer.eos_token_id]


def test_the_worlds_reference_solutions_of_a_collections_own_prompts(tmp_path, tiny_model_dir):
    """--prompts-of: the demonstrations of exactly the prompts a dataset holds (compare's sft against dft on the same
    prompts), wherever in the split they lie; prompts the source does not hold are refused."""
    from rollout.dataset import DatasetWriter
    from tests.conftest import make_rows

    ids = ["train-00007", "train-00002", "train-02999"]
    collected = DatasetWriter(tmp_path / "collected", {"model": str(tiny_model_dir)})
    collected.write_shard([{**r, "prompt_id": ids[int(r["prompt_id"][-1])]} for r in make_rows()])
    collected.finish()
    manifest, rows = _import(tmp_path, tiny_model_dir, "world:train", "--prompts-of", str(tmp_path / "collected"))
    assert [r["prompt_id"] for r in rows] == sorted(ids)  # the split's order, one row each
    assert manifest["source"]["prompts_of"] == str(tmp_path / "collected")
    with pytest.raises(UsageError, match="holds 3 prompts that world:test-id does not"):
        _import(tmp_path, tiny_model_dir, "world:test-id", "--prompts-of", str(tmp_path / "collected"))


def test_shared_benchmarks_as_real_schema_demonstrations(tmp_path, tiny_model_dir):
    if not SHARED.is_dir():
        pytest.skip("../shared/data/benchmarks is not beside this checkout")
    manifest, rows = _import(tmp_path, tiny_model_dir, SHARED / "math500_test.jsonl", "--prompts", "40",
                             "--max-model-len", "100000")
    assert manifest["source"]["format"] == "openr1"  # problem, solution, answer: the answer field is the gold
    assert manifest["counts"]["accepted"] >= 38  # MATH solutions box their own answers
    manifest, rows = _import(tmp_path, tiny_model_dir, SHARED / "gsm8k_test.jsonl", "--prompts", "40",
                             "--max-model-len", "100000")
    assert manifest["source"]["format"] == "gsm8k" and manifest["counts"]["accepted"] == 40
    out = tmp_path / f"out-{len(list(tmp_path.iterdir())) - 1}"
    summary = rescore(out)  # no --extraction: the dataset's own (qwen), so every verdict and count stays
    assert summary["extraction"] == "qwen" and summary["changed_rewards"] == 0
    assert read_manifest(out)["counts"] == manifest["counts"] and read_manifest(out)["extraction"] == "qwen"
    manifest, _ = _import(tmp_path, tiny_model_dir, SHARED / "gsm8k_test.jsonl", "--prompts", "40")
    assert manifest["counts"]["too_long"] > 0 and manifest["counts"]["responses"] + manifest["counts"]["too_long"] == 40


@pytest.mark.parametrize("rows, args, message", [
    ([{"title": "x", "body": "y"}], [], "no known demonstration layout"),
    ([{"problem": "2+3?", "solution": SOLUTION}, {"problem": "x"}], ["--format", "math"], "row 1 has no field 'solution'"),
    ([{"q": "x"}], ["--format", "plain", "--question-field", "q"], "--solution-field"),
    ([{"messages": [{"role": "user", "content": "x"}]}], ["--format", "messages"], "an assistant turn"),
])
def test_bad_layouts_are_one_line_and_exit_2(tmp_path, tiny_model_dir, capfd, rows, args, message):
    source = _write(tmp_path / "bad.jsonl", rows)
    argv = ["--source", str(source), "--out", str(tmp_path / "out"), "--model", str(tiny_model_dir), *args]
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(lambda _: demonstrations.main(argv, context=CommandContext(world=world.load_split)), "import")
    err = capfd.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert message in [line for line in err.splitlines() if line.strip()][-1]


@pytest.fixture(scope="module")
def world_demonstrations(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("demos") / "data"
    demonstrations.main(["--source", "world:train", "--out", str(out), "--prompts", "16"],
                        context=CommandContext(world=world.load_split, default_model=str(tiny_model_dir)))
    return out


@pytest.mark.parametrize("learner, args, message", [
    ("ppo", [], "ppo needs the sampling policy's log-probs"),
    ("iwsft", [], "holds demonstrations"),
    ("nft", [], "holds demonstrations"),
    ("dpo", ["--view", "all"], "dpo trains on the pairs view, not on all"),
    ("dpo", [], "no preference pairs"),
    ("sft", ["--view", "pairs"], "sft trains on the accepted or all view"),
])
def test_impossible_combinations_are_refused_in_one_line(tmp_path, world_demonstrations, capfd, learner, args, message):
    from offline_rl import train

    argv = ["--learner", learner, "--data", str(world_demonstrations), "--out", str(tmp_path / "run"), *args]
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(lambda _: train.main(argv), "train")
    err = capfd.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    assert message in [line for line in err.splitlines() if line.strip()][-1]
    assert not (tmp_path / "run").exists()


def test_sft_and_dft_train_on_demonstrations_and_on_both_kinds_mixed(tmp_path, world_demonstrations, hf_dataset):
    from offline_rl import train

    summary = train.main(["--learner", "dft", "--data", str(world_demonstrations), "--out", str(tmp_path / "dft"),
                          "--steps", "2", "--batch-size", "4", "--weighting", "sequence", "--min-weight", "0.1"])
    assert summary["examples"] == 16
    config = json.loads((tmp_path / "dft" / "train_config.json").read_text())
    assert config["view"] == "accepted"
    mixed = f"{world_demonstrations},{hf_dataset}"
    summary = train.main(["--learner", "sft", "--data", mixed, "--out", str(tmp_path / "sft"), "--steps", "1",
                          "--batch-size", "4", "--view", "all", "--model", str(read_manifest(hf_dataset)["model"])])
    assert summary["examples"] == 16 + len(datasets.load_dataset("parquet", data_files=[
        str(f) for f in shard_files(hf_dataset)], split="train").filter(lambda r: len(r["response_token_ids"]) > 0))
    with pytest.raises(UsageError, match="holds demonstrations"):
        train.main(["--learner", "adft", "--data", mixed, "--out", str(tmp_path / "adft")])


def test_a_model_scores_demonstrations_and_pear_divides_by_it(tmp_path, world_demonstrations, tiny_model_dir, capsys):
    """bin/rescore --logprobs-model stores the model's log-probs of every demonstration token and records it; pear
    (a ratio learner) then trains on them, its ratio exactly 1 at the first step (the same model, float32)."""
    import shutil

    from offline_rl import cli, train
    from offline_rl.embedded.base_model import DEFAULT_BASE_MODEL
    from offline_rl.learners import pear

    data = tmp_path / "demos"
    shutil.copytree(world_demonstrations, data)
    cli.COMMANDS["rescore"][1]()(["--data", str(data), "--logprobs-model", str(tiny_model_dir)])
    assert "behaviour log-probs of" in capsys.readouterr().out
    manifest = read_manifest(data)
    assert manifest["scored_logprobs"] == {"model": str(tiny_model_dir), "temperature": 1.0, "dtype": "float32"}
    rows = datasets.load_dataset("parquet", data_files=[str(f) for f in shard_files(data)], split="train").to_list()
    assert all(len(r["behavior_logprobs"]) == len(r["response_token_ids"]) for r in rows)
    assert all(lp <= 0 for r in rows for lp in r["behavior_logprobs"])
    train.main(["--learner", "pear", "--data", str(data), "--out", str(tmp_path / "pear"), "--steps", "1",
                "--batch-size", "8", "--log-every", "1"])
    first = json.loads((tmp_path / "pear" / "metrics.jsonl").read_text().splitlines()[0])
    assert abs(first["mismatch_kl_k1"]) < 1e-5 and first["mismatch_ratio_max"] < 1 + 1e-5 and first["weight"] > 0.99
    assert pear.LEARNER.behavior_ratio  # the exactness checks apply: a policy other than the scoring model is refused
    with pytest.raises(UsageError, match="holds the log-probs of"):
        train.main(["--learner", "pear", "--data", str(data), "--out", str(tmp_path / "other"),
                    "--model", str(DEFAULT_BASE_MODEL)])


def test_views_select_rows_by_reward_and_group(tmp_path):
    from offline_rl.views import view_examples
    from rollout.dataset import DatasetWriter, load_offline_dataset
    from tests.conftest import make_rows

    writer = DatasetWriter(tmp_path / "d", {"model": "m"})
    writer.write_shard(make_rows(3, 2, reward=lambda p, i: float(i == 0 or p == 2)))
    writer.finish()
    dataset = load_offline_dataset(tmp_path / "d")
    assert dataset["origin"] == ["sample"] * 6  # written without the column: samples
    assert len(view_examples(dataset, "accepted")) == 4 and len(view_examples(dataset, "all")) == 6
    groups = view_examples(dataset, "groups")
    assert [e.group_accuracy for e in groups] == [0.5, 0.5, 0.5, 0.5, 1.0, 1.0]


def test_truncated_samples_carry_no_loss_in_any_view_but_count_in_their_group(tmp_path):
    """The accepted view leaves truncated responses out (so does the groups view, as DAPO's overlong filtering
    does), while the group's accuracy and advantages still count every sample; --include-truncated keeps them."""
    from offline_rl.views import build, group_advantages
    from rollout.dataset import DatasetWriter, load_offline_dataset
    from tests.conftest import make_rows

    rows = make_rows(2, 4, reward=lambda p, i: float(i < 2))  # two right, two wrong per prompt
    rows[0]["finish_reason"] = rows[1]["finish_reason"] = "length"  # prompt 0: both right samples truncated
    writer = DatasetWriter(tmp_path / "d", {"model": "m"})
    writer.write_shard(rows)
    writer.finish()
    dataset = load_offline_dataset(tmp_path / "d")
    accepted, dropped = build("accepted", dataset)
    assert (len(accepted), dropped) == (2, 2)  # 4 right, two of them truncated
    groups, dropped = build("groups", dataset)
    assert (len(groups), dropped) == (6, 2) and not any(e.truncated for e in groups)
    assert all(e.group_accuracy == 0.5 for e in groups)  # the truncated samples still count
    # prompt 0's two wrong samples get advantages from all four (mean 0.5, std 0.5), not 0 from the two left
    assert [round(e.advantage, 3) for e in group_advantages(groups, scale_by_std=True)][:2] == [-1.0, -1.0]
    assert len(build("groups", dataset, include_truncated=True)[0]) == 8
    assert len(build("accepted", dataset, include_truncated=True)[0]) == 4




def test_the_papers_recipe_resolves_without_downloading(tmp_path):
    """configs/paper-dft/: every key is a flag of its command, the values are the paper's settings."""
    from offline_rl.evaluate import EvalConfig
    from offline_rl.learners import LEARNER_CONFIGS
    from offline_rl.train import TrainConfig
    from rollout.demonstrations import ImportConfig
    from rollout.runtime import parse_config

    folder = Path(__file__).resolve().parents[1] / "configs" / "paper-dft"
    imported = parse_config(ImportConfig, ["--config", str(folder / "import.yaml")], "import", "")
    assert (imported.source, imported.prompts, imported.max_model_len) == ("AI-MO/NuminaMath-CoT", 100000, 2048)
    trained, *learners = parse_config((TrainConfig, *LEARNER_CONFIGS), ["--config", str(folder / "train.yaml")],
                                      "train", "")
    assert (trained.learner, trained.lr, trained.epochs, trained.warmup_ratio) == ("dft", 5e-5, 1.0, 0.1)
    assert trained.batch_size == 256 and trained.micro_batch_size * 8 * 8 == 256  # 8 micro-batches on each of 8 GPUs
    evaluated = parse_config(EvalConfig, ["--config", str(folder / "eval.yaml")], "eval", "")
    assert (evaluated.k, evaluated.temperature, evaluated.max_tokens, evaluated.template) == (16, 1.0, 4096, "qwen-boxed")
    from offline_rl.evaluate import load_benchmark

    if SHARED.is_dir():  # every benchmark it names loads
        for name in evaluated.benchmarks.split(","):
            assert load_benchmark(name, EvalConfig(benchmark_dir=str(SHARED))).records


def test_openr1_rows_bring_their_first_verified_r1_trace_not_the_reference(tmp_path, tiny_model_dir):
    rows = [{"problem": "2+3?", "solution": "reference", "answer": "5", "generations": ["wrong \\boxed{6}", SOLUTION],
             "correctness_math_verify": [False, True]},
            {"problem": "1+1?", "solution": "reference", "answer": "2", "generations": ["\\boxed{3}"],
             "correctness_math_verify": [False]}]
    manifest, imported = _import(tmp_path, tiny_model_dir, _write(tmp_path / "r1.jsonl", rows), "--template", "world")
    assert [r["response"] for r in imported] == [SOLUTION] and imported[0]["reward"] == 1.0
    assert manifest["source"]["format"] == "openr1" and manifest["counts"]["unverified"] == 1


def test_a_save_to_disk_directory_is_a_source(tmp_path, tiny_model_dir):
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"problem": "2+3?", "solution": SOLUTION}] * 3)}
                         ).save_to_disk(str(saved))
    manifest, rows = _import(tmp_path, tiny_model_dir, saved, "--template", "world")
    assert manifest["source"]["format"] == "numina" and [r["reward"] for r in rows] == [1.0] * 3


def test_a_finished_import_is_replaced_only_by_the_same_run_or_with_force(tmp_path, tiny_model_dir, capfd):
    from tests.test_bad_input import assert_one_line, run_alone, snapshot

    out = tmp_path / "demos"
    args = ["--source", "world:train", "--model", str(tiny_model_dir), "--out", str(out)]
    assert run_alone("import", [*args, "--prompts", "2"], capfd)[0] == 0
    finished = snapshot(out)
    code, err = run_alone("import", [*args, "--prompts", "3"], capfd)
    assert_one_line(code, err, f"{out} holds a finished import of world:train", "prompts (2, now 3)", "--force")
    assert snapshot(out) == finished
    assert run_alone("import", [*args, "--prompts", "2"], capfd)[0] == 0  # the same run again
    assert read_manifest(out)["counts"]["responses"] == 2
    assert run_alone("import", [*args, "--prompts", "3", "--force"], capfd)[0] == 0
    assert read_manifest(out)["counts"]["responses"] == 3


def test_chat_template_demonstrations_end_in_the_token_closing_a_turn_and_the_loss_covers_it(tmp_path,
                                                                                            real_shaped_model):
    """A model whose chat template closes a turn with <|im_end|>, not its EOS (<|endoftext|>): a demonstration in
    that template ends in <|im_end|>, as a sampled response stops at it, and the loss covers that token; in a plain
    template, in EOS."""
    from transformers import AutoTokenizer

    from offline_rl.views import collate, view_examples
    from rollout.dataset import load_offline_dataset

    tokenizer = AutoTokenizer.from_pretrained(real_shaped_model)
    end, eos = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id
    assert end != eos
    for template, last in (("chat", end), ("world", eos)):
        out = tmp_path / template
        demonstrations.main(["--source", "world:train", "--prompts", "3", "--template", template, "--out", str(out)],
                            context=CommandContext(world=world.load_split, default_model=str(real_shaped_model)))
        examples = view_examples(load_offline_dataset(str(out)), "accepted")
        assert len(examples) == 3 and all(e.response_token_ids[-1] == last for e in examples)
        assert all(last not in e.response_token_ids[:-1] for e in examples)
        batch = collate(examples, pad_token_id=eos)
        for b, e in enumerate(examples):  # the last target the loss sees is the closing token
            covered = batch["targets"][b][batch["response_mask"][b].bool()].tolist()
            assert covered == e.response_token_ids and covered[-1] == last
    assert "<|im_start|>assistant\n" in load_offline_dataset(str(tmp_path / "chat"))[0]["prompt"]
