"""compose.yml, validated and resolved by docker-compose itself (no container engine needed).

``docker-compose config`` runs in a temporary copy of the project directory holding ``compose.yml``
and a ``.env`` made from ``.env.example`` (nothing is written to the work tree). Its resolved output
is checked against the runbook: services, ports, probes, environment and dependency order. The
resolved environment of every service is fed to :func:`intents_mm.config.load_config`, so the
containers' configuration is proven valid, not just present.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from intents_mm.config import DEFAULT_PORTS, SERVICES, VAR_BY_NAME, load_config, port_var
from intents_mm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yml"
TOKEN = "compose-test-token"
# Variables that exist only for the containers, not in intents_mm.config.VARIABLES.
CONTAINER_ONLY = {"HEALTHCHECK_PORT"}
POSTGRES_IMAGE_VARS = {"POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD"}
COMPOSE_ONLY_INTERPOLATION = {*POSTGRES_IMAGE_VARS, "POSTGRES_PUBLISH_PORT"}
INFRA = {"nats", "postgres", "migrate"}


def compose_tool() -> str:
    """docker-compose, installed by scripts/ensure-tools.sh when missing; skip if it cannot be."""
    tool = shutil.which("docker-compose")
    if tool is None:
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "ensure-tools.sh")], capture_output=True, timeout=600, check=False
        )
        tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed and scripts/ensure-tools.sh could not install it")
    return tool


def project_dir(base: Path, dotenv: Mapping[str, str]) -> Path:
    """A copy of compose.yml next to a .env of .env.example with ``dotenv`` applied on top."""
    base.mkdir(parents=True, exist_ok=True)
    shutil.copy(COMPOSE, base / "compose.yml")
    lines = []
    for line in (ROOT / ".env.example").read_text(encoding="utf-8").splitlines():
        key = line.partition("=")[0]
        if key in dotenv:
            continue
        lines.append(line)
    lines.extend(f"{k}={v}" for k, v in dotenv.items())
    (base / ".env").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return base


def run_compose(
    tool: str, directory: Path, *args: str, env: Mapping[str, str] = {}
) -> subprocess.CompletedProcess[str]:
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(directory), **env}
    return subprocess.run(
        [tool, "-f", "compose.yml", "--project-directory", str(directory), *args],
        cwd=directory,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def yaml_to_data(tool: str, text: str) -> Any:
    """Parse docker-compose's YAML output with the PyYAML that docker-compose (v1) itself runs on."""
    with open(tool, "rb") as handle:
        first = handle.readline()
    if not first.startswith(b"#!"):
        pytest.skip(f"{tool} is not the Python docker-compose; cannot parse its YAML output")
    interpreter = first[2:].decode().split()
    code = "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"
    result = subprocess.run(
        [*interpreter, "-c", code], input=text, capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(result.stdout)


def resolved_config(tool: str, directory: Path, env: Mapping[str, str] = {}) -> dict[str, Any]:
    version = subprocess.run(
        [tool, "version", "--short"], capture_output=True, text=True, timeout=60, check=False
    )
    if version.stdout.strip().lstrip("v").startswith("1."):
        result = run_compose(tool, directory, "config", env=env)
        assert result.returncode == 0, result.stderr
        data: dict[str, Any] = yaml_to_data(tool, result.stdout)
    else:
        result = run_compose(tool, directory, "config", "--format", "json", env=env)
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
    return data


@pytest.fixture(scope="module")
def tool() -> str:
    return compose_tool()


@pytest.fixture(scope="module")
def config(tool: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = project_dir(tmp_path_factory.mktemp("compose"), {"CONTROL_API_TOKEN": TOKEN})
    return resolved_config(tool, directory)


def services(config: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = config["services"]
    return result


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host_ip, published, target) of every published port, short or long syntax."""
    out: list[tuple[str, int, int]] = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            out.append((port.get("host_ip", ""), int(port["published"]), int(port["target"])))
        else:
            parts = str(port).split("/")[0].split(":")
            assert len(parts) == 3, f"port {port} has no host address"
            out.append((parts[0], int(parts[1]), int(parts[2])))
    return out


def mounts(service: dict[str, Any]) -> set[tuple[str, str]]:
    """(source, target) of every volume, short (``src:dst[:mode]``) or long syntax."""
    out: set[tuple[str, str]] = set()
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            out.add((volume["source"], volume["target"]))
        else:
            source, target = str(volume).split(":")[:2]
            out.add((source, target))
    return out


def test_ensure_tools_is_idempotent(tool: str) -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "ensure-tools.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "installed" not in result.stdout  # the tool is there: nothing to do


def test_every_runbook_service_and_the_infrastructure(config: dict[str, Any]) -> None:
    assert set(services(config)) == set(SERVICES) | INFRA


@pytest.mark.parametrize("name", SERVICES)
def test_service_runs_its_command_on_its_port(config: dict[str, Any], name: str) -> None:
    service = services(config)[name]
    port = DEFAULT_PORTS[name]
    assert service["command"] == ["run", name]
    assert service["image"] == "intents-mm:latest"
    assert Path(service["build"]["context"]).name.startswith("compose")  # build: . (the project dir)
    assert service["restart"] == "unless-stopped"
    assert published(service) == [("127.0.0.1", port, port)]

    env = environment(service)
    assert env["HEALTHCHECK_PORT"] == str(port)
    assert env[port_var(name)] == str(port)
    assert env["NATS_URL"] == "nats://nats:4222"
    assert env["CONTROL_API_HOST"] == "0.0.0.0"
    assert env["CONTROL_API_TOKEN"] == TOKEN
    pg = urlparse(env["POSTGRES_URL"])
    assert pg.scheme == "postgresql"
    assert (pg.hostname, pg.port) == ("postgres", 5432)

    check = service["healthcheck"]
    assert check["test"][:3] == ["CMD", "python", "-c"]
    assert "/healthz" in check["test"][3]
    assert "HEALTHCHECK_PORT" in check["test"][3]

    assert service["depends_on"] == {
        "nats": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }


@pytest.mark.parametrize("name", SERVICES)
def test_service_environment_is_a_valid_configuration(config: dict[str, Any], name: str) -> None:
    """What the container gets (.env + overrides) loads, and binds the service's runbook port."""
    env = environment(services(config)[name])
    unknown = set(env) - set(VAR_BY_NAME) - CONTAINER_ONLY
    assert not unknown, f"{name}: variables unknown to intents_mm.config: {sorted(unknown)}"
    missing = set(VAR_BY_NAME) - set(env)
    assert not missing, f"{name}: .env (env_file) did not reach the container: {sorted(missing)}"
    loaded = load_config({k: v for k, v in env.items() if k in VAR_BY_NAME}, dotenv=None)
    assert loaded.port(name) == DEFAULT_PORTS[name]
    assert loaded["CONTROL_API_HOST"] == "0.0.0.0"
    assert loaded["NATS_URL"] == "nats://nats:4222"
    # The same environment without the token is refused: 0.0.0.0 requires CONTROL_API_TOKEN.
    with pytest.raises(ConfigError, match="CONTROL_API_TOKEN"):
        load_config({**env, "CONTROL_API_TOKEN": ""}, dotenv=None, strict_unknown=False)


def test_migrate_is_a_one_shot_job(config: dict[str, Any]) -> None:
    migrate = services(config)["migrate"]
    assert migrate["command"] == ["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["image"] == "intents-mm:latest"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert not migrate.get("ports")
    env = environment(migrate)
    assert env["POSTGRES_URL"] == environment(services(config)["history-writer"])["POSTGRES_URL"]
    load_config({k: v for k, v in env.items() if k in VAR_BY_NAME}, dotenv=None)


def test_nats_and_postgres_keep_their_data_in_volumes(config: dict[str, Any]) -> None:
    nats = services(config)["nats"]
    assert nats["image"].startswith("nats:2.10")
    command = nats["command"]
    assert "-js" in command
    assert command[command.index("-sd") + 1] == "/data"
    assert ("nats-data", "/data") in mounts(nats)
    assert "/healthz" in " ".join(nats["healthcheck"]["test"])

    postgres = services(config)["postgres"]
    assert postgres["image"].startswith("postgres:16")
    assert ("postgres-data", "/var/lib/postgresql/data") in mounts(postgres)
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert set(environment(postgres)) == POSTGRES_IMAGE_VARS
    assert set(config["volumes"]) == {"nats-data", "postgres-data"}

    # The services' POSTGRES_URL carries the credentials the postgres container was given.
    pg = urlparse(environment(services(config)["history-writer"])["POSTGRES_URL"])
    pg_env = environment(postgres)
    assert (pg.username, pg.password, pg.path.lstrip("/")) == (
        pg_env["POSTGRES_USER"],
        pg_env["POSTGRES_PASSWORD"],
        pg_env["POSTGRES_DB"],
    )


def test_every_published_port_is_loopback_only(config: dict[str, Any]) -> None:
    seen = 0
    for name, service in services(config).items():
        for host_ip, _, _ in published(service):
            assert host_ip == "127.0.0.1", f"{name} publishes on {host_ip or 'every address'}"
            seen += 1
    assert seen == len(SERVICES) + 1  # seven control APIs and PostgreSQL


def test_interpolated_variables_are_known() -> None:
    used = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text(encoding="utf-8")))
    assert "CONTROL_API_TOKEN" in used
    unknown = used - set(VAR_BY_NAME) - COMPOSE_ONLY_INTERPOLATION
    assert not unknown, f"compose.yml interpolates unknown variables: {sorted(unknown)}"


def test_missing_control_api_token_stops_compose(tool: str, tmp_path: Path) -> None:
    directory = project_dir(tmp_path / "p", {})
    result = run_compose(tool, directory, "config")
    assert result.returncode != 0
    assert "CONTROL_API_TOKEN" in result.stderr


def test_token_and_postgres_credentials_from_dotenv_and_shell(tool: str, tmp_path: Path) -> None:
    """The documented flow: the token in .env; PostgreSQL credentials from the shell override defaults."""
    directory = project_dir(tmp_path / "p", {"CONTROL_API_TOKEN": "from-dotenv"})
    data = resolved_config(
        tool,
        directory,
        env={"POSTGRES_PASSWORD": "s3cret", "POSTGRES_USER": "mm", "POSTGRES_PUBLISH_PORT": "25432"},
    )
    ingest = environment(services(data)["near-intents-ingest"])
    assert ingest["CONTROL_API_TOKEN"] == "from-dotenv"
    assert ingest["POSTGRES_URL"] == "postgresql://mm:s3cret@postgres:5432/intents"
    assert environment(services(data)["postgres"])["POSTGRES_PASSWORD"] == "s3cret"
    assert published(services(data)["postgres"]) == [("127.0.0.1", 25432, 5432)]


class _Health:
    """A loopback HTTP server whose GET /healthz answers with ``status``."""

    def __init__(self) -> None:
        self.status = 200
        health = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                code = health.status if self.path == "/healthz" else 404
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def health_server() -> Iterator[_Health]:
    server = _Health()
    yield server
    server.close()


def test_service_healthcheck_command_follows_healthz(config: dict[str, Any], health_server: _Health) -> None:
    test = services(config)["strategy-engine"]["healthcheck"]["test"]
    argv = [sys.executable, *test[2:]]

    def probe() -> tuple[int, str]:
        env = {"PATH": "/usr/bin:/bin", "HEALTHCHECK_PORT": str(health_server.port)}
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
        return result.returncode, result.stderr

    assert probe() == (0, "")
    health_server.status = 503
    code, stderr = probe()
    assert code == 1
    assert stderr.strip() == f"http://127.0.0.1:{health_server.port}/healthz: 503"


def test_deployment_doc_lists_the_runbook_ports() -> None:
    text = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| (\d{4}) \| ([a-z-]+) \|$", text, flags=re.M))
    assert {name: int(port) for port, name in rows.items()} == DEFAULT_PORTS
