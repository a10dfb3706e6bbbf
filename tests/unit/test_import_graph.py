"""docs/architecture.md: no import cycles in the product packages, and `agent`'s layers import
downwards only.

Every import counts, also those under `if TYPE_CHECKING:` and inside functions: a cycle hidden
from the interpreter is still a cycle for whoever has to understand or move the code.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agent", "ocpp_bridge", "uftp", "forecaster")

# agent's layers, lowest first: a module imports only from its own layer or lower ones.
LAYERS = (
    "runtime",  # configuration, service, logs, clock, systemd, state directory
    "storage",  # the SQLite file, migrations, queries
    "site",  # the site as the chargers report it, the charger registry, the forecast
    "trading",  # the UFTP conversations and their records
    "fleet",  # fleet mode, site side: the bus protocol, publishing to and commands from the centre
    "control",  # dispatch: what the chargers are made to do
    "interfaces",  # status page, API, metrics, MQTT: read the agent through AgentView
    "app",  # the composition root
    "central",  # the central aggregator of a fleet: its own process and composition root
    "demo",  # the simulated site and DSO around the normal service
    "cli",  # entry points
    "__main__",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    module = ".".join([*base, node.module] if node.module else base)
                else:
                    module = node.module or ""
                # `from a import b`: an edge to the module a.b where b is one, else to a.
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    targets.add(sub if sub in known else module)
        # Importing a.b.c also initialises a and a.b; only the named module is an edge here.
        graph[name] = {t for t in targets if t in known and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
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
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "agent" or len(parts) < 2:
        return None
    return LAYERS.index(parts[1])


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_product_packages_have_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_every_agent_module_sits_in_a_known_layer() -> None:
    unknown = [m for m in modules() if m.startswith("agent.") and m.split(".")[1] not in LAYERS]
    assert unknown == [], "add the new package to LAYERS (and to docs/architecture.md)"


def test_agent_layers_import_downwards_only() -> None:
    upward = []
    for module, targets in sorted(import_graph().items()):
        own = layer(module)
        if own is None:
            continue
        for target in sorted(targets):
            other = layer(target)
            if other is not None and other > own:
                upward.append(f"{module} imports {target}")
    assert upward == []
