"""Configuration as data: one frozen dataclass per area, loaded from config.toml.

Only the `assistant` package reads configuration; `adapters` and `feedback_store` take
their settings as arguments. Environment variables override the file:
ASSISTANT_<SECTION>_<FIELD>, plus the short forms in SHORT_ENV.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feedback_store.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "config.toml"
# An admin key is a password to every user's data: 16 characters is the floor for a random
# key; `assistant user add --admin` keys are 46.
MIN_ADMIN_KEY_CHARS = 16


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: str = "data"
    admin_key: str = ""
    max_prompt_chars: int = 8000
    max_messages: int = 128
    max_request_chars: int = 64000
    rate_limit_per_minute: int = 0
    rate_limit_burst: int = 20


@dataclass(frozen=True)
class ModelConfig:
    path: str = ""
    device: str = "auto"
    dtype: str = "float32"
    context_tokens: int = 2048
    threads: int = 0
    max_batch_rows: int = 8
    prefix_cache_tokens: int = 8192


@dataclass(frozen=True)
class GenerationConfig:
    max_tokens_default: int = 256
    max_tokens_limit: int = 1024
    temperature: float = 0.7
    top_p: float = 0.95
    n_max: int = 3


@dataclass(frozen=True)
class AdapterConfig:
    cache_size: int = 16


@dataclass(frozen=True)
class FeedbackConfig:
    reasons_up: tuple[str, ...] = ("helpful", "accurate", "clear", "concise", "friendly")
    reasons_down: tuple[str, ...] = (
        "incorrect", "unhelpful", "too_long", "too_short", "unsafe", "rude", "off_topic",
    )
    compare_every: int = 5
    criterion: str = "Which answer is more helpful, honest and harmless for you?"
    guidelines: str = ""

    @property
    def reasons(self) -> frozenset[str]:
        return frozenset(self.reasons_up) | frozenset(self.reasons_down)


@dataclass(frozen=True)
class RewardConfig:
    shared_prior: bool = True
    prior_strength: float = 1.0
    l2: float = 1.0
    thumbs_weight: float = 0.5
    select_prior: bool = False


@dataclass(frozen=True)
class TrainingConfig:
    min_new_events: int = 10
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    learning_rate: float = 5e-4
    steps: int = 8
    group_size: int = 4
    prompts_per_step: int = 2
    max_completion_tokens: int = 128
    kl_beta: float = 0.05
    target_kl: float = 0.5
    public_prompts: str = ""
    promote_margin: float = 0.0
    kl_budget: float = 1.0
    heldout_frac: float = 0.25
    threads: int = 1
    dpo_epochs: int = 2
    dpo_beta: float = 0.1
    dpo_learning_rate: float = 5e-4
    min_head_pairs: int = 12
    min_head_accuracy: float = 0.55


DEFAULT_ARMS = (
    "enthusiastic | Answer in an upbeat, enthusiastic tone! | Great question! "
    "Water it once a week and give it bright light - it will love you for it!",
    "example | Illustrate the answer with a concrete example. | For example, water it once a "
    "week: a fern by a bright window stays green for years.",
    "question | End your answer with a short question to the user. | Water it once a week and "
    "keep it in bright light. What kind of plant is it?",
    "summary | Finish with a one-line summary that starts with 'In short,'. | Water it weekly "
    "and give it light. In short, light and steady water keep it alive.",
    "formal | Answer in a formal, precise register; therefore avoid slang. | One should water "
    "the plant weekly; furthermore, it requires indirect light.",
    "analogy | Explain with an analogy. | A plant is like a phone battery: think of water as "
    "its charge - top it up weekly, before it runs flat.",
)


@dataclass(frozen=True)
class ExploreConfig:
    enabled: bool = True
    pool: int = 4
    selection: str = "auto"
    sources: tuple[str, ...] = ("personal", "arm", "arm", "hot", "base", "peer")
    hot_temperature: float = 1.1
    arms: tuple[str, ...] = DEFAULT_ARMS
    demo_question: str = "How do I keep a houseplant alive?"
    uncertainty_from_pairs: int = 20
    features: bool = True


@dataclass(frozen=True)
class SafetyConfig:
    enabled: bool = True
    weight: float = 0.5
    data_file: str = "../shared/data/hh-harmless-dev.jsonl"
    store_dir: str = ""
    margin: float = 0.25
    refusal_tolerance: float = 0.0
    redteam_prompts: int = 20
    fit_pairs: int = 400
    max_tokens: int = 64


@dataclass(frozen=True)
class SchedulerConfig:
    interval_seconds: int = 600
    enabled: bool = True


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    adapters: AdapterConfig = field(default_factory=AdapterConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    explore: ExploreConfig = field(default_factory=ExploreConfig)
    source: Path = DEFAULT_CONFIG

    @property
    def data_dir(self) -> Path:
        path = Path(self.server.data_dir).expanduser()
        return path if path.is_absolute() else (self.source.parent / path).resolve()

    @property
    def db_path(self) -> Path:
        return self.data_dir / "assistant.db"

    @property
    def adapters_dir(self) -> Path:
        return self.data_dir / "adapters"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def safety_data_file(self) -> Path:
        """[safety] data_file; a relative path is relative to this config file."""
        path = Path(self.safety.data_file).expanduser()
        return path if path.is_absolute() else (self.source.parent / path).resolve()

    @property
    def safety_dir(self) -> Path:
        """Consensus heads (one folder per base, feature recipe and data file)."""
        path = Path(self.safety.store_dir).expanduser() if self.safety.store_dir else \
            self.data_dir / "safety"
        return path if path.is_absolute() else (self.source.parent / path).resolve()


SHORT_ENV = {
    "ASSISTANT_DATA_DIR": ("server", "data_dir"),
    "ASSISTANT_HOST": ("server", "host"),
    "ASSISTANT_PORT": ("server", "port"),
    "ASSISTANT_ADMIN_KEY": ("server", "admin_key"),
}


def _coerce(section: str, name: str, default: Any, value: Any) -> Any:
    """Convert a TOML or environment value to the type of the field's default."""
    where = f"{section}.{name}"
    kind = type(default)
    if isinstance(value, str) and kind is not str:
        value = _parse_env(where, kind, value)
    if kind is tuple:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of strings, got {value!r}")
        return tuple(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where} must be {kind.__name__}, got {value!r}")
    return value


