"""On-policy RL of one user's LoRA adapter against a reward function (GRPO with a KL penalty).

Method. Each step takes `prompts_per_step` prompts, samples `group_size` completions per
prompt from the current policy (temperature `temperature`, no top-k/top-p, so the samples
come from exactly the distribution being trained), scores them with `reward_fn`, and takes
one gradient step on

    loss = mean over completion tokens of [ -A_i * ratio_t  +  beta * k3_t ]

- A_i = (r_i - mean(group)) / (std(group) + eps): the group-relative advantage of GRPO
  (Shao et al. 2024, DeepSeekMath), which needs no value network. Normalizing by the group's
  std also makes the step size independent of the reward head's arbitrary scale.
- ratio_t = exp(logp_t - stopgrad(logp_t)) = 1: one update per fresh batch is exactly
  on-policy, so PPO's clipped ratio (Schulman et al. 2017) is inactive and the gradient is
  the plain REINFORCE one, A_i * grad logp_t.
- k3_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1, Schulman's "k3" estimator of
  KL(policy || reference) (http://joschu.net/blog/kl-approx.html): unbiased, always >= 0;
  the reference is the same model with its adapter disabled, i.e. the shared base.
- "mean over completion tokens" is the token-level average over the whole batch (DAPO, Yu
  et al. 2025), avoiding the per-sequence 1/|o| length bias of GRPO's original objective
  (Liu et al. 2025, Dr. GRPO) - it matters here because feedback often rewards length.

Why a hand-written loop rather than TRL's GRPOTrainer/RLOOTrainer. On this 2-core CPU one
TRL GRPO step with 8 completions of 48 tokens took ~10 s: it generates in float32 through
PEFT's unmerged LoRA and runs the forwards in float32, and it brings a datasets/Trainer/
accelerate setup per user. The same step here costs ~6-8 s of CPU on a busy machine
(bench/policy_step.py). The loop is ~150 lines, easy to audit, and controls where time goes:

- Sampling is memory-bandwidth bound (every decoded token reads all 135 M weights), so the
  whole step's P*k completions are generated in one batch with the KV cache, and by a
  bfloat16 copy of the base with the LoRA merged in (`bf16=True`): half the bytes per token,
  and none of PEFT's per-projection LoRA matmuls. It is re-merged after every update; it
  differs from the policy by rounding only (autocast multiplies by the same bf16 weights).
- The policy and reference log-probs are one forward each over the padded batch, the matmuls
  under bfloat16 autocast (AMX/AVX512-BF16 make them ~4x faster than fp32 here); the output
  layer is applied in float32 and only at completion positions, so log-probs keep full
  precision and the prompt positions never pay for the 49 k-wide vocabulary projection.

The caller's model. `train_policy` wraps the caller's base model with PEFT, which injects
LoRA layers into it in place. The base weights are never changed (they stay frozen); call
`peft_model.unload()` to remove the LoRA layers and get the plain base model back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from adapters.decoding import (
    RewardFn,
    bf16_twin,
    completion_mask,
    decode,
    eos_ids,
    left_pad,
    render_prompts,
    sample,
    score_texts,
    token_logprobs,
)
from adapters.records import StepRecord
from adapters.settings import PolicySettings
from feedback_store.errors import TrainingError

if TYPE_CHECKING:       # peft and transformers are imported where they are used
    from peft import PeftModel
    from peft.tuners.lora import Linear as LoraLinear
    from transformers import PreTrainedTokenizerBase

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MAX_GRAD_NORM = 1.0
ADV_EPS = 1e-4




# ---- the objective ------------------------------------------------------------------------
def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """GRPO advantages (Shao et al. 2024): rewards (P, k) -> (P, k) standardized per group.

    A group whose completions all score the same carries no signal and gets 0.
    """
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=False)
    return (rewards - mean) / (std + ADV_EPS)


def grpo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-level GRPO loss and the mean k3 KL, from (B, T) log-probs, (B,) advantages and
    the (B, T) completion mask."""
    ratio = torch.exp(logp - logp.detach())                        # == 1, carries grad logp
    delta = (ref_logp - logp).clamp(-20, 20)                       # log(ref / policy)
    k3 = torch.exp(delta) - delta - 1                              # Schulman's k3 >= 0
    per_token = -advantages.unsqueeze(1) * ratio + beta * k3
    n = mask.sum().clamp(min=1)
    loss = (per_token * mask).sum() / n
    return loss, (k3.detach() * mask).sum() / n


