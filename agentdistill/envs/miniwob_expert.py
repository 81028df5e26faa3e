"""A scripted expert for MiniWoB++ tasks whose goal states exactly what to do.

MiniWoB++ ships no demonstrations offline, so for these tasks the expert reads the goal and the
accessibility tree the agent also sees and writes the BrowserGym actions that solve the task. It is
a teacher for the forms-and-buttons family; other tasks have no expert (None).

The expert is closed-loop (`next_action`): it reads the *current* page (what each textbox holds, which
boxes are checked, what a list shows) and answers with the first action still needed, so it can take
over from any state another policy reached (DAgger's labels, a cascade's deferrals). A box another
policy checked by mistake is unchecked; a textbox holding the wrong text is filled again.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Node:
    bid: str
    role: str
    name: str
    rest: str  # the properties after the name (checked=..., focused, ...)

    def prop(self, key: str) -> str | None:
        """A property's value as the tree shows it (value='...', checked='true'), or None when absent."""
        m = re.search(rf"\b{key}=(['\"])(.*?)\1(?:,|$)", self.rest)
        return m[2] if m else None


_NODE = re.compile(r"^\s*\[(?P<bid>[^\]]+)\] (?P<role>\S+) (?P<q>['\"])(?P<name>.*?)(?P=q)(?P<rest>.*)$")


def parse_tree(text: str) -> list[Node]:
    """The elements with a BrowserGym id in an observation's accessibility tree."""
    nodes = []
    for line in text.splitlines():
        m = _NODE.match(line)
        if m:
            nodes.append(Node(m["bid"], m["role"], m["name"], m["rest"]))
    return nodes


def _find(nodes: list[Node], role: str | tuple[str, ...], name: str | None = None) -> list[Node]:
    roles = (role,) if isinstance(role, str) else role
    return [n for n in nodes if n.role in roles and (name is None or n.name.strip() == name)]


def _one(nodes: list[Node], role: str | tuple[str, ...], name: str | None = None) -> Node:
    found = _find(nodes, role, name)
    if not found:
        raise LookupError(f"no {role} {name or ''} on the page")
    return found[0]


def _click(n: Node) -> str:
    return f"click({repr(n.bid)})"


def _fill(n: Node, text: str) -> str:
    return f"fill({repr(n.bid)}, {repr(text)})"


def _submit(nodes: list[Node], label: str = "Submit") -> str:
    buttons = _find(nodes, "button")
    match = [b for b in buttons if b.name.strip().lower() == label.lower()]
    return _click((match or buttons)[-1])


def _items(text: str) -> list[str]:
    text = text.strip()
    if text.lower() == "nothing":
        return []
    return [s.strip() for s in re.split(r",\s*|\s+and\s+", text) if s.strip()]


def _holds(n: Node, text: str) -> bool:
    """Does a textbox already hold `text`? (A password field may show it masked, one bullet per character.)"""
    value = n.prop("value")
    if value is None:
        return text == ""
    return value == text or (len(value) == len(text) and set(value) <= {"•", "*"})


def _fills(pairs: list[tuple[Node, str]], nodes: list[Node], label: str = "Submit") -> str:
    for box, text in pairs:
        if not _holds(box, text):
            return _fill(box, text)
    return _submit(nodes, label)


def _checkboxes(m: re.Match, n: list[Node]) -> str:
    wanted = set(_items(m[1]))
    for box in _find(n, "checkbox"):
        if (box.prop("checked") == "true") != (box.name.strip() in wanted):
            return _click(box)
    if any(not _find(n, "checkbox", w) for w in wanted):
        raise LookupError("a wanted checkbox is missing")
    return _submit(n)


def _option(m: re.Match, n: list[Node]) -> str:
    radio = _one(n, "radio", m[1])
    return _submit(n) if radio.prop("checked") == "true" else _click(radio)


def _choose(m: re.Match, n: list[Node]) -> str:
    box = _one(n, "combobox")
    if box.prop("value") == m[1]:
        return _submit(n)
    return f"select_option({repr(box.bid)}, {repr(m[1])})"


# goal pattern -> the next action, from the current page (closed loop)
NEXT: dict[str, tuple[str, Callable[[re.Match, list[Node]], str]]] = {
    "click-test": (r"Click the button", lambda m, n: _click(_one(n, "button"))),
    "click-test-2": (r"Click button (\w+)", lambda m, n: _click(_one(n, "button", m[1]))),
    "click-button": (r'Click on the "(.+)" button', lambda m, n: _click(_one(n, "button", m[1]))),
    "click-dialog": (r"Close the dialog box", lambda m, n: _click(_one(n, "button", "Close"))),
    "click-tab": (r"Click on Tab #(\d+)", lambda m, n: _click(_one(n, "link", f"Tab #{m[1]}"))),
    "focus-text": (r"Focus into the textbox", lambda m, n: f"focus({repr(_one(n, 'textbox').bid)})"),
    "enter-text": (r'Enter "(.*)" into the text field', lambda m, n: _fills([(_one(n, "textbox"), m[1])], n)),
    "enter-password": (r'Enter the password "(.*)" into both',
                       lambda m, n: _fills([(t, m[1]) for t in _find(n, "textbox")], n)),
    "login-user": (r'Enter the username "(.*)" and the password "(.*)" into',
                   lambda m, n: _fills(list(zip(_find(n, "textbox")[:2], (m[1], m[2]), strict=True)), n, "Login")),
    "click-checkboxes": (r"Select (.*) and click Submit", _checkboxes),
    "click-option": (r"Select (.*) and click Submit", _option),
    "choose-list": (r"Select (.*) from the list and click Submit", _choose),
}


def next_action(task: str, goal: str, observation: str) -> str | None:
    """The expert's next action on the page as it is now; None for a task (or a page) it cannot solve."""
    if task not in NEXT:
        return None
    pattern, make = NEXT[task]
    m = re.search(pattern, goal)
    if not m:
        return None
    try:
        return make(m, parse_tree(observation))
    except (LookupError, IndexError, ValueError):
        return None
