"""BrowserGym (Le Sellier De Chezelles et al., 2024): web tasks in a real Chromium.

Two configurations of one adapter:
- `miniwob`: MiniWoB++ (Liu et al., 2018), fully offline; the task pages come from the `miniwob`
  wheel as file:// URLs. Tasks are its sub-domains (click-button, enter-text, ...); a variation is
  the task's random seed. A scripted expert solves a subset of tasks (`miniwob_expert.py`).
- `visualwebarena`: VisualWebArena (Koh et al., 2024) against its sites (classifieds, shopping,
  reddit, wikipedia), whose URLs come from BrowserGym's `VWA_*` variables; `docker/visualwebarena`
  starts the sites. Its evaluator scores the final state or answer.

The observation is text: the page's accessibility tree with BrowserGym element ids (`[12] button
'Submit'`), the URL and the last action's error. `screenshot=True` also saves a PNG of each page
(content-addressed, path in the step info) for vision policies and the trajectory viewer. Actions are
BrowserGym's high-level action strings (`click('12')`, `fill('14', 'text')`, ...).

Playwright's sync API is bound to the thread that started it and BrowserGym keeps one Playwright per
process, while our runner steps envs from a thread pool: so each env instance drives its browser in
a worker process of its own and talks to it over a pipe.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any, ClassVar

from agentdistill.envs.base import Env, Observation, Requirement, StepResult, Task, http_status, python_package
from agentdistill.errors import ConfigError, EnvNotReady
from agentdistill.paths import cache_dir, write_atomic

# Roles dropped from the text tree: line breaks, and inline text boxes that repeat their parent's text
IGNORED_ROLES = ["LineBreak", "InlineTextBox"]
SYSTEM_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WORKER_TIMEOUT_S = 120.0


# ---- the browser: playwright's own download, or the system chromium in its place --------------------
def _playwright_chromium_revision() -> str | None:
    import playwright

    browsers = Path(playwright.__file__).parent / "driver" / "package" / "browsers.json"
    try:
        return next(b["revision"] for b in json.loads(browsers.read_text())["browsers"] if b["name"] == "chromium")
    except (OSError, StopIteration, KeyError, ValueError):
        return None


def _playwright_browser_installed(revision: str) -> bool:
    root = Path(os.environ.get("PLAYWRIGHT_BROWSERS_PATH") or Path.home() / ".cache" / "ms-playwright")
    return (root / f"chromium-{revision}" / "INSTALLATION_COMPLETE").exists()


def system_chromium() -> str | None:
    explicit = os.environ.get("AGENTDISTILL_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return next((p for p in map(shutil.which, SYSTEM_BROWSERS) if p), None)


def browser_setup() -> tuple[dict[str, str], dict[str, Any]]:
    """(environment variables, playwright launch kwargs) that make BrowserGym use an installed browser.

    BrowserGym launches two browsers (the task's and a chat window) and passes our launch kwargs to
    the first only, so a downloaded-browser folder (`PLAYWRIGHT_BROWSERS_PATH`) whose chromium is a
    link to the system one serves the second; nothing is downloaded.
    """
    revision = _playwright_chromium_revision()
    if revision and _playwright_browser_installed(revision) and not os.environ.get("AGENTDISTILL_CHROMIUM"):
        return {}, {}  # the user ran `playwright install chromium`: use it as is
    exe = system_chromium()
    if exe is None or revision is None:
        raise EnvNotReady("no Chromium for BrowserGym: apt-get install chromium (or set AGENTDISTILL_CHROMIUM, "
                          "or run `playwright install chromium`)")
    root = cache_dir() / "playwright-browsers"
    target = root / f"chromium-{revision}" / "chrome-linux" / "chrome"
    if not (target.is_symlink() and os.readlink(target) == exe):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".chrome.{uuid.uuid4().hex}")  # unique: envs of one process set up at once
        tmp.symlink_to(exe)
        tmp.replace(target)  # atomic: concurrent workers never see a half-made link
    (root / f"chromium-{revision}" / "INSTALLATION_COMPLETE").touch()
    return {"PLAYWRIGHT_BROWSERS_PATH": str(root)}, {"executable_path": exe}


def chromium_requirement() -> Requirement:
    revision = _playwright_chromium_revision()
    if revision and _playwright_browser_installed(revision):
        return Requirement(f"Chromium (playwright's, revision {revision})", True)
    exe = system_chromium()
    return Requirement(f"Chromium (system: {exe or 'none found'})", exe is not None,
                       "apt-get install chromium (Debian/Ubuntu), or set AGENTDISTILL_CHROMIUM to a Chrome binary")


# ---- the worker process ----------------------------------------------------------------------------
def _text_observation(obs: dict) -> str:
    from browsergym.utils.obs import flatten_axtree_to_str

    tree = flatten_axtree_to_str(obs["axtree_object"], extra_properties=obs.get("extra_element_properties"),
                                 ignored_roles=IGNORED_ROLES)
    parts = [f"URL: {obs.get('url', '')}"]
    if obs.get("last_action_error"):
        parts.append(f"Error from the last action: {obs['last_action_error'].strip()[:500]}")
    if obs.get("chat_messages") and obs["chat_messages"][-1].get("role") == "user" and len(obs["chat_messages"]) > 2:
        parts.append(f"User message: {obs['chat_messages'][-1]['message']}")
    parts.append("Accessibility tree:\n" + tree.strip())
    return "\n".join(parts)


def _png(array) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _goal_text(obs: dict) -> str:
    return "\n".join(p["text"] for p in obs.get("goal_object") or [] if p.get("type") == "text") or obs.get("goal", "")


def _serve(conn, env_vars: dict[str, str], setup_module: str, launch: dict[str, Any], actions: list[str],
           screenshot: bool) -> None:
    """Worker main loop: one BrowserGym env at a time, commands over `conn`."""
    os.environ.update(env_vars)
    import importlib
    import traceback

    env = None

    def observe(obs: dict, reward: float = 0.0, done: bool = False) -> dict:
        return {"text": _text_observation(obs), "goal": _goal_text(obs), "url": obs.get("url", ""),
                "error": obs.get("last_action_error") or "", "reward": float(reward), "done": done,
                "png": _png(obs["screenshot"]) if screenshot else None}

    try:
        while True:
            try:
                cmd, args = conn.recv()
            except EOFError:  # the parent is gone
                break
            if cmd == "close":
                break
            try:
                if cmd == "reset":
                    import gymnasium as gym
                    from browsergym.core.action.highlevel import HighLevelActionSet

                    importlib.import_module(setup_module)  # registers the benchmark's gym ids
                    if env is not None:
                        env.close()
                    mapping = HighLevelActionSet(subsets=actions, multiaction=False).to_python_code
                    env = gym.make(f"browsergym/{args['task_id']}", headless=True, pw_chromium_kwargs=launch,
                                   action_mapping=mapping)
                    obs, _ = env.reset(seed=args["seed"])
                    result = observe(obs)
                elif cmd == "step":
                    obs, reward, terminated, truncated, _ = env.step(args["action"])
                    result = observe(obs, reward, bool(terminated or truncated))
                else:
                    raise ValueError(f"unknown command {cmd!r}")
                conn.send(("ok", result))
            except Exception as e:  # reported to the parent with its type; the worker stays up
                conn.send(("error", f"{type(e).__name__}: {e}".strip()[:2000], traceback.format_exc()[-2000:]))
    finally:
        if env is not None:  # close the browsers with the worker, whatever ended it
            env.close()
        try:
            conn.send(("ok", None))
        except OSError:
            pass


class _Worker:
    """A worker process (`python -m agentdistill.envs.browsergym FD`) connected by a socket pair.

    A fresh interpreter rather than multiprocessing's spawn: spawn re-runs the caller's main script,
    which breaks any user script without a `__main__` guard."""

    def __init__(self, env_vars: dict[str, str], setup_module: str, launch: dict[str, Any], actions: list[str],
                 screenshot: bool):
        import socket
        import sys
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()  # a private channel: nothing else can connect to it
        self.proc = subprocess.Popen([sys.executable, "-m", "agentdistill.envs.browsergym", str(theirs.fileno())],
                                     pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        self.conn = Connection(ours.detach())
        self.conn.send((env_vars, setup_module, launch, actions, screenshot))

    def call(self, cmd: str, **args: Any) -> Any:
        try:
            self.conn.send((cmd, args))
            if not self.conn.poll(WORKER_TIMEOUT_S):
                self.kill()
                raise EnvNotReady(f"the BrowserGym worker did not answer {cmd!r} within {WORKER_TIMEOUT_S:.0f} s")
            reply = self.conn.recv()
        except (EOFError, OSError):
            self.kill()
            raise EnvNotReady(f"the BrowserGym worker died during {cmd!r} (exit code {self.proc.returncode})") from None
        if reply[0] == "error":
            raise EnvNotReady(f"BrowserGym {cmd} failed: {reply[1]}")
        return reply[1]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait(5)

    def close(self) -> None:
        if self.alive():
            try:
                self.call("close")
            except EnvNotReady:
                pass
        try:
            self.proc.wait(10)  # the worker closes its browsers first
        except subprocess.TimeoutExpired:
            pass
        self.kill()
        self.conn.close()


def _worker_main(fd: int) -> None:
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    _serve(conn, *conn.recv())


class BrowserGymEnv(Env):
    """A BrowserGym benchmark as an Env; subclasses fix the benchmark (gym id prefix, actions, env vars)."""

    benchmark: ClassVar[str]  # BrowserGym's gym id prefix, e.g. "miniwob"
    setup_module: ClassVar[str]  # importing it registers the benchmark's tasks
    action_subsets: ClassVar[list[str]]
    fallback_action = "noop()"

    def __init__(self, screenshot: bool = False, screenshot_dir: str | None = None,
                 variations_per_split: int = 100):
        self.screenshot = screenshot
        self.screenshot_dir = Path(screenshot_dir) if screenshot_dir else cache_dir() / "screenshots"
        self.n = variations_per_split
        self._worker: _Worker | None = None
        self._last: dict[str, Any] = {}
        self._task: Task | None = None

    # ---- per benchmark -----------------------------------------------------------------------------
    def env_vars(self) -> dict[str, str]:
        return {}

    def gym_task_id(self, task: Task) -> str:
        return f"{self.benchmark}.{task.name}"

    # ---- protocol ----------------------------------------------------------------------------------
    def _ensure_worker(self) -> _Worker:
        if self._worker is None or not self._worker.alive():
            env_vars, launch = browser_setup()
            self._worker = _Worker({**env_vars, **self.env_vars()}, self.setup_module, launch,
                                   list(self.action_subsets), self.screenshot)
        return self._worker

    def _save_png(self, png: bytes | None) -> dict[str, str]:
        if not png:
            return {}
        path = self.screenshot_dir / f"{hashlib.sha256(png).hexdigest()[:32]}.png"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, png)
        return {"screenshot": str(path)}

    def reset(self, task: Task, seed: int = 0) -> Observation:
        self._task = task
        self._last = self._ensure_worker().call("reset", task_id=self.gym_task_id(task), seed=self.task_seed(task))
        return Observation(self._last["text"], self._last["goal"], {"url": self._last["url"],
                                                                    **self._save_png(self._last["png"])})

    def task_seed(self, task: Task) -> int:
        return task.variation

    def step(self, action: str) -> StepResult:
        if self._worker is None or self._task is None:
            raise EnvNotReady(f"{self.name} env stepped before reset")
        self._last = self._worker.call("step", action=action)
        reward = self._last["reward"]
        info = {"score": 100.0 * reward, "won": reward >= 1.0, "url": self._last["url"],
                **self._save_png(self._last["png"])}
        if self._last["error"]:
            info["action_error"] = self._last["error"][:500]
        return StepResult(self._last["text"], reward, self._last["done"], info)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None


# ---- MiniWoB++ --------------------------------------------------------------------------------------
MINIWOB_SPLIT_SEEDS = {"train": range(0, 1000), "dev": range(1000, 1100), "test": range(2000, 2100)}


def miniwob_url() -> str | None:
    """file:// URL of the task pages the `miniwob` wheel ships (or $MINIWOB_URL when set)."""
    if os.environ.get("MINIWOB_URL"):
        return os.environ["MINIWOB_URL"]
    import importlib.util

    spec = importlib.util.find_spec("miniwob")
    if spec is None or not spec.submodule_search_locations:
        return None
    html = Path(next(iter(spec.submodule_search_locations))) / "html" / "miniwob"
    return html.as_uri() + "/" if html.is_dir() else None


def miniwob_task_names() -> list[str]:
    from browsergym.miniwob import ALL_MINIWOB_TASKS

    return sorted(t.subdomain for t in ALL_MINIWOB_TASKS)


class MiniWoBEnv(BrowserGymEnv):
    name = "miniwob"
    description = ("MiniWoB++ web tasks in Chromium through BrowserGym (click buttons, fill forms, pick options); "
                   "the page is shown as an accessibility tree whose elements carry ids in brackets")
    action_help = (
        "Act with one BrowserGym action per turn, naming elements by their [id]: click('12'), "
        "fill('14', 'some text') to type into a textbox, select_option('13', 'Option label'), "
        "focus('12'), press('14', 'Enter'), hover('12'), dblclick('12'), clear('14'), scroll(0, 200), "
        "noop() to wait."
    )
    benchmark = "miniwob"
    setup_module = "browsergym.miniwob"
    action_subsets = ["bid"]
    expert_acts_from_any_state = True  # it reads the current page (miniwob_expert.next_action)

    @classmethod
    def requirements(cls, **options: Any) -> list[Requirement]:
        reqs = [python_package("browsergym.core", "browsergym-core"),
                python_package("browsergym.miniwob", "browsergym-miniwob"),
                python_package("miniwob", "miniwob")]
        if reqs[-1].ok:
            reqs.append(Requirement("MiniWoB++ task pages (miniwob wheel or MINIWOB_URL)", miniwob_url() is not None,
                                    "pip install miniwob, or set MINIWOB_URL to a folder URL with the task .html files"))
        if reqs[0].ok:
            reqs.append(chromium_requirement())
        return reqs

    def env_vars(self) -> dict[str, str]:
        url = miniwob_url()
        if url is None:
            raise EnvNotReady("MiniWoB++ task pages not found: pip install miniwob (or set MINIWOB_URL)")
        return {"MINIWOB_URL": url}

    def tasks(self, split: str, names: list[str] | None = None) -> list[Task]:
        if split not in MINIWOB_SPLIT_SEEDS:
            raise ConfigError(f"unknown MiniWoB split {split!r}: use {', '.join(MINIWOB_SPLIT_SEEDS)}")
        known = miniwob_task_names()
        unknown = [n for n in names or [] if n not in known]
        if unknown:
            raise ConfigError(f"unknown MiniWoB task {unknown[0]!r}: use a MiniWoB++ sub-domain such as "
                              f"click-button, enter-text ({len(known)} in all)")
        seeds = list(MINIWOB_SPLIT_SEEDS[split])[: self.n]
        return [Task(self.name, t, s, split) for t in (names or known) for s in seeds]

    def reset(self, task: Task, seed: int = 0) -> Observation:
        obs = super().reset(task, seed)
        self._goal, self._page = obs.goal, obs.text
        return obs

    def step(self, action: str) -> StepResult:
        result = super().step(action)
        self._page = result.observation
        return result

    def expert_action(self) -> str | None:
        """The scripted expert's next action on the current page (a subset of tasks, see miniwob_expert.py)."""
        from agentdistill.envs.miniwob_expert import next_action

        if self._task is None:
            return None
        return next_action(self._task.name, self._goal, self._page)


# ---- VisualWebArena -----------------------------------------------------------------------------------
VWA_SITES = {  # BrowserGym's variables for the sites, and what each is
    "VWA_CLASSIFIEDS": "classifieds site",
    "VWA_CLASSIFIEDS_RESET_TOKEN": "classifieds reset token",
    "VWA_SHOPPING": "shopping site",
    "VWA_REDDIT": "reddit (postmill) site",
    "VWA_WIKIPEDIA": "wikipedia (kiwix) site",
    "VWA_HOMEPAGE": "homepage",
}
VWA_SPLITS = {"test": range(0, 910)}  # VisualWebArena's 910 tasks form its test set


def _nltk_punkt() -> bool:
    try:
        import nltk

        nltk.data.find("tokenizers/punkt_tab")
        return True
    except (ImportError, LookupError):
        return False


class VisualWebArenaEnv(BrowserGymEnv):
    name = "visualwebarena"
    description = ("VisualWebArena web tasks (classifieds, shopping, reddit) in Chromium through BrowserGym; "
                   "the page is shown as an accessibility tree whose elements carry ids in brackets")
    action_help = (
        "Act with one BrowserGym action per turn, naming elements by their [id]: click('12'), "
        "fill('14', 'search words'), select_option('13', 'Option label'), keyboard_press('Enter'), "
        "hover('12'), scroll(0, 300), goto('http://...'), go_back(), go_forward(), new_tab(), "
        "tab_focus(1), tab_close(), send_msg_to_user('answer') to answer a question, "
        "report_infeasible('why') when the task cannot be done, noop() to wait."
    )
    benchmark = "visualwebarena"
    setup_module = "browsergym.visualwebarena"
    action_subsets = ["visualwebarena"]

    @classmethod
    def requirements(cls, **options: Any) -> list[Requirement]:
        # find_spec only: importing browsergym.visualwebarena downloads NLTK data
        vwa = python_package("browsergym.visualwebarena", "browsergym-visualwebarena")
        vwa.fix += " torch==<the installed torch version> (pin torch: unpinned, pip pulls a CUDA build of several GB)"
        reqs = [python_package("browsergym.core", "browsergym-core"), vwa]
        if reqs[0].ok:
            reqs.append(chromium_requirement())
        if reqs[1].ok:
            reqs.append(Requirement("NLTK punkt_tab data (browsergym-visualwebarena downloads it on import)",
                                    _nltk_punkt(), "python -m nltk.downloader punkt_tab (needs internet once; "
                                    "or copy an nltk_data folder and set NLTK_DATA)"))
        for var, what in VWA_SITES.items():
            value = os.environ.get(var)
            if not value:
                reqs.append(Requirement(f"{what} at ${var} (unset)", False,
                                        f"start the VisualWebArena sites (agentdistill envs up visualwebarena) and "
                                        f"export {var}"))
            elif not var.endswith("TOKEN"):
                up = http_status(value, timeout=5.0, follow_redirects=True) is not None
                reqs.append(Requirement(f"{what} at {value} (${var})", up,
                                        "start the VisualWebArena sites (agentdistill envs up visualwebarena)"))
        return reqs

    def env_vars(self) -> dict[str, str]:
        return {k: os.environ[k] for k in VWA_SITES if k in os.environ}

    def tasks(self, split: str, names: list[str] | None = None) -> list[Task]:
        if split not in VWA_SPLITS:
            raise ConfigError(f"unknown VisualWebArena split {split!r}: it has one, 'test' (910 tasks)")
        if names and names != ["vwa"]:
            raise ConfigError("VisualWebArena has one task family, 'vwa' (its 910 task ids are the variations)")
        return [Task(self.name, "vwa", i, split) for i in VWA_SPLITS[split]]

    def gym_task_id(self, task: Task) -> str:
        return f"visualwebarena.{task.variation}"

    def task_seed(self, task: Task) -> int:
        return 0  # VWA tasks are fixed; the id is the variation


if __name__ == "__main__":  # the worker process
    import sys

    _worker_main(int(sys.argv[1]))