# ---- setup ------------------------------------------------------------------------------
def attach_lora(model, settings: PolicySettings, init_adapter: Path | None = None):
    """Wrap the caller's base model with a trainable LoRA named "default": a fresh one, or
    the adapter saved at init_adapter (whose own rank/alpha/targets then apply)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if isinstance(model, PeftModel):
        raise TrainingError("train_policy needs the plain base model, not a PeftModel")
    if init_adapter is None:
        config = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha,
                            lora_dropout=settings.lora_dropout, target_modules=LORA_TARGETS,
                            task_type="CAUSAL_LM")
        return get_peft_model(model, config)
    if not (Path(init_adapter) / "adapter_config.json").exists():
        raise TrainingError(f"no adapter_config.json in {init_adapter}")
    try:
        return PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
    except Exception as exc:
        raise TrainingError(f"could not load adapter {init_adapter}: {exc}") from exc


class _Sampler:
    """A bfloat16 copy of the base that only generates, with the policy's LoRA merged in.

    Merged weights make decoding as fast as the plain base: PEFT's unmerged LoRA adds two
    small matmuls per projection per token (210 of them), which on CPU costs more than the
    halved weight traffic gains. `sync` re-merges after each update: W = bf16(W0 + s*B@A).
    """

    def __init__(self, base_bf16, policy: PeftModel) -> None:
        self.model = base_bf16
        prefix = "base_model.model."
        self.layers = [(self.model.get_submodule(name.removeprefix(prefix)), base, layer)
                       for name, base, layer in _lora_linears(policy)]
        self.sync()

    @torch.no_grad()
    def sync(self) -> None:
        for target, base, layer in self.layers:
            merged = base.weight + layer.get_delta_weight("default")
            target.weight.copy_(merged)


def _lora_linears(policy: PeftModel) -> list[tuple[str, torch.nn.Linear, LoraLinear]]:
    """The policy's LoRA layers by module name, with the Linear each wraps: LORA_TARGETS are
    all projections, and a delta merges only into a plain weight."""
    from peft.tuners.lora import Linear, LoraLayer

    out = []
    for name, m in policy.named_modules():
        if not isinstance(m, LoraLayer):
            continue
        base = m.get_base_layer()
        if not isinstance(m, Linear) or not isinstance(base, torch.nn.Linear):
            raise TrainingError(f"only LoRA on Linear layers can be trained here, not {name}")
        out.append((name, base, m))
    return out


def _plain_bf16_twin(model):
    from peft import PeftModel

    if isinstance(model, PeftModel):
        raise TrainingError("train_policy needs the plain base model, not a PeftModel")
    return bf16_twin(model)


def _prompt_cycle(n: int, per_step: int, seed: int) -> Iterator[list[int]]:
    """Endless batches of prompt indices: a fresh seeded permutation per pass."""
    gen = torch.Generator().manual_seed(seed)
    queue: list[int] = []
    while True:
        while len(queue) < per_step:
            queue += torch.randperm(n, generator=gen).tolist()
        yield queue[:per_step]
        queue = queue[per_step:]


@dataclass
class _Run:
    policy: PeftModel
    sampler: _Sampler | None
    tokenizer: PreTrainedTokenizerBase
    optimizer: torch.optim.Optimizer
    params: list[torch.Tensor]
    eos: list[int]
    reward_fn: RewardFn
    settings: PolicySettings


def _rollout(run: _Run, rows: list[list[int]], messages: list[list[dict]]) -> dict:
    """Sample k completions per prompt in one batch and score them (rows are prompt-major)."""
    s, k = run.settings, run.settings.group_size
    ids, mask = left_pad([r for r in rows for _ in range(k)], run.tokenizer.pad_token_id)
    generator = run.sampler.model if run.sampler else run.policy
    completion = sample(generator, ids, mask, max_new_tokens=s.max_completion_tokens,
                        temperature=s.temperature, eos=run.eos,
                        pad_id=run.tokenizer.pad_token_id)
    cmask = completion_mask(completion, run.eos)
    texts = decode(run.tokenizer, completion, cmask)
    rewards = torch.tensor(score_texts(run.reward_fn, [m for m in messages for _ in range(k)],
                                       texts, "the RL step"), dtype=torch.float32)
    return {"ids": ids, "mask": mask, "completion": completion, "cmask": cmask,
            "rewards": rewards}


def _update(run: _Run, batch: dict) -> tuple[float, float]:
    """One policy-gradient step on a rollout; returns (loss, mean k3 KL of the policy that
    sampled it). No step is taken when that KL is over settings.target_kl."""
    s = run.settings
    adv = group_advantages(batch["rewards"].view(-1, s.group_size)).flatten()   # (B,)
    args = (batch["ids"], batch["mask"], batch["completion"], batch["cmask"])
    if s.kl_beta > 0:
        with torch.no_grad(), run.policy.disable_adapter():
            ref = token_logprobs(run.policy, *args, temperature=s.temperature, bf16=s.bf16)
    run.policy.train()        # only matters for LoRA dropout; the base has none in use
    logp = token_logprobs(run.policy, *args, temperature=s.temperature, bf16=s.bf16)
    if s.kl_beta <= 0:
        ref = logp.detach()
    loss, kl = grpo_loss(logp, ref, adv, batch["cmask"], s.kl_beta)
    if not torch.isfinite(loss):
        raise TrainingError(f"non-finite loss {loss.item()}")
    if _over_target(s, kl.item()):
        return loss.item(), kl.item()
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.params, MAX_GRAD_NORM)
    run.optimizer.step()
    run.policy.eval()
    if run.sampler:
        run.sampler.sync()
    return loss.item(), kl.item()


def _over_target(settings: PolicySettings, kl: float) -> bool:
    return settings.target_kl > 0 and kl > settings.target_kl


def _lora_weights(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _restore(run: _Run, weights: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for param, saved in zip(run.params, weights, strict=True):
            param.copy_(saved)
    if run.sampler:
        run.sampler.sync()


def _blend(start: list[torch.Tensor], end: list[torch.Tensor],
           a: float) -> list[torch.Tensor]:
    """start + a (end - start), tensor by tensor: a = 0 is start, 1 is end."""
    return [s + a * (e - s) for s, e in zip(start, end, strict=True)]


def backoff_scale(settings: PolicySettings, kl: float) -> float:
    """How much of an over-target warm start to keep: backoff * target / kl. Along the
    straight path from the old weights, KL to the base starts as the square of the step
    (KL ~ 1/2 d^T F d) and, where it stays convex, lies under the chord: the kept share then
    measures at most backoff * target. The square law alone (sqrt(target / kl)) kept too
    much where KL had saturated: a tiny model's warm start at 32x the target measured 6x it."""
    return min(1.0, settings.warm_start_backoff * settings.target_kl / kl)


