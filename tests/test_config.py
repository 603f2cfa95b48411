from __future__ import annotations

import pytest

from pathlib import Path

from aflowctl.config import Config, Role, diff_configs, field_role, iter_fields, load_config
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


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _shipped_configs(root: Path) -> list[Path]:
    files = sorted(root.rglob("*.toml"))
    assert files, f"no config files under {root}: the presets are missing"
    return files


def test_every_shipped_config_is_valid():
    files = _shipped_configs(CONFIGS)
    assert len(files) >= 5
    for f in files:
        load_config(f)


def test_shipped_config_check_fails_on_an_empty_folder(tmp_path):
    with pytest.raises(AssertionError, match="no config files"):
        _shipped_configs(tmp_path)


def test_every_config_field_has_a_description_and_a_role():
    fields = list(iter_fields())
    assert len(fields) > 100
    missing = [k for k, info in fields if not (info.description or "").strip()]
    assert not missing, f"config fields without Field(description=...): {missing}"
    no_role = [k for k, info in fields if field_role(info) is None]
    assert not no_role, f"config fields without a role: {no_role}"
    for name, info in Config.model_fields.items():  # the tables themselves
        assert info.description, name


def test_docs_config_md_is_current():
    from aflowctl.config_docs import render

    committed = (CONFIGS.parent / "docs" / "config.md").read_text()
    assert committed == render(), "docs/config.md is stale: run python -m aflowctl.config_docs > docs/config.md"
    assert "`validation_rounds`" in committed and "| resource |" in committed


def test_roles_decide_resume_and_compare_keys():
    from aflowctl.config import changeable_on_resume, defining_values, keys_with_role, role_of

    assert changeable_on_resume("optimize.max_rounds") and changeable_on_resume("rollout.workers")
    assert changeable_on_resume("train.epochs") and changeable_on_resume("train.device")
    assert not changeable_on_resume("optimize.seed") and not changeable_on_resume("optimize.executor.model")
    assert not changeable_on_resume("optimize.no_such_key")  # unknown keys are the safe choice
    assert role_of("optimize.lambda") is Role.EXPERIMENT  # by alias
    assert role_of("llm.prices.openai/x.input_cost_per_token") is Role.RESOURCE  # below a dict field
    ignored = keys_with_role(Role.SEED, Role.RESOURCE)
    assert {"optimize.seed", "train.seed", "rollout.workers", "llm.max_retries"} <= ignored
    assert "optimize.max_rounds" not in ignored
    vals = defining_values(Config().model_dump(mode="json", by_alias=True), ("rollout.", "optimize.executor."))
    assert "rollout.code_timeout_s" in vals and "rollout.workers" not in vals
    assert "optimize.executor.model" in vals and "optimize.executor.api_base" not in vals


def test_resume_conflicts_come_from_roles_and_new_default_fields_do_not_block():
    from aflowctl.config import conflicting_keys

    base = Config().model_dump(mode="json", by_alias=True)
    new = Config().model_dump(mode="json", by_alias=True)
    new["optimize"]["max_rounds"] = 9
    new["rollout"]["workers"] = 7
    new["llm"]["cache"] = "off"
    new["train"]["device"] = "cpu"
    assert conflicting_keys(base, new) == []
    new["optimize"]["validation_rounds"] = 2
    new["optimize"]["seed"] = 5
    assert conflicting_keys(base, new) == ["optimize.seed", "optimize.validation_rounds"]
    # a run stored before a field existed resumes when the field keeps its default ...
    old = Config().model_dump(mode="json", by_alias=True)
    del old["optimize"]["candidates"]
    assert conflicting_keys(old, base) == []
    # ... and not when the new config sets it to something else
    changed = Config().model_dump(mode="json", by_alias=True)
    changed["optimize"]["candidates"] = 3
    assert conflicting_keys(old, changed) == ["optimize.candidates"]
