"""The one exception hierarchy of aflowctl.

Every error a user can cause or fix is an :class:`AflowctlError` with a message that
says what is wrong and a hint that says how to fix it. Only the CLI turns them into
output and exit codes; library code raises them and never prints or exits.
Messages must never contain secrets (API keys): build them from names, not values.
"""

from __future__ import annotations


class AflowctlError(Exception):
    """Base class: ``message`` says what is wrong, ``hint`` how to fix it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # one line: "message (hint)"
        return f"{self.message}. {self.hint}" if self.hint else self.message

    def __reduce__(self):  # picklable across process pools
        return (self.__class__, (self.message, self.hint))


class UsageError(AflowctlError):
    """Bad command-line usage (exit code 2)."""

    exit_code = 2


class ConfigError(AflowctlError):
    """A configuration file or value is wrong."""


class StoreError(AflowctlError):
    """The SQLite store cannot be opened, is corrupt, or is from a newer aflowctl."""


class NotFoundError(AflowctlError):
    """A run, workflow, checkpoint or other named thing does not exist."""


class PluginError(AflowctlError):
    """A plugin failed to load or its hook raised."""


class ProviderError(AflowctlError):
    """An LLM provider failed (after retries), or a model string is wrong."""


class BudgetExceeded(AflowctlError):
    """The run's budget cap was reached; the run can be resumed with a higher cap."""


class BenchmarkError(AflowctlError):
    """Unknown benchmark, missing split, bad problem id."""


class WorkflowError(AflowctlError):
    """A workflow's code is invalid (syntax error, no Workflow class, ...)."""


class SandboxError(AflowctlError):
    """Untrusted code could not be run in the sandbox."""


class CheckpointError(AflowctlError):
    """A checkpoint is missing, corrupt, or belongs to another model/config."""


class ProviderAuthError(ProviderError):
    """A provider refused the credentials (HTTP 401/403): the run stops at once."""


class MissingKeyError(ProviderAuthError):
    """The environment variable that should hold a provider's key is not set."""


class ProviderUnreachableError(ProviderError):
    """A provider's server cannot be reached (connection refused, DNS, no route)."""


class UnknownModelError(ProviderError):
    """The provider does not serve the configured model (or a local model file is missing)."""


class RunBusyError(AflowctlError):
    """Another live process is executing this run (it holds the run's lease)."""


class RunInterrupted(AflowctlError):
    """A run was interrupted (Ctrl-C); what finished is stored and the run can be resumed."""

    exit_code = 130


def stops_run(exc: BaseException) -> bool:
    """Errors that no retry and no other proposal can fix (a refused or missing key, an
    unknown model, an unreachable server, the budget): the run stops (resumably) at once
    instead of recording them as a failed proposal or a wrong answer."""
    if isinstance(exc, (BudgetExceeded, ProviderAuthError, ProviderUnreachableError, UnknownModelError, StoreError)):
        return True
    return isinstance(exc, ProviderError) and getattr(exc, "status", None) in (401, 403)


class InfrastructureError(AflowctlError):
    """Something around the workflow failed (the LLM gateway, the sandbox, descriptors,
    a provider after every retry): never the workflow's fault, never a score. The task
    that met it is retried; if it keeps failing the evaluation fails (resumable)."""

    retryable = True


class ProviderUnavailableError(ProviderError, InfrastructureError):
    """A provider kept failing (rate limits, 5xx, timeouts) after every retry."""

    retryable = True
    status = None
