"""torchvision imported without torch._dynamo (sqlinfer/models/torchvision_import.py): the same
networks, the deferred function still answers, and a torchvision that wants more falls back to a
plain import. Each case runs in a fresh interpreter: an import can be watched only once."""

from __future__ import annotations

import json
import subprocess
import sys

NETWORK = """
import torch
torch.manual_seed(0)
net = torchvision.models.get_model("squeezenet1_1", weights=None).eval()
with torch.inference_mode():
    out = net(torch.linspace(-1, 1, 3 * 64 * 64).reshape(1, 3, 64, 64))
report["logits"] = [round(float(x), 6) for x in out[0, :5]]
report["roi_align"] = torchvision.ops.roi_align(
    torch.arange(64.0).reshape(1, 1, 8, 8), torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]]), output_size=2).flatten().tolist()
"""


def run(setup: str, body: str = NETWORK) -> dict:
    code = f"""
import json, sys
report = {{}}
{setup}
report["dynamo_after_import"] = "torch._dynamo" in sys.modules
{body}
report["dynamo_after_use"] = "torch._dynamo" in sys.modules
print(json.dumps(report))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


DEFERRED = "from sqlinfer.models.torchvision_import import import_torchvision\ntorchvision = import_torchvision()"


def test_torchvision_without_dynamo_builds_and_runs_the_same_networks() -> None:
    plain = run("import torchvision")
    deferred = run(DEFERRED)
    assert plain["dynamo_after_import"] is True  # what the deferral is for: torchvision's own import loads it
    assert deferred["dynamo_after_import"] is False
    assert deferred["dynamo_after_use"] is False  # a classifier's forward and roi_align on the CPU do not need it
    assert deferred["logits"] == plain["logits"]
    assert deferred["roi_align"] == plain["roi_align"] == [9.0, 11.0, 25.0, 27.0]


def test_the_deferred_function_imports_the_real_one_when_called() -> None:
    body = """
import torch._dynamo.utils as real
module = sys.modules["torchvision.ops.roi_align"]  # the package exports a function of the same name
report["same_answer"] = module.is_compile_supported("cpu") == real.is_compile_supported("cpu")
report["stand_in_gone"] = sys.modules["torch._dynamo.utils"] is real and hasattr(real, "counters")
"""
    report = run(DEFERRED, body)
    assert report["dynamo_after_import"] is False
    assert report["same_answer"] is True and report["stand_in_gone"] is True
    assert report["dynamo_after_use"] is True


def test_a_torchvision_that_wants_more_than_the_stand_in_has_is_imported_as_usual() -> None:
    """The stand-in without the name torchvision takes (as a release that needs another would find it)."""
    setup = ("import sqlinfer.models.torchvision_import as deferral\n"
             "deferral.DEFERRED_NAMES = ()\n"
             "torchvision = deferral.import_torchvision()")
    report = run(setup)
    assert report["dynamo_after_import"] is True  # the plain import ran
    assert report["roi_align"] == [9.0, 11.0, 25.0, 27.0]
    assert len(report["logits"]) == 5
