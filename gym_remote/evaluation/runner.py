"""``evaluate``: runs a policy on planned episodes of each task over a ``RemoteVectorEnv``.

Stepping and inference overlap: while the policy computes actions for the envs that need them
(in a thread of its own), envs that still have actions of their chunk keep stepping.
"""

from __future__ import annotations

import collections
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import concatenate, create_empty_array, iterate

from gym_remote.client import SessionState
from gym_remote.errors import RemoteEnvError
from gym_remote.evaluation.plan import Episode, Task, plan_episodes
from gym_remote.evaluation.policies import Policy, load_policy
from gym_remote.evaluation.results import EpisodeResult, LostEpisode, ResultsLog, format_table, summarize
from gym_remote.recording.recorder import Recorder, open_dataset
from gym_remote.recording.wrappers import vector_info_value
from gym_remote.recovery import RestartPolicy
from gym_remote.vector import RemoteVectorEnv

__all__ = ["evaluate", "Evaluation"]

# While the policy computes, how often the loop looks for finished steps (seconds).
_POLL_SECONDS = 0.002
# The longest failure reason an episode row keeps (an env's error message, say).
_MAX_FAILURE_LENGTH = 300
# How often one planned episode is run again after its env's worker failed before it counts as
# a failure (a state that crashes the simulator every time).
_MAX_LOSSES_PER_EPISODE = 3

ProgressCallback = Callable[[int, int, int], None]  # (episodes ended, episodes planned, successes)


