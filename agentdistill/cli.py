"""`agentdistill` command line: thin; parses, calls the library, prints."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm must not fetch prices at import
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # our commands print their own counts
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agentdistill.cli_options import config_options
from agentdistill.errors import AgentDistillError
from agentdistill.train.dagger_config import DAggerConfig
from agentdistill.secrets import install_log_filter, redact

console = Console()
err_console = Console(stderr=True)


class _App(typer.Typer):
    """Typer app that prints AgentDistillError as one line (exit 2) instead of a traceback."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except AgentDistillError as e:
            # the message is text, never markup: "[teacher]" in it must print as written
            err_console.print(f"[red]error:[/red] {escape(redact(str(e)))}", highlight=False, soft_wrap=True)
            sys.exit(getattr(e, "exit_code", 2))


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


def _store(db: str | None, migrate_fresh: bool = True, create: bool = True):
    """The store; `create=False` for commands that only read or act on what it holds: a missing store is
    then a one-line error, not a new empty database."""
    from agentdistill.store.store import Store

    return Store.open(db, migrate_fresh=migrate_fresh, create=create)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    install_log_filter()  # no secret in any log line, ours or a library's
    if not verbose:  # deprecation notices from transformers' internals are not the user's to act on
        import warnings

        warnings.filterwarnings("ignore", category=FutureWarning)
    # third-party chatter is not ours to show
    for noisy in ("LiteLLM", "litellm", "httpx", "py4j", "transformers"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.ERROR)


def _print_summary(store, run_id: str) -> None:
    from agentdistill.report.efficiency import fmt_ratio, run_efficiency
    from agentdistill.report.summary import summarize

    run = store.get_run(run_id)
    elapsed = f" in {(run.finished_at - run.created_at).total_seconds():.0f} s" if run.finished_at else ""
    table = Table(
        title=f"run {run.id} ({run.name}): {run.status}{elapsed}",
        caption="eps: episodes, err: errors; score, steps: means; tokens, cost, wall s: sums; repeat: repeated actions, "
                "overhead: steps / the teacher's on the same task, cache: cached prompt tokens (README: efficiency)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for col in ("role", "eps", "err", "success", "score", "steps", "tok in", "tok out", "cost $", "wall s", "repeat",
                "overhead", "cache"):
        table.add_column(col, justify="left" if col == "role" else "right", no_wrap=True)
    efficiency = run_efficiency(store, run.id)
    for s in summarize(store.episodes(run_id=run.id)):
        eff = efficiency.get(s.role)
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
            fmt_ratio(eff.repetition_rate if eff else None, percent=True),
            fmt_ratio(eff.step_overhead if eff else None),
            fmt_ratio(eff.cache_utilization if eff else None, percent=True),
        )
    (console if console.is_terminal else Console(width=200)).print(table)  # a pipe has no width to fit


