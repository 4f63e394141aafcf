"""Generative-judge rewards: an LLM served over an OpenAI-compatible API scores responses.

Every judge reward takes the judge's address in its kwargs (`url`, and optionally `model`,
`request_timeout_s`: seconds per HTTP request, `retries`: retries after a failed request,
`concurrency`: requests in flight) and `api`: "chat" (the default: the prompt is one user
message and the server applies the judge's chat template) or "completions" (the judge
continues the prompt as raw text, for base models or prompts written as a continuation).
It builds its prompt from a template you can replace (`template`, with {prompt}, {response},
... fields). A judge answer that does not parse raises `JudgeOutputError`: the reward worker
then gives the source's failure_value and counts a flag, never a crash. The parsing and
aggregation rules are pure functions below, each tested against the worked examples of
shared/methods/rewards.md.
"""
from __future__ import annotations

import math
import random
import re

from typing import TYPE_CHECKING

from core.answers import last_boxed
from core.records import Sample
from core.registry import register

if TYPE_CHECKING:
    from rewards.judge_client import Completion


class JudgeOutputError(ValueError):
    """The judge answered, but not in the format the method reads."""


def _complete(prompts: list[str], url: str, model: str = "judge", api: str = "chat",
              request_timeout_s: float = 30.0, retries: int = 2, concurrency: int = 8,
              **params) -> list[list[Completion]]:
    # imported here: the openai SDK loads only in processes that call a judge (wandb, for one,
    # announces every SDK it finds loaded)
    from rewards.judge_client import client_for
    client = client_for(url, model, request_timeout_s, retries, concurrency)
    results = client.generate(api, prompts, **params)
    if any(r is None for r in results):
        raise TimeoutError("judge unreachable or timed out (see rewardmill.judge log)")
    return results


def _judge_args(kwargs: dict) -> dict:
    return {k: kwargs[k] for k in ("url", "model", "api", "request_timeout_s", "retries",
                                   "concurrency") if k in kwargs}


# --- DeepSeek-GRM: pointwise scores with k-sample voting (arXiv:2504.02495) ---------------

GRM_TEMPLATE = (
    "You are a skilled little expert at scoring responses. Judge the response to the query "
    "by Instruction Adherence, Usefulness, Level of Detail and Relevance. First write "
    "specific criteria, then an analysis, then the score from 1 to 10.\n"
    "#### Conversation Context ####\n{prompt}\n"
    "[The Begin of Response 1]\n{response}\n[The End of Response 1]\n"
    "Answer in three lines: Specific Criteria: ... Analysis: ... Scores: \\boxed{{x}}\n")


def parse_grm_scores(text: str, count: int) -> list[int] | None:
    """The integer scores in the last \\boxed{a, b, ...}, if there are `count` of them in 1..10."""
    boxed = last_boxed(text)
    if boxed is None:
        return None
    try:
        scores = [int(x) for x in re.split(r"\s*,\s*", boxed.strip())]
    except ValueError:
        return None
    return scores if len(scores) == count and all(1 <= s <= 10 for s in scores) else None


def grm_vote(samples_scores: list[list[int] | None]) -> list[int]:
    """Voting: S*_i = sum over the k judge samples of S_i (unparsed samples skipped)."""
    valid = [s for s in samples_scores if s is not None]
    if not valid:
        raise JudgeOutputError("no judge sample had parseable scores")
    return [sum(column) for column in zip(*valid)]


@register("reward", "grm_pointwise")
def grm_pointwise(sample: Sample, k: int = 8, temperature: float = 0.5, max_tokens: int = 512,
                  template: str = GRM_TEMPLATE, **judge) -> float:
    """DeepSeek-GRM pointwise reward: k judge samples, scores summed; reward S* / (10 k')
    in [0.1, 1] over the k' samples that parsed (DeepSeek-GRM: k = 8, temperature 0.5)."""
    prompt = template.format(prompt=sample.question, response=sample.response_text)
    outs = _complete([prompt], n=k, temperature=temperature, max_tokens=max_tokens,
                     **_judge_args(judge))[0]
    parsed = [parse_grm_scores(c.text, 1) for c in outs]
    total = grm_vote(parsed)[0]
    return total / (10 * sum(p is not None for p in parsed))


# --- pairwise GenRM with BRPO's bootstrapped reference (Writing-Zero, arXiv:2506.00103) ----

PAIRWISE_TEMPLATE = (
    "Compare two responses to the same request. Write your principles and critique, then "
    "score each response from 0 to 10 as: Scores: \\boxed{{a, b}}\n"
    "Request:\n{prompt}\n[Response A]\n{first}\n[Response B]\n{second}\n")