@dataclass
class Evaluation:
    """What :func:`evaluate` returns: every episode (with those of a resumed run), the episodes
    lost to failed workers and run again, and the tasks."""

    tasks: list[str]
    episodes: list[EpisodeResult] = field(default_factory=list)
    lost: list[LostEpisode] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Per task and overall success rates with 95% Wilson intervals, every episode, and
        the lost ones."""
        return summarize(self.episodes, self.tasks, self.lost)

    def table(self) -> str:
        """The success rates as a plain-text table."""
        return format_table(self.summary())


def evaluate(
    tasks: Sequence[Task],
    policy: Policy | str = "random",
    *,
    observation_keys: str = "flat",
    episodes: int = 10,
    num_envs: int = 1,
    address: str | Sequence[str] | None = None,
    replan_steps: int | None = None,
    prefetch_steps: int = 0,
    max_steps: int | None = None,
    seed: int = 0,
    output_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    videos_per_task: int = 0,
    record: str | os.PathLike[str] | None = None,
    record_format: str = "lerobot",
    only_success: bool = False,
    progress: ProgressCallback | None = None,
    timeout: float | None = None,
    token: str | None = None,
    restart_failed_envs: bool | RestartPolicy = True,
    locate: Callable[[str], str] | None = None,
) -> Evaluation:
    """Runs ``episodes`` planned episodes of each task with ``policy``, ``num_envs`` at a time.

    Episode ``k`` of a task resets with seed ``seed + k`` (and, for LIBERO, initial state ``k``)
    whatever ``num_envs`` is, so results do not depend on parallelism.

    Args:
        tasks: What to evaluate (see :func:`~gym_remote.evaluation.libero_tasks`).
        policy: A :class:`Policy`, or a name for :func:`~gym_remote.evaluation.load_policy`.
            A policy with ``set_task(env_index, text)`` is told each env's task text (the
            env's ``task_description``, else the task's name).
        observation_keys: How a ``ws://`` policy server is sent observations.
        episodes: Episodes per task.
        num_envs: Sessions stepped at once (fewer where a task has fewer episodes left).
        address: A server, a list of them (sessions spread round-robin), or None (a private one).
        replan_steps: Actions of each chunk run before the policy is asked again (None: all).
        prefetch_steps: Ask for an env's next actions when it has this many left, from the
            observation then, so that inference runs while they are stepped (0: when it has
            none left). The next chunk then starts that many steps after its observation,
            always the same number whatever the timing, so results stay deterministic.
        max_steps: Ends an episode after this many steps, besides the env's own time limit.
        seed: The seed of every task's episode 0.
        output_dir: Where ``episodes.csv`` and ``results.json`` go (None: nowhere).
        resume: Go on with the results in ``output_dir``: episodes already there are skipped.
        videos_per_task: Writes episodes ``0 .. videos_per_task - 1`` of each task as mp4 files,
            ``output_dir/videos/TASK/episode_K.mp4``: the env's ``render()`` after its reset and
            each step, at its control rate (``control_freq``; else ``render_fps``). Needs PyAV.
        record: A directory to record every episode into, as one dataset for all tasks and
            envs (in the order episodes end, each noting its env, task, seed and initial
            state). With ``resume``, the dataset there is appended to. An episode's results
            row is written only once the episode is in the dataset.
        record_format: ``lerobot`` (LeRobotDataset v3.0) or ``hdf5`` (robomimic, with each
            frame's simulator state where the env has ``get_state``).
        only_success: Record only the episodes that succeed (data generation).
        progress: Called after each episode with (episodes ended, planned, successes).
        timeout, token: As for :class:`~gym_remote.RemoteEnv`.
        restart_failed_envs: Make an env again when its worker crashes, is killed or misses its
            deadline, or its server restarts (see :class:`~gym_remote.RemoteVectorEnv`): the
            episode it ran is lost (noted in ``lost.csv`` and the summary, counted in no rate)
            and run again from the same seed and initial state; one lost
            three times counts as a failure.
        locate: Where a server of ``address`` listens now, as for
            :class:`~gym_remote.RemoteVectorEnv` (``RayServers.locate``: restarts follow a
            server Ray started again).

    Raises:
        FileExistsError: ``output_dir`` holds results and ``resume`` is False.
        ValueError: a policy name names no policy, a count is below 1, or a task to record
            has other spaces than the first one recorded.
        RemoteEnvError: every session ended (their workers crashed, say) with episodes still
            planned; the episodes that ended are kept in ``output_dir``. An env's error ends
            only its episode, as a failure that names it, and the env goes on with the next
            (or stops, if its session ended for good).
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be at least 1, got {num_envs}")
    if videos_per_task and output_dir is None:
        raise ValueError("videos_per_task needs an output_dir to write the videos to")
    if replan_steps is not None and replan_steps < 1:
        raise ValueError(f"replan_steps must be at least 1, got {replan_steps}")
    if prefetch_steps < 0:
        raise ValueError(f"prefetch_steps must be at least 0, got {prefetch_steps}")
    names = [task.name for task in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"task names must differ, got {names}")
    plans = {task.name: plan_episodes(task, episodes, seed) for task in tasks}
    log = ResultsLog(output_dir, names, resume) if output_dir is not None else None
    evaluation = Evaluation(
        names,
        [r for r in log.results if r.task in names] if log else [],
        [episode for episode in log.lost if episode.task in names] if log else [],
    )
    done = {(result.task, result.episode) for result in evaluation.episodes}
    total = sum(len(plan) for plan in plans.values())

    def record_result(result: EpisodeResult) -> None:
        evaluation.episodes.append(result)
        if log is not None and recording is None:
            log.add(result)
        if progress is not None:
            progress(len(evaluation.episodes), total, sum(r.success for r in evaluation.episodes))

    def record_lost(episode: LostEpisode) -> None:
        evaluation.lost.append(episode)
        if log is not None:
            log.add_lost(episode)

    loaded = isinstance(policy, str)  # a policy this call makes is closed by it (a server connection)
    recording: _Recording | None = None
    try:
        for task in tasks:
            planned = [episode for episode in plans[task.name] if (task.name, episode.index) not in done]
            if not planned:
                continue
            envs = RemoteVectorEnv(
                task.env_id,
                min(num_envs, len(planned)),
                address=address,
                autoreset_mode=AutoresetMode.DISABLED,
                render_mode="rgb_array" if videos_per_task else None,
                timeout=timeout,
                token=token,
                restart_failed_envs=restart_failed_envs,
                locate=locate,
                **task.env_kwargs,
            )
            try:
                if isinstance(policy, str):
                    policy = load_policy(
                        policy,
                        observation_keys,
                        action_space=envs.single_action_space,
                        observation_space=envs.single_observation_space,
                        num_envs=num_envs,
                        seed=seed,
                    )
                task_texts = _task_texts(envs, task)
                if hasattr(policy, "set_task"):
                    for index, text in enumerate(task_texts):
                        policy.set_task(index, text)
                videos = None
                if videos_per_task and output_dir is not None:
                    videos = _Videos(Path(output_dir) / "videos", videos_per_task, envs)
                if record is not None:
                    recording = recording or _Recording.open(
                        record, record_format, only_success, envs, task, resume, log
                    )
                    recording.check_spaces(envs, task)
                try:
                    _TaskRun(
                        envs,
                        policy,
                        planned,
                        replan_steps,
                        max_steps,
                        record_result,
                        videos,
                        prefetch_steps,
                        recording,
                        task_texts,
                        record_lost,
                    ).run()
                finally:
                    if videos is not None:
                        videos.finish()
            finally:
                envs.close()
    finally:
        try:
            if recording is not None:
                recording.recorder.close()
        finally:
            if log is not None:
                log.close()
        if loaded and hasattr(policy, "close"):
            policy.close()
    return evaluation


class _Recording:
    """The dataset an evaluation records into, and whether it records simulator states."""

    def __init__(
        self, recorder: Recorder, spaces: tuple[Any, Any], records_states: bool, log: ResultsLog | None
    ) -> None:
        self.recorder = recorder
        self.spaces = spaces
        self.records_states = records_states
        self.log = log

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        format: str,
        only_success: bool,
        envs: RemoteVectorEnv,
        task: Task,
        resume: bool,
        log: ResultsLog | None,
    ) -> _Recording:
        spaces = (envs.single_observation_space, envs.single_action_space)
        writer = open_dataset(
            directory,
            format,
            *spaces,
            fps=int(round(_control_rate(envs))),
            env_args={"env_name": task.env_id, "type": "gym_remote", "env_kwargs": dict(task.env_kwargs)},
            resume=resume,
        )
        recorder = Recorder(writer, only_success=only_success)
        records_states = format == "hdf5" and callable(_first_attribute(envs, "get_state"))
        return cls(recorder, spaces, records_states, log)

    def check_spaces(self, envs: RemoteVectorEnv, task: Task) -> None:
        """Raises ValueError unless ``task``'s envs have the spaces of the dataset's first task."""
        if (envs.single_observation_space, envs.single_action_space) != self.spaces:
            raise ValueError(
                f"task {task.name} has other observation or action spaces than the first task "
                "recorded: one dataset holds envs of one kind; record them separately"
            )

    def state(self, envs: RemoteVectorEnv, index: int) -> np.ndarray | None:
        """Env ``index``'s simulator state, when the dataset keeps states."""
        return np.asarray(envs.sessions[index].get_state()) if self.records_states else None


