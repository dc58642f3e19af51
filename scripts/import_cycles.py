"""Fail on any import cycle among the project's modules, imports inside functions included.

    .venv/bin/python scripts/import_cycles.py [ROOT]

The layers and the other contracts are import-linter's (`lint-imports`, pyproject.toml); this
looks for a cycle anywhere, between modules of different apps too, which no layer contract
lists. It reads the code (grimp, import-linter's graph) and runs none of it. ROOT (default: this
repository) is the directory that holds the packages.
"""

import itertools
import sys
from pathlib import Path

import grimp

PACKAGES = ("accounts", "loops", "loops_project", "runs")


def find_cycles(root: Path | str) -> list[list[tuple[str, str, int]]]:
    """One cycle through each group of modules that import one another (a strongly connected
    component of more than one module), as its imports: (importer, imported, line)."""
    sys.path.insert(0, str(root))
    try:
        graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    finally:
        sys.path.remove(str(root))
    imports = {m: graph.find_modules_directly_imported_by(m) for m in sorted(graph.modules)}
    cycles = []
    for component in _components(imports):
        first = min(component)
        following = min(m for m in imports[first] if m in component)
        # Every chain from `following` back to `first` stays inside the component.
        chain = (first, *graph.find_shortest_chain(importer=following, imported=first))
        cycles.append(
            [
                (a, b, graph.get_import_details(importer=a, imported=b)[0]["line_number"])
                for a, b in itertools.pairwise(chain)
            ]
        )
    return cycles


def _components(imports: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components with more than one module, without recursion."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    for start in imports:
        if start in index:
            continue
        work = [(start, iter(sorted(imports[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            module, following = work[-1]
            for other in following:
                if other not in index:
                    index[other] = low[other] = len(index)
                    stack.append(other)
                    on_stack.add(other)
                    work.append((other, iter(sorted(imports.get(other, ())))))
                    break
                if other in on_stack:
                    low[module] = min(low[module], index[other])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[module])
                if low[module] == index[module]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == module:
                            break
                    if len(component) > 1:
                        found.append(component)
    return found


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
    cycles = find_cycles(root.resolve())
    for cycle in cycles:
        print("Import cycle:", file=sys.stderr)
        for importer, imported, line in cycle:
            print(f"  {importer} (line {line}) imports {imported}", file=sys.stderr)
    if cycles:
        return 1
    print(f"No import cycles among the modules of {', '.join(PACKAGES)}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
