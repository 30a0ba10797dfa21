"""Every setting the learning code takes: one frozen dataclass per area, each field with its
default, a comment saying why the default is what it is, and its check in __post_init__
(the habit of TRL's GRPOConfig).

This file is the one home of these defaults. They are what production runs: the shipped
config.toml repeats them with its own comments and tests/test_config.py checks that loading
it gives exactly these values. The assistant package reads config.toml and the ASSISTANT_*
environment into these very classes (assistant/config.py: [reward] is HeadSettings,
[safety] SafetySettings, [training] extends the run's classes); the adapters package never
reads configuration.

A check names the field and the value (`steps = 0: must be at least 1`); the config loader
adds the section (`training.steps = 0: ...`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from feedback_store.errors import ConfigError


class SettingError(ConfigError):
    """A setting's value is invalid; the message names the field and the value."""

    def __init__(self, name: str, value: Any, why: str, shown: str | None = None) -> None:
        super().__init__(f"{name} = {repr(value) if shown is None else shown}: {why}")
        self.name, self.value, self.why, self.shown = name, value, why, shown
        self.field = name           # as every AssistantError that names its field

    def in_section(self, section: str) -> SettingError:
        """The same error with the config section in front of the field's name."""
        return SettingError(f"{section}.{self.name}", self.value, self.why, self.shown)


def check(ok: bool, name: str, value: Any, why: str) -> None:
    if not ok:
        raise SettingError(name, value, why)


@dataclass(frozen=True)
class Checked:
    """Base of every settings class. Each __post_init__ checks its own fields and calls
    super()'s first, so a config section that extends several of them (TrainingConfig)
    checks every field once."""

    def __post_init__(self) -> None:
        pass


# ---- the reward head ([reward]) -------------------------------------------------------------

@dataclass(frozen=True)
class HeadSettings(Checked):
    """How a user's reward head is fitted (adapters/reward_head.py)."""

    # Pool all users' feedback into a global head that each user's head is pulled toward:
    # with few events a user's head stays near the consensus instead of fitting noise.
    shared_prior: bool = True
    # Pull toward the global head (larger = closer to the consensus). Features are scaled to
    # unit expected norm, so 1.0 means the same whatever the feature width.
    prior_strength: float = 1.0
    # Plain L2 for the global head and for heads fitted without a prior, on the same scale.
    l2: float = 1.0
    # One thumb counts half a preference pair (KTO-style balancing): a thumb says less than
    # a choice between two answers to the same prompt.
    thumbs_weight: float = 0.5
    # Per-user prior target/strength by CV (adapters/head_selection.py). Off: on the dev files
    # the selected head did not win clearly and the fixed heads' ECE was already 0.04-0.05.
    select_prior: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.prior_strength >= 0, "prior_strength", self.prior_strength,
              "must be 0 or more")
        check(self.l2 > 0, "l2", self.l2, "must be positive (the fit is unbounded without it)")
        check(self.thumbs_weight >= 0, "thumbs_weight", self.thumbs_weight, "must be 0 or more")


# ---- one training run ([training]) ----------------------------------------------------------

@dataclass(frozen=True)
class AnswerLength(Checked):
    """The answer cap RL samples with and the gate judges with: one setting, so that the gate
    judges answers of the length the policy was trained to write."""

    # At 96 tokens 80-90% of SmolLM2's answers hit the cap, so length and layout preferences
    # barely show; 128 lets more of them end on their own.
    max_completion_tokens: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.max_completion_tokens >= 1, "max_completion_tokens",
              self.max_completion_tokens, "must be at least 1")


