"""Unit tests for model-written code, judged outside the program they test.

A policy controls everything inside its program's process (builtins, the runner, the
interpreter's memory, how it exits), so no verdict is decided there. A task's `answer` is a
list of tests of one kind:

  assert tests, "assert f(9) == 92": each is split here into probes, the sub-expressions that
      need the solution (`f(9)`), and the rest of the assertion (`_p0 == 92`). Only the probes
      run in the sandbox (the expected values never enter it); each comes back as plain data
      (None, bool, int, float, str, bytes and lists, tuples, dicts, sets, frozensets of them:
      anything else fails the test, with the reason) and the assertion is evaluated here.
      An object whose __eq__ always answers True therefore earns nothing, and neither does a
      program that writes reports itself: each probe must be reported exactly once, and its
      value still has to be the right one.
  stdin/stdout tests, {"input": "3 4\\n", "output": "7\\n"}: the program runs once per test with
      that input; its output is compared here (`same_output`).

The host-side half of the assertion is evaluated over plain data with a small grammar: literals,
comparisons, arithmetic, boolean logic, comprehensions over plain data, the builtins in
JUDGE_NAMES and `math`. Tests outside it are refused with the reason, never run unjudged.
"""
from __future__ import annotations

import ast
import functools
import math
from dataclasses import dataclass
from types import CodeType

JUDGE_FUNCTIONS = (abs, all, any, bool, bytes, chr, dict, divmod, enumerate, filter, float,
                   frozenset, int, isinstance, len, list, map, max, min, ord, range, repr,
                   reversed, round, set, sorted, str, sum, tuple, type, zip)
JUDGE_NAMES = {f.__name__: f for f in JUDGE_FUNCTIONS} | {"math": math}
# attributes that reach code through a format string ("{0.__class__}".format(x))
BLOCKED_ATTRIBUTES = {"format", "format_map"}
JUDGE_NODES = (ast.Expression, ast.Compare, ast.BoolOp, ast.UnaryOp, ast.BinOp, ast.IfExp,
               ast.Constant, ast.Name, ast.Load, ast.Store, ast.List, ast.Tuple, ast.Set,
               ast.Dict, ast.Call, ast.keyword, ast.Attribute, ast.Subscript, ast.Slice,
               ast.Starred, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp,
               ast.comprehension, ast.cmpop, ast.boolop, ast.unaryop, ast.operator)


class UnjudgeableTest(ValueError):
    """A test this module cannot judge safely; the message says which and why."""


@dataclass(frozen=True)
class AssertTest:
    judges: tuple[tuple[str, CodeType], ...]  # per assert: (its text, the compiled judging
                                              # half, in which probe k is the name _p<k>)
    probes: tuple[int, ...]                   # indices into AssertPlan.probes this test needs


@dataclass(frozen=True)
class AssertPlan:
    probes: tuple[str, ...]              # expressions the sandbox evaluates, in order
    tests: tuple[AssertTest, ...]


@dataclass(frozen=True)
class StdioTest:
    input: str
    output: str


def plan(tests: list) -> AssertPlan | list[StdioTest]:
    """Parse a task's tests (all asserts, or all {"input", "output"} dicts)."""
    if not isinstance(tests, (list, tuple)) or not tests:
        raise UnjudgeableTest("tests must be a non-empty list of assert strings or of "
                              "{'input': ..., 'output': ...} dicts")
    if all(isinstance(t, str) for t in tests):
        return _plan_asserts(tuple(tests))
    if all(isinstance(t, dict) for t in tests):
        return [_stdio_test(i, t) for i, t in enumerate(tests)]
    raise UnjudgeableTest("tests mix kinds: give all assert strings or all "
                          "{'input': ..., 'output': ...} dicts")


def _stdio_test(index: int, test: dict) -> StdioTest:
    if set(test) != {"input", "output"} or not all(isinstance(v, str) for v in test.values()):
        raise UnjudgeableTest(f"test {index}: a stdin/stdout test is {{'input': str, "
                              f"'output': str}}, got keys {sorted(test)}")
    return StdioTest(test["input"], test["output"])


