"""`agentdistill view`: the store in the browser, read-only.

FastAPI + server-rendered Jinja2 pages; no script runs in them (plots are inline SVG drawn by
report.html, live progress is a meta refresh), and the Content-Security-Policy forbids scripts anyway.
Every value is autoescaped and redacted on its way into a page, so an observation holding `<script>`
shows as text and a key that slipped into a recipe shows as ***.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.exceptions import HTTPException

from agentdistill.errors import AgentDistillError
from agentdistill.report.efficiency import fmt_ratio
from agentdistill.secrets import redact
from agentdistill.store.store import Store
from agentdistill.view import queries as Q

TEMPLATES = Path(__file__).parent / "templates"
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; base-uri 'none'"
REFRESH_S = 3  # a page showing a running run reloads itself this often (live progress without scripts)


def _finalize(value: Any) -> Any:
    """Every `{{ value }}` of every page passes here: strings are redacted (Markup, our own SVG, is kept)."""
    if isinstance(value, Markup) or not isinstance(value, str):
        return "" if value is None else value
    return redact(value)


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]),
                      finalize=_finalize, trim_blocks=True, lstrip_blocks=True)
    env.filters["pretty"] = lambda v: json.dumps(v, indent=1, default=str, ensure_ascii=False)
    env.filters["ratio"] = lambda v, percent=False: fmt_ratio(v, percent)
    env.filters["money"] = lambda v: f"{v or 0:.5f}"
    env.filters["pct"] = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.0%}"
    env.filters["num"] = lambda v, d=1: "-" if v is None else f"{v:.{d}f}"
    env.filters["when"] = lambda v: "" if v is None else f"{v:%Y-%m-%d %H:%M:%S}"
    return env


def _int(value: str | None, default: int, lowest: int = 1) -> int:
    try:
        return max(lowest, int(value)) if value not in (None, "") else default
    except ValueError:
        return default


def _id(value: str, what: str) -> int:
    """An id from the URL; anything but a number is a page that does not exist."""
    try:
        return int(value)
    except ValueError:
        raise Q.NotFound(f"no {what} {value!r} in this store") from None


def create_app(store: Store) -> FastAPI:
    app = FastAPI(title="agentdistill view", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(env=_environment())

    def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        def link(**changes: Any) -> str:  # this page's URL with some query parameters changed
            params = {**dict(request.query_params), **{k: v for k, v in changes.items()}}
            return "?" + urlencode({k: v for k, v in params.items() if v not in (None, "")})

        return templates.TemplateResponse(request, name, {"link": link, "store_url": store_label, **context},
                                          status_code=status)

    store_label = store.engine.url.render_as_string(hide_password=True)

    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @app.exception_handler(Q.NotFound)
    async def not_found(request: Request, exc: Q.NotFound):
        return page(request, "error.html", 404, title="Not found", message=str(exc))

    @app.exception_handler(AgentDistillError)
    async def bad_input(request: Request, exc: AgentDistillError):
        return page(request, "error.html", 400, title="Bad request", message=str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        message = f"no page at {request.url.path}" if exc.status_code == 404 else str(exc.detail)
        return page(request, "error.html", exc.status_code, title="Not found" if exc.status_code == 404 else "Error",
                    message=message)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return page(request, "error.html", 400, title="Bad request", message="this URL's parameters are not valid")

    @app.get("/", response_class=HTMLResponse)
    def runs(request: Request, kind: str = "", status: str = "", env: str = "", model: str = "", p: str = ""):
        listing = Q.runs_page(store, kind=kind, status=status, env=env, model=model.strip(), number=_int(p, 1))
        return page(request, "runs.html", runs=listing, choices=Q.run_filter_choices(store),
                    filters={"kind": kind, "status": status, "env": env, "model": model},
                    refresh=REFRESH_S if Q.any_running(listing) else None)

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run(request: Request, run_id: str, role: str = "", outcome: str = "", p: str = ""):
        detail = Q.run_detail(store, run_id)
        rid = detail["run"].id
        return page(request, "run.html", **detail, roles=Q.role_rows(store, rid), arms=Q.arm_rows(store, detail["stages"]),
                    episodes=Q.episodes_page(store, rid, role=role, outcome=outcome, number=_int(p, 1)),
                    filters={"role": role, "outcome": outcome},
                    refresh=REFRESH_S if detail["run"].status == "running" else None)

    @app.get("/episodes/{episode_id}", response_class=HTMLResponse)
    def episode(request: Request, episode_id: str, p: str = ""):
        detail = Q.episode_detail(store, _id(episode_id, "episode"))
        ep = detail["episode"]
        return page(request, "episode.html", **detail, steps=Q.steps_page(store, ep.id, number=_int(p, 1)),
                    who=lambda st: Q.who_answered(ep, st),
                    refresh=REFRESH_S if ep.status == "running" else None)

    @app.get("/skills", response_class=HTMLResponse)
    def skills(request: Request):
        return page(request, "skills.html", skills=Q.skills_list(store))

    @app.get("/skills/{name}", response_class=HTMLResponse)
    def skill(request: Request, name: str, v: str = ""):
        detail = Q.skill_detail(store, name)
        versions = detail["versions"]
        shown = next((x for x in versions if str(x.version) == v), versions[-1] if versions else None)
        return page(request, "skill.html", **detail, shown=shown, installs=Q.installs(name, versions))

    @app.get("/skills/{name}/diff", response_class=HTMLResponse)
    def skill_diff(request: Request, name: str, a: str = "", b: str = ""):
        from agentdistill.skills import library

        detail = Q.skill_detail(store, name)
        numbers = [x.version for x in detail["versions"]]
        va, vb = _int(a, numbers[0] if numbers else 1), _int(b, numbers[-1] if numbers else 1)
        if va not in numbers or vb not in numbers:
            raise Q.NotFound(f"skill {name} has no version {va if va not in numbers else vb}")
        text = library.diff(store, name, va, vb)
        return page(request, "diff.html", skill=detail["skill"], numbers=numbers, a=va, b=vb,
                    lines=text.splitlines())

    @app.get("/evaluations", response_class=HTMLResponse)
    def evaluations(request: Request, p: str = ""):
        return page(request, "evaluations.html", evaluations=Q.evaluations_page(store, _int(p, 1)))

    @app.get("/evaluations/{evaluation_id}", response_class=HTMLResponse)
    def evaluation(request: Request, evaluation_id: str):
        ev = Q.evaluation(store, _id(evaluation_id, "evaluation"))
        return page(request, "evaluation.html", ev=ev, efficacy=_efficacy(ev.metrics or {}),
                    skill=Q.skill_version_label(store, ev.skill_version_id))

    @app.get("/checkpoints", response_class=HTMLResponse)
    def checkpoints(request: Request, p: str = ""):
        return page(request, "checkpoints.html", checkpoints=Q.checkpoints_page(store, _int(p, 1)))

    @app.get("/checkpoints/{checkpoint_id}", response_class=HTMLResponse)
    def checkpoint(request: Request, checkpoint_id: str):
        from agentdistill.report.html import curve_chart

        ckpt = Q.checkpoint(store, _id(checkpoint_id, "checkpoint"))
        curve = Q.training_curve(ckpt)
        return page(request, "checkpoint.html", ckpt=ckpt,
                    chart=Markup(curve_chart(f"checkpoint {ckpt.id}", curve)) if curve else None)

    @app.get("/datasets", response_class=HTMLResponse)
    def datasets(request: Request, p: str = ""):
        return page(request, "datasets.html", datasets=Q.datasets_page(store, _int(p, 1)))

    @app.get("/datasets/{dataset_id}", response_class=HTMLResponse)
    def dataset(request: Request, dataset_id: str, p: str = ""):
        ds = Q.dataset(store, _id(dataset_id, "dataset"))
        return page(request, "dataset.html", ds=ds, episodes=Q.dataset_episodes(store, ds, _int(p, 1)))

    return app


def _efficacy(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """An efficacy table (report.efficacy) with its plots, for an evaluation that holds one."""
    from agentdistill.report import efficacy
    from agentdistill.report.html import cost_chart, curve_chart, success_chart

    if metrics.get("schema") != efficacy.SCHEMA or not metrics.get("arms"):
        return None
    return {"columns": efficacy.COLUMNS, "rows": efficacy.rows(metrics), "conclusions": efficacy.conclusions(metrics),
            "success_chart": Markup(success_chart(metrics)), "cost_chart": Markup(cost_chart(metrics)),
            "curves": [Markup(curve_chart(n, c)) for n, c in (metrics.get("curves") or {}).items()]}