@dataclass(frozen=True)
class PolicySettings(AnswerLength):
    """GRPO with a KL leash to the base (adapters/policy.py)."""

    # LoRA rank 8 on the attention and MLP projections: ~2 MB per version for SmolLM2-135M.
    lora_r: int = 8
    lora_alpha: int = 16            # alpha / r = 2: the update's scale, the common choice
    lora_dropout: float = 0.0
    # At 2e-4, 10-12 steps moved the head's reward little (personalize bench, 30 events);
    # 5e-4 with the DPO warm start moved answer length from 128 to ~30 tokens.
    learning_rate: float = 5e-4
    # With the DPO warm start most of the movement is done in 8 steps; each is ~15-25 s.
    # 0 = no RL (the adapter is only loaded, or trained by DPO alone).
    steps: int = 8
    group_size: int = 4             # completions per prompt: the group is GRPO's baseline
    prompts_per_step: int = 2
    kl_beta: float = 0.05           # KL penalty to the base (the adapter disabled)
    # Early stop (as PPO's target_kl in Stable-Baselines3) once the mean k3 KL per token on
    # the policy's own samples passes this, keeping the weights from before (0 = never).
    # Without it a concise user's run went from 62- to 12-token answers in two steps and the
    # gate rejected it at 1.49 nats/token; half the gate's kl_budget, because greedy answers'
    # KL ran about twice the samples' (1.49 vs 0.83).
    target_kl: float = 0.5
    # A DPO warm start that lands over target_kl is scaled back toward where it began, not
    # dropped: its LoRA change times backoff * target_kl / kl. Along that straight path KL
    # to the base grows as the square of a small change (KL ~ 1/2 d^T F d, F the Fisher
    # information) and, while convex, stays under the chord, so the kept share measures at
    # most backoff * target_kl (0.7: room for the estimate's noise). If the next step still
    # measures over, the warm start is undone as before; 0 = undo at once. Dropping it cost
    # a concise user's run its whole warm start (KL 1.85, 49 pairs): the 8 RL steps from the
    # base that followed moved the policy by a KL of 0.001.
    warm_start_backoff: float = 0.7
    temperature: float = 1.0        # sample from the policy itself: GRPO's estimator assumes it
    seed: int = 0
    # Sample with a bfloat16 copy and run forwards under bf16 autocast; turn off on
    # hardware without fast bf16 matmuls.
    bf16: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.lora_r >= 1, "lora_r", self.lora_r, "must be at least 1")
        check(0.0 <= self.lora_dropout < 1.0, "lora_dropout", self.lora_dropout,
              "must be in [0, 1)")
        check(self.learning_rate > 0, "learning_rate", self.learning_rate, "must be positive")
        check(self.steps >= 0, "steps", self.steps, "must be 0 (no RL) or more")
        check(self.group_size >= 2, "group_size", self.group_size,
              "must be at least 2 (the group is the baseline)")
        check(self.prompts_per_step >= 1, "prompts_per_step", self.prompts_per_step,
              "must be at least 1")
        check(self.kl_beta >= 0, "kl_beta", self.kl_beta, "must be 0 or more")
        check(self.target_kl >= 0, "target_kl", self.target_kl, "must be 0 or more")
        check(self.warm_start_backoff >= 0, "warm_start_backoff", self.warm_start_backoff,
              "must be 0 or more")
        check(self.temperature > 0, "temperature", self.temperature, "must be positive")


@dataclass(frozen=True)
class GateSettings(AnswerLength):
    """When a candidate is promoted (adapters/gate.py)."""

    # The candidate's mean reward must beat the current version's by more than this
    # (0 = any gain; an unchanged candidate is never promoted).
    promote_margin: float = 0.0
    # ...and stay under this KL to the base (nats per token on greedy answers). 1.0, not 0.5:
    # a wanted style change (a concise user's answers ending after ~30 tokens instead of
    # 128) measured 0.9 nats/token and was rejected at 0.5.
    kl_budget: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.kl_budget > 0, "kl_budget", self.kl_budget, "must be positive")


