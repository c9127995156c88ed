import threading

import pytest

import rewards

CASES = [
    # (response, gold, expected)
    ("12 + 7 = 19.\nThe answer is \\boxed{19}.", "19", 1.0),
    ("The answer is \\boxed{18}.", "19", 0.0),
    ("no final answer", "19", 0.0),
    ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("\\boxed{\\dfrac12}", "\\frac{1}{2}", 1.0),
    ("\\boxed{0.5}", "\\frac{1}{2}", 1.0),
    # the last box wins; several boxes are never joined into one set
    ("first \\boxed{3} then \\boxed{4}", "4", 1.0),
    ("first \\boxed{4} then \\boxed{3}", "4", 0.0),
    ("\\boxed{3}, \\boxed{4}", "3, 4", 0.0),
    ("\\boxed{4}, \\boxed{3}", "3", 1.0),
    # empty, unclosed, \fbox, nested braces
    ("\\boxed{}", "4", 0.0),
    ("\\boxed{ }", "4", 0.0),
    ("\\boxed{4", "4", 0.0),
    ("\\fbox{7}", "7", 1.0),
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", 1.0),
    ("\\boxed {12}", "12", 1.0),
    ("", "", 0.0),
    ("\\boxed{5}", "", 0.0),
    # gold first: a gold set is not matched by one of its members
    ("\\boxed{2}", "2, 3", 0.0),
    ("\\boxed{3, 2}", "2, 3", 1.0),
    ("\\boxed{(3, 4), (1, 2)}", "(1,2),(3,4)", 1.0),
    ("\\boxed{(1, 2)}", "(2, 1)", 0.0),
    # thousands separators, currency, units, degrees, percent
    ("\\boxed{10{,}000}", "10000", 1.0),
    ("\\boxed{10\\,000}", "10000", 1.0),
    ("\\boxed{1,234,567}", "1234567", 1.0),
    ("\\boxed{\\$18}", "18", 1.0),
    ("\\boxed{18 \\text{ dollars}}", "18", 1.0),
    ("\\boxed{30^\\circ}", "30", 1.0),
    ("\\boxed{30^{\\circ}}", "30^\\circ", 1.0),
    ("\\boxed{8\\%}", "8\\%", 1.0),
    ("\\boxed{\\frac{600}{7} \\text{ km/h}}", "\\frac{600}{7}", 1.0),
    # LaTeX forms of the same value
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "(3,\\frac{\\pi}{2})", 1.0),
    ("\\boxed{x = 5}", "5", 1.0),
    ("\\boxed{[-1, -\\frac{1}{2}]}", "[-1,-0.5]", 1.0),
    ("\\boxed{\\text{(C)}}", "C", 1.0),
    ("\\boxed{2\\sqrt{3}}", "\\sqrt{12}", 1.0),
    ("\\boxed{\\sqrt{12}}", "3", 0.0),
    ("\\boxed{27}", "27.0", 1.0),
    ("\\boxed{-1/3}", "-1./3", 1.0),
    # fallbacks when there is no box (the default is "The answer is X")
    ("So the answer is 42.", "42", 1.0),
    ("Final answer: $\\frac{3}{4}$", "0.75", 1.0),
    ("So the answer is 41.", "42", 0.0),
    ("I computed 42 somewhere.\n42", "42", 0.0),  # a bare last number is opt-in
    ("\\boxed{41} so the answer is 42", "42", 0.0),  # a box, once written, is the answer
    # model text is never code
    ("\\boxed{__import__('os').getcwd()}", "0", 0.0),
    ("The answer is exec('x=1').", "1", 0.0),
]


@pytest.mark.parametrize("response,gold,expected", CASES)
def test_score(response, gold, expected):
    assert rewards.score(response, gold) == expected


def test_score_batch_equals_score():
    responses, golds, expected = zip(*CASES, strict=True)
    assert rewards.score_batch(list(responses), list(golds), workers=2) == list(expected)


