"""The OpenAI-compatible cascade server, answered by the real SmolLM2 student with retrieved demos and
a teacher behind litellm (the stand-in OpenAI server), called with the `openai` client and litellm."""

import json

import httpx
import pytest

from agentdistill.distill.icd import DemoIndex
from agentdistill.models import make_model
from agentdistill.serve import CascadeService, create_app
from agentdistill.testing import OpenAIStub, serving
from tests.conftest import free_port


@pytest.fixture(scope="module")
def teacher():
    with OpenAIStub(reply="Thought: the teacher knows.\nAction: focus on electric motor") as stub:
        yield stub


@pytest.fixture(scope="module")
def index(demo_store, tmp_path_factory):
    return DemoIndex.build(demo_store, tmp_path_factory.mktemp("serve") / "idx", env="scienceworld", method="bm25")


MESSAGES = [
    {"role": "system", "content": "You act in ScienceWorld. Reply with Thought: and Action: lines."},
    {"role": "user", "content": "Task: Your task is to turn on the electric motor.\nObservation: This room is called the workshop."},
]


@pytest.mark.slow
@pytest.mark.parametrize("threshold, expect", [(1.0, "teacher"), (0.0, "student")])
def test_openai_client_gets_an_answer_and_who_gave_it(index, teacher, threshold, expect):
    from openai import OpenAI

    student = make_model("local/smollm2-135m")
    teacher_model = make_model("openai/stub-teacher", api_base=teacher.url)
    service = CascadeService(student, teacher_model, index, samples=2, threshold=threshold, temperature=0.0)
    with serving(create_app(service)) as root:
        base = f"{root}/v1"
        client = OpenAI(base_url=base, api_key="unused")
        resp = client.chat.completions.create(model="agentdistill-cascade", messages=MESSAGES, max_tokens=20)
        extra = resp.model_extra["agentdistill"]
        if expect == "teacher":
            assert resp.model == "openai/stub-teacher" and extra["deferred"] is True
            assert resp.choices[0].message.content == "Thought: the teacher knows.\nAction: focus on electric motor"
        else:
            assert resp.model == "local/smollm2-135m" and extra["deferred"] is False and extra["agreement"] == 1.0
            assert resp.choices[0].message.content == extra["samples"][0]
        assert len(extra["samples"]) == 2 and len(extra["demos"]) == 3
        assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
        # litellm speaks to it like any OpenAI-compatible server
        import litellm

        via_litellm = litellm.completion(model="openai/agentdistill-cascade", api_base=base, api_key="unused",
                                         messages=MESSAGES, max_tokens=20)
        assert via_litellm.choices[0].message.content
        r = httpx.post(f"{base}/chat/completions", json={"messages": MESSAGES, "stream": True})
        assert r.status_code == 400 and "stream" in r.text


def test_api_keys_are_checked_on_every_request_and_bodies_are_bounded(teacher):
    """Without a valid key: 401 before any model is asked (a stand-in student records every call)."""
    from openai import AuthenticationError, OpenAI

    with OpenAIStub(reply="Action: look around") as student_stub:
        student = make_model("openai/stub-student", api_base=student_stub.url)
        teacher_model = make_model("openai/stub-teacher", api_base=teacher.url)
        key = "k-" + "7" * 30
        service = CascadeService(student, teacher_model, None, samples=2, threshold=0.0)
        from agentdistill.serve import create_app

        with serving(create_app(service, api_keys=[key], max_request_bytes=4096)) as root:
            base = f"{root}/v1"
            for bad in (None, "Bearer wrong-key-wrong-key-wrong", f"Basic {key}"):
                r = httpx.post(f"{base}/chat/completions", json={"messages": MESSAGES},
                               headers={"Authorization": bad} if bad else {})
                assert r.status_code == 401 and "API key" in r.text
            assert httpx.get(f"{base}/models").status_code == 401
            assert student_stub.seen == []  # nothing was spent
            with pytest.raises(AuthenticationError):
                OpenAI(base_url=base, api_key="nope").chat.completions.create(model="x", messages=MESSAGES)
            resp = OpenAI(base_url=base, api_key=key).chat.completions.create(model="x", messages=MESSAGES)
            assert resp.choices[0].message.content == "Action: look around"
            big = [{"role": "user", "content": "x" * 10_000}]
            r = httpx.post(f"{base}/chat/completions", json={"messages": big}, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 413
            # chunked bodies (no Content-Length) are bounded too, and a small chunked one is answered
            auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

            def chunks(payload: bytes, size: int = 512):
                yield from (payload[i:i + size] for i in range(0, len(payload), size))

            r = httpx.post(f"{base}/chat/completions", content=chunks(json.dumps({"messages": big}).encode()), headers=auth)
            assert r.status_code == 413 and "request body over 4096 bytes" in r.text
            r = httpx.post(f"{base}/chat/completions", content=chunks(json.dumps({"messages": MESSAGES}).encode()),
                           headers=auth)
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "Action: look around"


def test_serve_refuses_to_bind_beyond_localhost_without_a_key():
    from tests.conftest import run_cli

    p = run_cli("serve", "--student", "local/smollm2-135m", "--teacher", "openai/x", "--host", "0.0.0.0",
                env={"AGENTDISTILL_SERVE_API_KEY": ""})
    assert p.returncode == 2 and "--api-key" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = run_cli("serve", "--student", "local/smollm2-135m", "--teacher", "openai/x", "--api-key", "short")
    assert p.returncode == 2 and "at least 16 characters" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = run_cli("serve", "--student", "llamacpp/smollm2-135m", "--student-api-base", "http://127.0.0.1:9/v1",
                "--teacher", "openai/x")
    assert p.returncode == 2 and "runs in this process" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_a_teacher_that_fails_for_good_is_a_502_in_openai_form_and_one_log_line(caplog):
    with OpenAIStub(reply="Action: look") as student_stub:
        student = make_model("openai/stub-student", api_base=student_stub.url, max_retries=0)
        dead = make_model("openai/dead-teacher", api_base=f"http://127.0.0.1:{free_port()}/v1", max_retries=0)
        service = CascadeService(student, dead, samples=2, threshold=1.0, temperature=0.0)  # always defers
        with serving(create_app(service)) as root:
            base = f"{root}/v1"
            with caplog.at_level("WARNING"):
                r = httpx.post(f"{base}/chat/completions", json={"messages": MESSAGES}, timeout=60)
    assert r.status_code == 502, r.text
    error = r.json()["error"]
    assert error["type"] == "upstream_error" and "dead-teacher" in error["message"] and "\n" not in error["message"]
    failures = [rec for rec in caplog.records if "chat completion failed" in rec.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is None
    assert not [rec for rec in caplog.records if rec.exc_info]  # no traceback logged anywhere