def parse_pair_scores(text: str) -> tuple[float, float] | None:
    boxed = last_boxed(text)
    try:
        a, b = (float(x) for x in boxed.split(","))
    except (AttributeError, ValueError):
        return None
    return (a, b) if 0 <= a <= 10 and 0 <= b <= 10 else None


def brpo_rewards(ref: int, wins_both_orders: list[bool | None]) -> list[float]:
    """+1 when a response beat the reference in both orders, -1 otherwise, 0 for the reference."""
    return [0.0 if i == ref else (1.0 if w else -1.0) for i, w in enumerate(wins_both_orders)]


@register("reward", "pairwise_brpo")
def pairwise_brpo(samples: list[Sample], seed: int = 0, max_tokens: int = 512,
                  template: str = PAIRWISE_TEMPLATE, **judge) -> list[float]:
    """Scope "group": each response vs a random reference of its group, judged in both
    orders (2(G-1) calls in parallel); a response wins only if it wins both; ties lose."""
    ref = random.Random(f"{seed}/{samples[0].group_id}").randrange(len(samples))
    others = [i for i in range(len(samples)) if i != ref]
    prompts = []
    for i in others:
        for first, second in ((samples[i], samples[ref]), (samples[ref], samples[i])):
            prompts.append(template.format(prompt=samples[0].question,
                                           first=first.response_text, second=second.response_text))
    outs = _complete(prompts, temperature=0.0, max_tokens=max_tokens, **_judge_args(judge))
    wins: list[bool | None] = [None] * len(samples)
    for j, i in enumerate(others):
        forward, backward = parse_pair_scores(outs[2 * j][0].text), parse_pair_scores(outs[2 * j + 1][0].text)
        if forward is None or backward is None:
            raise JudgeOutputError(f"pairwise judge scores did not parse for response {i}")
        wins[i] = forward[0] > forward[1] and backward[1] > backward[0]
    return brpo_rewards(ref, wins)


# --- RLBFF: principle satisfied? Yes/No log-odds (arXiv:2509.21319) -----------------------

RLBFF_TEMPLATE = ("{prompt}\n{response}\nEvaluate the response to the previous prompt in terms "
                  "of whether it satisfies this principle: {principle}. Only answer Yes or No.\n")


def yes_no_margin(top_logprobs: dict[str, float], yes: str = "Yes", no: str = "No") -> float:
    """log p(Yes) - log p(No) at the first answer token (= logit(Yes) - logit(No))."""
    def best(word):
        found = [v for t, v in top_logprobs.items() if t.strip() == word]
        return max(found) if found else None
    y, n = best(yes), best(no)
    if y is None or n is None:
        raise JudgeOutputError(f"{yes!r} and {no!r} are not both among the judge's top tokens")
    return y - n


@register("reward", "rlbff")
def rlbff(sample: Sample, principle: str, top_k: int = 20, template: str = RLBFF_TEMPLATE,
          yes_token: str = "Yes", no_token: str = "No", **judge) -> float:
    """RLBFF reward r = logit(Yes) - logit(No) for "does the response satisfy `principle`".
    `yes_token`/`no_token`: the judge's first token of each answer (a character tokenizer: "Y", "N")."""
    prompt = template.format(prompt=sample.question, response=sample.response_text,
                             principle=principle)
    out = _complete([prompt], max_tokens=1, temperature=0.0, logprobs=top_k,
                    **_judge_args(judge))[0][0]
    if not out.top_logprobs:
        raise JudgeOutputError("the judge returned no log-probs")
    return yes_no_margin(out.top_logprobs[0], yes_token, no_token)


# --- soft verifier: p("1") from the judge's logits (arXiv:2503.23829) ---------------------

SOFT_VERIFIER_TEMPLATE = ("Question: {prompt}\nReference answer: {answer}\nResponse: {response}\n"
                          "Is the response correct? Answer 1 for yes, 0 for no: ")


def two_token_probability(top_logprobs: dict[str, float], positive: str = "1",
                          negative: str = "0") -> float:
    """p(positive) renormalised over {positive, negative}: sigmoid(l_pos - l_neg)."""
    return 1 / (1 + math.exp(-yes_no_margin(top_logprobs, positive, negative)))


