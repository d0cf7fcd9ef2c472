"""What ``adafocus serve`` checks before it loads the model (which takes seconds): the settings and the port.

A bad setting stops the server with one line that names what the user set, the flag (``--port``) when one was
given, else the environment variable (``ADAFOCUS_PORT``), and exit status 2; a port already in use or not allowed
is found by binding it first (the bound socket is then handed to uvicorn, so nothing can take it in between).
Rejected values are never echoed (``Settings`` hides them: one could be the operator token).
"""

from __future__ import annotations

import socket
from typing import Any

from pydantic import ValidationError

from service.settings import Settings

FLAGS = {"host": "--host", "port": "--port", "bundle": "--bundle"}  # settings that `adafocus serve` flags override


class StartupError(Exception):
    """The server cannot start as configured; the message is one line for the user (exit status 2)."""


def setting_name(field: str, overrides: dict[str, Any]) -> str:
    """How the user set ``field``: its flag when given on the command line, else its environment variable."""
    if field.isupper():  # a setting read under an alias (validation_alias): the loc is the variable's name already
        return field
    return FLAGS[field] if field in overrides else f"ADAFOCUS_{field.upper()}"


def describe(exc: ValidationError, overrides: dict[str, Any]) -> str:
    """One line for every problem of a settings ``ValidationError``, each naming its flag or variable."""
    parts = []
    for error in exc.errors():
        loc = error.get("loc") or ()
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if loc:
            parts.append(f"{setting_name(str(loc[0]), overrides)}: {message}")
        else:  # a check across settings: its message names the variables; say the flags where they were used
            for field in overrides:
                message = message.replace(f"ADAFOCUS_{field.upper()}", FLAGS[field])
            parts.append(message)
    return "invalid settings: " + "; ".join(parts)


def load_settings(overrides: dict[str, Any]) -> Settings:
    """``Settings`` from the environment and the command-line ``overrides``, or ``StartupError``."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise StartupError(describe(exc, overrides)) from None


def listen_socket(host: str, port: int, overrides: dict[str, Any] | None = None) -> socket.socket:
    """A socket bound to ``host:port`` (uvicorn listens on it), or ``StartupError`` naming what to change."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart reuses the port at once
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        names = f"{setting_name('host', overrides or {})} / {setting_name('port', overrides or {})}"
        raise StartupError(f"cannot listen on {host}:{port} ({names}): {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock
