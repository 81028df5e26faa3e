"""New ALFWorld games from an existing scene, offline, with ALFWorld's own goal library.

ALFWorld's games come from ALFRED scenes rendered in AI2-THOR; making new scenes needs the
simulator. A scene's PDDL problem, though, already lists every object, receptacle and what can hold
what (`canContain`), so new games of the same scene are new goals over it: a goal from
`alfworld.gen.goal_library` (pick and place, clean/heat/cool then place, two objects, look at an
object under a lamp) for an object and receptacle type the scene has, optionally with the goal
object first moved to another receptacle that can hold it. Each game is written in ALFWorld's layout
(`json_2.1.1/<split>/<task>-<Obj>-None-<Recep>-<scene>/<trial>/` with initial_state.pddl,
traj_data.json and game.tw-pddl built as `alfworld-play-tw` builds it), then played by ALFWorld's
experts: only games they win are kept (marked `solvable`, as ALFWorld marks them). Both experts are
stochastic (the hand-coded one draws from Python's `random`; the planner does not always solve
two-object goals), so a game must be won by each expert on every one of `checks` plays. A goal
(task, object, receptacle, lamp, placement) used in one split is never reused in another.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

from agentdistill.errors import ConfigError
from agentdistill.paths import write_atomic

FACT = re.compile(r"\((\w+) ([^()\s]+)(?: ([^()\s]+))?\)")
NEEDS = {  # the device a task type needs in the scene, and the object property
    "pick_clean_then_place_in_recep": ("SinkBasin", "cleanable"),
    "pick_heat_then_place_in_recep": ("Microwave", "heatable"),
    "pick_cool_then_place_in_recep": ("Fridge", "coolable"),
}
LAMPS = ("DeskLamp", "FloorLamp")


@dataclass(frozen=True)
class Goal:
    task_type: str
    obj: str  # object type, e.g. Apple
    recep: str = ""  # receptacle type, e.g. Fridge ("" for look_at_obj_in_light)
    toggle: str = ""  # lamp type for look_at_obj_in_light
    moved: str = ""  # "<object instance>-><receptacle instance>" when the goal object was relocated
    scene: str = ""  # the ALFRED scene (floor plan) it is set in

    @property
    def signature(self) -> str:
        return f"{self.scene}|{self.task_type}|{self.obj}|{self.recep}|{self.toggle}|{self.moved}"


class Scene:
    """The facts of an ALFWorld PDDL problem that goal sampling needs."""

    def __init__(self, problem: str):
        if "(:init" not in problem or "(:goal" not in problem:
            raise ConfigError("not an ALFWorld PDDL problem (no :init or :goal section)")
        self.problem = problem
        init = problem[problem.index("(:init"):problem.index("(:goal")]
        self.facts = [(m[1], m[2], m[3]) for m in FACT.finditer(init)]
        by = lambda name: [(a, b) for n, a, b in self.facts if n == name]  # noqa: E731
        self.obj_type = {o: t[:-4] for o, t in by("objectType")}
        self.recep_type = {r: t[:-4] for r, t in by("receptacleType")}
        self.in_recep: dict[str, set[str]] = {}
        for o, r in by("inReceptacle"):
            self.in_recep.setdefault(o, set()).add(r)
        self.recep_loc = {r: loc for r, loc in by("receptacleAtLocation")}
        self.can_contain = {(r[:-4], o[:-4]) for r, o in by("canContain")}
        self.flags = {(n, a) for n, a, b in self.facts if b is None}
        self.nested = {a for a, b in by("inReceptacleObject")} | {b for a, b in by("inReceptacleObject")}

    def has(self, flag: str, obj: str) -> bool:
        return (flag, obj) in self.flags

    def instances(self, obj_type: str) -> list[str]:
        return sorted(o for o, t in self.obj_type.items() if t == obj_type)

    def recep_types(self) -> set[str]:
        return set(self.recep_type.values())

    def satisfied(self, goal: Goal) -> bool:
        """Whether the start state already meets a placing goal (ALFWorld never samples those)."""
        return any(self.recep_type.get(r) == goal.recep
                   for o in self.instances(goal.obj) for r in self.in_recep.get(o, ()))

    def candidates(self) -> list[Goal]:
        """Every goal of the goal library this scene supports (before relocations)."""
        from alfworld.gen import goal_library

        goals = []
        pickable = sorted({self.obj_type[o] for o in self.obj_type if self.has("pickupable", o)
                           and not self.obj_type[o].endswith("Sliced")})
        receps = sorted(self.recep_types())
        for task in ("pick_and_place_simple", *NEEDS, "pick_two_obj_and_place"):
            if task not in goal_library.gdict:
                continue
            device, prop = NEEDS.get(task, (None, None))
            if device and device not in receps:
                continue
            for obj in pickable:
                insts = self.instances(obj)
                if prop and not any(self.has(prop, o) for o in insts):
                    continue
                if task == "pick_two_obj_and_place" and len(insts) < 2:
                    continue
                for recep in receps:
                    if (recep, obj) not in self.can_contain or recep == device:
                        continue
                    goal = Goal(task, obj, recep)
                    if not self.satisfied(goal):
                        goals.append(goal)
        lamps = sorted({t for o, t in self.obj_type.items() if t in LAMPS and self.has("toggleable", o)})
        for lamp in lamps:
            for obj in pickable:
                goals.append(Goal("look_at_obj_in_light", obj, "", lamp))
        return goals

    def relocate(self, goal: Goal, rng: random.Random) -> tuple[Goal, str]:
        """The goal with one instance of its object moved to another receptacle that can hold it."""
        # objects in exactly one receptacle and not stacked in or under a movable one
        movable = [o for o in self.instances(goal.obj) if len(self.in_recep.get(o, ())) == 1 and o not in self.nested]
        rng.shuffle(movable)
        for o in movable:
            (here,) = self.in_recep[o]
            options = sorted(r for r, t in self.recep_type.items()
                             if (t, goal.obj) in self.can_contain and r != here and t != goal.recep
                             and r in self.recep_loc)
            if options:
                r = rng.choice(options)
                problem = self.problem.replace(f"(inReceptacle {o} {here})", f"(inReceptacle {o} {r})")
                problem = re.sub(rf"\(objectAtLocation {re.escape(o)} [^()\s]+\)",
                                 f"(objectAtLocation {o} {self.recep_loc[r]})", problem)
                return Goal(goal.task_type, goal.obj, goal.recep, goal.toggle, f"{o}->{r}", goal.scene), problem
        return goal, self.problem

    def with_goal(self, goal: Goal, problem: str | None = None) -> str:
        from alfworld.gen import goal_library

        pddl = goal_library.gdict[goal.task_type]["pddl"].format(obj=goal.obj, recep=goal.recep, toggle=goal.toggle)
        problem = problem or self.problem
        return problem[:problem.index("(:goal")] + pddl.replace("#", "-").strip() + "\n"


@dataclass
class Source:
    """An existing game whose scene new games reuse, read once."""

    path: Path
    scene: Scene
    traj: dict  # its traj_data.json
    domain: str  # its PDDL domain

    @classmethod
    def load(cls, path: Path) -> Source:
        game = json.loads((path / "game.tw-pddl").read_text())
        return cls(path, Scene(game["pddl_problem"]), json.loads((path / "traj_data.json").read_text()),
                   game["pddl_domain"])

    @property
    def floor_plan(self) -> str:
        return str(self.traj.get("scene", {}).get("floor_plan", self.path.name))

    @property
    def scene_num(self) -> str:
        return str(self.traj.get("scene", {}).get("scene_num", "X"))


def used_signatures(root: Path) -> dict[str, str]:
    """signature -> split of every game generated under `root` so far."""
    out = {}
    for traj in (root / "json_2.1.1").glob("*/*/*/traj_data.json"):
        sig = json.loads(traj.read_text()).get("agentdistill_goal")
        if sig:
            out[sig] = traj.parts[-4]
    return out


def _write_game(source: Source, dest: Path, goal: Goal, problem: str, trial: str) -> tuple[Path, dict]:
    """ALFWorld's three files for a new goal over the source game's scene, written atomically;
    returns the game file and its content."""
    from alfworld.agents.utils.misc import add_task_to_grammar

    traj = {**source.traj, "task_type": goal.task_type, "task_id": trial, "agentdistill_goal": goal.signature,
            "pddl_params": {"object_target": goal.obj, "parent_target": goal.recep, "toggle_target": goal.toggle,
                            "mrecep_target": "", "object_sliced": False},
            "turk_annotations": {"anns": []},  # human descriptions of the source goal no longer apply
            "plan": {"high_pddl": [], "low_actions": []}}
    # the source's grammar has its goal text filled in: start again from ALFWorld's stock grammar
    game = {"pddl_domain": source.domain, "grammar": add_task_to_grammar(_stock_grammar(), traj),
            "pddl_problem": problem}
    tmp = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "initial_state.pddl").write_text(problem)
    (tmp / "traj_data.json").write_text(json.dumps(traj, indent=1))
    (tmp / "game.tw-pddl").write_text(json.dumps(game))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp.replace(dest)
    return dest / "game.tw-pddl", game


@cache
def _stock_grammar() -> str:
    import alfworld

    return (Path(alfworld.__file__).parent / "data" / "alfred.twl2").read_text()


def play(game: Path, expert: str, max_steps: int = 60) -> bool:
    """Whether ALFWorld's expert wins the game."""
    from agentdistill.envs.alfworld import ALFWorldEnv

    env = ALFWorldEnv(data=str(game.parents[4]), expert=expert, max_episode_steps=max_steps)
    try:
        env.start(game)
        for _ in range(max_steps):
            action = env.expert_action()
            if action is None:
                return False
            result = env.step(action)
            if result.done:
                return bool(result.info["won"])
        return False
    finally:
        env.close()


