"""From config.toml's [reward] and [training] sections to the adapters' settings objects."""

from __future__ import annotations

from pathlib import Path

from assistant.config import Config
from feedback_store.errors import ConfigError


def public_prompts(path: str, base: Path) -> tuple[str, ...]:
    """Operator-supplied prompts: JSONL with {"prompt": str} or plain text, one per line."""
    if not path:
        return ()
    import json

    file = Path(path) if Path(path).is_absolute() else base / path
    if not file.exists():
        raise ConfigError(f"training.public_prompts = {path!r}: no such file")
    prompts = []
    for line in file.read_text().splitlines():
        line = line.strip()
        if line:
            prompts.append(json.loads(line)["prompt"] if line.startswith("{") else line)
    return tuple(prompts)


def safety_settings(config: Config):
    """[safety] as adapters.safety.SafetySettings, paths resolved; the floor's data file must
    exist while it is on (a clear error, not a run that trains without the floor)."""
    from adapters.safety import SafetySettings

    s = config.safety
    if s.enabled and not config.safety_data_file.exists():
        raise ConfigError(f"safety.data_file = {s.data_file!r}: no such file "
                          f"({config.safety_data_file}); point it at the HH-harmless pairs "
                          f"or set [safety] enabled = false")
    return SafetySettings(enabled=s.enabled, weight=s.weight,
                          data_file=str(config.safety_data_file),
                          store_dir=str(config.safety_dir),
                          features_dir=str(config.cache_dir / "features"), margin=s.margin,
                          refusal_tolerance=s.refusal_tolerance,
                          redteam_prompts=s.redteam_prompts, fit_pairs=s.fit_pairs,
                          max_tokens=s.max_tokens)


def run_settings(config: Config):
    from adapters.dpo import DpoSettings
    from adapters.gate import GateSettings
    from adapters.jobs import RunSettings
    from adapters.policy import PolicySettings
    from adapters.reward_head import HeadSettings

    t, r = config.training, config.reward
    return RunSettings(
        head=HeadSettings(shared_prior=r.shared_prior, prior_strength=r.prior_strength,
                          l2=r.l2, thumbs_weight=r.thumbs_weight,
                          select_prior=r.select_prior),
        policy=PolicySettings(lora_r=t.lora_r, lora_alpha=t.lora_alpha,
                              lora_dropout=t.lora_dropout, learning_rate=t.learning_rate,
                              steps=t.steps, group_size=t.group_size,
                              prompts_per_step=t.prompts_per_step,
                              max_completion_tokens=t.max_completion_tokens,
                              kl_beta=t.kl_beta, target_kl=t.target_kl),
        gate=GateSettings(promote_margin=t.promote_margin, kl_budget=t.kl_budget,
                          max_completion_tokens=t.max_completion_tokens),
        dpo=DpoSettings(epochs=t.dpo_epochs, beta=t.dpo_beta,
                        learning_rate=t.dpo_learning_rate),
        heldout_frac=t.heldout_frac,
        min_head_pairs=t.min_head_pairs, min_head_accuracy=t.min_head_accuracy,
        public_prompts=public_prompts(t.public_prompts, config.source.parent),
        safety=safety_settings(config),
    )
