"""The operator console: server-rendered pages over the same functions as the API.

Log in with an operator token (a signed, HttpOnly, SameSite=Strict session cookie); every
form carries a CSRF token derived from the session. Bulk actions go through a confirmation
page that says how many rows, that they pass the gate, and what the gate sheds at the
current level; the result page says what it did shed, and the audit log keeps who did it.
Pages send a strict Content-Security-Policy: the only script is `static/console.js`.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from starlette.datastructures import FormData

from dlq.models import Status
from ops.server import actions, audit, deps, problems
from ops.server.auth import (
    SESSION_COOKIE,
    SESSION_S,
    Caller,
    LoginRequired,
    Role,
    check_csrf,
    console_operator,
    tokens_of,
)
from ops.server.dead_letters import (
    BulkRequest,
    DeadLetterQuery,
    error_groups,
    flower_link,
    priorities_of,
    row_dict,
)
from ops.server.deps import Redis, Store
from ops.server.views import pressure_view, schedule_rows, submission_counts, worker_rows
from producers import decide, killswitch
from sluice.errors import SluiceError, UsageError
from sluice.priorities import PressureLevel, Priority

__all__ = ["router", "mount", "PAGE"]

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(prefix="/console", include_in_schema=False)

Console = Annotated[Caller, Depends(console_operator)]

PAGE = 50
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; frame-ancestors 'none'; "
                               "form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
}


def mount(app: FastAPI) -> None:
    """Add the console's routes, its static files and its error pages to `app` (after
    `problems.install`: console errors become pages, the API's stay JSON)."""
    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=str(HERE / "static")),
              name="console-static")
    app.add_exception_handler(LoginRequired, _to_login)
    app.add_exception_handler(SluiceError, _error_page)


def render(request: Request, template: str, caller: Caller | None, status: int = 200,
           **context: Any) -> HTMLResponse:
    """A page, with the session's CSRF token for its forms and the security headers."""
    session = request.cookies.get(SESSION_COOKIE, "")
    csrf = tokens_of(request).csrf_for(session) if session and caller else ""
    response = templates.TemplateResponse(
        request, f"{template}.html", {"caller": caller, "csrf": csrf, "page": template,
                                      **context}, status_code=status)
    response.headers.update(SECURITY_HEADERS)
    return response


async def _to_login(request: Request, exc: Exception) -> Response:
    if request.url.path.startswith("/console"):
        return RedirectResponse("/console/login", status_code=303)
    return await problems.sluice_error(request, exc)


async def _error_page(request: Request, exc: Exception) -> Response:
    if not request.url.path.startswith("/console") or not isinstance(exc, SluiceError):
        return await problems.sluice_error(request, exc)
    return render(request, "error", None, status=problems.status_for(exc),
                  title=type(exc).__name__, message=str(exc))


# -- login -------------------------------------------------------------------------------------

@router.get("/login")
def login_form(request: Request) -> HTMLResponse:
    return render(request, "login", None)


@router.post("/login")
def login(request: Request, token: Annotated[str, Form(max_length=500)]) -> Response:
    """An operator token opens a session; anything else is refused without saying why."""
    caller = tokens_of(request).caller(token.strip())
    if caller is None or not caller.allows(Role.OPERATOR):
        return render(request, "login", None, status=401,
                      error="Unknown token, or not an operator token.")
    response = RedirectResponse("/console/", status_code=303)
    response.set_cookie(SESSION_COOKIE, tokens_of(request).session_for(caller, time.time()),
                        max_age=SESSION_S, path="/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


@router.post("/logout")
def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    check_csrf(request, csrf)
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# -- pressure ----------------------------------------------------------------------------------

@router.get("/")
def pressure_page(request: Request, caller: Console, client: Redis) -> HTMLResponse:
    """The level, per-queue depth and oldest age, rates and a chart; console.js polls."""
    view = pressure_view(deps.producer().monitor.current(), deps.settings(),
                         submission_counts(client))
    return render(request, "pressure", caller, view=view, queues=list(view["depths"]))


# -- dead letters -------------------------------------------------------------------------------

def _query(params: Any) -> tuple[DeadLetterQuery, str | None]:
    """The filters of a form or a query string, and what was wrong with them if anything."""
    values = {k: params.get(k) for k in DeadLetterQuery.model_fields if params.get(k)}
    try:
        return DeadLetterQuery.model_validate(values), None
    except ValidationError as exc:
        wrong = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                          for e in exc.errors(include_input=False, include_url=False))
        return DeadLetterQuery(), f"filter ignored: {wrong}"


def _choices() -> dict[str, Any]:
    return {"statuses": [s.value for s in Status], "priorities": [p.name for p in Priority],
            "tasks": sorted(n for n, t in deps.producer().app.tasks.items()
                            if getattr(t, "payload_model", None) is not None),
            "ages": {"": "any time", "900": "15 min", "3600": "1 hour", "86400": "24 hours",
                     "604800": "7 days"}}


@router.get("/dead-letters")
def dead_letters_page(request: Request, caller: Console, store: Store) -> HTMLResponse:
    """Filtered list, newest first, with select boxes and "all matching" actions."""
    query, problem = _query(request.query_params)
    offset_text = request.query_params.get("offset", "0")
    offset = int(offset_text) if offset_text.isdigit() else 0
    filters = query.filters(dt.datetime.now(dt.UTC))
    rows = [row_dict(r) for r in store.list(filters, PAGE, offset)]
    return render(request, "dead_letters", caller, rows=rows, total=store.count(filters),
                  query=query.described(), problem=problem, offset=offset, size=PAGE,
                  **_choices())


