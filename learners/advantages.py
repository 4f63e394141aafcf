"""Advantage estimators: rewards of a whole rollout batch -> per-token advantages.

Each estimator is a pure function `fn(x: AdvantageInputs, **options) -> Advantages`,
registered by name with `@estimator(...)` and chosen by `algorithm.estimator`; its options
come from `algorithm.estimator_options`. Shapes: B responses, R response tokens. It runs once
over the whole rollout batch on the driver, so batch-level statistics (Lite PPO's batch
std, REINFORCE++'s whitening) are over every rank's samples, not one micro-batch.

Where an estimator is registered it declares what config validation and build_train_batch
need to know (see `estimator`); an estimator imported by dotted path may set the same
attributes on itself, and has the defaults otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from core.records import Sample
from core.registry import register
from core.steps import step_values_to_tokens
from core.laser import laser_self_advantages


@dataclass
class AdvantageInputs:
    rewards: torch.Tensor            # [B] combined scalar reward of each response (plus its
                                     # summed token_rewards for a token_rewards="summed" estimator)
    group: torch.Tensor              # [B] long: index of the response's prompt group
    mask: torch.Tensor               # [B, R] 1 on response tokens (before any loss masking)
    token_rewards: torch.Tensor      # [B, R] per-token rewards added on top (e.g. -beta * KL)
    samples: list[Sample]            # named sources, step scores, metadata
    values: torch.Tensor | None = None  # [B, R] critic values V(s_t) (GAE only)


@dataclass
class Advantages:
    advantages: torch.Tensor                 # [B, R], zero outside `mask`
    returns: torch.Tensor | None = None      # [B, R] critic regression targets (GAE)
    keep: torch.Tensor | None = None         # [B] bool; False drops a sample from the loss


def estimator(name: str, *, group_baseline=False, token_rewards=None, needs_values=False):
    """Register an advantage estimator with its properties; each is a value or a function of
    the estimator's options (`lambda baseline="none", **_: baseline == "group"`):

    group_baseline: it compares each response with the others of its prompt group, so
        rollout.responses_per_prompt must be >= 2 (with one response the outcome cancels).
    token_rewards:  how it takes x.token_rewards (the KL penalty of algorithm.kl_in_reward_coef
        and algorithm.step_rewards): "tokens" = it reads them per token itself; "summed" =
        build_train_batch adds each response's sum to its scalar reward (as verl's GRPO reads
        token_level_rewards.sum(-1)); None = it cannot use them (it thresholds successes or
        reads named sources), and config validation refuses those settings.
    needs_values:   it reads critic values (x.values).
    """
    def wrap(fn):
        fn.group_baseline, fn.token_rewards, fn.needs_values = (group_baseline, token_rewards,
                                                                needs_values)
        return register("advantage", name)(fn)
    return wrap


def declared(fn, prop: str, options: dict | None = None):
    """The property `prop` (see `estimator`) of estimator `fn` under these options."""
    value = getattr(fn, prop, None)
    return value(**(options or {})) if callable(value) else value


def needs_values(fn) -> bool:
    return bool(declared(fn, "needs_values"))


# --- shared helpers ------------------------------------------------------------------------


def group_stats(values: torch.Tensor, group: torch.Tensor, unbiased: bool = True):
    """Per-sample mean and std of the sample's group (unbiased = torch.std convention).

    Accumulated in float64, where the sum of up to 2^29 equal float32 values is exact: a
    constant group's mean is then its value and `values - mean` is exactly 0. In float32,
    16 x 0.1 does not sum to 16 * 0.1, and GRPO divided that rounding noise by std + eps."""
    v = values.double()
    n = int(group.max()) + 1
    count = torch.zeros(n, dtype=v.dtype).index_add_(0, group, torch.ones_like(v))
    mean = torch.zeros_like(count).index_add_(0, group, v) / count
    sq = torch.zeros_like(count).index_add_(0, group, (v - mean[group]) ** 2)
    dof = (count - 1).clamp(min=1) if unbiased else count
    return mean[group].to(values.dtype), (sq / dof).sqrt()[group].to(values.dtype)


def broadcast(per_sample: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return per_sample[:, None] * mask


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8,
                  shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) * rsqrt(var + eps) over the tokens in `mask` (unbiased var), zero outside it;
    shift_mean=False only scales, x * rsqrt(var + eps).

    rsqrt(var + eps), as verl's masked_whiten and OpenRLHF do, not / (std + eps): values that
    differ only by float rounding (var ~ 1e-16) are scaled by at most eps^-1/2 = 1e4 and stay
    ~1e-4, where / (std + 1e-8) made them O(1). Statistics in float64, as in group_stats, so
    equal float32 values have x - mean = 0 exactly."""
    m = mask.double()
    v = x.double()
    n = m.sum()
    mean = (v * m).sum() / n
    var = (((v - mean) * m) ** 2).sum() / (n - 1).clamp(min=1)
    centred = v - mean if shift_mean else v
    return (centred * torch.rsqrt(var + eps) * m).to(x.dtype)