def test_score_from_a_thread_is_bounded():
    """math-verify's signal.alarm works only in the main thread; elsewhere score() goes through the workers."""
    results = []
    thread = threading.Thread(target=lambda: results.extend(
        [rewards.score("\\boxed{\\frac{1}{2}}", "0.5"), rewards.score("\\boxed{9^{9^{9^{9^9}}}}", "5")]))
    thread.start()
    thread.join(timeout=30)
    assert results == [1.0, 0.0]


@pytest.mark.parametrize("text,boxed", [
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\fbox{7}", "7"),
    ("\\boxed {12}", "12"),
    ("a \\boxed{1} b \\boxed{{2}}", "{2}"),
    ("\\boxed{1} \\boxed{", ""),
    ("\\boxedfoo{1}", ""),
    ("nothing", ""),
])
def test_extract_boxed(text, boxed):
    assert rewards.extract_boxed(text) == boxed


@pytest.mark.parametrize("response,fallbacks,pred", [
    ("The answer is $\\boxed{7}$.", (), "7"),
    ("The answer is 7.", (), ""),
    ("The answer is 7.", ("answer_is",), "7"),
    ("The answer is: $\\frac{1}{2}$.\n", ("answer_is",), "\\frac{1}{2}"),
    ("Natalia sold 48/2 = 24 clips.\n#### 72", ("gsm8k_hashes",), "72"),
    ("so she has 1,234 left\n1,234", ("last_number",), "1,234"),
    ("nothing here", tuple(rewards.FALLBACKS), ""),
])
def test_extract_answer_fallbacks(response, fallbacks, pred):
    assert rewards.extract_answer(response, fallbacks) == pred


