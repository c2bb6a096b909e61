"""The graph of nodes: dependency order, cycles, and `--select` / `--exclude`.

Selection syntax (dbt's): ``name`` (the node), ``+name`` (with its ancestors), ``name+`` (with its
descendants), ``+name+`` (both); ``state:modified`` stands for the nodes that changed since an
earlier build's manifest (:mod:`sqlinfer.build.state`) and takes the same ``+``; several selectors
are a union; ``--exclude`` removes nodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlinfer.errors import TemplateError, closest

STATE_MODIFIED = "state:modified"


class CycleError(TemplateError):
    def __init__(self, cycle: list[str]) -> None:
        super().__init__(f"dependency cycle: {' -> '.join(cycle)}", code="dag.cycle")
        self.cycle = cycle


class Graph:
    """Nodes and their parents (the nodes they ref())."""

    def __init__(self, parents: Mapping[str, Iterable[str]]) -> None:
        self.parents = {node: sorted(set(deps)) for node, deps in parents.items()}
        self.children: dict[str, list[str]] = {node: [] for node in self.parents}
        for node, deps in self.parents.items():
            for dep in deps:
                self.children[dep].append(node)

    def order(self) -> list[str]:
        """Nodes with every node after its parents; alphabetical among equals (stable output)."""
        state: dict[str, int] = {}  # 1: on the stack, 2: done
        ordered: list[str] = []

        def visit(node: str, stack: list[str]) -> None:
            if state.get(node) == 2:
                return
            if state.get(node) == 1:
                cycle = stack[stack.index(node):] + [node]
                raise CycleError(cycle)
            state[node] = 1
            for parent in self.parents[node]:
                visit(parent, stack + [node])
            state[node] = 2
            ordered.append(node)

        for node in sorted(self.parents):
            visit(node, [])
        return ordered

    def ancestors(self, node: str) -> set[str]:
        return self._walk(node, self.parents)

    def descendants(self, node: str) -> set[str]:
        return self._walk(node, self.children)

    @staticmethod
    def _walk(node: str, edges: Mapping[str, list[str]]) -> set[str]:
        seen: set[str] = set()
        todo = list(edges[node])
        while todo:
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                todo.extend(edges[current])
        return seen

    def select(self, selectors: Iterable[str] = (), exclude: Iterable[str] = (),
               modified: set[str] | None = None) -> list[str]:
        """The selected nodes in dependency order (all nodes when no selector is given);
        ``modified``: the nodes ``state:modified`` names (None: no earlier state was given)."""
        selectors = [s for item in selectors for s in item.split()]
        chosen = set(self.parents) if not selectors else set()
        for selector in selectors:
            chosen |= self._expand(selector, modified)
        for selector in (s for item in exclude for s in item.split()):
            chosen -= self._expand(selector, modified)
        return [node for node in self.order() if node in chosen]

    def _expand(self, selector: str, modified: set[str] | None) -> set[str]:
        name = selector.strip("+")
        if name == STATE_MODIFIED:
            if modified is None:
                raise TemplateError(f"--select {selector} needs --state PATH: the target folder (or its "
                                    "manifest.json) of the build to compare with", code="dag.no_state")
            roots = modified & set(self.parents)
        elif name not in self.parents:
            known = ", ".join(sorted(self.parents)) or "none"
            raise TemplateError(f"no node named {name!r}{closest(name, self.parents)} (nodes: {known})",
                                code="dag.unknown_node")
        else:
            roots = {name}
        nodes = set(roots)
        for root in roots:
            if selector.startswith("+"):
                nodes |= self.ancestors(root)
            if selector.endswith("+"):
                nodes |= self.descendants(root)
        return nodes
