"""Test data made on the spot: real JPEG/PNG bytes, random-init weights files, small projects."""

from __future__ import annotations

import io
import itertools
import os
import re
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from PIL import Image

SQLINFER = str(Path(sys.executable).with_name("sqlinfer"))  # the installed command
SERVE_START_TIMEOUT_S = 240

REPO = Path(__file__).resolve().parents[1]


def jpeg_bytes(seed: int, width: int = 96, height: int = 72, quality: int = 90) -> bytes:
    """A photo-like JPEG: smooth gradients plus noise, so decoding does real work."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * rng.uniform(0.5, 3)) % 256, (y * rng.uniform(0.5, 3)) % 256,
                     ((x + y) * rng.uniform(0.5, 2)) % 256], axis=-1)
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def png_bytes(seed: int, width: int = 40, height: int = 30) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_images(folder: Path, count: int, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(start, start + count):
        path = folder / f"img_{index:05d}.jpg"
        path.write_bytes(jpeg_bytes(index, 64 + index % 64, 48 + index % 40))
        paths.append(path)
    return paths


def bomb_png(side: int = 20_000) -> bytes:
    """A decompression bomb: a tiny PNG file that declares side x side pixels (all black)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def save_random_resnet18(path: Path, num_classes: int = 1000, seed: int = 0) -> None:
    import torch
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=num_classes)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def write_project(root: Path, models_yml: str, project_yml: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "models.yml").write_text(textwrap.dedent(models_yml))
    (root / "sqlinfer_project.yml").write_text(textwrap.dedent(project_yml or "name: test_project\n"))
    return root


def digits_declaration(name: str, weights: str = "weights/digits_cnn.safetensors", **keys: str) -> str:
    """One more declaration of the digits example's CNN for its models.yml (block style, ``keys``
    added as written), e.g. a second model with other weights or another output."""
    extra = "".join(f"    {key}: {value}\n" for key, value in keys.items())
    return (f"  - name: {name}\n    flavor: python\n    class: digits_net:DigitsCNN\n    weights: {weights}\n"
            f"    preprocess: {{color_mode: L, resize: [8, 8], mean: [0.5], std: [0.5]}}\n{extra}")


def own_nodes(root: Path) -> Path:
    """Remove a copied example's SQL nodes and data tests (sql/, tests/): the test writes its own
    nodes into the returned, empty sql/ folder."""
    import shutil

    for folder in ("sql", "tests"):
        shutil.rmtree(root / folder, ignore_errors=True)
    (root / "sql").mkdir()
    return root / "sql"


_databases = itertools.count()


def own_database(root: Path) -> str:
    """Give a copied project its own database in the shared test metastore."""
    database = f"t{next(_databases)}_{root.parent.name[-12:].lower()}".replace("-", "_")
    project_file = root / "sqlinfer_project.yml"
    project_file.write_text(project_file.read_text() + f"database: {database}\n")
    return database


