"""Hostile and odd images in a real build (issue 11, items 4 and 5): the build succeeds, bad rows
are NULL and `<function>_checked` says why, the good rows of the same batch are unaffected,
the Python workers' memory stays bounded, and `max_bad_rows` / `on_error: fail` stop a node
without touching its table. Real files on disk, read by Spark's binaryFile source."""

from __future__ import annotations

import io
import json
import struct
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from helpers import bomb_png, jpeg_bytes, own_database, write_project
from PIL import Image

from sqlinfer import Project

pytestmark = [pytest.mark.spark, pytest.mark.reliability]

MODELS = """\
models:
  - name: tiny
    flavor: torchvision
    architecture: squeezenet1_1
    kwargs: {{num_classes: 5}}
    weights: random
    preprocess: {{resize: 72, crop: 64}}
    output: logits
    batch_size: 8
    on_error: {on_error}
"""
PROJECT = "name: hostile\nsources:\n  images: {format: binaryFile, path: images, glob: '*'}\n"
# Every image in one task and so in the same batches as the bad rows.
SCORED = """{{{{ config(materialized='table'{limits}) }}}}
SELECT path, tiny_predict_checked(content) AS checked
FROM (SELECT /*+ COALESCE(1) */ * FROM {{{{ source('images') }}}})
"""


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def huge_screen_gif() -> bytes:
    """A GIF whose logical screen is 65535 x 65535 pixels, around a 1 x 1 image."""
    small = encoded(Image.new("P", (1, 1)), "GIF")
    return small[:6] + struct.pack("<HH", 65535, 65535) + small[10:]


PHOTO = Image.open(io.BytesIO(jpeg_bytes(3, 120, 90))).convert("RGB")


def exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return encoded(PHOTO, "JPEG", exif=exif.tobytes())


def palette_with_transparency() -> bytes:
    image = PHOTO.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    image.info["transparency"] = 0
    return encoded(image, "PNG")


def animated_gif() -> bytes:
    frames = [PHOTO.convert("P"), PHOTO.rotate(90).convert("P")]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


BAD = {
    "truncated.jpg": (jpeg_bytes(1, 120, 90)[:700], "undecodable"),
    "text.jpg": (b"this is a text file, not a picture\n" * 20, "undecodable"),
    "bomb.png": (bomb_png(), "too_large"),
    "huge_screen.gif": (huge_screen_gif(), "too_large"),
}
GOOD = {
    "one_pixel.png": encoded(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
    "gray16.png": encoded(Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20), "PNG"),
    "cmyk.jpg": encoded(PHOTO.convert("CMYK"), "JPEG"),
    "animated.gif": animated_gif(),
    "exif_rotated.jpg": exif_rotated(),
    "palette_alpha.png": palette_with_transparency(),
    **{f"photo_{i}.jpg": jpeg_bytes(10 + i, 90 + 5 * i, 70 + 3 * i) for i in range(4)},
}


def make_project(root: Path, corpus: dict[str, bytes], on_error: str = "null", limits: str = "") -> Project:
    write_project(root, MODELS.format(on_error=on_error), PROJECT)
    (root / "images").mkdir()
    for name, data in corpus.items():
        (root / "images" / name).write_bytes(data)
    (root / "sql").mkdir()
    (root / "sql" / "scored.sql").write_text(SCORED.format(limits=limits))
    own_database(root)
    return Project.load(root)


