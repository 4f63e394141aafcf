"""Policy-coupled rewards: scored with the weights that sampled the batch, so they run on the
rollout worker (`runs_on: policy`, scope "batch") and get `policy=` a PolicyScorer
(actors/rollout.py). The maths is in rewards/self_rewards.py.

  self_certainty  Intuitor / Kang et al. (arXiv:2502.18581): mean KL(uniform || p_t)
  rlpr            RLPR (arXiv:2506.18254): probability of the reference answer after the
                  policy's own reasoning, minus a no-reasoning baseline
  laser           LaSeR (arXiv:2510.14943): scaled log-prob of a special token after the response
Group votes that use these scores (Borda voting) run on the reward worker: see
`certainty_vote`, listed after its certainty source.
"""
from __future__ import annotations

from core.records import Sample
from core.registry import register
from core.laser import laser_self_reward
from rewards.self_rewards import (answer_of, borda_vote, repetition_penalty, rlpr_reward,
                                  rlpr_score, rlpr_splice)


@register("reward", "self_certainty")
def self_certainty(samples: list[Sample], policy) -> list[float]:
    """Self-certainty of each response under the current policy (>= 0; 0 = uniform)."""
    return policy.self_certainty(samples)


@register("reward", "certainty_vote")
def certainty_vote(samples: list[Sample], extractor: str, certainty_source: str = "self_certainty",
                   power: float = 0.5) -> list[float]:
    """Label-free correctness (group scope): 1 when the response's answer is the group's
    Borda winner, votes (N - rank + 1)^power by self-certainty (arXiv:2502.18581: power 0.5;
    power 0 is plain majority voting as in TTRL)."""
    answers = [answer_of(s, extractor) for s in samples]
    winner = borda_vote([s.rewards[certainty_source] for s in samples], answers, power)
    return [1.0 if a is not None and a == winner else 0.0 for a in answers]


def _ids(policy, text: str) -> list[int]:
    return policy.tokenizer(text, add_special_tokens=False)["input_ids"]


@register("reward", "rlpr")
class RLPR:
    """reward = (1 - c_f) max(scoreB - scoreA, 0) + c_f format (+ the repetition penalty).

    scoreB: the policy's mean probability of the reference-answer tokens spliced after its own
    reasoning and answer tag; scoreA: the same for the prompt followed directly by the answer.
    RLPR computes scoreA once with the initial policy; here each (prompt, answer) gets it the
    first time it is seen and keeps it (checkpointed), which for a fresh prompt stream is the
    policy of that step [inferred]. Defaults are RLPR's (answer tags, c_f = 0.1, mean prob)."""

    def __init__(self, open_tag: str = "<answer>", close_tag: str = "</answer>",
                 answer_space: bool = True, format_coef: float = 0.1,
                 score_mode: str = "mean_exp_log_softmax", penalise_repetition: bool = True,
                 require_think: bool = True):
        self.open_tag, self.close_tag, self.answer_space = open_tag, close_tag, answer_space
        self.format_coef, self.score_mode = format_coef, score_mode
        self.penalise_repetition, self.require_think = penalise_repetition, require_think
        self.baselines: dict[str, float] = {}   # prompt + answer -> scoreA

    def format_ok(self, text: str) -> bool:
        tags = [t for t in (("<think>", "</think>") if self.require_think else ())
                + (self.open_tag, self.close_tag) if t]
        if any(text.count(t) != 1 for t in tags):
            return False
        positions = [text.index(t) for t in tags]
        return positions == sorted(positions)

    def __call__(self, samples: list[Sample], policy) -> list[float]:
        prefixes, targets = [], []
        for s in samples:
            prefix, target, _ = rlpr_splice(s.response_text, str(s.answer), self.open_tag,
                                            self.close_tag)
            if not self.answer_space:
                prefix = prefix.rstrip(" ")
            prefixes.append(s.prompt_ids + _ids(policy, prefix))
            targets.append(_ids(policy, target))
        scores_b = [rlpr_score(lp, self.score_mode) for lp in policy.token_logprobs(prefixes, targets)]
        self._add_baselines(samples, policy)
        out = []
        for s, b in zip(samples, scores_b):
            a = self.baselines[self._key(s)]
            r = rlpr_reward(b, a, self.format_ok(s.response_text), self.format_coef)
            out.append(r + (repetition_penalty(s.response_text) if self.penalise_repetition else 0.0))
        return out

    @staticmethod
    def _key(s: Sample) -> str:
        return f"{s.prompt_text}\x00{s.answer}"

    def _add_baselines(self, samples: list[Sample], policy) -> None:
        new = {self._key(s): s for s in samples if self._key(s) not in self.baselines}
        if not new:
            return
        space = " " if self.answer_space else ""
        rows = list(new.values())
        logprobs = policy.token_logprobs([s.prompt_ids + _ids(policy, space) for s in rows],
                                         [_ids(policy, str(s.answer)) for s in rows])
        for key, lp in zip(new, logprobs):
            self.baselines[key] = rlpr_score(lp, self.score_mode)

    def state_dict(self) -> dict:
        return {"baselines": dict(self.baselines)}

    def load_state_dict(self, state: dict) -> None:
        self.baselines = dict(state["baselines"])


@register("reward", "laser")
class LaSeR:
    """Last-token self-reward r_s = beta_v (log pi(z_c | x, y) - c_ref), with z_c a token the
    policy never emits, read right after the response (after its EOS).

    LaSeR (Qwen2.5): z_c = <|vision_start|>, c_ref = -23.0, beta_v = 0.1. `c_ref: null`
    measures it as the mean log-prob of z_c over the first batch scored (the paper measures
    it offline over ~300 responses) and keeps it (checkpointed). `token` is the text of z_c."""

    def __init__(self, token: str = "<|vision_start|>", c_ref: float | None = -23.0,
                 beta_v: float = 0.1):
        self.token, self.c_ref, self.beta_v = token, c_ref, beta_v

    def __call__(self, samples: list[Sample], policy) -> list[float]:
        token_id = policy.tokenizer.convert_tokens_to_ids(self.token)
        if token_id is None or token_id == policy.tokenizer.unk_token_id:
            raise ValueError(f"laser: token {self.token!r} is not in the tokenizer's vocabulary; "
                             "set kwargs.token to an unused token of this model")
        logprobs = [lp[0] for lp in policy.token_logprobs(
            [s.prompt_ids + s.response_ids for s in samples], [[token_id]] * len(samples))]
        if self.c_ref is None:
            self.c_ref = sum(logprobs) / len(logprobs)
        return [laser_self_reward(lp, self.c_ref, self.beta_v) for lp in logprobs]

    def state_dict(self) -> dict:
        return {"c_ref": self.c_ref}

    def load_state_dict(self, state: dict) -> None:
        self.c_ref = state["c_ref"]

