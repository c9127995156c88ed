"""The embedded math world: seeded multi-step arithmetic word problems.

Each problem is a chain of additions and subtractions told as a story
("Mia has 23 marbles. She finds 9 more. ...") with a gold integer answer and a
reference chain-of-thought solution ending in ``\\boxed{answer}``.

Splits (all disjoint by question text):
  train      1-3 steps; prompts for collection, reference solutions for SFT
  test-id    1-3 steps; same distribution as train
  test-ood   4-5 steps; longer chains than training ever shows (a generalisation probe)
  pretrain   1-3 steps; the corpus ``bin/make-base`` trains the base model on.
             A fraction of its solutions carry one careless arithmetic slip, so
             the base model learns to be only partly reliable, as web-trained
             base models are.

Out-of-distribution axes: each varies exactly one property away from ``train`` (1-3 steps,
start values 5-30, the words above) and keeps the rest, so each measures one kind of transfer.
They come after ``pretrain`` in the generation order, so the four splits above are unchanged.
  test-names     people's names that occur in no train or pretrain question
  test-items     items that occur in no train or pretrain question
  test-verbs     verbs of gaining and losing that occur in no train or pretrain question
  test-distract  one irrelevant sentence, about another person's other items, before the question
A last split, ``valid`` (300 problems, the train distribution), is held out for choosing settings such as a
sweep's learning rate: selection reads it, reports never do, and it comes last so that no split above moves.
Axes tried and left out, because the shipped base model sits at the floor on them (avg@4 at
T = 1, seed 0, 150 problems), so no learner's transfer could show: exactly 4 steps 3.2 %; start
values 60-99 0.0 %, 31-50 0.5 %; new names, items, verbs and connectives at once 3.3 %.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

from rollout.templates import render

WORLD_SEED = 20250805  # the paper's arXiv month; changing it changes every split

NAMES = [
    "Mia", "Tom", "Ava", "Leo", "Zoe", "Sam", "Ivy", "Max", "Lily", "Ben",
    "Emma", "Noah", "Ella", "Liam", "Ruby", "Jack", "Nora", "Owen", "Lucy", "Finn",
]
PRONOUN = {n: ("She" if n in {"Mia", "Ava", "Zoe", "Ivy", "Lily", "Emma", "Ella", "Ruby", "Nora", "Lucy"} else "He")
           for n in NAMES}
ITEMS = [
    "apples", "marbles", "stickers", "coins", "books", "shells", "pencils", "cards",
    "cookies", "stamps", "balloons", "candies", "beads", "rocks", "toys", "flowers",
]
GAIN = ["buys {k} more {item}", "finds {k} more {item}", "gets {k} more {item}", "receives {k} more {item}"]
LOSS = ["gives away {k} {item}", "loses {k} {item}", "sells {k} {item}", "uses {k} {item}"]
CONNECT = ["", "Then ", "After that, ", "Later, "]


@dataclass(frozen=True)
class Wording:
    names: tuple[str, ...]
    items: tuple[str, ...]
    gain: tuple[str, ...]
    loss: tuple[str, ...]
    connect: tuple[str, ...]


TRAIN_WORDING = Wording(tuple(NAMES), tuple(ITEMS), tuple(GAIN), tuple(LOSS), tuple(CONNECT))
# the OOD axes' words: none occurs in a train or pretrain question (tested)
NEW_NAMES = ("Kai", "Rosa", "Ezra", "Iris", "Hugo", "Vera", "Omar", "Jade", "Abel", "Tess")
PRONOUN.update({n: ("She" if n in {"Rosa", "Iris", "Vera", "Jade", "Tess"} else "He") for n in NEW_NAMES})
NEW_ITEMS = ("buttons", "feathers", "tickets", "ribbons", "acorns", "crayons", "magnets", "keys")
NEW_GAIN = ("collects {k} more {item}", "picks up {k} more {item}", "wins {k} more {item}", "earns {k} more {item}")
NEW_LOSS = ("drops {k} {item}", "donates {k} {item}", "misplaces {k} {item}", "trades {k} {item}")
_T = TRAIN_WORDING


@dataclass(frozen=True)
class Style:
    """What a split varies; the default is train's distribution."""

    start: tuple[int, int] = (5, 30)
    wording: Wording = TRAIN_WORDING
    distractor: bool = False


TRAIN_STYLE = Style()


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    gold: str
    solution: str
    steps: int

    @property
    def prompt(self) -> str:
        return render("world", self.question)