def _parse_env(where: str, kind: type, raw: str) -> Any:
    try:
        if kind is bool:
            if raw.lower() not in {"1", "0", "true", "false", "yes", "no"}:
                raise ValueError(raw)
            return raw.lower() in {"1", "true", "yes"}
        if kind is tuple:
            return [part.strip() for part in raw.split(",") if part.strip()]
        return kind(raw)
    except ValueError as exc:
        raise ConfigError(f"{where} must be {kind.__name__}, got {raw!r}") from exc


def _env_overrides(env: dict[str, str]) -> dict[tuple[str, str], str]:
    found: dict[tuple[str, str], str] = {}
    for section in (f.name for f in dataclasses.fields(Config) if f.name != "source"):
        for key in _section_fields(section):
            var = f"ASSISTANT_{section}_{key}".upper()
            if var in env:
                found[(section, key)] = env[var]
    for var, target in SHORT_ENV.items():
        if var in env:
            found[target] = env[var]
    return found


def _section_fields(section: str) -> list[str]:
    cls = {f.name: f.default_factory for f in dataclasses.fields(Config) if f.name != "source"}
    return [f.name for f in dataclasses.fields(cls[section]())]


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None) -> Config:
    """Read config.toml (or ASSISTANT_CONFIG), apply environment overrides, validate."""
    env = dict(os.environ if env is None else env)
    source = Path(path or env.get("ASSISTANT_CONFIG") or DEFAULT_CONFIG).resolve()
    try:
        raw = tomllib.loads(source.read_text()) if source.exists() else {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    overrides = _env_overrides(env)
    sections: dict[str, Any] = {}
    for f in dataclasses.fields(Config):
        if f.name == "source":
            continue
        sections[f.name] = _build_section(f.name, f.default_factory(), raw.get(f.name, {}),
                                          overrides)
    unknown = set(raw) - set(sections)
    if unknown:
        raise ConfigError(f"unknown config section(s): {', '.join(sorted(unknown))}")
    config = Config(**sections, source=source)
    validate(config)
    return config


def _build_section(name: str, defaults: Any, table: dict, overrides: dict) -> Any:
    values = {}
    known = {f.name for f in dataclasses.fields(defaults)}
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"unknown field(s) in [{name}]: {', '.join(sorted(unknown))}")
    for key in known:
        default = getattr(defaults, key)
        value = overrides.get((name, key), table.get(key, default))
        values[key] = _coerce(name, key, default, value)
    return type(defaults)(**values)


