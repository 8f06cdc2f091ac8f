"""The Dockerfile and .dockerignore: multi-stage build, pinned installs, non-root runtime, a health
check that really probes ``/healthz``, and a package build that ships every module the image needs.

No container engine is needed: the Dockerfile is parsed, its HEALTHCHECK command is run against a
loopback HTTP server, and the package's build step (setuptools ``build_py``, what the wheel holds)
runs in a temporary copy of the project.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from intents_mm.config import DEFAULT_PORTS

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order, continuation lines joined, comments and blank lines dropped."""
    out: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are ignored by Docker
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        line = pending + stripped
        pending = ""
        keyword, _, args = line.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Instructions grouped by build stage (each group starts with its FROM)."""
    groups: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            groups.append([ins])
        elif groups:
            groups[-1].append(ins)
    return groups


def global_args(instructions: list[Instruction]) -> dict[str, str]:
    out: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "FROM":
            break
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            out[name.strip()] = default.strip()
    return out


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def test_parser_joins_continuations_and_skips_comments() -> None:
    parsed = parse_dockerfile("# c\nFROM a AS b\nRUN x \\\n    # inner\n    && y\n\nUSER 1\n")
    assert parsed == [Instruction("FROM", "a AS b"), Instruction("RUN", "x  && y"), Instruction("USER", "1")]


def test_multi_stage_on_pinned_slim_bookworm(instructions: list[Instruction]) -> None:
    groups = stages(instructions)
    assert len(groups) >= 2, "the Dockerfile must be multi-stage (builder + runtime)"
    args = global_args(instructions)
    for group in groups:
        image = group[0].args.split()[0]
        image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], image)
        assert image == "python:3.11-slim-bookworm"
    runtime = groups[-1]
    copies = [i.args for i in runtime if i.keyword == "COPY"]
    assert copies and all(c.startswith("--from=") for c in copies), "the runtime copies only build output"
    assert not any(i.keyword == "RUN" and "pip install" in i.args for i in runtime)


def test_installs_are_pinned_by_constraints(instructions: list[Instruction]) -> None:
    installs = [i.args for i in instructions if i.keyword == "RUN" and "pip install" in i.args]
    assert installs
    for command in installs:
        for part in command.split("&&"):
            if "pip install" in part:
                assert "-c constraints.txt" in part, part


def test_every_runtime_dependency_has_a_pin() -> None:
    """`pip install -c constraints.txt` pins only what constraints.txt names."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        name, sep, version = line.strip().partition("==")
        if sep:
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    for requirement in project["dependencies"]:
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
        assert match
        name = re.sub(r"[-_.]+", "-", match.group(0)).lower()
        assert name in pins, f"{name} (pyproject dependency) has no pin in constraints.txt"


def test_runtime_user_entrypoint_and_ports(instructions: list[Instruction]) -> None:
    runtime = stages(instructions)[-1]
    users = [i.args for i in runtime if i.keyword == "USER"]
    assert users, "the runtime stage must switch to a non-root user"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user == "10001"
    assert any(i.keyword == "RUN" and "--uid 10001" in i.args for i in runtime)

    (entrypoint,) = [i.args for i in runtime if i.keyword == "ENTRYPOINT"]
    (cmd,) = [i.args for i in runtime if i.keyword == "CMD"]
    assert json.loads(entrypoint) == ["intents-mm"]
    assert json.loads(cmd) == ["run-all"]

    exposed: set[int] = set()
    for ins in runtime:
        if ins.keyword == "EXPOSE":
            for item in ins.args.split():
                lo, _, hi = item.split("/")[0].partition("-")
                exposed.update(range(int(lo), int(hi or lo) + 1))
    assert set(DEFAULT_PORTS.values()) <= exposed

    env = " ".join(i.args for i in runtime if i.keyword == "ENV")
    assert re.search(r"\bCONTROL_API_HOST=0\.0\.0\.0\b", env)
    assert re.search(r"\bHEALTHCHECK_PORT=8081\b", env)


def healthcheck_command(instructions: list[Instruction]) -> list[str]:
    (check,) = [i.args for i in stages(instructions)[-1] if i.keyword == "HEALTHCHECK"]
    _, sep, command = check.partition("CMD ")
    assert sep, "HEALTHCHECK must use CMD"
    argv: list[str] = json.loads(command)
    return argv


class _Health:
    """A loopback HTTP server whose GET /healthz answers with ``status``."""

    def __init__(self) -> None:
        self.status = 200
        self.paths: list[str] = []
        health = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                health.paths.append(self.path)
                code = health.status if self.path == "/healthz" else 404
                body = b'{"ok": true}' if code == 200 else b'{"failing": ["nats"]}'
                self.send_response(code)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

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


def run_probe(argv: list[str], port: int) -> tuple[int, str]:
    """Run the HEALTHCHECK command as Docker would (exit code, stderr), with the venv's python."""
    assert argv[0] == "python"
    env = {"PATH": "/usr/bin:/bin", "HEALTHCHECK_PORT": str(port)}
    result = subprocess.run(
        [sys.executable, *argv[1:]], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    return result.returncode, result.stderr


def test_healthcheck_probes_healthz_on_healthcheck_port(
    instructions: list[Instruction], health_server: _Health
) -> None:
    argv = healthcheck_command(instructions)
    assert run_probe(argv, health_server.port) == (0, "")
    assert health_server.paths == ["/healthz"]
    health_server.status = 503
    code, stderr = run_probe(argv, health_server.port)
    assert code == 1
    # One line for `docker inspect`: the URL, the status and the failing checks from the body.
    assert stderr.strip().splitlines() == [
        f'http://127.0.0.1:{health_server.port}/healthz: 503 {{"failing": ["nats"]}}'
    ]


def test_healthcheck_fails_when_nothing_listens(instructions: list[Instruction]) -> None:
    argv = healthcheck_command(instructions)
    server = _Health()
    port = server.port
    server.close()
    code, stderr = run_probe(argv, port)
    assert code == 1
    assert len(stderr.strip().splitlines()) == 1
    assert "refused" in stderr.lower()


def test_dockerignore_is_an_allowlist_without_secrets() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "start by excluding everything"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "constraints.txt", "README.md", "src"}
    copied: set[str] = set()
    for ins in parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8")):
        if ins.keyword == "COPY" and not ins.args.startswith("--from="):
            copied.update(p.rstrip("/") for p in ins.args.split()[:-1])
    assert copied <= allowed, f"COPY of files the build context excludes: {copied - allowed}"


def test_package_build_ships_every_module(tmp_path: Path) -> None:
    """What setuptools puts in the wheel (build_py) holds every file of src/intents_mm that runs.

    The image installs the wheel, not the source tree: a module or data file missing here (Alembic
    migrations, simulator scenarios) is missing in the container. Alembic's ``script.py.mako`` is
    only used by ``alembic revision`` on a developer machine and is not required.
    """
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / "src", project / "src", ignore=ignore)
    out = tmp_path / "lib"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from setuptools import setup; setup()",
            "-q",
            "build_py",
            "--build-lib",
            str(out),
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    source = project / "src"
    wanted = {
        p.relative_to(source).as_posix()
        for p in (source / "intents_mm").rglob("*")
        if p.is_file() and p.suffix != ".mako"
    }
    shipped = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert "intents_mm/cli.py" in shipped
    assert "intents_mm/py.typed" in shipped
    missing = sorted(wanted - shipped)
    assert not missing, f"not in the wheel (add to [tool.setuptools.package-data]): {missing}"