def _make_problem(rng: random.Random, steps: int, slip_rate: float = 0.0,
                  style: Style = TRAIN_STYLE) -> tuple[str, str, str]:
    words = style.wording
    name, item = rng.choice(words.names), rng.choice(words.items)
    value = rng.randint(*style.start)
    sentences = [f"{name} has {value} {item}."]
    distractor = ""
    if style.distractor:  # someone else's things, which the question does not ask about
        other = rng.choice([n for n in words.names if n != name])
        distractor = f"{other} has {rng.randint(*style.start)} {rng.choice([i for i in words.items if i != item])}."
    lines = [f"{name} starts with {value} {item}."]
    slip_step = rng.randrange(steps) if rng.random() < slip_rate else -1
    true_value, shown = value, value
    for s in range(steps):
        pronoun = PRONOUN[name]
        if true_value > 2 and rng.random() < 0.5:
            k = rng.randint(1, min(true_value - 1, 9))
            verb, sign = rng.choice(words.loss), -1
        else:
            k = rng.randint(1, 9)
            verb, sign = rng.choice(words.gain), 1
        connect = words.connect[0] if s == 0 else rng.choice(words.connect)
        subject = pronoun if not connect else pronoun.lower()
        sentences.append(f"{connect}{subject} {verb.format(k=k, item=item)}.")
        true_value += sign * k
        result = shown + sign * k
        if s == slip_step:  # a careless slip: off by a little, and carried on from there
            result += rng.choice([-2, -1, 1, 2])
        op = "+" if sign > 0 else "-"
        lines.append(f"{shown} {op} {k} = {result}.")
        shown = result
    if distractor:  # just before the question, so that every pronoun still refers to the asker
        sentences.append(distractor)
    sentences.append(f"How many {item} does {name} have now?")
    lines.append(f"The answer is \\boxed{{{shown}}}.")
    return " ".join(sentences), str(true_value), "\n".join(lines)


SPLITS = {
    # name: (number of problems, min steps, max steps, slip rate, seed offset[, style])
    "test-id": (300, 1, 3, 0.0, 1),
    "test-ood": (300, 4, 5, 0.0, 2),
    "train": (3000, 1, 3, 0.0, 3),
    "pretrain": (40000, 1, 3, 0.35, 4),
    # out-of-distribution axes, one varied property each (see the module docstring)
    "test-names": (100, 1, 3, 0.0, 5, Style(wording=Wording(NEW_NAMES, _T.items, _T.gain, _T.loss, _T.connect))),
    "test-items": (100, 1, 3, 0.0, 6, Style(wording=Wording(_T.names, NEW_ITEMS, _T.gain, _T.loss, _T.connect))),
    "test-verbs": (100, 1, 3, 0.0, 7, Style(wording=Wording(_T.names, _T.items, NEW_GAIN, NEW_LOSS, _T.connect))),
    "test-distract": (100, 1, 3, 0.0, 8, Style(distractor=True)),
    # held out for choosing settings (a sweep's learning rate), never reported: the train distribution, generated
    # after every split above so that none of them moves
    "valid": (300, 1, 3, 0.0, 9),
}
TEST_SPLITS = [name for name in SPLITS if name.startswith("test-")]


# per seed: the splits generated so far in SPLITS' order, and the questions they hold. A split after pretrain
# (40,000 problems) costs about 1.5 s to generate; a command checking every benchmark asks for several
_GENERATED: dict[int, tuple[dict[str, tuple[Problem, ...]], set[str]]] = {}


def load_split(split: str, seed: int = WORLD_SEED) -> list[Problem]:
    """All problems of one split, deterministically; splits never share a question. Generated once per process."""
    if split not in SPLITS:
        raise ValueError(f"unknown world split {split!r}; known: {', '.join(SPLITS)}")
    generated, taken = _GENERATED.setdefault(seed, ({}, set()))
    for name in SPLITS:  # earlier splits claim their questions first, so later ones avoid them
        if name not in generated:
            generated[name] = tuple(_generate(name, seed, taken))
            taken.update(p.question for p in generated[name])
        if name == split:
            return list(generated[name])  # the caller's own list
    raise AssertionError("unreachable")


# text of the base model's kind held out from every split: the pretrain split's recipe at an offset no split uses
HELDOUT_PRETRAIN = ("pretrain-heldout", 1, 3, SPLITS["pretrain"][3], 10)


@functools.lru_cache(maxsize=2)  # every evaluation of a comparison reads it: generated once per process
def heldout_pretrain(count: int, seed: int = WORLD_SEED) -> tuple[Problem, ...]:
    """``count`` problems drawn as the ``pretrain`` split's are (1-3 steps, the same share of careless slips), none of
    whose questions is in any split: text of the kind ``bin/make-base`` trains the base model on that no model here
    was trained on, for measuring what a learner forgot."""
    load_split(list(SPLITS)[-1], seed)  # every split generated (once per process), their questions taken
    name, lo, hi, slip_rate, offset = HELDOUT_PRETRAIN
    return tuple(_generate(name, seed, set(_GENERATED[seed][1]), (count, lo, hi, slip_rate, offset)))


def _generate(split: str, seed: int, taken: set[str], spec: tuple | None = None) -> list[Problem]:
    count, lo, hi, slip_rate, offset, *style = spec or SPLITS[split]
    style = style[0] if style else TRAIN_STYLE
    rng = random.Random(seed * 1000 + offset)
    problems: list[Problem] = []
    seen: set[str] = set()
    while len(problems) < count:
        steps = rng.randint(lo, hi)
        question, gold, solution = _make_problem(rng, steps, slip_rate, style)
        if question in taken or question in seen:
            continue
        seen.add(question)
        problems.append(Problem(f"{split}-{len(problems):05d}", question, gold, solution, steps))
    return problems


def reference_solutions(source: dict) -> dict[str, str] | None:
    """Reference solutions by prompt id, when a dataset's prompts came from the world."""
    if source.get("kind") != "world":
        return None
    return {p.id: p.solution for p in load_split(source["split"])}
