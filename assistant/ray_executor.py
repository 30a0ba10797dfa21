"""Training runs as Ray tasks (`[training] executor = "ray"`; issue 19).

The server claims queued runs from the store (feedback_store.runs) and hands each to a Ray
task that declares its resources (`training.run_cpus` CPUs, one GPU when the cluster has one
and the model is not pinned to the CPU), up to `training.max_parallel_runs` in flight. The
task runs the very code the process worker runs (assistant.worker.execute: adapters.jobs's
execute_run, the gate, then the run's final status and its promotion in one transaction),
against the same store and the shared adapters directory ([adapters] dir), so the server
serves a promoted version on the next request, as with the process worker.

A worker lost mid-run (killed, out of memory, its node gone) makes ray.get raise here: the
run is failed with the reason in words and the previous adapter keeps serving. Tasks are
never retried by Ray (max_retries=0): a second execution of a half-done run would only
repeat its work. The run's final write is guarded by its state (runs.finish_running): a task
that still finishes after its run was failed publishes nothing, so nothing is promoted twice.

Tasks are owned by this server process: when it stops, Ray stops them, and their runs are
failed as orphans (runs.fail_orphans): at once when their Ray worker on this host is gone,
else when the lease the task renewed runs out; another server's live runs are left alone.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from typing import Any

from assistant.config import ROOT, Config
from assistant.scheduler import TrainingScheduler
from feedback_store import runs
from feedback_store.db import Store

log = logging.getLogger("assistant.ray_executor")
KEPT = "the previous adapter and reward head stay live"
LOCAL_START_ATTEMPTS = 3


def run_on_worker(config_data: dict, run: dict) -> str:
    """The body of a run's Ray task: record this process as the run's, execute it as the
    process worker does, return its final status."""
    from assistant.config import from_dict
    from assistant.worker import execute, keep_lease
    from feedback_store.db import open_db, retrying

    config = from_dict(config_data)
    db = open_db(config.store_target)
    try:
        retrying(db, runs.set_worker_pid, run["id"], os.getpid(),
                 config.store.run_lease_seconds)
        keep_lease(config, run["id"])      # a live task is never taken for a dead worker
        return execute(config, run, db)["status"]
    finally:
        db.close()


def local_runtime_env() -> dict:
    """Ray workers started on this machine import this checkout, as the server does."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {"PYTHONPATH": path}}


def connect(config: Config) -> bool:
    """Connect to the configured cluster, or start a local Ray sized for the runs; True if
    this call started Ray (and so owns shutting it down). Already connected: reused."""
    import ray

    if ray.is_initialized():
        return False
    training = config.training
    if training.ray_address:
        ray.init(address=training.ray_address, log_to_driver=False)
    else:
        start_local_ray(math.ceil(training.max_parallel_runs * training.run_cpus))
    return True


def start_local_ray(num_cpus: int, attempts: int = LOCAL_START_ATTEMPTS) -> None:
    """ray.init of a local Ray whose workers import this checkout. Ray gives its raylet
    30 s (fixed) to register; on a loaded machine (load average 20 on 2 cores while this
    was written) it can miss that, so a timed-out start is tried again."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(num_cpus=num_cpus, runtime_env=local_runtime_env(),
                     include_dashboard=False, log_to_driver=False)
            return
        except Exception as exc:
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
            log.warning("local Ray did not start in time (attempt %s): trying again", attempt)
            ray.shutdown()


def run_gpus(config: Config) -> int:
    """One GPU per run when the cluster has one and the model may use it."""
    import ray

    has_gpu = ray.cluster_resources().get("GPU", 0) >= 1
    return 1 if has_gpu and config.model.device != "cpu" else 0


def lost_reason(exc: BaseException) -> str:
    """Why a run's task ended without a final status, in words for the admin."""
    import ray.exceptions as rex

    first = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, rex.WorkerCrashedError | rex.NodeDiedError | rex.OwnerDiedError):
        what = "the Ray worker running it died (killed, crashed or out of memory)"
    elif isinstance(exc, rex.TaskCancelledError):
        what = "its Ray task was cancelled (the server is shutting down)"
    else:
        what = "its Ray task failed"
    return f"{what} before the run finished: {type(exc).__name__}: {first}; {KEPT}"


