"""The embedded default leaves no process behind; the CLI serves, lists, pings and shuts down cleanly."""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

import gym_remote
from gym_remote.config import ServerConfig, resolve
from gym_remote.server import Server
from gym_remote.testing import ServerProcess
from tests.helpers import all_gone, descendants, wait_for, worker_pids


def test_embedded_server_starts_by_itself_and_leaves_nothing_after_close(monkeypatch):
    monkeypatch.delenv("GYM_REMOTE_ADDRESS", raising=False)
    before = descendants()
    env = gym_remote.RemoteEnv("CartPole-v1")
    env.reset(seed=0)
    started = descendants() - before
    assert len(started) == 2, "a private server and its worker"
    directory = env._embedded.directory
    assert os.path.exists(os.path.join(directory, "server.sock"))
    env.close()
    assert all_gone(started), "close() must end the private server and its worker"
    assert not os.path.exists(directory)


@pytest.mark.parametrize(
    ("make", "processes"),
    [
        (lambda: gym_remote.RemoteEnv("CartPole-v1"), 2),
        (lambda: gym_remote.RemoteVectorEnv("CartPole-v1", 2), 3),
    ],
    ids=["RemoteEnv", "RemoteVectorEnv"],
)
def test_an_env_dropped_without_close_stops_its_private_server(monkeypatch, make, processes):
    monkeypatch.delenv("GYM_REMOTE_ADDRESS", raising=False)
    before = descendants()
    env = make()
    env.reset(seed=0)
    started = descendants() - before
    assert len(started) == processes, "a private server and its workers"
    directory = env._embedded.directory
    del env  # as a loop or a notebook cell that makes a new env drops the last one
    gc.collect()
    assert all_gone(started), "a dropped env's private server and worker must end"
    assert not os.path.exists(directory)


@pytest.mark.parametrize("repeat", range(2))
def test_embedded_envs_side_by_side_each_end_only_their_own_processes(monkeypatch, repeat):
    monkeypatch.delenv("GYM_REMOTE_ADDRESS", raising=False)
    before = descendants()
    envs, processes = [], []
    for seed in range(3):
        started = descendants()
        env = gym_remote.RemoteEnv("CartPole-v1")
        env.reset(seed=seed)
        envs.append(env)
        processes.append(descendants() - started)
    assert [len(pids) for pids in processes] == [2, 2, 2], "each env: a private server and its worker"
    envs[1].close()
    assert all_gone(processes[1]), "close() must end that env's own server and worker"
    for env in (envs[0], envs[2]):
        assert env.step(0)[0].shape == (4,)
        env.close()
    assert all_gone(processes[0] | processes[2])
    assert not descendants() - before, "no process of these envs is left"


@pytest.mark.parametrize(("mode", "processes"), [("async", 6), ("sync", 4)])
def test_make_vec_without_an_address_gives_each_env_a_private_server(monkeypatch, mode, processes):
    monkeypatch.delenv("GYM_REMOTE_ADDRESS", raising=False)
    before = descendants()
    envs = gym.make_vec("remote/Env-v0", num_envs=2, vectorization_mode=mode, env_id="CartPole-v1")
    try:
        observations, _ = envs.reset(seed=0)
        assert observations.shape == (2, 4)
        # async: two Gymnasium workers, each with a private server and its worker; sync: no workers
        assert len(descendants() - before) == processes
        assert envs.step(np.zeros(2, np.int64))[0].shape == (2, 4)
    finally:
        envs.close()
    wait_for(lambda: descendants() <= before, what="every process the vector env started to end")


EMBEDDED_CLIENT = """
import os, gym_remote, psutil
env = gym_remote.RemoteEnv("CartPole-v1")
env.reset(seed=0)
print(" ".join(str(child.pid) for child in psutil.Process().children(recursive=True)))
print(env._embedded.directory, flush=True)
if os.environ.get("EXIT_NORMALLY"):
    raise SystemExit(0)  # no close(): interpreter exit must clean up
os.kill(os.getpid(), 9)
"""


