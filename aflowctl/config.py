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
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from aflowctl.config_roles import ROLE_DOCS as ROLE_DOCS  # the role machinery, re-exported
from aflowctl.config_roles import Role as Role
from aflowctl.config_roles import _f, _section
from aflowctl.config_roles import changeable_on_resume as changeable_on_resume
from aflowctl.config_roles import conflicting_keys as conflicting_keys
from aflowctl.config_roles import defining_values as defining_values
from aflowctl.config_roles import diff_configs as diff_configs
from aflowctl.config_roles import field_role as field_role
from aflowctl.config_roles import flatten as flatten
from aflowctl.config_roles import iter_fields as iter_fields
from aflowctl.config_roles import keys_with_role as keys_with_role
from aflowctl.config_roles import role_of as role_of
from aflowctl.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found]  # Python 3.10 only; not installed on 3.11+


E, R, X, S = Role.EXPERIMENT, Role.RESUMABLE, Role.RESOURCE, Role.SEED


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    """How to reach one model (a role's model)."""

    model: str = _f(role=E, description="provider/model, e.g. openai/gpt-4o-mini, local/smollm2, mutate")
    api_base: Optional[str] = _f(None, role=X, description="base URL of an OpenAI-compatible server")
    api_key_env: Optional[str] = _f(None, role=X, description="name of the environment variable holding the key")
    temperature: float = _f(0.0, role=E, description="sampling temperature")
    top_p: float = _f(1.0, role=E, description="nucleus sampling: keep the smallest token set with this probability")
    max_tokens: Optional[int] = _f(None, role=E, description="most tokens in one answer (default: the provider's)")
    timeout_s: float = _f(120.0, role=X, description="seconds to wait for one answer of this model")

    @field_validator("api_key_env")
    @classmethod
    def _looks_like_env_name(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not v.replace("_", "").isalnum():
            raise ValueError("must be the NAME of an environment variable, not a key")
        return v


class ModelPrice(_Strict):
    """USD per token of a model that litellm's price map does not know (a vLLM server...)."""

    input_cost_per_token: float = _f(role=X, description="USD per prompt token", ge=0)
    output_cost_per_token: float = _f(role=X, description="USD per completion token", ge=0)


class LLMConfig(_Strict):
    """The LLM layer: router limits, cache, budget."""

    max_retries: int = _f(5, role=X, description="retries of a failed call (rate limits, 5xx, timeouts)", ge=0)
    backoff_base_s: float = _f(0.5, role=X, description="first wait between retries; doubles each time", gt=0)
    backoff_max_s: float = _f(30.0, role=X, description="longest wait between retries", gt=0)
    concurrency_per_model: int = _f(32, role=X, description="most calls in flight to one model", ge=1)
    requests_per_minute: Optional[int] = _f(
        None, role=X, description="most calls started per minute to one model", ge=1
    )
    timeout_s: float = _f(120.0, role=X, description="seconds to wait for one answer", gt=0)
    cache: Literal["readwrite", "read", "write", "off"] = _f(
        "readwrite", role=X, description="response cache: read and write, read only, write only, or off"
    )
    budget_usd: Optional[float] = _f(None, role=R, description="stop the run cleanly (resumably) at this spend", ge=0)
    prices: dict[str, ModelPrice] = _f(
        role=X, description="prices of models litellm does not know, keyed by provider/model", default_factory=dict
    )
    local_model: Optional[str] = _f(
        None, role=E, description="path to an HF directory or GGUF file for local/ models (default: embedded SmolLM2)"
    )
    cache_scope: Literal["run", "global"] = _f(
        "run", role=X, description="serve cached answers from the same run only, or from any run"
    )
    http_client: Literal["auto", "litellm", "direct"] = _f(
        "auto",
        role=X,
        description="OpenAI-compatible servers: auto = direct HTTP for loopback servers, litellm otherwise",
    )
    replay_from: Optional[str] = _f(
        None, role=E, description="answer every call from the call log of this run id ('*' = any run)"
    )
    local_batch_window_ms: float = _f(
        20.0, role=X, description="local provider: how long to gather concurrent requests into one batch", ge=0
    )
    local_max_batch: int = _f(8, role=X, description="local provider: most sequences in one batch", ge=1)


class RolloutConfig(_Strict):
    """The rollout pool and the sandbox."""

    executor: Literal["process", "ray"] = _f("process", role=X, description="rollout backend: local processes or Ray")
    ray_address: Optional[str] = _f(
        None, role=X, description="Ray cluster address (executor = ray; default: local Ray)"
    )
    workers: int = _f(2, role=X, description="rollout worker processes", ge=1)
    concurrency: int = _f(16, role=X, description="problems evaluated at once inside one worker", ge=1)
    max_attempts: int = _f(3, role=X, description="attempts of a rollout task whose worker died", ge=1)
    task_timeout_s: float = _f(1800.0, role=X, description="seconds one rollout task may take", gt=0)
    code_timeout_s: float = _f(10.0, role=E, description="seconds generated code may run in the sandbox", gt=0)
    code_memory_mb: int = _f(1024, role=E, description="memory limit of generated code in the sandbox (MiB)", ge=64)
    problem_timeout_s: float = _f(
        300.0,
        role=E,
        gt=0,
        description="wall-clock limit of one problem's attempt in the sandboxed worker; "
        "on expiry that attempt ends with an error, not the whole task",
    )
    allow_unsandboxed: bool = _f(
        False,
        role=X,
        description="run workflow code even where the sandbox (seccomp, Landlock, an "
        "unprivileged uid when root) cannot be set up; `aflowctl doctor` names "
        "what is missing. Unsafe: keep false",
    )


class OptimizeConfig(_Strict):
    """AFlow-style search."""

    dataset: str = _f("gsm8k", role=E, description="benchmark to optimize on (see 'aflowctl data list')")
    initial_workflow: Optional[str] = _f(
        None, role=E, description="folder with graph.py/prompt.py; default: the dataset's seed"
    )
    optimizer: ModelConfig = Field(
        default_factory=lambda: ModelConfig(model="anthropic/claude-3-5-sonnet-20240620", temperature=1.0),
        description="the model that proposes modifications ('mutate': the LLM-free proposer)",
    )
    executor: ModelConfig = Field(
        default_factory=lambda: ModelConfig(model="openai/gpt-4o-mini", temperature=0.0),
        description="the model the workflows call",
    )
    operators: list[str] = _f(
        role=E,
        description="operators the optimizer may use",
        default_factory=lambda: ["Custom", "ScEnsemble", "Programmer"],
    )
    max_rounds: int = _f(20, role=R, description="highest round number (round 1 evaluates the initial workflow)", ge=1)
    sample: int = _f(
        4, role=E, description="parents considered: the initial workflow plus the top sample-1 others", ge=1
    )
    validation_rounds: int = _f(5, role=E, description="validation repeats per workflow", ge=1)
    validation_limit: Optional[int] = _f(None, role=E, description="use only the first N validation problems", ge=1)
    test_limit: Optional[int] = _f(None, role=R, description="use only the first N test problems (--test)", ge=1)
    alpha: float = _f(0.2, role=E, description="parent selection: sharpness of the softmax over scores (AFlow's alpha)")
    lambda_: float = _f(
        0.3,
        role=E,
        description="parent selection: weight of the uniform choice mixed into the softmax (AFlow's lambda)",
        alias="lambda",
        ge=0,
        le=1,
    )
    convergence_z: float = _f(
        0.0, role=E, description="convergence: a top-3 mean change within z standard errors counts as no change"
    )
    consecutive_rounds: int = _f(
        5, role=E, description="convergence: workflows in a row without a significant change before stopping", ge=1
    )
    check_convergence: bool = _f(True, role=E, description="stop early when the search has converged")
    max_retries: int = _f(3, role=E, description="proposal retries with the error fed back", ge=0)
    failed_cases: int = _f(3, role=E, description="failed validation cases shown to the optimizer", ge=0)
    candidates: int = _f(1, role=E, description="K modifications sampled and evaluated per round", ge=1)
    policy: Optional[str] = _f(
        None, role=E, description="a trained policy (training run id, checkpoint or exported folder) as optimizer"
    )
    action_format: Literal["code", "edit", "auto"] = _f(
        "code",
        role=E,
        description="what the optimizer answers: code (graph.py/prompt.py), edit (one JSON edit, docs/edits.md), auto",
    )
    policy_guidance_weight: float = _f(
        0.0, role=E, description="weight of the policy's value estimate in parent selection", ge=0, le=1
    )
    seed: int = _f(0, role=S, description="random seed of the run (selection, sampling, mutate)")
    budget_usd: Optional[float] = _f(None, role=R, description="stop cleanly (resumably) at this spend", ge=0)

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


class TrainConfig(_Strict):
    """GiGPO training of the optimizer policy (see docs/training.md)."""

    # policy
    policy_model: Optional[str] = _f(None, role=E, description="HF dir or GGUF; default: embedded SmolLM2")
    lora: bool = _f(False, role=E, description="train LoRA adapters instead of all weights")
    lora_r: int = _f(8, role=E, description="LoRA rank", ge=1)
    lora_alpha: int = _f(16, role=E, description="LoRA scaling alpha", ge=1)
    # environment
    env: Literal["workflow", "keyword"] = _f(
        "workflow",
        role=E,
        description="workflow: the AFlow MDP; keyword: reward 1 when the response contains `keyword`",
    )
    keyword: str = _f("workflow", role=E, description="the rewarded word of env = keyword", min_length=1)
    prompts: list[str] = _f(
        role=E, description="prompts of env = keyword (default: two built-in ones)", default_factory=list
    )
    datasets: list[str] = _f(
        role=E, description="benchmarks whose seed workflows are start states", default_factory=lambda: ["arith"]
    )
    executor: ModelConfig = Field(
        default_factory=lambda: ModelConfig(model="local/smollm2"), description="the model the workflows call"
    )
    validation_limit: Optional[int] = _f(
        8, role=E, description="validation problems drawn per GiGPO group and shared by its episodes", ge=1
    )
    action_format: Literal["code", "edit", "auto"] = _f(
        "code",
        role=E,
        description="what the policy answers: code (graph.py/prompt.py), edit (one JSON edit, docs/edits.md), auto",
    )
    carry_experience: bool = _f(
        False,
        role=E,
        description="a group's start state shows what earlier groups tried on it (as optimize shows a parent's)",
    )
    # episodes and batches
    epochs: int = _f(1, role=R, description="passes over the start states", ge=1)
    groups_per_epoch: Optional[int] = _f(None, role=E, description="default: one group per start state", ge=1)
    groups_per_batch: int = _f(1, role=E, description="episode groups per update", ge=1)
    episodes_per_group: int = _f(2, role=E, description="G: episodes from one start state", ge=1)
    steps_per_episode: int = _f(1, role=E, description="T: edits per episode", ge=1)
    temperature: float = _f(1.0, role=E, description="sampling temperature of the policy", gt=0)
    top_p: float = _f(1.0, role=E, description="nucleus sampling of the policy", gt=0, le=1)
    max_new_tokens: int = _f(256, role=E, description="most tokens in one policy response", ge=1)
    generation_batch_size: int = _f(16, role=E, description="responses sampled in one batch", ge=1)
    # GiGPO
    gamma: float = _f(0.95, role=E, description="discount of later steps' rewards", ge=0, le=1)
    mode: Literal["mean_norm", "mean_std_norm"] = _f(
        "mean_norm", role=E, description="advantage normalisation: mean only, or mean and std"
    )
    step_advantage_w: float = _f(1.0, role=E, description="weight of the step-level (anchor) advantage")
    invalid_penalty: float = _f(0.1, role=E, description="reward subtracted for an invalid action", ge=0)
    # PPO update
    lr: float = _f(1e-6, role=E, description="learning rate", gt=0)
    weight_decay: float = _f(0.01, role=E, description="AdamW weight decay", ge=0)
    warmup_steps: int = _f(0, role=E, description="linear warm-up updates", ge=0)
    lr_schedule: Literal["constant", "cosine"] = _f(
        "constant", role=E, description="learning-rate schedule after warm-up"
    )
    min_lr_ratio: float = _f(0.1, role=E, description="cosine: final learning rate as a fraction of lr", ge=0, le=1)
    clip_ratio_low: float = _f(0.2, role=E, description="PPO clip below 1", ge=0, lt=1)
    clip_ratio_high: float = _f(0.2, role=E, description="PPO clip above 1", ge=0)
    dual_clip_c: float = _f(3.0, role=E, description="dual-clip bound for negative advantages", gt=1)
    use_kl: bool = _f(False, role=E, description="add a KL penalty to the initial policy")
    kl_coef: float = _f(0.001, role=E, description="weight of the KL penalty", ge=0)
    entropy_coef: float = _f(0.001, role=E, description="weight of the entropy bonus")
    grad_clip: float = _f(1.0, role=E, description="gradient norm clip", gt=0)
    micro_batch_size: int = _f(4, role=E, description="sequences per forward/backward pass", ge=1)
    ppo_epochs: int = _f(1, role=E, description="optimizer passes over one batch", ge=1)
    # devices
    device: Optional[str] = _f(None, role=X, description="cpu, cuda, cuda:N (default: cuda when available)")
    bf16: bool = _f(True, role=E, description="bf16 autocast on CUDA (ignored on CPU)")
    gradient_checkpointing: bool = _f(False, role=X, description="recompute activations to save memory")
    # offline warm start (--from-experiences)
    sft_mode: Literal["filter", "weight"] = _f(
        "filter", role=E, description="warm start: keep good experiences (filter) or weight them by reward"
    )
    sft_min_reward: float = _f(0.0, role=E, description="filter: keep valid experiences with reward > this")
    sft_beta: float = _f(1.0, role=E, description="weight: weight = softmax(reward / beta) over the pairs", gt=0)
    sft_epochs: int = _f(1, role=E, description="warm start: passes over the pairs", ge=1)
    sft_lr: float = _f(1e-5, role=E, description="warm start: learning rate", gt=0)
    sft_max_pairs: Optional[int] = _f(None, role=E, description="warm start: most pairs used", ge=1)
    # checkpoints and logs
    checkpoint_every: int = _f(1, role=X, description="updates between checkpoints (and one at the end)", ge=1)
    keep_checkpoints: int = _f(3, role=X, description="checkpoints kept on disk", ge=1)
    tensorboard: bool = _f(False, role=X, description="write TensorBoard logs to the run folder")
    seed: int = _f(0, role=S, description="random seed of the run")


class Config(_Strict):
    llm: LLMConfig = _section(LLMConfig, "the LLM layer: retries, limits, cache, budget, prices")
    rollout: RolloutConfig = _section(RolloutConfig, "rollout workers and the sandbox")
    optimize: OptimizeConfig = _section(OptimizeConfig, "AFlow-style search (optimize, evaluate)")
    train: TrainConfig = _section(TrainConfig, "GiGPO training of the optimizer policy")

    def hash(self) -> str:
        blob = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _loc(err: Mapping[str, Any]) -> str:
    return ".".join(str(p) for p in err["loc"])


def _validation_message(exc: ValidationError, source: str) -> ConfigError:
    err = exc.errors()[0]
    key = _loc(err)
    if err["type"] == "extra_forbidden":
        return ConfigError(
            f"unknown config key '{key}' in {source}", "remove it or check its spelling (see configs/ for examples)"
        )
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
            raise ConfigError(
                f"config file {p} does not exist", "pass an existing file to --config (presets live in configs/)"
            )
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
