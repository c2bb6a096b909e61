"""Flavor `transformers`: a text model from a local folder, as Hugging Face `transformers` or
`sentence-transformers` save them (the `text` extra: ``pip install 'sqlinfer[text]'``). Nothing is
downloaded: the folder (project-relative, or ``package:MODULE/PATH`` inside an installed package)
holds everything.

A folder needs ``config.json``, the weights (``model.safetensors``, or ``pytorch_model.bin`` read
with ``weights_only=True``) and a fast tokenizer (``tokenizer.json``). A sentence-transformers
folder (``modules.json``: Transformer, Pooling, Normalize) also says how token vectors become one
embedding and the longest input it was trained on; sqlinfer reads those settings and runs the
pooling itself, so workers need `transformers` and `tokenizers` but not sentence-transformers.

- ``output: embedding``: the encoder's token vectors pooled (the folder's pooling, else the mean
  over the real tokens), L2-normalized when the folder has a Normalize module or the declaration
  says ``normalize: true``.
- ``output: label | probabilities | topk | logits``: a sequence-classification model
  (``AutoModelForSequenceClassification``); class names from the config's ``id2label``.

The driver packs what the workers need into one safetensors blob, broadcast like any weights:
the tensors, plus the config, the tokenizer and the resolved settings (head, pooling,
normalization, ``max_length``) in its metadata. The worker tokenizes each batch itself
(:mod:`sqlinfer.worker.text`), padded to the batch's longest row.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlinfer.models.declaration import Located, ModelDecl
from sqlinfer.models.flavors.base import Flavor, Weights, model_folder, state_dict_weights

if TYPE_CHECKING:
    import torch

EXTRA = "pip install 'sqlinfer[text]'"
POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max"}
KNOWN_MODULES = {"Transformer", "Pooling", "Normalize"}
# A model's own limit when the folder names none (BERT-style position embeddings).
FALLBACK_MAX_LENGTH = 512


PREFIX = "sqlinfer."  # of the settings' keys in the blob's metadata


def packed_settings(weights: Weights) -> dict[str, str]:
    """The settings :meth:`Transformers.load_weights` packed into the blob's metadata (config,
    tokenizer, head, pooling, normalize, max_length), read from its header without loading a tensor."""
    size = int.from_bytes(weights.data[:8], "little")
    metadata: dict[str, str] = json.loads(weights.data[8:8 + size]).get("__metadata__", {})
    return {key.removeprefix(PREFIX): value for key, value in metadata.items() if key.startswith(PREFIX)}


def _library(item: Located) -> None:
    try:
        import tokenizers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        raise item.error(f"flavor transformers needs the transformers and tokenizers packages: {EXTRA}",
                         code="config.missing_extra", key="flavor") from None


def _json(item: Located, path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise item.error(f"cannot read {path.name} of the model folder: {exc}", code="config.bad_weights",
                         key="weights") from None


def _sentence_transformers(item: Located, folder: Path) -> tuple[Path, str | None, bool, int | None]:
    """(the transformer's folder, pooling, normalized, max_seq_length) from ``modules.json``."""
    transformer, pooling, normalized, max_length = folder, None, False, None
    for module in _json(item, folder / "modules.json"):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind not in KNOWN_MODULES:
            raise item.error(f"modules.json: module {kind!r} is not supported (sqlinfer runs Transformer, Pooling "
                             "and Normalize)", code="config.bad_weights", key="weights")
        where = folder / module.get("path", "")
        if kind == "Transformer":
            transformer = where
            if (where / "sentence_bert_config.json").is_file():
                max_length = _json(item, where / "sentence_bert_config.json").get("max_seq_length")
        elif kind == "Pooling":
            settings = _json(item, where / "config.json")
            chosen = [mode for key, mode in POOLING_MODES.items() if settings.get(key)]
            others = [key for key, on in settings.items() if key.startswith("pooling_mode") and on
                      and key not in POOLING_MODES]
            if len(chosen) != 1 or others:
                raise item.error(f"{module.get('path')}/config.json: pooling {chosen + others} is not supported "
                                 "(one of mean, cls, max)", code="config.bad_weights", key="weights")
            pooling = chosen[0]
        else:
            normalized = True
    return transformer, pooling, normalized, max_length


def _state(item: Located, folder: Path) -> dict[str, Any]:
    from safetensors.torch import load

    if (folder / "model.safetensors").is_file():
        try:
            return load((folder / "model.safetensors").read_bytes())
        except Exception as exc:  # any parse failure is a bad weights file
            raise item.error(f"cannot read model.safetensors: {exc}", code="config.bad_weights",
                             key="weights") from None
    if (folder / "pytorch_model.bin").is_file():  # a pickle: read as every .pt/.pth is, weights_only=True
        return load(state_dict_weights(item, folder / "pytorch_model.bin").data)
    raise item.error(f"no model.safetensors or pytorch_model.bin in {folder}", code="config.missing_weights",
                     key="weights")


class Transformers(Flavor):
    def validate(self, decl: ModelDecl) -> None:
        if not decl.weights:
            raise ValueError("flavor transformers needs `weights` (the model's folder)")
        if decl.input != "text":
            raise ValueError("flavor transformers takes `input: text`")
        if decl.embedding_layer:
            raise ValueError("embedding_layer is not supported for transformers: the embedding is the pooled "
                             "token vectors")
        if decl.normalize is not None and decl.output != "embedding":
            raise ValueError("`normalize` applies to output embedding only")

    def check(self, item: Located) -> None:
        _library(item)

    def load_weights(self, item: Located, root: Path) -> Weights:
        from safetensors.torch import save

        decl = item.decl
        folder = model_folder(item, root)
        transformer, pooling, normalized, max_length = folder, None, False, None
        if (folder / "modules.json").is_file():
            transformer, pooling, normalized, max_length = _sentence_transformers(item, folder)
        for name in ("config.json", "tokenizer.json"):
            if not (transformer / name).is_file():
                hint = " (a fast tokenizer: save it with tokenizer.save_pretrained)" if name == "tokenizer.json" else ""
                raise item.error(f"no {name} in {transformer}{hint}", code="config.missing_weights", key="weights")
        config = _json(item, transformer / "config.json")
        if "model_type" not in config:
            raise item.error("config.json has no model_type", code="config.bad_weights", key="weights")
        head = "embedding" if decl.output == "embedding" else "classification"
        settings = {
            "config": json.dumps(config),
            "tokenizer": (transformer / "tokenizer.json").read_text(encoding="utf-8"),
            "head": head,
            "pooling": pooling or "mean",
            "normalize": json.dumps(normalized if decl.normalize is None else decl.normalize),
            "max_length": str(decl.max_length or max_length
                              or min(config.get("max_position_embeddings", FALLBACK_MAX_LENGTH), FALLBACK_MAX_LENGTH)),
        }
        state = {name: tensor.contiguous() for name, tensor in _state(item, transformer).items()}
        return Weights("safetensors", save(state, metadata={PREFIX + k: v for k, v in settings.items()}))

    def file_weights(self, item: Located, root: Path) -> Weights | None:
        return None  # a folder packed into one blob, not a file as it is on disk

    def labels_in(self, weights: Weights) -> tuple[str, ...] | None:
        meta = packed_settings(weights)
        names = json.loads(meta["config"]).get("id2label") if meta["head"] != "embedding" else None
        return tuple(names[key] for key in sorted(names, key=int)) if names else None

    def describe(self, item: Located, weights: Weights) -> str:
        meta = packed_settings(weights)
        kind = json.loads(meta["config"])["model_type"]
        if meta["head"] == "embedding":
            how = f"{meta['pooling']} pooling{', normalized' if json.loads(meta['normalize']) else ''}"
        else:
            how = "sequence classification"
        return f"{item.decl.weights}: {kind}, {how}, {meta['max_length']} tokens"

    def build(self, decl: ModelDecl, weights: Weights) -> torch.nn.Module:
        from safetensors.torch import load

        return text_module(packed_settings(weights), load(weights.data))


def text_module(meta: dict[str, str], state: dict[str, Any]) -> torch.nn.Module:
    """The network: ids and attention masks (N x 2 x L int64) -> pooled embeddings or class logits."""
    import torch
    import transformers

    config_dict = json.loads(meta["config"])
    config = transformers.AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
    embedding = meta["head"] == "embedding"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' notes about newly initialized heads: replaced below
        backbone = (transformers.AutoModel if embedding else transformers.AutoModelForSequenceClassification)\
            .from_config(config)
    prefix = f"{backbone.base_model_prefix}."
    if embedding and any(name.startswith(prefix) for name in state):
        # The encoder of a model saved with a head: its own tensors, without the prefix.
        state = {name.removeprefix(prefix): tensor for name, tensor in state.items() if name.startswith(prefix)}
    missing, _ = backbone.load_state_dict(state, strict=False)
    # Buffers a model recomputes (position ids) may be absent from a file; parameters may not.
    lacking = [name for name in missing if name in dict(backbone.named_parameters())]
    if lacking:
        raise ValueError(f"the weights lack {len(lacking)} tensors of the network, e.g. {lacking[0]}")

    class TextModel(torch.nn.Module):
        hookable = False  # the embedding is this module's output, not a hooked layer's input

        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone
            self.pooling = meta["pooling"]
            self.normalize = json.loads(meta["normalize"])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            ids, mask = x[:, 0], x[:, 1]
            if not embedding:
                logits: torch.Tensor = self.backbone(input_ids=ids, attention_mask=mask).logits
                return logits
            tokens = self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).to(tokens.dtype)
            if self.pooling == "cls":
                pooled = tokens[:, 0]
            elif self.pooling == "max":
                pooled = tokens.masked_fill(weights == 0, torch.finfo(tokens.dtype).min).amax(dim=1)
            else:  # mean over the real tokens, as sentence-transformers computes it
                pooled = (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1) if self.normalize else pooled

    return TextModel()


FLAVOR = Transformers()