@app.command()
def run(
    recipe: Annotated[Optional[Path], typer.Argument(help="Recipe TOML; omit for the embedded default.")] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", help="Finish this crashed/interrupted run id.")] = None,
    start_from: Annotated[Optional[str], typer.Option("--from", help="Pipeline: recompute this stage and every later one (collect, distill, eval, report, or a stage name such as sft).")] = None,
    only: Annotated[Optional[str], typer.Option("--only", help="Pipeline: recompute only this stage; the others come from the store.")] = None,
    db: DbOpt = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Run a recipe: a pipeline (collect -> distill -> eval -> report) or a plain teacher/student rollout.

    Example: agentdistill run            (default pipeline: TextWorld expert -> SFT of local/smollm2-135m, held-out table)
             agentdistill run my.toml --only eval.sft --db postgresql://me@localhost/agentdistill
             agentdistill run --resume 3f2a9c1b
    """
    from agentdistill.agents.rollout import resume_run, run_recipe
    from agentdistill.config import load_recipe

    if resume and recipe:
        raise AgentDistillError("--resume replays the recipe stored with the run: do not pass a recipe too")
    if resume:
        store = _store(db, create=False)  # a run to resume lives in an existing store: never create one
        stored = store.get_run(resume)
        if stored.kind == "pipeline":
            _run_pipeline(store, None, stored.id, start_from, only, progress)
            return
        if start_from or only:
            raise AgentDistillError("--from and --only are for pipeline recipes (with collect/distill/eval stages)")
        run_id = resume_run(store, stored.id, progress=progress)
    else:
        from agentdistill.agents.rollout import open_env

        parsed = load_recipe(recipe)  # a bad recipe fails before the database is touched
        if parsed.is_pipeline:
            from agentdistill.pipeline import preflight

            preflight(parsed)  # ... and so do unknown splits, tasks and env options
            _run_pipeline(_store(db), parsed, None, start_from, only, progress)
            return
        if start_from or only:
            raise AgentDistillError("--from and --only are for pipeline recipes (with collect/distill/eval stages)")
        # on a cluster the actors' envs check the recipe (this machine may have no env installed)
        env = None if parsed.runner.executor == "ray" else open_env(parsed)
        try:
            store = _store(db)
        except BaseException:
            if env is not None:
                env.close()
            raise
        run_id = run_recipe(store, parsed, progress=progress, env=env)
    _print_summary(store, run_id)
    console.print(f"stored in {store.engine.url.render_as_string(hide_password=True)}")


def _run_pipeline(store, recipe, run_id: str | None, start_from, only, progress: bool) -> None:
    from agentdistill.pipeline import run_pipeline, stored_recipe

    recipe = recipe or stored_recipe(store, run_id)
    say = lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True)  # noqa: E731
    holder: dict[str, str] = {}
    try:
        pipeline_id = run_pipeline(store, recipe, run_id=run_id, start_from=start_from, only=only, progress=progress,
                                   say=say, on_start=lambda rid: holder.setdefault("id", rid))
    except KeyboardInterrupt:
        rid = holder.get("id", run_id)
        err_console.print(f"[red]interrupted:[/red] continue with `agentdistill run --resume {rid}` "
                          "(finished stages and episodes are kept)", highlight=False)
        sys.exit(130)
    stages = store.stages(pipeline_id)
    if any(st.name == "report" for st in stages):
        _print_efficacy(store, pipeline_id)
    # soft_wrap: a narrow terminal wraps the line itself; rich would cut the command in two to copy
    console.print(f"pipeline run {pipeline_id}; stored in {store.engine.url.render_as_string(hide_password=True)}; "
                  f"reprint with `agentdistill report efficacy {pipeline_id}`", highlight=False, soft_wrap=True)


def _print_efficacy(store, run_id: str) -> None:
    from agentdistill.report import efficacy

    report = efficacy.load(store, run_id)
    env = report.get("env") or {}
    table = Table(title=f"held-out {env.get('name')} {env.get('split')} tasks: every arm on the same (task, variation, "
                        f"seed); intervals are bootstrap 95%", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True, title_justify="left")
    for col in efficacy.COLUMNS:
        table.add_column(col, justify="left" if col in ("arm", "verdict") else "right", no_wrap=True)
    for row in efficacy.rows(report):
        table.add_row(*row)
    # a pipe or log file has no width to fit: print every column rather than squeezing the numbers
    (console if console.is_terminal else Console(width=200)).print(table)
    c = report.get("collect") or {}
    if c.get("episodes") is not None:
        console.print(f"teacher data: {c['episodes']} episodes, {c['successes']} successful, ${c['cost'] or 0:.4f}"
                      + (" (reused from the store)" if c.get("reused_episodes") else ""), highlight=False)
    for line in efficacy.conclusions(report):
        console.print(line, highlight=False)


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
    from agentdistill.agents.rollout import open_env

    env = open_env(recipe)  # unknown env, split or task: one line, nothing written
    try:
        store = _store(db)
    except BaseException:
        env.close()
        raise
    _print_summary(store, run_recipe(store, recipe, env=env))


@app.command("import")
def import_cmd(
    paths: Annotated[list[Path], typer.Argument(help="Trace files, or directories to search for them (.jsonl, .json, .eval).")],
    format: Annotated[str, typer.Option("--format", help="auto (per file), claude-code, codex, atif, openai-chat or inspect.")] = "auto",
    tag: Annotated[Optional[list[str]], typer.Option("--tag", help="Tag each imported episode (repeatable).")] = None,
    role: Annotated[str, typer.Option(help="Whose behaviour the sessions show: teacher or student.")] = "teacher",
    db: DbOpt = None,
) -> None:
    """Import sessions of real agent tools (Claude Code, Codex, ATIF, OpenAI chat JSONL, Inspect logs) as episodes.

    Each file is imported whole or not at all; importing it again adds nothing.
    Example: agentdistill import ~/.claude/projects ~/.codex/sessions --tag mine
    """
    from agentdistill.importers import import_files

    result = import_files(lambda: _store(db), paths, format, tag, role, on_file=_print_import)  # store opened after the checks
    totals = {k: sum(getattr(f, k) for f in result.files) for k in ("added", "replaced", "unchanged", "steps", "n_bad")}
    failed = len(result.failed)
    console.print(f"{'run ' + result.run_id if result.run_id else 'nothing new'}: {_n(totals['added'], 'session')} "
                  f"added ({_n(totals['steps'], 'step')}), {totals['replaced']} replaced, {totals['unchanged']} "
                  f"unchanged; {_n(totals['n_bad'], 'bad line')}; {failed} of {_n(len(result.files), 'file')} failed",
                  highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _print_import(report) -> None:
    """One line per file, then its bad lines as FILE:LINE (the first few; the rest counted)."""
    name = escape(str(report.path))
    if report.error:
        where = f":{report.error_where}" if report.error_where is not None else ""
        err_console.print(f"[red]failed:[/red] {name}{escape(where)}: {escape(report.error)} (nothing of it written)",
                          highlight=False, soft_wrap=True)
    elif report.note:
        console.print(f"{name}: {escape(report.note)}", highlight=False, soft_wrap=True)
    else:
        changed = f", {report.replaced} replaced" if report.replaced else ""
        console.print(f"{name} ({report.format}): {_n(report.added, 'session')} added ({_n(report.steps, 'step')})"
                      f"{changed}, {report.unchanged} unchanged", highlight=False, soft_wrap=True)
    for bad in report.bad_lines[:5]:
        err_console.print(f"  {name}:{escape(str(bad.where))}: {escape(bad.reason)}", highlight=False, soft_wrap=True)
    if report.n_bad > 5:
        err_console.print(f"  ... and {report.n_bad - 5} more bad lines in {name}", highlight=False)


@runs_app.command("list")
def runs_list(db: DbOpt = None, limit: Annotated[int, typer.Option(help="How many runs.")] = 20) -> None:
    """List runs, newest first.  Example: agentdistill runs list --limit 5"""
    table = Table()
    for col in ("id", "name", "status", "created", "episodes", "done", "successes"):
        table.add_column(col, no_wrap=col in ("id", "created"))  # an id to copy whole, however narrow the terminal
    for row in _store(db, create=False).list_runs(limit):
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
    store = _store(db, create=False)
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
    store = _store(db, create=False)
    table = Table(title=store.engine.url.render_as_string(hide_password=True))
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, n in store.stats().items():
        table.add_row(name, str(n))
    console.print(table)


@db_app.command("export")
def db_export(
    out: Annotated[Path, typer.Argument(help="Output: a .jsonl file, or a directory for --format hf or parquet.")],
    format: Annotated[str, typer.Option("--format", help="jsonl (the store's episode rows), chat (TRL-ready: one conversation per line, messages with tool_calls), hf (Hugging Face datasets save_to_disk) or parquet (runs, episodes, steps, model_calls tables).")] = "jsonl",
    run_id: Annotated[Optional[str], typer.Option("--run", help="Only this run.")] = None,
    role: Annotated[Optional[str], typer.Option(help="Only teacher or student episodes.")] = None,
    status: Annotated[str, typer.Option(help="Episode status to export (done, error, any).")] = "done",
    db: DbOpt = None,
) -> None:
    """Export episodes with their steps.  Example: agentdistill db export teacher.jsonl --role teacher --format chat"""
    from agentdistill.store.export import export_chat, export_hf, export_jsonl

    if format not in ("jsonl", "chat", "hf", "parquet"):
        raise AgentDistillError(f"--format {format!r}: use jsonl, chat, hf or parquet")
    store = _store(db, create=False)
    run_id = store.get_run(run_id).id if run_id else None
    if format == "parquet":
        from agentdistill.frames import to_parquet

        counts = to_parquet(store, out, run_id=run_id, role=role, status=None if status == "any" else status)
        console.print(f"exported {counts['episodes']} episodes ({counts['steps']} steps, {counts['model_calls']} model "
                      f"calls, {counts['runs']} runs) to {out}/", highlight=False)
        return
    if format == "chat":
        n = export_chat(store, out, run_id=run_id, role=role, status=None if status == "any" else status)
        console.print(f"exported {n} conversations to {out}")
        return
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


@envs_app.command("generate")
def envs_generate(
    name: Annotated[str, typer.Argument(help="alfworld (TextWorld games are generated on demand).")],
    source: Annotated[Path, typer.Option(help="ALFWorld games whose scenes to reuse (a data dir or any folder of trials).")],
    out: Annotated[Path, typer.Option(help="Data dir to write (ALFWorld layout; use it as ALFWORLD_DATA).")],
    split: Annotated[str, typer.Option(help="train, valid_seen or valid_unseen.")] = "train",
    n: Annotated[int, typer.Option("-n", help="How many games to make.")] = 10,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    relocate: Annotated[float, typer.Option(help="Share of games whose goal object is first moved elsewhere.")] = 0.5,
    expert: Annotated[str, typer.Option(help="ALFWorld expert(s) that must win each game: planner, handcoded or both.")] = "both",
    checks: Annotated[int, typer.Option(help="Plays per expert; each must be won (the experts are stochastic).")] = 3,
) -> None:
    """New ALFWorld games from existing scenes with ALFWorld's goal library, each won by its expert.
    Example: agentdistill envs generate alfworld --source $ALFWORLD_DATA --out data/alfworld-gen --split train -n 20"""
    from agentdistill.envs.alfworld import SPLIT_DIRS
    from agentdistill.envs.alfworld_gen import generate, source_games

    if name != "alfworld":
        raise AgentDistillError(f"envs generate {name!r}: only alfworld has a game generator here")
    if split not in ("train", "valid_seen", "valid_unseen"):
        raise AgentDistillError(f"--split {split!r}: use train, valid_seen or valid_unseen")
    if not 0.0 <= relocate <= 1.0:
        raise AgentDistillError(f"--relocate {relocate}: use a share between 0 and 1")
    sources = [p for p in source_games(source) if out.resolve() not in p.resolve().parents]
    result = generate(sources, out, SPLIT_DIRS[split], n, seed=seed, relocate=relocate, expert=expert, checks=checks)
    for g in result.games:
        console.print(f"  {g.parent.relative_to(out)}", highlight=False)
    console.print(f"{len(result.games)} games written to {out} ({split}); {result.rejected} of {result.tried} "
                  f"tried were not won every time by the {expert} expert(s) and were dropped. "
                  f"Use: export ALFWORLD_DATA={out}")


@envs_app.command("up")
def envs_up(name: Annotated[str, typer.Argument(help="webshop, appworld, visualwebarena, trainer (see docker/).")]) -> None:
    """Start an environment's servers in Docker and print the variables that point our adapters at them."""
    from agentdistill.envs.containers import up

    env = up(name, log=console.print)
    for k, v in env.items():
        console.print(f"export {k}={v}", highlight=False)


@envs_app.command("down")
def envs_down(name: Annotated[str, typer.Argument(help="The name given to `envs up`.")]) -> None:
    """Stop and remove the containers `envs up NAME` started."""
    from agentdistill.envs.containers import down

    console.print(f"removed: {', '.join(down(name)) or 'nothing was running'}")


icd_app = typer.Typer(no_args_is_help=True, help="In-context distillation: teacher demo indexes.")
report_app = typer.Typer(no_args_is_help=True, help="Reports over runs in the store.")
app.add_typer(icd_app, name="icd")
app.add_typer(report_app, name="report")


@icd_app.command("build")
def icd_build(
    path: Annotated[Optional[Path], typer.Argument(help="Index directory [default: .agentdistill/icd/<env>].")] = None,
    env: Annotated[str, typer.Option(help="Environment of the teacher episodes.")] = "scienceworld",
    split: Annotated[str, typer.Option(help="Task split of the teacher episodes ('any' for all).")] = "train",
    run_ids: Annotated[Optional[list[str]], typer.Option("--run", help="Only these runs (repeatable).")] = None,
    method: Annotated[str, typer.Option(help="auto (dense if available), dense, or bm25.")] = "auto",
    db: DbOpt = None,
) -> None:
    """Index every step of the store's successful teacher episodes for retrieval.

    Example: agentdistill icd build --env scienceworld --split train
    """
    from agentdistill.agents.rollout import default_index_dir
    from agentdistill.distill.icd import DemoIndex

    if method not in ("auto", "dense", "bm25"):
        raise AgentDistillError(f"--method {method!r}: use auto, dense or bm25")
    store = _store(db)
    runs = [store.get_run(r).id for r in run_ids] if run_ids else None
    index = DemoIndex.build(store, path or default_index_dir(env), env=env, runs=runs,
                            split=None if split == "any" else split, method=method)
    console.print(f"{index.path}: {len(index.entries)} steps from {len(index.episodes)} teacher episodes "
                  f"({index.meta['method']}); demos cost ${index.upfront_cost:.4f} to collect")


@report_app.command("costs")
def report_costs(
    runs: Annotated[list[str], typer.Argument(help="LABEL=RUN[:ROLE] for each policy; the first is the teacher baseline.")],
    index: Annotated[Optional[Path], typer.Option(help="ICD index whose demos' cost is the upfront cost.")] = None,
    db: DbOpt = None,
) -> None:
    """Cost per episode, success (bootstrap 95% CI) and the cascade's break-even point.

    Example: agentdistill report costs teacher=3f2a:teacher student=3f2a:student cascade=9c1d:student --index .agentdistill/icd/scienceworld
    """
    from agentdistill.distill.icd import DemoIndex
    from agentdistill.report.costs import break_even, cost_report

    store = _store(db, create=False)
    spec: dict[str, tuple[str, str]] = {}
    for item in runs:
        label, sep, rest = item.partition("=")
        if not sep:
            raise AgentDistillError(f"{item!r}: write LABEL=RUN or LABEL=RUN:ROLE, e.g. cascade=9c1d:student")
        run_id, _, role = rest.partition(":")
        spec[label] = (store.get_run(run_id).id, role or "student")
    rows = cost_report(store, spec)
    base = rows[0]
    table = Table(box=box.SIMPLE_HEAD)
    for col in ("policy", "eps", "success [95% CI]", "$/episode", "teacher steps", f"cost vs {base.label}", "repeat",
                "overhead", "cache"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    from agentdistill.report.efficiency import fmt_ratio

    for r in rows:
        ratio = r.ratio_to(base)
        eff = r.efficiency
        table.add_row(r.label, str(r.episodes), f"{r.success:.0%} [{r.success_low:.0%}, {r.success_high:.0%}]",
                      f"{r.cost_per_episode:.5f}", f"{r.teacher_step_share:.0%}", "-" if ratio is None else f"{ratio:.2f}x cheaper",
                      fmt_ratio(eff and eff.repetition_rate, percent=True), fmt_ratio(eff and eff.step_overhead),
                      fmt_ratio(eff and eff.cache_utilization, percent=True))
    (console if console.is_terminal else Console(width=200)).print(table)  # a pipe has no width to fit
    if index:
        upfront = DemoIndex.load(index).upfront_cost
        for r in rows[1:]:
            n = break_even(upfront, base, r)
            console.print(f"{r.label}: demos cost ${upfront:.4f} upfront; " +
                          (f"paid back after {n:.1f} episodes" if n is not None else "never paid back (no saving per episode)"))


@report_app.command("efficacy")
def report_efficacy(
    run_id: Annotated[str, typer.Argument(help="A pipeline run id (a unique prefix is enough).")],
    format: Annotated[str, typer.Option("--format", help="table, json or html.")] = "table",
    out: Annotated[Optional[Path], typer.Option("--out", help="File for json/html [default: stdout for json, efficacy-RUN.html for html].")] = None,
    db: DbOpt = None,
) -> None:
    """The efficacy table of a pipeline run: every arm on the held-out tasks, intervals, paired difference to base.

    Example: agentdistill report efficacy 3f2a --format html --out report.html
    """
    import json

    from agentdistill.report import efficacy

    if format not in ("table", "json", "html"):
        raise AgentDistillError(f"--format {format!r}: use table, json or html")
    store = _store(db, create=False)
    run_id = store.get_run(run_id).id
    if format == "table":
        _print_efficacy(store, run_id)
        return
    report = efficacy.load(store, run_id)
    if format == "json":
        text = json.dumps(report, indent=1, default=str)
        if out is None:
            print(text)
        else:
            out.write_text(text)
            console.print(f"wrote {out}", highlight=False)
        return
    from agentdistill.report.html import write_html

    path = write_html(report, out or Path(f"efficacy-{run_id}.html"))
    console.print(f"wrote {path}", highlight=False)


@app.command()
def serve(
    upstream: Annotated[Optional[str], typer.Option(help="Model answering every call, each recorded as a step of a session: any litellm id (openai/gpt-4.1-mini, anthropic/claude-sonnet-4-5, openai/<name> with --upstream-api-base) or local/..., llamacpp/...")] = None,
    upstream_api_base: Annotated[Optional[str], typer.Option(help="OpenAI-compatible server of the upstream.")] = None,
    student: Annotated[Optional[str], typer.Option(help="Student model id, e.g. local/smollm2-135m: with --teacher, the cascade; alone, the student answers.")] = None,
    teacher: Annotated[Optional[str], typer.Option(help="Teacher model id of the cascade, e.g. openai/gpt-4.1-mini.")] = None,
    index: Annotated[Optional[Path], typer.Option(help="ICD index directory (see `icd build`); none: no demos.")] = None,
    student_api_base: Annotated[Optional[str], typer.Option(help="OpenAI-compatible server of the student.")] = None,
    teacher_api_base: Annotated[Optional[str], typer.Option(help="OpenAI-compatible server of the teacher.")] = None,
    samples: Annotated[int, typer.Option(help="Student samples per request (k).")] = 3,
    threshold: Annotated[float, typer.Option(help="The student answers if its agreement exceeds this.")] = 0.5,
    temperature: Annotated[float, typer.Option(help="Student sampling temperature.")] = 0.7,
    demos: Annotated[int, typer.Option(help="Demos retrieved per request.")] = 3,
    db: DbOpt = None,
    record: Annotated[bool, typer.Option("--record/--no-record", help="Record every call in the store (--db).")] = True,
    role: Annotated[Optional[str], typer.Option(help="Role of the recorded sessions, teacher or student (default: teacher with --upstream, else student).")] = None,
    spool: Annotated[Optional[Path], typer.Option(help="Where records wait while the store cannot take them (default: under the cache, one per store).")] = None,
    retries: Annotated[int, typer.Option(help="Retries of a transient upstream failure (429, 5xx, timeout); a refused key or unknown model is never retried.")] = 2,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    api_key: Annotated[Optional[list[str]], typer.Option("--api-key", help="Accept requests bearing this key (repeatable; or AGENTDISTILL_SERVE_API_KEY, comma-separated).")] = None,
    insecure_no_auth: Annotated[bool, typer.Option("--insecure-no-auth", help="Bind beyond localhost without keys (anyone who reaches it spends the teacher's budget).")] = False,
) -> None:
    """A recording gateway: OpenAI's /v1/chat/completions and Anthropic's /v1/messages (streaming, tools), answered
    by --upstream or the cascade (--student, --teacher); every call is recorded in the store as a step of a session.

    Example: agentdistill serve --upstream anthropic/claude-sonnet-4-5 --db sessions.db
    (then: ANTHROPIC_BASE_URL=http://127.0.0.1:8000/sessions/my-task claude -p "...")
    """
    import uvicorn

    if not 0 <= threshold <= 1:
        raise AgentDistillError(f"--threshold {threshold}: use a share between 0 and 1")
    keys = [k.strip() for k in list(api_key or []) + os.environ.get("AGENTDISTILL_SERVE_API_KEY", "").split(",")
            if k.strip()]
    if any(len(k) < 16 for k in keys):
        raise AgentDistillError("--api-key: use keys of at least 16 characters (e.g. `openssl rand -hex 24`)")
    if not keys and not _loopback(host) and not insecure_no_auth:
        raise AgentDistillError(f"--host {host} is reachable beyond this machine: give --api-key (or "
                                "AGENTDISTILL_SERVE_API_KEY), or --insecure-no-auth if it must be open")
    if upstream and (student or teacher):
        raise AgentDistillError("give --upstream (forward every call to it), or --student with --teacher (the cascade), "
                                "not both")
    if not upstream and not student:
        raise AgentDistillError("give --upstream MODEL (forward every call to it and record it), or --student MODEL "
                                "[--teacher MODEL] (the cascade, or the student alone)")
    if role not in (None, "teacher", "student"):
        raise AgentDistillError(f"--role {role}: use teacher or student")
    if retries < 0:
        raise AgentDistillError(f"--retries {retries}: use 0 or more")
    from agentdistill.models.registry import IN_PROCESS

    for name, model_id, base in (("student", student, student_api_base), ("teacher", teacher, teacher_api_base),
                                 ("upstream", upstream, upstream_api_base)):
        if model_id and base and model_id.startswith(IN_PROCESS):
            raise AgentDistillError(f"--{name}-api-base: {model_id} runs in this process; drop the option or "
                                    "name the server's model as openai/<name>")
    from agentdistill.gateway import Upstream, cascade_upstream, create_gateway_app, open_gateway

    if teacher:
        answerer = cascade_upstream(student, teacher, student_api_base=student_api_base,
                                    teacher_api_base=teacher_api_base, index=index, demos=demos, samples=samples,
                                    threshold=threshold, temperature=temperature, retries=retries)
    else:
        answerer = Upstream(upstream or student, api_base=upstream_api_base or student_api_base, retries=retries)
    store = _store(db) if record else None
    gateway = open_gateway(answerer, store, role=role or ("teacher" if upstream else "student"), spool=spool)
    where = (f"recording to {escape(store.engine.url.render_as_string(hide_password=True))} as run "
             f"{gateway.recorder.run_id}" if gateway.recorder else "recording nothing")
    console.print(f"gateway on http://{host}:{port} (OpenAI: /v1/chat/completions, Anthropic: /v1/messages; "
                  f"/sessions/<id>/v1/... names a session), answered by {escape(answerer.id)}, {where}; "
                  f"{'API key required' if keys else 'no API key'}", highlight=False)
    uvicorn.run(create_gateway_app(gateway, api_keys=keys), host=host, port=port, log_level="warning")


@app.command()
def view(
    db: DbOpt = None,
    port: Annotated[str, typer.Option(help="Port.")] = "8765",  # text: a bad value is our one-line error
    host: Annotated[str, typer.Option(help="Bind address; beyond localhost needs --expose.")] = "127.0.0.1",
    expose: Annotated[bool, typer.Option("--expose", help="Allow binding beyond localhost (anyone who reaches it reads every trajectory).")] = False,
) -> None:
    """Browse the store in a web browser, read-only: runs, episode transcripts, skills, evaluations, checkpoints, datasets.

    Example: agentdistill view --db agentdistill.db --port 8765
    """
    import socket

    if not port.strip().isdigit() or not 1 <= int(port) <= 65535:
        raise AgentDistillError(f"--port {port}: use a port number between 1 and 65535")
    number = int(port)
    if not _loopback(host) and not expose:
        raise AgentDistillError(f"--host {host} is reachable beyond this machine: add --expose if every trajectory in "
                                "the store may be read from there")
    store = _store(db, create=False)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, number))
        except OSError as e:
            raise AgentDistillError(f"cannot listen on {host}:{number} ({e.strerror or e}): choose another --port") from None
    import uvicorn

    from agentdistill.view.app import create_app

    console.print(f"agentdistill view on http://{host}:{number}/ (read-only; Ctrl-C to stop)", highlight=False)
    uvicorn.run(create_app(store), host=host, port=number, log_level="warning")


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


