"""What the viewer's pages read from the store: one function per page, filtered and paged in SQL.

Nothing here writes. Lists fetch one row more than a page to know whether a next page exists, so no
page counts the whole table (a 100k-step store answers its first page in milliseconds).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import case, exists, func, or_, select
from sqlalchemy.orm import aliased, selectinload

from agentdistill.report.efficiency import Efficiency, episode_efficiency, pooled
from agentdistill.report.summary import summarize
from agentdistill.store.models import (Checkpoint, Dataset, Episode, Evaluation, Run, Skill, SkillVersion, Stage,
                                       Step, Task)
from agentdistill.store.store import Store, latest_attempt


class NotFound(LookupError):
    """A run, episode, skill, ... the URL names is not in the store (the page answers 404)."""


@dataclass
class Page:
    rows: list[Any]
    number: int
    size: int
    has_next: bool
    extra: dict[str, Any] = field(default_factory=dict)


def _paged(rows: list[Any], number: int, size: int) -> Page:
    return Page(rows[:size], number, size, len(rows) > size)


def _newest_first(store: Store, model, number: int, size: int) -> Page:
    """One page of a table's rows, newest first (one row more than the page tells whether another follows)."""
    with store.session() as s:
        rows = list(s.scalars(select(model).order_by(model.id.desc()).offset((number - 1) * size).limit(size + 1)))
    return _paged(rows, number, size)


# ---- runs ----------------------------------------------------------------------------------------------
def runs_page(store: Store, *, kind: str = "", status: str = "", env: str = "", model: str = "", number: int = 1,
              size: int = 50) -> Page:
    ep = aliased(Episode)
    q = (select(Run, func.count(Episode.id), func.count(case((Episode.status == "done", 1))),
                func.count(case((Episode.status == "error", 1))), func.count(case((Episode.success.is_(True), 1))))
         .outerjoin(Episode, (Episode.run_id == Run.id) & latest_attempt())
         .group_by(Run.id).order_by(Run.created_at.desc(), Run.id))
    if kind:
        q = q.where(Run.kind == kind)
    if status:
        q = q.where(Run.status == status)
    if env:
        q = q.where(exists().where(ep.run_id == Run.id, ep.task_id == Task.id, Task.env == env))
    if model:
        like = f"%{model}%"
        q = q.where(exists().where(ep.run_id == Run.id, or_(ep.model.like(like), ep.policy_id.like(like))))
    with store.session() as s:
        rows = s.execute(q.offset((number - 1) * size).limit(size + 1)).all()
    return _paged([{"run": r, "episodes": n, "done": d, "errors": e, "successes": w} for r, n, d, e, w in rows],
                  number, size)


def run_filter_choices(store: Store) -> dict[str, list[str]]:
    with store.session() as s:
        return {"kind": list(s.scalars(select(Run.kind).distinct().order_by(Run.kind))),
                "status": list(s.scalars(select(Run.status).distinct().order_by(Run.status))),
                "env": list(s.scalars(select(Task.env).distinct().order_by(Task.env)))}


def any_running(page: Page) -> bool:
    return any(r["run"].status == "running" for r in page.rows)


# ---- one run -------------------------------------------------------------------------------------------
def run_detail(store: Store, run_id: str) -> dict[str, Any]:
    with store.session() as s:
        run = s.get(Run, run_id)
        if run is None:
            found = s.scalars(select(Run).where(Run.id.startswith(run_id, autoescape=True)).limit(2)).all() if run_id else []
            if len(found) != 1:
                raise NotFound(f"no run {run_id!r} in this store")
            run = found[0]
        stages = list(s.scalars(select(Stage).where(Stage.run_id == run.id).order_by(Stage.id)))
        evaluations = list(s.scalars(select(Evaluation).order_by(Evaluation.id.desc()).limit(500)))
    return {"run": run, "stages": stages,
            "evaluations": [ev for ev in evaluations if run.id in (ev.run_ids or [])]}