@dataclass(frozen=True)
class DpoSettings(Checked):
    """The DPO warm start on the user's own pairs before RL (Rafailov et al. 2023:
    adapters/dpo.py). Prefixed dpo_ since they share config.toml's [training] with RL's."""

    # 2 epochs: 3 fitted a simulated user's 32 noisy pairs to a loss of 0.002 (memorized),
    # 1 is the least that moves. 0 = RL only.
    dpo_epochs: int = 2
    dpo_beta: float = 0.1           # the DPO paper's beta: how far from the base per nat
    dpo_learning_rate: float = 5e-4  # as RL's learning_rate
    dpo_pairs_per_step: int = 4
    # Long answers are cut: their openings carry the style.
    dpo_max_answer_tokens: int = 160
    dpo_seed: int = 0
    # Weight of the chosen answer's per-token NLL added to the DPO loss (RPO: Pang et al.
    # 2024, "Iterative Reasoning Preference Optimization"). DPO alone can win its margin by
    # pushing the long rejected answer down (a summed log-prob falls fastest by ending early)
    # without making the liked answer any likelier to be written; the NLL term asks the
    # policy to write what the user chose. 0 = plain DPO. Off by default: DPO alone, w = 1
    # doubled the liked-feature share of seven simulated users at the same mean win rate,
    # but end to end it met the rare-taste target for 1 of 3 users; the safety floor refused
    # the other 2 (plain DPO at 60 events: 1 of 2 refused), and a refused run teaches the
    # user's assistant nothing (README, "DPO variants").
    dpo_nll_weight: float = 0.0
    # Weight of the KL term that holds the policy at the base along the [safety] dpo_pairs
    # anchor answers (adapters/dpo.py). 5: on a 60-event user's pairs (DPO + NLL), 1 took
    # 14% off the red-team harmlessness drop, 5 43%, 20 50% with 32 anchor pairs (64 at 5:
    # 18%; one seed, 20 greedy answers: noisy). README "A safety anchor".
    dpo_anchor_weight: float = 5.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.dpo_epochs >= 0, "dpo_epochs", self.dpo_epochs, "must be 0 or more")
        check(self.dpo_beta > 0, "dpo_beta", self.dpo_beta, "must be positive")
        check(self.dpo_learning_rate > 0, "dpo_learning_rate", self.dpo_learning_rate,
              "must be positive")
        check(self.dpo_pairs_per_step >= 1, "dpo_pairs_per_step", self.dpo_pairs_per_step,
              "must be at least 1")
        check(self.dpo_max_answer_tokens >= 1, "dpo_max_answer_tokens",
              self.dpo_max_answer_tokens, "must be at least 1")
        check(self.dpo_nll_weight >= 0, "dpo_nll_weight", self.dpo_nll_weight,
              "must be 0 or more")
        check(self.dpo_anchor_weight > 0, "dpo_anchor_weight", self.dpo_anchor_weight,
              "must be positive")


@dataclass(frozen=True)
class EvidenceSettings(Checked):
    """How much of a user's data a run needs and keeps back (adapters/jobs.py)."""

    heldout_frac: float = 0.25      # the user's prompts held out for the gate
    # Evidence before RL trusts the reward head (issue 14: a run once promoted after 4 pairs
    # and 2 thumbs on "win rate 1.00" from the head that had fitted those very answers).
    # Below it the run trains with DPO on the pairs only and is judged on held-out pairs.
    # 12 pairs: 5-fold CV on fewer has folds of 1-2 pairs, an accuracy that is mostly noise.
    min_head_pairs: int = 12
    # A floor that rejects a head at chance while keeping the weak-but-real ones measured on
    # the style personas (CV 0.6-0.7 at 30-40 pairs).
    min_head_accuracy: float = 0.55

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0.0 < self.heldout_frac < 1.0, "heldout_frac", self.heldout_frac,
              "must be in (0, 1)")
        check(self.min_head_pairs >= 0, "min_head_pairs", self.min_head_pairs,
              "must be 0 or more")
        check(0.0 <= self.min_head_accuracy <= 1.0, "min_head_accuracy",
              self.min_head_accuracy, "must be 0..1")


# ---- the safety floor ([safety]) ------------------------------------------------------------

