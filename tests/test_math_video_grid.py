"""Tier 1: SEG's query blur and SAG's mask and degradation on video token grids (frames × h × w)."""
import torch

from guidekit.guidance.blur import gaussian_blur_2d, gaussian_kernel_1d
from guidekit.guidance.sag import degrade, saliency_mask
from guidekit.guidance.seg import blur_image_queries, blur_queries, kernel_size

from guidance_helpers import rand


def test_spatial_blur_acts_on_each_frame_alone():
    frames, h, w, c = 3, 4, 5, 6
    q = rand(2, frames * h * w, c, seed=0)
    out = blur_queries(q, h, w, 1.0, frames=frames)
    per_frame = [blur_queries(q[:, f * h * w:(f + 1) * h * w], h, w, 1.0) for f in range(frames)]
    torch.testing.assert_close(out, torch.cat(per_frame, dim=1))


def test_infinite_spatial_sigma_gives_each_frames_mean_and_infinite_temporal_the_clips():
    frames, h, w, c = 3, 2, 3, 4
    q = rand(1, frames * h * w, c, seed=1)
    out = blur_queries(q, h, w, -1.0, frames=frames).reshape(1, frames, h * w, c)
    means = q.reshape(1, frames, h * w, c).mean(dim=2, keepdim=True)
    torch.testing.assert_close(out, means.expand_as(out))
    clip = blur_queries(q, h, w, -1.0, frames=frames, temporal_sigma=-1.0)
    torch.testing.assert_close(clip, q.mean(dim=1, keepdim=True).expand_as(q))


def test_temporal_blur_is_the_gaussian_along_frames():
    """A clip constant in space: each token sees the 1D Gaussian (reflect padding) of its frame values."""
    frames, h, w, sigma = 7, 2, 2, 1.0
    values = torch.arange(frames, dtype=torch.float32) ** 2
    q = values.repeat_interleave(h * w).reshape(1, frames * h * w, 1)
    out = blur_queries(q, h, w, 1e-3, frames=frames, temporal_sigma=sigma).reshape(frames, h * w)
    k = kernel_size(sigma, frames)
    padded = torch.nn.functional.pad(values.reshape(1, 1, -1), (k // 2, k // 2), mode="reflect")
    expected = torch.nn.functional.conv1d(padded, gaussian_kernel_1d(k, sigma).reshape(1, 1, -1)).flatten()
    torch.testing.assert_close(out, expected[:, None].expand(frames, h * w))
    constant = torch.full_like(q, 3.0)
    torch.testing.assert_close(blur_queries(constant, h, w, 1.0, frames=frames, temporal_sigma=2.0), constant)


def test_image_queries_of_a_joint_video_sequence():
    frames, h, w, heads, d, text = 2, 3, 4, 2, 3, 5
    q = rand(1, heads, text + frames * h * w, d, seed=2)
    out = blur_image_queries(q, h, w, 1.0, frames=frames)
    torch.testing.assert_close(out[:, :, :text], q[:, :, :text])
    image = q[:, :, text:].permute(0, 2, 1, 3).reshape(1, frames * h * w, heads * d)
    expected = blur_queries(image, h, w, 1.0, frames=frames).reshape(1, -1, heads, d).permute(0, 2, 1, 3)
    torch.testing.assert_close(out[:, :, text:], expected)


def test_sag_mask_and_degradation_per_frame():
    frames, h, w = 3, 4, 4
    saliency = rand(2, frames * h * w, seed=3).abs() * 2
    mask = saliency_mask(saliency, h, w, 1.0, frames=frames)
    assert mask.shape == (2, 1, frames, h, w)
    x0 = rand(2, 4, frames, 8, 8, seed=4)
    out = degrade(x0, mask, 2.0)
    for f in range(frames):
        torch.testing.assert_close(out[:, :, f], degrade(x0[:, :, f], mask[:, :, f], 2.0))
    blurred = gaussian_blur_2d(x0[:, :, 0], 9, 9, 2.0)
    ones = torch.ones(2, 1, frames, h, w)
    torch.testing.assert_close(degrade(x0, ones, 2.0)[:, :, 0], blurred)