def role_rows(store: Store, run_id: str) -> list[dict[str, Any]]:
    """Per-role summary of a run (report.summary) with its pooled efficiency."""
    episodes = store.episodes(run_id=run_id)
    per = episode_efficiency(store, [e.id for e in episodes if e.status != "running"])
    out = []
    for summary in summarize(episodes):
        eff = pooled(per.get(e.id, Efficiency()) for e in episodes if e.role == summary.role)
        out.append({"summary": summary, "efficiency": eff})
    return out


def arm_rows(store: Store, stages: list[Stage]) -> list[dict[str, Any]]:
    """Per-arm rows of a pipeline run: each finished eval stage's run, summarized like a role."""
    out = []
    for st in stages:
        run_id = (st.outputs or {}).get("run_id")
        if st.kind != "eval" or not run_id:
            continue
        for row in role_rows(store, run_id):
            out.append({"arm": st.name.removeprefix("eval."), "run_id": run_id, **row})
    return out


def episodes_page(store: Store, run_id: str, *, role: str = "", outcome: str = "", number: int = 1,
                  size: int = 50) -> Page:
    q = (select(Episode).options(selectinload(Episode.task)).where(Episode.run_id == run_id, latest_attempt())
         .order_by(Episode.plan_index, Episode.id))
    if role:
        q = q.where(Episode.role == role)
    if outcome == "success":
        q = q.where(Episode.success.is_(True))
    elif outcome == "failure":
        q = q.where(Episode.status == "done", Episode.success.isnot(True))
    elif outcome in ("error", "running"):
        q = q.where(Episode.status == outcome)
    with store.session() as s:
        rows = list(s.scalars(q.offset((number - 1) * size).limit(size + 1)))
    page = _paged(rows, number, size)
    page.extra["efficiency"] = episode_efficiency(store, [e.id for e in page.rows])
    return page


# ---- one episode ---------------------------------------------------------------------------------------
def episode_detail(store: Store, episode_id: int) -> dict[str, Any]:
    with store.session() as s:
        ep = s.scalar(select(Episode).options(selectinload(Episode.task), selectinload(Episode.run))
                      .where(Episode.id == episode_id))
        if ep is None:
            raise NotFound(f"no episode {episode_id} in this store")
        attempts = list(s.scalars(select(Episode.id).where(Episode.run_id == ep.run_id,
                                                           Episode.plan_index == ep.plan_index).order_by(Episode.attempt)))
        skill = None
        if ep.skill_version_id:
            row = s.execute(select(Skill.name, SkillVersion.version).join(SkillVersion, SkillVersion.skill_id == Skill.id)
                            .where(SkillVersion.id == ep.skill_version_id)).first()
            skill = {"name": row[0], "version": row[1]} if row else None
    eff = episode_efficiency(store, [ep.id]).get(ep.id, Efficiency())
    return {"episode": ep, "attempts": attempts, "skill": skill, "efficiency": eff}


def steps_page(store: Store, episode_id: int, *, number: int = 1, size: int = 25) -> Page:
    with store.session() as s:
        rows = list(s.scalars(select(Step).options(selectinload(Step.calls)).where(Step.episode_id == episode_id)
                              .order_by(Step.idx).offset((number - 1) * size).limit(size + 1)))
    return _paged(rows, number, size)


def who_answered(episode: Episode, step: Step) -> str:
    """student, teacher or replay: what a reader wants to know of a step, whatever the policy's id."""
    info = step.info or {}
    if info.get("replayed") or step.answered_by == "replay":
        return "replay"
    if info.get("deferred") or episode.role == "teacher":
        return "teacher"
    return "student"


# ---- skills --------------------------------------------------------------------------------------------
def skills_list(store: Store) -> list[dict[str, Any]]:
    with store.session() as s:
        q = (select(Skill, func.count(SkillVersion.id), func.max(SkillVersion.version))
             .outerjoin(SkillVersion, SkillVersion.skill_id == Skill.id).group_by(Skill.id).order_by(Skill.name))
        return [{"skill": sk, "versions": n, "latest": v} for sk, n, v in s.execute(q)]