@pytest.mark.parametrize("how", ["killed", "exits-without-close"])
def test_embedded_server_ends_with_its_client(how):
    environment = dict(os.environ)
    environment.pop("GYM_REMOTE_ADDRESS", None)
    if how == "exits-without-close":
        environment["EXIT_NORMALLY"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", EMBEDDED_CLIENT], capture_output=True, text=True, timeout=60, env=environment
    )
    children, directory = result.stdout.splitlines()
    pids = {int(pid) for pid in children.split()}
    assert len(pids) == 2, result.stderr
    assert all_gone(pids, timeout=20), f"processes left behind after the client {how}"
    assert not os.path.exists(directory), "the private server's socket directory must go too"


def test_a_private_server_whose_socket_goes_as_it_stops_still_ends_its_workers(tmp_path, monkeypatch):
    """The owner removes the socket's directory as it lets go, maybe between the server's check
    that the socket exists and its unlink: the server stops all the same and ends its workers
    (issue 24 item 10). The check is made to say "there" for the socket removed already."""
    import shutil
    import threading

    socket_path = str(tmp_path / "private" / "server.sock")
    os.mkdir(os.path.dirname(socket_path))
    server = Server(resolve(ServerConfig, address=f"unix://{socket_path}", watch_stdin=False))
    failures: list[BaseException] = []
    ready = threading.Event()

    def serve() -> None:
        try:
            server.serve_forever(on_ready=lambda address: ready.set())
        except BaseException as error:
            failures.append(error)

    serving = threading.Thread(target=serve)
    serving.start()
    assert ready.wait(30), "the server did not start"
    before = descendants()  # other tests' servers (a session's fixture) may be running
    env = gym_remote.RemoteEnv("CartPole-v1", address=f"unix://{socket_path}")
    env.reset(seed=0)
    workers = descendants() - before
    assert len(workers) == 1
    shutil.rmtree(os.path.dirname(socket_path))
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda path: path == socket_path or real_exists(path))
    server.stop()
    serving.join(30)
    monkeypatch.undo()
    assert not serving.is_alive() and not failures, failures
    assert all_gone(workers), "the server must end its worker"
    env.close()


def test_env_var_address_is_used(server, monkeypatch):
    monkeypatch.setenv("GYM_REMOTE_ADDRESS", server.address)
    env = gym_remote.RemoteEnv("CartPole-v1")
    env.reset()
    assert env._embedded is None and env.gym_remote.config.address == server.address
    env.close()


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_serve_shuts_down_cleanly_with_no_orphans(signal_number):
    with ServerProcess() as server:
        envs = [gym_remote.RemoteEnv("CartPole-v1", address=server.address) for _ in range(2)]
        for env in envs:
            env.reset()
        workers = worker_pids(server.pid)
        assert len(workers) == 2
        server.process.send_signal(signal_number)
        assert server.process.wait(30) == 0
        assert all_gone(workers), "workers must end with the server"
        for env in envs:
            with pytest.raises(gym_remote.RemoteEnvError):
                env.step(0)
            env.close()


def test_workers_end_even_if_the_server_is_killed():
    with ServerProcess() as server:
        env = gym_remote.RemoteEnv("CartPole-v1", address=server.address)
        env.reset()
        workers = worker_pids(server.pid)
        server.process.kill()
        server.process.wait(10)
        assert all_gone(workers), "a worker must notice its server died"
        env.close()


def run_cli(*arguments: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gym_remote", *arguments], capture_output=True, text=True, timeout=60, **kwargs
    )


def test_cli_list_and_ping(start_server, tmp_path):
    socket_path = tmp_path / "gym.sock"
    server = start_server("--allow", "CartPole-*", "--allow", "Pendulum-v1", address=f"unix://{socket_path}")
    listed = run_cli("list", "--address", server.address)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["CartPole-v0", "CartPole-v1", "Pendulum-v1"]
    pinged = run_cli("ping", "--address", server.address, "--count", "20")
    assert pinged.returncode == 0 and "20 round trips" in pinged.stdout and "median" in pinged.stdout
    capped = run_cli("list", "--address", server.address, "--max-message-size", "40")
    assert capped.returncode == 1 and "exceeds the maximum message size of 40 bytes" in capped.stderr


