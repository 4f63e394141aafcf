"""Invalid config fails at start with a message naming the field."""
import re
import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException

from orchestrator.config import ConfigError, validate
from tests.conftest import REPO, compose


def test_default_config_is_valid(tmp_path):
    validate(compose(tmp_path))


@pytest.mark.parametrize("override, field", [
    ("learner.mini_batch_size=7", "learner.mini_batch_size=7"),       # does not divide 16
    ("rollout.temperature=0", "rollout.temperature=0"),
    ("learner.num_ranks=2", "learner.num_ranks=2"),                   # inline needs one rank
    ("algorithm.loss_aggregation=mean", "algorithm.loss_aggregation='mean'"),
    ("+algorithm.estimator_options.norm_by_sd=true", "algorithm.estimator_options.norm_by_sd=True"),
    ("algorithm.estimator=nope", "algorithm.estimator='nope'"),
    ("reward.sources.0.fn=no_such_fn", "reward.sources[0].fn='no_such_fn'"),
    ("eval.accuracy_source=judge", "eval.accuracy_source='judge'"),
    ("data.source=file", "data.file.train_path=None"),
    ("steps=-1", "steps=-1"),
    ("rollout.max_new_tokens=500", "model.tiny.max_position_embeddings=256"),
    ("algorithm=pacs learner.micro_batch_size=6", "learner.micro_batch_size=6"),
    ("algorithm.tis_cap=2.0 algorithm.recompute_old_logprobs=false", "algorithm.tis_cap=2.0"),
    ("algorithm.loss=gspo", "algorithm.loss_options.dual_clip=None"),
])
def test_bad_values_name_the_field(tmp_path, override, field):
    cfg = compose(tmp_path, "cluster=inline", *override.split())
    with pytest.raises(ConfigError, match=re.escape(f"config {field}")) as err:
        validate(cfg)
    assert ":" in str(err.value)  # followed by what is wrong


def test_unknown_key_is_refused_by_hydra(tmp_path):
    with pytest.raises(ConfigCompositionException, match="learner.lrr"):
        compose(tmp_path, "learner.lrr=0.1")


def test_main_job_exits_with_the_message(tmp_path):
    out = subprocess.run(
        [sys.executable, "scripts/train.py", "cluster=inline", "learner.mini_batch_size=999",
         f"output_dir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "error: config learner.mini_batch_size=999: must divide the rollout batch" in out.stderr
