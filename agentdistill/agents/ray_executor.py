"""The Ray executor: a plan's episodes played by env instances living in Ray actors across a cluster.

Each actor holds one env instance (a ScienceWorld JVM, a browser, ...) on some node, created once and
reused across episodes (and kept for the driver's next run on the same env and store: kept.py); it builds
the recipe's policies itself, so model calls happen where the episode runs (API models from any node;
`local/...` models on the nodes that host the actor), and it writes each
step straight to the store (committed before the next action, as with the local executor). The driver
keeps the plan, opens every attempt's row and schedules attempts on free actors under the run's
concurrency. An actor that dies (its process, its env or its whole node) loses only the attempt it was
playing: the driver records that attempt as an error (its stored steps stay), replaces the actor, and the
Runner retries the episode up to `max_attempts`. `--resume` is the Runner's, unchanged.

Multi-node runs need a store every node reaches: a SQLite store with a cluster beyond this machine is
refused in one line naming PostgreSQL.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import re
import socket
import threading
from typing import Any, NamedTuple

from agentdistill.agents.kept import Kept
from agentdistill.agents.runner import EpisodeSpec, Executor, Runner
from agentdistill.errors import AgentDistillError, ConfigError
from agentdistill.secrets import redact

log = logging.getLogger(__name__)
_CONNECTING = threading.Lock()


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError('runner.executor = "ray" needs Ray: pip install \'agentdistill[ray]\'') from None
    return ray


def _local_ips() -> set[str]:
    ips = {"127.0.0.1", "::1", "localhost"}
    try:
        ips |= set(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    try:  # the address this machine uses to reach the outside (no packet is sent)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            ips.add(s.getsockname()[0])
    except OSError:
        pass
    return ips


def _is_local(host: str) -> bool:
    if host in _local_ips():
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return socket.gethostbyname(host) in _local_ips() or ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except OSError:
            return False


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a concrete Ray address ("host:port", "ray://host:port"); None for "auto" / "local"."""
    rest = address.removeprefix("ray://")
    if rest in ("auto", "local") or ":" not in rest:
        return None
    host, _, port = rest.rpartition(":")
    if not port.isdigit():
        raise ConfigError(f"runner.address {address!r}: write host:port (e.g. 10.0.0.5:6379) or ray://host:10001")
    return host.strip("[]"), int(port)


def _sqlite_refusal(where: str) -> ConfigError:
    return ConfigError(
        f"a SQLite store cannot be shared with {where}: every node writes its episodes' steps to the store, "
        "so use a PostgreSQL store they all reach (--db postgresql://user@host/db, or AGENTDISTILL_DB)")


