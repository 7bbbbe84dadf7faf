"""The operators' kit without a Docker engine: the compose file, the Dockerfile, Prometheus.

What can be checked here is checked against the real code: every command a container
runs is parsed by the real ``rentahal`` command line (unknown options and bad values
fail), every ``RENTAHAL_*`` variable is loaded by :func:`rentahal.config.load_settings`
(unknown names and bad values fail), and the nginx file compose mounts is the one
``tests/integration/test_nginx_config.py`` runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from rentahal.cli import app
from rentahal.config import Settings, load_settings
from rentahal.errors import ConfigError
from tests.integration.test_nginx_config import SITE_FILE, upstream_servers

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: Any) -> Any:
    """Compose's ``${VAR:-default}`` with an empty environment: the defaults."""
    if isinstance(value, str):
        return INTERPOLATION.sub(lambda m: m.group(2) or "", value)
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """deploy/compose.yml parsed (anchors and merge keys resolved) and interpolated."""
    parsed = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(parsed, dict)
    return interpolate(parsed)  # type: ignore[no-any-return]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def instruction(name: str) -> str:
    (value,) = [args for instr, args in dockerfile_instructions() if instr == name]
    return value


def entrypoint() -> list[str]:
    return list(json.loads(instruction("ENTRYPOINT")))


def parse_rentahal(argv: list[str]) -> dict[str, Any]:
    """Parse ``rentahal ARGV`` with the real typer app; the chosen command's parameters.

    Unknown commands, unknown options and values of the wrong type raise.
    """
    command: Any = typer.main.get_command(app)
    args = list(argv)
    while hasattr(command, "commands"):  # a group: the next word names a subcommand
        assert args, f"rentahal {' '.join(argv)}: a subcommand is missing"
        name, args = args[0], args[1:]
        assert name in command.commands, f"rentahal has no command {name!r} ({argv})"
        command = command.commands[name]
    context = command.make_context("rentahal", args)
    return dict(context.params)


def broker_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run the image built from our Dockerfile."""
    return {
        name: svc
        for name, svc in compose["services"].items()
        if svc.get("build", {}).get("dockerfile") == "Dockerfile"
    }


def serve_nodes(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in broker_services(compose).items() if s["command"][0] == "serve"}


def _usage_error(argv: list[str]) -> str:
    """The message ``rentahal ARGV`` is refused with (empty if it parses)."""
    try:
        parse_rentahal(argv)
    except AssertionError as exc:
        return str(exc)
    except Exception as exc:  # the command line's usage errors (typer's own click)
        assert "UsageError" in [cls.__name__ for cls in type(exc).__mro__], exc
        return str(exc)
    return ""


def test_the_checker_rejects_what_rentahal_would() -> None:
    assert parse_rentahal(["serve", "--port", "5000"])["port"] == 5000
    assert "No such option" in _usage_error(["serve", "--bogus"])
    assert "valid integer" in _usage_error(["serve", "--port", "many"])
    assert "no command 'serv'" in _usage_error(["serv"])
    with pytest.raises(ConfigError, match="no such setting"):
        load_settings(None, environ={"RENTAHAL_BROKER__REDIS": "redis://x"})
    with pytest.raises(ConfigError, match="port"):
        load_settings(None, environ={"RENTAHAL_SERVER__PORT": "many"})


def test_compose_has_several_nodes_redis_postgres_and_nginx(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "postgres", "nginx"} <= set(services)
    assert len(serve_nodes(compose)) >= 2
    build = next(iter(broker_services(compose).values()))["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


def test_every_container_command_is_a_real_rentahal_command(compose: dict[str, Any]) -> None:
    assert entrypoint() == ["rentahal"]
    assert parse_rentahal(json.loads(instruction("CMD")))["host"] == "0.0.0.0"
    node_ids = []
    for name, svc in broker_services(compose).items():
        assert not _usage_error([str(arg) for arg in svc["command"]]), name
        params = parse_rentahal([str(arg) for arg in svc["command"]])
        if svc["command"][0] == "serve":
            assert params["port"] == 5000, name
            node_ids.append(params["node_id"])
    assert len(set(node_ids)) == len(node_ids) == len(serve_nodes(compose)), node_ids


def test_environment_names_and_values_are_real_settings(compose: dict[str, Any]) -> None:
    for name, svc in broker_services(compose).items():
        env = {k: str(v) for k, v in svc["environment"].items()}
        assert all(k.startswith("RENTAHAL_") for k in env), name
        settings: Settings = load_settings(None, environ=env)
        assert settings.database.url.startswith("postgresql+asyncpg://rentahal:")
        assert settings.database.url.endswith("@postgres:5432/rentahal")
        assert settings.broker.redis_url == "redis://redis:6379/0"
    postgres = compose["services"]["postgres"]["environment"]
    url = load_settings(None, environ=next(iter(broker_services(compose).values()))["environment"])
    assert f"{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}@" in url.database.url


def test_nodes_start_after_migration_and_are_stopped_with_sigterm(
    compose: dict[str, Any],
) -> None:
    migrate = compose["services"]["migrate"]
    assert migrate["command"] == ["db", "upgrade"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, svc in serve_nodes(compose).items():
        assert svc["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert svc["stop_signal"] == "SIGTERM" and svc["init"] is True, name
        assert svc["volumes"][0].endswith(":/var/lib/rentahal"), name
    assert instruction("STOPSIGNAL") == "SIGTERM"


def test_nginx_mounts_the_tested_site_file_and_lists_every_node(compose: dict[str, Any]) -> None:
    (mount,) = compose["services"]["nginx"]["volumes"]
    source, target = mount.split(":")[:2]
    assert (COMPOSE.parent / source).resolve() == SITE_FILE
    assert target.startswith("/etc/nginx/conf.d/")
    servers = [line.split()[1] for line in upstream_servers(SITE_FILE.read_text())]
    assert servers == [f"{name}:5000" for name in serve_nodes(compose)]
    assert set(compose["services"]["nginx"]["depends_on"]) == set(serve_nodes(compose))


def test_prometheus_scrapes_every_node(compose: dict[str, Any]) -> None:
    (mount,) = compose["services"]["prometheus"]["volumes"]
    config = yaml.safe_load((COMPOSE.parent / mount.split(":")[0]).read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"{n}:5000" for n in serve_nodes(compose)]


def test_grafana_gets_the_dashboard_and_a_prometheus_datasource(compose: dict[str, Any]) -> None:
    mounts = dict(m.split(":")[:2] for m in compose["services"]["grafana"]["volumes"])
    assert (COMPOSE.parent / "grafana" / "rentahal.json").is_file()
    assert "./grafana/rentahal.json" in mounts
    provisioning = COMPOSE.parent / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "rentahal.yml").read_text())[
        "providers"
    ]
    assert provider["options"]["path"] == mounts["./grafana/rentahal.json"].rsplit("/", 1)[0]


def test_dockerfile_copies_what_exists_and_installs_the_package() -> None:
    copies = [args.split() for instr, args in dockerfile_instructions() if instr == "COPY"]
    for *sources, _target in copies:
        for source in sources:
            assert (ROOT / source).exists(), source
    assert "pip install ." in instruction("RUN")
    assert instruction("EXPOSE") == "5000"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
