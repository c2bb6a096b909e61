"""Model declarations (`models.yml`) as frozen, validated objects, each with the file and line
it was declared at.

This module only describes; it imports neither torch nor Spark. Turning a declaration into
weights and a network is :mod:`sqlinfer.models.resolve`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from sqlinfer.errors import ConfigError, closest
from sqlinfer.yamlfile import IDENTIFIER, LineDict, LineList, Strict, load_yaml, validation_error

# Spark SQL types of each output kind. `label` and each `topk` element share one struct.
LABEL_STRUCT = "struct<label:string,index:int,score:float>"
RETURN_TYPES: dict[str, str] = {
    "logits": "array<float>",
    "probabilities": "array<float>",
    "embedding": "array<float>",
    "label": LABEL_STRUCT,
    "topk": f"array<{LABEL_STRUCT}>",
}
INPUT_TYPES: dict[str, str] = {"image": "binary", "tensor": "array<float>", "text": "string"}
OutputKind = Literal["logits", "probabilities", "label", "topk", "embedding"]


Size = int | tuple[int, int]


class Preprocess(Strict):
    """How an image becomes the network's input tensor (torchvision's classic eval pipeline)."""

    resize: Size | None = Field(None, description="int: shorter side; [h, w]: exact size")
    crop: Size | None = Field(None, description="center crop to this size")
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    color_mode: Literal["RGB", "L"] = "RGB"
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    # PIL's own default bomb limit: larger images are refused (the row is an error row).
    max_pixels: int = Field(89_478_485, gt=0)
    # auto: JPEGs decoded on the GPU of a CUDA worker (sqlinfer.worker.gpu_decode), on the CPU
    # elsewhere; cpu: always PIL (torchvision-exact pixels); gpu: the batched path everywhere.
    decoder: Literal["auto", "cpu", "gpu"] = "auto"

    @property
    def output_size(self) -> tuple[int, int] | None:
        """The (h, w) every image ends at, or None when it depends on the image."""
        if self.crop is not None:
            return (self.crop, self.crop) if isinstance(self.crop, int) else self.crop
        if isinstance(self.resize, tuple):
            return self.resize
        return None

    @model_validator(mode="after")
    def _check(self) -> Preprocess:
        channels = 3 if self.color_mode == "RGB" else 1
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and len(value) not in (1, channels):
                raise ValueError(f"{name} needs 1 or {channels} values for color_mode {self.color_mode}")
        if self.std is not None and any(s == 0 for s in self.std):
            raise ValueError("std values must not be 0")
        return self


class ModelDecl(Strict):
    """One entry of `models.yml`."""

    name: str
    description: str | None = None  # shown by `sqlinfer docs`; no part of the model
    flavor: str = Field(description="a module of sqlinfer.models.flavors: torchvision, torchscript, python, onnx, "
                                    "transformers, mlflow")
    architecture: str | None = None
    class_path: str | None = Field(None, alias="class", description="module:Class (python flavor)")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = None
    # flavor mlflow: models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/PATH or a model folder.
    uri: str | None = None
    # Read a model whose loading runs code it carries (a pickle, a pyfunc's loader): off unless declared.
    trust_code: bool = False
    input: Literal["image", "tensor", "text"] = "image"
    shape: tuple[int, ...] | None = None
    # Text input: tokens kept per row (longer texts are cut); default: the model folder's own.
    max_length: int | None = Field(None, gt=0)
    # output: embedding of a text model: L2-normalized or not; default: as the model folder says.
    normalize: bool | None = None
    preprocess: Preprocess | None = None
    # One kind, or several read off the same forward pass (a struct with a field per kind).
    output: OutputKind | tuple[OutputKind, ...] = "label"
    k: int = Field(5, gt=0)
    labels: str | tuple[str, ...] | None = None
    # The weights and labels files must be inside the project folder (after following links)
    # unless the declaration says otherwise, so a copied project cannot make sqlinfer read and
    # broadcast any file of the machine it runs on.
    allow_outside_project: bool = False
    embedding_layer: str | None = None
    batch_size: int | None = Field(None, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # On a GPU: fp32 is true fp32, tf32 lets cuDNN/cuBLAS use TF32; on CPU tf32 and fp16 run as fp32.
    precision: Literal["fp32", "tf32", "fp16", "bf16"] = "fp32"
    udf: str | None = None
    on_error: Literal["null", "fail"] = "null"

    @field_validator("on_error", mode="before")
    @classmethod
    def _yaml_null(cls, value: Any) -> Any:
        # `on_error: null` is YAML's null; it means the policy called "null".
        return "null" if value is None else value

    @field_validator("output")
    @classmethod
    def _outputs(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        if isinstance(value, str):
            return value
        if not value:
            raise ValueError("give at least one output kind")
        repeated = sorted({kind for kind in value if value.count(kind) > 1})
        if repeated:
            raise ValueError(f"{', '.join(repeated)} listed twice")
        if "embedding" in value and len(value) > 1:
            # An embedding comes from another layer (or another head) than the class scores.
            raise ValueError("embedding cannot be combined with other outputs: declare a second model "
                             "with the same weights for it")
        return value

    @field_validator("flavor")
    @classmethod
    def _known_flavor(cls, value: str) -> str:
        from sqlinfer.models import flavors

        if value not in flavors.names():
            raise ValueError(f"{value!r} is not a flavor{closest(value, flavors.names())} "
                             f"(flavors: {', '.join(flavors.names())})")
        return value

    @field_validator("name", "udf")
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        if value is not None and not IDENTIFIER.match(value):
            raise ValueError(f"{value!r} is not a valid SQL function name (letters, digits, _)")
        return value

    @model_validator(mode="after")
    def _check(self) -> ModelDecl:
        from sqlinfer.models import flavors

        # What each flavor needs of a declaration is the flavor's to say (no torch imported here).
        flavors.get(self.flavor).validate(self)
        if self.uri is not None and self.flavor != "mlflow":
            raise ValueError("`uri` names a model of flavor mlflow; other flavors read `weights`")
        if self.input == "tensor" and not self.shape:
            raise ValueError("input tensor needs `shape` (e.g. [1, 28, 28])")
        if self.input == "tensor" and self.preprocess is not None:
            raise ValueError("`preprocess` applies to input image only")
        if self.input == "text" and self.preprocess is not None:
            raise ValueError("`preprocess` applies to input image only (text is tokenized by the model's tokenizer)")
        if self.input != "text" and (self.max_length is not None or self.normalize is not None):
            raise ValueError("`max_length` and `normalize` apply to input text only")
        return self

    @property
    def udf_name(self) -> str:
        return self.udf or f"{self.name}_predict"

    @property
    def output_kinds(self) -> tuple[str, ...]:
        """The declared output kinds, in order (one for ``output: label``)."""
        return (self.output,) if isinstance(self.output, str) else self.output

    @property
    def return_type(self) -> str:
        """The Spark SQL type the model's function returns: the output kind's, or for a list of
        kinds a struct with a field per kind (``struct<label: ..., probabilities: ...>``)."""
        if isinstance(self.output, str):
            return RETURN_TYPES[self.output]
        return f"struct<{','.join(f'{kind}:{RETURN_TYPES[kind]}' for kind in self.output)}>"

    @property
    def input_type(self) -> str:
        """The Spark SQL type of the model's function argument."""
        return INPUT_TYPES[self.input]


