"""`sluice server`: the HTTP API (`/v1`, OpenAPI at `/docs`) and the operator console, one
ASGI application over the same producer, store and kill switches as the CLI."""

from ops.server.app import create_app
from ops.server.auth import Caller, Role, Tokens

__all__ = ["create_app", "Caller", "Role", "Tokens"]
