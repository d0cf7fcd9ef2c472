"""The operator token that guards budget changes: ``Authorization: Bearer <ADAFOCUS_OPERATOR_TOKEN>``."""

from __future__ import annotations

import hmac

from pydantic import SecretStr


class Unauthorized(Exception):
    """No usable ``Authorization: Bearer`` header."""


class Forbidden(Exception):
    """A bearer token that is not the operator token."""


class BudgetChangesDisabled(Exception):
    """The server has no operator token, so nobody may change the budget."""


def check_operator(token: SecretStr | None, authorization: str | None) -> None:
    """Raise unless ``authorization`` carries ``token`` (compared in constant time)."""
    if token is None:
        raise BudgetChangesDisabled("budget changes are disabled: the server has no ADAFOCUS_OPERATOR_TOKEN")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("send `Authorization: Bearer <operator token>`")
    if not hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode()):
        raise Forbidden("wrong operator token")
