"""From config.toml's [reward], [training] and [safety] to one run's RunSettings."""

from __future__ import annotations

from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import TypeVar

from adapters.settings import (
    Checked,
    DpoSettings,
    EvidenceSettings,
    GateSettings,
    PolicySettings,
    RunSettings,
    SafetySettings,
)
from assistant.config import Config, TrainingConfig
from feedback_store.errors import ConfigError

T = TypeVar("T", bound=Checked)


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


def safety_settings(config: Config) -> SafetySettings:
    """[safety] with its paths resolved; the floor's data file must exist while it is on (a
    clear error, not a run that trains without the floor)."""
    s = config.safety
    if s.enabled and not config.safety_data_file.exists():
        raise ConfigError(f"safety.data_file = {s.data_file!r}: no such file "
                          f"({config.safety_data_file}); point it at the HH-harmless pairs "
                          f"or set [safety] enabled = false")
    return replace(s, data_file=str(config.safety_data_file), store_dir=str(config.safety_dir),
                   features_dir=str(config.features_dir))


def _part(cls: type[T], section: TrainingConfig) -> T:
    """The fields of one settings class out of [training], which extends it."""
    return cls(**{f.name: getattr(section, f.name) for f in fields(cls)})


def run_settings(config: Config) -> RunSettings:
    t = config.training
    return RunSettings(
        **asdict(_part(EvidenceSettings, t)),
        head=config.reward,
        policy=_part(PolicySettings, t),
        gate=_part(GateSettings, t),
        dpo=_part(DpoSettings, t),
        public_prompts=public_prompts(t.public_prompts, config.source.parent),
        safety=safety_settings(config),
    )
