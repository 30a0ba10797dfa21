"""config.toml loading, environment overrides and validation messages."""

import pytest

from assistant.config import load_config
from feedback_store.errors import ConfigError
from tests.conftest import ROOT


def test_shipped_config_loads_with_documented_defaults():
    config = load_config(ROOT / "config.toml", env={})
    assert config.server.port == 8000 and config.server.host == "127.0.0.1"
    assert config.data_dir == (ROOT / "data").resolve()
    assert "too_long" in config.feedback.reasons and config.reward.shared_prior is True


def test_env_overrides(tmp_path):
    env = {"ASSISTANT_DATA_DIR": str(tmp_path), "ASSISTANT_PORT": "9001",
           "ASSISTANT_ADMIN_KEY": "k" * 16, "ASSISTANT_HOST": "127.0.0.2",
           "ASSISTANT_GENERATION_N_MAX": "2", "ASSISTANT_REWARD_SHARED_PRIOR": "false",
           "ASSISTANT_FEEDBACK_REASONS_UP": "nice, short"}
    config = load_config(ROOT / "config.toml", env=env)
    assert config.data_dir == tmp_path and config.db_path == tmp_path / "assistant.db"
    assert (config.server.port, config.server.admin_key, config.server.host) == (
        9001, "k" * 16, "127.0.0.2")
    assert config.generation.n_max == 2 and config.reward.shared_prior is False
    assert config.feedback.reasons_up == ("nice", "short")


def test_config_file_from_env(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[server]\nport = 1234\ndata_dir = "d"\n')
    config = load_config(env={"ASSISTANT_CONFIG": str(path)})
    assert config.server.port == 1234 and config.data_dir == tmp_path / "d"


@pytest.mark.parametrize("text, message", [
    ("[server]\nport = 0\n", "server.port = 0"),
    ("[server]\nport = 'x'\n", "server.port must be int"),
    ("[model]\ndevice = 'tpu'\n", "model.device = 'tpu'"),
    ("[generation]\nmax_tokens_default = 5000\n", "generation.max_tokens_default"),
    ("[server]\nprot = 1\n", "unknown field(s) in [server]: prot"),
    ("[nope]\n", "unknown config section(s): nope"),
    ("[server\n", "c.toml"),
])
def test_invalid_values_name_field_and_value(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=None) as info:
        load_config(path, env={})
    assert message in str(info.value)


def test_bad_env_value_names_field():
    with pytest.raises(ConfigError) as info:
        load_config(ROOT / "config.toml", env={"ASSISTANT_PORT": "eighty"})
    assert "server.port" in str(info.value) and "eighty" in str(info.value)


# Fields the shipped config.toml sets on purpose to something other than their dataclass
# default, with why. Empty: the dataclasses' defaults are what production runs (issue 15).
DELIBERATE_OVERRIDES: dict[str, str] = {}


def test_shipped_config_is_exactly_the_dataclass_defaults():
    from dataclasses import asdict

    from assistant.config import Config

    shipped = asdict(load_config(ROOT / "config.toml", env={}))
    defaults = asdict(Config())
    differ = {f"{section}.{key}": (defaults[section][key], value)
              for section, values in shipped.items() if section != "source"
              for key, value in values.items() if value != defaults[section][key]}
    assert set(differ) == set(DELIBERATE_OVERRIDES), differ


def test_learning_settings_have_one_home():
    """[reward] and [safety] are the adapters' own classes; [training] extends the run's."""
    from dataclasses import fields

    from adapters import settings as s
    from assistant.config import Config, TrainingConfig
    from assistant.training_settings import run_settings

    config = Config()
    assert type(config.reward) is s.HeadSettings and type(config.safety) is s.SafetySettings
    for part in (s.PolicySettings, s.GateSettings, s.DpoSettings, s.EvidenceSettings):
        assert issubclass(TrainingConfig, part)
    run = run_settings(load_config(ROOT / "config.toml", env={
        "ASSISTANT_TRAINING_STEPS": "3", "ASSISTANT_TRAINING_DPO_EPOCHS": "1",
        "ASSISTANT_TRAINING_MAX_COMPLETION_TOKENS": "64", "ASSISTANT_SAFETY_ENABLED": "0"}))
    assert run.policy.steps == 3 and run.dpo.dpo_epochs == 1
    assert run.policy.max_completion_tokens == run.gate.max_completion_tokens == 64
    assert run.policy == s.PolicySettings(steps=3, max_completion_tokens=64)
    assert {f.name for f in fields(run.policy)} <= {f.name for f in fields(TrainingConfig)}


@pytest.mark.parametrize("env, message", [
    ({"ASSISTANT_TRAINING_GROUP_SIZE": "1"}, "training.group_size = 1: must be at least 2"),
    ({"ASSISTANT_TRAINING_KL_BUDGET": "0"}, "training.kl_budget = 0.0: must be positive"),
    ({"ASSISTANT_TRAINING_DPO_BETA": "-1"}, "training.dpo_beta = -1.0: must be positive"),
    ({"ASSISTANT_TRAINING_HELDOUT_FRAC": "1"}, "training.heldout_frac = 1.0: must be in (0, 1)"),
    ({"ASSISTANT_REWARD_L2": "0"}, "reward.l2 = 0.0: must be positive"),
    ({"ASSISTANT_SAFETY_REDTEAM_PROMPTS": "0"}, "safety.redteam_prompts = 0: must be 1..256"),
    ({"ASSISTANT_EXPLORE_POOL": "2"}, "explore.pool = 2: must be from generation.n_max"),
    ({"ASSISTANT_SERVER_MAX_REQUEST_CHARS": "10"}, "server.max_request_chars = 10"),
])
def test_learning_settings_checks_name_section_field_and_value(env, message):
    with pytest.raises(ConfigError) as info:
        load_config(ROOT / "config.toml", env=env)
    assert message in str(info.value)


def test_adapters_settings_check_themselves():
    from adapters.settings import PolicySettings, RunSettings, SettingError

    with pytest.raises(SettingError, match=r"^group_size = 1: must be at least 2"):
        PolicySettings(group_size=1)
    assert PolicySettings(steps=0).steps == 0          # no RL: load or DPO only
    with pytest.raises(SettingError, match="gate.max_completion_tokens"):
        RunSettings(policy=PolicySettings(max_completion_tokens=64))