train_app = typer.Typer(no_args_is_help=True, help="Train small local students from the store (TRL + PEFT).")
app.add_typer(train_app, name="train")

# episode filters shared by `train data` and `train sft`
FilterRole = Annotated[str, typer.Option(help="Episodes of this role (teacher, student, any).")]
FilterOutcome = Annotated[str, typer.Option("--outcome", help="success, failure or any.")]
FilterEnv = Annotated[str, typer.Option("--env", help="Environment.")]
FilterSplit = Annotated[str, typer.Option("--split", help="Task split ('any' for all).")]
FilterRuns = Annotated[Optional[list[str]], typer.Option("--run", help="Only these runs (repeatable).")]
FilterTasks = Annotated[Optional[list[str]], typer.Option("--task", help="Only these tasks (repeatable).")]
WindowOpt = Annotated[int, typer.Option("--window", help="History turns, as the student policy's `history`.")]


def _episode_filter(role: str, outcome: str, env: str, split: str, run_ids, task, store):
    from agentdistill.train.data import EpisodeFilter

    if outcome not in ("success", "failure", "any"):
        raise AgentDistillError(f"--outcome {outcome!r}: use success, failure or any")
    return EpisodeFilter(
        role=None if role == "any" else role,
        success={"success": True, "failure": False, "any": None}[outcome],
        env=env,
        runs=[store.get_run(r).id for r in run_ids] if run_ids else None,
        split=None if split == "any" else split,
        tasks=task or None,
    )


