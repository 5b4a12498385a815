"""One exception hierarchy for the whole tool; every error says what to do next.

    AmlftError                    message + hint (the fix) + exit code
    ├── ConfigError               bad profile, flag or environment variable          (exit 2)
    ├── MissingDependency         an optional extra is not installed                  (exit 2)
    ├── AuthError                 no usable credential / workspace coordinates        (exit 2)
    ├── RecordError               run record missing, corrupt or ambiguous            (exit 2)
    ├── DataError                 invalid or unreadable training data                 (exit 1)
    ├── PreflightError            `check` found problems (carries all of them)        (exit 1)
    ├── ServiceError              a remote service said no (status, code, request id) (exit 1)
    ├── DeploymentError           endpoint/deployment failed to come up               (exit 1)
    ├── JobFailed                 the fine-tune job ended Failed                       (exit 3)
    │   └── TrainingError         local training failed (the local backend's job)      (exit 3)
    ├── JobCanceled               the fine-tune job ended Canceled                     (exit 4)
    └── WaitTimeout               `wait --timeout` elapsed; the job keeps running      (exit 5)

The CLI funnels every AmlftError through one place (amlft.cli.main) that prints the
message and the hint - the cause and the fix first - then `details` (e.g. a log tail), or a
JSON object in --json mode, and exits with `exit_code`.
Anything that is not an AmlftError is a bug and is shown with its traceback.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AmlftError", "AuthError", "ConfigError", "DataError", "DeploymentError", "JobCanceled", "JobFailed", "MissingDependency", "PreflightError", "RecordError", "ServiceError", "TrainingError", "WaitTimeout"]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_JOB_FAILED = 3
EXIT_JOB_CANCELED = 4
EXIT_TIMEOUT = 5
EXIT_INTERRUPTED = 130


class AmlftError(Exception):
    """Base error. `hint` tells the user what to do about it."""

    exit_code: int = EXIT_ERROR

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int | None = None,
                 details: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details  # shown after message and hint: a log tail, a long listing
        if exit_code is not None:
            self.exit_code = exit_code

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"error": type(self).__name__, "message": self.message, "hint": self.hint}
        if self.details:
            d["details"] = self.details
        return d

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(AmlftError):
    exit_code = EXIT_USAGE


class MissingDependency(AmlftError):
    exit_code = EXIT_USAGE

    def __init__(self, package: str, *, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the Python package '{package}', which is not installed.",
            hint=f"pip install 'amlft[{extra}]'",
        )
        self.package = package
        self.extra = extra


class AuthError(AmlftError):
    exit_code = EXIT_USAGE


class RecordError(AmlftError):
    exit_code = EXIT_USAGE


class DataError(AmlftError):
    pass


class PreflightError(AmlftError):
    """Carries every finding: {"severity": "error"|"warning"|"info", "check", "message", "fix"}."""

    def __init__(self, problems: list[dict[str, Any]]) -> None:
        errors = [p for p in problems if p.get("severity", "error") == "error"]
        lines = [f"- [{p.get('check', '?')}] {p['message']}" + (f"\n    fix: {p['fix']}" if p.get("fix") else "")
                 for p in errors]
        super().__init__(
            f"Preflight found {len(errors)} problem(s); nothing billable was started:\n" + "\n".join(lines),
            hint="Fix the problems above (or the profile) and run `amlft check` again.",
        )
        self.problems = problems

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["problems"] = self.problems
        return d


class ServiceError(AmlftError):
    """A remote service refused a request; carries what support needs to trace it."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 request_id: str | None = None, hint: str | None = None) -> None:
        details = ", ".join(f"{k}={v}" for k, v in (("status", status), ("code", code), ("request_id", request_id)) if v)
        super().__init__(f"{message} ({details})" if details else message, hint=hint)
        self.status = status
        self.code = code
        self.request_id = request_id

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.update(status=self.status, code=self.code, request_id=self.request_id)
        return d


class DeploymentError(AmlftError):
    pass


class JobFailed(AmlftError):
    exit_code = EXIT_JOB_FAILED


class TrainingError(JobFailed):
    """Local training failed: the local backend's equivalent of a failed job (same exit code)."""


class JobCanceled(AmlftError):
    exit_code = EXIT_JOB_CANCELED


class WaitTimeout(AmlftError):
    exit_code = EXIT_TIMEOUT
