"""The admin API's key bodies, their validation, a key's JSON, and the audit log line.

Bodies are strict: an unknown field or a value of the wrong type is a 400 naming the field,
never coerced (``"5"`` is not a number of requests per minute).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from tokenrelay.api.errors import describe_validation_errors
from tokenrelay.auth.keys import ApiKey
from tokenrelay.errors import InvalidRequest
from tokenrelay.ledger.queries import KeyUsage

# Written whatever log_level says: who changed which key, and when, must not depend on it.
audit_log = logging.getLogger("tokenrelay.audit")
audit_log.setLevel(logging.INFO)

# The ledger's integer columns are 32-bit on PostgreSQL.
_INT_MAX = 2**31 - 1

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Tokens = Annotated[int, Field(ge=0, le=_INT_MAX)]
Dollars = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Positive = Annotated[int, Field(ge=1, le=_INT_MAX)]
Models = Annotated[list[ModelName], Field(min_length=1, max_length=1000)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NewKey(_Body):
    """``POST /v1/admin/keys``."""

    name: Name
    budget_tokens: Tokens | None = None
    budget_usd: Dollars | None = None
    rpm: Positive | None = None
    max_concurrent: Positive | None = None
    # None: every model. An empty list is refused: it would read as "every model" too.
    models: Models | None = None
    expires_at: datetime | None = None


class KeyChanges(_Body):
    """``PATCH /v1/admin/keys/{id}``: the fields sent are changed; an explicit null clears."""

    name: Name | None = None
    budget_tokens: Tokens | None = None
    budget_usd: Dollars | None = None
    rpm: Positive | None = None
    max_concurrent: Positive | None = None
    models: Models | None = None
    expires_at: datetime | None = None


Body = TypeVar("Body", bound=_Body)


def parse(raw: bytes, schema: type[Body], known_models: list[str]) -> tuple[Body, dict[str, Any]]:
    """The body, and the fields it set (normalised: UTC times, models known and deduplicated)."""
    if not raw.strip():
        raise InvalidRequest("a JSON object body is required")
    try:
        body = schema.model_validate_json(raw)
    except ValidationError as exc:
        message, param = describe_validation_errors(list(exc.errors()))
        raise InvalidRequest(message, param=param) from None
    fields = {name: getattr(body, name) for name in body.model_fields_set}
    if "name" in fields and fields["name"] is None:
        raise InvalidRequest("name: a key needs a name", param="name")
    if fields.get("expires_at") is not None:
        moment: datetime = fields["expires_at"]
        fields["expires_at"] = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    if fields.get("models") is not None:
        unknown = [name for name in fields["models"] if name not in known_models]
        if unknown:
            raise InvalidRequest(f"models: no such model {unknown[0]!r}", param="models")
        fields["models"] = list(dict.fromkeys(fields["models"]))
    return body, fields


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


def key_json(key: ApiKey, usage: KeyUsage | None, now: datetime) -> dict[str, Any]:
    """A key as the admin API shows it: identity, limits, state, spending (never the secret)."""
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "state": key.state(now),
        "created_at": _time(key.created_at),
        "expires_at": _time(key.expires_at),
        "revoked_at": _time(key.revoked_at),
        "last_used_at": _time(usage.last_used_at if usage else None),
        "budget_tokens": key.budget_tokens,
        "budget_usd": key.budget_usd,
        "rpm": key.rpm,
        "max_concurrent": key.max_concurrent,
        "models": sorted(key.models) if key.models is not None else None,
        "spent_tokens": usage.tokens if usage else 0,
        "spent_usd": usage.cost_usd if usage else 0.0,
    }


def changed_fields(before: ApiKey, after: ApiKey) -> list[str]:
    """The names of the settable fields whose value differs."""
    names = ("name", "budget_tokens", "budget_usd", "rpm", "max_concurrent", "models", "expires_at")
    return [name for name in names if getattr(before, name) != getattr(after, name)]


Event = Literal["key_created", "key_updated", "key_revoked"]


def audit(event: Event, key: ApiKey, fields: list[str], request_id: str | None) -> None:
    """One audit line (logger ``tokenrelay.audit``): who, what, when; never the secret."""
    audit_log.info(
        event,
        extra={
            "event": event,
            "actor": "admin",
            "key_id": key.id,
            "prefix": key.prefix,
            "fields": fields,
            "at": datetime.now(UTC).isoformat(),
            "request_id": request_id,
        },
    )