def test_list_envs_and_ping_from_python(start_server):
    server = start_server("--allow", "CartPole-*", "--allow", "Pendulum-v1", "--token", "s3cret")
    assert gym_remote.list_envs(address=server.address, token="s3cret") == [
        "CartPole-v0",
        "CartPole-v1",
        "Pendulum-v1",
    ]
    pings = gym_remote.ping(5, address=server.address, token="s3cret")
    assert pings.server == f"gym-remote {gym_remote.__version__}" and pings.address == server.address
    assert len(pings.round_trips) == 5 and all(0 < seconds < 10 for seconds in pings.round_trips)
    with pytest.raises(gym_remote.AuthenticationFailed, match="token"):
        gym_remote.list_envs(address=server.address, token="wrong")
    with pytest.raises(gym_remote.MessageTooLarge, match="maximum message size of 40 bytes"):
        gym_remote.list_envs(address=server.address, token="s3cret", max_message_size=40)
    with pytest.raises(ValueError, match="count must be at least 1"):
        gym_remote.ping(0, address=server.address)
    with pytest.raises(gym_remote.ServerUnavailable, match="unix:///nonexistent/gym.sock"):
        gym_remote.list_envs(address="unix:///nonexistent/gym.sock", timeout=2)


def test_list_envs_without_an_address_asks_a_private_server_and_leaves_nothing(monkeypatch):
    monkeypatch.delenv("GYM_REMOTE_ADDRESS", raising=False)
    before = descendants()
    listed = gym_remote.list_envs()
    assert "CartPole-v1" in listed and "gym_remote/Libero-v0" in listed and listed == sorted(listed)
    assert all_gone(descendants() - before) and descendants() <= before


def test_cli_reports_a_missing_server_clearly():
    result = run_cli("list", "--address", "unix:///nonexistent/gym.sock", "--timeout", "2")
    assert result.returncode == 1
    assert "no gym-remote server at unix:///nonexistent/gym.sock" in result.stderr


def test_serve_help_documents_every_option_and_its_variable():
    from gym_remote.config import ServerConfig, env_var

    result = run_cli("serve", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for field in ServerConfig.__dataclass_fields__:
        assert env_var(field) in text, field


def test_options_come_from_environment_variables(tmp_path):
    environment = dict(os.environ, GYM_REMOTE_ALLOW="Pendulum-*", GYM_REMOTE_MAX_SESSIONS="3")
    with ServerProcess(address=f"unix://{tmp_path / 's.sock'}", env=environment) as server:
        listed = run_cli("list", "--address", server.address)
        assert listed.stdout.split() == ["Pendulum-v1"]


@pytest.mark.parametrize(
    ("arguments", "environment", "message"),
    [
        (
            ["serve", "--max-sessions", "0"],
            {},
            "max_sessions (or GYM_REMOTE_MAX_SESSIONS) must be above 0, got 0",
        ),
        (
            ["serve", "--idle-timeout", "-1"],
            {},
            "idle_timeout (or GYM_REMOTE_IDLE_TIMEOUT) must be at least 0",
        ),
        (["list"], {"GYM_REMOTE_TIMEOUT": "0"}, "timeout (or GYM_REMOTE_TIMEOUT) must be above 0, got 0.0"),
        (
            ["list"],
            {"GYM_REMOTE_MAX_MESSAGE_SIZE": "ten"},
            "GYM_REMOTE_MAX_MESSAGE_SIZE='ten' is not a valid int",
        ),
    ],
    ids=["no-sessions", "negative-idle-timeout", "zero-timeout", "not-a-number"],
)
def test_bad_option_values_are_refused_naming_the_option(arguments, environment, message):
    result = run_cli(*arguments, env={**os.environ, **environment})
    assert result.returncode == 1 and message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"timeout": -1}, r"timeout \(or GYM_REMOTE_TIMEOUT\) must be above 0, got -1"),
        ({"address": "http://127.0.0.1:5555"}, r"invalid address 'http://127.0.0.1:5555': use tcp://"),
        ({"address": "unix://"}, r"address 'unix://' has no socket path"),
    ],
    ids=["timeout", "scheme", "unix-without-path"],
)
def test_a_remote_env_refuses_bad_settings_when_made(arguments, message):
    with pytest.raises(ValueError, match=message):
        gym_remote.RemoteEnv("CartPole-v1", **arguments)


