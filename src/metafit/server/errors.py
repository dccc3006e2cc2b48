"""The error a request can cause, with its HTTP status, and the cleaning of its message."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ApiError", "public_message"]

# "<_io.BytesIO object at 0x7f...>" and the like: an object's repr says nothing to a
# client and gives away addresses.
_REPR = re.compile(r"<[^<>]*\bat 0x[0-9a-fA-F]+>")


@dataclass
class ApiError(Exception):
    """A request the server refuses: HTTP ``status`` and a message for the client (a
    string, or for a malformed body a list of ``{"loc", "msg", "type"}``)."""

    status: int
    detail: str | list[dict[str, Any]]
    headers: dict[str, str] = field(default_factory=dict)


def public_message(text: str) -> str:
    """``text`` without object reprs (``<... at 0x...>`` becomes ``<object>``)."""
    return _REPR.sub("<object>", text)
