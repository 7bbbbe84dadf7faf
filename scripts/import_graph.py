"""The shape of the ``rentahal`` package: modules, import arrows, cycles, API reach-throughs.

Usage: ``python scripts/import_graph.py [SRC_DIR] [--runtime-only]``

``SRC_DIR`` is the folder that holds the ``rentahal`` package (default: this
checkout's ``src``), so another checkout can be measured the same way. Prints:

- modules: the modules of the package;
- module arrows: direct imports between two of its modules (``TYPE_CHECKING``
  imports count, unless ``--runtime-only``: they still tie the modules together);
- package arrows: the same, between rooms (``rentahal.api``, ``rentahal.broker``,
  ``rentahal.realms``, ...; a top-level module is a room of its own);
- import cycles: the groups of modules that import each other in a circle
  (strongly connected components), and the same between rooms;
- reach-throughs: places in ``rentahal/api/`` that use a component of the Broker
  (an attribute its ``__init__`` assigns) other than its public rooms, a private
  name or ``parts()``, and imports of broker submodules from ``rentahal/api/``;
- line counts of the broker's modules and its neighbours.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import grimp

PACKAGE = "rentahal"
API = f"{PACKAGE}.api"
# What the Broker offers the API layer besides its methods (rooms and plain data).
PUBLIC = {"fleet", "views", "sockets", "realms", "settings", "node_id"}
BROKER_CALLS = {"broker_of", "_broker"}
# The services beside the Broker get its components through ``parts()``; the API may not.
PARTS = "parts"
NEIGHBOURS = ("fleet", "status", "streaming", "lost_jobs", "realms.notifier", "wrapping")


def room(module: str) -> str:
    """The room of a module: ``rentahal.<first part>``."""
    parts = module.split(".")
    return ".".join(parts[:2])


def strongly_connected(nodes: Iterable[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Groups of more than one node that reach each other (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []
    counter = 0
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def broker_components(src: Path) -> set[str]:
    """Attributes the Broker's ``__init__`` assigns (``self.x = ...``), without underscores."""
    for candidate in (src / PACKAGE / "broker" / "core.py", src / PACKAGE / "broker.py"):
        if candidate.exists():
            tree = ast.parse(candidate.read_text())
            break
    else:
        return set()
    names: set[str] = set()
    for cls in ast.walk(tree):
        if not (isinstance(cls, ast.ClassDef) and cls.name == "Broker"):
            continue
        for fn in cls.body:
            if not (isinstance(fn, ast.FunctionDef) and fn.name == "__init__"):
                continue
            for node in ast.walk(fn):
                targets = node.targets if isinstance(node, ast.Assign) else []
                if isinstance(node, ast.AnnAssign):
                    targets = [node.target]
                for target in targets:
                    if (
                        isinstance(target, ast.Attribute)
                        and isinstance(target.value, ast.Name)
                        and target.value.id == "self"
                    ):
                        names.add(target.attr.lstrip("_"))
    return names


def _is_broker(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id == "broker"
    if isinstance(node, ast.Attribute):
        return node.attr == "broker"
    if isinstance(node, ast.Call):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        return name in BROKER_CALLS
    return False


def reach_throughs(src: Path, components: set[str]) -> Counter[str]:
    """``broker.<component>`` uses in ``rentahal/api/`` (public rooms and private names apart)."""
    found: Counter[str] = Counter()
    for path in sorted((src / PACKAGE / "api").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Attribute) and _is_broker(node.value)):
                continue
            name = node.attr
            internal = name in components and name not in PUBLIC
            if name.startswith("_") or internal or name == PARTS:
                found[name] += 1
    return found


def line_counts(src: Path) -> dict[str, int]:
    """Lines of the broker's modules and of the neighbours the split concerns."""
    base = src / PACKAGE
    paths = [base / "broker.py", *sorted((base / "broker").glob("*.py"))]
    paths += [base / (name.replace(".", "/") + ".py") for name in NEIGHBOURS]
    return {
        str(path.relative_to(src)): len(path.read_text().splitlines())
        for path in paths
        if path.exists()
    }


def main(argv: list[str] | None = None) -> int:
    """Print the figures for the package under ``SRC_DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", nargs="?", default=str(Path(__file__).parent.parent / "src"))
    parser.add_argument("--runtime-only", action="store_true", help="skip TYPE_CHECKING imports")
    args = parser.parse_args(argv)
    src = Path(args.src).resolve()
    sys.path.insert(0, str(src))
    graph = grimp.build_graph(
        PACKAGE, exclude_type_checking_imports=args.runtime_only, cache_dir=None
    )
    modules = sorted(graph.modules)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in modules}
    arrows = sum(len(targets) for targets in edges.values())
    room_edges: dict[str, set[str]] = {}
    for importer, targets in edges.items():
        for imported in targets:
            if room(importer) != room(imported):
                room_edges.setdefault(room(importer), set()).add(room(imported))
    room_arrows = sum(len(targets) for targets in room_edges.values())
    cycles = strongly_connected(modules, edges)
    room_cycles = strongly_connected({room(m) for m in modules}, room_edges)

    print(f"source: {src}{' (runtime imports only)' if args.runtime_only else ''}")
    print(f"modules: {len(modules)}")
    print(f"module import arrows: {arrows}")
    print(f"package-level arrows: {room_arrows}")
    print(f"import cycles (modules): {len(cycles)}")
    for group in cycles:
        print("  " + " <-> ".join(group))
    print(f"import cycles (packages): {len(room_cycles)}")
    for group in room_cycles:
        print("  " + " <-> ".join(group))
    reached = reach_throughs(src, broker_components(src))
    print(f"reach-throughs from api/ into broker internals: {sum(reached.values())}")
    for name, count in reached.most_common():
        print(f"  broker.{name}: {count}")
    internal = sorted(
        f"{importer} -> {imported}"
        for importer, targets in edges.items()
        if importer.startswith(API + ".") or importer == API
        for imported in targets
        if imported.startswith(f"{PACKAGE}.broker.")
    )
    print(f"imports of broker submodules from api/: {len(internal)}")
    for line in internal:
        print(f"  {line}")
    counts = line_counts(src)
    print(f"lines of the broker and neighbours: {sum(counts.values())}")
    for name, count in counts.items():
        print(f"  {name}: {count}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
