"""Node selection and ordering (no Spark)."""

from __future__ import annotations

import pytest

from sqlinfer.build.dag import Graph
from sqlinfer.errors import SqlinferError

# raw -> clean -> scored -> report; raw -> stats; other stands alone
GRAPH = Graph({"raw": [], "clean": ["raw"], "scored": ["clean"], "report": ["scored"], "stats": ["raw"],
               "other": []})


def test_order_puts_parents_first() -> None:
    order = GRAPH.order()
    assert sorted(order) == sorted(GRAPH.parents)
    for node, parents in GRAPH.parents.items():
        assert all(order.index(p) < order.index(node) for p in parents)


@pytest.mark.parametrize(("select", "exclude", "expected"), [
    ((), (), ["other", "raw", "clean", "scored", "report", "stats"]),
    (("scored",), (), ["scored"]),
    (("+scored",), (), ["raw", "clean", "scored"]),
    (("clean+",), (), ["clean", "scored", "report"]),
    (("+clean+",), (), ["raw", "clean", "scored", "report"]),
    (("stats", "other"), (), ["other", "stats"]),
    (("stats other",), (), ["other", "stats"]),
    (("raw+",), ("scored+",), ["raw", "clean", "stats"]),
    ((), ("raw+",), ["other"]),
])
def test_selection(select: tuple[str, ...], exclude: tuple[str, ...], expected: list[str]) -> None:
    assert GRAPH.select(select, exclude) == [n for n in GRAPH.order() if n in expected]
    assert set(GRAPH.select(select, exclude)) == set(expected)


def test_unknown_selector_names_the_nodes() -> None:
    with pytest.raises(SqlinferError) as info:
        GRAPH.select(["+nope"])
    assert info.value.code == "dag.unknown_node"
    assert info.value.message == "no node named 'nope' (nodes: clean, other, raw, report, scored, stats)"


def test_cycle_is_named() -> None:
    with pytest.raises(SqlinferError) as info:
        Graph({"a": ["c"], "b": ["a"], "c": ["b"], "d": []}).order()
    assert info.value.code == "dag.cycle"
    assert info.value.message == "dependency cycle: a -> c -> b -> a"
