from __future__ import annotations

import pytest

from aflowctl.config import Config, diff_configs, load_config
from aflowctl.errors import ConfigError


def test_defaults_are_valid():
    cfg = load_config()
    assert cfg.optimize.sample == 4 and cfg.optimize.validation_rounds == 5
    assert cfg.optimize.alpha == 0.2 and cfg.optimize.lambda_ == 0.3


def test_unknown_key_named(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[optimize]\nmax_roundz = 3\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert "optimize.max_roundz" in str(ei.value) and str(p) in str(ei.value)


def test_wrong_type_named(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[rollout]\nworkers = "many"\n')
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert "rollout.workers" in str(ei.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/x.toml")


def test_bad_toml(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[optimize\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)


def test_overrides_win_and_are_validated(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[optimize]\nmax_rounds = 3\n")
    cfg = load_config(p, {"optimize.max_rounds": 7, "optimize.seed": None})
    assert cfg.optimize.max_rounds == 7 and cfg.optimize.seed == 0
    with pytest.raises(ConfigError, match="optimize.max_rounds"):
        load_config(p, {"optimize.max_rounds": 0})


def test_api_key_must_be_env_name(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[optimize.executor]\nmodel = "openai/x"\napi_key_env = "sk-abc-123.xyz"\n')
    with pytest.raises(ConfigError, match="api_key_env"):
        load_config(p)


def test_diff_and_hash():
    a, b = Config(), Config()
    b.optimize.max_rounds = 3
    assert diff_configs(a.model_dump(), b.model_dump()) == ["optimize.max_rounds"]
    assert a.hash() != b.hash()


def test_every_shipped_config_is_valid():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(root.rglob("*.toml"))
    for f in files:
        load_config(f)
