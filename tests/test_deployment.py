"""Deployment files, checked statically (there is no Docker engine here), and README's two
commands."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_compose_has_every_process_with_health_checks():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "web", "worker", "beat"} <= set(services)
    for name in ("postgres", "redis", "web", "worker", "beat"):
        assert "healthcheck" in services[name], name
        assert services[name]["healthcheck"]["test"], name
    for name in ("web", "worker", "beat"):
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile"
    assert services["web"]["command"][:3] == ["python", "-m", "enigmo.serve"]
    assert services["worker"]["command"][:4] == ["celery", "-A", "enigmo", "worker"]
    assert services["beat"]["command"][:4] == ["celery", "-A", "enigmo", "beat"]


def test_dockerfile_runs_as_non_root():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^FROM python:3\.11", dockerfile, re.M)


def test_env_example_lists_every_variable_settings_read():
    settings_src = (ROOT / "enigmo" / "settings.py").read_text()
    # env.str(...), env(...) and the strict readers (_bool, _int, _positive_int, ...).
    read = set(re.findall(r'(?:\benv\.\w+|\benv|\b_[a-z_]+)\(\s*"([A-Z0-9_]+)"', settings_src))
    assert {"ENIGMO_DEBUG", "ENIGMO_RATE_LIMITS", "ENIGMO_RELAY_DB_THREADS", "ENIGMO_RELAY_TICK_SECONDS"} <= read, "pattern is stale"
    listed = set(re.findall(r"^([A-Z0-9_]+)=", (ROOT / "docker" / "env.example").read_text(), re.M))
    assert read, "no variables found: the pattern is stale"
    assert read - listed == set()


def test_settings_fail_loudly_on_a_bad_value():
    env = {**os.environ, "ENIGMO_MAX_DEVICES": "-3", "DJANGO_SETTINGS_MODULE": "enigmo.settings"}
    result = subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "ENIGMO_MAX_DEVICES must be a positive integer" in result.stderr
    env = {**os.environ, "REDIS_URL": "http://nope", "DJANGO_SETTINGS_MODULE": "enigmo.settings"}
    result = subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "REDIS_URL must start with redis://" in result.stderr


# Run the real settings file once per case in one child process (fast), reporting each outcome.
_SETTINGS_CASES = r"""
import json, os, runpy, sys
from django.core.exceptions import ImproperlyConfigured
base = dict(os.environ)
out = []
keys = json.loads(sys.argv[2])
for overrides in json.loads(sys.argv[1]):
    os.environ.clear(); os.environ.update(base); os.environ.update(overrides)
    try:
        ns = runpy.run_path("enigmo/settings.py")
        out.append({"ok": {k: ns[k] for k in keys}})
    except ImproperlyConfigured as exc:
        out.append({"error": str(exc)})
print(json.dumps(out))
"""


def _settings_outcomes(
    cases: list[dict[str, str]], keys: tuple[str, ...] = ("DEBUG", "RATE_LIMITS_ENABLED", "EMBEDDED_PURGE", "RELAY_DB_THREADS")
) -> list[dict]:
    import json

    names = {"DATABASE_URL", "REDIS_URL", "ENIGMO_PRODUCTION", "ENIGMO_EMBEDDED_PURGE"} | {k for case in cases for k in case}
    env = {k: v for k, v in os.environ.items() if k not in names}
    result = subprocess.run(
        [sys.executable, "-c", _SETTINGS_CASES, json.dumps(cases), json.dumps(keys)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "name, value",
    [
        ("ENIGMO_RATE_LIMITS", "ture"),
        ("ENIGMO_DEBUG", "enabled"),
        ("ENIGMO_EMBEDDED_PURGE", ""),
        ("ENIGMO_COMPAT_ENIGMA_V03_STRICT", "2"),
    ],
)
def test_settings_refuse_a_boolean_they_cannot_read(name, value):
    """django-environ reads an unknown word as False; ours stops with the variable's name."""
    [outcome] = _settings_outcomes([{name: value}])
    assert "error" in outcome, outcome
    assert outcome["error"].startswith(f"{name} must be one of 1/0, true/false, yes/no, on/off")


