"""Check a composed config before anything starts; every error names the field and the fix.

Unknown keys and wrong types are already refused by Hydra (the schema, orchestrator/schema.py);
each field's range or choices is checked by the schema's walker (core/schema.py), first. This
checks what relates fields: batch sizes that must divide, names that must exist, functions and
their options, sandbox isolation, sources that apply to the data.
"""
from __future__ import annotations

import inspect
import logging
import os
import shutil

from omegaconf import DictConfig, OmegaConf

from core.registry import lookup, names as registered_names
from core.schema import problems
from learners.advantages import declared
from learners.losses import loss_needs
from orchestrator.schema import MainConfig
from rewards import sandbox
from tasks.toy_code import ToyCode


log = logging.getLogger("rewardmill")


class ConfigError(ValueError):
    pass


def _get(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, throw_on_missing=True)


def _check(ok: bool, key: str, value, problem: str) -> None:
    if not ok:
        raise ConfigError(f"config {key}={value!r}: {problem}")


def _check_function(cfg: DictConfig, kind: str, key: str) -> None:
    """`key` names a registered `kind` function, and `key`_options are all its parameters."""
    name = _get(cfg, key)
    try:
        fn = lookup(kind, name)
    except KeyError as err:
        raise ConfigError(f"config {key}={name!r}: {err.args[0]}") from None
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    options = _get(cfg, f"{key}_options") or {}
    for option, value in options.items():
        _check(takes_any or option in params, f"{key}_options.{option}", value,
               f"{name} has no option {option!r}; it takes {[p for p in params if p != 'x']}")


def _check_algorithm(cfg: DictConfig, group: int) -> None:
    a = "algorithm"
    _check_function(cfg, "advantage", f"{a}.estimator")
    _check_function(cfg, "loss", f"{a}.loss")
    _check_group_filter(cfg, group)
    _check_estimator_properties(cfg, group)
    if cfg.algorithm.tis_cap is not None:
        _check(cfg.algorithm.recompute_old_logprobs, f"{a}.tis_cap", cfg.algorithm.tis_cap,
               "needs algorithm.recompute_old_logprobs=true (it weights pi_old / pi_sampler)")
    if "whole_groups" in loss_needs(lookup("loss", cfg.algorithm.loss)):
        per_rank = cfg.learner.mini_batch_size // cfg.learner.num_ranks
        for key, value in (("learner.micro_batch_size", cfg.learner.micro_batch_size),
                           ("learner.mini_batch_size / learner.num_ranks", per_rank)):
            _check(value % group == 0, key, value, f"loss {cfg.algorithm.loss} needs whole groups "
                   f"per micro-batch: a multiple of rollout.responses_per_prompt={group}")


def _check_estimator_properties(cfg: DictConfig, group: int) -> None:
    """What the estimator declares where it is registered (learners/advantages.py `estimator`):
    a group baseline needs >= 2 responses per prompt; per-token rewards need an estimator
    that reads them per token or sums them into its reward."""
    a = cfg.algorithm
    options = OmegaConf.to_container(a.estimator_options) if a.estimator_options else {}
    fn = lookup("advantage", a.estimator)
    _check(group >= 2 or not declared(fn, "group_baseline", options),
           "rollout.responses_per_prompt", group,
           f"estimator {a.estimator} (options {options}) compares responses within a group: "
           "need >= 2 (with one response the outcome reward cancels out)")
    if declared(fn, "token_rewards", options) is None:
        for key, value in (("kl_in_reward_coef", a.kl_in_reward_coef), ("step_rewards",
                                                                        a.step_rewards)):
            _check(not value, f"algorithm.{key}", value,
                   f"estimator {a.estimator} (options {options}) cannot use per-token rewards "
                   "(it thresholds successes or reads named sources), so this would be ignored: "
                   "remove it (for KL, algorithm.kl_coef puts it in the loss instead)")


def _check_sandbox(src: DictConfig, i: int) -> None:
    """A source that runs model-written code needs an isolating sandbox here, or the user's
    explicit consent to run it with resource limits only."""
    if not getattr(lookup("reward", src.fn), "runs_model_code", False):
        return
    allowed = bool((src.get("kwargs") or {}).get("allow_unisolated", False))
    isolation = sandbox.isolation()
    # the task's verifier (reward=verifier) takes its kwargs from data.verifier: name that field
    shared = OmegaConf.to_container(src, resolve=False).get("kwargs") == "${data.verifier.kwargs}"
    field = "data.verifier.kwargs" if shared else f"reward.sources[{i}].kwargs"
    _check(isolation.mode != "none" or allowed, f"{field}.allow_unisolated",
           allowed, f"source {src.name!r} runs model-written code, which cannot be isolated on "
           f"this machine ({isolation.missing}). Run as root or enable unprivileged user "
           "namespaces; or set it true to run the code with resource limits only")