@register("reward", "soft_verifier")
def soft_verifier(sample: Sample, top_k: int = 20, template: str = SOFT_VERIFIER_TEMPLATE,
                  **judge) -> float:
    """Soft verifier reward: the judge's probability that the response is correct."""
    prompt = template.format(prompt=sample.question, answer=sample.answer,
                             response=sample.response_text)
    out = _complete([prompt], max_tokens=1, temperature=0.0, logprobs=top_k,
                    **_judge_args(judge))[0][0]
    if not out.top_logprobs:
        raise JudgeOutputError("the judge returned no log-probs")
    return two_token_probability(out.top_logprobs[0])


# --- rubric anchors (Rubicon, arXiv:2508.12790) --------------------------------------------

RUBRIC_TEMPLATE = ("Request:\n{prompt}\nResponse:\n{response}\nCriterion: {criterion}\n"
                   "Score how well the response meets the criterion from 0 to 10: \\boxed{{x}}\n")


def rubric_score(weights: list[float], scores: list[float], veto: list[bool] | None = None,
                 saturation: float | None = None, shaping: float | None = None,
                 veto_threshold: float = 0.0) -> float:
    """Weighted mean of per-dimension scores in [0, 1]. A veto dimension scoring at or below
    `veto_threshold` makes the reward 0. [inferred] saturation kappa maps each score through
    (1 - exp(-kappa s)) / (1 - exp(-kappa)); shaping gamma maps the result R to R**gamma."""
    if veto and any(v and s <= veto_threshold for v, s in zip(veto, scores)):
        return 0.0
    if saturation:
        scores = [(1 - math.exp(-saturation * s)) / (1 - math.exp(-saturation)) for s in scores]
    total = sum(w * s for w, s in zip(weights, scores)) / sum(weights)
    return total ** shaping if shaping else total


@register("reward", "rubric")
def rubric(sample: Sample, criteria: list[dict], saturation: float | None = None,
           shaping: float | None = None, max_tokens: int = 256, template: str = RUBRIC_TEMPLATE,
           **judge) -> float:
    """Rubric-anchored reward: one judge call per criterion ({criterion, weight, veto}),
    each scored 0..10 and scaled to [0, 1], then aggregated by `rubric_score`."""
    prompts = [template.format(prompt=sample.question, response=sample.response_text,
                               criterion=c["criterion"]) for c in criteria]
    outs = _complete(prompts, temperature=0.0, max_tokens=max_tokens, **_judge_args(judge))
    scores = []
    for c, out in zip(criteria, outs):
        boxed = last_boxed(out[0].text)
        try:
            value = float(boxed)
        except (TypeError, ValueError):
            raise JudgeOutputError(f"criterion {c['criterion']!r}: no \\boxed{{score}}") from None
        scores.append(min(max(value / 10, 0.0), 1.0))
    sample.metadata.setdefault("rubric_scores", scores)
    return rubric_score([c.get("weight", 1.0) for c in criteria], scores,
                        [c.get("veto", False) for c in criteria], saturation, shaping)


# --- SSR-Zero: the policy judges its own output (arXiv:2505.16637) ------------------------

SELF_JUDGE_TEMPLATE = (
    "Score the following response from 0 to 100, where 0 means no meaning preserved and 100 "
    "means perfect. Give 0 to responses with irrelevant content, in the wrong language, or "
    "offering several alternatives. Think first, then end with 'Score: <n>'.\n"
    "Source:\n{prompt}\nResponse:\n{response}\n")


def parse_self_score(text: str) -> float:
    """'... Score: 85' -> 0.85."""
    found = re.findall(r"Score:\s*(\d+(?:\.\d+)?)", text)
    if not found or not 0 <= float(found[-1]) <= 100:
        raise JudgeOutputError("no 'Score: n' with 0 <= n <= 100 in the judge output")
    return float(found[-1]) / 100


@register("reward", "self_judge")
def self_judge(sample: Sample, max_tokens: int = 512, template: str = SELF_JUDGE_TEMPLATE,
               **judge) -> float:
    """SSR-Zero self-reward: the policy scores its own response, reference-free; reward
    score / 100. With `judge.model: policy` the served judge reloads the current policy every
    `judge.refresh_every` steps, so it lags the sampling policy by at most refresh_every - 1
    steps (logged as judge/staleness_steps); with 0 it stays the policy the run started from."""
    prompt = template.format(prompt=sample.question, response=sample.response_text)
    out = _complete([prompt], temperature=0.0, max_tokens=max_tokens, **_judge_args(judge))
    return parse_self_score(out[0][0].text)


# --- step critiques: CAPO voting and a generative PRM's first error -------------------------

