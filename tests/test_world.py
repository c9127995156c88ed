import hashlib
import re

import pytest

from offline_rl.embedded import world
from rewards import extract_boxed


def test_generation_is_deterministic():
    assert world.load_split("test-id") == world.load_split("test-id")
    assert world.load_split("test-id", seed=1) != world.load_split("test-id")


def test_splits_are_disjoint():
    questions = {name: {p.question for p in world.load_split(name)} for name in world.SPLITS}
    names = list(questions)
    for i, a in enumerate(names):
        assert len(questions[a]) == world.SPLITS[a][0]
        for b in names[i + 1 :]:
            assert not questions[a] & questions[b], (a, b)


# sha256 over id, question, gold and solution of every problem, as the shipped base model and the committed
# results were made from them: adding splits must not move these
FROZEN = {
    "test-id": "a04406c2783b53c97262ed304d706b40418ffe224eec6f2deadc83d6071563db",
    "test-ood": "db0c820b2465fb4b7bd9cd8b9188fae2b8250cfa7564ac1a4c317c663119c025",
    "train": "f3be8e4911fa74d0d87c8af72721a6db0e1d18b0ba8eaa5aa6a296d3f17ce129",
    "pretrain": "ffee0f2cdeb8db1982f4ff2b15e34487e607f269c09d0defe7ee6a5da6cf179f",
    "test-names": "96ab9dfe16b729e9405fdc6de7cfef9430ede401a18c78821ced45516ece920b",
    "test-items": "a70036774e0dbf66862a76cb92992c927063aeea4e54d7e262e719072124edbf",
    "test-verbs": "264ba4c470cedcef7120643683402cc1972a20d16580d025ec4e4cc5294b578e",
    "test-distract": "479f5466f2513f6322802e710f6ed06998923692da22a31ed8bda6a843413509",
    "valid": "ee09d795df77a9deb44ef584b535454dcb4f1b2d290ec6c3f632044c8414f098",  # the selection split, last
}


def test_the_selection_split_is_held_out_and_never_a_test_split():
    assert list(world.SPLITS)[-1] == "valid" and "valid" not in world.TEST_SPLITS
    valid = {p.question for p in world.load_split("valid")}
    for name in world.SPLITS:
        if name != "valid":
            assert not valid & {p.question for p in world.load_split(name)}, name


@pytest.mark.parametrize("split", FROZEN)
def test_the_original_splits_are_unchanged(split):
    text = "".join(p.id + p.question + p.gold + p.solution for p in world.load_split(split))
    assert hashlib.sha256(text.encode()).hexdigest() == FROZEN[split]


def test_each_ood_axis_varies_one_property():
    seen = " ".join(p.question for split in ("train", "pretrain") for p in world.load_split(split))
    seen_words = set(re.findall(r"[A-Za-z]+", seen))
    new = {"test-names": world.NEW_NAMES, "test-items": world.NEW_ITEMS,
           "test-verbs": [v.split()[0] for v in world.NEW_GAIN + world.NEW_LOSS]}
    for split, words in new.items():
        assert not set(words) & seen_words, split  # never in a train or pretrain question
        questions = [p.question for p in world.load_split(split)]
        assert all(any(w in q for w in words) for q in questions), split
        others = {w for s, ws in new.items() if s != split for w in ws}  # and nothing of the other axes
        assert not others & set(re.findall(r"[A-Za-z]+", " ".join(questions))), split
    train_words = seen_words | {"How", "many", "does", "have", "now"}
    for p in world.load_split("test-distract"):
        sentences = p.question.split(". ")
        assert len(sentences) >= 4 and set(re.findall(r"[A-Za-z]+", p.question)) <= train_words
        assert int(p.gold) == int(p.solution.split("boxed{")[1].rstrip("}."))  # the distractor changes nothing
    assert all(1 <= p.steps <= 3 for split in new for p in world.load_split(split))


def test_ood_has_longer_chains_than_training_ever_shows():
    train_steps = {p.steps for p in world.load_split("train")} | {p.steps for p in world.load_split("pretrain")}
    ood_steps = {p.steps for p in world.load_split("test-ood")}
    assert max(train_steps) < min(ood_steps)


def test_reference_solutions_compute_the_gold_answer():
    for split in ("train", *world.TEST_SPLITS):
        for p in world.load_split(split)[:200]:
            assert extract_boxed(p.solution) == p.gold
            for a, op, b, c in re.findall(r"(\d+) ([+-]) (\d+) = (-?\d+)", p.solution):
                assert int(a) + (int(b) if op == "+" else -int(b)) == int(c)


def test_pretrain_corpus_has_careless_slips_at_the_configured_rate():
    problems = world.load_split("pretrain")
    wrong = sum(extract_boxed(p.solution) != p.gold for p in problems) / len(problems)
    assert 0.25 < wrong < 0.40  # slip rate 0.35, minus slips that cancel out (none do) or land on the gold