@dataclass
class Generated:
    games: list[Path]
    tried: int
    rejected: int  # the experts did not win them every time: deleted


EXPERTS = {"planner": ("planner",), "handcoded": ("handcoded",), "both": ("planner", "handcoded")}


def generate(sources: list[Path], out: Path, split: str, n: int, seed: int = 0, relocate: float = 0.5,
             expert: str = "both", checks: int = 3) -> Generated:
    """Up to `n` new expert-verified games in `out`'s `split`, from the scenes of the `sources` games.
    `expert` (planner, handcoded or both) must win each game in all of `checks` plays."""
    if expert not in EXPERTS:
        raise ConfigError(f"expert {expert!r}: use {', '.join(EXPERTS)}")
    if checks < 1:
        raise ConfigError(f"checks {checks}: use 1 or more")
    if not sources:
        raise ConfigError("no source ALFWorld games: give a folder holding game.tw-pddl + traj_data.json trials")
    rng = random.Random(seed)
    used = used_signatures(out)
    pool = []
    for path in sources:
        src = Source.load(path)
        pool += [(src, replace(g, scene=src.floor_plan)) for g in src.scene.candidates()]
    rng.shuffle(pool)
    made: list[Path] = []
    tried = rejected = 0
    for src, goal in pool:
        if len(made) >= n:
            break
        problem = None
        if goal.task_type != "look_at_obj_in_light" and rng.random() < relocate:
            goal, problem = src.scene.relocate(goal, rng)
        if goal.signature in used:  # never the same goal twice, nor in two splits
            continue
        tried += 1
        trial = f"trial_gen_{seed}_{tried:04d}"
        task_dir = f"{goal.task_type}-{goal.obj}-None-{goal.recep or goal.toggle}-{src.scene_num}"
        folder = out / "json_2.1.1" / split / task_dir
        game, content = _write_game(src, folder / trial, goal, src.scene.with_goal(goal, problem), trial)
        if all(play(game, e) for e in EXPERTS[expert] for _ in range(checks)):
            write_atomic(game, json.dumps({**content, "solvable": True}))
            made.append(game)
            used[goal.signature] = split
        else:
            rejected += 1
            shutil.rmtree(game.parent)
    return Generated(made, tried, rejected)


def source_games(path: Path) -> list[Path]:
    """Trial folders (game.tw-pddl + traj_data.json) under `path`."""
    return sorted(p.parent for p in path.rglob("game.tw-pddl") if (p.parent / "traj_data.json").exists())