CRITIQUE_TEMPLATE = (
    "Problem:\n{prompt}\nReference answer: {answer}\nSolution, in numbered steps:\n{steps}\n"
    "List the numbers of all incorrect steps as \\boxed{{2, 5}}, or \\boxed{{}} if none.\n")

FIRST_ERROR_TEMPLATE = (
    "Problem:\n{prompt}\nReference answer: {answer}\nSolution, in numbered steps:\n{steps}\n"
    "Return the number of the earliest incorrect step in \\boxed{{}}, or \\boxed{{-1}} if "
    "every step is correct.\n")


def numbered_steps(sample: Sample) -> str:
    if not sample.steps:
        raise JudgeOutputError("the sample has no steps: set rollout.step_delimiter")
    return "\n".join(f"Step {i + 1}: {s.strip()}" for i, s in enumerate(sample.steps))


def parse_step_set(text: str, n_steps: int) -> set[int] | None:
    boxed = last_boxed(text)
    if boxed is None:
        return None
    try:
        found = {int(x) for x in re.split(r"\s*,\s*", boxed.strip()) if x}
    except ValueError:
        return None
    return {s for s in found if 1 <= s <= n_steps}


def vote_steps(critiques: list[set[int]], rule: str = "majority") -> set[int]:
    """CAPO voting over k critiques' sets of wrong steps: intersection, majority
    (flagged by at least k/2), or union."""
    if not critiques:
        return set()
    if rule == "intersection":
        return set.intersection(*critiques)
    if rule == "union":
        return set.union(*critiques)
    if rule == "majority":
        counts: dict[int, int] = {}
        for c in critiques:
            for s in c:
                counts[s] = counts.get(s, 0) + 1
        return {s for s, n in counts.items() if n >= len(critiques) / 2}
    raise ValueError(f"vote rule must be intersection, majority or union, got {rule!r}")


@register("reward", "step_critique")
def step_critique(sample: Sample, k: int = 4, vote: str = "majority", temperature: float = 0.7,
                  max_tokens: int = 512, template: str = CRITIQUE_TEMPLATE, **judge) -> list[float]:
    """Granularity "step": k sampled critiques name the wrong steps; after voting, 1.0 marks
    a flagged step, 0.0 a clean one (CAPO: k = 4; intersection for small policies)."""
    prompt = template.format(prompt=sample.question, answer=sample.answer,
                             steps=numbered_steps(sample))
    outs = _complete([prompt], n=k, temperature=temperature, max_tokens=max_tokens,
                     **_judge_args(judge))[0]
    parsed = [parse_step_set(c.text, len(sample.steps)) for c in outs]
    valid = [p for p in parsed if p is not None]
    if not valid:
        raise JudgeOutputError("no critique listed steps in \\boxed{...}")
    flagged = vote_steps(valid, vote)
    return [1.0 if i + 1 in flagged else 0.0 for i in range(len(sample.steps))]


def first_error_to_steps(index: int | None, n_steps: int) -> list[float]:
    """Per step 1.0 = correct: the steps before the first error. -1 or an unparsed answer
    means no error found (FAPO's rule: a parse failure is not a flaw)."""
    if index is None or index < 1 or index > n_steps:
        return [1.0] * n_steps
    return [1.0 if i + 1 < index else 0.0 for i in range(n_steps)]


@register("reward", "genprm_first_error")
def genprm_first_error(sample: Sample, max_tokens: int = 512, mark: str = "correct",
                       template: str = FIRST_ERROR_TEMPLATE, **judge) -> list[float]:
    """Granularity "step": a generative PRM names the earliest wrong step (FAPO's GenRM,
    SPARK); steps before it score 1.0, it and later ones 0.0 (mark "correct"; with step_reduce
    "min" the scalar is 1.0 for a sound solution). mark "wrong" flips it: 1.0 from the first
    error on, so step_reduce "max" is 1.0 for a flawed solution (what FAPO's flaw_source reads)."""
    if mark not in ("correct", "wrong"):
        raise ValueError(f"genprm_first_error kwargs.mark must be 'correct' or 'wrong', got {mark!r}")
    prompt = template.format(prompt=sample.question, answer=sample.answer,
                             steps=numbered_steps(sample))
    out = _complete([prompt], temperature=0.0, max_tokens=max_tokens, **_judge_args(judge))
    boxed = last_boxed(out[0][0].text)
    try:
        index = int(boxed.strip())
    except (AttributeError, ValueError):
        index = None
    steps = first_error_to_steps(index, len(sample.steps))
    return steps if mark == "correct" else [1.0 - x for x in steps]
