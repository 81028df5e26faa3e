"""A STAND-IN for AppWorld's environment server (`appworld serve environment`), for tests only.

The real server needs AppWorld's data (downloaded from the internet) and refuses to start without
it. This one serves the same routes with the same request bodies - every request is checked against
the OpenAPI schema of the real server (`data/appworld_openapi.json`, generated from the appworld
package's FastAPI app) - and answers in its `{"output": ...}` shape. Behind it is one tiny task, not
AppWorld: a phone app with contacts and text messages, code run with `exec` in a persistent
namespace, and an evaluation with two unit tests of the final state, like AppWorld's.
"""

from __future__ import annotations

import contextlib
import io
import json
import traceback
from pathlib import Path

from agentdistill.testing import LocalServer, QuietHandler

SCHEMA = json.loads((Path(__file__).parent / "data" / "appworld_openapi.json").read_text())
TASKS = {"82e2fac_1": "Text my brother Sam 'running late, start without me'."}
TYPES = {"string": str, "boolean": bool, "integer": int}


def check_body(route: str, body: dict) -> str | None:
    """Why `body` is not a valid request for the real server's route, or None."""
    ref = SCHEMA["paths"][route]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = SCHEMA["components"]["schemas"][ref.rsplit("/", 1)[1]]
    for name in schema.get("required", []):
        if name not in body:
            return f"missing required field {name}"
    for name, value in body.items():
        prop = schema["properties"].get(name)
        if prop is None:
            return f"unknown field {name}"
        kinds = [p.get("type") for p in prop.get("anyOf", [prop])]
        if not any(k in TYPES and isinstance(value, TYPES[k]) for k in kinds) and value is not None:
            return f"field {name} should be {kinds}"
    return None


class _App:
    def __init__(self, world):
        self._w = world


class Phone(_App):
    def login(self, username, password):
        if (username, password) != ("ada@mail.com", "pw-phone"):
            raise PermissionError("invalid credentials")
        return {"access_token": "tok"}

    def search_contacts(self, access_token, query=""):
        self._auth(access_token)
        return [c for c in self._w.contacts if query.lower() in (c["first_name"] + " " + c["relationship"]).lower()]

    def send_text_message(self, access_token, phone_number, message):
        self._auth(access_token)
        self._w.sent.append({"phone_number": phone_number, "message": message})
        return {"message": "Text message sent."}

    @staticmethod
    def _auth(token):
        if token != "tok":
            raise PermissionError("you are not logged in")


class Supervisor(_App):
    def show_account_passwords(self):
        return [{"account_name": "phone", "password": "pw-phone"}]

    def show_profile(self):
        return {"first_name": "Ada", "last_name": "Lovelace", "email": "ada@mail.com", "phone_number": "5550100"}

    def complete_task(self, answer=None):
        self._w.completed = True
        return {"message": "Marked the active task complete."}


class ApiDocs(_App):
    def show_app_descriptions(self):
        return [{"name": "phone", "description": "contacts and text messages"},
                {"name": "supervisor", "description": "the supervisor's profile and passwords"}]


class World:
    def __init__(self, task_id: str):
        self.task_id = task_id
        self.contacts = [{"first_name": "Sam", "relationship": "brother", "phone_number": "5550199"},
                         {"first_name": "Eve", "relationship": "coworker", "phone_number": "5550123"}]
        self.sent: list[dict] = []
        self.completed = False
        apis = type("Apis", (), {})()
        apis.phone, apis.supervisor, apis.api_docs = Phone(self), Supervisor(self), ApiDocs(self)
        self.namespace = {"apis": apis}

    def execute(self, code: str) -> str:
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(code, "<agent>", "exec"), self.namespace)
        except Exception:
            return out.getvalue() + "Execution failed. Traceback:\n" + traceback.format_exc(limit=1)
        return out.getvalue() or "Execution successful."

    def evaluate(self) -> dict:
        tests = [("a text went to Sam's number", any(m["phone_number"] == "5550199" for m in self.sent)),
                 ("its text says 'running late, start without me'",
                  any(m["message"].strip().lower() == "running late, start without me" for m in self.sent))]
        passes = [{"requirement": r, "label": "no_op_pass"} for r, ok in tests if ok]
        failures = [{"requirement": r, "label": "no_op_fail", "trace": "assert"} for r, ok in tests if not ok]
        return {"success": not failures, "difficulty": 1, "num_tests": len(tests), "passes": passes,
                "failures": failures}


class AppWorldStandin(LocalServer):
    def __init__(self):
        self.world: World | None = None
        self.requests: list[tuple[str, dict]] = []
        server = self

        class Handler(QuietHandler):
            def do_GET(self):  # noqa: N802
                self.send(200, {"message": "Welcome to AppWorld Server! (stand-in)"})

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                server.requests.append((self.path, body))
                problem = check_body(self.path, body)
                if problem:  # what FastAPI answers for a body that fails validation
                    return self.send(422, {"detail": [{"msg": problem}]})
                status, payload = server.handle(self.path, body)
                self.send(status, payload, "application/json" if isinstance(payload, dict) else "text/plain")

        super().__init__(Handler)

    def handle(self, route: str, body: dict):
        if route == "/initialize":
            if body["task_id"] not in TASKS:  # the real server fails loading a task it has no data for
                return 500, "Internal Server Error"
            self.world = World(body["task_id"])
            return 200, {"output": {"task_id": body["task_id"], "instruction": TASKS[body["task_id"]],
                                    "supervisor": {"first_name": "Ada", "last_name": "Lovelace",
                                                   "email": "ada@mail.com", "phone_number": "5550100"},
                                    "datetime": "2023-05-18 12:00:00"}}
        if self.world is None or self.world.task_id != body["task_id"]:
            return 500, "Internal Server Error"
        if route == "/execute":
            return 200, {"output": self.world.execute(body["code"])}
        if route == "/task_completed":
            return 200, {"output": self.world.completed}
        if route == "/evaluate":
            return 200, {"output": self.world.evaluate()}
        if route == "/close":
            self.world = None
            return 200, {"output": None}
        return 404, {"detail": "Not Found"}
