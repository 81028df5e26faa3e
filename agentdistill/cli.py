"""`agentdistill` command line: thin; parses, calls the library, prints."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm must not fetch prices at import

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from agentdistill.errors import AgentDistillError

console = Console()
err_console = Console(stderr=True)


class _App(typer.Typer):
    """Typer app that prints AgentDistillError as one line (exit 2) instead of a traceback."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except AgentDistillError as e:
            err_console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            sys.exit(2)


app = _App(no_args_is_help=True, pretty_exceptions_enable=False, help="Distill what strong agents do into things cheap agents can use.")
runs_app = typer.Typer(no_args_is_help=True, help="Inspect runs in the store.")
db_app = typer.Typer(no_args_is_help=True, help="Manage the trajectory store.")
envs_app = typer.Typer(no_args_is_help=True, help="Environments: what exists and what is ready here.")
app.add_typer(runs_app, name="runs")
app.add_typer(db_app, name="db")
app.add_typer(envs_app, name="envs")

DbOpt = Annotated[
    Optional[str],
    typer.Option("--db", envvar="AGENTDISTILL_DB", help="SQLite path or database URL [default: ./agentdistill.db]"),
]


def _store(db: str | None, migrate_fresh: bool = True):
    from agentdistill.store.store import Store

    return Store.open(db, migrate_fresh=migrate_fresh)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # third-party chatter is not ours to show
    for noisy in ("LiteLLM", "litellm", "httpx", "py4j", "transformers"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.ERROR)


