"""The broker's exception tree. Every error a client can see carries a reason code.

    BrokerError                     (reason, message; never a secret in either)
    ├── Unauthenticated             a credential failed verification
    │     MALFORMED_TOKEN BAD_TOKEN_TYPE BAD_SIGNATURE UNKNOWN_KEY TOKEN_EXPIRED NOT_YET_VALID
    │     WRONG_AUDIENCE WRONG_ISSUER REPLAYED REVOKED TOOL_MISMATCH ARGS_MISMATCH
    │     CERT_MISMATCH STALE NO_CREDENTIAL
    ├── PermissionDenied            POLICY_DENIED OUTSIDE_PLAN ROLE_NOT_ALLOWED
    │   └── InvalidSvid             INVALID_SVID (not a valid SPIFFE ID or X.509-SVID)
    ├── FailedPrecondition          APPROVAL_REQUIRED TASK_ENDED APPROVAL_NOT_PENDING
    ├── NotFound                    TASK_NOT_FOUND UNKNOWN_SERVER UNKNOWN_TOOL TOOL_CHANGED
    │                               NOT_FOUND
    ├── InvalidRequest              INVALID_REQUEST (the message names the field)
    ├── QuotaExceeded               QUOTA_EXCEEDED
    ├── StoreUnavailable            STORE_UNAVAILABLE
    ├── VaultUnavailable            SECRET_UNAVAILABLE SIGNING_UNAVAILABLE (Vault/OpenBao)
    └── ConfigError                 CONFIG_INVALID (start-up and reload only; names the key)

Errors carry a domain kind, not a gRPC status: the one table that maps kinds to status codes is
``broker.rpc.status``. Anything that is not a BrokerError reaches a client as INTERNAL with a
fixed message and a correlation id; its detail goes to the server log only.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Reason codes of API.md: a status message begins with one ("REPLAYED: ...")."""

    MALFORMED_TOKEN = "MALFORMED_TOKEN"
    BAD_TOKEN_TYPE = "BAD_TOKEN_TYPE"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    UNKNOWN_KEY = "UNKNOWN_KEY"
    TOKEN_EXPIRED = "TOKEN_EXPIRED"
    NOT_YET_VALID = "NOT_YET_VALID"
    WRONG_AUDIENCE = "WRONG_AUDIENCE"
    WRONG_ISSUER = "WRONG_ISSUER"
    REPLAYED = "REPLAYED"
    REVOKED = "REVOKED"
    TOOL_MISMATCH = "TOOL_MISMATCH"
    ARGS_MISMATCH = "ARGS_MISMATCH"
    CERT_MISMATCH = "CERT_MISMATCH"
    STALE = "STALE"  # offline verifier: the revocation feed has been down longer than its bound
    NO_CREDENTIAL = "NO_CREDENTIAL"  # an MCP request without a credential (or an agent SVID)
    POLICY_DENIED = "POLICY_DENIED"
    OUTSIDE_PLAN = "OUTSIDE_PLAN"
    ROLE_NOT_ALLOWED = "ROLE_NOT_ALLOWED"
    INVALID_SVID = "INVALID_SVID"
    APPROVAL_REQUIRED = "APPROVAL_REQUIRED"
    APPROVAL_NOT_PENDING = "APPROVAL_NOT_PENDING"  # an operator decides one already decided
    TASK_ENDED = "TASK_ENDED"
    TASK_NOT_FOUND = "TASK_NOT_FOUND"
    UNKNOWN_SERVER = "UNKNOWN_SERVER"
    UNKNOWN_TOOL = "UNKNOWN_TOOL"
    TOOL_CHANGED = "TOOL_CHANGED"  # a tool definition differs from its pin (a rug pull)
    NOT_FOUND = "NOT_FOUND"
    INVALID_REQUEST = "INVALID_REQUEST"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    SECRET_UNAVAILABLE = "SECRET_UNAVAILABLE"  # a tool's downstream secret: Vault failed
    SIGNING_UNAVAILABLE = "SIGNING_UNAVAILABLE"  # Transit signing: Vault failed
    CONFIG_INVALID = "CONFIG_INVALID"
    INTERNAL = "INTERNAL"


class BrokerError(Exception):
    """Base of every error the broker raises on purpose."""

    default_reason: Reason = Reason.INTERNAL

    def __init__(self, message: str, reason: Reason | None = None) -> None:
        self.reason = reason or self.default_reason
        self.message = message
        super().__init__(f"{self.reason.value}: {message}")


class Unauthenticated(BrokerError):
    """A credential failed verification; ``reason`` says which check. ``claims`` holds the
    token's claims when its signature had verified (for the audit trail; never the token)."""

    default_reason = Reason.MALFORMED_TOKEN
    claims: object | None = None


class PermissionDenied(BrokerError):
    default_reason = Reason.POLICY_DENIED

    def __init__(
        self, message: str, reason: Reason | None = None, policy_ids: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message, reason)
        self.policy_ids = policy_ids


class InvalidSvid(PermissionDenied):
    """A SPIFFE ID or X.509-SVID is malformed or not acceptable; the message says what is wrong."""

    default_reason = Reason.INVALID_SVID


class FailedPrecondition(BrokerError):
    default_reason = Reason.TASK_ENDED


class NotFound(BrokerError):
    default_reason = Reason.NOT_FOUND


class InvalidRequest(BrokerError):
    """Bad input. ``field`` names the offending field; the message says what is expected."""

    default_reason = Reason.INVALID_REQUEST

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class QuotaExceeded(BrokerError):
    default_reason = Reason.QUOTA_EXCEEDED


class StoreUnavailable(BrokerError):
    """The state store cannot be reached in time: fail closed."""

    default_reason = Reason.STORE_UNAVAILABLE


class VaultUnavailable(BrokerError):
    """Vault (or OpenBao) could not serve a request in time, refused it, or lacked what was asked:
    fail closed. The message says what failed; never a secret."""

    default_reason = Reason.SECRET_UNAVAILABLE


class ConfigError(BrokerError):
    """Invalid configuration, registry or policy. ``key`` names where the problem is."""

    default_reason = Reason.CONFIG_INVALID

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