def _build_dataset(store, base_model, out, filt, window, unit, max_length):
    from transformers import AutoTokenizer

    from agentdistill.train.data import build_sft_dataset
    from agentdistill.train.model import base_checkpoint

    tok = AutoTokenizer.from_pretrained(base_checkpoint(base_model))
    return build_sft_dataset(store, tok, out, filt, window=window, unit=unit, max_length=max_length)


@train_app.command("gguf")
def train_gguf_cmd(
    checkpoint: Annotated[str, typer.Argument(help="A checkpoint or LoRA adapter directory (local/... ids too).")],
    out: Annotated[Path, typer.Option("--out", help="The .gguf file to write.")],
    outtype: Annotated[str, typer.Option(help="f32 | f16 | bf16 | q8_0")] = "q8_0",
) -> None:
    """Export a trained student as one GGUF file, to serve with `llamacpp/<file.gguf>` or any llama.cpp server.

    Example: agentdistill train gguf .agentdistill/checkpoints/default-sft-... --out sft.gguf
    """
    from agentdistill.models.gguf_export import OUTTYPES, export_gguf
    from agentdistill.models.local import resolve_checkpoint

    if outtype not in OUTTYPES:
        raise AgentDistillError(f"--outtype {outtype}: use one of {', '.join(OUTTYPES)}")
    path = resolve_checkpoint(checkpoint.removeprefix("local/"))
    export_gguf(path, out, outtype)
    console.print(f"{out} ({out.stat().st_size / 2**20:.0f} MiB, {outtype}): serve it as llamacpp/{out}")