class ModelsFile(Strict):
    models: tuple[ModelDecl, ...]


@dataclass(frozen=True)
class Located:
    """A declaration plus where it came from, so later checks (weights, architecture) can still
    point at the right line."""

    decl: ModelDecl
    path: Path
    raw: LineDict

    def error(self, message: str, *, code: str, key: str | None = None) -> ConfigError:
        line = self.raw.line_of(key) if key else self.raw.line
        return ConfigError(f"model {self.decl.name!r}: {message}", code=code, path=self.path, line=line)


def load_models_file(path: Path) -> tuple[Located, ...]:
    """Read and validate `models.yml`: unknown keys, bad values and duplicate UDF names are errors."""
    data = load_yaml(path)
    if not isinstance(data, LineDict) or not isinstance(data.get("models"), LineList):
        raise ConfigError("models file must be a mapping with a `models:` list",
                            code="config.invalid_value", path=path, line=1)
    try:
        parsed = ModelsFile.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, data, path, ModelsFile) from None
    located = tuple(Located(decl, path, raw) for decl, raw in zip(parsed.models, data["models"], strict=True))
    check_unique_names(located)
    return located


def check_unique_names(models: tuple[Located, ...]) -> None:
    seen: dict[str, Located] = {}
    for item in models:
        for key in {item.decl.name, item.decl.udf_name}:
            if key in seen:
                other = seen[key]
                raise item.error(f"duplicate model or UDF name {key!r} (also at {other.path}:{other.raw.line})",
                                 code="config.duplicate_name")
            seen[key] = item
