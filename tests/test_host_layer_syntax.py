"""Tier 2: the layer-list syntax against the real layers of thin models of each architecture."""
import pytest

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def archs(thin):
    from guidekit.nodes.layers import architecture
    return {arch: architecture(thin.build(arch), "test") for arch in ["sd15", "sdxl", "sd3", "flux", "chroma"]}


@pytest.mark.parametrize("arch,text,expected", [
    ("sdxl", "default", [("middle", 0, 0), ("middle", 0, 1)]),
    ("sdxl", "mid", [("middle", 0, 0), ("middle", 0, 1)]),
    ("sdxl", "middle.0.1", [("middle", 0, 1)]),
    ("sdxl", "output.0-2", [("output", 0, 0), ("output", 0, 1), ("output", 1, 0), ("output", 1, 1),
                            ("output", 2, 0)]),
    ("sdxl", "input.5.1, input.3", [("input", 3, 0), ("input", 5, 1)]),
    ("sdxl", "in.5.0-1", [("input", 5, 0), ("input", 5, 1)]),
    ("sd15", "middle", [("middle", 0, 0)]),
    ("flux", "default", [("single", 0)]),
    ("flux", "double.1 single.0-1", [("double", 1), ("single", 0), ("single", 1)]),
    ("chroma", "double", [("double", 0), ("double", 1)]),
    ("sd3", "default", [("joint", 1)]),
])
def test_layer_lists_select_in_forward_order(archs, arch, text, expected):
    from guidekit.nodes.layers import parse_layers
    assert list(parse_layers(text, archs[arch], "test")) == expected


@pytest.mark.parametrize("arch", ["sd15", "sdxl", "sd3", "flux"])
def test_every_layer_list_the_error_prints_reads_back(archs, arch):
    from guidekit.nodes.layers import format_layers, parse_layers
    a = archs[arch]
    assert parse_layers(format_layers(a.layers), a, "test") == a.layers


@pytest.mark.parametrize("stacks, expected", [
    ((("double", 8),), "double.5"),                     # the MNIST DiTs: the block measured in docs/evidence.md
    ((("block", 2),), "block.1"),                       # thin models: the middle block, as before
    ((("block", 30),), "block.18"),                     # Wan 2.1 1.3B
    ((("double", 60),), "double.37"),                   # Qwen-Image
    ((("double", 19), ("single", 38)), "single.16"),    # Flux dev: layer 35 of 57
    ((("block", 1),), "block.0"),
])
def test_pag_preset_without_a_reference_is_the_block_at_five_eighths(stacks, expected):
    from guidekit.nodes.layers import five_eighths_deep
    assert five_eighths_deep([(place, i) for place, n in stacks for i in range(n)]) == expected


def test_five_eighths_is_within_a_block_of_5n_over_8_and_the_middle_on_small_models():
    from guidekit.nodes.layers import five_eighths_deep
    for n in range(1, 121):
        index = int(five_eighths_deep([("block", i) for i in range(n)]).removeprefix("block."))
        assert n // 2 <= index < n and abs(index - 5 * n / 8) < 1, (n, index)
        assert n > 4 or index == n // 2, (n, index)          # thin models keep the middle block
