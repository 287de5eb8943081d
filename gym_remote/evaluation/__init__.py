"""Evaluating policies on remote envs: planned episodes, success rates, results on disk.

Imports nothing heavy: the policy's own packages load only when the policy is named.
"""

from gym_remote.evaluation.plan import (
    Episode,
    Task,
    libero_tasks,
    parse_task_ids,
    plan_episodes,
    robosuite_task,
)
from gym_remote.evaluation.policies import Policy, load_policy
from gym_remote.evaluation.results import EpisodeResult, SuccessRate, wilson_interval
from gym_remote.evaluation.runner import Evaluation, evaluate

__all__ = [
    "Episode",
    "EpisodeResult",
    "Evaluation",
    "Policy",
    "SuccessRate",
    "Task",
    "evaluate",
    "libero_tasks",
    "load_policy",
    "parse_task_ids",
    "plan_episodes",
    "robosuite_task",
    "wilson_interval",
]
