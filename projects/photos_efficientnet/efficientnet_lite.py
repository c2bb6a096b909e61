"""EfficientNet-Lite0 as a class the python flavor can build without arguments.

The network's code is the pip package efficientnet-lite-pytorch (installed on every worker); this
file lives in the project, so sqlinfer ships it to the workers (addPyFile).
"""

from __future__ import annotations

from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite_pytorch.utils import get_model_params


class EfficientNetLite0(EfficientNet):
    """EfficientNet-Lite0 for 224x224 RGB images, 1,000 ImageNet classes."""

    def __init__(self) -> None:
        blocks_args, global_params = get_model_params("efficientnet-lite0", {})
        super().__init__(blocks_args, global_params)
