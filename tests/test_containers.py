"""docker/ service definitions and `agentdistill envs up|down` (this machine has no Docker engine)."""

from __future__ import annotations

from .conftest import run_cli


def test_service_definitions_are_complete():
    from agentdistill.envs.containers import DOCKER_DIR, available, services

    assert available() == ["appworld", "trainer", "visualwebarena", "webshop"]
    for name in available():
        for svc_name, svc in services(name).items():
            if "build" in svc:
                context = (DOCKER_DIR / name / svc["build"]).resolve()
                dockerfile = context / svc.get("dockerfile", "Dockerfile")
                assert dockerfile.is_file(), f"{name}/{svc_name}: {dockerfile}"
            if name != "trainer":
                assert svc["ports"] and svc["env_to_set"], f"{name}/{svc_name}"
    assert services("webshop")["webshop"]["env_to_set"] == {"WEBSHOP_URL": "http://localhost:3000"}
    assert set().union(*(s["env_to_set"] for s in services("visualwebarena").values())) >= {
        "VWA_CLASSIFIEDS", "VWA_SHOPPING", "VWA_REDDIT", "VWA_WIKIPEDIA", "VWA_HOMEPAGE"}


def test_envs_up_without_an_engine_says_so_and_bad_names_are_refused():
    r = run_cli("envs", "up", "webshop", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "no Docker engine reachable" in r.stderr
    r = run_cli("envs", "down", "nothing", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert r.returncode == 2 and "choose one of appworld, trainer, visualwebarena, webshop" in r.stderr