class _Videos:
    """Where the videos of a task's first episodes go, and at what rate; they are encoded in a
    thread of their own, so that stepping goes on meanwhile."""

    def __init__(self, directory: Path, per_task: int, envs: RemoteVectorEnv) -> None:
        self.directory = directory
        self.per_task = per_task
        self.fps = _control_rate(envs)
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gym-remote-video")
        self._written: list[Future] = []

    def write(self, episode: Episode, frames: list[np.ndarray]) -> None:
        from gym_remote.evaluation.videos import write_video

        path = self.directory / episode.task / f"episode_{episode.index}.mp4"
        self._written.append(self._encoder.submit(write_video, path, frames, self.fps))

    def finish(self) -> None:
        """Waits for every video; raises the first failure to write one."""
        self._encoder.shutdown(wait=True)
        for written in self._written:
            written.result()


class _Slot:
    """What one env is doing: its episode, its queued actions and its running totals (and its
    frames, when the episode is filmed)."""

    def __init__(self, episode: Episode, filmed: bool) -> None:
        self.episode = episode
        self.frames: list[np.ndarray] | None = [] if filmed else None
        self.resetting = True
        self.requested = False  # actions asked of the policy, not yet come
        self.actions: collections.deque[np.ndarray] = collections.deque()
        self.steps = 0
        self.episode_return = 0.0
        self.started = time.monotonic()
        self.last_action: np.ndarray | None = None  # the action of the step in flight


