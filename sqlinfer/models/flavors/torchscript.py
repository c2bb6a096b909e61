"""Flavor `torchscript`: a module saved with ``torch.jit.save`` (scripted or traced).

A TorchScript file is a program, not data: ``torch.jit.load`` compiles the TorchScript code in the
archive and runs its classes' ``__setstate__`` while loading, and that code may call operators that
write or read any file (``torch.save``, ``torch.from_file``) or reach other processes and machines
(``torch.classes.dist_c10d``, ``ops.c10d``, ``ops.profiler``, ...). torch has no safe mode for
it, so :func:`check_archive` reads the archive as text before anything loads it and refuses code
that names any of those: only tensor computation (the ``aten``, ``prim``, ``quantized`` and
``torchvision`` operators) is let through. The driver checks; workers load only what it checked.
"""

from __future__ import annotations

import ast
import io
import re
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from sqlinfer.models.declaration import Located, ModelDecl
from sqlinfer.models.flavors.base import Flavor, Weights, weights_path

if TYPE_CHECKING:
    import torch

# Operators that reach outside the network: aten::save writes any file, aten::from_file reads
# (or maps) one, debugprims::load_tensor reads one. They are refused whatever they are reached
# through: `torch.save`, `ops.aten.save`, `getattr(torch, "save")`.
FILE_OPERATORS = frozenset({"save", "from_file", "load_tensor"})
# Operator namespaces a network computes with (`ops.<namespace>.<op>`). The others talk to other
# processes or devices (c10d, _c10d_functional, symm_mem, cuda), to the profiler, or are tests.
OPERATOR_NAMESPACES = frozenset({"aten", "prim", "prims", "quantized", "_quantized", "torchvision"})
# Namespaces of `torch.classes` (C++ objects with their own code, run on load by __setstate__):
# quantized packed weights only; dist_c10d has FileStore and TCPStore, for one.
CLASS_NAMESPACES = frozenset({"quantized"})
# Names that are only useful to reach the above through getattr(): refused as string constants.
INDIRECT_NAMES = FILE_OPERATORS | {"ops", "classes"}
# Largest archive member read for the check (the code, the pickles); tensor data is not read.
MAX_MEMBER_BYTES = 64 << 20

_CLASS_IN_TEXT = re.compile(rb"torch\.classes\.(\w+)")
# No word boundary after the name: in a pickle the next opcode follows it directly. No operator's
# name merely starts with one of these.
_FILE_OPERATOR_IN_TEXT = re.compile(rb"::(" + b"|".join(sorted(n.encode() for n in FILE_OPERATORS)) + rb")")


class ArchiveError(Exception):
    """Why an archive is refused. ``unsafe``: its code reaches outside the network (else it is
    not a TorchScript archive at all)."""

    def __init__(self, message: str, *, unsafe: bool) -> None:
        super().__init__(message)
        self.unsafe = unsafe


