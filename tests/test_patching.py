import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from llm_st.errors import ConfigError, DataError
from llm_st.tokens.patching import num_patches, patchify, unpatchify


@pytest.mark.parametrize(
    ("length", "none", "end", "replicate"),
    [
        (10, 4, 4, 5),  # none (10-4)//2+1; end ceil(6/2)+1; replicate (10+2-4)//2+1
        (11, 4, 5, 5),  # none drops step 10; end pads 1 step; replicate (11+2-4)//2+1
        (4, 1, 1, 2),  # exactly one patch; replicate adds a second
    ],
)
def test_num_patches_formula(length, none, end, replicate):
    assert num_patches(length, 4, 2, "none") == none
    assert num_patches(length, 4, 2, "end") == end
    assert num_patches(length, 4, 2, "replicate") == replicate


def test_short_series():
    assert num_patches(3, 4, 2, "end") == 1  # padded to one patch
    assert num_patches(3, 4, 2, "replicate") == 1  # 3 + 2 >= 4
    torch.testing.assert_close(
        patchify(torch.tensor([1.0, 2.0, 3.0]), 4, 2), torch.tensor([[1.0, 2.0, 3.0, 3.0]])
    )
    with pytest.raises(DataError, match="shorter than one patch"):
        patchify(torch.zeros(3), 4, 2, padding="none")
    with pytest.raises(ConfigError, match="'zero'"):
        num_patches(8, 4, 2, padding="zero")
    with pytest.raises(ConfigError, match="stride=0"):
        num_patches(8, 4, 0)


def test_padding_values_by_hand():
    x = torch.arange(1.0, 7.0)  # 1..6
    # replicate: 1..6 then 6, 6 (stride copies)
    expected = torch.tensor([[1.0, 2, 3, 4], [3, 4, 5, 6], [5, 6, 6, 6]])
    torch.testing.assert_close(patchify(x, 4, 2, "replicate"), expected)
    # end: 1..7 needs one copy of 7 for the last patch to end on step 7
    x7 = torch.arange(1.0, 8.0)
    expected = torch.tensor([[1.0, 2, 3, 4], [3, 4, 5, 6], [5, 6, 7, 7]])
    torch.testing.assert_close(patchify(x7, 4, 2, "end"), expected)
    # none: step 7 is dropped
    torch.testing.assert_close(patchify(x7, 4, 2, "none"), expected[:2])
    # end with stride 3 on 1..8: patches start at 1 and 4, the second needs 2 copies of 8
    expected = torch.tensor([[1.0, 2, 3, 4], [4, 5, 6, 7], [7, 8, 8, 8]])
    torch.testing.assert_close(patchify(torch.arange(1.0, 9.0), 4, 3, "end"), expected)


def test_replicate_matches_patchtst():
    """PatchTST: nn.ReplicationPad1d((0, stride)) then unfold(-1, patch_len, stride)."""
    x = torch.randn(3, 7, 42)  # [batch, channels, L]
    reference = nn.ReplicationPad1d((0, 8))(x).unfold(-1, 16, 8)
    torch.testing.assert_close(patchify(x, 16, 8, "replicate"), reference, rtol=0, atol=0)
    assert reference.shape[-2] == num_patches(42, 16, 8, "replicate") == int((42 - 16) / 8 + 1) + 1


@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(1, 64),
    patch_len=st.integers(1, 16),
    data=st.data(),
    padding=st.sampled_from(["end", "none", "replicate"]),
)
def test_round_trip(length, patch_len, data, padding):
    stride = data.draw(st.integers(1, patch_len))
    padded = length + stride if padding == "replicate" else length
    if padding != "end" and padded < patch_len:
        return  # rejected, tested in test_short_series
    x = torch.randn(2, 3, length, dtype=torch.float64)
    patches = patchify(x, patch_len, stride, padding)
    count = num_patches(length, patch_len, stride, padding)
    assert patches.shape == (2, 3, count, patch_len)
    # every patch holds the steps k*stride .. k*stride + patch_len - 1 of the series
    k = data.draw(st.integers(0, count - 1))
    inside = min(length - k * stride, patch_len)
    if inside > 0:
        torch.testing.assert_close(
            patches[..., k, :inside], x[..., k * stride : k * stride + inside]
        )
    covered = (count - 1) * stride + patch_len
    if padding == "none":  # the uncovered tail is dropped, by fewer than stride steps
        assert 0 <= length - covered < stride
    else:  # padding makes the last patch reach the last step
        assert covered >= length
    restored_length = min(length, covered)
    torch.testing.assert_close(
        unpatchify(patches, stride, restored_length), x[..., :restored_length], rtol=0, atol=1e-12
    )


def test_unpatchify_averages_overlaps():
    patches = torch.tensor([[0.0, 2.0], [4.0, 6.0]])
    # step 1 is held by both patches: (2 + 4) / 2
    torch.testing.assert_close(unpatchify(patches, 1, 3), torch.tensor([0.0, 3.0, 6.0]))
    torch.testing.assert_close(unpatchify(patches, 2, 4), torch.tensor([0.0, 2.0, 4.0, 6.0]))
    with pytest.raises(DataError, match="cover 4 steps"):
        unpatchify(patches, 2, 5)
    with pytest.raises(DataError, match="stride 3 > patch_len 2"):
        unpatchify(patches, 3, 5)


def test_unpatchify_passes_gradients():
    patches = torch.randn(4, 5, 3, requires_grad=True)
    unpatchify(patches, 2, 11).sum().backward()
    # a step in k patches gives each of them 1/k: per patch the weights sum to its share
    assert patches.grad.sum().item() == pytest.approx(4 * 11)
