"""The learner ranks as one object: spawn N `LearnerWorker`s and run a method on all of them."""
from __future__ import annotations

from learners.worker import LearnerWorker
from orchestrator.cluster import Cluster


class LearnerGroup:
    def __init__(self, cluster: Cluster, model_path: str, settings: dict, num_ranks: int,
                 use_reference: bool, num_cpus: float = 1, num_gpus: float = 0):
        self.cluster = cluster
        self.workers = [
            cluster.spawn(LearnerWorker, rank, num_ranks, model_path, settings, use_reference,
                          num_cpus=num_cpus, num_gpus=num_gpus)
            for rank in range(num_ranks)]
        # Rank 0's node hosts the torch.distributed rendezvous.
        address = cluster.get(self.workers[0].call("rendezvous_address"))
        self.run("setup", *address)

    def run_async(self, method: str, *args):
        """Call `method` on every rank at once (collectives need all ranks); futures back."""
        return [w.call(method, *args) for w in self.workers]

    def run(self, method: str, *args) -> list:
        try:
            return self.cluster.get(self.run_async(method, *args))
        except Exception as err:
            if not self.cluster.died(err):
                raise
            # torch.distributed cannot take a rank back mid-run: the group restarts from disk
            raise RuntimeError(
                f"a learner rank's process died during {method!r} ({type(err).__name__}); "
                "its optimizer state and the other ranks' collectives go with it. Run the "
                "same command again with resume=true: it continues from the last checkpoint "
                "in run_dir (checkpoint.every sets how much is redone)") from err

    def train_step(self, batch_future) -> dict:
        return self.run("train_step", batch_future)[0]   # metrics are all-reduced: rank 0's

    def sft_step(self, batch_future) -> dict:
        return self.run("sft_step", batch_future)[0]

    def state_future(self):
        """A future of the full policy state (gathered on rank 0)."""
        return self.run_async("full_state_dict")[0]

    def shutdown(self) -> None:
        self.run("shutdown")
        for w in self.workers:
            self.cluster.kill(w)
