"""Every `scripts/train.py` command README.md shows composes into a valid run whose reward
sources apply to its data: a reader who copies one gets a run, not a refusal, and never a
toy source on real data (the toy checker on a GSM8K question flags every sample)."""
import re
import shlex

import pytest

from tests.conftest import REPO


def readme_train_commands() -> list[list[str]]:
    """The overrides of each train.py command in README's bash blocks (continuations joined,
    comments dropped; a multirun's first value of each swept field)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if "scripts/train.py" not in words:
                continue
            args = words[words.index("scripts/train.py") + 1:]
            args = [a.split(",")[0] if "=" in a and "[" not in a and not a.startswith("-") else a
                    for a in args if a != "-m"]   # a list value ([a,b]) is one value
            commands.append([a for a in args if not a.startswith("&&")])
    return commands


COMMANDS = readme_train_commands()


def test_the_readme_shows_the_commands_this_test_checks():
    joined = [" ".join(c) for c in COMMANDS]
    assert len(COMMANDS) >= 8, joined
    assert any("experiment=gsm8k" in c for c in joined), joined      # the GPU-cluster command
    assert any("cluster=ray" in c for c in joined), joined           # the ray job submit one


@pytest.mark.parametrize("overrides", COMMANDS, ids=[" ".join(c) or "(defaults)" for c in COMMANDS])
def test_readme_command_is_a_valid_run_on_its_data(tmp_path, overrides):
    from hydra import compose, initialize_config_dir

    from core.registry import lookup
    from orchestrator.config import validate
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"output_dir={tmp_path}/out"])
    validate(cfg)
    for source in cfg.reward.sources:
        only = getattr(lookup("reward", source.fn), "data_sources", None)
        assert not source.fn.startswith("toy_") or only, f"{source.fn} does not declare its data"
        assert not only or cfg.data.source in only, (source.name, source.fn, cfg.data.source)
