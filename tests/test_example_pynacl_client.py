"""examples/pynacl_client.py, the standalone client for native-app and bot developers: it runs
against a real server, needs nothing from this repository, and really checks the signatures."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "pynacl_client.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("pynacl_client_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(server_url: str, *args: str, cwd: Path) -> tuple[subprocess.CompletedProcess, dict]:
    # -I: isolated mode, and cwd outside the repository, so nothing of Enigmo can be imported.
    result = subprocess.run(
        [sys.executable, "-I", str(SCRIPT), server_url, *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("summary: ")]
    summary = json.loads(lines[-1].removeprefix("summary: ")) if lines else {}
    return result, summary


def test_the_example_imports_only_pynacl_and_the_standard_library():
    tree = ast.parse(SCRIPT.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    assert roots - set(sys.stdlib_module_names) == {"nacl"}


def test_the_example_rejects_a_bundle_whose_signatures_do_not_verify():
    """check_bundle is a real check: a swapped signed prekey or a forged certificate is flagged."""
    from nacl.public import PrivateKey
    from nacl.signing import SigningKey

    example = _load_example()
    account, identity = SigningKey.generate(), SigningKey.generate()
    spk = bytes(PrivateKey.generate().public_key)
    dik = bytes(identity.verify_key)
    cert = account.sign(example.device_certificate_message("bob", 1, dik, 1234)).signature
    good = {
        "user_id": "bob",
        "account_key": example.b64(bytes(account.verify_key)),
        "devices": [
            {
                "device_id": 1,
                "identity_key": example.b64(dik),
                "certificate": example.b64(cert),
                "issued_ms": 1234,
                "signed_prekey": {"key_id": 1, "public_key": example.b64(spk), "signature": example.b64(identity.sign(b"\x05" + spk).signature)},
                "one_time_prekey": None,
            }
        ],
    }
    [checked] = example.check_bundle(good)
    assert checked["certificate_valid"] and checked["signed_prekey_valid"]

    swapped = json.loads(json.dumps(good))
    swapped["devices"][0]["signed_prekey"]["public_key"] = example.b64(bytes(PrivateKey.generate().public_key))
    [checked] = example.check_bundle(swapped)
    assert checked["certificate_valid"] and not checked["signed_prekey_valid"]

    forged = json.loads(json.dumps(good))
    forged["devices"][0]["issued_ms"] = 1235
    [checked] = example.check_bundle(forged)
    assert not checked["certificate_valid"]


@pytest.mark.live
def test_the_example_registers_logs_in_publishes_and_fetches_a_verified_bundle(live_server_factory, tmp_path):
    """Against a running daphne: bob publishes and fetches his own bundle, then alice fetches
    bob's. Both runs succeed, both bundles verify, and one-time prekeys go out oldest first."""
    server = live_server_factory()

    result, bob = _run(server.http_url, "--username", "bob", "--one-time-prekeys", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr + server.log()
    assert "registered bob device 1" in result.stdout
    assert "logged in again with a fresh challenge (new token: True)" in result.stdout
    assert bob["ok"] is True and bob["bundle_user"] == "bob" and bob["uploaded_one_time_prekeys"] == [1, 2, 3]
    [own] = bob["bundle_devices"]
    assert own == {"device_id": 1, "certificate_valid": True, "signed_prekey_id": 1, "signed_prekey_valid": True, "one_time_prekey_id": 1}

    result, alice = _run(server.http_url, "--username", "alice", "--peer", "bob", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr + server.log()
    assert alice["ok"] is True and alice["bundle_user"] == "bob"
    [peer] = alice["bundle_devices"]
    assert peer["certificate_valid"] and peer["signed_prekey_valid"] and peer["one_time_prekey_id"] == 2

    # What the script printed is what the server recorded: bob's keys 1 and 2 are claimed, 3 is not.
    claimed = server.shell(
        "from keys.models import OneTimePreKey as K; "
        "print(sorted(K.objects.filter(device__user__username='bob', claimed_at__isnull=False).values_list('key_id', flat=True)))"
    )
    assert claimed.strip().splitlines()[-1] == "[1, 2]"


@pytest.mark.live
def test_the_example_reports_a_server_error_and_exits_non_zero(live_server_factory, tmp_path):
    """A taken username is the server's 409 in the shared error shape, printed, exit status 1."""
    server = live_server_factory()
    first, _ = _run(server.http_url, "--username", "carol", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again, summary = _run(server.http_url, "--username", "carol", cwd=tmp_path)
    assert again.returncode == 1 and summary == {}
    assert "HTTP 409 username_taken" in again.stderr
