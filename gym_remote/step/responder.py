"""The worker's end of a session's steps, resets and observes.

One :class:`StepResponder` per worker session owns its envs' step state (which env was reset,
what each last returned), the fixed layout it offered, and the memory it writes observations
into (the client's reply buffers and shared batches). The session's serving loop hands it both
ordinary requests and fixed-layout frames; what it returns is what the session sends.

This module runs inside simulator interpreters too: it keeps to Python 3.8 and gymnasium 0.29.
"""

import socket
import traceback
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import gymnasium as gym
from gymnasium import spaces

from gym_remote import sharedmem
from gym_remote.errors import InvalidCall, shown
from gym_remote.protocol import PREFIX, byte_view
from gym_remote.space_walk import describe_mismatch
from gym_remote.step.batch_writer import BatchWriter
from gym_remote.step.frames import MAX_REPLY_BUFFERS, FixedLayout, without_data
from gym_remote.step.layout import IN_REPLY, Placement

__all__ = ["StepResponder", "FixedCall", "not_reset", "check_action"]


class FixedCall(NamedTuple):
    """A call a fixed-layout frame holds."""

    op: str  # "step" or "reset"
    value: Any  # its action or seed
    placement: Placement  # where its observation goes


class StepResponder:
    """Runs a session's steps, resets and observes, and places each observation where the
    request asks: in the reply, in one of the client's reply buffers, or in a shared batch row."""

    def __init__(self, allow_pickle: bool) -> None:
        self.allow_pickle = allow_pickle
        self.envs: List[gym.Env] = []
        self.reset_once: List[bool] = []  # per env: reset at least once, so it may step
        self.last_observations: List[Any] = []  # per env: what its last reset or step returned
        self.closed = False
        self.layout: Optional[FixedLayout] = None  # offered when the client asks
        self.batches: Optional[BatchWriter] = None  # a remote vector env's shared batches
        # Shared memory the client made for fixed-layout step replies' observations.
        self.reply_buffers: List[sharedmem.SharedSegment] = []
        # The action space whose values fixed-layout steps check: a fixed layout gives an action
        # its shape and dtype, so only a discrete space's range is left (a Box's values are the
        # env's to clip).
        self._checked_action_space: Optional[spaces.Space] = None

    def add_env(self, env: gym.Env) -> None:
        self.envs.append(env)
        self.reset_once.append(False)
        self.last_observations.append(None)

    def offer_layout(self) -> Optional[Dict[str, Any]]:
        """The ``fixed_steps`` field of the ``make`` reply, for a one-env session whose spaces
        have a fixed layout; None otherwise (ordinary frames only)."""
        if len(self.envs) == 1:
            self.layout = FixedLayout.for_env(self.envs[0])
        if self.layout is None:
            return None
        action_space = self.envs[0].action_space
        self._checked_action_space = None if isinstance(action_space, spaces.Box) else action_space
        return self.layout.to_wire()

    # ------------------------------------------------------------------ ordinary requests

    def reset(self, request: Dict[str, Any]) -> List[Any]:
        index, env = self.env(request)
        placement = self._placement_checked(Placement.from_into_field(request.get("into")))
        observation, info = env.reset(seed=request.get("seed"), options=request.get("options"))
        self.reset_once[index] = True
        self.last_observations[index] = observation
        return [self._placed(observation, placement), info]

    def step(self, request: Dict[str, Any]) -> List[Any]:
        index, env = self.running_env(request, "step")
        action = request.get("action")
        check_action(env.action_space, action, "action")
        placement = self._placement_checked(Placement.from_into_field(request.get("into")))
        result = list(env.step(action))
        self.last_observations[index] = result[0]
        result[0] = self._placed(result[0], placement)
        return result

    def observe(self, request: Dict[str, Any]) -> Any:
        index, _ = self.running_env(request, "observe")
        placement = self._placement_checked(Placement.from_into_field(request.get("into")))
        return self._placed(self.last_observations[index], placement)

    def env(self, request: Dict[str, Any]) -> Tuple[int, gym.Env]:
        """The env a request addresses (field ``env``, default 0) and its index."""
        if self.closed:
            raise InvalidCall("the env of this session is closed")
        index = request.get("env", 0)
        if type(index) is not int or not 0 <= index < len(self.envs):
            raise InvalidCall(f"env {shown(index)} is not one of this session's {len(self.envs)} envs")
        return index, self.envs[index]

    def running_env(self, request: Dict[str, Any], op: str) -> Tuple[int, gym.Env]:
        """As :meth:`env`, for an ``op`` that needs the env reset first."""
        index, env = self.env(request)
        if not self.reset_once[index]:
            raise not_reset(op)
        return index, env

    # ------------------------------------------------------------------ fixed-layout frames

    def whole_step(self, chunk: Any) -> Optional[Tuple[Any, Placement]]:
        """The action and placement in ``chunk`` when it is exactly one well-formed fixed-layout
        step request (the usual step: one receive, one lookup); otherwise None."""
        layout = self.layout
        return None if layout is None else layout.whole_step_request(chunk)

    def fixed_call(self, header: Any, data: Any) -> FixedCall:
        """The call a fixed-layout frame holds.

        Raises:
            InvalidCall: this session offered no fixed layout, or the frame does not fit it.
        """
        if self.layout is None:
            raise InvalidCall("a fixed-layout request, but this session offered no fixed layout")
        return FixedCall(*self.layout.decode_request(header, data))

    def answer(self, call: FixedCall) -> Tuple[Optional[List[Any]], Any]:
        """Runs a fixed-layout call (see :meth:`answer_step`)."""
        if call.op == "step":
            return self.answer_step(call.value, call.placement)
        layout = self.layout
        assert layout is not None
        self._placement_checked(call.placement)
        observation, info = self.reset({"seed": call.value})
        buffers = layout.encode_reset_reply(observation, info, self.allow_pickle)
        if buffers is None:
            return None, [observation, info]
        return self._placed_reply(buffers, observation, call.placement), None

    def answer_step(self, action: Any, placement: Placement) -> Tuple[Optional[List[Any]], Any]:
        """Steps the env for a fixed-layout request: the buffers of its fixed-layout reply, with
        the observation where ``placement`` asks if it fits there; or, where a value does not
        fit the layout exactly, None and the result for an ordinary reply (observation included).

        Raises:
            InvalidCall: the placement names memory this session lacks, the env was never reset,
                or the action does not fit the action space (all before the env runs).
        """
        if placement is not IN_REPLY:
            self._placement_checked(placement)
        if not self.reset_once[0]:
            raise not_reset("step")
        if self._checked_action_space is not None:
            check_action(self._checked_action_space, action, "action")
        result = self.envs[0].step(action)
        self.last_observations[0] = result[0]
        layout = self.layout
        assert layout is not None
        buffers = layout.encode_reply(result, self.allow_pickle)
        if buffers is None:
            return None, list(result)
        return self._placed_reply(buffers, result[0], placement), None

    def _placed_reply(self, buffers: List[Any], observation: Any, placement: Placement) -> List[Any]:
        """A fixed-layout reply's ``buffers``, without their data section where ``placement``
        (checked) asks for the observation elsewhere and it fits there."""
        if placement is IN_REPLY:
            return buffers
        if placement.reply_buffer:
            return self._in_reply_buffer(buffers, placement.reply_buffer)
        if placement.in_batch_row and self._placed(observation, placement) is None:
            return without_data(buffers)
        return buffers

    # ------------------------------------------------------------------ where observations go

    def use_shared_batches(self, request: Dict[str, Any], peer: socket.socket) -> None:
        if self.batches is not None:
            raise InvalidCall("use_shared_batches: this session already has shared batches")
        space = self.envs[0].observation_space
        self.batches = BatchWriter.attach(request.get("buffers"), request.get("layout"), space, peer)

    def use_reply_buffers(self, request: Dict[str, Any], peer: socket.socket) -> None:
        layout = self.layout
        if layout is None:
            raise InvalidCall("use_reply_buffers: this session offered no fixed layout")
        if self.reply_buffers:
            raise InvalidCall("use_reply_buffers: this session already has reply buffers")
        offers = request.get("buffers")
        if not isinstance(offers, list) or not 0 < len(offers) <= MAX_REPLY_BUFFERS:
            raise InvalidCall(f"use_reply_buffers needs a list of 1 to {MAX_REPLY_BUFFERS} buffers")

        def check_room(segment: sharedmem.SharedSegment) -> None:
            if segment.limit < layout.observation_nbytes:
                raise ValueError(
                    f"a buffer holds {segment.limit} bytes, the observation has {layout.observation_nbytes}"
                )

        self.reply_buffers, _ = sharedmem.SharedSegment.attach_offered(
            "use_reply_buffers", offers, check_room, peer
        )

    def _placement_checked(self, placement: Placement) -> Placement:
        """``placement``, once it is known to name memory this session has (before the env runs).

        Raises:
            InvalidCall: it names a reply buffer or shared batch buffer the session lacks, or a
                negative row.
        """
        if placement.reply_buffer > len(self.reply_buffers):
            raise InvalidCall(
                f"the step asks for reply buffer {placement.reply_buffer}; this session has "
                f"{len(self.reply_buffers)} (use_reply_buffers)"
            )
        buffer = placement.batch_buffer
        if buffer is not None:
            count = 0 if self.batches is None else len(self.batches.segments)
            if not 0 <= buffer < count or placement.row < 0:
                raise InvalidCall(
                    f"the request asks for row {placement.row} of shared batch buffer {buffer}; "
                    f"this session has {count} (use_shared_batches)"
                )
        return placement

    def _placed(self, observation: Any, placement: Placement) -> Any:
        """None where ``placement`` (checked) names a shared batch row the observation now
        fills; otherwise the observation, to travel in the reply."""
        if placement.batch_buffer is None:
            return observation
        assert self.batches is not None  # checked by _placement_checked
        written = self.batches.write(observation, placement.batch_buffer, placement.row)
        return None if written else observation

    def _in_reply_buffer(self, buffers: List[Any], number: int) -> List[Any]:
        """The fixed-layout reply ``buffers`` with its data section written into reply buffer
        ``number`` (one the session has) instead, so that the frame carries none."""
        data_length = PREFIX.unpack_from(buffers[0])[2]
        segment = self.reply_buffers[number - 1]
        if not segment.write([byte_view(chunk) for chunk in buffers[2:]], data_length):
            return buffers  # it does not fit there: the observation travels in the reply
        return without_data(buffers)

    def close(self) -> None:
        """Closes the envs (once)."""
        if not self.closed:
            self.closed = True
            for env in self.envs:
                try:
                    env.close()
                except Exception:
                    traceback.print_exc()

    def release_memory(self) -> None:
        """Unmaps the client's reply buffers and shared batches."""
        if self.batches is not None:
            self.batches.close()
        for segment in self.reply_buffers:
            segment.close()


def not_reset(op: str) -> InvalidCall:
    return InvalidCall(f"call reset() before {op}()")


def check_action(space: spaces.Space, action: Any, where: str) -> None:
    """Raises InvalidCall, naming ``where``, unless ``action`` fits the action space ``space``."""
    mismatch = describe_mismatch(space, action, where)
    if mismatch is not None:
        raise InvalidCall(f"{mismatch}; the action space is {space}")
