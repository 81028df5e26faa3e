"""`agentdistill envs up|down NAME`: start the servers an environment needs, with the Docker SDK.

Each `docker/<name>/compose.yaml` in the repository is a compose file (`docker compose -f ... up`
reads it too) whose services have an image (built when `build` is given, else one the user loads,
e.g. VisualWebArena's sites), ports, an optional command, and, in the extension field
`x-agentdistill-env`, the variables to export so our adapters find the server. Without
a reachable Docker engine the command says so and changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentdistill.errors import ConfigError, EnvNotReady

DOCKER_DIR = Path(__file__).resolve().parents[2] / "docker"


def available() -> list[str]:
    return sorted(p.parent.name for p in DOCKER_DIR.glob("*/compose.yaml"))


def services(name: str) -> dict[str, dict[str, Any]]:
    import yaml

    path = DOCKER_DIR / name / "compose.yaml"
    if not path.exists():
        if not DOCKER_DIR.is_dir():
            raise ConfigError("the docker/ folder ships with the agentdistill repository: run from a clone")
        raise ConfigError(f"no docker setup for {name!r}: choose one of {', '.join(available())}")
    data = yaml.safe_load(path.read_text()) or {}
    svcs = data.get("services") or {}
    for svc_name, svc in svcs.items():
        if not svc.get("image"):
            raise ConfigError(f"{path}: service {svc_name} needs an image")
    return svcs


def _client():
    try:
        import docker
    except ImportError:
        raise EnvNotReady("the Docker SDK is missing: pip install docker") from None
    try:
        client = docker.from_env()
        client.ping()
        return client
    except docker.errors.DockerException as e:
        raise EnvNotReady(f"no Docker engine reachable ({str(e).split(':')[0]}): install or start Docker "
                          "(or set DOCKER_HOST), then run this again") from None


def _ports(spec: list[str]) -> dict[str, int]:
    out = {}
    for p in spec or []:
        host, container = str(p).split(":")
        out[f"{container}/tcp"] = int(host)
    return out


def build_source(name: str, svc: dict[str, Any]) -> tuple[Path, str]:
    """(context dir, Dockerfile path inside it) of a service's compose `build` (a path or a mapping)."""
    build = svc["build"]
    if isinstance(build, str):
        build = {"context": build}
    return (DOCKER_DIR / name / build.get("context", ".")).resolve(), build.get("dockerfile", "Dockerfile")


def up(name: str, log=print) -> dict[str, str]:
    """Build or find each service's image, start it, and return the variables to export."""
    svcs = services(name)  # bad names fail before touching Docker
    client = _client()
    import docker

    env: dict[str, str] = {}
    for svc_name, svc in svcs.items():
        image = svc["image"]
        if "build" in svc:
            context, dockerfile = build_source(name, svc)
            log(f"building {image} from {context} (this fetches code and data; it takes a while)")
            client.images.build(path=str(context), dockerfile=dockerfile, tag=image, rm=True)
        else:
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound:
                raise EnvNotReady(f"image {image} is not loaded: see {DOCKER_DIR / name / 'compose.yaml'}") from None
        container = f"agentdistill-{name}-{svc_name}"
        try:
            client.containers.get(container).remove(force=True)
        except docker.errors.NotFound:
            pass
        kwargs: dict[str, Any] = {"detach": True, "name": container, "ports": _ports(svc.get("ports"))}
        if svc.get("command"):
            kwargs["command"] = svc["command"]
        if svc.get("gpus"):
            kwargs["device_requests"] = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
        client.containers.run(image, **kwargs)
        log(f"started {container} ({image})")
        env.update(svc.get("x-agentdistill-env") or {})
    return env


def down(name: str) -> list[str]:
    svcs = services(name)
    client = _client()
    import docker

    removed = []
    for svc_name in svcs:
        try:
            client.containers.get(f"agentdistill-{name}-{svc_name}").remove(force=True)
            removed.append(svc_name)
        except docker.errors.NotFound:
            pass
    return removed