class RayCluster:
    """A connection to a Ray cluster, checked for what a run needs before the run is created."""

    def __init__(self, address: str | None, store, *, cpus: float, gpus: float, resources: dict[str, float]):
        ray = _ray()
        self.store = store  # the driver's: how many connections its server has free
        self.store_url = store_url = store.engine.url.render_as_string(hide_password=False)
        sqlite = store_url.startswith("sqlite")
        if store_url in ("sqlite://", "sqlite:///:memory:"):
            raise _sqlite_refusal("Ray actors (an in-memory database lives in one process)")
        address = address or os.environ.get("RAY_ADDRESS") or None
        target = _host_port(address) if address else None
        if target is not None:
            host, port = target
            if sqlite and not _is_local(host):
                raise _sqlite_refusal(f"the Ray cluster at {address}")
            try:
                socket.create_connection((host, port), timeout=5).close()
            except OSError as e:
                raise ConfigError(f"runner.address {address}: no Ray cluster answers there ({e.strerror or e}): "
                                  "start one (`ray start --head`) or fix the address") from None
        self._connections_free(1)  # a server with no room at all: one line before Ray starts or is joined
        with _CONNECTING:  # eval arms connect from several threads at once: one ray.init
            if not ray.is_initialized():
                try:
                    local = {"include_dashboard": False} if address in (None, "local") else {}
                    ray.init(address=address or "local", logging_level=logging.WARNING, log_to_driver=False,
                             configure_logging=False, **local)
                except Exception as e:  # a port that is not Ray's, a version mismatch, ...
                    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                    raise ConfigError(f"cannot join the Ray cluster at {address or 'a new local cluster'} ({first}): "
                                      "check runner.address and that the cluster runs the same Ray version") from None
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        remote = sorted({n["NodeManagerAddress"] for n in nodes} - _local_ips())
        if address and address.startswith("ray://"):
            remote = remote or ["(Ray client)"]
        if sqlite and remote:
            raise _sqlite_refusal(f"Ray nodes on other machines ({', '.join(remote[:3])})")
        total = ray.cluster_resources()
        wanted = {"CPU": cpus, "GPU": gpus, **resources}
        short = [f"{k} {v:g} (the cluster has {total.get(k, 0):g})" for k, v in wanted.items() if v > total.get(k, 0)]
        if short:
            raise ConfigError(f"each episode's env actor asks for {', '.join(short)}: lower runner.cpus_per_episode / "
                              "gpus_per_episode / resources or add nodes that have them")
        self.nodes = len(nodes)
        self.cpus, self.gpus, self.resources = cpus, gpus, dict(resources)
        # env actors the cluster holds at once, by what each reserves (the others wait for room)
        fits = [int(total.get(k, 0) / v + 1e-9) for k, v in wanted.items() if v > 0]
        self.slots = min(fits) if fits else None  # None: actors that reserve nothing all fit

    def actors_the_store_takes(self, wanted: int) -> int:
        """How many of `wanted` env actors to start: each one's store holds a connection to the PostgreSQL server,
        so no more than the server has free for those that can run at once. Fewer than wanted: a warning; none:
        one line."""
        at_once = self._at_once(wanted)
        free = self._connections_free(at_once)
        if free is None or at_once <= free:
            return wanted
        log.warning("the PostgreSQL server at %s has %d connections free and each env actor or Ray task holds one: "
                    "%d run at once instead of %d; raise its max_connections by %d to run them all at once",
                    self._where(), free, free, at_once, at_once - free)
        return free

    def runs_at_once(self, runs: int, actors_each: int) -> int:
        """How many runs of `actors_each` env actors to play side by side (the pipeline's eval arms): all of them,
        unless the PostgreSQL server has too few connections free for all their actors at once."""
        free = self._connections_free(self._at_once(actors_each))
        if free is None or self._at_once(runs * actors_each) <= free:
            return runs
        return max(1, free // self._at_once(actors_each))

    def _at_once(self, actors: int) -> int:
        return actors if self.slots is None else min(actors, self.slots)

    def _connections_free(self, wanted: int) -> int | None:
        """Connections the store's PostgreSQL server has free for env actors (None: SQLite); with none for the
        first of `wanted`, one line. This process's kept actors on the same store count as free (they are reused or
        stopped first); the driver keeps DRIVER_CONNECTIONS for itself, counting those it already holds."""
        from agentdistill.store import db

        room = db.server_room(self.store.engine)
        if room is None:
            return None
        pool = self.store.engine.pool
        own = pool.checkedin() + pool.checkedout()  # in room.in_use already
        free = (room.free + KEPT_ACTORS.count(lambda key: key.store_url == self.store_url)
                - max(DRIVER_CONNECTIONS - own, 0))
        if free < 1:
            raise ConfigError(
                f"the PostgreSQL server at {self._where()} has no connection free for env actors: {room.in_use} of its "
                f"{room.usable} are in use ({own} by this driver, which keeps {DRIVER_CONNECTIONS}), and each actor "
                f"holds one: raise its max_connections by at least {wanted - free} (postgresql.conf, then restart "
                "the server), or close other clients")
        return free

    def _where(self) -> str:
        from agentdistill.store import db

        return db.describe(self.store_url)


class _EnvActor:
    """One env instance on some node, playing attempts for one run, then kept for this driver's next run on the
    same env and store (made a Ray actor by `RayExecutor`)."""

    def __init__(self, store_url: str, recipe: dict[str, Any], max_steps: dict[str, int]):
        from agentdistill.store.store import Store

        self.store = Store.open(store_url, migrate_fresh=False, create=False)
        self.env = None
        self._bind(recipe, max_steps)

    def _bind(self, recipe: dict[str, Any], max_steps: dict[str, int]) -> None:
        from agentdistill.agents.rollout import build_policies
        from agentdistill.config import parse_recipe

        self.recipe = parse_recipe(recipe, "recipe of the run")
        self.runner = None  # an earlier run's policies (a local model) go before this run's load
        policies = build_policies(self.store, self.recipe)
        # it only plays attempts whose rows the driver opened (it may start before the run exists)
        self.runner = Runner(self.store, None, policies, max_steps)

    def rebind(self, recipe: dict[str, Any], max_steps: dict[str, int]) -> str:
        """Play for another run of the same env and store (a kept actor, see kept.py): that run's policies,
        this actor's env. Returns this actor's node id, as `warm` does."""
        self._bind(recipe, max_steps)
        return self.warm()

    def park(self) -> None:
        """Wait idle for a next run: the finished run's policies (a local model, a demo index) are let go."""
        self.runner = None

    def _start(self) -> None:
        if self.env is None:
            from agentdistill.agents.rollout import start_env

            self.env = start_env(self.recipe.env.name, self.recipe.env.options)

    def warm(self) -> str:
        """Start the env ahead of the first episode; returns this actor's node id."""
        import ray

        try:
            self._start()
        except Exception as e:  # the first episode will try again and record the failure
            log.warning("env failed to start: %s", redact(str(e))[:300])
        return ray.get_runtime_context().get_node_id()

    def tasks(self) -> list:
        """The recipe's tasks, listed on this actor's env (so the driver starts none of its own)."""
        from agentdistill.agents.rollout import select_tasks

        self._start()
        return select_tasks(self.env, self.recipe)

    def play(self, spec: EpisodeSpec, episode_id: int, attempt: int) -> str:
        import time

        t0 = time.perf_counter()
        # where it runs, recorded before its first step (a lost attempt names the node that died under it)
        self.store.set_episode_metrics(episode_id, {"ray": where()})
        try:
            self._start()
        except Exception as e:  # recorded like any failed attempt; the next attempt starts a new instance
            self.store.finish_episode(episode_id, status="error", success=False,
                                      error=redact(f"{type(e).__name__}: {e}")[:4000],
                                      wall_time=time.perf_counter() - t0)
            return "error"
        status, broken = asyncio.run(self.runner.play(spec, self.env, episode_id, attempt))
        if broken:  # retire a failed env (a dead JVM): the next episode starts a fresh one
            from agentdistill.agents.runner import _close_quietly

            _close_quietly(self.env)
            self.env = None
        return status

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None
        self.store.close()


DRIVER_CONNECTIONS = 2  # what the driver's own store may hold meanwhile (a read beside a write)
MAX_STARTS = 8  # tries to get a new actor up for one slot before the episode waiting for it fails
CLOSE_WAIT_S = 30.0  # how long stopping actors waits for their envs to close before killing them


def _stop_actors(actors: list, wait: bool = True) -> None:
    """Close each actor's env and store, then kill it (a JVM or browser is shut down, not orphaned). `wait=False`:
    the closing goes on in a background thread (the caller only needs their resources back, soon)."""
    if not actors:
        return
    ray = _ray()
    closing = []
    for actor in actors:
        try:
            closing.append(actor.close.remote())
        except Exception as e:  # a dead actor, or Ray shutting down
            log.debug("closing an env actor: %s", e)

    def finish() -> None:
        try:
            if closing:
                ray.wait(closing, num_returns=len(closing), timeout=CLOSE_WAIT_S)
        except Exception as e:
            log.debug("closing env actors: %s", e)
        finally:  # even on a second Ctrl-C while they close
            for actor in actors:
                try:
                    ray.kill(actor, no_restart=True)
                except Exception as e:
                    log.debug("killing an env actor failed: %s", e)

    if wait:
        finish()
    else:
        threading.Thread(target=finish, name="agentdistill-stop-actors", daemon=True).start()


class _ActorKey(NamedTuple):
    """What an env actor can be reused for: the cluster connection that made it (the job and driver node ids
    change with every `ray.init`, so an actor of an earlier connection never matches), its store, env and
    reservation."""

    connection: tuple[str, str]
    store_url: str
    env: str
    env_options: str
    reservation: str

    @classmethod
    def of(cls, store_url: str, recipe: dict[str, Any], cluster: RayCluster) -> _ActorKey:
        return cls(_connection(), store_url, recipe["env"]["name"],
                   json.dumps(recipe["env"].get("options") or {}, sort_keys=True, default=str),
                   json.dumps([cluster.cpus, cluster.gpus, cluster.resources or {}], sort_keys=True))


def _connection() -> tuple[str, str]:
    context = _ray().get_runtime_context()
    return context.get_job_id(), context.get_node_id()


def _stop_kept_actors(pairs: list[tuple[_ActorKey, Any]], wait: bool) -> None:
    """Stop the kept actors of this process's current connection to Ray; those of an earlier one went with it
    (and Ray must not be handed their handles)."""
    ray = _ray()
    if not ray.is_initialized():
        return
    current = _connection()
    _stop_actors([actor for key, actor in pairs if key.connection == current], wait=wait)


# env actors kept after a run (`runner.keep_envs_s`); an idle one holds its CPUs, so `fan_out` and any new actor
# of another kind stop them first
KEPT_ACTORS = Kept("Ray env actor", _stop_kept_actors)


class AttemptLost(AgentDistillError):
    """The actor playing an attempt died before recording its end."""


class RayExecutor(Executor):
    """Up to `size` env actors, spread over the cluster's nodes, created once and reused; a dead one is
    replaced by a fresh actor for the next episode."""

    def __init__(self, cluster: RayCluster, recipe: dict[str, Any], max_steps: dict[str, int], size: int,
                 keep_envs_s: float = 0.0):
        ray = _ray()
        self.cluster = cluster
        self._actor_cls = ray.remote(_EnvActor).options(
            num_cpus=cluster.cpus, num_gpus=cluster.gpus, resources=cluster.resources or None,
            scheduling_strategy="SPREAD", max_restarts=0, max_concurrency=1)
        self._args = (cluster.store_url, recipe, max_steps)
        self._key = _ActorKey.of(cluster.store_url, recipe, cluster)
        self.keep_envs_s = keep_envs_s
        self._kept: set[Any] = set()  # actors taken from an earlier run of this process
        self._free: asyncio.Queue = asyncio.Queue()
        self._all: list[Any] = []
        self.lost = 0  # actors that died under an attempt
        self._failed_starts = 0  # new actors lost before their first episode, in a row
        self.fatal: str | None = None
        for _ in range(size):
            self._free.put_nowait(self._new())  # all start now, in parallel

    def _new(self) -> tuple[Any, Any]:
        """An actor kept from an earlier run of this process on the same env and store, else a new one, and the
        reference that answers once it is up (it starts its env meanwhile)."""
        actor = KEPT_ACTORS.take(self._key)
        if actor is not None:
            self._kept.add(actor)
            self._all.append(actor)
            return actor, actor.rebind.remote(*self._args[1:])
        KEPT_ACTORS.stop_others(self._key)  # idle actors for other envs or stores hold resources this one may need
        actor = self._actor_cls.remote(*self._args)
        self._all.append(actor)
        return actor, actor.warm.remote()

    def tasks(self) -> list:
        """The recipe's tasks as an actor's env lists them: a bad split or task name gives its one line, as
        on the driver; the driver needs no env of its own (on a real cluster it may have none installed)."""
        ray = _ray()
        actor, ready = self._free.get_nowait()
        try:
            while True:
                try:
                    return ray.get(actor.tasks.remote())
                except ray.exceptions.RayTaskError as e:
                    if isinstance(e.cause, AgentDistillError):  # an unknown split or task, an env that did not start
                        raise e.cause.with_traceback(None) from None
                    raise AgentDistillError(f"listing the tasks on an env actor failed: {_cause(e)}") from None
                except ray.exceptions.RayError as e:
                    if actor not in self._kept:
                        raise AgentDistillError(f"the env actor listing the tasks was lost: {_cause(e)}") from None
                    log.info("a kept env actor was lost while idle (%s): starting another", _cause(e))
                    self._retire(actor)  # died while idle: another (kept or new) lists them
                    actor, ready = self._new()
        finally:
            self._free.put_nowait((actor, ready))

    async def _acquire(self):
        """A free actor that is up. A new one that dies before its first episode (e.g. placed on a node that is
        dying but not yet marked dead) costs no episode: it is replaced, with a growing pause, a bounded
        number of times. A kept one that died while idle (its node lost meanwhile) is replaced at once."""
        ray = _ray()
        actor, ready = await self._free.get()
        delay, cause, starts = 0.5, "", 0
        while not self.fatal:  # once actors cannot start at all here, fail fast instead of retrying every slot
            if ready is None:
                return actor
            try:
                await ready
                self._failed_starts = 0
                return actor
            except ray.exceptions.RayError as e:
                cause = _cause(e)
                kept = actor in self._kept
                self._retire(actor)
                if kept:
                    log.info("a kept env actor was lost while idle (%s): starting another", cause)
                else:
                    log.warning("a new env actor was lost before its first episode (%s): starting another", cause)
                    self._failed_starts += 1
                    starts += 1
                    if self._failed_starts >= MAX_STARTS:
                        self.fatal = (f"no env actor stayed up on the cluster after {MAX_STARTS} starts in a row "
                                      f"({cause}): check the nodes (`ray status`), and that agentdistill, the env's "
                                      "data and the store are reachable from each")
                        break
                    if starts >= MAX_STARTS:
                        break
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, 10.0)
                actor, ready = self._new()
        self._free.put_nowait((actor, ready))
        raise AttemptLost(self.fatal or f"no env actor stayed up after {MAX_STARTS} starts ({cause})")

    async def play(self, runner: Runner, spec: EpisodeSpec, episode_id: int, attempt: int) -> str:
        ray = _ray()
        actor = await self._acquire()
        playing = actor.play.remote(spec, episode_id, attempt)
        try:
            status = await playing
        except ray.exceptions.RayError as e:
            self.lost += 1
            self._retire(actor)
            self._free.put_nowait(self._new())
            raise AttemptLost(f"the Ray actor playing it was lost: {_first_line(e)}") from None
        except BaseException:  # cancelled (Ctrl-C): the episode may still be playing there, so it is not idle
            self._free.put_nowait((actor, playing))
            raise
        self._free.put_nowait((actor, None))
        return status

    def _retire(self, actor) -> None:
        ray = _ray()
        self._kept.discard(actor)
        if actor in self._all:
            self._all.remove(actor)
        try:  # it may still be running somewhere (a lost reply): it must not write on
            ray.kill(actor, no_restart=True)
        except Exception as e:
            log.debug("killing a lost actor failed: %s", e)

    def close(self) -> None:
        """Keep the actors that are up and idle for the next run (`keep_envs_s`); stop the others (still
        starting, or mid-episode in a run that was interrupted)."""
        idle = []
        while not self._free.empty():
            actor, ready = self._free.get_nowait()
            if actor in self._all and _is_up(ready):
                idle.append(actor)
        if self.keep_envs_s <= 0 or self.fatal:
            idle = []
        others = [actor for actor in self._all if actor not in idle]
        self._all.clear()
        try:
            for actor in idle:
                actor.park.remote()  # before it is kept: a next run's `rebind` comes after it
            KEPT_ACTORS.put(self._key, idle, self.keep_envs_s)
        finally:
            _stop_actors(others)


