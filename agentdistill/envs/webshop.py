"""WebShop (Yao et al., 2022) in its text mode, over HTTP against a WebShop server.

Actions are the paper's: `search[keywords]` on a search page, `click[button]` for any button on the
page (a product id, an option value, `< Prev`, `Next >`, `Back to Search`, `Description`, `Features`,
`Reviews`, `Attributes`, `Buy Now`). The observation is the page's visible text with clickables
marked `[button] X [button_]` (selected options `[clicked button]`), as in the paper's text mode.
The reward is the server's score of the purchase (0-1), shown on its done page; success is a
reward of 1.0. Tasks are the server's goal sessions `fixed_<i>` (WebShop's split convention: goals
0-499 test, 500-1499 dev, the rest train).

Run the real site (github.com/princeton-nlp/WebShop, `./setup.sh` then `./run_dev.sh`) and point
`WEBSHOP_URL` (or the env option `url`) at it.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import quote

from agentdistill.envs.base import Env, Observation, Requirement, StepResult, Task, http_status, python_package
from agentdistill.errors import ConfigError, EnvNotReady

DEFAULT_URL = "http://localhost:3000"
SPLITS = {"test": range(0, 500), "dev": range(500, 1500), "train": range(1500, 12087)}
SUBPAGES = ("Description", "Features", "Reviews", "Attributes")
ACTION = re.compile(r"^\s*(search|click)\[(.*)\]\s*$", re.S)


def server_url(url: str | None = None) -> str:
    return (url or os.environ.get("WEBSHOP_URL") or DEFAULT_URL).rstrip("/")


def page_text(html: str) -> tuple[str, list[str], str | None, dict[str, str]]:
    """(observation text, clickable labels, instruction, option value -> option name) of a WebShop page."""
    from bs4 import BeautifulSoup
    from bs4.element import Comment

    soup = BeautifulSoup(html, "html.parser")
    instruction = None
    inst = soup.find(id="instruction-text")
    if inst is not None:
        instruction = re.sub(r"^\s*Instruction:\s*", "", inst.get_text(" ", strip=True))
    selected = {i.get("value") for i in soup.find_all("input", checked=True)}
    groups = {i.get("value"): i.get("name") for i in soup.find_all("input", type="radio") if i.get("value")}
    parts, clickables = [], []
    for t in soup.find_all(string=True):
        if isinstance(t, Comment) or t.parent.name in ("style", "script", "head", "title", "meta", "[document]"):
            continue
        text = t.strip()
        if not text:
            continue
        parent = t.parent
        if parent.name == "button" or (parent.name == "a" and "product-link" in (parent.get("class") or [])):
            parts.append(f"[button] {text} [button_]")
            clickables.append(text)
        elif parent.name == "label":
            parts.append(f"[clicked button] {text} [clicked button_]" if text in selected else f"[button] {text} [button_]")
            clickables.append(text)
        elif parent.name == "a":  # sub-page links (Description, Features, ...) and navigation
            parts.append(f"[button] {text} [button_]")
            clickables.append(text)
        else:
            parts.append(text)
    return " [SEP] ".join(parts), clickables, instruction, groups


class WebShopEnv(Env):
    name = "webshop"
    description = "WebShop: find and buy the product an instruction describes on a shopping site (text mode)"
    action_help = (
        "Actions: search[<keywords>] on a search page; click[<button>] for a [button] on the page, e.g. "
        "click[B09QKP7XQL] for a product, click[large] for an option, click[Buy Now], click[Next >], "
        "click[< Prev], click[Back to Search], click[Description]."
    )
    fallback_action = "click[Back to Search]"

    @classmethod
    def requirements(cls, url: str | None = None, **options: Any) -> list[Requirement]:
        reqs = [python_package("bs4", "beautifulsoup4"), python_package("httpx", "httpx")]
        if all(r.ok for r in reqs):
            url = server_url(url)
            up = http_status(f"{url}/fixed_0") is not None
            reqs.append(Requirement(f"WebShop server at {url} (WEBSHOP_URL)", up,
                                    "start a WebShop server (github.com/princeton-nlp/WebShop: ./setup.sh, "
                                    "./run_dev.sh) and set WEBSHOP_URL"))
        return reqs

    def __init__(self, url: str | None = None, timeout: float = 30.0):
        import httpx

        self.url = server_url(url)
        self._http = httpx.Client(timeout=timeout, follow_redirects=True)
        self._state: dict[str, Any] = {}
        self._clickables: list[str] = []

    def tasks(self, split: str, names: list[str] | None = None) -> list[Task]:
        if split not in SPLITS:
            raise ConfigError(f"unknown WebShop split {split!r}: use {', '.join(SPLITS)}")
        if names and names != ["shop"]:
            raise ConfigError("WebShop has one task family, 'shop' (its goals are the variations)")
        return [Task(self.name, "shop", i, split) for i in SPLITS[split]]

    # ---- HTTP -------------------------------------------------------------------------------------
    def _get(self, path: str) -> str:
        import httpx

        try:
            r = self._http.get(f"{self.url}/{path}")
        except httpx.HTTPError as e:
            raise EnvNotReady(f"WebShop server {self.url} unreachable ({e}): start one "
                              "(github.com/princeton-nlp/WebShop) and set WEBSHOP_URL") from None
        if r.status_code >= 400:
            raise EnvNotReady(f"WebShop server answered {r.status_code} for /{path}")
        return r.text

    def _page(self) -> str:
        s = self._state
        # web_agent_site's routes: keywords as a Python list literal, options as a dict literal
        q = quote(repr((s.get("query", "") or "").lower().split()), safe="")
        opts = quote(repr(s.get("options", {})), safe="")
        kind = s["page"]
        if kind == "init":
            path = s["session"]
        elif kind == "search":
            path = f"search_results/{s['session']}/{q}/{s['page_num']}"
        elif kind == "item":
            path = f"item_page/{s['session']}/{s['asin']}/{q}/{s['page_num']}/{opts}"
        elif kind == "item_sub":
            path = f"item_sub_page/{s['session']}/{s['asin']}/{q}/{s['page_num']}/{s['subpage']}/{opts}"
        else:  # end
            path = f"done/{s['session']}/{s['asin']}/{opts}"
        text, self._clickables, instruction, groups = page_text(self._get(path))
        if instruction:
            self._state["instruction"] = instruction
        if groups:
            self._state["option_groups"] = groups
        return text

    # ---- protocol -----------------------------------------------------------------------------------
    def reset(self, task: Task, seed: int = 0) -> Observation:
        self._state = {"session": f"fixed_{task.variation}", "page": "init", "query": "", "page_num": 1,
                       "asin": "", "options": {}, "subpage": ""}
        text = self._page()
        return Observation(text, self._state.get("instruction", ""), {})

    def step(self, action: str) -> StepResult:
        m = ACTION.match(action or "")
        if not m:
            return StepResult("Invalid action: use search[...] or click[...].", 0.0, False, {"score": 0.0, "won": False})
        kind, arg = m.group(1), m.group(2).strip()
        s = self._state
        if kind == "search":
            if s["page"] not in ("init",) and "Search" not in self._clickables:
                return StepResult("Invalid action: there is no search box on this page.", 0.0, False,
                                  {"score": 0.0, "won": False})
            s.update(page="search", query=arg, page_num=1)
        else:
            if arg not in self._clickables and arg.lower() not in {c.lower() for c in self._clickables}:
                return StepResult(f"Invalid action: no button {arg!r} on this page.", 0.0, False,
                                  {"score": 0.0, "won": False})
            if arg == "Back to Search":
                s.update(page="init", query="", page_num=1, asin="", options={})
            elif arg == "Next >":
                s["page_num"] += 1
            elif arg == "< Prev":
                if s["page"] == "item_sub":
                    s["page"] = "item"
                elif s["page"] == "item":
                    s["page"] = "search"
                else:
                    s["page_num"] = max(1, s["page_num"] - 1)
            elif arg in SUBPAGES:
                s.update(page="item_sub", subpage=arg)
            elif arg == "Buy Now":
                s["page"] = "end"
            elif s["page"] == "search":  # a product id
                s.update(page="item", asin=arg, options={})
            elif s["page"] in ("item", "item_sub"):  # an option value of the product
                s["options"] = {**s["options"], self._option_name(arg): arg}
                s["page"] = "item"
        text = self._page()
        if s["page"] == "end":
            reward = self._reward(text)
            return StepResult(text, reward, True, {"score": 100.0 * reward, "won": reward >= 1.0, "reward": reward})
        return StepResult(text, 0.0, False, {"score": 0.0, "won": False})

    def _option_name(self, value: str) -> str:
        """The option group (size, color, ...) a clicked value belongs to, from the item page's radio inputs."""
        return self._state.get("option_groups", {}).get(value, value)

    @staticmethod
    def _reward(text: str) -> float:
        m = re.search(r"Your score \(min 0\.0, max 1\.0\)\s*(?:\[SEP\]\s*)?([0-9.]+)", text)
        if not m:
            raise EnvNotReady("the WebShop done page shows no score: is this a WebShop server?")
        return float(m.group(1))

    def admissible_actions(self) -> list[str] | None:
        if self._state.get("page") == "init":
            return None  # a free-form search
        return [f"click[{c}]" for c in self._clickables if c != "Search"]

    def close(self) -> None:
        self._http.close()
