"""The config schema (orchestrator/schema.py) is the one place of every default: conf/ files
extend it, Hydra refuses wrong types and unknown keys, one walker checks ranges and choices,
the learner and the reward worker are built from the same dataclasses, and every field is
documented where it is defined."""
import dataclasses
import inspect
import re
import typing

import pytest
import yaml
from hydra.errors import ConfigCompositionException

import orchestrator.schema as schema
from actors.reward import Gate, RewardSource, RewardWorker
from core.schema import problems
from learners.config import CriticConfig, LearnerConfig, PolicyLossConfig
from learners.prepare import LaserOptions
from learners.worker import LearnerSettings
from orchestrator.config import ConfigError, validate
from orchestrator.main import learner_settings
from tests.conftest import REPO, compose


def _schemas() -> list[type]:
    """Every dataclass of the config tree, from MainConfig down (with the ones they extend)."""
    found, todo = [], [schema.MainConfig]
    while todo:
        cls = todo.pop()
        if cls in found:
            continue
        found.append(cls)
        todo += [base for base in cls.__mro__[1:] if dataclasses.is_dataclass(base)]
        for hint in typing.get_type_hints(cls).values():
            inner = [hint, *typing.get_args(hint)]
            inner += [a for h in inner for a in typing.get_args(h)]
            todo += [h for h in inner if dataclasses.is_dataclass(h)]
    return found


def test_the_tree_reaches_every_part():
    assert {RewardSource, Gate, LearnerConfig, PolicyLossConfig, CriticConfig,
            LaserOptions} <= set(_schemas())


@pytest.mark.parametrize("cls", _schemas(), ids=lambda c: c.__name__)
def test_every_field_is_documented_where_it_is_defined(cls):
    """A comment on the field's line, or (a nested config) a docstring of its own."""
    lines, _ = inspect.getsourcelines(cls)
    assert cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("), cls
    hints = typing.get_type_hints(cls)
    own = [f for f in dataclasses.fields(cls) if re.search(rf"^\s+{f.name}:", "".join(lines), re.M)]
    for f in own:
        line = next(ln for ln in lines if re.match(rf"\s+{f.name}:", ln))
        nested = dataclasses.is_dataclass(hints[f.name])
        assert "#" in line or nested, f"{cls.__name__}.{f.name} has no comment"


def _option_files():
    return sorted(p for p in (REPO / "conf").glob("*/*.yaml") if p.parent.name != "experiment")


@pytest.mark.parametrize("path", _option_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_option_file_extends_its_schema(path):
    """`defaults: [_schema, _self_]`, or another option of its group that does; or `[_self_]`
    for an add-on that combines with others of its group (`buffer=[scope,rorecomp]`): each
    extending the schema would reset the fields the others set (the main schema types it)."""
    defaults = yaml.safe_load(path.read_text()).get("defaults")
    assert defaults and defaults[-1] == "_self_", path
    if defaults == ["_self_"]:
        assert "buffer=[" in path.read_text(), f"{path}: say how it combines"
        return
    parent = defaults[0]
    assert parent == "_schema" or (path.parent / f"{parent}.yaml").exists(), path


def test_defaults_are_the_schemas():
    """An option that changes nothing composes to the schema's defaults."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import OmegaConf
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        learner = hydra_compose("learner/fsdp2").learner
    assert OmegaConf.to_container(learner) == dataclasses.asdict(LearnerConfig())


def test_learner_settings_are_the_schemas_fields(tmp_path):
    """LearnerSettings extends the learner and policy-loss schemas (one set of defaults), and
    learner_settings fills every field that has a config key, with nothing left over."""
    assert issubclass(LearnerSettings, LearnerConfig) and issubclass(LearnerSettings, PolicyLossConfig)
    settings = learner_settings(compose(tmp_path, "algorithm=ppo"))
    built = LearnerSettings(**settings)
    from_config = {f.name for f in dataclasses.fields(LearnerConfig)} | {
        f.name for f in dataclasses.fields(PolicyLossConfig)} | {
        f.name for f in dataclasses.fields(LearnerSettings) if "from" in f.metadata}
    assert from_config <= set(settings)
    assert built.critic == CriticConfig(enabled=True, lr=1e-4, value_clip=0.2)
    assert built.mini_batch_size == 8 and built.temperature == 1.0


@pytest.mark.parametrize("override", ["learner.lr=fast", "steps=1.5", "learner.lrr=0.1",
                                      "reward.sources.0.wieght=1", "data.toy.twin_views=maybe",
                                      "algorithm.critic.enabeld=true"])
def test_wrong_types_and_unknown_keys_are_refused_while_composing(tmp_path, override):
    with pytest.raises(ConfigCompositionException):
        compose(tmp_path, override)


@pytest.mark.parametrize("override, message", [
    ("rollout.top_k=-1", "config rollout.top_k=-1: must be an integer >= 0"),
    ("rollout.top_p=1.5", "config rollout.top_p=1.5: must be a number in (0, 1]"),
    ("cluster.mode=cloud", "config cluster.mode='cloud': choose one of ['inline', 'local', 'ray']"),
    ("reward.sources.0.scope=prompt", "config reward.sources[0].scope='prompt': choose one of"),
    ("reward.sources.0.timeout_s=0", "config reward.sources[0].timeout_s=0.0: must be a number > 0"),
    ("learner.micro_batch_tokens=0", "config learner.micro_batch_tokens=0: must be an integer >= 1"),
    ("algorithm.kl_estimator=k4", "config algorithm.kl_estimator='k4': choose one of"),
    ("data=humaneval data.humaneval.test_every=1",
     "config data.humaneval.test_every=1: must be an integer >= 2"),
    ("data.source=humaneval", "config data.source='humaneval': HumanEval's settings are missing"),
])
def test_ranges_and_choices_name_the_field(tmp_path, override, message):
    with pytest.raises(ConfigError) as err:
        validate(compose(tmp_path, "cluster=inline", *override.split()))
    assert str(err.value).startswith(message), str(err.value)


def test_a_required_field_left_unset_is_named():
    assert problems(RewardSource, RewardSource(name="x", fn="???")) == [("fn", "???", "is required")]


def test_the_reward_worker_checks_its_sources_with_the_same_schema():
    with pytest.raises(ValueError, match=r"reward source 'a': scope='prompt': choose one of"):
        RewardWorker([{"name": "a", "fn": "toy_exact", "scope": "prompt"}])
    worker = RewardWorker([{"name": "a", "fn": "toy_exact"},
                           {"name": "b", "fn": "toy_exact", "gate": {"source": "a", "min": 0.5}}])
    assert worker.sources[1].gate == Gate(source="a", min=0.5)
