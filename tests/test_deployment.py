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
    read = set(re.findall(r'env\.\w+\(\s*"([A-Z0-9_]+)"', settings_src)) | set(re.findall(r'env\("([A-Z0-9_]+)"', settings_src))
    read |= set(re.findall(r'_positive_int\("([A-Z0-9_]+)"', settings_src))
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