def env_without_modules(folder: Path, names: tuple[str, ...]) -> dict[str, str]:
    """The environment of a child Python, and of every Python it starts, in which importing any of
    ``names`` (top-level packages) fails as if they were not installed: a ``sitecustomize.py`` in
    ``folder``, put first on PYTHONPATH, inserts a meta-path finder that refuses them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(textwrap.dedent(f"""\
        import importlib.abc
        import sys


        class NotInstalled(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in {tuple(names)!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None


        sys.meta_path.insert(0, NotInstalled())
        """))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}


def private_spark_home(folder: Path) -> Path:
    """A SPARK_HOME of links to pyspark's, but for ``work/`` (in ``folder``): local-cluster's worker
    writes each application's folder under ``$SPARK_HOME/work`` (it takes no other place), which
    would otherwise be inside the installed pyspark; standalone daemons write their logs there."""
    from pyspark.find_spark_home import _find_spark_home

    home = folder / "spark_home"
    home.mkdir()
    for entry in Path(_find_spark_home()).iterdir():
        if entry.name != "work":
            (home / entry.name).symlink_to(entry)
    return home


# -- `sqlinfer serve` in a subprocess ----------------------------------------------------------------

@dataclass
class Served:
    """A `sqlinfer serve` process in its own process group, with what it printed."""

    proc: subprocess.Popen[str]
    stderr_path: Path
    lines: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)
    reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return next(line.split("JDBC URL:", 1)[1].strip() for line in self.lines if "JDBC URL:" in line)

    @property
    def port(self) -> int:
        return int(re.match(r"jdbc:hive2://[^/]+:(\d+)/", self.url).group(1))  # type: ignore[union-attr]

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """Cleanup after a failure: the whole group (sqlinfer, its JVM, Python workers)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)


def start_serve(project: Path, log_dir: Path, *args: str) -> Served:
    """Start `sqlinfer serve` on a free loopback port (``--port 0``); do not wait for it."""
    stderr_path = log_dir / f"serve-{project.name}.stderr"
    proc = subprocess.Popen([SQLINFER, "serve", str(project), "--port", "0", "--conf", "spark.ui.enabled=false",
                             *args], stdout=subprocess.PIPE, stderr=stderr_path.open("w"), text=True,
                            start_new_session=True)
    served = Served(proc, stderr_path)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            served.lines.append(line.rstrip("\n"))
            if line.startswith("Stop with"):
                served.ready.set()

    served.reader = threading.Thread(target=read, daemon=True)
    served.reader.start()
    return served


def wait_ready(served: Served, timeout: float = SERVE_START_TIMEOUT_S) -> Served:
    """Wait until the server says clients can connect; fail with what it printed if it does not."""
    deadline = time.monotonic() + timeout
    while not served.ready.wait(0.5):
        if served.proc.poll() is not None or time.monotonic() > deadline:
            served.kill()
            pytest.fail(f"sqlinfer serve did not start (exit {served.proc.returncode}):\n"
                        + "\n".join(served.lines) + "\n" + served.stderr()[-4000:])
    return served


def digits_network(project: Path) -> Any:
    """The digits example's CNN (its own `digits_net.py`) with its weights, in eval mode: plain PyTorch."""
    from safetensors.torch import load_file

    sys.path.insert(0, str(project))
    try:
        from digits_net import DigitsCNN
    finally:
        sys.path.remove(str(project))
    network = DigitsCNN()
    network.load_state_dict(load_file(str(project / "weights" / "digits_cnn.safetensors")))
    return network.eval()


def export_digits_onnx(project: Path, target: Path) -> None:
    """The digits example's network and weights, exported the way its users would."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        torch.onnx.export(digits_network(project), (torch.zeros(1, 1, 8, 8),), str(target), dynamo=False,
                          input_names=["pixels"], output_names=["logits"],
                          dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}})


def docs_catalogue() -> ModuleType:
    """tests/unit/test_docs_examples.py, the catalogue of every code example in the docs."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_examples_catalogue",
                                                  REPO / "tests" / "unit" / "test_docs_examples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def docs_example(file: str, key: str) -> str:
    """The text of the one code example of ``file`` (e.g. docs/models.md) that contains ``key``."""
    module = sys.modules.get("docs_examples_catalogue") or docs_catalogue()
    return str(module.example(file, key).text)


def same_predictions(actual: dict[str, tuple] | None, expected: dict[str, tuple], tolerance: float = 1e-5) -> bool:
    """Predictions keyed by row (the score last): the same rows, everything but the score equal, the
    score within float noise. A row's score can move in the 7th digit with the batch it was scored
    in (on some CPUs oneDNN's convolution kernels differ by batch size), and a retried task or a
    build of fewer rows puts rows in other batches."""
    if actual is None or actual.keys() != expected.keys():
        return False
    return all(actual[key][:-1] == row[:-1] and abs(actual[key][-1] - row[-1]) <= tolerance
               for key, row in expected.items())


def log_digits_to_mlflow(project: Path, tracking_uri: str, seed: int | None = None, *,
                         alias: str | None = None) -> tuple[str, Any]:
    """The digits CNN logged by the example's own script (scripts/log_to_mlflow.py) to the registry
    at ``tracking_uri`` (a real sqlite store) as a new version of ``digits``: the trained weights,
    or with ``seed`` a random-init network. Returns the version and the network logged."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("log_to_mlflow", project / "scripts" / "log_to_mlflow.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    network = script.trained()
    if seed is not None:
        torch.manual_seed(seed)
        network = type(network)().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's notices (pip requirements, deprecations)
        return script.log(network, tracking_uri, alias), network
