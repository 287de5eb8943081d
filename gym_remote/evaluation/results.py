"""An evaluation's results: one row per episode, success rates with 95% Wilson intervals, the
episodes lost to crashed simulators (and run again), and the files they are kept in
(``episodes.csv`` and ``lost.csv``, appended as episodes end, and ``results.json``)."""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

__all__ = [
    "EpisodeResult",
    "LostEpisode",
    "SuccessRate",
    "wilson_interval",
    "summarize",
    "ResultsLog",
    "format_table",
    "from_row",
]

EPISODES_FILE = "episodes.csv"
LOST_FILE = "lost.csv"
RESULTS_FILE = "results.json"
# The normal quantile of a two-sided 95% interval.
_Z_95 = 1.959963984540054


@dataclass(frozen=True)
class EpisodeResult:
    """One episode as it ended.

    Attributes:
        task: The task's name.
        episode: The episode's number within its task (its place in the plan).
        seed: The seed of its reset.
        init_state: The initial state it started from (LIBERO), or None.
        success: Whether the env said ``info["is_success"]`` when the episode ended.
        episode_return: The sum of its rewards.
        length: Its steps.
        seconds: Wall-clock time from its reset to its end.
        failure: Why it did not succeed (``terminated``, ``truncated``, ``max_steps``, or the
            error that ended it, ``RemoteError: ...``), or ``""``.
    """

    task: str
    episode: int
    seed: int
    init_state: int | None
    success: bool
    episode_return: float
    length: int
    seconds: float
    failure: str = ""


@dataclass(frozen=True)
class LostEpisode:
    """An episode cut short because its env's worker failed (crashed, was killed, missed its
    deadline, or its server went away): it is run again from the same seed and initial state,
    and counts neither as a success nor as a failure.

    Attributes:
        task, episode, seed, init_state: As in :class:`EpisodeResult`.
        length: The steps it had taken.
        cause: What ended it (``WorkerCrashed: ... killed by SIGSEGV ...``).
    """

    task: str
    episode: int
    seed: int
    init_state: int | None
    length: int
    cause: str


@dataclass(frozen=True)
class SuccessRate:
    """Successes out of episodes, with the 95% Wilson interval of the rate."""

    episodes: int
    successes: int

    @property
    def rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.episodes)

    def to_json(self) -> dict[str, Any]:
        low, high = self.interval
        return {
            "episodes": self.episodes,
            "successes": self.successes,
            "success_rate": self.rate,
            "ci95_low": low,
            "ci95_high": high,
        }


def wilson_interval(successes: int, trials: int, z: float = _Z_95) -> tuple[float, float]:
    """The Wilson score interval of a success rate (95% by default); (0, 1) for no trials."""
    if trials == 0:
        return 0.0, 1.0
    rate = successes / trials
    denominator = 1 + z * z / trials
    center = (rate + z * z / (2 * trials)) / denominator
    half_width = z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials)) / denominator
    low = 0.0 if successes == 0 else max(0.0, center - half_width)
    high = 1.0 if successes == trials else min(1.0, center + half_width)
    return low, high


def summarize(
    results: Iterable[EpisodeResult], tasks: Sequence[str], lost: Sequence[LostEpisode] = ()
) -> dict[str, Any]:
    """Per task (in ``tasks``' order) and overall success rates, every episode, sorted by task
    and episode number, and the episodes lost and run again: what ``results.json`` holds."""
    episodes = sorted(results, key=lambda result: (tasks.index(result.task), result.episode))
    per_task = {
        task: SuccessRate(
            sum(1 for result in episodes if result.task == task),
            sum(1 for result in episodes if result.task == task and result.success),
        ).to_json()
        for task in tasks
    }
    overall = SuccessRate(len(episodes), sum(result.success for result in episodes)).to_json()
    return {
        "tasks": per_task,
        "overall": overall,
        "episodes": [dataclasses.asdict(result) for result in episodes],
        "lost_episodes": {
            "count": len(lost),
            "episodes": [dataclasses.asdict(episode) for episode in lost],
        },
    }


