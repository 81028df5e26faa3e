from agentdistill.envs.base import Env, Observation, Requirement, StepResult, Task
from agentdistill.envs.registry import check, make, names, register

__all__ = ["Env", "Observation", "Requirement", "StepResult", "Task", "check", "make", "names", "register"]