def _check_applies_to_data(cfg: DictConfig, src, i: int) -> None:
    """A source (or a registered reward it names in its kwargs, e.g. a scorer) written for
    some data sources only, and one that reads answers when the task states none."""
    kwargs = src.get("kwargs") or {}
    registered = set(registered_names("reward"))
    for name in [src.fn] + [v for v in kwargs.values() if isinstance(v, str) and v in registered]:
        only = getattr(lookup("reward", name), "data_sources", None)
        _check(not only or cfg.data.source in only, f"reward.sources[{i}].fn", name,
               f"scores data.source in {list(only or [])} only, but data.source="
               f"{cfg.data.source}: use reward=verifier (the task's own check, data.verifier) "
               "or a source written for this data")
    if "extractor" in inspect.signature(lookup("reward", src.fn)).parameters:
        _check(kwargs.get("extractor") is not None or src.fn == "math_verify",
               f"reward.sources[{i}].kwargs.extractor", kwargs.get("extractor"),
               f"source {src.name!r} reads answers, but data.source={cfg.data.source} states "
               "none (data.answer_format is null): use a task whose responses end in an answer")


def _check_toy_code(cfg: DictConfig) -> None:
    _check(OmegaConf.select(cfg, "data.toy_code") is not None, "data.source", "toy_code",
           "the code task's settings are missing: select it with data=toy_code")
    _check(not cfg.data.toy.twin_views, "data.toy.twin_views", cfg.data.toy.twin_views,
           "twin views rephrase addition prompts only; set it false with data=toy_code")
    try:
        ToyCode(**OmegaConf.to_container(cfg.data.toy_code))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config data.toy_code: {err}") from None


def _check_group_filter(cfg: DictConfig, group: int) -> None:
    """algorithm.group_filter (and the older algorithm.dynamic_sampling switch)."""
    key, f = "algorithm.group_filter", cfg.algorithm.group_filter
    kind, switch = f.kind, cfg.algorithm.dynamic_sampling
    _check(switch is None or kind in ("none", "uniform"), "algorithm.dynamic_sampling", switch,
           f"conflicts with {key}.kind={kind}: drop algorithm.dynamic_sampling "
           f"(it is the older name of {key}.kind=uniform)")
    if switch is not None:
        kind = "uniform" if switch else "none"
    if kind == "none":
        return
    _check(group >= 2, "rollout.responses_per_prompt", group,
           f"{key}.kind={kind} compares the rewards within a group: need >= 2")
    names = [s.get("name") for s in cfg.reward.sources or []]
    _check(f.source is None or f.source in names, f"{key}.source", f.source,
           f"must be null (the combined reward) or name a reward source: one of {names}")
    if kind != "std_ema":
        return
    start = f.ema_start_step
    _check(f.filter_start_step > start,
           f"{key}.filter_start_step", f.filter_start_step,
           f"must be greater than {key}.ema_start_step={start}: the EMA needs at least one "
           f"step's mean std before the first filtering step")


def _check_rorecomp(cfg: DictConfig, sources: list[str]) -> None:
    """buffer.rorecomp replays samples with the advantages their step computed: what else the
    learner would need of them (critic returns, LaSeR inputs, whole groups, old vocabulary
    statistics) is not kept, so those algorithms are refused."""
    block = cfg.buffer.rorecomp
    if block is None:
        return
    a = cfg.algorithm
    _check(not a.critic.enabled, "algorithm.critic.enabled", True,
           "buffer.rorecomp replays samples without their critic returns: use a critic-free "
           "estimator (grpo, rloo, ...) or buffer=fifo")
    _check(cfg.reward.get("laser") is None, "reward.laser", "set",
           "buffer.rorecomp does not carry LaSeR's per-sample inputs: use buffer=fifo")
    needs = loss_needs(lookup("loss", a.loss))
    _check(not needs, "algorithm.loss", a.loss,
           f"this loss needs {sorted(needs)}, which recomposed batches do not keep: use ppo or gspo")
    _check(block.correct_source is None or block.correct_source in sources,
           "buffer.rorecomp.correct_source", block.correct_source,
           f"must name a reward source: one of {sources}, or null for the combined reward")
    ranks = cfg.learner.num_ranks
    _check(block.capacity is None or block.capacity % ranks == 0, "buffer.rorecomp.capacity",
           block.capacity, f"must be a multiple of learner.num_ranks={ranks}")