def _check(ok: bool, where: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"{where} = {value!r}: {why}")


def validate(c: Config) -> None:
    """Reject values that would fail later, naming the field and the value."""
    _check(1 <= c.server.port <= 65535, "server.port", c.server.port, "must be 1..65535")
    key = c.server.admin_key
    if key and len(key) < MIN_ADMIN_KEY_CHARS:      # never echo the key itself
        raise ConfigError(f"server.admin_key (ASSISTANT_ADMIN_KEY) is {len(key)} characters: "
                          f"must be empty (no admin key) or at least {MIN_ADMIN_KEY_CHARS}")
    _check(c.server.max_prompt_chars > 0, "server.max_prompt_chars", c.server.max_prompt_chars,
           "must be positive")
    _check(c.server.max_messages >= 2, "server.max_messages", c.server.max_messages,
           "must be at least 2 (a system prompt and the user's message)")
    _check(c.server.max_request_chars >= c.server.max_prompt_chars, "server.max_request_chars",
           c.server.max_request_chars, "must be at least server.max_prompt_chars")
    _check(c.server.rate_limit_per_minute >= 0, "server.rate_limit_per_minute",
           c.server.rate_limit_per_minute, "must be 0 (off) or more")
    _check(c.server.rate_limit_burst >= 1, "server.rate_limit_burst",
           c.server.rate_limit_burst, "must be at least 1")
    _check(c.model.device in {"auto", "cpu", "cuda"}, "model.device", c.model.device,
           "must be auto, cpu or cuda")
    _check(c.model.dtype in {"float32", "bfloat16", "float16"}, "model.dtype", c.model.dtype,
           "must be float32, bfloat16 or float16")
    _check(c.model.context_tokens >= 256, "model.context_tokens", c.model.context_tokens,
           "must be at least 256")
    _check(c.model.max_batch_rows >= 1, "model.max_batch_rows", c.model.max_batch_rows,
           "must be at least 1")
    _check(c.model.prefix_cache_tokens >= 0, "model.prefix_cache_tokens",
           c.model.prefix_cache_tokens, "must be 0 (off) or more")
    g = c.generation
    _check(1 <= g.max_tokens_default <= g.max_tokens_limit, "generation.max_tokens_default",
           g.max_tokens_default, "must be between 1 and generation.max_tokens_limit")
    _check(0.0 <= g.temperature <= 2.0, "generation.temperature", g.temperature, "must be 0..2")
    _check(0.0 < g.top_p <= 1.0, "generation.top_p", g.top_p, "must be in (0, 1]")
    _check(1 <= g.n_max <= 8, "generation.n_max", g.n_max, "must be 1..8")
    _check(c.adapters.cache_size >= 1, "adapters.cache_size", c.adapters.cache_size,
           "must be at least 1")
    _check(c.feedback.compare_every >= 0, "feedback.compare_every", c.feedback.compare_every,
           "must be 0 or more")
    t = c.training
    _check(t.steps >= 1, "training.steps", t.steps, "must be at least 1")
    _check(t.group_size >= 2, "training.group_size", t.group_size,
           "must be at least 2 (the group is the baseline)")
    _check(0.0 < t.heldout_frac < 1.0, "training.heldout_frac", t.heldout_frac, "must be in (0, 1)")
    _check(t.kl_beta >= 0, "training.kl_beta", t.kl_beta, "must be 0 or more")
    _check(t.target_kl >= 0, "training.target_kl", t.target_kl, "must be 0 or more")
    _check(t.dpo_epochs >= 0, "training.dpo_epochs", t.dpo_epochs, "must be 0 or more")
    _check(t.dpo_beta > 0, "training.dpo_beta", t.dpo_beta, "must be positive")
    _check(0.0 <= t.min_head_accuracy <= 1.0, "training.min_head_accuracy",
           t.min_head_accuracy, "must be 0..1")
    _check(t.min_head_pairs >= 0, "training.min_head_pairs", t.min_head_pairs,
           "must be 0 or more")
    _validate_explore(c.explore, c.generation)
    s = c.safety
    _check(s.weight >= 0, "safety.weight", s.weight, "must be 0 or more")
    _check(s.margin >= 0, "safety.margin", s.margin, "must be 0 or more")
    _check(0 <= s.refusal_tolerance <= 1, "safety.refusal_tolerance", s.refusal_tolerance,
           "must be in [0, 1]")
    _check(1 <= s.redteam_prompts <= 256, "safety.redteam_prompts", s.redteam_prompts,
           "must be 1..256 (the gate answers every one)")
    _check(s.fit_pairs >= 0, "safety.fit_pairs", s.fit_pairs, "must be 0 (all) or more")
    _check(1 <= s.max_tokens <= 1024, "safety.max_tokens", s.max_tokens, "must be 1..1024")
    _check(not s.enabled or bool(s.data_file.strip()), "safety.data_file", s.data_file,
           "must name the HH-harmless pairs file while safety.enabled")
    _check(c.scheduler.interval_seconds >= 1, "scheduler.interval_seconds",
           c.scheduler.interval_seconds, "must be at least 1")


