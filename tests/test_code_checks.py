"""Splitting assert tests into probes (run in the sandbox) and judges (run here), reading
the program's reports as plain data, and comparing stdin/stdout output. No processes."""
import pytest

from rewards.code_checks import (AssertPlan, StdioTest, UnjudgeableTest, judge_asserts, plan,
                                 read_reports, same_output)


def probes_and_judges(test: str):
    p = plan([test])
    return list(p.probes), [text for text, _ in p.tests[0].judges]


@pytest.mark.parametrize("test, probes", [
    ("assert f(9) == 92", ["f(9)"]),
    ("assert add(1, 2) == 3 and add(-1, 1) == 0", ["add(1, 2)", "add(-1, 1)"]),
    ("assert math.isclose(area(2), 12.56, rel_tol=0.001)", ["area(2)"]),
    ("assert set(common((3, 4, 5), (5, 4))) == set((4, 5))", ["common((3, 4, 5), (5, 4))"]),
    ("assert abs(f(2) - 3.14) < 1e-6", ["f(2)"]),
    ("assert not is_prime(8)", ["is_prime(8)"]),
    ("assert Solver().solve([1, 2])[0] == 1", ["Solver().solve([1, 2])[0]"]),
    ("assert f(2) + f(3) == 10", ["f(2)", "f(3)"]),
    ("assert all(x > 0 for x in f(3))", ["f(3)"]),
    ("assert sorted(f([3, 1])) == [1, 3]", ["f([3, 1])"]),
    ("assert CONSTANT == 7", ["CONSTANT"]),
    ("import math\nassert f(1) == math.pi", ["f(1)"]),
])
def test_asserts_split_into_probes_that_need_the_solution(test, probes):
    assert probes_and_judges(test)[0] == probes


@pytest.mark.parametrize("test, why", [
    ("x = f(1)\nassert x == 2", "only assert statements"),
    ("assert 1 + 1 == 2", "never calls the solution"),
    ("assert all(f(x) == 2 * x for x in range(3))", "loop variable"),
    ("assert sorted(f(1), key=lambda v: -v) == [2, 1]", "not supported"),
    ("assert (lambda: f(1))() == 1", None),            # a probe: the lambda runs inside
    ("assert f(1).__class__ == int", None),            # a probe: fine, the attribute is inside
    ("assert f(1) == '{0.__class__}'.format(1)", "not allowed"),
    ("assert f(1) == ().__class__", "not allowed"),
    ("assert f(1", "not valid Python"),
])
def test_tests_outside_the_grammar_are_refused_with_the_reason(test, why):
    if why is None:
        plan([test])
        return
    with pytest.raises(UnjudgeableTest, match=why):
        plan([test])


def test_kinds_cannot_mix_and_stdio_needs_both_fields():
    with pytest.raises(UnjudgeableTest, match="mix"):
        plan(["assert f(1) == 1", {"input": "", "output": ""}])
    with pytest.raises(UnjudgeableTest, match="input"):
        plan([{"stdin": "1"}])
    assert plan([{"input": "1 2\n", "output": "3\n"}]) == [StdioTest("1 2\n", "3\n")]


def test_judging_reads_plain_values_and_evaluates_here():
    p = plan(["assert f(9) == 92", "assert math.isclose(g(1), 0.1 + 0.2)",
              "assert set(h()) == {1, 2}", "assert f(0) == (1, [2], {'a': None})"])
    assert isinstance(p, AssertPlan) and p.probes == ("f(9)", "g(1)", "h()", "f(0)")
    verdicts, reasons = judge_asserts(p, "0 92\n1 0.30000000000000004\n2 [2, 1, 1]\n3 (1, [2], {'a': None})\n")
    assert verdicts == [True, True, True, True] and reasons == ["", "", "", ""]
    verdicts, reasons = judge_asserts(p, "0 91\n1 !ZeroDivisionError: division by zero\n3 [1, [2], {'a': None}]\n")
    assert verdicts == [False, False, False, False]
    assert reasons[0] == "assert f(9) == 92 failed (f(9) = 91)"
    assert reasons[1] == "`g(1)`: ZeroDivisionError: division by zero"
    assert "never evaluated" in reasons[2]
    assert "failed" in reasons[3]                      # a list is not the tuple expected


def test_a_probe_reported_twice_fails_whatever_the_values():
    p = plan(["assert f(1) == 5"])
    assert judge_asserts(p, "0 4\n0 5\n")[0] == [False]
    assert judge_asserts(p, "0 5\n")[0] == [True]


@pytest.mark.parametrize("text", [
    "__import__('os').system('touch /tmp/pwned')",   # a call: not plain data, never evaluated
    "(lambda: 1)()", "[1, 2" , "f(1)", "1 if True else 2", "{**{}}", "...",
    "[" * 100000 + "]" * 100000,                      # deeper than the parser allows
])
def test_reports_are_parsed_never_evaluated(text):
    [value] = read_reports(f"0 {text}\n", 1)
    assert isinstance(value, BaseException)


def test_report_values_keep_their_types():
    values = read_reports("0 nan\n1 -inf\n2 set([1, 2])\n3 frozenset([])\n4 b'x'\n5 -3\n6 True\n", 7)
    assert values[0] != values[0] and values[1] == float("-inf")
    assert values[2:] == [{1, 2}, frozenset(), b"x", -3, True]
    assert type(values[6]) is bool


def test_stdio_output_ignores_trailing_whitespace_only():
    assert same_output("7  \n\n\n", "7\n")
    assert same_output("1 2\r\n3\n", "1 2\n3")
    assert not same_output(" 7\n", "7\n")
    assert not same_output("7\n8\n", "7\n")
    assert not same_output("", "7\n")
