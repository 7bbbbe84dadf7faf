"""In a cluster only the node holding the scaler lease scales."""

from __future__ import annotations

import time

import httpx
import pytest
import yaml

from tests.support.cluster import Cluster

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.timeout(150)]
TOKEN = "cluster-scaler-token"


def test_only_the_leader_scales() -> None:
    with Cluster(nodes=2, env={"RENTAHAL_SECURITY__ADMIN_TOKEN": TOKEN}) as cluster:
        standby = cluster.start_worker("standby")
        doc = {
            "scaling": {"interval_s": 0.3, "cooldown_s": 0.3},
            "realms": {
                "$CHAT": {
                    "primary_query_type": "chat",
                    "min_workers": 1,
                    "max_workers": 1,
                    "provisioner": {"static": [standby]},
                }
            },
        }
        for node in cluster.nodes:
            node.realms_file.parent.mkdir(parents=True, exist_ok=True)
            node.realms_file.write_text(yaml.safe_dump(doc))
        cluster.prepare([])

        def events(i: int) -> list[dict[str, object]]:
            url = f"{cluster.node(i).http_url}/api/admin/scaler"
            answer = httpx.get(url, headers={"X-Admin-Token": TOKEN}, timeout=10)
            return answer.json()["events"]  # type: ignore[no-any-return]

        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if any(e["action"] == "added" for i in (0, 1) for e in events(i)):
                break
            time.sleep(0.2)
        time.sleep(2.0)  # several more rounds on both nodes
        acting = [i for i in (0, 1) if any(e["action"] == "added" for e in events(i))]
        assert len(acting) == 1, [events(0), events(1)]
        assert not events(1 - acting[0])
        workers = httpx.get(
            f"{cluster.node(0).http_url}/api/admin/workers",
            headers={"X-Admin-Token": TOKEN},
            timeout=10,
        ).json()["workers"]
        assert [w["address"] for w in workers if w["name"].startswith("auto-chat-")] == [standby]
        # The leader dies: the other node takes the lease and adopts its bookkeeping.
        other = 1 - acting[0]
        cluster.kill(acting[0])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(e["action"] == "adopted" for e in events(other)):
                break
            time.sleep(0.2)
        adopted = [e for e in events(other) if e["action"] == "adopted"]
        assert adopted and "auto-chat-" in str(adopted[0]["reason"])
        assert not any(e["action"] == "added" for e in events(other))