def successes(x: AdvantageInputs, threshold: float) -> torch.Tensor:
    return (x.rewards > threshold).float()


def source_scores(x: AdvantageInputs, source: str) -> torch.Tensor:
    try:
        return torch.tensor([float(s.rewards[source]) for s in x.samples])
    except KeyError:
        raise KeyError(f"reward source {source!r} is missing: add it to reward.sources") from None


def _grpo_scalar(rewards, group, norm_by_std, eps, unbiased=True):
    mean, std = group_stats(rewards, group, unbiased)
    centred = rewards - mean
    return centred / (std + eps) if norm_by_std else centred


# --- estimators ----------------------------------------------------------------------------


@estimator("grpo", group_baseline=True, token_rewards="summed")
def grpo(x: AdvantageInputs, norm_by_std: bool = True, eps: float = 1e-6) -> Advantages:
    """GRPO (DeepSeekMath, arXiv:2402.03300): A_i = (r_i - mean_G) / (std_G + eps).

    `norm_by_std=False` is Dr.GRPO's A_i = r_i - mean_G (arXiv:2503.20783).
    """
    return Advantages(broadcast(_grpo_scalar(x.rewards, x.group, norm_by_std, eps), x.mask))


@estimator("rloo", group_baseline=True, token_rewards="summed")
def rloo(x: AdvantageInputs) -> Advantages:
    """RLOO (Ahmadian et al., arXiv:2402.14740): A_i = r_i - mean of the other G-1 rewards."""
    mean, _ = group_stats(x.rewards, x.group)
    count = torch.zeros(int(x.group.max()) + 1).index_add_(
        0, x.group, torch.ones_like(x.rewards))[x.group]
    adv = (x.rewards - mean) * count / (count - 1).clamp(min=1)
    return Advantages(broadcast(adv, x.mask))


def _token_returns(x: AdvantageInputs, scalar: torch.Tensor, gamma: float) -> torch.Tensor:
    """Discounted return per token of: `scalar` at each response's last token + token_rewards."""
    rewards = x.token_rewards.clone()
    last = (x.mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(scalar)), last] += scalar
    returns = torch.zeros_like(rewards)
    running = torch.zeros(len(scalar))
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running * x.mask[:, t]
        returns[:, t] = running
    return returns * x.mask


@estimator("reinforce_pp", token_rewards="tokens",
           group_baseline=lambda baseline="none", **_: baseline == "group")
def reinforce_pp(x: AdvantageInputs, baseline: str = "none", gamma: float = 1.0,
                 baseline_of: str = "outcome") -> Advantages:
    """REINFORCE++ (Hu et al., arXiv:2501.03262). Follows the paper's token-level advantage
    A_{q,o_t} = r(o_{1:T}, q) - beta * sum_{i=t..T} KL(i) and its global normalisation
    A_norm = (A - mean over the batch) / std over the batch (Eqs. 8 and 10 as RLinf's docs
    number them; the numbering moves between arXiv versions), as OpenRLHF computes them: the
    outcome reward on the last token plus the per-token rewards (the KL penalty of
    algorithm.kl_in_reward_coef, any step rewards) as a return-to-go, discounted by gamma.

    baseline="group" (REINFORCE++-baseline) first subtracts a group mean, of
      baseline_of="outcome": the outcome reward r only; per-token rewards stay returns-to-go
        (OpenRLHF's reinforce_baseline), or
      baseline_of="summed": each response's summed reward r + sum_t token_rewards, the result
        broadcast to every token with no return-to-go (verl's
        compute_reinforce_plus_plus_baseline_outcome_advantage).
    With a group baseline the global normalisation only divides by the batch std: both
    references subtract the batch mean again, which gives every token of a constant group
    -mean/std, non-zero whenever response lengths or KL differ."""
    if baseline not in ("none", "group"):
        raise ValueError(f"reinforce_pp baseline must be none or group, got {baseline!r}")
    if baseline_of not in ("outcome", "summed"):
        raise ValueError(f"reinforce_pp baseline_of must be outcome or summed, got {baseline_of!r}")
    if baseline == "none":
        return Advantages(masked_whiten(_token_returns(x, x.rewards, gamma), x.mask))
    if baseline_of == "summed":
        summed = x.rewards + (x.token_rewards * x.mask).sum(1)
        values = broadcast(summed - group_stats(summed, x.group)[0], x.mask)
    else:
        values = _token_returns(x, x.rewards - group_stats(x.rewards, x.group)[0], gamma)
    return Advantages(masked_whiten(values, x.mask, shift_mean=False))


