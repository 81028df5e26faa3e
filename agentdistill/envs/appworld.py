"""AppWorld (Trivedi et al., 2024): tasks over nine simulated apps, solved by writing Python code.

An action is a block of Python run in the task's persistent shell, where `apis.<app>.<api>(...)`
calls the apps (`apis.api_docs.*` documents them); the observation is what the code printed (or its
error). The episode ends when the code calls `apis.supervisor.complete_task(...)`; AppWorld's own
evaluation (its unit tests of the final database state) gives the score, the share of tests passed,
and success, all passed.

The `appworld` package pins old versions of pydantic, httpx and cryptography that agentdistill's
stack cannot share, so the real AppWorld runs as its environment server (`appworld serve
environment`, in its own venv or `docker/appworld`) and this adapter speaks that server's HTTP API
(/initialize, /execute, /task_completed, /evaluate, /close). A server holds one task at a time:
for concurrent episodes start several and list them in `APPWORLD_URL` (comma-separated).

Tasks: an AppWorld task id `<scenario>_<n>` is task `<scenario>`, variation n. The split lists
(train, dev, test_normal, test_challenge) are read from AppWorld's data (`$APPWORLD_ROOT/data/
datasets/<split>.txt`, from `appworld download data`); without them name task ids explicitly.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

from agentdistill.envs.base import Env, Observation, Requirement, StepResult, Task, http_status, python_package
from agentdistill.errors import ConfigError, EnvNotReady

DEFAULT_URL = "http://localhost:8000"
SPLITS = ("train", "dev", "test_normal", "test_challenge")
TASK_ID = re.compile(r"^([0-9a-f]+)_(\d+)$")
GET_DATA = ("in AppWorld's own venv: pip install appworld && appworld install && appworld download data, "
            "then export APPWORLD_ROOT=<the folder holding data/>")
START_SERVER = ("start AppWorld's server: in AppWorld's own venv, pip install appworld && appworld install && "
                "appworld download data && appworld serve environment --port 8000 (or: agentdistill envs up appworld)")

# servers in use by env instances of this process: each holds one task at a time
_claimed: set[str] = set()
_claim_lock = threading.Lock()


def server_urls(url: str | None = None) -> list[str]:
    raw = url or os.environ.get("APPWORLD_URL") or DEFAULT_URL
    return [u.strip().rstrip("/") for u in raw.split(",") if u.strip()]


def data_root(root: str | None = None) -> Path | None:
    root = root or os.environ.get("APPWORLD_ROOT")
    return Path(root) if root else None


def task_id(task: Task) -> str:
    return f"{task.name}_{task.variation}"


class AppWorldEnv(Env):
    name = "appworld"
    description = ("AppWorld: do a person's everyday tasks across apps (email, phone, calendar, music, shopping, "
                   "notes, payments, files) by writing Python code that calls the apps' APIs")
    action_help = (
        "Each action is Python code run in a persistent shell; print what you need to see. Call an app's API "
        "as apis.<app>.<api>(...). Find them with print(apis.api_docs.show_app_descriptions()), "
        "print(apis.api_docs.show_api_descriptions(app_name='spotify')) and "
        "print(apis.api_docs.show_api_doc(app_name='spotify', api_name='login')). Log in to an app with the "
        "supervisor's credentials from apis.supervisor.show_account_passwords(). When done, call "
        "apis.supervisor.complete_task() (with answer=<value> if the task asks a question)."
    )
    action_format = "code"
    reply_format = ("Reply with a thought, then your code:\nThought: <one short sentence about what to do next>\n"
                    "Action:\n```python\n<code>\n```")
    fallback_action = "print(apis.api_docs.show_app_descriptions())"

    @classmethod
    def requirements(cls, url: str | None = None, root: str | None = None, **options: Any) -> list[Requirement]:
        reqs = [python_package("httpx", "httpx")]
        if reqs[0].ok:
            for u in server_urls(url):
                status = http_status(f"{u}/")
                reqs.append(Requirement(f"AppWorld server at {u} (APPWORLD_URL)", status is not None and status < 500,
                                        START_SERVER))
        where = data_root(root)
        if where is None:  # optional: recipes can name task ids instead of a split
            reqs.append(Requirement("AppWorld split lists: $APPWORLD_ROOT unset, so name task ids (82e2fac_1, ...)",
                                    True))
        else:
            lists = where / "data" / "datasets"
            reqs.append(Requirement(f"AppWorld split lists at {lists}", lists.is_dir(), GET_DATA))
        return reqs

    def __init__(self, url: str | None = None, root: str | None = None, experiment: str = "agentdistill",
                 timeout: float = 300.0):
        import httpx

        self.root = data_root(root)
        self.experiment = experiment
        with _claim_lock:  # one free server for this instance
            free = [u for u in server_urls(url) if u not in _claimed]
            if not free:
                raise ConfigError(f"every AppWorld server ({', '.join(server_urls(url))}) is in use: a server holds "
                                  "one task at a time, so start one per concurrent episode and list them in "
                                  "APPWORLD_URL (comma-separated), or lower runner.concurrency")
            self.url = free[0]
            _claimed.add(self.url)
        self._http = httpx.Client(timeout=timeout)
        self._task_id: str | None = None
        self._done = False

    # ---- tasks ------------------------------------------------------------------------------------
    def tasks(self, split: str, names: list[str] | None = None) -> list[Task]:
        if split not in SPLITS:
            raise ConfigError(f"unknown AppWorld split {split!r}: use {', '.join(SPLITS)}")
        ids = self._split_ids(split) if self.root or not names else []
        if names:
            explicit = [n for n in names if TASK_ID.match(n)]
            scenarios = {n for n in names if not TASK_ID.match(n)}
            if scenarios and not ids:
                raise EnvNotReady(f"AppWorld scenario names ({', '.join(sorted(scenarios))}) need the task lists: "
                                  f"{GET_DATA}; or name full task ids such as 82e2fac_1")
            ids = explicit + [i for i in ids if TASK_ID.match(i)[1] in scenarios]
        out = []
        for i in ids:
            m = TASK_ID.match(i)
            if not m:
                raise ConfigError(f"bad AppWorld task id {i!r}: ids look like 82e2fac_1 (scenario_instance)")
            out.append(Task(self.name, m[1], int(m[2]), split))
        return out

    def _split_ids(self, split: str) -> list[str]:
        if self.root is None:
            raise EnvNotReady(f"AppWorld's task lists are not here ($APPWORLD_ROOT unset): {GET_DATA}; "
                              "or name task ids (env.tasks = [\"82e2fac_1\", ...])")
        path = self.root / "data" / "datasets" / f"{split}.txt"
        if not path.exists():
            raise EnvNotReady(f"no AppWorld task list at {path}: {GET_DATA}")
        return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]

    # ---- the server -------------------------------------------------------------------------------
    def _post(self, route: str, **body: Any) -> Any:
        import httpx

        try:
            r = self._http.post(f"{self.url}/{route}", json=body)
        except httpx.HTTPError as e:
            raise EnvNotReady(f"AppWorld server {self.url} unreachable ({type(e).__name__}): {START_SERVER}; "
                              "set APPWORLD_URL") from None
        if r.status_code >= 400:
            detail = r.text.strip().replace("\n", " ")[:300]
            if route == "initialize":
                raise EnvNotReady(f"AppWorld server {self.url} could not load task {body.get('task_id')} "
                                  f"(HTTP {r.status_code}: {detail}): is its data there? {GET_DATA}")
            raise EnvNotReady(f"AppWorld server {self.url} answered HTTP {r.status_code} to /{route}: {detail}")
        try:
            return r.json()["output"]
        except (ValueError, KeyError):
            raise EnvNotReady(f"{self.url}/{route} did not answer like an AppWorld server: {r.text[:200]!r}") from None

    # ---- protocol ---------------------------------------------------------------------------------
    def reset(self, task: Task, seed: int = 0) -> Observation:
        self._close_task()
        tid = task_id(task)
        out = self._post("initialize", task_id=tid, experiment_name=self.experiment)
        self._task_id, self._done = tid, False
        sup = out.get("supervisor") or {}
        who = f"{sup.get('first_name', '')} {sup.get('last_name', '')}".strip()
        text = (f"You work for {who} (email {sup.get('email', '?')}, phone {sup.get('phone_number', '?')}). "
                f"It is {out.get('datetime', '?')}.\nTask: {out['instruction']}")
        return Observation(text, out["instruction"], {"task_id": tid})

    def step(self, action: str) -> StepResult:
        if self._task_id is None:
            raise EnvNotReady("AppWorld env stepped before reset")
        if self._done:
            return StepResult("The task is already completed.", 0.0, True, {"score": 0.0, "won": False})
        output = self._post("execute", task_id=self._task_id, code=action)
        output = output if isinstance(output, str) else str(output)
        if not self._post("task_completed", task_id=self._task_id):
            return StepResult(output or "(no output)", 0.0, False, {"score": 0.0, "won": False})
        self._done = True
        report = self._post("evaluate", task_id=self._task_id, suppress_errors=True)
        passes, failures = report.get("passes") or [], report.get("failures") or []
        n = report.get("num_tests") or (len(passes) + len(failures)) or 1
        won = bool(report.get("success"))
        score = 100.0 * len(passes) / n
        info = {"score": score, "won": won, "tests_passed": len(passes), "tests": n,
                "failed_tests": [f.get("requirement", str(f)) if isinstance(f, dict) else str(f) for f in failures][:20]}
        return StepResult(output or "(no output)", score / 100.0, True, info)

    def _close_task(self) -> None:
        if self._task_id is not None:
            try:
                self._post("close", task_id=self._task_id)
            except EnvNotReady:
                pass  # the server is gone or restarted: nothing of ours left to close
            self._task_id = None

    def close(self) -> None:
        self._close_task()
        self._http.close()
        with _claim_lock:
            _claimed.discard(self.url)
