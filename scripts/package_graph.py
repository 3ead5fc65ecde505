"""Print the import graph between the top-level parts of gemini_backend (packages and modules),
and the cycles in it: `python scripts/package_graph.py [--contract]`. Counts every import,
TYPE_CHECKING ones included (a cycle hidden behind TYPE_CHECKING is still a cycle for a reader).

`--contract`: without the imports the "No package cycles" contract (pyproject.toml) sets
aside: routers' use of auth's sign-in dependency, any import of a domain's ORM models, the two
type-only imports of the signed-in user, the worker's entry point building the root, and the
routers (with their dependencies, the fast path, the mock) reading the root's objects."""

from __future__ import annotations

import sys
from collections import defaultdict

import grimp

PACKAGE = "gemini_backend"


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def set_aside(module: str, imported: str) -> bool:
    """An import the contract sets aside (keep in step with pyproject.toml)."""
    return (
        (module.endswith(".router") and imported == f"{PACKAGE}.auth.dependencies")
        or imported.endswith(".models")
        or (module in TYPE_ONLY and imported == f"{PACKAGE}.auth.principals")
        or (module == f"{PACKAGE}.worker.main" and imported == f"{PACKAGE}.services")
        or (imported == f"{PACKAGE}.services" and reads_the_root(module))
    )


def reads_the_root(module: str) -> bool:
    """Routers, their dependencies, the chat fast path, the Stripe mock: above the root."""
    return module.endswith((".router", ".dependencies")) or module in {
        f"{PACKAGE}.chat.fastpath",
        f"{PACKAGE}.billing.mock",
    }


TYPE_ONLY = {f"{PACKAGE}.users.schemas", f"{PACKAGE}.users.service"}


def package_graph(*, contract: bool) -> dict[str, set[str]]:
    graph = grimp.build_graph(PACKAGE)
    edges: dict[str, set[str]] = defaultdict(set)
    for module in graph.modules:
        if module == PACKAGE:
            continue
        for imported in graph.find_modules_directly_imported_by(module):
            if imported == PACKAGE or part(imported) == part(module):
                continue
            if contract and set_aside(module, imported):
                continue
            edges[part(module)].add(part(imported))
    return edges


def cycles(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """The pairs of parts that reach each other (each pair once)."""

    def reach(start: str) -> set[str]:
        seen: set[str] = set()
        todo = [start]
        while todo:
            for nxt in edges.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reachable = {name: reach(name) for name in edges}
    return sorted(
        (a, b) for a in reachable for b in reachable[a] if a < b and a in reachable.get(b, ())
    )


def main() -> int:
    edges = package_graph(contract="--contract" in sys.argv[1:])
    for name in sorted(edges):
        print(f"{name} -> {', '.join(sorted(edges[name]))}")
    found = cycles(edges)
    print("cycles:", ", ".join(f"{a}<->{b}" for a, b in found) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
