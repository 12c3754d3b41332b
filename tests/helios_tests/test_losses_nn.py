"""helios.losses and helios.nn: registries, weighted losses, EMA, initialisation, pooling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helios import losses
from helios import nn as hln
from helios.nn import layers


class Halved(losses.WeightedLoss):
    def __init__(self) -> None:
        super().__init__(loss_weight=0.5)

    def _eval(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum()


def test_losses_by_name_and_weighted() -> None:
    for name in ("L1Loss", "MSELoss", "CrossEntropyLoss", "TripletMarginWithDistanceLoss"):
        assert name in losses.LOSS_REGISTRY
    assert isinstance(losses.create_loss("MSELoss", reduction="sum"), nn.MSELoss)
    losses.LOSS_REGISTRY.register(Halved)
    loss = losses.create_loss("Halved")
    assert loss(torch.tensor([4.0, 6.0])).item() == 5.0
    with pytest.raises(TypeError):
        losses.WeightedLoss()  # type: ignore[abstract]


def test_networks_by_name() -> None:
    @hln.NETWORK_REGISTRY.register
    class Tiny(nn.Module):
        def __init__(self, width: int = 2) -> None:
            super().__init__()
            self.fc = nn.Linear(width, 1)

    net = hln.create_network("Tiny", width=3)
    assert isinstance(net, Tiny)
    assert net.fc.in_features == 3


def test_ema_follows_the_network_by_its_decay() -> None:
    net = nn.Linear(2, 1)
    ema = hln.swa_utils.EMA(net, decay=0.75)
    assert ema.module is not net
    assert not ema.module.training
    averaged = ema.module
    assert isinstance(averaged, nn.Linear)
    start = averaged.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(4.0)
    ema.update(net)
    assert torch.allclose(averaged.weight, 0.75 * start + 0.25 * net.weight)
    ema.set(net)
    assert torch.equal(averaged.weight, net.weight)
    x = torch.ones(1, 2)
    assert torch.equal(ema(x), net(x))


def test_default_init_weights_scales_and_fills() -> None:
    def block() -> tuple[nn.Conv2d, nn.BatchNorm2d, nn.Linear]:
        return nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(4, 3)

    a, b = block(), block()
    torch.manual_seed(0)
    hln.default_init_weights(list(a), scale=1.0, bias_fill=0.5)
    torch.manual_seed(0)
    hln.default_init_weights(nn.Sequential(*b), scale=0.1, bias_fill=0.5)
    assert torch.allclose(b[0].weight, a[0].weight * 0.1)
    assert torch.allclose(b[2].weight, a[2].weight * 0.1)
    assert torch.equal(a[1].weight, torch.ones(2))
    for m in a:
        assert m.bias is not None
        assert torch.all(m.bias == 0.5)


@pytest.mark.parametrize(
    ("size", "shape"),
    [
        ((5, 7), (1, 3, 8, 9)),
        (7, (1, 3, 10, 9)),
        ((None, 7), (1, 3, 10, 9)),
        ((4, None), (2, 1, 8, 6)),
    ],
)
def test_adaptive_pool_matches_torchs_shape(
    size: int | tuple[int | None, int | None], shape: tuple[int, ...]
) -> None:
    x = torch.randn(shape)
    assert layers.AdaptiveAvgPool2d(size)(x).shape == nn.AdaptiveAvgPool2d(size)(x).shape


def test_adaptive_pool_matches_torchs_values_where_the_size_divides() -> None:
    x = torch.randn(2, 3, 8, 12)
    assert torch.allclose(layers.AdaptiveAvgPool2d((4, 3))(x), nn.AdaptiveAvgPool2d((4, 3))(x))


@pytest.mark.parametrize("size", [(1, 2, 3), (1,), 1.0, (1, 1.0), (1.0, 1), None, True])
def test_adaptive_pool_refuses_other_sizes(size: object) -> None:
    with pytest.raises(RuntimeError, match="output_size"):
        layers.AdaptiveAvgPool2d(size)  # type: ignore[arg-type]
