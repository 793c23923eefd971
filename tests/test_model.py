"""The paper's plain U-Net: shapes and parameter count."""

import pytest
import torch

from segbench.models import UNet
from segbench.models.common import parameter_count


def conv_block_params(cin: int, cout: int) -> int:
    # two 3x3 convs without bias (BatchNorm follows) + two BatchNorms (weight and bias each)
    return 9 * cin * cout + 9 * cout * cout + 4 * cout


def up_params(cin: int, cout: int) -> int:
    # 1x1 conv with bias halving the channels, then a block on the concatenation (2 * cout channels)
    return cin * cout + cout + conv_block_params(2 * cout, cout)


def test_paper_configuration_parameter_count():
    net = UNet(in_channels=1, num_classes=9, width=32, depth=5)
    widths = [32, 64, 128, 256, 512]  # encoder 32-64-128-256-512, decoder 256-128-64-32
    expected = conv_block_params(1, 32)
    expected += sum(conv_block_params(widths[i - 1], widths[i]) for i in range(1, 5))
    expected += sum(up_params(widths[i], widths[i - 1]) for i in range(4, 0, -1))
    expected += 32 * 9 + 9  # 1x1 head with bias
    assert expected == 7_240_489
    assert parameter_count(net) == expected
    assert [m[0].out_channels for m in net.encoders] == widths
    assert [d.block[0].out_channels for d in net.decoders] == [256, 128, 64, 32]


@pytest.mark.parametrize("spatial_dims,shape", [(2, (2, 1, 48, 40)), (3, (1, 1, 16, 24, 20))])
def test_output_shape_matches_input_for_any_size(spatial_dims, shape):
    # 40 and 20 are not multiples of 2**(depth-1): the decoder must still restore the input size
    net = UNet(num_classes=5, width=4, depth=4, spatial_dims=spatial_dims)
    out = net(torch.randn(shape))
    assert out.shape == (shape[0], 5, *shape[2:])


def test_invalid_width_is_rejected():
    with pytest.raises(ValueError, match="model.width"):
        UNet(width=0)
