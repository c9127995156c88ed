import pytest

import rewards

CASES = [
    # (response, gold, expected)
    ("12 + 7 = 19.\nThe answer is \\boxed{19}.", "19", 1.0),
    ("The answer is \\boxed{18}.", "19", 0.0),
    ("no final answer", "19", 0.0),
    ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("first \\boxed{3} then \\boxed{4}", "4", 1.0),
    ("first \\boxed{4} then \\boxed{3}", "4", 0.0),
    ("\\boxed{}", "4", 0.0),
    ("\\boxed{4", "4", 0.0),
    ("", "", 0.0),
]


@pytest.mark.parametrize("response,gold,expected", CASES)
def test_score(response, gold, expected):
    assert rewards.score(response, gold) == expected


@pytest.mark.parametrize("text,boxed", [
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\fbox{7}", "7"),
    ("\\boxed {12}", "12"),
    ("a \\boxed{1} b \\boxed{{2}}", "{2}"),
    ("nothing", ""),
])
def test_extract_boxed(text, boxed):
    assert rewards.extract_boxed(text) == boxed