@router.get("/dead-letters/groups")
def groups_page(request: Request, caller: Console, store: Store) -> HTMLResponse:
    """The same filters, grouped by task and exception type."""
    query, problem = _query(request.query_params)
    groups = error_groups(store, query.filters(dt.datetime.now(dt.UTC)))
    return render(request, "groups", caller, groups=groups, query=query.described(),
                  problem=problem, **_choices())


@router.get("/dead-letters/{dead_letter_id}")
def detail_page(request: Request, dead_letter_id: int, caller: Console,
                store: Store) -> HTMLResponse:
    """One row: fields, masked payload, traceback, link to Flower."""
    row = row_dict(store.get(dead_letter_id), full=True)
    return render(request, "detail", caller, row=row,
                  payload=json.dumps(row["payload"], indent=2, default=str),
                  flower=flower_link(deps.settings(), row["task_id"]))


def _selection(form: FormData) -> BulkRequest:
    """The rows a form points at: the ticked ids, or every row matching its filter."""
    if form.get("scope") == "filter":
        query, problem = _query(form)
        if problem:
            raise UsageError(problem)
        return BulkRequest(filter=query)
    try:
        ids = [int(str(v)) for v in form.getlist("ids")]
    except ValueError:
        raise UsageError("ids must be numbers") from None
    if not ids:
        raise UsageError("select at least one dead letter")
    return BulkRequest(ids=ids)


def gate_now(level: PressureLevel) -> dict[str, str]:
    """What the gate does to each priority at `level` (what a replay meets)."""
    out = {}
    for p in Priority:
        d = decide(level, p)
        out[p.name] = (f"shed ({d.reason})" if not d.allowed else
                       f"delayed {d.delay_ms} ms" if d.delay_ms else "accepted")
    return out


@router.post("/dead-letters/confirm")
async def confirm_page(request: Request, caller: Console, store: Store) -> HTMLResponse:
    """Step one of a bulk action: how many rows, and what the gate would do with them."""
    form = await request.form()
    check_csrf(request, str(form.get("csrf") or ""))
    action, selection = str(form.get("action")), _selection(form)
    if action not in actions.ACTIONS:
        raise UsageError(f"action must be one of {', '.join(actions.ACTIONS)}")
    ids = await run_in_threadpool(selection.resolve, store, dt.datetime.now(dt.UTC))
    level = deps.producer().monitor.current().level
    counts = await run_in_threadpool(priorities_of, store, ids)
    return render(request, "confirm", caller, action=action, ids=ids, counts=counts,
                  scope=json.dumps(selection.scope()), level=level.name, gate=gate_now(level))


@router.post("/dead-letters/bulk")
async def bulk(request: Request, caller: Console, store: Store, client: Redis) -> HTMLResponse:
    """Step two: act on the confirmed ids, record it, show what happened."""
    form = await request.form()
    check_csrf(request, str(form.get("csrf") or ""))
    try:
        ids = [int(x) for x in str(form.get("ids") or "").split(",") if x]
    except ValueError:
        raise UsageError("ids must be numbers") from None
    result = await run_in_threadpool(actions.bulk, str(form.get("action")), store, client,
                                     caller, ids, _scope(form.get("scope"), len(ids)))
    return render(request, "result", caller, result=result)


def _scope(raw: Any, count: int) -> dict[str, Any]:
    """The selection the operator confirmed (as the confirmation page described it)."""
    try:
        scope = json.loads(str(raw or "{}"))
    except ValueError:
        scope = {}
    return (scope if isinstance(scope, dict) else {}) | {"ids": count}


# -- kill switches, schedules, workers, audit ---------------------------------------------------

@router.get("/killswitches")
def switches_page(request: Request, caller: Console, client: Redis) -> HTMLResponse:
    switches = sorted(killswitch.list_switches(client).items())
    return render(request, "killswitches", caller, switches=switches,
                  priorities=[p.name for p in Priority])


@router.post("/killswitches")
def switch(request: Request, caller: Console, client: Redis,
           target: Annotated[str, Form(max_length=250)],
           csrf: Annotated[str, Form()] = "", on: Annotated[str, Form()] = "",
           reason: Annotated[str, Form(max_length=200)] = "") -> Response:
    """Turn a switch on (`on=1`, with a reason) or off; recorded in the audit log."""
    check_csrf(request, csrf)
    if on:
        actions.switch_on(client, caller, target, reason or "switched off")
    else:
        actions.switch_off(client, caller, target)
    return RedirectResponse("/console/killswitches", status_code=303)


@router.get("/schedules")
def schedules_page(request: Request, caller: Console) -> HTMLResponse:
    return render(request, "schedules", caller, rows=schedule_rows())


@router.get("/workers")
def workers_page(request: Request, caller: Console, client: Redis) -> HTMLResponse:
    """Workers (heartbeat, held jobs) and every `sluice doctor` check."""
    from ops.doctor import run_checks

    return render(request, "workers", caller, workers=worker_rows(client),
                  checks=run_checks())


@router.get("/audit")
def audit_page(request: Request, caller: Console, client: Redis) -> HTMLResponse:
    entries = audit.recent(client, 200)
    for entry in entries:
        entry["when"] = dt.datetime.fromtimestamp(entry["at"], dt.UTC).isoformat(
            timespec="seconds")
    return render(request, "audit", caller, entries=entries)