def _print_summary(store, run_id: str) -> None:
    from agentdistill.report.summary import summarize

    run = store.get_run(run_id)
    elapsed = f" in {(run.finished_at - run.created_at).total_seconds():.0f} s" if run.finished_at else ""
    table = Table(
        title=f"run {run.id} ({run.name}): {run.status}{elapsed}",
        caption="eps: episodes, err: errors; score, steps: means; tokens, cost, wall s: sums",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for col in ("role", "eps", "err", "success", "score", "steps", "tok in", "tok out", "cost $", "wall s"):
        table.add_column(col, justify="left" if col == "role" else "right", no_wrap=True)
    for s in summarize(store.episodes(run_id=run.id)):
        table.add_row(
            s.role,
            str(s.episodes),
            str(s.errors),
            f"{s.success_rate:.0%}",
            "-" if s.mean_score is None else f"{s.mean_score:.1f}",
            f"{s.mean_steps:.1f}",
            str(s.prompt_tokens),
            str(s.completion_tokens),
            f"{s.cost:.4f}",
            f"{s.wall_time:.1f}",
        )
    console.print(table)


@app.command()
def run(
    recipe: Annotated[Optional[Path], typer.Argument(help="Recipe TOML; omit for the embedded default.")] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", help="Finish this crashed/interrupted run id.")] = None,
    db: DbOpt = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Roll out the recipe's teacher and student on its tasks and store every step.

    Example: agentdistill run            (default: ScienceWorld expert vs local/smollm2-135m)
             agentdistill run my.toml --db postgresql://me@localhost/agentdistill
             agentdistill run --resume 3f2a9c1b
    """
    from agentdistill.agents.rollout import resume_run, run_recipe
    from agentdistill.config import load_recipe

    if resume and recipe:
        raise AgentDistillError("--resume replays the recipe stored with the run: do not pass a recipe too")
    if resume:
        store = _store(db)
        run_id = resume_run(store, resume, progress=progress)
    else:
        parsed = load_recipe(recipe)  # a bad recipe fails before the database is touched
        store = _store(db)
        run_id = run_recipe(store, parsed, progress=progress)
    _print_summary(store, run_id)
    console.print(f"stored in {store.engine.url.render_as_string(hide_password=True)}")


@app.command()
def collect(
    policy: Annotated[str, typer.Option(help='"expert" or a model id (openai/gpt-4.1-mini, local/smollm2-135m, ...).')],
    role: Annotated[str, typer.Option(help="teacher or student.")] = "teacher",
    env: Annotated[str, typer.Option(help="Environment name (see `envs list`).")] = "scienceworld",
    split: Annotated[str, typer.Option(help="Task split.")] = "train",
    task: Annotated[Optional[list[str]], typer.Option("--task", help="Task name (repeatable); default all.")] = None,
    variations: Annotated[int, typer.Option(help="Variations per task.")] = 5,
    max_steps: Annotated[int, typer.Option(help="Step limit per episode.")] = 30,
    concurrency: Annotated[int, typer.Option(help="Episodes at once.")] = 2,
    api_base: Annotated[Optional[str], typer.Option(help="OpenAI-compatible server URL for the model.")] = None,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.0,
    name: Annotated[str, typer.Option(help="Run name.")] = "collect",
    db: DbOpt = None,
) -> None:
    """Collect episodes of one policy without writing a recipe.

    Example: agentdistill collect --policy expert --split train --task boil --variations 10
    """
    from agentdistill.agents.rollout import run_recipe
    from agentdistill.config import parse_recipe

    if role not in ("teacher", "student"):
        raise AgentDistillError(f"--role {role!r}: use teacher or student")
    spec = {"policy": "expert"} if policy == "expert" else {"policy": "llm", "model": policy, "temperature": temperature}
    if api_base:
        spec["api_base"] = api_base
    recipe = parse_recipe(
        {
            "name": name,
            "env": {"name": env, "split": split, "tasks": task or None, "variations": variations},
            role: spec,
            "runner": {"concurrency": concurrency, "max_steps": max_steps},
        },
        "collect options",
    )
    store = _store(db)
    _print_summary(store, run_recipe(store, recipe))


@runs_app.command("list")
def runs_list(db: DbOpt = None, limit: Annotated[int, typer.Option(help="How many runs.")] = 20) -> None:
    """List runs, newest first.  Example: agentdistill runs list --limit 5"""
    table = Table()
    for col in ("id", "name", "status", "created", "episodes", "done", "successes"):
        table.add_column(col)
    for row in _store(db).list_runs(limit):
        r = row["run"]
        table.add_row(r.id, r.name, r.status, f"{r.created_at:%Y-%m-%d %H:%M}", str(row["episodes"]), str(row["done"]), str(row["successes"]))
    console.print(table)


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(help="Run id (a unique prefix is enough).")],
    episodes: Annotated[bool, typer.Option(help="List each episode.")] = False,
    db: DbOpt = None,
) -> None:
    """Summary of one run per role.  Example: agentdistill runs show 3f2a --episodes"""
    store = _store(db)
    run_id = store.get_run(run_id).id
    _print_summary(store, run_id)
    if episodes:
        table = Table()
        for col in ("#", "role", "task", "var", "status", "success", "score", "steps", "error"):
            table.add_column(col)
        for e in store.episodes(run_id=run_id):
            table.add_row(str(e.plan_index), e.role, e.task.name, str(e.task.variation), e.status, str(e.success), str(e.score), str(e.n_steps), (e.error or "")[:60])
        console.print(table)


@db_app.command("upgrade")
def db_upgrade(db: DbOpt = None, revision: Annotated[str, typer.Option(help="Target revision.")] = "head") -> None:
    """Migrate the store's schema (alembic).  Example: agentdistill db upgrade --db postgresql://me@host/ad"""
    from agentdistill.store import db as dbmod

    engine = dbmod.make_engine(dbmod.resolve_url(db))
    before = dbmod.current_revision(engine)
    dbmod.upgrade(engine, revision)
    console.print(f"schema {before or '(empty)'} -> {dbmod.current_revision(engine)}")


@db_app.command("stats")
def db_stats(db: DbOpt = None) -> None:
    """Row counts per table.  Example: agentdistill db stats"""
    store = _store(db)
    table = Table(title=store.engine.url.render_as_string(hide_password=True))
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, n in store.stats().items():
        table.add_row(name, str(n))
    console.print(table)


@db_app.command("export")
def db_export(
    out: Annotated[Path, typer.Argument(help="Output: a .jsonl file, or a directory for --format hf.")],
    format: Annotated[str, typer.Option("--format", help="jsonl or hf (Hugging Face datasets save_to_disk).")] = "jsonl",
    run_id: Annotated[Optional[str], typer.Option("--run", help="Only this run.")] = None,
    role: Annotated[Optional[str], typer.Option(help="Only teacher or student episodes.")] = None,
    status: Annotated[str, typer.Option(help="Episode status to export (done, error, any).")] = "done",
    db: DbOpt = None,
) -> None:
    """Export episodes with their steps.  Example: agentdistill db export teacher.jsonl --role teacher"""
    from agentdistill.store.export import export_hf, export_jsonl

    if format not in ("jsonl", "hf"):
        raise AgentDistillError(f"--format {format!r}: use jsonl or hf")
    store = _store(db)
    run_id = store.get_run(run_id).id if run_id else None
    fn = export_jsonl if format == "jsonl" else export_hf
    n = fn(store, out, run_id=run_id, role=role, status=None if status == "any" else status)
    console.print(f"exported {n} episodes to {out}")


@envs_app.command("list")
def envs_list(tasks: Annotated[bool, typer.Option("--tasks", help="Also list each env's tasks (starts the env).")] = False) -> None:
    """Environments agentdistill knows.  Example: agentdistill envs list --tasks"""
    from agentdistill.envs import check, make, names

    for name in names():
        status = check(name)
        console.print(f"[bold]{name}[/bold]  {status.description}  [{'green' if status.ready else 'yellow'}]{'ready' if status.ready else 'not ready'}[/]")
        if tasks and status.ready:
            env = make(name)
            try:
                for t in getattr(env, "task_names", []):
                    console.print(f"  {t}")
            finally:
                env.close()


@envs_app.command("check")
def envs_check(name: Annotated[Optional[str], typer.Argument(help="One environment; default all.")] = None) -> None:
    """Per environment: ready, or exactly what is missing and how to get it.  Example: agentdistill envs check"""
    from agentdistill.envs import check, names

    for n in [name] if name else names():
        status = check(n)
        console.print(f"[bold]{n}[/bold]: {'[green]ready[/green]' if status.ready else '[yellow]not ready[/yellow]'}")
        for r in status.requirements:
            mark = "[green]ok[/green]" if r.ok else f"[red]missing[/red] -> {r.fix}"
            console.print(f"  {r.what}: {mark}", highlight=False)
