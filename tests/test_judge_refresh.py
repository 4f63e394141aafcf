"""A served judge that follows the policy: scripts/serve.py swaps weights on POST /v1/reload,
JudgeServer reloads every judge.refresh_every steps and reports its version and lag, and the
client never answers from a cache filled by older weights."""
import shutil

import openai
import pytest

from orchestrator.judge_server import JudgeServer, start_judge
from rewards.judge_client import JudgeClient
from tests.conftest import compose
from tests.test_judge_client import TINY_JUDGE


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    """Two tiny policies of one architecture with different weights, and one of another."""
    from core.models import build_tiny_policy
    root = tmp_path_factory.mktemp("policies")
    wider = {**TINY_JUDGE, "hidden_size": 64}
    return (build_tiny_policy(root / "first", TINY_JUDGE, seed=0),
            build_tiny_policy(root / "trained", TINY_JUDGE, seed=1),
            build_tiny_policy(root / "other", wider, seed=0))


def first_token_logprobs(client: JudgeClient) -> dict[str, float]:
    [[out]] = client.chat(["Is 2+2=4? Answer Y or N."], max_tokens=1, logprobs=5)
    return out.top_logprobs[0]


def served_version(url: str) -> int:
    return openai.OpenAI(base_url=url, api_key="unused").models.list().data[0].version


def test_refresh_every_two_steps_swaps_weights_and_reports_the_lag(policies):
    first, trained, other = policies
    copies = []

    def save_policy(folder):   # stands in for the learner writing its current policy
        copies.append(folder)
        shutil.copytree(trained, folder, dirs_exist_ok=True)

    judge = JudgeServer(str(first), "127.0.0.1", 0, 8, 1, 120, follows_policy=True,
                        refresh_every=2)
    try:
        client = JudgeClient(judge.url)
        before = first_token_logprobs(client)
        # step 0 sampled with version 0 and was judged by version 0: no refresh due yet
        assert judge.after_weight_update(1, save_policy) == {
            "judge/version": 0, "judge/staleness_steps": 0}
        assert first_token_logprobs(client) == before and client.stats["cache_hits"] == 1
        # step 1 sampled with version 1, judged by version 0; now version 2 is served
        metrics = judge.after_weight_update(2, save_policy)
        assert metrics["judge/version"] == 0 and metrics["judge/staleness_steps"] == 1
        assert metrics["judge/refresh_s"] > 0 and len(copies) == 1
        assert judge.version == 2 and served_version(judge.url) == 2
        # the same deterministic request: answered by the new weights, not from the cache
        after = first_token_logprobs(client)
        assert after != before and client.stats["cache_hits"] == 1
        assert judge.after_weight_update(3, save_policy) == {
            "judge/version": 2, "judge/staleness_steps": 0}
        # weights of another architecture are refused, and the old ones keep serving
        with pytest.raises(RuntimeError, match="not the served architecture"):
            judge.reload(other, 3)
        assert judge.version == 2 and served_version(judge.url) == 2
        assert first_token_logprobs(JudgeClient(judge.url)) == after
        policy_dir = judge.policy_dir
    finally:
        judge.stop()
    assert not policy_dir.exists()   # its temporary folder goes with it


def test_start_judge_follows_only_a_policy_judge(tmp_path, policies, monkeypatch):
    import orchestrator.judge_server as judge_server
    first, base, _ = policies
    cfg = compose(tmp_path, "reward=self_judge", "judge.refresh_every=3")
    assert cfg.reward.sources[1].kwargs.api == "chat"
    assert cfg.reward.sources[1].kwargs.retries == cfg.judge.retries
    started = {}

    class Recorded:   # what start_judge asks for, without starting a server
        def __init__(self, model, *args, **kwargs):
            started.update(kwargs, model=model)
            self.url = "http://127.0.0.1:1/v1"
    monkeypatch.setattr(judge_server, "JudgeServer", Recorded)
    start_judge(cfg, str(first), str(base))
    assert started["model"] == str(first) and started["follows_policy"]
    assert started["refresh_every"] == 3
    monkeypatch.undo()

    # judge.model: base is a fixed judge: no reloads, no version metrics
    cfg = compose(tmp_path, "reward=self_judge", "judge.model=base", "judge.refresh_every=1")
    judge = start_judge(cfg, str(first), str(base))
    try:
        assert judge.model == str(base) and not judge.follows_policy
        assert judge.refresh_every == 0 and judge.policy_dir is None
        assert judge.after_weight_update(1, lambda folder: pytest.fail("saved")) == {}
    finally:
        judge.stop()
