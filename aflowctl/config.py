"""Typed configuration: TOML files validated into pydantic models, one per concern.

A config file has up to four tables, ``[llm]``, ``[rollout]``, ``[optimize]`` and
``[train]``; top-level keys are not allowed. Unknown keys and wrong types are errors
that name the key and the file. CLI options override file values
(:func:`apply_overrides`). Secrets never live here: configs name environment
variables (``api_key_env``), never keys.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from aflowctl.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    """How to reach one model (a role's model)."""

    model: str = Field(description="provider/model, e.g. openai/gpt-4o-mini, local/smollm2, mutate")
    api_base: Optional[str] = Field(default=None, description="base URL of an OpenAI-compatible server")
    api_key_env: Optional[str] = Field(default=None, description="name of the env var holding the key")
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: Optional[int] = None
    timeout_s: float = 120.0

    @field_validator("api_key_env")
    @classmethod
    def _looks_like_env_name(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not v.replace("_", "").isalnum():
            raise ValueError("must be the NAME of an environment variable, not a key")
        return v


class ModelPrice(_Strict):
    """USD per token of a model that litellm's price map does not know (a vLLM server...)."""

    input_cost_per_token: float = Field(ge=0)
    output_cost_per_token: float = Field(ge=0)


class LLMConfig(_Strict):
    """The LLM layer: router limits, cache, budget."""

    max_retries: int = Field(default=5, ge=0)
    backoff_base_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    concurrency_per_model: int = Field(default=32, ge=1)
    requests_per_minute: Optional[int] = Field(default=None, ge=1)
    timeout_s: float = Field(default=120.0, gt=0)
    cache: Literal["readwrite", "read", "write", "off"] = "readwrite"
    budget_usd: Optional[float] = Field(default=None, ge=0)
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict, description="prices of models litellm does not know, keyed by provider/model"
    )
    local_model: Optional[str] = Field(
        default=None, description="path to an HF directory or GGUF file for local/ models (default: embedded SmolLM2)"
    )
    cache_scope: Literal["run", "global"] = Field(
        default="run", description="serve cached answers from the same run only, or from any run"
    )
    http_client: Literal["auto", "litellm", "direct"] = Field(
        default="auto",
        description="OpenAI-compatible servers: auto = direct HTTP for loopback servers, litellm otherwise",
    )
    replay_from: Optional[str] = Field(
        default=None, description="answer every call from the call log of this run id ('*' = any run)"
    )
    local_batch_window_ms: float = Field(
        default=20.0, ge=0, description="local provider: how long to gather concurrent requests into one batch"
    )
    local_max_batch: int = Field(default=8, ge=1, description="local provider: most sequences in one batch")


class RolloutConfig(_Strict):
    """The rollout pool and the sandbox."""

    executor: Literal["process", "ray"] = "process"
    ray_address: Optional[str] = None
    workers: int = Field(default=2, ge=1)
    concurrency: int = Field(default=16, ge=1, description="problems evaluated at once inside one worker")
    max_attempts: int = Field(default=3, ge=1)
    task_timeout_s: float = Field(default=1800.0, gt=0)
    code_timeout_s: float = Field(default=10.0, gt=0)
    code_memory_mb: int = Field(default=1024, ge=64)


class OptimizeConfig(_Strict):
    """AFlow-style search."""

    dataset: str = "gsm8k"
    initial_workflow: Optional[str] = Field(default=None, description="folder with graph.py/prompt.py; default: the dataset's seed")
    optimizer: ModelConfig = ModelConfig(model="anthropic/claude-3-5-sonnet-20240620", temperature=1.0)
    executor: ModelConfig = ModelConfig(model="openai/gpt-4o-mini", temperature=0.0)
    operators: list[str] = ["Custom", "ScEnsemble", "Programmer"]
    max_rounds: int = Field(default=20, ge=1)
    sample: int = Field(default=4, ge=1, description="parents considered: the initial workflow plus the top sample-1 others")
    validation_rounds: int = Field(default=5, ge=1)
    validation_limit: Optional[int] = Field(default=None, ge=1, description="use only the first N validation problems")
    test_limit: Optional[int] = Field(default=None, ge=1)
    alpha: float = 0.2
    lambda_: float = Field(default=0.3, alias="lambda", ge=0, le=1)
    convergence_z: float = 0.0
    consecutive_rounds: int = Field(default=5, ge=1)
    check_convergence: bool = True
    max_retries: int = Field(default=3, ge=0, description="proposal retries with the error fed back")
    failed_cases: int = Field(default=3, ge=0, description="failed validation cases shown to the optimizer")
    candidates: int = Field(default=1, ge=1)
    policy: Optional[str] = None
    policy_guidance_weight: float = Field(default=0.0, ge=0, le=1)
    seed: int = 0
    budget_usd: Optional[float] = Field(default=None, ge=0)

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


class TrainConfig(_Strict):
    """GiGPO training of the optimizer policy (see docs/training.md)."""

    # policy
    policy_model: Optional[str] = Field(default=None, description="HF dir or GGUF; default: embedded SmolLM2")
    lora: bool = False
    lora_r: int = Field(default=8, ge=1)
    lora_alpha: int = Field(default=16, ge=1)
    # environment
    env: Literal["workflow", "keyword"] = Field(
        default="workflow", description="workflow: the AFlow MDP; keyword: reward 1 when the response contains `keyword`"
    )
    keyword: str = Field(default="workflow", min_length=1, description="the rewarded word of env = keyword")
    prompts: list[str] = Field(default_factory=list, description="prompts of env = keyword (default: two built-in ones)")
    datasets: list[str] = ["arith"]
    executor: ModelConfig = ModelConfig(model="local/smollm2")
    validation_limit: Optional[int] = Field(default=8, ge=1)
    # episodes and batches
    epochs: int = Field(default=1, ge=1)
    groups_per_epoch: Optional[int] = Field(default=None, ge=1, description="default: one group per start state")
    groups_per_batch: int = Field(default=1, ge=1)
    episodes_per_group: int = Field(default=2, ge=1, description="G")
    steps_per_episode: int = Field(default=1, ge=1, description="T")
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_new_tokens: int = Field(default=256, ge=1)
    generation_batch_size: int = Field(default=16, ge=1)
    # GiGPO
    gamma: float = Field(default=0.95, ge=0, le=1)
    mode: Literal["mean_norm", "mean_std_norm"] = "mean_norm"
    step_advantage_w: float = 1.0
    invalid_penalty: float = Field(default=0.1, ge=0)
    # PPO update
    lr: float = Field(default=1e-6, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_steps: int = Field(default=0, ge=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    clip_ratio_low: float = Field(default=0.2, ge=0, lt=1)
    clip_ratio_high: float = Field(default=0.2, ge=0)
    dual_clip_c: float = Field(default=3.0, gt=1)
    use_kl: bool = False
    kl_coef: float = Field(default=0.001, ge=0)
    entropy_coef: float = 0.001
    grad_clip: float = Field(default=1.0, gt=0)
    micro_batch_size: int = Field(default=4, ge=1)
    ppo_epochs: int = Field(default=1, ge=1)
    # devices
    device: Optional[str] = Field(default=None, description="cpu, cuda, cuda:N (default: cuda when available)")
    bf16: bool = Field(default=True, description="bf16 autocast on CUDA (ignored on CPU)")
    gradient_checkpointing: bool = False
    # offline warm start (--from-experiences)
    sft_mode: Literal["filter", "weight"] = "filter"
    sft_min_reward: float = Field(default=0.0, description="filter: keep valid experiences with reward > this")
    sft_beta: float = Field(default=1.0, gt=0, description="weight: weight = softmax(reward / beta) over the pairs")
    sft_epochs: int = Field(default=1, ge=1)
    sft_lr: float = Field(default=1e-5, gt=0)
    sft_max_pairs: Optional[int] = Field(default=None, ge=1)
    # checkpoints and logs
    checkpoint_every: int = Field(default=1, ge=1, description="updates between checkpoints (and one at the end)")
    keep_checkpoints: int = Field(default=3, ge=1)
    tensorboard: bool = False
    seed: int = 0


class Config(_Strict):
    llm: LLMConfig = LLMConfig()
    rollout: RolloutConfig = RolloutConfig()
    optimize: OptimizeConfig = OptimizeConfig()
    train: TrainConfig = TrainConfig()

    def hash(self) -> str:
        blob = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _loc(err: dict) -> str:
    return ".".join(str(p) for p in err["loc"])


def _validation_message(exc: ValidationError, source: str) -> ConfigError:
    err = exc.errors()[0]
    key = _loc(err)
    if err["type"] == "extra_forbidden":
        return ConfigError(f"unknown config key '{key}' in {source}", "remove it or check its spelling (see configs/ for examples)")
    if err["type"] == "missing":
        return ConfigError(f"missing config key '{key}' in {source}", "add it")
    got = err.get("input")
    got_s = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
    return ConfigError(f"bad value for '{key}' in {source}: {err['msg']} (got {got_s})", "fix the value")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load and validate a config file (or the defaults), then apply overrides.

    ``overrides`` maps dotted keys (``optimize.max_rounds``) to values; ``None``
    values are ignored (an option the user did not give).
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist", "pass an existing file to --config (presets live in configs/)")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}", "fix the syntax") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {p} is not UTF-8 text", "pass a TOML file") from None
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise _validation_message(exc, source) from None
    if overrides:
        cfg = apply_overrides(cfg, overrides, source)
    return cfg


def apply_overrides(cfg: Config, overrides: dict[str, Any], source: str = "command line") -> Config:
    data = cfg.model_dump(mode="python", by_alias=True)
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise _validation_message(exc, "command-line options (over " + source + ")") from None


def diff_configs(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    keys = sorted(set(a) | set(b))
    out: list[str] = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        name = f"{prefix}{k}"
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(diff_configs(va, vb, name + "."))
        elif va != vb:
            out.append(name)
    return out
