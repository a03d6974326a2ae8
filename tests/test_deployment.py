"""The deployment files: docker-compose parses them (no engine needed) and they say what we mean."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib

import pytest
import yaml

from api.config import PROJECT_ROOT

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="module")
def compose() -> dict:
    binary = shutil.which("docker-compose")
    if binary is None:
        if IN_CI:
            pytest.fail("docker-compose is not installed: .ci/run installs it")
        pytest.skip("docker-compose is not installed (Debian: apt-get install docker-compose)")
    result = subprocess.run(
        [binary, "config"],
        cwd=PROJECT_ROOT,
        env={**os.environ, "JWT_SECRET": "a-secret-for-parsing-the-file-only-0000"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_runs_postgres_redis_two_instances_and_a_balancer(compose: dict) -> None:
    services = compose["services"]
    instances = [s for s in services.values() if s.get("image") == "position-service:latest"]

    assert {"postgres", "redis", "balancer"} <= set(services)
    assert len(instances) >= 2
    for instance in instances:
        env = instance["environment"]
        assert (
            env["DATABASE_URL"].startswith("postgresql://") and "@postgres:" in env["DATABASE_URL"]
        )
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert env["JWT_SECRET"]
    assert services["balancer"]["ports"][0]["target"] == 80


def test_the_instances_believe_forwarding_headers_from_the_balancer_alone(compose: dict) -> None:
    services = compose["services"]
    [balancer_address] = [
        network["ipv4_address"] for network in services["balancer"]["networks"].values()
    ]
    instances = [s for s in services.values() if s.get("image") == "position-service:latest"]

    for instance in instances:
        assert instance["environment"]["TRUSTED_PROXIES"] == balancer_address
    config = (PROJECT_ROOT / "deploy" / "nginx.conf").read_text()
    assert re.search(r"proxy_set_header\s+X-Forwarded-For\s+\$proxy_add_x_forwarded_for;", config)


def test_the_balancer_passes_websocket_upgrades_to_every_instance(compose: dict) -> None:
    config = (PROJECT_ROOT / "deploy" / "nginx.conf").read_text()
    instances = [
        n for n, s in compose["services"].items() if s.get("image") == "position-service:latest"
    ]

    assert re.search(r"proxy_set_header\s+Upgrade\s+\$http_upgrade;", config)
    assert re.search(r"proxy_set_header\s+Connection\s+\$connection_upgrade;", config)
    assert "proxy_http_version 1.1;" in config and "proxy_buffering off;" in config
    assert set(re.findall(r"server\s+([\w-]+):8002", config)) == set(instances)


def test_compose_refuses_to_start_without_a_jwt_secret() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed")
    env = {k: v for k, v in os.environ.items() if k != "JWT_SECRET"}
    result = subprocess.run(
        [binary, "config"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "JWT_SECRET" in result.stderr


def test_the_image_runs_as_an_unprivileged_user_with_a_health_check() -> None:
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()

    assert re.search(r"^FROM python:3\.\d+-slim", dockerfile, re.MULTILINE)
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.MULTILINE)
    assert "HEALTHCHECK" in dockerfile and "/health/ready" in dockerfile
    assert '"serve", "--production"' in dockerfile


def _locked(name: str) -> dict[str, str]:
    """A lock file's pins, by normalized name; each must carry at least one hash."""
    pins: dict[str, str] = {}
    hashed: set[str] = set()
    for line in (PROJECT_ROOT / name).read_text().splitlines():
        if re.match(r"[A-Za-z0-9]", line):
            package, version = line.split(" ", 1)[0].split("==")
            current = re.sub(r"[-_.]+", "-", package).lower()
            pins[current] = version
        elif "--hash=sha256:" in line:
            hashed.add(current)
    assert pins and hashed == pins.keys()
    return pins


def test_installs_come_from_lock_files_with_hashes_that_match_pyproject() -> None:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    runtime, with_tests = _locked("requirements.lock"), _locked("requirements-test.lock")

    def names(requirements: list[str]) -> set[str]:
        return {re.sub(r"[-_.]+", "-", re.split(r"[\[<>=~ ]", r)[0]).lower() for r in requirements}

    assert names(project["dependencies"]) <= runtime.keys()
    assert names(project["optional-dependencies"]["test"]) <= with_tests.keys()
    # The service's environment has no test tool (some, like websockets, it needs itself).
    assert not {"pytest", "pytest-asyncio", "hypothesis", "schemathesis", "httpx"} & runtime.keys()
    assert {name: with_tests[name] for name in runtime} == runtime  # the same versions
    bootstrap = (PROJECT_ROOT / "scripts" / "bootstrap.sh").read_text()
    assert "--require-hashes" in bootstrap
    assert "requirements-test.lock" in (PROJECT_ROOT / "test.sh").read_text()
    assert "LOCK" not in (PROJECT_ROOT / "start.sh").read_text()  # the runtime lock, by default
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    assert "--require-hashes -r requirements.lock" in dockerfile
