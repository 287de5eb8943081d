"""What an evaluation runs: tasks, and a fixed plan of episodes for each.

Episode ``k`` of a task always starts from the same seed and (for LIBERO) the same initial state,
whatever the number of sessions and in whatever order episodes finish, so results never depend
on parallelism.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

__all__ = ["Task", "Episode", "plan_episodes", "libero_tasks", "robosuite_task", "parse_task_ids"]

LIBERO_ENV_ID = "gym_remote/Libero-v0"
ROBOSUITE_ENV_ID = "gym_remote/Robosuite-v0"


@dataclass(frozen=True)
class Task:
    """One task of an evaluation.

    Attributes:
        name: How results name it, for example ``libero_goal/3`` or ``Lift``.
        env_id: The id the server makes.
        env_kwargs: Keyword arguments of the remote ``gym.make``.
        init_states: Whether episode ``k`` resets with ``options={"init_state_id": k}``
            (LIBERO's fixed initial states).
    """

    name: str
    env_id: str
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    init_states: bool = False


@dataclass(frozen=True)
class Episode:
    """One planned episode: task ``task`` (its name), number ``index``, and how it is reset."""

    task: str
    index: int
    seed: int
    init_state: int | None

    @property
    def reset_options(self) -> dict[str, Any] | None:
        """The ``options`` of the episode's reset."""
        return None if self.init_state is None else {"init_state_id": self.init_state}


def plan_episodes(task: Task, episodes: int, seed: int = 0) -> list[Episode]:
    """The episodes of ``task``: episode ``k`` resets with seed ``seed + k`` (and initial state ``k``)."""
    if episodes < 1:
        raise ValueError(f"episodes per task must be at least 1, got {episodes}")
    return [
        Episode(task.name, index, seed + index, index if task.init_states else None)
        for index in range(episodes)
    ]


def parse_task_ids(text: str) -> list[int]:
    """Task ids from ``"0-4"``, ``"1,3,7"`` or ``"0-2,9"``.

    Raises:
        ValueError: not such a list of non-negative integers and ranges.
    """
    ids: list[int] = []
    for part in text.split(","):
        first, separator, last = part.strip().partition("-")
        try:
            start, stop = int(first), int(last) if separator else int(first)
        except ValueError:
            raise ValueError(f"task ids {text!r}: expected numbers and ranges such as 0-4,7") from None
        if start < 0 or stop < start:
            raise ValueError(f"task ids {text!r}: {part.strip()!r} is not a range of ids from 0 up")
        ids.extend(range(start, stop + 1))
    return list(dict.fromkeys(ids))


def libero_tasks(suite: str, task_ids: Sequence[int], **env_kwargs: Any) -> list[Task]:
    """LIBERO tasks of ``suite``, episode ``k`` of each from the suite's initial state ``k``."""
    return [
        Task(
            f"{suite}/{task_id}",
            LIBERO_ENV_ID,
            {"task_suite": suite, "task_id": task_id, **env_kwargs},
            init_states=True,
        )
        for task_id in task_ids
    ]


def robosuite_task(env_name: str, **env_kwargs: Any) -> Task:
    """A robosuite task (``Lift``, ``Stack``, ...), episode ``k`` seeded ``seed + k``."""
    return Task(env_name, ROBOSUITE_ENV_ID, {"env_name": env_name, **env_kwargs})