@pytest.mark.parametrize("record,source,gold", [
    ({"answer": "She makes 9 * 2 = $<<9*2=18>>18.\n#### 18"}, "gsm8k", "18"),
    ({"answer": "so\n#### 1,000"}, "gsm8k_test.jsonl", "1000"),
    ({"answer": "\\left( 3, \\frac{\\pi}{2} \\right)"}, "math500", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ({"solution": "So $x=\\boxed{1}$, hence \\boxed{\\frac{1}{2}}."}, "minerva_math", "\\frac{1}{2}"),
    ({"final_answer": ["$\\frac{600}{7}$"], "unit": "km/h"}, "olympiadbench", "\\frac{600}{7}"),
    ({"final_answer": ["$2$", "$3$"], "is_multiple_answer": True}, "olympiadbench", "2, 3"),
    ({"answer": 27.0}, "amc23", "27"),
    ({"answer": "204"}, "aime24", "204"),
    ({"gold": "10{,}000"}, "world", "10000"),
])
def test_gold_answer(record, source, gold):
    assert rewards.gold_answer(record, source) == gold


def test_verifier_version_names_the_engine():
    assert rewards.VERIFIER_VERSION.startswith("math-verify-")


def test_gold_goes_first_to_math_verify():
    """math-verify's verify(gold, answer) is asymmetric: an answer written as an equation is read as its right
    side (``2x+z=1`` answers 1), but a gold equation that is not an assignment is not unwrapped. Swapping the
    arguments inside `equivalent` flips both verdicts below."""
    from rewards import equivalent

    assert equivalent("2x+z=1", "1") is True  # pred, gold
    assert equivalent("1", "2x+z=1") is False


def test_a_gold_that_timed_out_once_is_parsed_again(monkeypatch):
    """math-verify returns [] on a timeout; caching that would score every later sample of the prompt 0."""
    import rewards.verify as verify

    gold = "\\frac{3}{7}"
    verify._GOLD_CACHE.pop((gold, verify.STAGE_TIMEOUT_SECONDS), None)
    real, calls = verify._parse, []

    def first_gold_parse_times_out(answer, timeout):
        calls.append(answer)
        if answer == gold and calls.count(gold) == 1:
            return []  # what math-verify returns when its alarm fires
        return real(answer, timeout)

    monkeypatch.setattr(verify, "_parse", first_gold_parse_times_out)
    assert verify.equivalent("6/14", gold) is False  # the timed-out attempt
    assert verify.equivalent("6/14", gold) is True  # the next sample of that prompt: parsed again, right
    assert verify.equivalent("0.5", gold) is False and calls.count(gold) == 2  # and cached once it parsed


# (response, gold, {mode: expected}) for the classes where graders differ
MODE_CASES = [
    ("so \\boxed{5}", "5", {"boxed": 1.0, "qwen": 1.0, "math-verify": 1.0}),
    ("so \\boxed 5", "5", {"boxed": 1.0, "qwen": 1.0, "math-verify": 1.0}),  # no braces: TeX's next token
    ("The answer is $\\frac{1}{2}$.", "0.5", {"boxed": 1.0, "qwen": 1.0, "math-verify": 1.0}),
    ("First 3 apples, then 4 more, so 7 apples in all", "7", {"boxed": 0.0, "qwen": 1.0, "math-verify": 1.0}),
    ("We get $x = 12$ in the end.", "12", {"boxed": 0.0, "qwen": 1.0, "math-verify": 1.0}),  # no box, no phrase
    ("\\boxed{１２}", "12", {"boxed": 1.0, "qwen": 1.0, "math-verify": 1.0}),  # full-width digits
    ("\\boxed{𝟏𝟐}", "12", {"boxed": 1.0, "qwen": 1.0, "math-verify": 1.0}),  # mathematical bold
    ("\\boxed{1\u200b2}", "12", {"boxed": 1.0, "qwen": 1.0, "math-verify": 1.0}),  # a zero-width space
    ("\\boxed{\u2212 3}", "-3", {"boxed": 1.0, "qwen": 1.0, "math-verify": 1.0}),  # the Unicode minus
    ("\\boxed{½}", "\\frac{1}{2}", {"boxed": 1.0, "qwen": 1.0, "math-verify": 1.0}),
    ("\\boxed{10 000}", "10000", {"boxed": 1.0, "qwen": 1.0, "math-verify": 1.0}),  # spaced thousands
    ("\\boxed{" + "9" * 20_000 + "}", "9" * 20_000, {"boxed": 1.0, "qwen": 1.0}),  # huge, equal: no parser
    ("\\boxed{" + "+".join(["1"] * 3000) + "}", "3000", {"boxed": 1.0, "qwen": 1.0}),  # a long literal sum
    ("\\boxed{4}", "5", {"boxed": 0.0, "qwen": 0.0, "math-verify": 0.0}),
    # an interval written as inequalities, either way round; open and closed ends still differ
    ("\\boxed{-2 \\le x \\le 7}", "[-2,7]", {"boxed": 1.0, "qwen": 1.0, "math-verify": 1.0}),
    ("\\boxed{(-\\infty,2)}", "x<2", {"boxed": 1.0, "qwen": 1.0, "math-verify": 1.0}),
    ("so $x > 1$", "x \\in (1,\\infty)", {"boxed": 0.0, "qwen": 0.0, "math-verify": 1.0}),
    ("\\boxed{x \\le 2}", "(-\\infty,2)", {"boxed": 0.0, "qwen": 0.0, "math-verify": 0.0}),
]


@pytest.mark.parametrize("response, gold, expected", MODE_CASES)
def test_extraction_modes(response, gold, expected):
    got = {mode: rewards.score(response, gold, extraction=mode) for mode in expected}
    assert got == expected
    batch = {mode: rewards.score_batch([response], [gold], workers=1, extraction=mode)[0] for mode in expected}
    assert batch == expected  # the parallel path agrees with score()


@pytest.mark.parametrize("text, number", [
    ("so it is 7,425,000 in all", "7425000"), ("1 000", "1000"), ("costs 1,000.99€", "1000.99"),
    ("Soucis : 2,74 $ a..", "2.74"), ("1000,99", "1000.99"), ("0,111", "0.111"), ("about .4 of it", "0.4"),
    ("it is 1,000.99m\u00b2", "1000.99"), ("P(A) = (1/2) / (3/4) so P(A) = 2/3. <|im_start|>user", "2/3"),
    ("Final Answer: The final answer is 7.78.", "7.78"), ("The volume is $5 \\times 6 \\times 4 = 120$. So 120.", "120"),
])
def test_plain_text_answers_in_the_math_verify_mode(text, number):
    """math-verify's expression extraction (numbers with separators and decimal commas, arithmetic), which
    the box modes do not do; AZYUK2A holds no number."""
    assert rewards.score(text, number, extraction="math-verify") == 1.0
    assert rewards.score("AZYUK2A", "2", extraction="math-verify") == 0.0


@pytest.mark.parametrize("gold, response", [
    ("0,111", "so 0.111"),  # a decimal comma in the gold
    ("\\boxed{1}\\boxed{2}", "$\\boxed{1,2}$"),  # a gold text with several boxes is their set
    ("\\(\\boxed{1}\\) and \\(\\boxed{-2}\\).", "$\\boxed{-2,1}$."),
    ("\\frac{1}{2}", "it is 1/2"), ("x^2+1", "$x^2+1$"),  # bare answers: one box's content
])
def test_gold_texts_in_the_math_verify_mode(gold, response):
    assert rewards.score(response, gold, extraction="math-verify") == 1.0


def test_plain_arithmetic_is_never_evaluated(monkeypatch):
    """math-verify hands plain-text expressions to sympy's parse_expr (its own import of it), which calls eval;
    ours reads a syntax tree and builds numbers and operations only."""
    import math_verify.parser
    import sympy

    from rewards.arithmetic import arithmetic

    def refuse(*args, **kwargs):
        raise AssertionError("parse_expr was called")

    monkeypatch.setattr(math_verify.parser, "parse_expr", refuse)
    math_verify.parser.parse_expr_cached.cache_clear()  # earlier tests may have parsed the same text
    assert rewards.score("P(A) = (1/2) * (4/3) = 2/3", "\\frac{2}{3}", extraction="math-verify") == 1.0
    assert str(arithmetic("3 * (4 + 5)")) == "3*(4 + 5)" and arithmetic("2**-1").doit() == sympy.Rational(1, 2)
    for code in ["__import__('os').system('true')", "x + 1", "2(3)", "(1).real", "[1][0]", "9" * 5000]:
        with pytest.raises(ValueError):
            arithmetic(code)


THREAD_CASES = [  # (response, gold): right and wrong in each mode, by box, by phrase, by last number, by LaTeX
    ("so the answer is \\boxed{\\frac{1}{2}}", "0.5"), ("the result: \\boxed{3}", "4"),
    ("The answer is 12.", "12"), ("we get 7 apples, then 9", "9"), ("$x = \\sqrt{4}$ hence $2$", "2"),
    ("\\boxed{2/4}", "\\frac{1}{2}"), ("no answer at all", "5"),
]


@pytest.mark.parametrize("extraction", ["boxed", "qwen", "math-verify"])
def test_one_scorer_in_every_thread_main_pool_and_worker_agree(extraction):
    """``rewards.score`` gives the same verdict in the main thread, in a thread pool (TRL calls reward functions
    from its own threads) and in the worker processes of ``score_batch``."""
    from concurrent.futures import ThreadPoolExecutor

    main = [rewards.score(r, g, extraction=extraction) for r, g in THREAD_CASES]
    with ThreadPoolExecutor(max_workers=3) as pool:
        threaded = list(pool.map(lambda case: rewards.score(*case, extraction=extraction), THREAD_CASES))
    workers = rewards.score_batch([r for r, _ in THREAD_CASES], [g for _, g in THREAD_CASES], workers=2,
                                  extraction=extraction)
    assert main == threaded == workers
    assert 0 < sum(main) < len(main)  # right and wrong both present: the check can fail


def test_decimals_are_read_from_their_text_never_through_a_float():
    """400 digits are a finite number (a float would make them infinity, equal to a gold \\infty); digits past the
    17th are kept (a float drops them)."""
    import sympy

    from rewards.arithmetic import arithmetic

    huge = "1" * 400 + ".5"
    assert arithmetic(huge).is_finite and arithmetic(huge) > 10 ** 399
    assert arithmetic("0.12345678901234567891") - sympy.Float("0.12345678901234567890", 25) > 0
    for mode in ("boxed", "qwen", "math-verify"):
        for response in (f"\\boxed{{{huge}}}", f"so $x = {huge}$", huge):
            assert rewards.score(response, "\\infty", extraction=mode) == 0.0, (mode, response[:20])
    assert rewards.score("\\boxed{2.50}", "2.5") == 1.0


# False positives found by an audit (issue 33), one table per class: (response, gold, expected), each row in every
# extraction mode. Rows expecting 0.0 scored 1.0 before in at least one mode; rows expecting 1.0 must stay right.
# digits separated by spaces are no number (spaced thousands are one)
SPACED_DIGITS = [
    ("\\boxed{2 5}", "25", 0.0),
    ("\\boxed{1.5 6}", "1.56", 0.0),
    ("\\boxed{2 5}", "7", 0.0),
    ("\\boxed{1.5 6}", "9", 0.0),
    ("The answer is $3 4$.", "34", 0.0),
    ("\\boxed{12 3456}", "123456", 0.0),
    ("\\boxed{1 000 0}", "10000", 0.0),
    ("\\boxed{2\\,5}", "25", 0.0),
    ("\\boxed{2~5}", "25", 0.0),
    ("\\boxed{x = 4 2}", "42", 0.0),
    ("\\boxed{-3 7}", "-37", 0.0),
    ("\\boxed{1 2}", "12", 0.0),
    ("\\boxed{7 \\quad 5}", "75", 0.0),
    ("\\boxed{1 2 3}", "123", 0.0),
    ("The answer is 2 5.", "25", 0.0),
    ("\\boxed{0.2 5}", "0.25", 0.0),
    ("\\boxed{4 5}", "9", 0.0),
    ("\\boxed{1 000 000}", "1000000", 1.0),
    ("\\boxed{1\\,000}", "1000", 1.0),
    ("\\boxed{1{,}000}", "1000", 1.0),
    ("\\boxed{12 345.5}", "12345.5", 1.0),
    ("\\boxed{\\frac 1 2}", "\\frac{1}{2}", 1.0),
    ("The answer is $1\\,234\\,567$.", "1234567", 1.0),
    ("\\boxed{3 \\sqrt{2}}", "\\sqrt{18}", 1.0),
    ("\\boxed{2 \\cdot 5}", "10", 1.0),
    ("\\boxed{1000}", "1 000", 1.0),
]
# a gold range or dash-separated list is what it is, never a subtraction
GOLD_RANGES = [
    ("\\boxed{-5}", "10-15", 0.0),
    ("\\boxed{-1}", "3-4", 0.0),
    ("\\boxed{1}", "3-2", 0.0),
    ("\\boxed{-4}", "1-2-3", 0.0),
    ("\\boxed{15-10}", "10-15", 0.0),
    ("\\boxed{10}", "10-15", 0.0),
    ("\\boxed{-2.5}", "2.5-5", 0.0),
    ("\\boxed{1998}", "2023-10-15", 0.0),
    ("\\boxed{-10}", "20 - 30", 0.0),
    ("The answer is $-5$.", "10-15", 0.0),
    ("\\boxed{0}", "5-5", 0.0),
    ("\\boxed{-5 \\text{ minutes}}", "10-15 \\text{ minutes}", 0.0),
    ("\\boxed{10-15}", "10-15", 1.0),
    ("\\boxed{10 - 15}", "10-15", 1.0),
    ("\\boxed{10 \\text{ to } 15}", "10-15", 1.0),
    ("\\boxed{10\u201315}", "10-15", 1.0),
    ("\\boxed{10.0-15}", "10-15", 1.0),
    ("The answer is 3-2.", "3-2", 1.0),
    ("\\boxed{10-15}", "-5", 1.0),
]
# numbers equal under a relative tolerance: two tiny numbers are not equal for being tiny
TINY_NUMBERS = [
    ("\\boxed{\\frac{1}{2004!}}", "\\frac{1}{2006!}", 0.0),
    ("\\boxed{10^{-20}}", "2 \\cdot 10^{-20}", 0.0),
    ("\\boxed{e^{-100}}", "e^{-101}", 0.0),
    ("\\boxed{0.0000001}", "0.0000002", 0.0),
    ("\\boxed{10^{-7}}", "0.0000002", 0.0),
    ("\\boxed{\\frac{1}{10^{20}}}", "\\frac{1}{10^{21}}", 0.0),
    ("\\boxed{2^{-60}}", "2^{-61}", 0.0),
    ("\\boxed{\\frac{1}{100!}}", "\\frac{2}{100!}", 0.0),
    ("\\boxed{1.5 \\times 10^{-30}}", "1.6 \\times 10^{-30}", 0.0),
    ("\\boxed{0.000000012}", "1.3 \\times 10^{-8}", 0.0),
    ("\\boxed{\\sqrt{10^{-30}}}", "10^{-16}", 0.0),
    ("\\boxed{\\frac{\\pi}{10^{12}}}", "\\frac{3}{10^{12}}", 0.0),
    ("\\boxed{\\frac{1}{3^{40}}}", "\\frac{1}{3^{41}}", 0.0),
    ("\\boxed{10^{-9}}", "10^{-10}", 0.0),
    ("\\boxed{0.333333}", "\\frac{1}{3}", 1.0),
    ("\\boxed{0.166667}", "\\frac{1}{6}", 1.0),
    ("\\boxed{1.414214}", "\\sqrt{2}", 1.0),
    ("\\boxed{\\frac{2}{2006!}}", "\\frac{1}{1003 \\cdot 2005!}", 1.0),
    ("\\boxed{10^{-20}}", "\\frac{1}{10^{20}}", 1.0),
    ("\\boxed{1.0 \\times 10^{-7}}", "10^{-7}", 1.0),
    ("\\boxed{\\sqrt{2}\\sqrt{3}}", "\\sqrt{6}", 1.0),
]
# a unit on both sides must be the same unit; on one side only, the value decides
UNITS = [
    ("\\boxed{12 \\text{ m}}", "12 \\text{ cm}", 0.0),
    ("\\boxed{12 \\text{ cm}}", "12 \\text{ m}", 0.0),
    ("\\boxed{5 \\text{ km}}", "5 \\text{ miles}", 0.0),
    ("\\boxed{3 \\text{ hours}}", "3 \\text{ minutes}", 0.0),
    ("\\boxed{30 \\text{ cents}}", "30 \\text{ dollars}", 0.0),
    ("\\boxed{15 \\text{ cm}^2}", "15 \\text{ cm}", 0.0),
    ("\\boxed{4 \\text{ kg}}", "4 \\text{ g}", 0.0),
    ("\\boxed{60 \\text{ mph}}", "60 \\text{ km/h}", 0.0),
    ("The answer is $7$ inches.", "7 \\text{ feet}", 0.0),
    ("\\boxed{30^\\circ}", "30 \\text{ radians}", 0.0),
    ("\\boxed{2 \\text{ L}}", "2 \\text{ mL}", 0.0),
    ("\\boxed{8 \\, \\mathrm{m/s}}", "8 \\text{ km/h}", 0.0),
    ("\\boxed{12 \\text{ m}}", "12 \\text{ meters}", 1.0),
    ("\\boxed{864 \\text{ in}^2}", "864 \\mbox{ inches}^2", 1.0),
    ("\\boxed{12}", "12 \\text{ cm}", 1.0),
    ("\\boxed{\\frac{270}{7}^\\circ}", "\\frac{270}7\\text{ degrees}", 1.0),
    ("\\boxed{5 \\text{ km/h}}", "5 \\text{ kilometers per hour}", 1.0),
    ("\\boxed{15 \\text{ square centimeters}}", "15\\mbox{ cm}^2", 1.0),
]
# an unclosed last box is no answer, and no earlier box stands for it
UNCLOSED_LAST_BOX = [
    ("first \\boxed{5} then \\boxed{6", "5", 0.0),
    ("\\boxed{5}. Wait, that is wrong: \\boxed{\\frac{1}{", "5", 0.0),
    ("So $x = 5$, hence \\boxed{", "5", 0.0),
    ("\\boxed{5} \\boxed", "5", 0.0),
    ("\\boxed{5}\n\nActually, recomputing: \\boxed{7 + ", "5", 0.0),
    ("\\fbox{5} then \\fbox{6", "5", 0.0),
    ("The answer is 5. \\boxed{", "5", 0.0),
    ("\\boxed{5} and \\boxed{\\text{all } x \\in \\{1, 2", "5", 0.0),
    ("$\\boxed{5}$ \\boxed {", "5", 0.0),
    ("\\boxed{5} more text \\boxed{" + "x" * 100, "5", 0.0),
    ("The final answer is $5$. I hope it is correct. \\boxed{\\sqrt{", "5", 0.0),
    ("\\boxed{5} \\fbox{", "5", 0.0),
    ("$\\boxed{5}$\n\n\\boxed{\\begin{pmatrix}", "5", 0.0),
    ("The answer is $\\boxed{5}$, or rather \\boxed{\\dfrac{", "5", 0.0),
    ("\\boxed{6} then \\boxed{5}", "5", 1.0),
    ("\\boxed{5} and {", "5", 1.0),
]
FALSE_POSITIVE_CLASSES = {"spaced-digits": SPACED_DIGITS, "gold-range": GOLD_RANGES, "tiny-numbers": TINY_NUMBERS,
                          "units": UNITS, "unclosed-last-box": UNCLOSED_LAST_BOX}
WRITTEN_FORMS = [row for table in FALSE_POSITIVE_CLASSES.values() for row in table]


@pytest.mark.parametrize("extraction", list(rewards.EXTRACTIONS))
@pytest.mark.parametrize("response, gold, expected", WRITTEN_FORMS,
                         ids=[f"{name}-{i}" for name, table in FALSE_POSITIVE_CLASSES.items() for i in range(len(table))])
def test_false_positive_classes(response, gold, expected, extraction):
    assert rewards.score(response, gold, extraction=extraction) == expected


@pytest.mark.parametrize("extraction", list(rewards.EXTRACTIONS))
def test_false_positive_classes_in_the_worker_pool(extraction):
    """The same verdicts where collect and eval score: the parent's string checks and the workers' parser."""
    responses, golds, expected = (list(column) for column in zip(*WRITTEN_FORMS, strict=True))
    assert rewards.score_batch(responses, golds, workers=2, extraction=extraction, deadline=5.0) == expected


def test_every_class_has_ten_cases_that_were_false_positives():
    for name, table in FALSE_POSITIVE_CLASSES.items():
        assert sum(expected == 0.0 for _, _, expected in table) >= 10, name
        assert any(expected == 1.0 for _, _, expected in table), name  # and the right ones that must stay right


def test_math_verify_is_restored_after_each_call():
    """Our relative comparison of numbers and the recording of answers replace two math-verify functions within our
    calls only: a caller of math-verify itself gets its own behaviour back."""
    import math_verify.grader
    import math_verify.parser

    numeric, extract = math_verify.grader.sympy_numeric_eq, math_verify.parser.extract_match
    assert rewards.score("so $x = 10^{-20}$", "2 \\cdot 10^{-20}", extraction="math-verify") == 0.0
    assert rewards.score("\\boxed{e^{-100}}", "e^{-101}") == 0.0
    assert math_verify.grader.sympy_numeric_eq is numeric and math_verify.parser.extract_match is extract