@estimator("remax", token_rewards="summed")
def remax(x: AdvantageInputs) -> Advantages:
    """ReMax (Li et al., arXiv:2310.10505): A_i = r_i - r(greedy response to the same prompt).

    The scheduler decodes one greedy response per prompt and stores its reward in
    `sample.metadata["greedy_reward"]`."""
    try:
        base = torch.tensor([float(s.metadata["greedy_reward"]) for s in x.samples])
    except KeyError:
        raise KeyError("remax needs metadata['greedy_reward']; the scheduler adds it when "
                       "algorithm.greedy_baseline=true") from None
    return Advantages(broadcast(x.rewards - base, x.mask))


@estimator("lite_ppo", group_baseline=True, token_rewards="summed")
def lite_ppo(x: AdvantageInputs, eps: float = 1e-6) -> Advantages:
    """Lite PPO (arXiv:2508.08221): (r_i - group mean) / (std of all rewards in the batch).

    The std is unbiased and over the whole rollout batch (every rank's samples)."""
    mean, _ = group_stats(x.rewards, x.group)
    return Advantages(broadcast((x.rewards - mean) / (x.rewards.std() + eps), x.mask))


@estimator("psr_nsr")
def psr_nsr(x: AdvantageInputs, mode: str = "w", positive_weight: float = 0.1,
            success_threshold: float = 0.5) -> Advantages:
    """PSR / NSR / W-REINFORCE (Zhu et al., arXiv:2506.01347), no baseline, no normalisation.

    mode "psr": A = 1 on correct, 0 on wrong; "nsr": 0 on correct, -1 on wrong;
    "w" (W-REINFORCE): positive_weight (lambda, 0.1) on correct, -1 on wrong.
    Correct means reward > success_threshold."""
    s = successes(x, success_threshold)
    table = {"psr": (1.0, 0.0), "nsr": (0.0, -1.0), "w": (positive_weight, -1.0)}
    if mode not in table:
        raise ValueError(f"psr_nsr mode must be psr, nsr or w, got {mode!r}")
    right, wrong = table[mode]
    return Advantages(broadcast(s * right + (1 - s) * wrong, x.mask))


@estimator("weighted_grpo", group_baseline=True)
def weighted_grpo(x: AdvantageInputs, reading: str = "scale_negative",
                  negative_weight: float = 2.0, success_threshold: float = 0.5,
                  eps: float = 1e-6) -> Advantages:
    """Weighted GRPO with positive/negative prompt pairs ("Beyond Variance", arXiv:2602.03452).

    Outcomes map to +1 (success) / -negative_weight (failure). Three readings [inferred]:
      "pooled":         z-score with mean and population std pooled over the pair's two groups
                        (`metadata["pair_id"]`; a group without one is its own pair)
      "mean_center":    r~ - mean of the group
      "scale_negative": z-score per group (population std), then negative advantages
                        multiplied by negative_weight (default, the spec's favoured reading)
    """
    s = successes(x, success_threshold)
    mapped = s - (1 - s) * negative_weight
    if reading == "pooled":
        ids: dict = {}
        pair_of_group = {}
        for g, sample in zip(x.group.tolist(), x.samples):
            pair_of_group.setdefault(g, sample.metadata.get("pair_id", f"group-{g}"))
        pair = torch.tensor([ids.setdefault(pair_of_group[g], len(ids)) for g in x.group.tolist()])
        mean, std = group_stats(mapped, pair, unbiased=False)
        adv = (mapped - mean) / (std + eps)
    elif reading == "mean_center":
        adv = mapped - group_stats(mapped, x.group)[0]
    elif reading == "scale_negative":
        mean, std = group_stats(mapped, x.group, unbiased=False)
        adv = (mapped - mean) / (std + eps)
        adv = torch.where(adv < 0, adv * negative_weight, adv)
    else:
        raise ValueError(f"weighted_grpo reading must be pooled, mean_center or scale_negative, "
                         f"got {reading!r}")
    return Advantages(broadcast(adv, x.mask))


