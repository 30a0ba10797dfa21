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