def check_archive(data: bytes) -> None:
    """Refuse (:class:`ArchiveError`) an archive that is not a TorchScript zip, or whose code or
    pickles name an operator or class outside the allowed ones. Nothing of it is run."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ArchiveError(f"not a TorchScript archive (the zip torch.jit.save writes): {exc}",
                           unsafe=False) from None
    names = [info.filename for info in infos]
    if not any(name.endswith("/data.pkl") for name in names):
        raise ArchiveError("not a TorchScript archive (the zip torch.jit.save writes): no data.pkl",
                           unsafe=False)
    if len(set(names)) != len(names):
        # torch's zip reader and Python's might pick different copies: check one, load the other.
        raise ArchiveError("the archive holds two members of the same name", unsafe=True)
    for info in infos:
        if _is_tensor_data(info.filename):
            continue
        text = _read(archive, info)
        if info.filename.endswith(".py"):
            _check_code(info.filename, text)
        _check_text(info.filename, text)


def _is_tensor_data(name: str) -> bool:
    """Tensor storages (`archive/data/0`) are raw numbers, never read as code or pickles."""
    parts = name.split("/")
    return len(parts) >= 2 and parts[-2] == "data" and parts[-1].isdigit()


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    if info.file_size > MAX_MEMBER_BYTES:
        raise ArchiveError(f"{info.filename} is too large to check ({info.file_size} bytes)", unsafe=True)
    try:
        with archive.open(info) as member:
            text = member.read(MAX_MEMBER_BYTES + 1)  # a member may inflate past its declared size
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
        raise ArchiveError(f"cannot read {info.filename}: {exc}", unsafe=False) from None
    if len(text) > MAX_MEMBER_BYTES:
        raise ArchiveError(f"{info.filename} is too large to check", unsafe=True)
    return text


def _check_text(member: str, text: bytes) -> None:
    """What the pickles can name too: a torch.classes type (built by its C++ __setstate__ on load)
    and an operator by its schema name (a mobile archive's bytecode)."""
    for found in _CLASS_IN_TEXT.finditer(text):
        if found.group(1).decode() not in CLASS_NAMESPACES:
            raise ArchiveError(f"{member} uses torch.classes.{found.group(1).decode()}", unsafe=True)
    found_operator = _FILE_OPERATOR_IN_TEXT.search(text)
    if found_operator:
        raise ArchiveError(f"{member} names the operator ::{found_operator.group(1).decode()}", unsafe=True)


def _check_code(member: str, text: bytes) -> None:
    """The TorchScript code (Python syntax) of one archive member, read as a syntax tree."""
    try:
        tree = ast.parse(text.decode("utf-8"), member)
    except (UnicodeDecodeError, SyntaxError, ValueError) as exc:
        raise ArchiveError(f"{member}: its code cannot be checked ({exc.__class__.__name__})", unsafe=True) from None
    nodes = list(ast.walk(tree))
    inner = {id(node.value) for node in nodes if isinstance(node, ast.Attribute)}
    for node in nodes:
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in INDIRECT_NAMES:
            raise ArchiveError(f"{member}:{node.lineno}: uses the name {node.value!r}", unsafe=True)
        if isinstance(node, (ast.Attribute, ast.Name)) and id(node) not in inner:
            refused = _refused(_dotted(node))
            if refused:
                raise ArchiveError(f"{member}:{node.lineno}: uses {refused}", unsafe=True)


def _dotted(node: ast.expr) -> list[str]:
    """``a.b.c`` as ["a", "b", "c"]; a chain on a call's or subscript's result starts with "?"."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    parts.append(node.id if isinstance(node, ast.Name) else "?")
    return parts[::-1]


def _refused(parts: list[str]) -> str | None:
    """The refused part of a dotted name, or None when it only computes."""
    for index, part in enumerate(parts):
        following = parts[index + 1] if index + 1 < len(parts) else None
        if part in FILE_OPERATORS:
            return ".".join(parts[:index + 1])
        at_top = index == 0 or parts[index - 1] == "torch"
        if part == "ops" and at_top and following not in OPERATOR_NAMESPACES:
            return ".".join(parts[:index + 2])
        if part == "classes" and index > 0 and parts[index - 1] == "torch" and following not in CLASS_NAMESPACES:
            return ".".join(parts[:index + 2])
    return None


class TorchScript(Flavor):
    def validate(self, decl: ModelDecl) -> None:
        if not decl.weights:
            raise ValueError("flavor torchscript needs `weights` (a file)")
        if decl.output == "embedding" and decl.embedding_layer:
            raise ValueError("embedding_layer is not supported for torchscript (hooks need eager modules)")

    def load_weights(self, item: Located, root: Path) -> Weights:
        path = weights_path(item, root)
        weights = Weights.read("torchscript", path)
        data = weights.data
        try:
            check_archive(data)
        except ArchiveError as exc:
            if exc.unsafe:
                raise item.error(f"{path.name} was not loaded: its TorchScript can reach files, processes or "
                                 f"other machines ({exc})", code="config.unsafe_torchscript", key="weights") from None
            raise item.error(f"cannot read {path.name}: {exc}", code="config.bad_weights", key="weights") from None
        return weights

    def file_weights(self, item: Located, root: Path) -> Weights | None:
        return self.load_weights(item, root)

    def build(self, decl: ModelDecl, weights: Weights) -> torch.nn.Module:
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated: not the user's to act on
            module: torch.nn.Module = torch.jit.load(io.BytesIO(weights.data), map_location="cpu")
        return module


FLAVOR = TorchScript()
