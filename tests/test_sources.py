"""Prompt sources and templates: the shared real benchmarks, local files, save_to_disk, bad input."""

from pathlib import Path

import datasets
import pytest

from rollout.engines import prompt_seed, stop_token_ids
from rollout.sources import SourceError, load_source
from rollout.templates import Template, TemplateError, default_template

BENCHMARKS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "benchmarks"
SHARED = [("gsm8k_test.jsonl", "gsm8k", 1319), ("math500_test.jsonl", "math500", 500),
          ("minerva_math_test.jsonl", "minerva", 272), ("olympiadbench_test.jsonl", "olympiad", 675),
          ("aime24_test.jsonl", "aime24", 30), ("amc23_test.jsonl", "amc23", 40)]


@pytest.mark.parametrize("name,fmt,count", SHARED)
def test_shared_benchmarks_load_with_their_built_in_format(name, fmt, count):
    if not BENCHMARKS.is_dir():
        pytest.skip("../shared/data/benchmarks is not beside this checkout")
    loaded = load_source(str(BENCHMARKS / name))
    assert loaded.description["format"] == fmt
    assert len(loaded.records) + loaded.skipped_without_gold == count
    assert loaded.skipped_without_gold == 0
    assert len({r["prompt_id"] for r in loaded.records}) == count
    assert all(r["question"].strip() and r["gold"].strip() for r in loaded.records)


def test_gold_normalisation_of_known_formats():
    if not BENCHMARKS.is_dir():
        pytest.skip("../shared/data/benchmarks is not beside this checkout")
    gsm = load_source(str(BENCHMARKS / "gsm8k_test.jsonl")).records[0]
    assert gsm["gold"] == "18"  # "... #### 18"
    olympiad = load_source(str(BENCHMARKS / "olympiadbench_test.jsonl")).records[0]
    assert olympiad["gold"] == "2"  # final_answer "['2']"
    minerva = load_source(str(BENCHMARKS / "minerva_math_test.jsonl")).records[0]
    assert minerva["gold"] and "\\boxed" not in minerva["gold"]


ROWS = [{"q": "What is 1+1?", "a": "2"}, {"q": "What is 2+2?", "a": "4"}, {"q": "No gold here", "a": None}]


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "csv", "disk"])
def test_local_files_and_save_to_disk(tmp_path, kind):
    ds = datasets.Dataset.from_list(ROWS)
    path = tmp_path / f"p.{kind}"
    {"jsonl": ds.to_json, "parquet": ds.to_parquet, "csv": ds.to_csv, "disk": ds.save_to_disk}[kind](str(path))
    loaded = load_source(str(path), "plain", question_field="q", answer_field="a")
    assert [r["gold"] for r in loaded.records] == ["2", "4"]
    assert loaded.skipped_without_gold == 1
    assert loaded.records[0]["prompt_id"] == "p-000000"


def test_missing_field_names_the_fields_there_are(tmp_path):
    datasets.Dataset.from_list(ROWS).to_json(str(tmp_path / "p.jsonl"))
    with pytest.raises(SourceError, match="no field 'question'.*a, q"):
        load_source(str(tmp_path / "p.jsonl"), "plain")


def test_missing_source():
    with pytest.raises(SourceError, match="not found"):
        load_source("no/such/file.jsonl")


def test_templates(tmp_path, tiny_model):
    _, tokenizer = tiny_model
    assert Template("world", tokenizer).render("Q?") == "Question: Q?\nAnswer:"
    assert Template("qwen-boxed-plain", tokenizer).render("x^{2}").endswith("within \\boxed{}.\n")
    assert Template("qwen-boxed-plain", tokenizer).render("x^{2}").startswith("x^{2}\n")
    (tmp_path / "t.txt").write_text("Solve {question} in \\boxed{}:")
    assert Template(str(tmp_path / "t.txt"), tokenizer).render("a{b}") == "Solve a{b} in \\boxed{}:"
    with pytest.raises(TemplateError, match="needs a model with a chat template"):
        Template("chat", tokenizer)
    with pytest.raises(TemplateError, match="unknown template"):
        Template("nope", tokenizer)


def test_prompt_seeds_are_stable_and_distinct():
    assert prompt_seed(0, "train-00001") == prompt_seed(0, "train-00001")
    assert len({prompt_seed(0, f"train-{i:05d}") for i in range(1000)}) == 1000
    assert prompt_seed(0, "a") != prompt_seed(1, "a")


# The Qwen2.5-Math harness's qwen-boxed prompt as its evaluation/utils.py writes it (input template, then
# .strip(" ")), for one question; and Qwen2's chat template, as its tokenizer_config.json carries it.
HARNESS_QWEN_BOXED = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                      "What is $\\frac{1}{2} + \\frac{1}{3}$?\nPlease reason step by step, and put your final answer "
                      "within \\boxed{}.<|im_end|>\n<|im_start|>assistant\n")
QWEN_CHAT_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                      "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
                      "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
                      "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_qwen_boxed_is_the_harness_prompt_character_for_character(tiny_model):
    from transformers import PreTrainedTokenizerFast

    _, tokenizer = tiny_model
    qwen_style = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token="<|endoftext|>",
                                         chat_template=QWEN_CHAT_TEMPLATE)
    question = "What is $\\frac{1}{2} + \\frac{1}{3}$?"
    template = Template("qwen-boxed", qwen_style)
    assert template.render(question) == HARNESS_QWEN_BOXED
    # the same text the model's own Qwen chat template gives for that user turn: the harness writes it out
    # whatever the model's template is, so a base model gets it too
    user = question + "\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert qwen_style.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                          add_generation_prompt=True) == HARNESS_QWEN_BOXED
    assert template.stop == ["</s>", "<|im_end|>", "<|endoftext|>"]
    # vLLM never sees special tokens in the text it matches stop strings against: they go as stop token ids
    qwen_style.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    added = qwen_style.get_added_vocab()
    assert stop_token_ids(qwen_style, template.stop) == sorted([added["<|im_end|>"], added["<|endoftext|>"]])
    assert stop_token_ids(qwen_style, ["\n\n", "Question:"]) == [] and stop_token_ids(qwen_style, None) == []
    assert Template("qwen-boxed", tokenizer).render(question) == HARNESS_QWEN_BOXED  # a tokenizer without one
    assert default_template("file") == "qwen-boxed" and default_template("world") == "world"