@dataclass
class _Leash:
    """settings.target_kl's bookkeeping: the weights of the last two policies, and of the
    adapter before the warm start (when one ran) until a step measures the warm start, as
    kept, under the target."""

    run: _Run
    pre_warm: list[torch.Tensor] | None
    before_last: list[torch.Tensor]
    current: list[torch.Tensor]

    @classmethod
    def start(cls, run: _Run, pre_warm: list[torch.Tensor] | None) -> _Leash:
        weights = _lora_weights(run.params) if run.settings.target_kl > 0 else []
        return cls(run, pre_warm, weights, weights)

    def check(self, step: int, kl: float) -> tuple[str | None, float | None]:
        """After step `step` (whose update _update skipped if kl was over the target):
        (what happened, the warm start's kept share when it changed). None to go on;
        "warm_start_scaled" when the warm start alone went over and was scaled back toward
        the adapter before it; "warm_start_reverted" when it (or its scaled-back trial)
        went over and was undone, RL going on from the adapter as it was before it;
        "stopped" to end RL with the weights from before the update that went over."""
        if self.run.settings.target_kl <= 0:
            return None, None
        if not _over_target(self.run.settings, kl):
            self.before_last, self.current = self.current, _lora_weights(self.run.params)
            self.pre_warm = None        # the warm start, as kept, measured under the target
            return None, None
        if self.pre_warm is not None:
            return self._back_off(step, kl, self.pre_warm)
        if step > 1:
            _restore(self.run, self.before_last)
        return "stopped", None

    def _back_off(self, step: int, kl: float,
                  pre_warm: list[torch.Tensor]) -> tuple[str, float]:
        """The warm start (step 1) or its scaled-back trial (step 2) went over."""
        a = backoff_scale(self.run.settings, kl)
        if step == 1 and a > 0:
            self.current = _blend(pre_warm, _lora_weights(self.run.params), a)
            _restore(self.run, self.current)
            self.before_last = pre_warm
            return "warm_start_scaled", a
        _restore(self.run, pre_warm)
        self.before_last = self.current = pre_warm
        self.pre_warm = None
        return "warm_start_reverted", 0.0


