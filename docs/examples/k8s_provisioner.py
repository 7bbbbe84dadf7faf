"""A Python provisioner that scales a Kubernetes Deployment (example, not installed).

realms.yml::

    provisioner:
      python: k8s_provisioner:DeploymentProvisioner
      options: {namespace: ai, deployment: chat-workers, port: 8000}

Each start adds one replica and waits for a new ready pod; each stop removes
that pod (the Deployment's controller is told to scale down by one first).
Needs the ``kubernetes`` package and in-cluster or kubeconfig credentials.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from rentahal.realms.provisioners import Provisioned, ProvisionError


class DeploymentProvisioner:
    """One worker = one pod of ``deployment``."""

    def __init__(self, namespace: str, deployment: str, port: int = 8000) -> None:
        from kubernetes import client, config  # type: ignore[import-not-found]

        config.load_config()
        self.apps = client.AppsV1Api()
        self.core = client.CoreV1Api()
        self.namespace, self.deployment, self.port = namespace, deployment, port

    def _scale(self, delta: int) -> None:
        scale = self.apps.read_namespaced_deployment_scale(self.deployment, self.namespace)
        scale.spec.replicas = max(0, scale.spec.replicas + delta)
        self.apps.patch_namespaced_deployment_scale(self.deployment, self.namespace, scale)

    def _ready_pods(self) -> dict[str, str]:
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=f"app={self.deployment}")
        return {
            p.metadata.name: p.status.pod_ip
            for p in pods.items
            if p.status.pod_ip and all(c.ready for c in p.status.container_statuses or [])
        }

    async def start(
        self, name: str, realm: str, query_type: str, values: Mapping[str, str]
    ) -> Provisioned:
        """Add a replica and return the new pod."""
        before = await asyncio.to_thread(self._ready_pods)
        await asyncio.to_thread(self._scale, +1)
        for _ in range(120):
            now = await asyncio.to_thread(self._ready_pods)
            new = set(now) - set(before)
            if new:
                pod = new.pop()
                return Provisioned(name, f"{now[pod]}:{self.port}", realm, query_type, handle=pod)
            await asyncio.sleep(1)
        raise ProvisionError("no new pod became ready")

    async def stop(self, worker: Provisioned) -> None:
        """Remove a replica and that very pod."""
        await asyncio.to_thread(self._scale, -1)
        await asyncio.to_thread(self.core.delete_namespaced_pod, worker.handle, self.namespace)