def test_settings_read_every_spelling_of_a_boolean():
    """1/0, true/false, yes/no and on/off, in any case and with stray spaces, are accepted."""
    spellings = {"1": True, "TRUE": True, " yes ": True, "On": True, "0": False, "False": False, "NO": False, "off": False}
    outcomes = _settings_outcomes([{"ENIGMO_RATE_LIMITS": raw, "ENIGMO_DEBUG": raw} for raw in spellings])
    for (raw, expected), outcome in zip(spellings.items(), outcomes, strict=True):
        assert outcome == {"ok": {"DEBUG": expected, "RATE_LIMITS_ENABLED": expected, "EMBEDDED_PURGE": True, "RELAY_DB_THREADS": None}}, raw


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("ENIGMO_RELAY_DB_THREADS", "0", "ENIGMO_RELAY_DB_THREADS must be a positive integer, got 0"),
        ("ENIGMO_RELAY_DB_THREADS", "-4", "ENIGMO_RELAY_DB_THREADS must be a positive integer, got -4"),
        ("ENIGMO_RELAY_DB_THREADS", "four", "ENIGMO_RELAY_DB_THREADS must be an integer, got 'four'"),
        ("ENIGMO_MAX_DEVICES", "0", "ENIGMO_MAX_DEVICES must be a positive integer, got 0"),
        ("ENIGMO_WS_PING_INTERVAL", "2.5", "ENIGMO_WS_PING_INTERVAL must be an integer, got '2.5'"),
        ("ENIGMO_RELAY_TICK_SECONDS", "0", "ENIGMO_RELAY_TICK_SECONDS must be a positive number"),
        ("ENIGMO_RELAY_TICK_SECONDS", "soon", "ENIGMO_RELAY_TICK_SECONDS must be a number"),
        ("ENIGMO_CHANNEL_CAPACITY", "0", "ENIGMO_CHANNEL_CAPACITY must be a positive integer, got 0"),
        ("ENIGMO_CHANNEL_CAPACITY", "lots", "ENIGMO_CHANNEL_CAPACITY must be an integer, got 'lots'"),
    ],
)
def test_settings_refuse_a_number_that_is_not_positive(name, value, message):
    """Counts and intervals must be positive; the error names the variable and the bad value."""
    [outcome] = _settings_outcomes([{name: value}])
    assert outcome.get("error", "").startswith(message), outcome


def test_relay_db_threads_unset_or_empty_means_the_default_and_a_positive_value_is_kept():
    outcomes = _settings_outcomes([{}, {"ENIGMO_RELAY_DB_THREADS": ""}, {"ENIGMO_RELAY_DB_THREADS": "3"}])
    assert [o["ok"]["RELAY_DB_THREADS"] for o in outcomes] == [None, None, 3]


def test_the_relays_statements_are_prepared_on_postgresql_unless_a_pooler_needs_them_not_to_be():
    """On PostgreSQL the relay's statements are prepared once per connection (psycopg's
    prepare_threshold 0); ENIGMO_DB_PREPARED_STATEMENTS=0 leaves Django's default (never), for a
    pooler in transaction mode. SQLite has no such option."""
    postgres = "postgres://enigmo@127.0.0.1:5432/enigmo"
    cases = [{"DATABASE_URL": postgres}, {"DATABASE_URL": postgres, "ENIGMO_DB_PREPARED_STATEMENTS": "0"}, {}]
    options = [outcome["ok"]["DATABASES"]["default"]["OPTIONS"] for outcome in _settings_outcomes(cases, keys=("DATABASES",))]
    assert options[0]["prepare_threshold"] == 0
    assert "prepare_threshold" not in options[1] and options[1]["connect_timeout"] == 5
    assert "prepare_threshold" not in options[2]


def test_channel_capacity_sizes_both_channel_layers():
    """ENIGMO_CHANNEL_CAPACITY (default 1,000) is the capacity of the in-memory layer and of
    channels-redis alike; the fault tests set it small to make the layer drop nudges."""
    cases = [{}, {"ENIGMO_CHANNEL_CAPACITY": "20"}, {"REDIS_URL": "redis://127.0.0.1:6379/9"}, {"REDIS_URL": "redis://127.0.0.1:6379/9", "ENIGMO_CHANNEL_CAPACITY": "20"}]
    outcomes = _settings_outcomes(cases, keys=("CHANNEL_LAYERS",))
    layers = [o["ok"]["CHANNEL_LAYERS"]["default"] for o in outcomes]
    assert [layer["BACKEND"].rsplit(".", 1)[-1] for layer in layers] == ["InMemoryChannelLayer"] * 2 + ["RedisChannelLayer"] * 2
    assert [layer["CONFIG"]["capacity"] for layer in layers] == [1000, 20, 1000, 20]