class WorkerPeak:
    """The largest RSS of any Python process under this one (Spark's Python workers), sampled."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            for child in psutil.Process().children(recursive=True):
                try:
                    if "python" in child.name().lower():
                        self.peak_mb = max(self.peak_mb, child.memory_info().rss / 2**20)
                except psutil.Error:  # exited meanwhile
                    pass
            time.sleep(0.05)

    def __enter__(self) -> WorkerPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def scored(spark, project: Project) -> dict[str, tuple]:
    table = f"`{project.config.database}`.`scored`"
    return {row["path"].rsplit("/", 1)[1]: (row["checked"]["result"], row["checked"]["error"])
            for row in spark.table(table).collect()}


def test_hostile_images_are_null_with_their_reason_and_spare_the_good_rows(spark, tmp_path: Path) -> None:
    good_only = make_project(tmp_path / "good", GOOD)
    with WorkerPeak() as good_memory:
        assert good_only.build(spark).success
    expected = scored(spark, good_only)

    hostile = make_project(tmp_path / "hostile", {**GOOD, **{name: data for name, (data, _) in BAD.items()}})
    lines: list[str] = []
    with WorkerPeak() as hostile_memory:
        run = hostile.build(spark, report=lines.append)
    assert run.success, [n.message for n in run.nodes]
    got = scored(spark, hostile)
    assert len(got) == len(GOOD) + len(BAD)
    for name, (_, kind) in BAD.items():
        result, error = got[name]
        assert result is None and error is not None and error["kind"] == kind, (name, error)
        assert error["message"]
    assert "image file is truncated" in got["truncated.jpg"][1]["message"]
    # Spark's binaryFile source skips 0-byte files; empty and NULL values are the `empty` kind.
    (hostile.root / "images" / "empty.jpg").write_bytes(b"")
    assert "empty.jpg" not in {row.path.rsplit("/", 1)[1] for row in spark.table("images").collect()}
    empty = spark.sql("SELECT tiny_predict_checked(X'').error AS a, tiny_predict_checked(NULL).error AS b").first()
    assert empty["a"]["kind"] == empty["b"]["kind"] == "empty"
    assert empty["a"]["message"] == "no image bytes"
    assert got["huge_screen.gif"][1]["message"].startswith("Image size (4294836225 pixels) exceeds limit")
    for name in GOOD:
        result, error = got[name]
        assert error is None, (name, error)
        # The same logits as when the batch held no bad row.
        np.testing.assert_allclose(result, expected[name][0], atol=1e-5, err_msg=name)
    node = run.nodes[0]
    assert (node.rows, node.rows_scored, node.rows_bad) == (14, 14, 4)
    assert any("14 rows, 14 scored, 4 bad" in line for line in lines), lines
    results = json.loads((hostile.target / "run_results.json").read_text())
    assert results["nodes"][0]["rows_bad"] == 4
    # The bombs were refused before any pixel was decoded: no more memory than the good images took.
    print(f"worker peak RSS: good images {good_memory.peak_mb:.0f} MB, with hostile ones "
          f"{hostile_memory.peak_mb:.0f} MB")
    assert good_memory.peak_mb > 0
    assert hostile_memory.peak_mb < good_memory.peak_mb + 150


def test_exif_orientation_is_not_applied_like_torchvision(spark, tmp_path: Path) -> None:
    # torchvision's PIL pipeline (ImageFolder's loader, Resize, CenterCrop) ignores EXIF
    # orientation, and so does nvJPEG's decode_jpeg by default: the same pixels as the file stores.
    plain = encoded(PHOTO, "JPEG")
    project = make_project(tmp_path / "exif", {"rotated.jpg": exif_rotated(), "plain.jpg": plain,
                                               "turned.jpg": encoded(PHOTO.transpose(Image.Transpose.ROTATE_270),
                                                                     "JPEG")})
    assert project.build(spark).success
    got = scored(spark, project)
    np.testing.assert_allclose(got["rotated.jpg"][0], got["plain.jpg"][0], atol=1e-6)
    assert not np.allclose(got["rotated.jpg"][0], got["turned.jpg"][0], atol=1e-3)


def test_max_bad_rows_fails_the_node_and_keeps_the_table(spark, tmp_path: Path) -> None:
    corpus = {**GOOD, **{name: data for name, (data, _) in BAD.items()}}
    project = make_project(tmp_path / "limits", {k: v for k, v in corpus.items() if k not in BAD}, limits="")
    assert project.build(spark).success
    before = scored(spark, project)
    assert len(before) == len(GOOD)
    for name, (data, _) in BAD.items():  # new, bad files arrive
        (project.root / "images" / name).write_bytes(data)
    sql = project.root / "sql" / "scored.sql"
    for limits, reason in [(", max_bad_rows=3", "max_bad_rows: 3"),
                           (", max_bad_fraction=0.25", "max_bad_fraction: 0.25")]:
        sql.write_text(SCORED.format(limits=limits))
        lines: list[str] = []
        run = Project.load(project.root).build(spark, report=lines.append)
        node = run.nodes[0]
        assert node.status == "error" and node.rows_bad == 4
        assert node.message == (f"{sql}: 4 of 14 rows scored were bad input ({reason}); the table is "
                                "unchanged. The `<function>_checked` functions say why each row failed "
                                "[build.too_many_bad_rows]")
        assert scored(spark, project) == before  # the previous rows, untouched
        assert not spark.catalog.tableExists(f"{project.config.database}.scored__sqlinfer_new")
    sql.write_text(SCORED.format(limits=", max_bad_rows=4, max_bad_fraction=0.29"))
    assert Project.load(project.root).build(spark).success  # within the limits: fine
    assert len(scored(spark, project)) == 14


def test_on_error_fail_names_the_row_and_keeps_the_table(spark, tmp_path: Path) -> None:
    project = make_project(tmp_path / "strict", GOOD, on_error="fail")
    (project.root / "sql" / "scored.sql").write_text(
        "{{ config(materialized='table') }}\nSELECT path, tiny_predict(content) AS logits\n"
        "FROM (SELECT /*+ COALESCE(1) */ * FROM {{ source('images') }} ORDER BY path)\n")
    assert project.build(spark).success
    table = f"`{project.config.database}`.`scored`"
    before = sorted(tuple(r) for r in spark.table(table).collect())
    (project.root / "images" / "truncated.jpg").write_bytes(BAD["truncated.jpg"][0])
    run = Project.load(project.root).build(spark)
    node = run.nodes[0]
    assert node.status == "error"
    assert "model 'tiny' (tiny_predict): bad input at row" in node.message
    assert "undecodable: OSError: image file is truncated" in node.message
    assert "[udf.failed]" in node.message
    assert sorted(tuple(r) for r in spark.table(table).collect()) == before
