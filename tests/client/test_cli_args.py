"""CLI input handling without a server: every bad input is one line on stderr and a non-zero
exit status, never a traceback."""

from __future__ import annotations

import pytest

from enigmo.client import cli


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch, tmp_path):
    for name in ("ENIGMO_PASSPHRASE", "ENIGMO_SERVER", "ENIGMO_PROFILE", "ENIGMO_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_no_command_is_a_usage_error(capsys):
    code, _, err = run(capsys)
    assert code == cli.EXIT_USAGE and "required" in one_line(err)


def test_unknown_command_and_bad_numbers(capsys):
    code, _, err = run(capsys, "fly")
    assert code == cli.EXIT_USAGE and "invalid choice" in one_line(err)
    code, _, err = run(capsys, "timer", "abc", "ten")
    assert code == cli.EXIT_USAGE and "invalid int value" in one_line(err)


def test_missing_passphrase_without_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    code, _, err = run(capsys, "devices")
    assert code == cli.EXIT_USAGE and "ENIGMO_PASSPHRASE" in one_line(err)


def test_unreadable_passphrase_file(capsys, tmp_path):
    code, _, err = run(capsys, "--passphrase-file", str(tmp_path / "missing"), "devices")
    assert code == cli.EXIT_USAGE and "cannot read --passphrase-file" in one_line(err)


def test_no_store_yet(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("ENIGMO_PASSPHRASE", "pw")
    code, _, err = run(capsys, "--store", str(tmp_path / "none.json"), "conversations")
    assert code == cli.EXIT_ERROR and "run `register` or `link` first" in one_line(err)


def test_default_store_follows_the_profile(tmp_path):
    args = cli.build_parser().parse_args(["--profile", "work", "devices"])
    assert cli.store_path(args) == tmp_path / ".enigmo" / "work.json"
    bad = cli.build_parser().parse_args(["--profile", "../x", "devices"])
    with pytest.raises(cli.UsageError):
        cli.store_path(bad)


def test_register_validates_before_touching_the_network(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("ENIGMO_PASSPHRASE", "pw")
    store = tmp_path / "s.json"
    code, _, err = run(capsys, "--store", str(store), "register", "Bad Name!")
    assert code == cli.EXIT_ERROR and "usernames are" in one_line(err)
    code, _, err = run(capsys, "--store", str(store), "--server", "ftp://x", "register", "alice")
    assert code == cli.EXIT_ERROR and "--server must be" in one_line(err)
    assert not store.exists()


def test_unreachable_server_leaves_no_half_store(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("ENIGMO_PASSPHRASE", "pw")
    store = tmp_path / "s.json"
    code, _, err = run(capsys, "--store", str(store), "--server", "http://127.0.0.1:9", "register", "alice")
    assert code == cli.EXIT_ERROR and "cannot reach http://127.0.0.1:9" in one_line(err)
    assert not store.exists()


def test_send_rejects_a_non_positive_expiry_first(capsys, monkeypatch):
    monkeypatch.setenv("ENIGMO_PASSPHRASE", "pw")
    code, _, err = run(capsys, "send", "alice", "hi", "--expires", "0")
    assert code == cli.EXIT_USAGE and "--expires" in one_line(err)


def test_an_unexpected_bug_is_still_one_line(capsys, monkeypatch):
    def boom(args):
        raise KeyError("oops")

    monkeypatch.setitem(cli.COMMANDS, "devices", boom)
    code, _, err = run(capsys, "devices")
    assert code == cli.EXIT_BUG and "unexpected KeyError" in one_line(err)
