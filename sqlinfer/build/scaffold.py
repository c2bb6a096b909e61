"""`sqlinfer init`: a new project that builds out of the box, offline.

It declares a torchvision MobileNetV3-Small with a random init (made on the driver, so no
download is needed) over a few generated PNG images; swap in real weights and data to use it.
Its prediction node is incremental, the pattern for model scoring: rows are scored once.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from sqlinfer.errors import CommandError
from sqlinfer.yamlfile import IDENTIFIER

FILES = {
    "sqlinfer_project.yml": """\
        name: {name}
        models: models.yml
        sql: sql
        sources:
          images:
            format: binaryFile
            path: data/images
            glob: "*.png"
        vars:
          min_score: 0.0
        """,
    "models.yml": """\
        models:
          - name: classifier
            flavor: torchvision
            architecture: mobilenet_v3_small
            # `random` is a seeded random init, so this project builds offline. For real predictions
            # use a torchvision weights name (IMAGENET1K_V1) or a .safetensors file in this folder.
            weights: random
            output: topk
            k: 3
        """,
    "sql/predictions.sql": """\
        {{{{ config(materialized='incremental', unique_key='path') }}}}
        -- Incremental: each build scores only the images whose path is not in the table yet, so a
        -- large folder is scored once and new files cost only themselves.
        SELECT path, classifier_predict(content) AS top3, current_timestamp() AS scored_at
        FROM {{{{ source('images') }}}}
        """,
    "sql/best_labels.sql": """\
        {{{{ config(materialized='view') }}}}
        SELECT path, top3[0].label AS label, top3[0].score AS score
        FROM {{{{ ref('predictions') }}}}
        WHERE top3[0].score >= {{{{ var('min_score') }}}}
        """,
    ".gitignore": "target/\n",
}


def create_project(name: str, root: Path) -> Path:
    if not IDENTIFIER.match(name):
        raise CommandError(f"project name {name!r} must be an identifier (letters, digits, _)", code="cli.bad_name")
    if root.exists() and any(root.iterdir()):
        raise CommandError(f"{root} exists and is not empty", code="cli.exists", path=root)
    for relative, text in FILES.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).format(name=name))
    _sample_images(root / "data" / "images")
    return root


def _sample_images(folder: Path) -> None:
    """Eight small PNG images (colour gradients), enough to see the pipeline run."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:96, 0:128]
    for index in range(8):
        pixels = np.stack([(x * (index + 1)) % 256, (y * (8 - index)) % 256, ((x + y) * index) % 256], axis=-1)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"sample_{index}.png")
