"""The API layer calls the Broker's methods and public rooms, never its components."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _import_graph() -> ModuleType:
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts/import_graph.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("import_graph", module)
    spec.loader.exec_module(module)
    return module


def test_api_reaches_no_broker_component() -> None:
    graph = _import_graph()
    src = ROOT / "src"
    components = graph.broker_components(src)
    assert {"storage", "registry", "ledger", "shares", "fleet", "views"} <= components
    assert graph.reach_throughs(src, components) == {}


def test_a_reach_through_is_found(tmp_path: Path) -> None:
    graph = _import_graph()
    api = tmp_path / "rentahal" / "api"
    api.mkdir(parents=True)
    (api / "bad.py").write_text(
        "async def f(request, session, broker):\n"
        "    broker_of(request).parts().registry.get('w')\n"
        "    await session.broker._storage.list_users()\n"
        "    broker.ledger.price(None)\n"
        "    broker.views.workers()\n"
    )
    found = graph.reach_throughs(tmp_path, {"ledger", "storage", "views"})
    assert dict(found) == {"parts": 1, "_storage": 1, "ledger": 1}