@estimator("fapo", group_baseline=True)
def fapo(x: AdvantageInputs, flaw_source: str = "flawed", penalty: float = 1.0,
         success_threshold: float = 0.5, norm_by_std: bool = True,
         eps: float = 1e-6) -> Advantages:
    """FAPO (arXiv:2510.22543): reward +1 correct, -1 wrong, and -penalty (lambda = 1) more
    for a flawed positive (a correct answer that reward source `flaw_source` flags), then
    GRPO's group advantage. Flawed positives are rewarded while wrong answers outnumber
    sound ones in the group, and penalised once sound ones dominate."""
    s = successes(x, success_threshold)
    flawed = (source_scores(x, flaw_source) > 0.5).float() * s
    shaped = 2 * s - 1 - penalty * flawed
    return Advantages(broadcast(_grpo_scalar(shaped, x.group, norm_by_std, eps), x.mask))


@estimator("grpo_s", group_baseline=True, token_rewards="summed")
def grpo_s(x: AdvantageInputs, hardness_source: str = "hardness", responsiveness: float = 1.0,
           norm_by_std: bool = True, eps: float = 1e-6) -> Advantages:
    """GRPO-S difficulty scaling (DR-IRL, arXiv:2503.18991): A_i = alpha_i * GRPO A_i with
    alpha_i = sigmoid(delta_i) / sigmoid(mean delta over the batch) * responsiveness, where
    delta_i (data hardness, 1 - similarity to a demonstration) comes from `hardness_source`
    and responsiveness is alpha^M (1 when not measured)."""
    delta = source_scores(x, hardness_source)
    alpha = torch.sigmoid(delta) / torch.sigmoid(delta.mean()) * responsiveness
    adv = alpha * _grpo_scalar(x.rewards, x.group, norm_by_std, eps)
    return Advantages(broadcast(adv, x.mask))


@estimator("brpo", group_baseline=True)
def brpo(x: AdvantageInputs, reference_source: str = "vs_reference",
         skew_threshold: float = 0.6) -> Advantages:
    """BRPO (Writing-Zero, arXiv:2506.00103): A_i = R_i from `reference_source`, a
    bootstrapped-reference source (+1 beats the group's random reference, -1 not, 0 the
    reference; rewards/pairwise.py), with no normalisation. Groups with
    |sum R| / G > skew_threshold are dropped from the loss."""
    scores = source_scores(x, reference_source)
    total = torch.zeros(int(x.group.max()) + 1).index_add_(0, x.group, scores)
    count = torch.zeros_like(total).index_add_(0, x.group, torch.ones_like(scores))
    keep = ((total.abs() / count) <= skew_threshold)[x.group]
    return Advantages(broadcast(scores, x.mask), keep=keep)


@estimator("rover", group_baseline=True, token_rewards="summed")
def rover(x: AdvantageInputs, norm_by_std: bool = False, eps: float = 1e-6) -> Advantages:
    """ROVER's reward r~ = r - group mean (arXiv:2509.24981; the released Math script
    divides by the group std too: norm_by_std=true). Use with loss "rover"."""
    return Advantages(broadcast(_grpo_scalar(x.rewards, x.group, norm_by_std, eps), x.mask))


@estimator("pacs")
def pacs(x: AdvantageInputs) -> Advantages:
    """PACS (arXiv:2509.02522): the outcome itself is the label of a supervised loss; the
    per-token "advantage" carries r in {0, 1} to loss "pacs", which forms the score."""
    return Advantages(broadcast(x.rewards, x.mask))


@estimator("capo", group_baseline=True)
def capo(x: AdvantageInputs, critique_source: str = "step_errors", whole_weight: float = 2.0,
         process_weight: float = 1.0, success_threshold: float = 0.5, norm_by_std: bool = True,
         eps: float = 1e-6) -> Advantages:
    """CAPO (arXiv:2508.02298) token rewards R_t = correct * W_whole - flagged(t) * W_process,
    where a token is flagged when `critique_source` marks its step wrong (step score > 0.5),
    then normalised against all tokens of all responses in the group (mean, unbiased std)."""
    s = successes(x, success_threshold)
    flagged = torch.zeros_like(x.mask)
    for i, sample in enumerate(x.samples):
        steps = sample.step_scores.get(critique_source)
        if steps is None:
            raise KeyError(f"capo needs step scores from reward source {critique_source!r} "
                           "(a granularity: step source, with rollout.step_delimiter set)")
        marks = [1.0 if v > 0.5 else 0.0 for v in steps]
        flagged[i] = step_values_to_tokens(sample.step_ends, marks, x.mask.shape[1])
    rewards = s[:, None] * whole_weight - flagged * process_weight
    on = x.mask.bool()   # group statistics over every token of the group's responses
    adv = torch.zeros_like(x.mask)
    adv[on] = _grpo_scalar(rewards[on], x.group[:, None].expand_as(on)[on], norm_by_std, eps)
    return Advantages(adv)


