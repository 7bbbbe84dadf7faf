"""The nginx site file ``deploy/nginx/rentahal.conf``, run in front of two broker nodes.

It is the file ``docs/deployment.md`` describes and ``deploy/compose.yml`` mounts;
only the upstream's servers and the listen port are replaced with this test's. A
thin main config (pid, logs, temp paths in a temp dir) wraps it, as
``/etc/nginx/nginx.conf`` would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.test_cluster import ClusterUser
from tests.support.cluster import Cluster
from tests.support.servers import free_port

SITE_FILE = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "rentahal.conf"


def _nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None
    )


pytestmark = [
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.timeout(120),
]


def upstream_servers(config: str) -> list[str]:
    """The ``server`` lines of the site file's upstream block, as written."""
    upstream = config.split("upstream rentahal_nodes {", 1)[1].split("}", 1)[0]
    return re.findall(r"^\s*server [^;]+;\n", upstream, flags=re.M)


def site_config(upstreams: list[str], listen_port: int) -> str:
    """The site file with ``upstreams`` and ``127.0.0.1:listen_port`` filled in."""
    config = SITE_FILE.read_text(encoding="utf-8")
    servers = upstream_servers(config)
    assert len(servers) >= 2, "the upstream should list several nodes"
    first = servers[0]
    options = first.strip().split(" ", 2)[2] if first.strip().count(" ") >= 2 else ";"
    lines = "".join(f"    server {u} {options}\n" for u in upstreams)
    config = config.replace(first, lines)
    for other in servers[1:]:
        config = config.replace(other, "")
    assert "    listen 80;" in config
    return config.replace("    listen 80;", f"    listen 127.0.0.1:{listen_port};")


def main_config(directory: Path, site: str) -> str:
    """A minimal ``nginx.conf`` around ``site`` with every path inside ``directory``."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    paths = "\n".join(
        f"    {kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}daemon off;\nworker_processes 1;\npid {directory / 'nginx.pid'};\n"
        f"error_log {directory / 'error.log'} warn;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"    access_log {directory / 'access.log'};\n{paths}\n"
        f"{site}\n}}\n"
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Two nodes, one fast worker; the access log on (its per-WebSocket lines show the node)."""
    with Cluster(nodes=2, env={"RENTAHAL_SERVER__ACCESS_LOG": "true"}) as started:
        started.start_worker("fast", latency_ms=20)
        started.prepare([started.record("fast", max_concurrency=8)])
        yield started


@pytest.fixture(scope="module")
def proxy(cluster: Cluster) -> Iterator[str]:
    """nginx with the documented config in front of the cluster; yields ``host:port``."""
    binary = _nginx()
    assert binary is not None, "nginx not found: `make test` installs it (apt-get install nginx)"
    directory = cluster.dir / "nginx"
    directory.mkdir()
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(
        main_config(directory, site_config([n.address for n in cluster.nodes], port)),
        encoding="utf-8",
    )
    check = subprocess.run(
        [binary, "-t", "-p", str(directory), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 0, f"nginx -t rejected the documented config:\n{check.stderr}"
    process = subprocess.Popen(
        [binary, "-p", str(directory), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                log = (directory / "error.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"nginx did not come up on {port}:\n{log}")
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _ws_accepted(cluster: Cluster, i: int) -> int:
    return cluster.node(i).log.read_text(errors="replace").count('"WebSocket /ws" [accepted]')


async def test_websocket_queries_through_nginx_reach_both_nodes(
    cluster: Cluster, proxy: str
) -> None:
    before = [_ws_accepted(cluster, i) for i in range(2)]
    users = [ClusterUser() for _ in range(4)]
    try:
        for user in users:
            await user.connect(f"ws://{proxy}/ws")
        ids = await asyncio.gather(*(u.submit(3, "via nginx") for u in users))
        await asyncio.gather(*(u.wait_settled(j, 30) for u, j in zip(users, ids, strict=True)))
        assert all(u.answered(j) for u, j in zip(users, ids, strict=True)), [
            u.errors for u in users
        ]
        assert not [e for u in users for e in u.errors]
    finally:
        await asyncio.gather(*(u.close() for u in users))
    after = [_ws_accepted(cluster, i) for i in range(2)]
    spread = [a - b for a, b in zip(after, before, strict=True)]
    assert all(n > 0 for n in spread), f"round robin sent WebSockets to nodes as {spread}"


async def test_idle_socket_survives_and_reconnect_goes_to_the_other_node(
    cluster: Cluster, proxy: str
) -> None:
    user = ClusterUser()
    try:
        await user.connect(f"ws://{proxy}/ws")
        await asyncio.sleep(3)  # idle: nginx must not cut the socket
        (job,) = await user.submit(1, "after idling")
        await user.wait_settled([job], 15)
        assert user.answered([job]), user.errors
        # One node goes away: every new connection through nginx still lands on a live one.
        cluster.stop(0)
        for attempt in range(3):
            await user.connect(f"ws://{proxy}/ws")
            (job,) = await user.submit(1, f"after failover {attempt}")
            await user.wait_settled([job], 15)
            assert user.answered([job]), user.errors
    finally:
        await user.close()
        cluster.start(0)


def test_http_routes_through_nginx(proxy: str) -> None:
    page = httpx.get(f"http://{proxy}/", timeout=10)
    assert page.status_code == 200
    assert httpx.get(f"http://{proxy}/metrics", timeout=10).status_code == 403
    status = httpx.get(f"http://{proxy}/debug/system_status", timeout=10)
    assert status.status_code == 200 and status.json()["total_workers"] >= 1
