"""`sluice server`: the HTTP API and the operator console (ops.server), served by uvicorn."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from ops.cli.app import app
from ops.cli.output import USAGE, console, fail

if TYPE_CHECKING:
    from sluice.settings import Settings

#: the addresses a server may use the local token file on (`make up` on a laptop)
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@app.command()
def server(host: str | None = typer.Option(None, "--host",
                                           help="Address (default SLUICE_SERVER_HOST)"),
           port: int | None = typer.Option(None, "--port", min=1, max=65535,
                                           help="Port (default SLUICE_SERVER_PORT, 8808)"),
           access_log: bool = typer.Option(True, "--access-log/--no-access-log"),
           proxy_headers: bool = typer.Option(
               False, "--proxy-headers/--no-proxy-headers",
               help="Trust X-Forwarded-Proto/-For from 127.0.0.1 (a TLS proxy on this host): "
                    "console cookies are then marked Secure"),
           ) -> None:
    """Serve the HTTP API (/v1, docs at /docs) and the console (/console). Tokens come from
    SLUICE_API_TOKENS or SLUICE_API_TOKENS_FILE; on 127.0.0.1 without either, from
    SLUICE_DATA_DIR/api-tokens.json (created with one operator token)."""
    import uvicorn

    from ops.server import create_app
    from sluice.settings import get_settings

    settings = get_settings()
    host, port = host or settings.server_host, port or settings.server_port
    settings = _with_tokens(settings, host)
    application = create_app(settings)
    if not len(application.state.tokens):
        fail("no API token: SLUICE_API_TOKENS (or SLUICE_API_TOKENS_FILE) holds none", USAGE)
    console.print(f"sluice server on http://{host}:{port} (console /console, API docs /docs)",
                  highlight=False)
    uvicorn.run(application, host=host, port=port, access_log=access_log,
                log_level="info", proxy_headers=proxy_headers, server_header=False)


def _with_tokens(settings: Settings, host: str) -> Settings:
    """The settings, pointed at the local token file when none is configured and the server
    listens on this machine only; a usage error for a wider binding without tokens."""
    from ops.server.auth import local_tokens

    if settings.api_tokens is not None or settings.api_tokens_file is not None:
        return settings
    if host not in LOOPBACK:
        fail(f"sluice server on {host} needs SLUICE_API_TOKENS or SLUICE_API_TOKENS_FILE: a "
             'JSON object {"<token>": {"role": "operator"}} (no token, no access)', USAGE)
    path = settings.data_dir / "api-tokens.json"
    created = local_tokens(path)
    console.print(f"API tokens: {path}{' (created: one operator token)' if created else ''}",
                  highlight=False)
    return settings.model_copy(update={"api_tokens_file": path})