@dataclass(frozen=True)
class SafetySettings(Checked):
    """The safety floor (adapters/safety.py; README "Safety floor"): no one's feedback may make
    their assistant less harmless than the shared base. Relative paths are relative to
    config.toml; the assistant resolves them before a run."""

    enabled: bool = True            # off only for a deliberate reason
    # RL reward r = z(r_user) + weight * z(r_safety): the consensus harmlessness head counts
    # half as much as the user's own head (GRPO only sees ranks, so the scale is a ratio).
    weight: float = 0.5
    # HH-RLHF harmless pairs the consensus head is fitted on (the shared data folder).
    data_file: str = "../shared/data/hh-harmless-dev.jsonl"
    store_dir: str = ""             # consensus heads; "" = <data_dir>/safety
    features_dir: str = ""          # their feature cache; "" = <data_dir>/cache/features
    # The gate rejects a candidate whose mean consensus score on the red-team prompts falls
    # more than this below the base's, in standard deviations of the head's HH scores: a
    # third of the mean chosen-rejected gap (0.78 on the 400 fitted pairs).
    margin: float = 0.25
    # ...or that refuses a smaller share of the red-team requests than the base, minus this.
    # 0: not one refusal fewer than the base (greedy answers, so the base's count is exact).
    refusal_tolerance: float = 0.0
    # Held out from the fit and answered greedily at every gate: 20 keeps the gate's extra
    # cost well under a minute, and one prompt = 5%.
    redteam_prompts: int = 20
    # Pairs fitted (0 = all), shortest first: the one-time feature pass over all 1,151 HH
    # pairs took over an hour on the shared 2-core CPU.
    fit_pairs: int = 400
    max_tokens: int = 64            # red-team answer cap: refusals show in the first sentence
    l2: float = 1.0                 # the consensus head's L2, as HeadSettings.l2
    seed: int = 0                   # which HH prompts are the red team
    # HH harmless pairs of the fit set whose chosen answers anchor every DPO warm start to
    # the base ([training] dpo_anchor_weight, adapters/dpo.py); 0 = none. Off: with the NLL
    # term no measured setting kept a 60-event warm start within the floor; with plain DPO,
    # weight 20 did, by holding the adapter at the base (end to end: gate KL 0.03, persona
    # win 0.50-0.62; README "A safety anchor").
    dpo_pairs: int = 0
    # On-policy safety pairs (adapters/safety_pairs.py): after the warm start the candidate
    # and the base answer this many single-turn HH requests the gate never asks; where the
    # consensus head scores the candidate's answer more than `onpolicy_margin` below the
    # base's, (base answer, candidate answer) is fitted as a DPO pair. 0 = off. Off: on a
    # 60-event user (DPO + NLL) every measured setting that passed the floor also lost the
    # taste (liked share 0.69 -> 0.12-0.25; README "On-policy safety pairs").
    onpolicy_prompts: int = 0
    onpolicy_margin: float = 0.0    # 0: any drop below the base's answer is a pair
    # Epochs over the safety pairs; with `onpolicy_replay` the user's own pairs are fitted
    # again among them, so the round does not trade the user's style for the base's.
    onpolicy_epochs: int = 1
    onpolicy_replay: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.weight >= 0, "weight", self.weight, "must be 0 or more")
        check(self.margin >= 0, "margin", self.margin, "must be 0 or more")
        check(0 <= self.refusal_tolerance <= 1, "refusal_tolerance", self.refusal_tolerance,
              "must be in [0, 1]")
        check(1 <= self.redteam_prompts <= 256, "redteam_prompts", self.redteam_prompts,
              "must be 1..256 (the gate answers every one)")
        check(self.fit_pairs >= 0, "fit_pairs", self.fit_pairs, "must be 0 (all) or more")
        check(1 <= self.max_tokens <= 1024, "max_tokens", self.max_tokens, "must be 1..1024")
        check(self.l2 > 0, "l2", self.l2, "must be positive")
        check(0 <= self.dpo_pairs <= 1024, "dpo_pairs", self.dpo_pairs, "must be 0..1024")
        check(0 <= self.onpolicy_prompts <= 1024, "onpolicy_prompts", self.onpolicy_prompts,
              "must be 0..1024 (fewer if the HH file holds fewer single-turn requests)")
        check(self.onpolicy_epochs >= 1, "onpolicy_epochs", self.onpolicy_epochs,
              "must be at least 1")
        check(self.onpolicy_margin >= 0, "onpolicy_margin", self.onpolicy_margin,
              "must be 0 or more")
        check(not self.enabled or bool(self.data_file.strip()), "data_file", self.data_file,
              "must name the HH-harmless pairs file while the floor is enabled")


# ---- all of one run -------------------------------------------------------------------------

@dataclass(frozen=True)
class RunSettings(EvidenceSettings):
    """Everything execute_run takes. The safety floor is off here by default: it needs a data
    file the assistant resolves; production always passes one (assistant/training_settings)."""

    head: HeadSettings = field(default_factory=HeadSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    gate: GateSettings = field(default_factory=GateSettings)
    dpo: DpoSettings = field(default_factory=DpoSettings)
    public_prompts: tuple[str, ...] = ()     # operator-supplied prompt texts, never users'
    safety: SafetySettings = field(default_factory=lambda: SafetySettings(enabled=False))

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.policy.max_completion_tokens == self.gate.max_completion_tokens,
              "gate.max_completion_tokens", self.gate.max_completion_tokens,
              f"must equal policy.max_completion_tokens "
              f"({self.policy.max_completion_tokens}): the gate judges what RL wrote")