class _TaskRun:
    """The episodes of one task over one vector env, stepping and inference overlapped."""

    def __init__(
        self,
        envs: RemoteVectorEnv,
        policy: Policy,
        planned: list[Episode],
        replan_steps: int | None,
        max_steps: int | None,
        record: Callable[[EpisodeResult], None],
        videos: _Videos | None = None,
        prefetch_steps: int = 0,
        recording: _Recording | None = None,
        task_texts: Sequence[str] = (),
        record_lost: Callable[[LostEpisode], None] = lambda episode: None,
    ) -> None:
        self.envs = envs
        self.record_lost = record_lost
        self.losses: collections.Counter[int] = collections.Counter()  # episode number -> times lost
        self.recording = recording
        self.task_texts = task_texts  # each env's, for the dataset
        self.prefetch_steps = prefetch_steps
        self.videos = videos
        self.policy = policy
        self.pending = collections.deque(planned)
        self.replan_steps = replan_steps
        self.max_steps = max_steps
        self.record = record
        self.slots: list[_Slot | None] = [None] * envs.num_envs
        self.in_flight: set[int] = set()
        self.idle: set[int] = set()  # envs with nothing to do until their actions come
        self.stopped: set[int] = set()  # envs whose session ended: they run no more episodes
        self.waiting: dict[int, Any] = {}  # env -> its observation, for the next inference
        self.action_ndim = len(envs.single_action_space.shape or ())

    def run(self) -> None:
        self._start_episodes(list(range(self.envs.num_envs)))
        inference: Future | None = None
        inferring: list[tuple[int, _Slot]] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gym-remote-policy") as pool:
            while self.in_flight or self.waiting or inference is not None:
                if self.in_flight:
                    self._receive(None if inference is None else _POLL_SECONDS)
                if inference is not None and (inference.done() or not self.in_flight):
                    self._queue(inferring, inference.result())
                    inference = None
                # One call for every env about to ask: none that will ask at its next result
                # is left out (a policy call costs about the same for one env as for all).
                if inference is None and self.waiting and not any(map(self._asks_next, self.in_flight)):
                    indices = sorted(self.waiting)
                    inferring = [(index, self._slot(index)) for index in indices]
                    batch: Any = create_empty_array(self.envs.single_observation_space, n=len(indices))
                    batch = concatenate(
                        self.envs.single_observation_space, [self.waiting[i] for i in indices], batch
                    )
                    self.waiting.clear()
                    inference = pool.submit(self.policy.act, batch, indices)

    def _start_episodes(self, env_indices: list[int]) -> None:
        """Resets each env into the next planned episode (an env with none left stops)."""
        starting = []
        for index in env_indices:
            if self.pending:
                episode = self.pending.popleft()
                filmed = self.videos is not None and episode.index < self.videos.per_task
                self.slots[index] = _Slot(episode, filmed)
                starting.append(index)
            else:
                self.slots[index] = None
        if starting:
            episodes = [self._slot(index).episode for index in starting]
            self.envs.send_reset(
                starting,
                seeds=[episode.seed for episode in episodes],
                options=[episode.reset_options for episode in episodes],
            )
            self.in_flight.update(starting)

    def _receive(self, wait: float | None) -> None:
        """Takes the results ready (waiting up to ``wait`` seconds; None: for one at least),
        ends the episodes that ended and steps the envs that still have actions queued."""
        try:
            observations, rewards, terminations, truncations, infos, env_ids = self.envs.recv(
                min_envs=1, timeout=wait
            )
        except RemoteEnvError as error:
            self._fail(self.in_flight - self.envs.awaiting(), error)
            return
        rows = list(iterate(self.envs.single_observation_space, observations)) if len(env_ids) else []
        ready, ended = [], []
        for position, index in enumerate(env_ids.tolist()):
            self.in_flight.discard(index)
            slot = self._slot(index)
            if slot.frames is not None:  # each session hosts one env: its own render, at once
                slot.frames.append(self.envs.sessions[index].render())
            if slot.resetting:
                slot.resetting = False
                self.policy.reset(index)
                self._record_start(index, slot, rows[position])
            elif vector_info_value(infos, "episode_lost", position):
                self._lose_episode(index, slot, str(vector_info_value(infos, "lost_cause", position)))
                ended.append(index)
                continue
            else:
                slot.steps += 1
                slot.episode_return += float(rewards[position])
                if self.recording is not None:
                    self.recording.recorder.step(
                        index,
                        slot.last_action,
                        rows[position],
                        float(rewards[position]),
                        bool(terminations[position]),
                        bool(truncations[position]),
                        self.recording.state(self.envs, index),
                    )
                capped = self.max_steps is not None and slot.steps >= self.max_steps
                if terminations[position] or truncations[position] or capped:
                    success = bool(vector_info_value(infos, "is_success", position))
                    failure = "" if success else _failure(terminations[position], truncations[position])
                    self._end_episode(index, slot, success, failure)
                    self.waiting.pop(index, None)  # a prefetch not yet sent is for this episode
                    ended.append(index)
                    continue
            if len(slot.actions) <= self.prefetch_steps and not slot.requested:
                slot.requested = True
                self.waiting[index] = rows[position]
            if slot.actions:
                ready.append(index)
            else:
                self.idle.add(index)
        self._start_episodes(ended)
        self._step(ready)

    def _fail(self, env_indices: set[int], error: RemoteEnvError) -> None:
        """Ends the episodes of envs whose call failed, each as a failure that says why; an env
        whose session is still there starts its next episode, one whose session ended stops.

        Raises:
            RemoteEnvError: ``error``, when no env is left to run the episodes still planned.
        """
        reason = f"{type(error).__name__}: {error.message}"[:_MAX_FAILURE_LENGTH]
        restarting = []
        for index in sorted(env_indices):
            self.in_flight.discard(index)
            slot = self._slot(index)
            if self.recording is not None:
                self.recording.recorder.drop(index)  # an episode an error cut short is no data
            self._end_episode(index, slot, False, reason)
            self.waiting.pop(index, None)
            if self.envs.sessions[index].gym_remote.state is SessionState.ACTIVE:
                restarting.append(index)
            else:
                self.slots[index] = None
                self.stopped.add(index)
        if self.pending and len(self.stopped) == self.envs.num_envs:
            raise error
        self._start_episodes(restarting)

    def _lose_episode(self, index: int, slot: _Slot, cause: str) -> None:
        """Env ``index``'s worker failed mid-episode and the env was made again: the episode is
        noted as lost and planned again, from the same seed and initial state (after
        ``_MAX_LOSSES_PER_EPISODE`` losses it ends as a failure)."""
        episode = slot.episode
        self.record_lost(
            LostEpisode(episode.task, episode.index, episode.seed, episode.init_state, slot.steps, cause)
        )
        if self.recording is not None:
            self.recording.recorder.drop(index)
        self.waiting.pop(index, None)
        self.losses[episode.index] += 1
        if self.losses[episode.index] >= _MAX_LOSSES_PER_EPISODE:
            failure = f"lost {self.losses[episode.index]} times, last: {cause}"
            self._end_episode(index, slot, False, failure[:_MAX_FAILURE_LENGTH])
        else:
            self.pending.appendleft(episode)

    def _record_start(self, index: int, slot: _Slot, observation: Any) -> None:
        if self.recording is not None:
            self.recording.recorder.start(
                index,
                observation,
                self.task_texts[index],
                seed=slot.episode.seed,
                init_state=slot.episode.init_state,
                state=self.recording.state(self.envs, index),
            )

    def _end_episode(self, index: int, slot: _Slot, success: bool, failure: str) -> None:
        """Records env ``index``'s episode as it ended (in the results, in the dataset if one is
        recorded, and as a video if it is filmed)."""
        result = EpisodeResult(
            task=slot.episode.task,
            episode=slot.episode.index,
            seed=slot.episode.seed,
            init_state=slot.episode.init_state,
            success=success,
            episode_return=slot.episode_return,
            length=slot.steps,
            seconds=time.monotonic() - slot.started,
            failure=failure,
        )
        self.record(result)
        if self.recording is not None:
            log = self.recording.log
            self.recording.recorder.end(index, success, None if log is None else lambda: log.add(result))
        if self.videos is not None and slot.frames:
            self.videos.write(slot.episode, slot.frames)

    def _asks_next(self, index: int) -> bool:
        """Whether env ``index`` (in flight) will ask the policy for actions when its result comes."""
        slot = self.slots[index]
        return (
            slot is not None
            and not slot.requested
            and (slot.resetting or len(slot.actions) <= self.prefetch_steps)
        )

    def _queue(self, requested: list[tuple[int, _Slot]], actions: Any) -> None:
        """Queues the policy's actions (one each, or a chunk each: its first ``replan_steps``)
        behind what each env has left, and steps the envs that waited for them. Actions for an
        episode that ended meanwhile are dropped."""
        actions = np.asarray(actions)
        if len(actions) != len(requested):
            raise ValueError(f"the policy returned {len(actions)} actions for {len(requested)} envs")
        chunked = actions.ndim == self.action_ndim + 2
        ready = []
        for (index, slot), chosen in zip(requested, actions):
            if self.slots[index] is not slot:
                continue
            slot.requested = False
            slot.actions.extend(chosen[: self.replan_steps] if chunked else chosen[np.newaxis])
            if index in self.idle:
                self.idle.discard(index)
                ready.append(index)
        self._step(ready)

    def _step(self, env_indices: list[int]) -> None:
        """Sends each env the next action of its queue."""
        if env_indices:
            actions = np.stack([self._slot(index).actions.popleft() for index in env_indices])
            for index, action in zip(env_indices, actions):
                self._slot(index).last_action = action
            self.envs.send(actions, env_ids=env_indices)
            self.in_flight.update(env_indices)

    def _slot(self, index: int) -> _Slot:
        slot = self.slots[index]
        assert slot is not None, f"env {index} has no episode"
        return slot


def _first_attribute(envs: RemoteVectorEnv, name: str) -> Any:
    """``name`` of the first env, or None where it has none."""
    try:
        return getattr(envs.sessions[0], name)
    except (AttributeError, RemoteEnvError):
        return None


def _control_rate(envs: RemoteVectorEnv) -> float:
    """Steps a second: the env's ``control_freq``, else its ``render_fps``, else 30."""
    return float(_first_attribute(envs, "control_freq") or envs.metadata.get("render_fps") or 30)


def _task_texts(envs: RemoteVectorEnv, task: Task) -> list[str]:
    """Each env's ``task_description`` (LIBERO's language instruction), else the task's name."""
    try:
        return [str(text) for text in envs.get_attr("task_description")]
    except (AttributeError, RemoteEnvError):
        return [task.name] * envs.num_envs


def _failure(terminated: bool, truncated: bool) -> str:
    if terminated:
        return "terminated"
    return "truncated" if truncated else "max_steps"