class RayTrainingScheduler(TrainingScheduler):
    """TrainingScheduler's timer and queue, with runs executed as Ray tasks."""

    def __init__(self, config: Config, store: Store) -> None:
        super().__init__(config, store)
        self.tasks: dict[int, Any] = {}         # run id -> the ObjectRef of its task
        self.started_ray = False
        self.remote: Any = None

    def start(self) -> None:
        """Connect in the background (starting Ray takes seconds to a minute; chat needs
        none of it), then fail orphans, start the timer and the queued runs."""
        threading.Thread(target=self._connect_and_start, name="ray-connect",
                         daemon=True).start()

    def _connect_and_start(self) -> None:
        import ray

        try:
            self.started_ray = connect(self.config)
            self.remote = ray.remote(run_on_worker).options(
                num_cpus=self.config.training.run_cpus, num_gpus=run_gpus(self.config),
                max_retries=0, name="assistant-training-run")
        except Exception:       # the runs stay queued; the log says why none starts
            log.exception("cannot reach Ray (training.ray_address = %r): no run starts",
                          self.config.training.ray_address)
            return
        super().start()

    def fail_orphans(self) -> list[int]:
        """Runs left `running` whose task is gone become failed: on this host when the Ray
        worker that recorded itself as the run's process is dead, anywhere once the lease its
        task renews has run out (runs.fail_orphans). A run another server's task is training
        (a shared store) renews its lease and is left alone; so are our own tasks' runs."""
        with self.lock:
            keep = set(self.tasks)
        failed = self.store.write_sync(runs.fail_orphans, True, keep)
        if failed:
            log.warning("runs %s were running when their task ended: marked failed", failed)
        return failed

    def kick(self) -> None:
        """Claim queued runs and start their tasks while fewer than max_parallel_runs run."""
        with self.lock:
            while (not self.stopping and self.remote is not None
                   and len(self.tasks) < self.config.training.max_parallel_runs):
                run = self.store.write_sync(runs.claim_next, os.getpid(),
                                            self.config.store.run_lease_seconds)
                if run is None:
                    return
                self.tasks[run["id"]] = self.remote.remote(json.loads(self.worker_config()),
                                                           run)
                log.info("run %s for %r started as a Ray task", run["id"], run["user_name"])
                threading.Thread(target=self._watch_task, args=(run["id"],),
                                 name=f"ray-run-{run['id']}", daemon=True).start()

    def _watch_task(self, run_id: int) -> None:
        """Wait for the task; a lost one fails its run with the reason. Then start more."""
        import ray

        try:
            status = ray.get(self.tasks[run_id])
            log.info("run %s: %s", run_id, status)
        except Exception as exc:        # the task's worker, node or owner is gone
            reason = lost_reason(exc)
            log.error("run %s: %s", run_id, reason)
            if not self.stopping:       # shutdown() records its own reason
                self.store.write_sync(runs.finish_running, run_id, "failed", None, "", reason)
        finally:
            with self.lock:
                self.tasks.pop(run_id, None)
        self.kick()

    def busy(self) -> bool:
        return bool(self.tasks)

    def shutdown(self) -> None:
        """Stop the timer and cancel the tasks (their runs end failed, saying so)."""
        import ray

        with self.lock:
            self.stopping = True
            tasks = dict(self.tasks)
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        for ref in tasks.values():
            ray.cancel(ref, force=True)
        for run_id in tasks:
            self.store.write_sync(runs.finish_running, run_id, "failed", None, "",
                                  f"stopped: the server shut down while it trained; {KEPT}")
        if self.started_ray:
            ray.shutdown()
