"""Helpers of the remote vector env tests: running a local and a remote vector env side by side."""

from __future__ import annotations

from gymnasium.utils.env_checker import data_equivalence
from gymnasium.vector import AutoresetMode

NUM_ENVS = 3


def run_both(local, remote, steps, seed=5, remote_step=None):
    """Steps both vector envs with the same actions (the remote one with ``remote_step``, by
    default its ``step``); returns how many episodes ended."""
    local.action_space.seed(seed)
    assert data_equivalence(local.reset(seed=seed), remote.reset(seed=seed), exact=True)
    ended = 0
    for step in range(steps):
        actions = local.action_space.sample()
        local_result, remote_result = local.step(actions), (remote_step or remote.step)(actions)
        assert data_equivalence(local_result, remote_result, exact=True), f"step {step} differs"
        done = local_result[2] | local_result[3]
        ended += int(done.sum())
        if local.autoreset_mode == AutoresetMode.DISABLED and done.any():
            options = {"reset_mask": done}
            assert data_equivalence(
                local.reset(options=dict(options)), remote.reset(options=dict(options)), exact=True
            )
    return ended