@functools.lru_cache(maxsize=4096)   # the same tests come back for every response of a group
def _plan_asserts(tests: tuple[str, ...]) -> AssertPlan:
    probes: list[str] = []
    parsed = []
    for index, text in enumerate(tests):
        try:
            module = ast.parse(text)
        except SyntaxError as err:
            raise UnjudgeableTest(f"test {index} is not valid Python: {err}") from None
        judges, first = [], len(probes)
        for statement in module.body:
            if isinstance(statement, ast.Import) and \
                    all(alias.name == "math" and not alias.asname for alias in statement.names):
                continue   # math is always there on the judging side
            if not isinstance(statement, ast.Assert):
                raise UnjudgeableTest(
                    f"test {index}: only assert statements can be judged outside the program "
                    f"(found `{ast.unparse(statement)}`); inline the setup into the assert, "
                    "e.g. assert Solver().solve(3) == 9")
            judges.append(_Splitter(index, probes).split(statement.test))
        if len(probes) == first:
            raise UnjudgeableTest(f"test {index} never calls the solution, so it cannot tell "
                                  f"a right program from a wrong one: {text!r}")
        parsed.append(AssertTest(tuple(judges), tuple(range(first, len(probes)))))
    return AssertPlan(tuple(probes), tuple(parsed))


class _Splitter:
    """Splits one assertion into probes (run in the sandbox) and the judge (run here). A name
    the judging side does not know belongs to the solution; a probe is the largest name,
    call, attribute or subscript rooted at one, taken whole."""

    def __init__(self, test_index: int, probes: list[str]):
        self.test_index, self.probes = test_index, probes

    def split(self, node: ast.expr) -> tuple[str, CodeType]:
        text = ast.unparse(node)
        self.bound = {n.id for comp in ast.walk(node) if isinstance(comp, ast.comprehension)
                      for n in ast.walk(comp.target) if isinstance(n, ast.Name)}
        judge = ast.Expression(self._split(node))
        ast.fix_missing_locations(judge)
        for sub in ast.walk(judge):
            self._vet(sub)
        return text, compile(judge, f"<test {self.test_index}>", "eval")

    def _solution_names(self, node: ast.AST) -> set[str]:
        return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)
                and n.id not in JUDGE_NAMES and n.id not in self.bound}

    def _split(self, node: ast.AST) -> ast.AST:
        if not self._solution_names(node):
            return node
        judge_call = isinstance(node, ast.Call) and not self._solution_names(node.func)
        if isinstance(node, (ast.Name, ast.Call, ast.Attribute, ast.Subscript)) and not judge_call:
            loop_vars = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} & self.bound
            if loop_vars:
                self._refuse(f"the call `{ast.unparse(node)}` depends on the loop variable(s) "
                             f"{sorted(loop_vars)}; write one assert per input")
            self.probes.append(ast.unparse(node))
            return ast.Name(f"_p{len(self.probes) - 1}", ast.Load())
        if isinstance(node, (ast.Lambda, ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom)):
            self._refuse(f"`{ast.unparse(node)}` is not supported in a test")
        for field, value in ast.iter_fields(node):
            if isinstance(value, list):
                setattr(node, field, [self._split(v) if isinstance(v, ast.AST) else v
                                      for v in value])
            elif isinstance(value, ast.AST):
                setattr(node, field, self._split(value))
        return node

    def _vet(self, node: ast.AST) -> None:
        if not isinstance(node, JUDGE_NODES):
            self._refuse(f"`{type(node).__name__}` is not supported on the judging side")
        name = node.id if isinstance(node, ast.Name) else \
            node.attr if isinstance(node, ast.Attribute) else ""
        if name.startswith("__") or name in BLOCKED_ATTRIBUTES:
            self._refuse(f"the name {name!r} is not allowed on the judging side")

    def _refuse(self, why: str):
        raise UnjudgeableTest(f"test {self.test_index}: {why}")


# --- what the sandbox runs -------------------------------------------------------------------

# The program under test: load solution.py, evaluate each probe in probes.txt, and write one
# line per probe to fd 3: "<index> <literal>" or "<index> !<error>". Only os is imported
# (json costs ~10 ms of start-up per program). The program may rewrite all of this; it still
# cannot do more than claim values.
RUNNER = r'''
import os, sys
def _literal(v, depth=0):
    t = type(v)
    if depth > 100:
        raise ValueError("nested more than 100 levels deep")
    if v is None or t is bool or t is int or t is str or t is bytes:
        return repr(v)
    if t is float:
        return repr(v) if v == v and v not in (float("inf"), float("-inf")) else \
            ("nan" if v != v else ("inf" if v > 0 else "-inf"))
    if t is list or t is tuple or t is set or t is frozenset:
        items = ", ".join(_literal(x, depth + 1) for x in v)
        if t is list:
            return "[" + items + "]"
        if t is tuple:
            return "(" + items + ("," if len(v) == 1 else "") + ")"
        return ("frozenset" if t is frozenset else "set") + "([" + items + "])"
    if t is dict:
        return "{" + ", ".join(_literal(k, depth + 1) + ": " + _literal(x, depth + 1)
                               for k, x in v.items()) + "}"
    raise TypeError(f"returned a {t.__module__}.{t.__qualname__}: only plain data (None, bool, "
                    "int, float, str, bytes, list, tuple, dict, set, frozenset) can be judged")
def _why(err):
    try:
        text = f"{type(err).__name__}: {err}"
    except BaseException:
        text = "an exception that cannot be printed"
    return text.replace("\n", " ")[:300]
_probes = open("probes.txt").read().split("\n")[:-1]
_scope = {"__name__": "__main__"}
try:
    exec(compile(open("solution.py").read(), "solution.py", "exec"), _scope)
except BaseException as _err:
    print("solution failed to load:", _why(_err), file=sys.stderr)
    os._exit(1)
for _i, _probe in enumerate(_probes):
    try:
        _line = f"{_i} " + _literal(eval(compile(_probe, f"probe_{_i}", "eval"), _scope))
    except BaseException as _err:
        _line = f"{_i} !" + _why(_err)
    os.write(3, (_line + "\n").encode("utf-8", "backslashreplace"))
'''


def runner_files(assert_plan: AssertPlan, code: str) -> dict[str, bytes]:
    return {"solution.py": code.encode("utf-8", "replace"), "runner.py": RUNNER.encode(),
            "probes.txt": "".join(p + "\n" for p in assert_plan.probes).encode()}


# --- judging, here -----------------------------------------------------------------------------

_MISSING = object()


def read_reports(text: str, count: int) -> list:
    """Probe values from the report lines: a value, an error string (BaseException), or
    _MISSING. A probe reported twice is refused: a program that guesses many values for one
    probe and reports them all must not pass."""
    values: list = [_MISSING] * count
    seen: set[int] = set()
    for line in text.split("\n"):
        index_text, _, body = line.partition(" ")
        if not index_text.isdigit() or int(index_text) >= count:
            continue
        index = int(index_text)
        if index in seen:
            values[index] = ValueError("reported more than once (a forged report)")
            continue
        seen.add(index)
        values[index] = RuntimeError(body[1:]) if body.startswith("!") else _decode(body)
    return values


def _decode(text: str):
    """Plain data from a literal written by the program: parsed, never evaluated."""
    try:
        return _literal_value(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError) as err:
        return ValueError(f"an unreadable value ({type(err).__name__})")


def _literal_value(node: ast.AST):
    if isinstance(node, ast.Constant) and not isinstance(node.value, complex) \
            and node.value is not Ellipsis:
        return node.value
    if isinstance(node, ast.Name) and node.id in ("nan", "inf"):
        return float(node.id)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _literal_value(node.operand)
        if type(value) in (int, float):
            return -value
    if isinstance(node, ast.List):
        return [_literal_value(e) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_literal_value(e) for e in node.elts)
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_literal_value(k): _literal_value(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords \
            and node.func.id in ("set", "frozenset") and len(node.args) == 1 \
            and isinstance(node.args[0], ast.List):
        items = [_literal_value(e) for e in node.args[0].elts]
        return set(items) if node.func.id == "set" else frozenset(items)
    raise ValueError("not plain data")


def judge_asserts(assert_plan: AssertPlan, reports: str) -> tuple[list[bool], list[str]]:
    """Verdict and reason ("" when passed) of each test, from the probes' report lines."""
    values = read_reports(reports, len(assert_plan.probes))
    verdicts, reasons = [], []
    for test in assert_plan.tests:
        why = _judge_one(test, values, assert_plan.probes)
        verdicts.append(not why)
        reasons.append(why)
    return verdicts, reasons


def _judge_one(test: AssertTest, values: list, probes: tuple[str, ...]) -> str:
    names = dict(JUDGE_NAMES)
    for k in test.probes:
        if values[k] is _MISSING:
            return f"`{probes[k]}` was never evaluated (the program ended first)"
        if isinstance(values[k], BaseException):
            return f"`{probes[k]}`: {values[k]}"
        names[f"_p{k}"] = values[k]
    for text, code in test.judges:
        try:
            # everything in globals: comprehensions cannot see an eval's locals
            if eval(code, {"__builtins__": {}, **names}):
                continue
            why = "failed"
        except Exception as err:   # noqa: BLE001 - a failing check is a failed test
            why = f"raised {type(err).__name__}: {err}"
        got = ", ".join(f"{probes[k]} = {repr(values[k])[:100]}" for k in test.probes)
        return f"assert {text} {why} ({got})"
    return ""


def same_output(actual: str, expected: str) -> bool:
    """Outputs equal up to trailing whitespace on each line and trailing blank lines (the
    usual competitive-programming checker)."""
    def lines(text: str) -> list[str]:
        return [line.rstrip() for line in text.rstrip().splitlines()]
    return lines(actual) == lines(expected)