def train_policy(model, tokenizer, prompts: list[list[dict]], reward_fn: RewardFn,
                 settings: PolicySettings, init_adapter: Path | None = None,
                 progress: Callable[[StepRecord], None] | None = None,
                 warm_start: Callable[[PeftModel], object] | None = None,
                 ) -> tuple[PeftModel, list[StepRecord]]:
    """RL-tune a LoRA on `model` (the plain base) against `reward_fn`; see the module doc.

    warm_start(policy), if given, trains the fresh or loaded LoRA before RL begins (the DPO
    warm start of adapters/dpo.py).

    prompts: chat histories ending with a user turn. reward_fn(prompts, completions) gets
    one prompt per completion (prompt-major, group_size in a row) and returns one float each.
    Returns (peft_model, records): the PeftModel whose "default" adapter was trained (call
    `.unload()` on it to get the untouched base back) and one StepRecord per step (also
    passed to `progress` as the step ends). kl_stop marks the step whose policy went over
    target_kl: RL ended there, with the weights from before the update that took it over
    (the samples of step t measure the policy after t - 1 updates). If the warm start alone
    went over, it is scaled back instead (warm_start_kept < 1 on step 1, by settings'
    warm_start_backoff) and RL goes on; if step 2 still measures over, it is undone
    (warm_start_reverted) and RL goes on from the adapter as it was before it.
    """
    if not prompts:
        raise TrainingError("no prompts to train on")
    if settings.temperature <= 0 or settings.group_size < 2:
        raise TrainingError("RL needs temperature > 0 and group_size >= 2")
    run, pre_warm = _start_run(model, tokenizer, reward_fn, settings, init_adapter, warm_start)
    rendered = render_prompts(tokenizer, prompts)
    batches = _prompt_cycle(len(prompts), settings.prompts_per_step, settings.seed)
    records: list[StepRecord] = []
    leash = _Leash.start(run, pre_warm)
    for step in range(1, settings.steps + 1):
        started, cpu_started = time.perf_counter(), time.process_time()
        picked = next(batches)
        batch = _rollout(run, [rendered[i] for i in picked], [prompts[i] for i in picked])
        generated = time.perf_counter()
        loss, kl = _update(run, batch)
        leashed, kept = leash.check(step, kl)
        records.append(_step_record(step, batch, loss, kl, leashed, kept,
                                    (started, generated, cpu_started)))
        if progress is not None:
            progress(records[-1])
        if leashed == "stopped":
            break
    return run.policy, records


def _start_run(model, tokenizer, reward_fn: RewardFn, settings: PolicySettings,
               init_adapter: Path | None, warm_start: Callable[[PeftModel], object] | None,
               ) -> tuple[_Run, list[torch.Tensor] | None]:
    """The LoRA policy on `model` (warm-started when asked), its sampler and optimizer, and
    the adapter's weights from before the warm start when target_kl may have to undo it."""
    torch.manual_seed(settings.seed)
    # Copied before PEFT injects its LoRA layers into `model`.
    plain = _plain_bf16_twin(model) if settings.bf16 else None
    policy = attach_lora(model, settings, init_adapter).eval()
    params = [p for p in policy.parameters() if p.requires_grad]
    pre_warm = None
    if warm_start is not None:
        if settings.target_kl > 0:
            pre_warm = _lora_weights(params)
        warm_start(policy)
    sampler = _Sampler(plain, policy) if plain is not None else None
    run = _Run(policy=policy, sampler=sampler,
               tokenizer=tokenizer,
               optimizer=torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0),
               params=params, eos=eos_ids(model, tokenizer), reward_fn=reward_fn,
               settings=settings)
    return run, pre_warm


def _step_record(step: int, batch: dict, loss: float, kl: float, leashed: str | None,
                 kept: float | None, clock: tuple[float, float, float]) -> StepRecord:
    """What step `step` did; kept: the warm start's share kept when the leash changed it;
    clock: (its start, the end of its rollout) by perf_counter, and its start by
    process_time."""
    started, generated, cpu_started = clock
    return {
        "step": step, "reward_mean": batch["rewards"].mean().item(),
        "reward_std": batch["rewards"].std(unbiased=False).item(), "kl": kl,
        "completion_len": batch["cmask"].sum(1).mean().item(), "loss": loss,
        "seconds": time.perf_counter() - started, "gen_seconds": generated - started,
        # CPU time shows the cost apart from contention on a shared machine.
        "cpu_seconds": time.process_time() - cpu_started,
        "kl_stop": leashed == "stopped",
        "warm_start_reverted": leashed == "warm_start_reverted", "warm_start_kept": kept}
