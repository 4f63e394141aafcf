"""The generative judge a run serves itself, for judge sources that point at `${judge.url}`.

With `judge.url: null` and a reward source whose kwargs mention `${judge.url}`, the main job
starts `scripts/serve.py` (an OpenAI-compatible HTTP server) around `judge.model` before the
reward workers start, fills in `judge.url`, and stops the server when the run ends. With a URL
set (vLLM's server on a cluster, an API) nothing is started and the sources call that URL.

With `judge.model: policy` the served judge follows the policy being trained: every
`judge.refresh_every` RL steps the scheduler calls `JudgeServer.after_weight_update`, which
has the learner write the current policy as a HF folder and swaps it into the server
(POST /v1/reload) between two judge batches. Its metrics say which learner version judged
each step (`judge/version`) and how many steps it lagged the sampling policy
(`judge/staleness_steps`: at most refresh_every - 1; with refresh_every 0 the judge stays
the policy the run started from and the lag grows by one per step).
"""
from __future__ import annotations

import json
import logging
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import openai
from omegaconf import OmegaConf, read_write

log = logging.getLogger("rewardmill")

SERVE = Path(__file__).resolve().parents[1] / "scripts" / "serve.py"
JUDGE_URL = "${judge.url}"


def sources_using_judge(cfg) -> list[str]:
    """Names of the reward sources with a kwarg that interpolates `${judge.url}`."""
    sources = OmegaConf.to_container(cfg.reward.sources, resolve=False)
    # kwargs may be an interpolation of another node ("${data.verifier.kwargs}"): not a judge
    return [s["name"] for s in sources if isinstance(s.get("kwargs"), dict)
            and any(v == JUDGE_URL for v in s["kwargs"].values())]


class JudgeServer:
    """`scripts/serve.py` in a child process; `url` is its OpenAI base URL.

    `follows_policy`: it serves the policy being trained, so its version and lag are
    metrics; `refresh_every` > 0 then reloads it (see the module docstring). The learner
    writes the policy into `policy_dir` (default: a temporary folder, which only works where
    the learner's rank 0 shares this machine's disk; on a multi-node cluster give a folder
    on shared storage, e.g. one in the run directory)."""

    def __init__(self, model: str, host: str, port: int, max_batch: int, threads: int,
                 start_timeout_s: float, follows_policy: bool = False, refresh_every: int = 0,
                 policy_dir: str | Path | None = None):
        command = [sys.executable, str(SERVE), "--model", model, "--host", host,
                   "--port", str(port), "--max-batch", str(max_batch), "--threads", str(threads)]
        self.model, self.start_timeout_s = model, start_timeout_s
        self.follows_policy = follows_policy
        self.refresh_every = refresh_every if follows_policy else 0
        self.version = 0   # learner version of the served weights; 0: the run's first policy
        self.own_dir = self.refresh_every > 0 and policy_dir is None
        self.policy_dir = (Path(tempfile.mkdtemp(prefix="rewardmill-judge-")) if self.own_dir
                           else Path(policy_dir) if policy_dir else None)
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            self.url = self._read_url(start_timeout_s)
        except Exception:
            self.stop()
            raise

    def _read_url(self, timeout_s: float) -> str:
        # serve.py prints one JSON line with its URL once the model is loaded
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            raise TimeoutError(f"judge server did not start within {timeout_s:.0f}s "
                               f"(judge.start_timeout_s)")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"judge server exited with code {self.process.wait()} before "
                               f"serving {self.model} (see its log above; judge.model)")
        return json.loads(line)["url"]

    def after_weight_update(self, version: int, save_policy: Callable[[str], object]) -> dict:
        """Call once the learner update that made weights `version` is done (the step just
        trained sampled with version - 1). Returns that step's metrics: which version
        judged it and its lag behind the sampling policy. When a refresh is due,
        `save_policy(folder)` then writes the current policy there as a HF folder and the
        server swaps it in (adding judge/refresh_s, the seconds both took). A judge that is
        not the policy has nothing to follow: no metrics."""
        if not self.follows_policy:
            return {}
        metrics = {"judge/version": self.version,
                   "judge/staleness_steps": version - 1 - self.version}
        if self.refresh_every and version - self.version >= self.refresh_every:
            start = time.perf_counter()
            self.policy_dir.mkdir(parents=True, exist_ok=True)
            save_policy(str(self.policy_dir))
            self.reload(self.policy_dir, version)
            metrics["judge/refresh_s"] = time.perf_counter() - start
        return metrics

    def reload(self, folder: str | Path, version: int) -> None:
        """Serve the weights of HF folder `folder`, learner version `version`, from the next
        judge batch on (e.g. a checkpoint's policy/ folder after a resume)."""
        control = openai.OpenAI(base_url=self.url, api_key="unused", max_retries=0,
                                timeout=self.start_timeout_s)   # as long as a model load may take
        try:
            control.post("/reload", cast_to=object, body={"path": str(folder), "version": version})
        except openai.OpenAIError as err:
            raise RuntimeError(f"the judge server could not load {folder}: {err}") from err
        finally:
            control.close()
        self.version = version

    def stop(self) -> None:
        if self.own_dir:
            shutil.rmtree(self.policy_dir, ignore_errors=True)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_judge(cfg, policy: str, base: str,
                policy_dir: str | Path | None = None) -> JudgeServer | None:
    """Serve `judge.model` when a source needs `${judge.url}` and none is given; sets judge.url.
    `policy_dir`: where the learner writes the policy for a judge that follows it."""
    users = sources_using_judge(cfg)
    if not users or cfg.judge.url:
        return None
    j = cfg.judge
    model = {"policy": policy, "base": base}.get(j.model, j.model)
    server = JudgeServer(model, j.host, j.port, j.max_batch, j.threads, j.start_timeout_s,
                         follows_policy=j.model == "policy", refresh_every=j.refresh_every,
                         policy_dir=policy_dir)
    with read_write(cfg):
        cfg.judge.url = server.url
    log.info("judge: serving %s at %s for %s", model, server.url, ", ".join(users))
    return server