def format_table(summary: dict[str, Any]) -> str:
    """The per-task and overall success rates of ``summary`` as a plain-text table."""
    rows = [(task, rate) for task, rate in summary["tasks"].items()] + [("overall", summary["overall"])]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'task':<{width}}  episodes  successes  rate   95% CI"]
    for name, rate in rows:
        lines.append(
            f"{name:<{width}}  {rate['episodes']:>8}  {rate['successes']:>9}  {rate['success_rate']:.3f}"
            f"  [{rate['ci95_low']:.3f}, {rate['ci95_high']:.3f}]"
        )
    lost = summary.get("lost_episodes", {}).get("episodes", [])
    if lost:
        causes = collections.Counter(episode["cause"].split(":")[0] for episode in lost)
        lines.append(
            f"lost and run again: {len(lost)} episode(s) ("
            + ", ".join(f"{count} {cause}" for cause, count in causes.most_common())
            + "); they count in no rate"
        )
    return "\n".join(lines)


class ResultsLog:
    """The results of an evaluation in ``directory``: each episode is appended to
    ``episodes.csv`` (each lost one to ``lost.csv``; flushed, so a run that dies keeps every
    episode that ended) and ``results.json`` is rewritten with the summary."""

    def __init__(self, directory: str | os.PathLike[str], tasks: Sequence[str], resume: bool = False) -> None:
        self.directory = Path(directory)
        self.tasks = list(tasks)
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / EPISODES_FILE
        self.results: list[EpisodeResult] = []
        if path.exists():
            if not resume:
                raise FileExistsError(
                    f"{path} holds results of an earlier run: pass resume=True (--resume) to go on "
                    "with it, or choose another output directory"
                )
            with path.open(newline="") as file:
                self.results = [from_row(EpisodeResult, row) for row in csv.DictReader(file)]
        lost_path = self.directory / LOST_FILE
        self.lost: list[LostEpisode] = []
        if lost_path.exists() and resume:
            with lost_path.open(newline="") as file:
                self.lost = [from_row(LostEpisode, row) for row in csv.DictReader(file)]
        self._file, self._writer = _appender(path, EpisodeResult, fresh=not self.results)
        self._lost_file, self._lost_writer = _appender(lost_path, LostEpisode, fresh=not self.lost)

    def done(self) -> set[tuple[str, int]]:
        """The ``(task, episode)`` pairs already in the log."""
        return {(result.task, result.episode) for result in self.results}

    def add(self, result: EpisodeResult) -> None:
        """Appends one episode and rewrites the summary."""
        self.results.append(result)
        self._writer.writerow(dataclasses.asdict(result))
        self._file.flush()
        self._write_summary()

    def add_lost(self, episode: LostEpisode) -> None:
        """Appends one lost episode and rewrites the summary."""
        self.lost.append(episode)
        self._lost_writer.writerow(dataclasses.asdict(episode))
        self._lost_file.flush()
        self._write_summary()

    def _write_summary(self) -> None:
        summary = summarize(
            [r for r in self.results if r.task in self.tasks],
            self.tasks,
            [episode for episode in self.lost if episode.task in self.tasks],
        )
        temporary = self.directory / (RESULTS_FILE + ".tmp")
        temporary.write_text(json.dumps(summary, indent=2) + "\n")
        temporary.replace(self.directory / RESULTS_FILE)

    def close(self) -> None:
        self._file.close()
        self._lost_file.close()


# How each field type of the rows above reads back from its CSV text.
_FROM_TEXT: dict[str, Callable[[str], Any]] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": lambda text: text == "True",
    "int | None": lambda text: int(text) if text else None,
}
RowT = TypeVar("RowT")


def from_row(row_type: type[RowT], row: dict[str, str]) -> RowT:
    """A row of ``episodes.csv`` or ``lost.csv`` as the dataclass ``row_type`` it was written from."""
    fields = dataclasses.fields(row_type)  # type: ignore[arg-type]
    return row_type(**{field.name: _FROM_TEXT[str(field.type)](row[field.name]) for field in fields})


def _appender(path: Path, row_type: type, fresh: bool) -> tuple[Any, csv.DictWriter]:
    """``path`` opened to append rows of the dataclass ``row_type`` (a header first if ``fresh``)."""
    file = path.open("w" if fresh else "a", newline="")
    writer = csv.DictWriter(file, fieldnames=[field.name for field in dataclasses.fields(row_type)])
    if fresh:
        writer.writeheader()
        file.flush()
    return file, writer