def test_production_settings_pass_the_deploy_check():
    env = {
        **os.environ,
        "ENIGMO_PRODUCTION": "1",
        "ENIGMO_SECRET_KEY": "a" * 20 + "-production-secret-key-for-the-deploy-check-" + "z" * 10,
        "ENIGMO_ALLOWED_HOSTS": "chat.example.org",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


_PRODUCTION_HEADERS = r"""
import json, django
django.setup()
from django.test import Client
out = {}
for name, path, proto in [("page", "/", "https"), ("api", "/api/v1/keys/prekeys/bob", "https"), ("plain", "/", None)]:
    extra = {"HTTP_X_FORWARDED_PROTO": proto} if proto else {}
    response = Client(HTTP_HOST="chat.example.org").get(path, **extra)
    out[name] = {"status": response.status_code, "headers": dict(response.headers)}
print(json.dumps(out))
"""


def test_production_responses_carry_hsts_and_the_other_security_headers():
    """With ENIGMO_PRODUCTION=1, an HTTPS request (TLS ended at the proxy, X-Forwarded-Proto:
    https) gets HSTS for a year with subdomains and preload, nosniff, Referrer-Policy, and a CSP
    with frame-ancestors 'none', on the app page and on the API alike; a plain-HTTP request is
    redirected to HTTPS and gets no HSTS (RFC 6797 §7.2)."""
    import json

    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith("ENIGMO_")}
    env.update(
        {
            "ENIGMO_PRODUCTION": "1",
            "ENIGMO_SECRET_KEY": "a" * 20 + "-production-secret-key-for-the-header-check-" + "z" * 10,
            "ENIGMO_ALLOWED_HOSTS": "chat.example.org",
            "DJANGO_SETTINGS_MODULE": "enigmo.settings",
        }
    )
    result = subprocess.run([sys.executable, "-c", _PRODUCTION_HEADERS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["page"]["status"] == 200 and out["api"]["status"] == 401, out
    for name in ("page", "api"):
        headers = out[name]["headers"]
        assert headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload", name
        assert headers["X-Content-Type-Options"] == "nosniff", name
        assert headers["Referrer-Policy"] == "same-origin", name
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"].split("; "), name
        assert headers["X-Frame-Options"] == "DENY", name
    plain = out["plain"]
    assert plain["status"] == 301 and plain["headers"]["Location"] == "https://chat.example.org/", plain
    assert "Strict-Transport-Security" not in plain["headers"], plain


def test_readme_quick_start_is_exactly_two_commands():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```(?:sh|bash|console)?\n(.*?)```", section, re.S)
    assert block
    commands = [line for line in block.group(1).splitlines() if line.strip() and not line.strip().startswith("#")]
    assert commands == ["python3 dev.py run", "python3 dev.py test"]


@pytest.mark.live
def test_first_readme_command_serves_the_app(tmp_path):
    """`python3 dev.py run` sets up (reusing what is installed), migrates and serves on the embedded default."""
    from tests.live import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith("PYTEST")}
    env.update({"ENIGMO_PORT": str(port), "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"})
    process = subprocess.Popen([sys.executable, "dev.py", "run"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stdout.read().decode()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1) as response:
                    body = response.read().decode()
                    assert '"status":"ok"' in body.replace(" ", "")
                    assert "in-memory" in body
                    break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail("dev.py run did not serve /api/health in time")
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.mark.live
def test_second_readme_command_runs_the_suite():
    """`python3 dev.py test <args>` sets up and runs pytest (here on one small file, to avoid recursion)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    result = subprocess.run(
        [sys.executable, "dev.py", "test", "tests/test_profiles.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"\d+ passed", result.stdout), result.stdout
