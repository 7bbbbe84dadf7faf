"""Provisioners for the RealmScaler: command, start/stop scripts, static, Python."""

from __future__ import annotations

import importlib

from rentahal.realms.config import ProvisionerConfig
from rentahal.realms.provisioners.base import Provisioned, Provisioner, ProvisionError
from rentahal.realms.provisioners.command import LocalCommandProvisioner, ScriptProvisioner
from rentahal.realms.provisioners.static import StaticProvisioner


def make_provisioner(config: ProvisionerConfig) -> Provisioner:
    """The provisioner a realm's ``provisioner:`` section describes."""
    if config.command:
        return LocalCommandProvisioner(config.command)
    if config.start and config.stop:
        return ScriptProvisioner(config.start, config.stop)
    if config.static:
        return StaticProvisioner(config.static)
    assert config.python
    module_name, _, attr = config.python.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ProvisionError(f"provisioner {config.python!r} cannot be loaded: {exc}") from None
    provisioner: Provisioner = factory(**config.options)
    return provisioner


__all__ = [
    "LocalCommandProvisioner",
    "ProvisionError",
    "Provisioned",
    "Provisioner",
    "ScriptProvisioner",
    "StaticProvisioner",
    "make_provisioner",
]
