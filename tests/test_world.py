import re

from offline_rl import world
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


def test_ood_has_longer_chains_than_training_ever_shows():
    train_steps = {p.steps for p in world.load_split("train")} | {p.steps for p in world.load_split("pretrain")}
    ood_steps = {p.steps for p in world.load_split("test-ood")}
    assert max(train_steps) < min(ood_steps)


def test_reference_solutions_compute_the_gold_answer():
    for split in ("train", "test-id", "test-ood"):
        for p in world.load_split(split)[:200]:
            assert extract_boxed(p.solution) == p.gold
            for a, op, b, c in re.findall(r"(\d+) ([+-]) (\d+) = (-?\d+)", p.solution):
                assert int(a) + (int(b) if op == "+" else -int(b)) == int(c)


def test_pretrain_corpus_has_careless_slips_at_the_configured_rate():
    problems = world.load_split("pretrain")
    wrong = sum(extract_boxed(p.solution) != p.gold for p in problems) / len(problems)
    assert 0.25 < wrong < 0.40  # slip rate 0.35, minus slips that cancel out (none do) or land on the gold
