"""Image helpers of helios-ml: loading, tensor <-> array, channel order, YCbCr.

Loading and showing images need OpenCV or Pillow (``cv2``, ``PIL``), imported only by
the functions that use them.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

__all__ = [
    "bgr2ycbcr",
    "convert_to_hwc",
    "load_image",
    "load_image_pil",
    "rgb2ycbcr_torch",
    "show_tensor",
    "show_tensors",
    "tensor_to_numpy",
    "to_y_channel",
]

# ITU-R BT.601 for 8-bit images: Y, Cb, Cr rows over R, G, B columns (0-255 scale).
_YCBCR = np.array(
    [
        [65.481, 128.553, 24.966],
        [-37.797, -74.203, 112.0],
        [112.0, -93.786, -18.214],
    ]
)
_YCBCR_OFFSET = np.array([16.0, 128.0, 128.0])


def _cv2() -> Any:
    try:
        return importlib.import_module("cv2")
    except ImportError as exc:
        raise ImportError(
            "this needs OpenCV: pip install opencv-python-headless (or load images with "
            "load_image_pil, which needs Pillow)"
        ) from exc


def load_image(path: Path, flags: int | None = None, as_rgb: bool = True) -> npt.NDArray[Any]:
    """The image at ``path`` read by OpenCV (``flags``: ``cv2.IMREAD_COLOR`` by default),
    in RGB(A) order unless ``as_rgb`` is false.

    Raises:
        RuntimeError: an image with other than 1, 3 or 4 channels, to convert.
    """
    cv2 = _cv2()
    img = cv2.imread(str(path), flags=cv2.IMREAD_COLOR if flags is None else flags)
    if not as_rgb or img.ndim == 2:
        return img  # type: ignore[no-any-return]
    channels = img.shape[2]
    if channels == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)  # type: ignore[no-any-return]
    if channels == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)  # type: ignore[no-any-return]
    raise RuntimeError(f"expected an image of 3 or 4 channels, not {channels}")


def load_image_pil(path: Path, out_fmt: str = "", as_numpy: bool = True) -> Any:
    """The image at ``path`` read by Pillow, converted to ``out_fmt`` (RGB by default);
    an array, or the Pillow image."""
    from PIL import Image

    with Path(path).open("rb") as file:
        image = Image.open(file).convert(out_fmt or "RGB")
    return np.array(image) if as_numpy else image


def tensor_to_numpy(
    x: torch.Tensor,
    squeeze: bool = True,
    clamp: tuple[float, float] | None = (0, 1),
    transpose: bool = True,
    dtype: torch.dtype | None = torch.float,
    as_uint8: bool = True,
) -> npt.NDArray[Any]:
    """``x`` as an array: squeezed, clamped, cast, channels last (CHW -> HWC, NCHW ->
    NHWC) and scaled to 8 bits, each step as asked; ``x`` itself is left as it is."""
    y = x.detach().clone()
    if squeeze:
        y = y.squeeze()
    if clamp is not None:
        y = y.clamp(min=clamp[0], max=clamp[1])
    if dtype is not None:
        y = y.to(dtype)
    array = y.cpu().numpy()
    if transpose and array.ndim == 3:
        array = array.transpose(1, 2, 0)
    elif transpose and array.ndim == 4:
        array = array.transpose(0, 2, 3, 1)
    if as_uint8:
        array = (array * 255.0).round().astype(np.uint8)
    return array


def show_tensor(tens: torch.Tensor, title: str = "debug window") -> None:
    """Show an image tensor (CHW, 0-1) in an OpenCV window until a key is pressed."""
    cv2 = _cv2()
    cv2.imshow(title, cv2.cvtColor(tensor_to_numpy(tens), cv2.COLOR_RGB2BGR))
    cv2.waitKey(0)


def show_tensors(tens: torch.Tensor) -> None:
    """``show_tensor`` for an image, or for each image of a batch."""
    if tens.ndim == 3:
        show_tensor(tens)
        return
    for i in range(tens.shape[0]):
        show_tensor(tens[i], title=f"tensor[{i}]")


def convert_to_hwc(img: npt.NDArray[Any], input_order: str = "HWC") -> npt.NDArray[Any]:
    """``img`` with its channels last (a 2-D image gets one channel).

    Raises:
        ValueError: ``input_order`` is neither ``"HWC"`` nor ``"CHW"``.
    """
    if input_order not in ("HWC", "CHW"):
        raise ValueError(f"input_order is 'HWC' or 'CHW', not {input_order!r}")
    if img.ndim == 2:
        img = img[..., None]
    return img.transpose(1, 2, 0) if input_order == "CHW" else img


def bgr2ycbcr(img: npt.NDArray[Any], only_y: bool = False) -> npt.NDArray[Any]:
    """A BGR image in YCbCr (BT.601), of the same dtype: 0-255 for ``uint8``, else 0-1.

    ``only_y``: the Y channel alone (no channel axis). ``img`` is left as it is.
    """
    scaled = img.astype(np.float64) * (1.0 if img.dtype == np.uint8 else 255.0)
    bgr_weights = _YCBCR[:, ::-1]  # columns in B, G, R order
    if only_y:
        out = scaled @ bgr_weights[0] / 255.0 + _YCBCR_OFFSET[0]
    else:
        out = scaled @ bgr_weights.T / 255.0 + _YCBCR_OFFSET
    out = out.round() if img.dtype == np.uint8 else out / 255.0
    converted: npt.NDArray[Any] = out.astype(img.dtype)
    return converted


def to_y_channel(img: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """A 0-255 BGR image's Y channel (HW1, float, 0-255 scale); other images as floats."""
    y = img.astype(np.float32) / 255.0
    if y.ndim == 3 and y.shape[2] == 3:
        y = bgr2ycbcr(y, only_y=True)[..., None]
    return y * 255.0


def rgb2ycbcr_torch(img: torch.Tensor, only_y: bool = False) -> torch.Tensor:
    """A batch of RGB images (NCHW, 0-1) in YCbCr (BT.601, 0-1); ``only_y``: Y alone
    (N1HW)."""
    weights = torch.as_tensor(_YCBCR[:1] if only_y else _YCBCR).to(img)
    offset = torch.as_tensor(_YCBCR_OFFSET[:1] if only_y else _YCBCR_OFFSET).to(img)
    out = torch.einsum("nchw,kc->nkhw", img, weights) + offset.view(1, -1, 1, 1)
    return out / 255.0