def _is_up(ready) -> bool:
    """Whether what an actor was last given (its start: `warm` / `rebind`, or an episode whose caller was
    cancelled) has answered without error (None: it played to the end)."""
    if ready is None:
        return True
    ray = _ray()
    try:
        done, _ = ray.wait([ready], timeout=0)
        if done:
            ray.get(done[0])
        return bool(done)
    except Exception:
        return False


def _cause(e: BaseException) -> str:
    """What killed an actor: the exception its constructor raised (the last `SomeError: ...` line of Ray's
    report), else the report's first line."""
    for line in reversed(str(e).strip().splitlines()):
        m = re.match(r"\s*([\w.]*(Error|Exception|Exit|Interrupt)): (.+)", line)
        if m:
            return redact(f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(3).strip()}")[:300]
    return _first_line(e)


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return redact(f"{type(e).__name__}: {lines[0] if lines else ''}")[:300]


def fan_out(cluster: RayCluster, fn, items: list[tuple]) -> list[Any]:
    """`fn(*item)` for every item as Ray tasks spread over the cluster (each asking for the per-episode
    resources), results in order: the pipeline's independent work beyond episodes (Trace2Skill analysts,
    SPARK tasks). `fn` must be importable on the nodes and write only through the store; a task whose
    worker dies is run once more (SPARK's episodes resume from the store, analysts start over)."""
    ray = _ray()
    if not items:
        return []
    at_once = cluster.actors_the_store_takes(len(items))  # each task opens a store: a server connection
    # env actors kept from a run hold the CPUs and connections these tasks need: gone before they start
    KEPT_ACTORS.stop_all(wait=True)
    remote = ray.remote(fn).options(num_cpus=cluster.cpus, num_gpus=cluster.gpus, resources=cluster.resources or None,
                                    scheduling_strategy="SPREAD", max_retries=1)
    refs = [remote.remote(*item) for item in items[:at_once]]
    running = list(refs)
    try:
        while len(refs) < len(items):  # one more as each finishes
            done, running = ray.wait(running, num_returns=1)
            ray.get(done)  # a failed task stops the rest (below) instead of starting more
            refs.append(remote.remote(*items[len(refs)]))
            running.append(refs[-1])
        return ray.get(refs)
    except BaseException as e:  # the others must not go on writing for a stage that has failed
        for ref in refs:
            try:
                ray.cancel(ref, force=True)
            except Exception as cancel_error:
                log.debug("cancelling a Ray task: %s", cancel_error)
        if isinstance(e, ray.exceptions.RayError):
            raise AgentDistillError(f"a Ray task of {getattr(fn, '__name__', 'the pipeline')} failed: {_cause(e)}") from None
        raise


def where() -> dict[str, Any]:
    """The node, host and process a piece of work ran in (recorded with what it produced)."""
    import ray

    return {"node": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(), "pid": os.getpid()}
