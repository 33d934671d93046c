import torch

from mnist_net.model import N_PARAMS, Net, summary

# (layer type, output shape, params) for the seed's torchinfo table, in forward order.
EXPECTED_LAYERS = [
    ("Conv2d", [32, 26, 26], 320),
    ("Conv2d", [64, 24, 24], 18_496),
    ("Conv2d", [128, 10, 10], 73_856),
    ("Conv2d", [256, 8, 8], 295_168),
    ("Linear", [1, 50], 204_850),
    ("Linear", [1, 10], 510),
]


def test_parameter_count():
    assert N_PARAMS == 593_200
    assert sum(p.numel() for p in Net().parameters()) == 593_200


def test_summary_layers_match_the_seed():
    stats = summary()
    layers = [layer for layer in stats.summary_list if layer.depth == 1]
    got = [(layer.class_name, list(layer.output_size), layer.num_params) for layer in layers]
    assert got == EXPECTED_LAYERS
    assert stats.total_params == 593_200
    table = str(stats)
    for text in ("[32, 26, 26]", "[256, 8, 8]", "18,496", "295,168", "204,850", "Total params: 593,200"):
        assert text in table


def test_outputs_are_log_probabilities():
    torch.manual_seed(0)
    out = Net()(torch.randn(5, 1, 28, 28))
    assert out.shape == (5, 10)
    assert (out <= 0).all()
    assert torch.allclose(out.exp().sum(1), torch.ones(5), atol=1e-5)


def test_channels_last_gives_the_same_output_as_nchw():
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        want = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        got = model_cl(x.contiguous(memory_format=torch.channels_last))
    assert model_cl.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    assert got.shape == (4, 10)
    assert torch.allclose(got, want, atol=1e-5)
