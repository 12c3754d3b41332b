"""Export a network to ONNX, checked by ONNX and, on request, against onnxruntime's output.

Needs the ``onnx`` and ``onnxruntime`` packages (the ``helios-hpo[helios-full]`` extra).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["export_to_onnx"]


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"ONNX export needs the {module} package: pip install 'helios-hpo[helios-full]'"
        ) from exc


def export_to_onnx(
    net: nn.Module,
    net_args: torch.Tensor,
    out_path: Path,
    validate_output: bool = False,
    save_on_validation_fail: bool = True,
    rtol: float = 1e-3,
    atol: float = 1e-5,
    **kwargs: Any,
) -> None:
    """Write ``net`` traced on ``net_args`` (one tensor in, one out) to ``out_path``.

    ONNX's checker always checks the file. With ``validate_output`` onnxruntime runs it on
    ``net_args`` and its output must match the network's within ``rtol``/``atol``, else
    ``AssertionError`` (the file is removed unless ``save_on_validation_fail``).
    ``kwargs`` go to ``torch.onnx.export``; without onnxscript installed, torch's
    TorchScript exporter is used (``dynamo=False``).
    """
    onnx = _require("onnx")
    net.eval()
    with torch.no_grad():
        expected = net(net_args)
    if "dynamo" not in kwargs and importlib.util.find_spec("onnxscript") is None:
        kwargs["dynamo"] = False
    torch.onnx.export(net, (net_args,), str(out_path), **kwargs)
    onnx.checker.check_model(str(out_path))
    if not validate_output:
        return
    runtime = _require("onnxruntime")
    session = runtime.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: net_args.detach().cpu().numpy()}
    (got, *_) = session.run(None, feed)
    try:
        np.testing.assert_allclose(expected.detach().cpu().numpy(), got, rtol=rtol, atol=atol)
    except AssertionError:
        if not save_on_validation_fail:
            Path(out_path).unlink(missing_ok=True)
        raise