@pytest.mark.parametrize("command", ["list", "ping"])
def test_query_commands_say_their_default_address_and_offer_only_their_own_options(command):
    helped = run_cli(command, "--help")
    assert "default tcp://127.0.0.1:5555" in helped.stdout
    assert "private local server" not in helped.stdout
    assert "--shared-memory" not in helped.stdout and "--local-socket" not in helped.stdout
    assert "private local server" in run_cli("tasks", "--help").stdout


def test_every_boolean_option_can_be_turned_off_over_its_environment_variable(monkeypatch):
    import argparse

    from gym_remote.config import ClientConfig, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser, ClientConfig)
    monkeypatch.setenv("GYM_REMOTE_SHARED_MEMORY", "1")
    parsed = vars(parser.parse_args(["--no-shared-memory", "--no-local-socket"]))
    config = resolve(ClientConfig, **parsed)
    assert config.shared_memory is False and config.local_socket is False
    assert resolve(ClientConfig, **vars(parser.parse_args([]))).shared_memory is True
    assert "--no-allow-pickle" in run_cli("serve", "--help").stdout


def test_a_listing_whose_reader_left_ends_quietly(server):
    """`gym-remote list | head -1`: no "[Errno 32] Broken pipe" (issue 24 item 10)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written
    try:
        listed = subprocess.run(
            [sys.executable, "-m", "gym_remote", "list", "--address", server.address],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert listed.returncode == 1
    assert listed.stderr == ""


def test_python_module_entry_point_and_version():
    result = run_cli("--version")
    assert result.stdout.strip() == f"gym-remote {gym_remote.__version__}"


def test_a_worker_can_run_under_another_interpreter(start_server, tmp_path):
    """--python routes an env id to another interpreter (here a wrapper that marks its workers)."""
    marker = tmp_path / "used"
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\ntouch {marker}\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    server = start_server("--python", f"Pendulum-*={wrapper}")
    env = gym_remote.RemoteEnv("Pendulum-v1", address=server.address)
    env.reset(seed=0)
    env.close()
    assert marker.exists()
    wrapper.unlink()  # the interpreter goes away while the server runs (its venv was removed)
    with pytest.raises(gym_remote.SimulatorUnavailable, match=str(wrapper)):
        gym_remote.RemoteEnv("Pendulum-v1", address=server.address).reset()
    wait_for(lambda: not worker_pids(server.pid), what="no worker")


def test_serve_with_a_module_that_cannot_be_imported_says_so_in_one_line():
    result = run_cli("serve", "--import", "no_such_module_here", "--address", "tcp://127.0.0.1:0")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "--import no_such_module_here: No module named 'no_such_module_here'" in result.stderr


def test_a_python_route_to_no_interpreter_stops_the_server_at_start():
    result = run_cli("serve", "--python", "Pendulum-*=/nonexistent/python", "--address", "tcp://127.0.0.1:0")
    assert result.returncode == 1
    assert "--python 'Pendulum-*=/nonexistent/python': /nonexistent/python is not an executable" in (
        result.stderr
    )


def test_a_python_route_says_which_ids_it_runs_and_warns_when_it_matches_none(caplog):
    """Patterns match whole ids: 'Libero-*' misses gym_remote/Libero-v0 (issue 24 item 6)."""
    caplog.set_level(logging.INFO, logger="gym_remote")
    Server(resolve(ServerConfig, python=[f"Pendulum-*={sys.executable}", f"Libero-*={sys.executable}"]))
    messages = [record.getMessage() for record in caplog.records]
    assert f"--python Pendulum-*: runs Pendulum-v1 with {sys.executable}" in messages
    (warning,) = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert "--python Libero-*=" in warning.getMessage() and "matches no env id" in warning.getMessage()


def test_a_worker_that_cannot_start_is_reported_to_its_client(start_server, tmp_path):
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'no module named gym_remote' >&2\nexit 3\n")
    broken.chmod(0o755)
    server = start_server("--python", f"Pendulum-*={broken}")
    with pytest.raises(
        gym_remote.WorkerCrashed,
        match=r"could not start .*exit code 3: no module named gym_remote.*gym-remote setup",
    ):
        gym_remote.RemoteEnv("Pendulum-v1", address=server.address).reset()
    env = gym_remote.RemoteEnv("CartPole-v1", address=server.address)
    env.reset()
    env.close()
