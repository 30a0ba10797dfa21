"""The portable SQL layer and the [store] setting: placeholders, secrets, where the store is."""

from __future__ import annotations

import pytest

from assistant.config import load_config
from feedback_store.db import is_postgres_url, redacted
from feedback_store.errors import ConfigError
from feedback_store.sql import to_pyformat
from tests.conftest import ROOT


def test_placeholders_become_pyformat_outside_string_literals():
    assert to_pyformat("select * from t where a = ? and b in (?, ?)") == \
        "select * from t where a = %s and b in (%s, %s)"
    # a ? or % inside a quoted literal is data, not a placeholder; a bare % is escaped
    assert to_pyformat("select '?', 'it''s 100%' where x like ? and y % 2 = 0") == \
        "select '?', 'it''s 100%' where x like %s and y %% 2 = 0"


def test_store_url_setting_env_override_and_check(tmp_path):
    config = load_config(ROOT / "config.toml", env={"ASSISTANT_DATA_DIR": str(tmp_path)})
    assert config.store.url == "" and config.store_target == tmp_path / "assistant.db"
    url = "postgresql://app:s3cret@db:5432/assistant"
    config = load_config(ROOT / "config.toml", env={"ASSISTANT_STORE_URL": url})
    assert config.store_target == url and is_postgres_url(config.store_target)
    with pytest.raises(ConfigError, match="store.url") as bad:
        load_config(ROOT / "config.toml", env={"ASSISTANT_STORE_URL": "mysql://x:pw@h/db"})
    assert "pw" not in str(bad.value)              # the value (maybe a password) is not shown


def test_a_store_url_is_shown_without_its_password():
    assert redacted("postgresql://app:s3cret@db:5432/assistant") == \
        "postgresql://app:***@db:5432/assistant"
    assert redacted("postgresql://app@db/assistant") == "postgresql://app@db/assistant"
