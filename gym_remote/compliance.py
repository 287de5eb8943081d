"""A compliance suite that any adapter or user env runs to prove it behaves over the wire.

Subclass :class:`EnvCompliance` in a pytest module, name the class ``Test...``, and set what to
make; pytest then runs every check against a real server::

    class TestMyEnv(EnvCompliance):
        env_id = "my_package/MyEnv-v0"
        env_kwargs = {"difficulty": 2}
        server_arguments = ("--import", "my_package")

The checks: Gymnasium's ``check_env``, determinism under a seed, local-versus-remote equality
(the local run happens in the env's own interpreter when that is another venv), render, close,
and the spaces' round trip. :func:`rollout` and :func:`rollout_in` are the building blocks.

The ``python -m gym_remote.compliance`` entry point runs inside simulator interpreters: this
module keeps to Python 3.8.
"""

import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import gymnasium as gym
import numpy as np

from gym_remote.protocol import decode_bytes, encode_bytes

__all__ = ["EnvCompliance", "rollout", "rollout_in", "assert_same_rollout"]


def rollout(
    env: gym.Env, seed: int, actions: Sequence[Any], options: Optional[dict] = None
) -> List[Tuple[Any, ...]]:
    """Resets ``env`` with ``seed`` and applies ``actions``: returns the reset and step results.

    Stops early at the end of an episode.
    """
    results: List[Tuple[Any, ...]] = [tuple(env.reset(seed=seed, options=options))]
    for action in actions:
        results.append(tuple(env.step(action)))
        if results[-1][2] or results[-1][3]:
            break
    return results


def rollout_in(
    python: str,
    env_id: str,
    env_kwargs: Dict[str, Any],
    seed: int,
    actions: Sequence[Any],
    options: Optional[dict] = None,
    timeout: float = 600.0,
) -> List[Tuple[Any, ...]]:
    """:func:`rollout` of ``gym.make(env_id, **env_kwargs)`` in another interpreter (a simulator venv).

    Raises:
        RuntimeError: the run failed; the message has its error output.
    """
    request = {
        "env_id": env_id,
        "env_kwargs": env_kwargs,
        "seed": seed,
        "actions": list(actions),
        "options": options,
    }
    result = subprocess.run(
        [python, "-m", "gym_remote.compliance"],
        input=encode_bytes(request),
        capture_output=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(
            "local rollout with {} failed:\n{}".format(python, result.stderr.decode(errors="replace"))
        )
    return [tuple(step) for step in decode_bytes(result.stdout)]


def assert_same_rollout(first: Sequence[Tuple[Any, ...]], second: Sequence[Tuple[Any, ...]]) -> None:
    """Asserts that two rollouts are equal value for value (dtypes and types included)."""
    from gymnasium.utils.env_checker import data_equivalence

    assert len(first) == len(second), f"rollouts of {len(first)} and {len(second)} steps"
    for index, (one, other) in enumerate(zip(first, second)):
        assert data_equivalence(one, other, exact=True), f"results differ at step {index}"


class EnvCompliance:
    """Checks an env over a real server; subclass it as ``Test...`` and set the attributes.

    Attributes:
        env_id: The id the server makes.
        env_kwargs: Keyword arguments of the remote ``gym.make``.
        server_arguments: Extra ``gym-remote serve`` options (``--import``, ``--python``, ...).
        local_python: The interpreter for the local reference run (default: this one);
            simulators in their own venv name that venv's Python.
        steps: How many steps the rollouts take.
        seed: The seed of the rollouts.
        check_env_kwargs: Arguments of Gymnasium's ``check_env``.
    """

    env_id: str = ""
    env_kwargs: Dict[str, Any] = {}
    server_arguments: Tuple[str, ...] = ()
    local_python: Optional[str] = None
    steps: int = 10
    seed: int = 7
    check_env_kwargs: Dict[str, Any] = {}
    # The server this class's tests share (started by the first that needs it).
    _server_process: Any = None

    def _server(self) -> Any:
        from gym_remote.testing import ServerProcess

        server = type(self)._server_process
        if server is None or server.process.poll() is not None:
            server = ServerProcess(*self.server_arguments)
            type(self)._server_process = server
        return server

    @classmethod
    def teardown_class(cls) -> None:
        server = cls._server_process
        if server is not None:
            server.stop()
            cls._server_process = None

    def make_remote(self, **overrides: Any) -> gym.Env:
        """A remote env made through ``gym.make("remote/Env-v0", ...)``, like users make it."""
        import gym_remote  # noqa: F401  (registers remote/Env-v0)

        kwargs = dict(self.env_kwargs, **overrides)
        return gym.make("remote/Env-v0", env_id=self.env_id, address=self._server().address, **kwargs)

    def actions(self, env: gym.Env) -> List[Any]:
        env.action_space.seed(self.seed)
        return [env.action_space.sample() for _ in range(self.steps)]

    def test_check_env(self) -> None:
        from gymnasium.utils.env_checker import check_env

        env = self.make_remote()
        try:
            check_env(env.unwrapped, **self.check_env_kwargs)
        finally:
            env.close()

    def test_seed_determinism(self) -> None:
        env = self.make_remote()
        try:
            actions = self.actions(env)
            assert_same_rollout(rollout(env, self.seed, actions), rollout(env, self.seed, actions))
        finally:
            env.close()

    def test_local_and_remote_are_equal(self) -> None:
        env = self.make_remote()
        try:
            actions = self.actions(env)
            remote = rollout(env, self.seed, actions)
        finally:
            env.close()
        if self.local_python is None:
            local_env = gym.make(self.env_id, **self.env_kwargs)
            try:
                local = rollout(local_env, self.seed, actions)
            finally:
                local_env.close()
        else:
            local = rollout_in(self.local_python, self.env_id, self.env_kwargs, self.seed, actions)
        assert_same_rollout(local, remote)

    def test_render(self) -> None:
        env = self.make_remote(render_mode="rgb_array")
        try:
            env.reset(seed=self.seed)
            frame = env.render()
            assert isinstance(frame, np.ndarray) and frame.dtype == np.uint8
            assert frame.ndim == 3 and frame.shape[2] == 3
            assert env.metadata.get("render_fps"), "metadata must give render_fps (videos need it)"
        finally:
            env.close()

    def test_close_is_idempotent(self) -> None:
        env = self.make_remote()
        env.reset(seed=self.seed)
        env.close()
        env.close()

    def test_spaces_round_trip(self) -> None:
        from gym_remote.spaces import decode_space, encode_space

        env = self.make_remote()
        try:
            for space in (env.observation_space, env.action_space):
                assert decode_space(decode_bytes(encode_bytes(encode_space(space)))) == space
                observation, _ = env.reset(seed=self.seed)
                assert observation in env.observation_space
        finally:
            env.close()


def _main() -> None:
    """``python -m gym_remote.compliance``: a rollout described by a frame on stdin, result on stdout."""
    import gym_remote.envs  # noqa: F401  (registers the adapters)

    data = sys.stdin.buffer.read()
    request = decode_bytes(data)
    env = gym.make(request["env_id"], **request["env_kwargs"])
    try:
        results = rollout(env, request["seed"], request["actions"], request["options"])
    finally:
        env.close()
    sys.stdout.buffer.write(encode_bytes([list(step) for step in results]))
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    _main()