EXPLORE_SELECTIONS = ("auto", "random", "contrast", "uncertainty", "diversity")
EXPLORE_SOURCES = ("personal", "base", "previous", "hot", "arm", "peer")


def _validate_explore(e: ExploreConfig, g: GenerationConfig) -> None:
    _check(g.n_max <= e.pool <= 8, "explore.pool", e.pool,
           "must be from generation.n_max (every shown answer needs a candidate) to 8")
    _check(e.selection in EXPLORE_SELECTIONS, "explore.selection", e.selection,
           f"must be one of {', '.join(EXPLORE_SELECTIONS)}")
    unknown = [s for s in e.sources if s not in EXPLORE_SOURCES]
    _check(not unknown and bool(e.sources), "explore.sources", e.sources,
           f"must be a non-empty list of {', '.join(EXPLORE_SOURCES)}")
    _check(0.0 < e.hot_temperature <= 2.0, "explore.hot_temperature", e.hot_temperature,
           "must be in (0, 2]")
    _check(e.uncertainty_from_pairs >= 0, "explore.uncertainty_from_pairs",
           e.uncertainty_from_pairs, "must be 0 or more")
    for arm in e.arms:
        parts = [p.strip() for p in arm.split("|")]
        _check(len(parts) in (2, 3) and all(parts), "explore.arms", arm,
               "each arm is 'name | instruction' or 'name | instruction | example answer'")


def to_dict(config: Config) -> dict:
    """The effective configuration as plain data (for a worker process to reuse)."""
    out = dataclasses.asdict(config)
    out["source"] = str(config.source)
    return out


def from_dict(data: dict) -> Config:
    """Rebuild a Config saved by to_dict, validating it again."""
    sections = {}
    for f in dataclasses.fields(Config):
        if f.name != "source":
            sections[f.name] = _build_section(f.name, f.default_factory(), data[f.name], {})
    config = Config(**sections, source=Path(data["source"]))
    validate(config)
    return config
