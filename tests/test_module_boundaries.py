"""Which modules each part of gym-remote may pull in: the layering docs/architecture.md draws."""

from __future__ import annotations

import subprocess
import sys

import pytest


def modules_imported_by(module: str) -> set[str]:
    script = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(output.stdout.split())


@pytest.mark.parametrize("module", ["gym_remote.server", "gym_remote.client", "gym_remote.vector"])
def test_the_server_and_the_clients_do_not_import_the_worker(module):
    assert "gym_remote.worker" not in modules_imported_by(module)


def test_errors_travel_in_one_envelope_both_ways():
    from gym_remote import errors
    from gym_remote.error_envelope import error_from_wire, error_to_wire

    try:
        raise KeyError("missing")
    except KeyError as error:
        wire = error_to_wire(error)
    back = error_from_wire(wire)
    assert isinstance(back, errors.RemoteError) and back.remote_type == "builtins.KeyError"
    assert "KeyError" in back.message and "raise KeyError" in back.remote_traceback
    typed = error_from_wire(error_to_wire(errors.InvalidCall("bad action")))
    assert type(typed) is errors.InvalidCall and typed.message == "bad action"
    assert isinstance(error_from_wire("not a map"), errors.ProtocolError)


@pytest.mark.parametrize("module", ["gym_remote.server", "gym_remote.client", "gym_remote.vector"])
def test_tls_and_certificate_code_load_only_when_used(module):
    imported = modules_imported_by(module)
    assert "gym_remote.tls" not in imported and "gym_remote.certs" not in imported
    assert "cryptography" not in imported and "ray" not in imported