@train_app.command("data")
def train_data(
    out: Annotated[Path, typer.Argument(help="Directory for the Hugging Face dataset.")],
    base_model: Annotated[str, typer.Option(help="Whose tokenizer and chat template to use.")] = "local/smollm2-135m",
    role: FilterRole = "teacher",
    outcome: FilterOutcome = "success",
    env: FilterEnv = "scienceworld",
    split: FilterSplit = "train",
    run_ids: FilterRuns = None,
    task: FilterTasks = None,
    window: WindowOpt = 4,
    unit: Annotated[str, typer.Option(help="chunks (each turn once) or steps (one chat per step).")] = "chunks",
    max_length: Annotated[int, typer.Option(help="Longer chats are dropped, not cut.")] = 2048,
    db: DbOpt = None,
) -> None:
    """Build a multi-turn chat SFT dataset with loss on the agent's turns only.

    Example: agentdistill train data data/sft --role teacher --task power-component
    """
    store = _store(db)
    filt = _episode_filter(role, outcome, env, split, run_ids, task, store)
    dataset_id, ds = _build_dataset(store, base_model, out, filt, window, unit, max_length)
    tokens = sum(len(x) for x in ds["input_ids"])
    agent = sum(sum(m) for m in ds["assistant_masks"])
    console.print(f"dataset {dataset_id}: {out} ({len(ds)} chats, {tokens} tokens, {agent} agent tokens with loss)")


@train_app.command("sft")
def train_sft_cmd(
    out: Annotated[Path, typer.Argument(help="Checkpoint directory; use it as student model local/<out>.")],
    dataset: Annotated[Optional[str], typer.Option(help="Dataset id or path (`train data`); default: build one.")] = None,
    base_model: Annotated[str, typer.Option(help="local/<name|checkpoint|adapter dir>.")] = "local/smollm2-135m",
    role: FilterRole = "teacher",
    outcome: FilterOutcome = "success",
    env: FilterEnv = "scienceworld",
    split: FilterSplit = "train",
    run_ids: FilterRuns = None,
    task: FilterTasks = None,
    window: WindowOpt = 4,
    full: Annotated[bool, typer.Option("--full", help="Full fine-tune instead of LoRA.")] = False,
    lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
    epochs: Annotated[float, typer.Option(help="Epochs.")] = 3.0,
    max_steps: Annotated[int, typer.Option(help="Optimizer steps (> 0 overrides epochs).")] = -1,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = 2e-4,
    batch_size: Annotated[int, typer.Option(help="Per-device batch size.")] = 4,
    grad_accum: Annotated[int, typer.Option(help="Gradient accumulation steps.")] = 1,
    max_length: Annotated[int, typer.Option(help="Max tokens per chat.")] = 2048,
    device: Annotated[str, typer.Option(help="auto, cuda or cpu.")] = "auto",
    merge: Annotated[bool, typer.Option(help="Save merged full weights instead of the adapter.")] = False,
    db: DbOpt = None,
) -> None:
    """Supervised fine-tuning on stored episodes with TRL's SFTTrainer (+ PEFT LoRA).

    Example: agentdistill train sft ckpt/sft --task power-component && agentdistill collect --policy local/ckpt/sft
    """
    from agentdistill.train.data import load_dataset_ref
    from agentdistill.train.model import Hardware, LoraSpec
    from agentdistill.train.sft import SFTSpec, train_sft

    hw = Hardware.pick(device)  # fail on a bad device before any work
    store = _store(db)
    if dataset:
        dataset_id, ds = load_dataset_ref(store, dataset)
    else:
        filt = _episode_filter(role, outcome, env, split, run_ids, task, store)
        dataset_id, ds = _build_dataset(store, base_model, out.with_name(out.name + ".data"), filt, window, "chunks",
                                        max_length)
    spec = SFTSpec(base_model=base_model, lora=None if full else LoraSpec(r=lora_r, alpha=2 * lora_r), epochs=epochs,
                   max_steps=max_steps, learning_rate=lr, batch_size=batch_size, grad_accum=grad_accum,
                   max_length=max_length, merge=merge)
    result = train_sft(store, ds, out, spec, hw, dataset_id)
    m = result.metrics
    console.print(f"checkpoint {result.checkpoint_id}: {out} ({m['steps']} steps, loss {m['first_loss']:.3f} -> "
                  f"{m['last_loss']:.3f}, {m['tokens_per_s']:.0f} tokens/s on {m['device']}); "
                  f"use it as model local/{out}")


