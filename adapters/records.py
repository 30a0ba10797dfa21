"""The records a training run hands from one module to the next.

    policy.train_policy --StepRecord--> worker (progress, the run's log), train_cli (the bar)
    gate.evaluate --GateMetrics--> gate.decide, jobs --RunOutcome--> worker --> runs.finish

Each is stored as JSON as it is (training_runs.metrics: RunMetrics, its `steps` and `gate`)
and served unchanged by the admin and "My assistant" APIs, so they are TypedDicts: plain
dicts at run time, their keys and value types checked by mypy. Importing this module costs
nothing (no torch), so the worker and the CLI can name them.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict


class StepRecord(TypedDict):
    """One GRPO step (adapters/policy.py)."""

    step: int                   # 1-based
    reward_mean: float          # of the step's P*k sampled completions
    reward_std: float
    kl: float                   # mean k3 KL to the base of the policy that sampled them
    completion_len: float       # mean tokens per completion
    loss: float
    seconds: float              # wall clock of the whole step
    gen_seconds: float          # of which sampling and scoring
    cpu_seconds: float          # process CPU time: the cost apart from a shared machine's load
    kl_stop: bool               # over training.target_kl: RL ended here
    warm_start_reverted: bool   # the warm start alone went over target_kl and was undone
    warm_start_kept: float | None  # its share kept when the leash scaled it back (0: undone)


class GateMetrics(TypedDict):
    """The gate's comparison of a candidate adapter with the baseline (adapters/gate.py);
    rewards are mean reward-head scores, kl nats per token to the base, len tokens."""

    n_prompts: int
    baseline: Literal["current", "base"]
    candidate_reward: float
    baseline_reward: float
    reward_gain: float          # candidate_reward - baseline_reward
    win_rate: float             # against the baseline, ties counted half
    win_rate_vs_base: float     # against the bare base
    candidate_kl: float
    baseline_kl: float
    candidate_len: float
    baseline_len: float
    seconds: float


class HeadSummary(TypedDict):
    """The reward head that RL and the gate used: its cross-validated accuracy and the
    preference pairs it was fitted on (outside the gate's prompts)."""

    cv_accuracy: float | None
    n_pairs: int


class RunMetrics(TypedDict, total=False):
    """training_runs.metrics of a finished run. A run skipped for want of evidence has only
    decision, seconds, head and events_used; safety is there when the floor ran."""

    gate: GateMetrics
    decision: str                       # why the run was promoted or rejected
    safety: dict[str, Any]              # jobs.safety_floor's figures
    steps: list[StepRecord]
    dpo_steps: list[dict[str, float]]   # adapters/dpo.py's per-step figures
    seconds: dict[str, float]           # per phase: reward_head, dpo, rl, gate, safety_floor
    events_used: int
    head: HeadSummary


class RunOutcome(TypedDict):
    """What jobs.execute_run returns: the run's final status and what it publishes."""

    status: Literal["succeeded", "rejected"]
    metrics: RunMetrics
    adapter_version: int | None         # the new version (made current by jobs.publish)
    events_used: int
    reward_head_version: int            # the head saved by the run (published with it)