def _check_repair(cfg: DictConfig) -> None:
    """buffer.repair (SCOPE): the first error is a step of a step-level source, and the guided
    tokens need a loss that shapes them (ppo)."""
    block = cfg.buffer.repair
    if block is None:
        return
    sources = {s.name: s for s in cfg.reward.sources}
    _check(bool(cfg.rollout.step_delimiter), "rollout.step_delimiter", cfg.rollout.step_delimiter,
           "buffer.repair locates a response's first wrong step: set the step delimiter")
    prm = sources.get(block.prm_source)
    _check(prm is not None and prm.granularity == "step", "buffer.repair.prm_source",
           block.prm_source, "must name a reward source with granularity: step (high = right), "
           f"one of {[n for n, s in sources.items() if s.granularity == 'step']}")
    _check(block.verify_source is None or block.verify_source in sources,
           "buffer.repair.verify_source", block.verify_source,
           f"must name a reward source: one of {list(sources)}, or null for the combined reward")
    _check(cfg.algorithm.loss == "ppo", "algorithm.loss", cfg.algorithm.loss,
           "buffer.repair trains the guide's tokens with ppo's guided shaping "
           "(loss_options.guided_gamma): use loss ppo")


def _check_laser(cfg: DictConfig, group: int) -> None:
    """reward.laser (LaSeR training, conf/reward/laser.yaml): named sources exist and are of the
    right kind, and every rollout worker shares one c_ref (ranges: learners/prepare.py LaserOptions)."""
    key, block = "reward.laser", cfg.reward.laser
    if block is None:
        return
    sources = {s.name: (i, s) for i, s in enumerate(cfg.reward.sources)}
    name = _get(cfg, f"{key}.self_reward_source")
    _check(name in sources, f"{key}.self_reward_source", name,
           f"must name the LaSeR reward source (fn: laser): one of {list(sources)}")
    i, src = sources[name]
    scorer_cls = lookup("reward", src.fn)
    _check(isinstance(scorer_cls, type) and issubclass(scorer_cls, lookup("reward", "laser")),
           f"{key}.self_reward_source", name,
           f"reward source {name!r} has fn={src.fn!r}; it must be a LaSeR source (fn: laser)")
    verifier = _get(cfg, f"{key}.verifier_source")
    _check(verifier in sources and verifier != name, f"{key}.verifier_source", verifier,
           f"must name the verifier reward source (0/1), one of {[n for n in sources if n != name]}")
    tau = block.mix_coef
    _check(tau == 0 or group >= 2, "rollout.responses_per_prompt", group,
           f"{key}.mix_coef={tau} normalises self-rewards within a group: need >= 2 responses, "
           f"or set {key}.mix_coef=0")
    kwargs = f"reward.sources[{i}].kwargs"
    try:
        scorer = scorer_cls(**OmegaConf.to_container(src.get("kwargs") or {}))
    except TypeError as err:
        raise ConfigError(f"config {kwargs}: {err}") from None
    _check(isinstance(scorer.beta_v, (int, float)) and scorer.beta_v > 0, f"{kwargs}.beta_v",
           scorer.beta_v, "must be a number > 0 (the scale of the self-reward; LaSeR: 0.1)")
    _check(scorer.c_ref is not None or cfg.rollout.num_workers == 1, f"{kwargs}.c_ref", None,
           f"with rollout.num_workers={cfg.rollout.num_workers} each worker would measure its "
           "own c_ref; give a number (a one-worker run logs the measured one as train/laser_c_ref)")


RAY_WORKER_NICE = 15   # the niceness Ray starts its worker processes with


def _warn_oversubscribed(cfg: DictConfig) -> None:
    """Async stages run at the same time: on a local cluster, more torch threads than cores
    makes every stage slower (measured on 2 cores: half the lock-step throughput), unless the
    learner runs ahead of the rollout workers (learner.nice below Ray's 15) and takes the
    cores whenever it computes."""
    if cfg.scheduler.mode != "async" or cfg.cluster.mode != "local":
        return
    r, lr = cfg.rollout, cfg.learner
    threads = r.threads * r.num_workers + lr.threads * lr.num_ranks
    cores = os.cpu_count() or 1
    if threads > cores and (lr.nice is None or lr.nice >= RAY_WORKER_NICE):
        log.warning("scheduler.mode=async runs rollout and learner at once, with %d torch threads "
                    "(rollout.threads x rollout.num_workers + learner.threads x learner.num_ranks) "
                    "on %d CPU cores: set learner.nice=0 so the learner takes the cores first, or "
                    "lower rollout.threads / learner.threads so they share them", threads, cores)


def _cxx_compiler() -> str | None:
    """The C++ compiler torch's inductor would use on CPU (CXX, else c++ / g++ / clang++)."""
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    return next((c for c in candidates if shutil.which(c)), None)


