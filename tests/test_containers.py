"""docker/ service definitions and `agentdistill envs up|down` (this machine has no Docker engine)."""

from __future__ import annotations

from .conftest import run_cli


def test_service_definitions_are_complete():
    from agentdistill.envs.containers import available, build_source, services

    assert available() == ["appworld", "trainer", "visualwebarena", "webshop"]
    compose_keys = {"image", "build", "ports", "command", "gpus"}  # compose spec; x-* are its extensions
    for name in available():
        for svc_name, svc in services(name).items():
            assert {k for k in svc if not k.startswith("x-")} <= compose_keys, f"{name}/{svc_name}: {set(svc)}"
            if "build" in svc:
                context, dockerfile = build_source(name, svc)
                assert (context / dockerfile).is_file(), f"{name}/{svc_name}: {context / dockerfile}"
            if name != "trainer":
                assert svc["ports"] and svc["x-agentdistill-env"], f"{name}/{svc_name}"
    assert services("webshop")["webshop"]["x-agentdistill-env"] == {"WEBSHOP_URL": "http://localhost:3000"}
    assert set().union(*(s["x-agentdistill-env"] for s in services("visualwebarena").values())) >= {
        "VWA_CLASSIFIEDS", "VWA_SHOPPING", "VWA_REDDIT", "VWA_WIKIPEDIA", "VWA_HOMEPAGE"}


def test_envs_up_without_an_engine_says_so_and_bad_names_are_refused():
    r = run_cli("envs", "up", "webshop", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "no Docker engine reachable" in r.stderr
    r = run_cli("envs", "down", "nothing", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert r.returncode == 2 and "choose one of appworld, trainer, visualwebarena, webshop" in r.stderr
