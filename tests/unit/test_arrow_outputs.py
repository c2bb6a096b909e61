"""Network outputs as Arrow arrays, for every output kind, with a bad row (NULL) between good ones:
values, nulls, label names and top-k order."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from sqlinfer.worker.arrow_outputs import LABEL_TYPE, output_array, softmax, to_arrow

# Two good rows (the network's outputs) among three: row 1 failed to decode.
OUTPUTS = np.array([[1.0, 3.0, 2.0], [0.5, -1.0, 4.0]], dtype=np.float32)
OK = np.array([True, False, True])
LABELS = ("cat", "dog", "eel")


def probs(row: list[float]) -> list[float]:
    exp = np.exp(np.array(row, dtype=np.float64) - max(row))
    return list(exp / exp.sum())


P0, P2 = probs([1.0, 3.0, 2.0]), probs([0.5, -1.0, 4.0])


def entry(labels: tuple[str, ...] | None, index: int, score: float) -> dict:
    return {"label": labels[index] if labels else str(index), "index": index, "score": pytest.approx(score, rel=1e-6)}


@pytest.mark.parametrize("kind", ["logits", "embedding"])
def test_raw_outputs_are_float_lists(kind: str) -> None:
    result = to_arrow(kind, OUTPUTS, OK, LABELS, k=2)
    assert result.type == pa.list_(pa.float32())
    assert result.to_pylist() == [[1.0, 3.0, 2.0], None, [0.5, -1.0, 4.0]]
    assert result.null_count == 1


def test_probabilities_are_the_softmax_of_each_row() -> None:
    result = to_arrow("probabilities", OUTPUTS, OK, LABELS, k=2)
    assert result.type == pa.list_(pa.float32())
    rows = result.to_pylist()
    assert rows[1] is None
    assert rows[0] == pytest.approx(P0, rel=1e-6)
    assert rows[2] == pytest.approx(P2, rel=1e-6)


def test_label_is_the_best_class_with_its_name_and_probability() -> None:
    result = to_arrow("label", OUTPUTS, OK, LABELS, k=2)
    assert result.type == LABEL_TYPE
    assert result.to_pylist() == [entry(LABELS, 1, P0[1]), None, entry(LABELS, 2, P2[2])]


def test_label_without_label_names_is_the_index() -> None:
    result = to_arrow("label", OUTPUTS, OK, None, k=2)
    assert result.to_pylist() == [entry(None, 1, P0[1]), None, entry(None, 2, P2[2])]


def test_topk_is_in_descending_order() -> None:
    result = to_arrow("topk", OUTPUTS, OK, LABELS, k=2)
    assert result.type == pa.list_(LABEL_TYPE)
    assert result.to_pylist() == [
        [entry(LABELS, 1, P0[1]), entry(LABELS, 2, P0[2])],
        None,
        [entry(LABELS, 2, P2[2]), entry(LABELS, 0, P2[0])],
    ]


def test_topk_ties_keep_the_lower_index_first() -> None:
    result = to_arrow("topk", np.array([[2.0, 1.0, 2.0]], np.float32), np.array([True]), LABELS, k=3)
    assert [item["index"] for item in result.to_pylist()[0]] == [0, 2, 1]


def test_topk_larger_than_the_classes_gives_every_class() -> None:
    result = to_arrow("topk", OUTPUTS, OK, LABELS, k=10)
    assert [[item["label"] for item in row] if row else None for row in result.to_pylist()] == [
        ["dog", "eel", "cat"], None, ["eel", "cat", "dog"]]


@pytest.mark.parametrize("kind", ["logits", "embedding", "probabilities", "label", "topk"])
def test_a_batch_of_only_bad_rows_is_all_null(kind: str) -> None:
    result = to_arrow(kind, np.zeros((0, 3), np.float32), np.array([False, False]), LABELS, k=2)
    assert result.to_pylist() == [None, None]


@pytest.mark.parametrize("kind", ["logits", "probabilities", "label", "topk"])
def test_first_and_last_rows_bad(kind: str) -> None:
    ok = np.array([False, True, True, False])
    result = to_arrow(kind, OUTPUTS, ok, LABELS, k=2)
    middle = to_arrow(kind, OUTPUTS, np.array([True, True]), LABELS, k=2).to_pylist()
    assert result.to_pylist() == [None, *middle, None]


def test_embedding_of_any_width() -> None:
    values = np.arange(8, dtype=np.float32).reshape(2, 4)
    result = to_arrow("embedding", values, np.array([True, False, True]), None, k=1)
    assert result.to_pylist() == [[0.0, 1.0, 2.0, 3.0], None, [4.0, 5.0, 6.0, 7.0]]


def test_softmax_is_stable_for_large_logits() -> None:
    result = softmax(np.array([[1000.0, 1000.0], [0.0, -1000.0]]))
    np.testing.assert_allclose(result, [[0.5, 0.5], [1.0, 0.0]])


def test_several_outputs_are_a_struct_of_each_kind_in_the_listed_order() -> None:
    result = output_array(("probabilities", "label", "topk"), OUTPUTS, OK, LABELS, k=2)
    assert result.type == pa.struct([("probabilities", pa.list_(pa.float32())), ("label", LABEL_TYPE),
                                     ("topk", pa.list_(LABEL_TYPE))])
    assert result.to_pylist()[1] is None and result.null_count == 1  # the bad row as a whole
    for kind in ("probabilities", "label", "topk"):
        assert result.field(kind).to_pylist() == to_arrow(kind, OUTPUTS, OK, LABELS, k=2).to_pylist()
    assert output_array("label", OUTPUTS, OK, LABELS, k=2).type == LABEL_TYPE  # one kind: no struct
