from __future__ import annotations

import json

from typer.testing import CliRunner

from aflowctl.cli import app

runner = CliRunner()


def _doctor(*args):
    r = runner.invoke(app, ["doctor", "--json", *args])
    return r, json.loads(r.stdout)


def test_schema_and_statuses():
    r, checks = _doctor()
    assert isinstance(checks, list) and checks
    for c in checks:
        assert set(c) == {"name", "status", "detail", "hint"}
        assert c["status"] in {"ok", "info", "warn", "fail"}
        if c["status"] == "fail":
            assert c["hint"], c
    names = {c["name"] for c in checks}
    for expected in ("python", "torch", "cuda", "sqlite", "sqlite json1", "sqlite fts5", "database", "database WAL",
                     "migrations", "litellm release", "litellm_init.pth", "plugins", "local model", "free disk"):
        assert expected in names
    assert r.exit_code == (1 if any(c["status"] == "fail" for c in checks) else 0)


def test_cpu_only_is_a_note_not_a_failure():
    import torch

    _, checks = _doctor()
    cuda = next(c for c in checks if c["name"] == "cuda")
    assert cuda["status"] == ("ok" if torch.cuda.is_available() else "info")


def test_missing_credential_fails_with_hint(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[optimize]\ndataset = "gsm8k"\n[optimize.executor]\nmodel = "openai/gpt-4o-mini"\n')
    r, checks = _doctor("--config", str(cfg))
    c = next(c for c in checks if c["name"].startswith("model openai/gpt-4o-mini"))
    assert c["status"] == "fail" and "OPENAI_API_KEY" in c["hint"]
    assert r.exit_code == 1


def test_credential_value_never_printed(tmp_path, monkeypatch):
    secret = "sk-doctor-sentinel-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[optimize.executor]\nmodel = "openai/gpt-4o-mini"\n')
    r = runner.invoke(app, ["doctor", "--config", str(cfg)])
    assert secret not in r.output
    r2 = runner.invoke(app, ["doctor", "--json", "--config", str(cfg)])
    assert secret not in r2.output


def test_corrupt_database_fails(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"x" * 4096)
    r, checks = _doctor("--db", str(bad))
    c = next(c for c in checks if c["name"] == "database")
    assert c["status"] == "fail" and c["hint"] and r.exit_code == 1
    assert bad.read_bytes() == b"x" * 4096


def test_unwritable_home_fails(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("AFLOWCTL_HOME", str(blocker / "home"))
    r, checks = _doctor()
    c = next(c for c in checks if c["name"] == "database")
    assert c["status"] == "fail" and "AFLOWCTL_HOME" in c["hint"]
    assert r.exit_code == 1


def test_sandbox_capabilities_are_shown_with_a_fix():
    from aflowctl.sandbox.confine import capabilities

    caps = capabilities()
    _, checks = _doctor()
    row = next(c for c in checks if c["name"] == "sandbox")
    assert f"landlock ABI {caps['landlock_abi']}" in row["detail"] or (not caps["landlock_abi"] and "no landlock" in row["detail"])
    assert row["status"] == ("ok" if caps["ok"] else "fail")
    if row["status"] != "ok":
        assert row["hint"] and "allow_unsandboxed" in row["hint"]
    if caps["ok"]:
        probe = next(c for c in checks if c["name"] == "sandbox probe")
        assert probe["status"] == "ok" and "/proc/1/environ" in probe["detail"] and "make a socket" in probe["detail"], probe
    interp = [c for c in checks if c["name"] == "sandbox interpreter"]
    if caps["needs_read_capability"]:
        assert interp[0]["status"] == "warn" and "world-readable" in interp[0]["hint"]


def _model_check(tmp_path, model):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[optimize.executor]\nmodel = "{model}"\n')
    _, checks = _doctor("--config", str(cfg))
    return next(c for c in checks if c["name"].startswith(f"model {model}"))


def test_key_variables_come_from_the_providers_table(tmp_path, monkeypatch):
    from aflowctl.llm.providers._common import KEY_ENV

    for names in KEY_ENV.values():
        for n in names:
            monkeypatch.delenv(n, raising=False)
    # gemini reads GEMINI_API_KEY or GOOGLE_API_KEY: either one is enough
    c = _model_check(tmp_path, "gemini/gemini-2.0-flash")
    assert c["status"] == "fail" and "$GEMINI_API_KEY or $GOOGLE_API_KEY" in c["detail"]
    monkeypatch.setenv("GOOGLE_API_KEY", "g-test")
    c = _model_check(tmp_path, "gemini/gemini-2.0-flash")
    assert c["status"] == "ok" and "$GOOGLE_API_KEY is set" in c["detail"]
    # every keyed provider of the table is checked, not only the few doctor used to list
    for prefix in ("xai", "cohere", "fireworks_ai", "azure"):
        c = _model_check(tmp_path, f"{prefix}/some-model")
        assert c["status"] == "fail" and KEY_ENV[prefix][0] in c["hint"], (prefix, c)