def validate(cfg: DictConfig) -> None:
    for key, value, problem in problems(MainConfig, cfg):   # each field's range and choices
        raise ConfigError(f"config {key}={value!r}: {problem}")
    mode = cfg.cluster.mode
    prompts = cfg.data.prompts_per_step
    group = cfg.rollout.responses_per_prompt
    ranks = cfg.learner.num_ranks
    _check(mode != "inline" or ranks == 1, "learner.num_ranks", ranks,
           "cluster=inline runs in one process, so it has one learner rank; "
           "use cluster=local for more")
    _check(ranks == 1 or cfg.learner.strategy == "fsdp2", "learner.strategy",
           cfg.learner.strategy, "several ranks need learner.strategy=fsdp2")
    rollout_batch = prompts * group
    mini = cfg.learner.mini_batch_size
    # RoRecomp's batches vary in size: each takes ceil(n / mini) steps of near-equal size
    _check(rollout_batch % mini == 0 or cfg.buffer.rorecomp is not None,
           "learner.mini_batch_size", mini,
           f"must divide the rollout batch (data.prompts_per_step x rollout.responses_per_prompt "
           f"= {prompts} x {group} = {rollout_batch} responses)")
    _check(mini % ranks == 0, "learner.mini_batch_size", mini,
           f"must be a multiple of learner.num_ranks={ranks} (each rank takes an equal share)")

    _check(not cfg.learner.compile or cfg.learner.num_gpus or _cxx_compiler(), "learner.compile",
           True, "torch.compile on CPU builds C++ kernels: install a C++ compiler (g++) or set "
           "learner.compile=false")

    _check_algorithm(cfg, group)

    sources = cfg.reward.sources
    _check(len(sources) > 0, "reward.sources", sources, "list at least one reward source")
    names = []
    for i, src in enumerate(sources):
        try:
            lookup("reward", src.fn)
        except KeyError as err:
            raise ConfigError(f"config reward.sources[{i}].fn={src.fn!r}: {err.args[0]}") from None
        _check(src.name not in names, f"reward.sources[{i}].name", src.name, "names must be unique")
        names.append(src.name)
        _check_sandbox(src, i)
        if isinstance(lookup("reward", src.fn), type):  # stateful: one copy of its state
            _check(cfg.reward.num_workers == 1 or src.runs_on == "policy",
                   "reward.num_workers", cfg.reward.num_workers,
                   f"source {src.name!r} keeps state (e.g. a co-trained model): use 1 reward worker")
    _check(cfg.eval.accuracy_source in names, "eval.accuracy_source", cfg.eval.accuracy_source,
           f"must name a reward source: one of {names}")
    for i, src in enumerate(sources):
        _check(not src.gate or src.gate.source in names, f"reward.sources[{i}].gate.source",
               src.gate and src.gate.source, f"must name a reward source: one of {names}")
    try:
        lookup("combine", cfg.reward.combine)
    except KeyError as err:
        raise ConfigError(f"config reward.combine={cfg.reward.combine!r}: {err.args[0]}") from None
    _check_laser(cfg, group)
    _check_function(cfg, "buffer", "buffer.strategy")
    _check_rorecomp(cfg, names)
    _check_repair(cfg)
    _warn_oversubscribed(cfg)

    source = cfg.data.source
    if source == "file":
        _check(bool(cfg.data.file.train_path), "data.file.train_path", cfg.data.file.train_path,
               "data.source=file needs a JSONL or Parquet file")
    if source == "toy_code":
        _check_toy_code(cfg)
    if source == "humaneval":
        _check(cfg.data.humaneval is not None, "data.source", source,
               "HumanEval's settings are missing: select it with data=humaneval")
    for i, src in enumerate(sources):
        _check_applies_to_data(cfg, src, i)
    sft_steps = cfg.warm_start.steps
    if sft_steps:
        _check(source != "file" or bool(cfg.data.file.solution_field), "warm_start.steps",
               sft_steps, "a warm start needs worked solutions: set data.file.solution_field "
               "or warm_start.steps=0")
        sft_batch = cfg.warm_start.batch_size
        _check(sft_batch % ranks == 0, "warm_start.batch_size", sft_batch,
               f"must be a multiple of learner.num_ranks={ranks}")

    if cfg.model.path is None:
        _check(cfg.model.tiny is not None, "model.tiny", None,
               "model.path is null, so the tiny model's architecture is needed")
        limit = cfg.model.tiny.max_position_embeddings
        need = cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
        _check(need <= limit, "model.tiny.max_position_embeddings", limit,
               f"must cover data.max_prompt_tokens + rollout.max_new_tokens = {need}")
