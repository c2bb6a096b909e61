"""Networks constructed without the random initialization their weights replace
(sqlinfer/models/skip_init.py): the same network as one built the usual way, initializers
back in place afterwards, and the cases where skipping would leave values no state_dict carries."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save
from torch import nn
from torch.nn.modules import activation

from sqlinfer.models.declaration import ModelDecl
from sqlinfer.models.flavors.base import Weights
from sqlinfer.models.flavors.torchvision import TorchVision
from sqlinfer.models.skip_init import constructed_for_weights
from sqlinfer.models.torchvision_import import import_torchvision


class Sevens(nn.Module):
    """A parameter its constructor sets to 7, then zeroes through torch.nn.init."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((3,), 7.0))
        nn.init.zeros_(self.weight)


class Scaled(Sevens):
    """The same with a non-persistent buffer, which no state_dict carries, set through torch.nn.init."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.empty(3), persistent=False)
        nn.init.constant_(self.scale, 2.0)


class AttentionSevens(nn.Module):
    """The same through the name MultiheadAttention's module imported the initializer under."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((3,), 7.0))
        activation.constant_(self.weight, 0.0)


class Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        raise RuntimeError("constructor failed")


def test_the_initializers_are_skipped_while_constructing_and_restored_after() -> None:
    module = constructed_for_weights(Sevens)
    assert module.weight.tolist() == [7.0, 7.0, 7.0]  # nn.init.zeros_ did nothing
    assert Sevens().weight.tolist() == [0.0, 0.0, 0.0]  # and does its work again


def test_initializers_imported_by_name_are_skipped_too() -> None:
    assert constructed_for_weights(AttentionSevens).weight.tolist() == [7.0, 7.0, 7.0]
    assert activation.constant_ is nn.init.constant_
    assert AttentionSevens().weight.tolist() == [0.0, 0.0, 0.0]


def test_a_failing_constructor_restores_the_initializers() -> None:
    with pytest.raises(RuntimeError, match="constructor failed"):
        constructed_for_weights(Broken)
    assert Sevens().weight.tolist() == [0.0, 0.0, 0.0]


def test_a_module_with_non_persistent_buffers_is_initialized_as_usual() -> None:
    module = constructed_for_weights(Scaled)
    assert module.scale.tolist() == [2.0, 2.0, 2.0]
    assert module.weight.tolist() == [0.0, 0.0, 0.0]


@pytest.fixture(scope="module")
def resnet() -> tuple[ModelDecl, Weights, nn.Module]:
    torch.manual_seed(0)
    reference = import_torchvision().models.get_model("resnet18", weights=None, num_classes=10)
    with torch.no_grad():  # running statistics that are not the identity, as in a trained network
        for module in reference.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    state = {name: tensor.contiguous() for name, tensor in reference.state_dict().items()}
    decl = ModelDecl.model_validate({"name": "r", "flavor": "torchvision", "architecture": "resnet18",
                                     "weights": "weights/r.safetensors", "kwargs": {"num_classes": 10}})
    return decl, Weights("safetensors", save(state)), reference.eval()


def test_a_torchvision_network_built_without_initialization_is_the_declared_one(resnet) -> None:
    decl, weights, reference = resnet
    built = TorchVision().build(decl, weights).eval()
    assert built.state_dict().keys() == reference.state_dict().keys()
    for name, tensor in built.state_dict().items():
        assert torch.equal(tensor, reference.state_dict()[name]), name
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(built(images), reference(images))


def test_weights_that_lack_a_tensor_fail_the_build(resnet) -> None:
    decl, weights, reference = resnet
    state = {name: t.contiguous() for name, t in reference.state_dict().items() if name != "fc.bias"}
    # The strict load names what no tensor of the weights replaced: nothing keeps skipped values.
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "fc.bias"'):
        TorchVision().build(decl, Weights("safetensors", save(state)))