@train_app.command("opd")
def train_opd_cmd(
    out: Annotated[Path, typer.Argument(help="Checkpoint directory; use it as student model local/<out>.")],
    student: Annotated[str, typer.Option(help="local/<name|checkpoint|adapter dir> to start from.")] = "local/smollm2-135m",
    teacher: Annotated[Optional[str], typer.Option(help="Teacher local model (same tokenizer); default: the student's own weights + --context.")] = None,
    context: Annotated[str, typer.Option(help="Teacher's privileged context: none, demo (stored expert solution) or skill.")] = "none",
    skill: Annotated[Optional[list[str]], typer.Option("--skill", help="SKILL.md for --context skill (repeatable); default: from the store.")] = None,
    method: Annotated[str, typer.Option(help="opd or skill-sd.")] = "opd",
    divergence: Annotated[str, typer.Option(help="reverse_kl, forward_kl or jsd.")] = "reverse_kl",
    curriculum: Annotated[str, typer.Option(help="TCOD curriculum: none, f2b or b2f.")] = "none",
    k_start: Annotated[int, typer.Option(help="TCOD: turns at iteration 0.")] = 1,
    eta: Annotated[int, typer.Option(help="TCOD: iterations per extra turn.")] = 1,
    k_max: Annotated[Optional[int], typer.Option(help="TCOD: most turns.")] = None,
    env: Annotated[str, typer.Option(help="Environment.")] = "scienceworld",
    split: Annotated[str, typer.Option(help="Training task split.")] = "train",
    task: Annotated[Optional[list[str]], typer.Option("--task", help="Training tasks (repeatable); default all.")] = None,
    variations: Annotated[int, typer.Option(help="Variations per task.")] = 4,
    iterations: Annotated[int, typer.Option(help="Rollout + update iterations.")] = 8,
    episodes: Annotated[int, typer.Option(help="Student episodes per iteration.")] = 2,
    max_steps: Annotated[int, typer.Option(help="Student step limit (full horizon).")] = 12,
    history: Annotated[int, typer.Option(help="History turns the student sees.")] = 4,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = 1e-4,
    lam: Annotated[float, typer.Option("--lambda", help="Skill-SD: weight of the distillation term.")] = 1.0,
    grpo_weight: Annotated[float, typer.Option(help="Skill-SD: weight of the outcome-reward term.")] = 0.0,
    rollout_backend: Annotated[str, typer.Option(help="local (transformers) or vllm (CUDA GPU: the live LoRA adapter served each iteration).")] = "local",
    temperature: Annotated[float, typer.Option(help="Rollout sampling temperature.")] = 0.7,
    self_teacher: Annotated[str, typer.Option(help="Without --teacher: frozen (the starting weights) or live (the current student).")] = "frozen",
    anchor_kl: Annotated[float, typer.Option(help="Weight of KL(student || starting policy).")] = 0.1,
    dev_variations: Annotated[int, typer.Option(help="Dev tasks per task that pick the kept iteration (0: keep the last).")] = 0,
    device: Annotated[str, typer.Option(help="auto, cuda or cpu.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    db: DbOpt = None,
) -> None:
    """On-policy distillation: the student rolls out in the env, the teacher scores its tokens.

    Example: agentdistill train opd ckpt/tcod --context demo --curriculum f2b --task power-component
    """
    from agentdistill.train.curriculum import Curriculum
    from agentdistill.train.model import Hardware
    from agentdistill.train.opd import OPDSpec, train_opd

    hw = Hardware.pick(device)
    spec = OPDSpec(student=student, teacher=teacher, context=context, skills=skill or [], method=method,
                   divergence=divergence, curriculum=Curriculum(curriculum, k_start, eta, k_max), env=env, split=split,
                   tasks=task or None, variations=variations, iterations=iterations, episodes_per_iteration=episodes,
                   max_steps=max_steps, history=history, learning_rate=lr, skill_sd_lambda=lam,
                   grpo_weight=grpo_weight, rollout_backend=rollout_backend, temperature=temperature,
                   self_teacher=self_teacher, anchor_kl=anchor_kl, dev_variations=dev_variations, seed=seed)
    spec.validate()
    store = _store(db)
    result = train_opd(store, spec, out, hw)
    table = Table(box=box.SIMPLE_HEAD, title=f"{spec.method_name}: run {result.run_id}")
    for col in ("iter", "k", "success", "score", "turns", "divergence", "loss"):
        table.add_column(col, justify="right")
    for it in result.iterations:
        div = "-" if it["divergence"] is None else f"{it['divergence']:.4f}"
        loss = "-" if it["loss"] is None else f"{it['loss']:.4f}"
        table.add_row(str(it["iteration"]), str(it["k"] or "full"), f"{it['success']:.0%}", f"{it['score']:.1f}",
                      f"{it['student_turns']:.1f}", div, loss)
    console.print(table)
    if result.kept.get("dev_success") is not None:
        console.print(f"kept {result.kept['name']} (dev success {result.kept['dev_success']:.0%})")
    console.print(f"checkpoint {result.checkpoint_id}: {result.path}; use it as model local/{result.path}")


@train_app.command("dagger")
@config_options(DAggerConfig)
def train_dagger_cmd(
    out: Annotated[Path, typer.Argument(help="Checkpoint directory; use it as student model local/<out>.")],
    config: DAggerConfig,
    student: Annotated[str, typer.Option(help="local/<name|checkpoint|adapter dir> to start from (e.g. an SFT checkpoint).")] = "local/smollm2-135m",
    env: FilterEnv = "textworld",
    split: Annotated[str, typer.Option(help="Training task split.")] = "train",
    task: FilterTasks = None,
    variations: Annotated[int, typer.Option(help="Training variations per task the student plays from.")] = 50,
    history: Annotated[int, typer.Option(help="History turns the student sees (as when it was trained).")] = 2,
    max_tokens: Annotated[int, typer.Option(help="The student's reply limit.")] = 24,
    eval_steps: Annotated[int, typer.Option(help="Step limit of dev episodes (and of rollouts unless --max-steps).")] = 10,
    lora_r: Annotated[int, typer.Option(help="LoRA rank of a new adapter (an adapter as --student is continued).")] = 16,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = 1e-3,
    db: DbOpt = None,
) -> None:
    """DAgger: the student plays train tasks, a black-box teacher (the env's expert, or any model given the
    student's prompt) labels every state it visited, and it is retrained on the growing labelled set.

    Example: agentdistill train dagger ckpt/dagger --student local/ckpt/sft --env textworld --task medium
    """
    from agentdistill.config import PolicySpec
    from agentdistill.train.dagger import dagger_setup, train_dagger
    from agentdistill.train.model import LoraSpec

    store = _store(db)
    demos = store.episode_ids("teacher", True, env, None, split, task, None) if config.teacher_data else []
    setup = dagger_setup(store, config, student_spec=PolicySpec(model=student, history=history, max_tokens=max_tokens),
                         teacher=config.teacher or "expert", env=env, env_options={}, task_names=task, split=split,
                         variations=variations, start=student, teacher_episodes=demos, max_steps=eval_steps,
                         lora=LoraSpec(r=lora_r, alpha=2 * lora_r), learning_rate=lr)
    console.print(f"dagger: {config.rounds} rounds x {config.episodes_per_round} episodes on {len(setup.train_tasks)} "
                  f"{env} tasks, labels by {setup.labeller.id}, from {len(demos)} teacher episodes")
    result = train_dagger(store, config, setup, out, say=console.print)
    kept = result.kept
    console.print(f"kept {kept['name']}" + (f" (dev success {kept['dev_success']:.0%})" if kept.get("dev_success") is not None else "")
                  + f"; checkpoint {result.checkpoint_id}: {result.path}; use it as model {result.model}")


skills_app = typer.Typer(no_args_is_help=True, help="Skill packs: the versioned library and installs into agent hosts.")
app.add_typer(skills_app, name="skills")

HostOpt = Annotated[str, typer.Option("--host", help="claude-code, codex, gemini-cli, opencode, goose, cursor, or all.")]
ScopeOpt = Annotated[str, typer.Option("--scope", help="user (~/...) or project (./...).")]
ProjectOpt = Annotated[Optional[Path], typer.Option("--project", help="Project root for --scope project [default: .].")]


@skills_app.command("list")
def skills_list(
    installed_: Annotated[bool, typer.Option("--installed", help="What is installed where, instead of the library.")] = False,
    host: HostOpt = "all",
    project: ProjectOpt = None,
    db: DbOpt = None,
) -> None:
    """The library's skills and versions, or (--installed) the skills in agent hosts' directories."""
    table = Table(box=box.SIMPLE_HEAD)
    if installed_:
        from agentdistill.skills.hosts import installed

        for col in ("host", "scope", "skill", "version", "managed", "path"):
            table.add_column(col)
        for i in installed(host, project=project):
            table.add_row(i.host, i.scope, i.name, str(i.version or "-"), "yes" if i.managed else "no", str(i.path))
    else:
        from agentdistill.skills import library

        for col in ("skill", "version", "distiller", "run", "sha256", "created"):
            table.add_column(col)
        for v in library.versions(_store(db, create=False)):
            table.add_row(v.name, str(v.version), v.distiller or "-", v.run_id or "-", v.sha256[:12],
                          str(v.created_at)[:19])
    console.print(table)


@skills_app.command("show")
def skills_show(name: str, version: Annotated[Optional[int], typer.Option(help="Default: latest.")] = None,
                db: DbOpt = None) -> None:
    """A skill version's provenance and SKILL.md."""
    from agentdistill.skills import library

    v = library.get(_store(db, create=False), name, version)
    console.print(f"{v.name} v{v.version} (id {v.id}, parent {v.parent_id or '-'}, distiller {v.distiller or '-'}, "
                  f"run {v.run_id or '-'}, sha256 {v.sha256[:12]}) files: {', '.join(sorted(v.pack.files))}",
                  highlight=False)
    if v.metrics:
        console.print(f"metrics: {v.metrics}", highlight=False)
    console.print(v.pack.files["SKILL.md"], markup=False, highlight=False)


@skills_app.command("validate")
def skills_validate(paths: Annotated[list[Path], typer.Argument(help="Skill pack directories.")]) -> None:
    """Check packs against the Agent Skills spec (skills-ref) and our layout rules."""
    from agentdistill.skills.pack import SkillPack

    bad = 0
    for p in paths:
        errors = SkillPack.load(p).validate()
        bad += bool(errors)
        console.print(f"{p}: " + ("valid" if not errors else "; ".join(errors)), highlight=False)
    if bad:
        raise typer.Exit(1)


@skills_app.command("add")
def skills_add(path: Annotated[Path, typer.Argument(help="Skill pack directory to store as a new version.")],
               db: DbOpt = None) -> None:
    """Store a pack from disk as the next version of its skill."""
    from agentdistill.skills import library
    from agentdistill.skills.pack import SkillPack

    pack = SkillPack.load(path)  # a bad pack is refused before the store is opened
    library.check_valid(pack)
    v = library.save(_store(db), pack, distiller="import")
    console.print(f"{v.name} v{v.version} (sha256 {v.sha256[:12]})")


@skills_app.command("diff")
def skills_diff(name: str, a: int, b: int, db: DbOpt = None) -> None:
    """Unified diff between two versions of a skill."""
    from agentdistill.skills import library

    console.print(library.diff(_store(db, create=False), name, a, b) or "(identical)", markup=False, highlight=False)


@skills_app.command("rollback")
def skills_rollback(name: str, version: int, db: DbOpt = None) -> None:
    """Make an old version's contents the latest version (history is kept)."""
    from agentdistill.skills import library

    v = library.rollback(_store(db, create=False), name, version)
    console.print(f"{v.name} v{v.version} now has the contents of v{version}")


@skills_app.command("install")
def skills_install(
    name: str,
    host: HostOpt = "claude-code",
    scope: ScopeOpt = "project",
    version: Annotated[Optional[int], typer.Option(help="Default: latest (also how to upgrade or roll back).")] = None,
    project: ProjectOpt = None,
    db: DbOpt = None,
) -> None:
    """Install (or upgrade / roll back) a library skill into agent hosts; never touches unmanaged skills."""
    from agentdistill.skills import hosts, library

    store = _store(db, create=False)
    v = library.get(store, name, version)
    known = lambda n, sha: library.has(store, n, sha)  # noqa: E731  (markers are verified against the store)
    for h in hosts.hosts(host):
        if host == "all" and (h.user if scope == "user" else h.project) is None:
            console.print(f"{h.name}: no {scope}-scope skills directory, skipped")
            continue
        path = hosts.install(v.pack, h, scope, version=v.version, project=project, known=known)
        console.print(f"{h.name}: {name} v{v.version} -> {path}", highlight=False)


@skills_app.command("uninstall")
def skills_uninstall(name: str, host: HostOpt = "claude-code", scope: ScopeOpt = "project",
                     project: ProjectOpt = None, db: DbOpt = None) -> None:
    """Remove a skill agentdistill installed (and the directories its install created)."""
    from agentdistill.skills import hosts, library

    store = _store(db, create=False)
    known = lambda n, sha: library.has(store, n, sha)  # noqa: E731  (markers are verified against the store)
    for h in hosts.hosts(host):
        if host == "all":
            base = (h.user if scope == "user" else h.project)
            if base is None or not (hosts.skills_dir(h, scope, project) / name).exists():
                continue
        console.print(f"{h.name}: removed {hosts.uninstall(name, h, scope, project=project, known=known)}", highlight=False)


@app.command("eval")
def eval_cmd(
    skill: Annotated[str, typer.Option(help="Skill pack: library name (name or name@3) or a pack directory.")],
    model: Annotated[str, typer.Option(help="The student model id.")] = "local/smollm2-135m",
    api_base: Annotated[Optional[str], typer.Option(help="OpenAI-compatible server URL for the model.")] = None,
    mode: Annotated[str, typer.Option(help="inline or progressive (names listed, bodies loaded on request).")] = "inline",
    env: Annotated[str, typer.Option(help="Environment.")] = "scienceworld",
    split: Annotated[str, typer.Option(help="Held-out split.")] = "test",
    task: Annotated[Optional[list[str]], typer.Option("--task", help="Task (repeatable); default all.")] = None,
    variations: Annotated[int, typer.Option(help="Variations per task.")] = 5,
    max_steps: Annotated[int, typer.Option(help="Step limit per episode.")] = 20,
    max_tokens: Annotated[int, typer.Option(help="Max tokens per model call.")] = 64,
    history: Annotated[int, typer.Option(help="History turns the student sees.")] = 4,
    concurrency: Annotated[int, typer.Option(help="Episodes at once.")] = 2,
    db: DbOpt = None,
) -> None:
    """Paired A/B evaluation: the same student and tasks with and without a skill pack.

    Example: agentdistill eval --skill measure-temperature --task measure-melting-point-known-substance
    """
    from agentdistill.skills.evaluate import ab_evaluate

    if mode not in ("inline", "progressive"):
        raise AgentDistillError(f"--mode {mode!r}: use inline or progressive")
    student: dict = {"model": model, "max_tokens": max_tokens, "history": history}
    if api_base:
        student["api_base"] = api_base
    r = ab_evaluate(_store(db), skill, student,
                    {"name": env, "split": split, "tasks": task or None, "variations": variations},
                    {"concurrency": concurrency, "max_steps": max_steps}, mode)
    for what in ("success", "score", "valid_actions"):
        m = r.metrics[what]
        fmt = "{:.1f}" if what == "score" else "{:.0%}"
        console.print(f"{what}: without {fmt.format(m['without'])}, with {fmt.format(m['with'])}; difference "
                      f"{fmt.format(m['diff'])} [95% CI {fmt.format(m['ci95'][0])}, {fmt.format(m['ci95'][1])}] "
                      f"over {r.pairs} paired episodes", highlight=False)
    console.print(f"evaluation {r.evaluation_id}: runs without={r.runs['without']} with={r.runs['with']}")


@skills_app.command("distill")
def skills_distill(
    name: Annotated[str, typer.Option(help="Skill name (lowercase, hyphens).")],
    method: Annotated[str, typer.Option(help="trace2skill (SPARK: `skills spark`).")] = "trace2skill",
    analyst: Annotated[str, typer.Option(help="trace (deterministic, reads the steps) or a model id.")] = "trace",
    api_base: Annotated[Optional[str], typer.Option(help="OpenAI-compatible server URL for the analyst model.")] = None,
    mode: Annotated[str, typer.Option(help="create, or deepen the latest version.")] = "create",
    description: Annotated[Optional[str], typer.Option(help="Description for a new pack.")] = None,
    role: FilterRole = "any",
    outcome: FilterOutcome = "any",
    env: FilterEnv = "scienceworld",
    split: FilterSplit = "any",
    run_ids: FilterRuns = None,
    task: FilterTasks = None,
    concurrency: Annotated[int, typer.Option(help="Analysts at once.")] = 8,
    db: DbOpt = None,
) -> None:
    """Distill stored trajectories into a skill pack version (Trace2Skill).

    Example: agentdistill skills distill --name power-component --task power-component --analyst openai/gpt-4.1-mini
    """
    from agentdistill.skills.trace2skill import LLMAnalyst, TraceAnalyst, distill

    if method != "trace2skill":
        raise AgentDistillError(f"--method {method!r}: use trace2skill (SPARK runs episodes: `agentdistill skills spark`)")
    store = _store(db)
    episodes = _episode_filter(role, outcome, env, split, run_ids, task, store).select(store)
    if analyst == "trace":
        agent = TraceAnalyst()
    else:
        from agentdistill.models import make_model

        agent = LLMAnalyst(make_model(analyst, **({"api_base": api_base} if api_base else {})))
    r = distill(store, episodes, name=name, analyst=agent, description=description, mode=mode, concurrency=concurrency)
    v = r.version
    console.print(f"{v.name} v{v.version} from {len(episodes)} trajectories: {r.proposed} operations proposed, "
                  f"{len(v.pack.files)} file(s); merged in {r.levels} level(s), {len(r.dropped)} dropped as "
                  f"duplicates/conflicts, {len(r.skipped)} skipped, {len(r.invalid)} invalid", highlight=False)


@skills_app.command("spark")
def skills_spark(
    name: Annotated[str, typer.Option(help="Skill name (lowercase, hyphens).")],
    model: Annotated[str, typer.Option(help="The exploring agent's model id.")] = "local/smollm2-135m",
    api_base: Annotated[Optional[str], typer.Option(help="OpenAI-compatible server URL for the agent.")] = None,
    fallback: Annotated[Optional[str], typer.Option(help="Make the agent a cascade with this teacher: expert or a model id.")] = None,
    threshold: Annotated[float, typer.Option(help="Cascade agreement threshold.")] = 0.5,
    reflector: Annotated[str, typer.Option(help="trace (deterministic) or a model id for reflection and distillation.")] = "trace",
    env: Annotated[str, typer.Option(help="Environment.")] = "scienceworld",
    split: Annotated[str, typer.Option(help="Task split.")] = "train",
    task: Annotated[Optional[list[str]], typer.Option("--task", help="Task (repeatable); default all.")] = None,
    variations: Annotated[int, typer.Option(help="Variations per task.")] = 1,
    attempts: Annotated[int, typer.Option(help="Attempts per task (execute, judge, reflect, retry).")] = 3,
    max_steps: Annotated[int, typer.Option(help="Step limit per attempt.")] = 30,
    pdi: Annotated[str, typer.Option(help="Posterior Distillation Index: off, observe or intervene.")] = "intervene",
    pdi_method: Annotated[str, typer.Option(help="token_overlap or js_divergence.")] = "token_overlap",
    concurrency: Annotated[int, typer.Option(min=1, help="Tasks explored at once (each its own env and memo).")] = 1,
    db: DbOpt = None,
) -> None:
    """SPARK: explore each task with retries and an evolving memo (PDI online), distill the verified runs.

    Example: agentdistill skills spark --name power --task power-component --model local/smollm2-135m --fallback expert
    """
    from agentdistill.agents.rollout import build_policy, select_tasks
    from agentdistill.config import PolicySpec, parse_recipe
    from agentdistill.envs import make
    from agentdistill.models import make_model
    from agentdistill.skills.spark import LLMReflector, TraceReflector, distill_spark, run_spark

    if pdi not in ("off", "observe", "intervene"):
        raise AgentDistillError(f"--pdi {pdi!r}: use off, observe or intervene")
    spec: dict = {"model": model, "max_tokens": 48, "history": 4}
    if api_base:
        spec["api_base"] = api_base
    if fallback:
        spec.update(policy="cascade", n=3, temperature=0.7, threshold=threshold,
                    fallback={"policy": "expert"} if fallback == "expert" else {"model": fallback})
    recipe = parse_recipe({"env": {"name": env, "split": split, "tasks": task or None, "variations": variations},
                           "student": spec}, "spark options")
    store = _store(db)
    policy = build_policy(PolicySpec.model_validate(spec), store, env)
    probe = make(env)
    try:
        tasks = select_tasks(probe, recipe)
    finally:
        probe.close()
    refl = TraceReflector() if reflector == "trace" else LLMReflector(make_model(reflector))
    run_id, outcomes = run_spark(store, policy, env, tasks, max_attempts=attempts, max_steps=max_steps, pdi=pdi,
                                 pdi_method=pdi_method, reflector=refl, run_name=f"spark-{name}",
                                 concurrency=concurrency)
    for o in outcomes:
        trail = ", ".join(f"{a.status} {a.score}" for a in o.attempts)
        pdis = ", ".join(f"{s.weighted_pdi:.2f}{'*' if s.triggered else ''}" for s in o.pdi) or "-"
        console.print(f"{o.task.key}: {trail}; PDI {pdis}", highlight=False)
    v = distill_spark(store, outcomes, name, run_id, summarizer=None if reflector == "trace" else refl.model)
    console.print(f"{v.name} v{v.version}: {v.metrics['solved']}/{v.metrics['tasks']} tasks solved, mean PDI "
                  f"{v.pack.metadata['pdi']}, {v.metrics['interventions']} intervention(s); run {run_id}")


@skills_app.command("export")
def skills_export(name: str, out: Annotated[Path, typer.Argument(help="Parent directory; the pack is written to OUT/NAME.")],
                  version: Annotated[Optional[int], typer.Option(help="Default: latest.")] = None,
                  db: DbOpt = None) -> None:
    """Write a library version to disk as a skill pack directory."""
    from agentdistill.skills import library

    v = library.get(_store(db, create=False), name, version)
    path = v.pack.write(out / v.name)
    console.print(f"{v.name} v{v.version} -> {path}", highlight=False)