def skill_detail(store: Store, name: str) -> dict[str, Any]:
    with store.session() as s:
        skill = s.scalar(select(Skill).where(Skill.name == name))
        if skill is None:
            raise NotFound(f"no skill {name!r} in this store")
        versions = list(s.scalars(select(SkillVersion).where(SkillVersion.skill_id == skill.id)
                                  .order_by(SkillVersion.version)))
        ids = [v.id for v in versions]
        evaluations = list(s.scalars(select(Evaluation).where(Evaluation.skill_version_id.in_(ids))
                                     .order_by(Evaluation.id))) if ids else []
        used = dict(s.execute(select(Episode.skill_version_id, func.count(Episode.id))
                              .where(Episode.skill_version_id.in_(ids)).group_by(Episode.skill_version_id)).all()) if ids else {}
    return {"skill": skill, "versions": versions, "evaluations": evaluations, "episodes_using": used}


def installs(name: str, versions: list[SkillVersion]) -> list[dict[str, Any]]:
    """Where the skill is installed in the agent hosts' folders (user scope and this directory's project)."""
    from agentdistill.skills.hosts import installed

    by_sha = {v.sha256: v.version for v in versions}
    out = []
    for inst in installed("all"):
        if inst.name == name:
            out.append({"host": inst.host, "scope": inst.scope, "path": str(inst.path), "managed": inst.managed,
                        "version": by_sha.get(inst.sha256 or "", inst.version)})
    return out


# ---- evaluations, checkpoints, datasets ----------------------------------------------------------------
def _get(store: Store, model, key: int, what: str):
    with store.session() as s:
        row = s.get(model, key)
        if row is None:
            raise NotFound(f"no {what} {key} in this store")
        return row


def evaluations_page(store: Store, number: int = 1, size: int = 50) -> Page:
    return _newest_first(store, Evaluation, number, size)


def evaluation(store: Store, evaluation_id: int) -> Evaluation:
    return _get(store, Evaluation, evaluation_id, "evaluation")


def skill_version_label(store: Store, version_id: int | None) -> dict[str, Any] | None:
    if version_id is None:
        return None
    with store.session() as s:
        row = s.execute(select(Skill.name, SkillVersion.version).join(SkillVersion, SkillVersion.skill_id == Skill.id)
                        .where(SkillVersion.id == version_id)).first()
    return {"name": row[0], "version": row[1]} if row else None


def checkpoints_page(store: Store, number: int = 1, size: int = 50) -> Page:
    return _newest_first(store, Checkpoint, number, size)


def checkpoint(store: Store, checkpoint_id: int) -> Checkpoint:
    return _get(store, Checkpoint, checkpoint_id, "checkpoint")


def training_curve(ckpt: Checkpoint) -> dict[str, Any] | None:
    """The curve report.html draws: loss per optimizer step, or OPD divergence per iteration."""
    m = ckpt.metrics or {}
    if m.get("loss_curve"):
        return {"kind": "loss", "x": [p[0] for p in m["loss_curve"]], "y": [p[1] for p in m["loss_curve"]],
                "method": ckpt.method}
    its = [it for it in m.get("iterations") or [] if isinstance(it, dict) and it.get("divergence") is not None]
    if its:
        return {"kind": "divergence", "x": [it["iteration"] for it in its], "y": [it["divergence"] for it in its],
                "method": ckpt.method}
    return None


def datasets_page(store: Store, number: int = 1, size: int = 50) -> Page:
    return _newest_first(store, Dataset, number, size)


def dataset(store: Store, dataset_id: int) -> Dataset:
    return _get(store, Dataset, dataset_id, "dataset")


def dataset_episodes(store: Store, ds: Dataset, number: int = 1, size: int = 50) -> Page:
    ids = [int(i) for i in (ds.episode_ids or []) if isinstance(i, int)]
    chunk = ids[(number - 1) * size: number * size]
    with store.session() as s:
        rows = list(s.scalars(select(Episode).options(selectinload(Episode.task)).where(Episode.id.in_(chunk))
                              .order_by(Episode.id))) if chunk else []
    return Page(rows, number, size, len(ids) > number * size, {"total": len(ids)})