def _gae(x: AdvantageInputs, gamma: float, lam: float):
    rewards = x.token_rewards.clone()
    last = (x.mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(x.rewards)), last] += x.rewards
    values = x.values * x.mask
    zero = torch.zeros(len(rewards), 1)
    next_values = torch.cat([values[:, 1:], zero], 1)   # V(s_{t+1}); 0 after the last token
    continues = torch.cat([x.mask[:, 1:], zero], 1)
    adv = torch.zeros_like(rewards)
    running = torch.zeros(len(rewards))
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_values[:, t] - values[:, t]
        running = delta + gamma * lam * continues[:, t] * running
        adv[:, t] = running
    adv = adv * x.mask
    return adv, adv + values


@estimator("gae", token_rewards="tokens", needs_values=True)
def gae(x: AdvantageInputs, gamma: float = 1.0, lam: float = 0.95,
        whiten: bool = True) -> Advantages:
    """GAE (Schulman et al., arXiv:1506.02438) with a learned critic (PPO): the outcome reward
    sits on the last response token, plus any per-token rewards (KL penalty). Returns are
    the critic's targets; advantages are whitened over the batch (as in PPO for LLMs)."""
    if x.values is None:
        raise ValueError("gae needs critic values: set learner.critic=true")
    adv, returns = _gae(x, gamma, lam)
    return Advantages(masked_whiten(adv, x.mask) if whiten else adv, returns=returns)


@estimator("constrained", group_baseline=True,
           token_rewards=lambda base_source=None, **_: "summed" if base_source is None else None)
def constrained(x: AdvantageInputs, constraints: dict, multipliers: dict | None = None,
                base_source: str | None = None, norm_by_std: bool = True,
                eps: float = 1e-6, multiplier: dict | None = None) -> Advantages:
    """Constrained RLHF with composite reward models (Moskovitz et al., arXiv:2310.04373):
    A = (N - sum_i lambda_i) A_base + sum_i lambda_i A_i, each term the GRPO advantage of one
    reward (the paper uses a value head per component; group baselines here [inferred]).
    A_base is the advantage of `base_source` (null: the combined reward, which carries the
    KL penalty when kl_in_reward is set; the paper's A_KL). `constraints` maps each component
    source to its threshold theta_i; the scheduler learns `multipliers` (lambda_i) from the
    batch means and passes them in (rewards/self_rewards.py LagrangeMultipliers, built with
    the `multiplier` options: kind, lr, momentum)."""
    if multipliers is None:
        raise ValueError("algorithm=constrained needs the scheduler's multipliers")
    base = x.rewards if base_source is None else source_scores(x, base_source)
    mixed = (len(constraints) - sum(multipliers.values())) * _grpo_scalar(base, x.group, norm_by_std, eps)
    for name in constraints:
        mixed = mixed + multipliers[name] * _grpo_scalar(source_scores(x, name), x.group,
                                                         norm_by_std, eps)
    return Advantages(broadcast(mixed, x.mask))


# --- adjustments applied after any estimator -------------------------------------------------


def laser_mix(x: AdvantageInputs, advantages: torch.Tensor, self_reward_source: str,
              tau: float = 0.1, std_threshold: float = 0.1) -> tuple[torch.Tensor, float]:
    """LaSeR advantage mixing (arXiv:2510.14943): per group, Â = (1 - tau) A + tau A_s, with
    A the estimator's advantages [B, R] and A_s the group-normalised self-rewards of
    `self_reward_source` (rewards/self_rewards.py laser_self_advantages: clamped to [0, 1],
    truncated -> 0). A group whose self-rewards spread by no more than std_threshold keeps A
    (the paper's "A_s = A_v"). Returns (mixed advantages, fraction of groups mixed).
    LaSeR: tau 0.1, T 0.1, on GRPO advantages."""
    self_rewards = source_scores(x, self_reward_source)
    truncated = [s.truncated for s in x.samples]
    self_adv = torch.zeros(len(x.samples))
    mixed = torch.zeros(len(x.samples), dtype=torch.bool)
    groups_mixed = 0
    groups = x.group.unique()
    for g in groups:
        rows = (x.group == g).nonzero().flatten()
        a_s = laser_self_advantages(self_rewards[rows].tolist(),
                                    [truncated[i] for i in rows.tolist()], std_threshold)
        if a_s is not None:
            self_adv[rows], mixed[rows] = torch.tensor(a_s), True
            groups_mixed += 1
    blended = (1 - tau) * advantages + tau * broadcast(self_adv, x.mask)
    return torch.where(mixed[:, None], blended, advantages), groups_mixed / max(len(groups), 1)
