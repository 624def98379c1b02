"""Guidance losses on decoded images (B, 3, H, W) in [0, 1]: one value per image, differentiable.

Each takes the network's output (or the images for the weight-free sketch extractor) and the target;
the networks themselves come from the nodes. Squared-residual losses are what DPS takes the root of.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def prepare(images: torch.Tensor, size: int | tuple[int, int] | None, mean, std, channels: int = 3) -> torch.Tensor:
    """Resize (bilinear, antialiased) and normalise images for a network; channels 1 = grey."""
    x = images
    if channels == 1 and x.shape[1] != 1:
        x = x.mean(1, keepdim=True)
    if size:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(x.shape[-2:]) != hw:
            x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    return (x - m) / s


def clip_loss(image_embeddings: torch.Tensor, target_embeddings: torch.Tensor) -> torch.Tensor:
    """1 − cos(CLIP(image), target) (Shen et al.'s ImageNet CLIP residual; FreeDoM's CLIP guidance)."""
    return 1 - F.cosine_similarity(image_embeddings, target_embeddings.to(image_embeddings), dim=-1)


def classifier_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """−log p(target | x0): cross-entropy per image."""
    return F.cross_entropy(logits.float(), target.to(logits.device), reduction="none")


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Mean per-pixel cross-entropy between the network's map (B, K, h, w) and a label map (B, H, W)."""
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    pixel = F.cross_entropy(logits.float(), target.to(logits.device).long(), reduction="none",
                            ignore_index=ignore_index)
    valid = (target != ignore_index).to(pixel).flatten(1).sum(1).clamp(min=1)
    return pixel.flatten(1).sum(1) / valid


def sobel_edges(images: torch.Tensor) -> torch.Tensor:
    """Edge magnitude of the grey image (B, 1, H, W), the weight-free sketch extractor."""
    grey = images.mean(1, keepdim=True)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=grey.dtype, device=grey.device)
    kernel = torch.stack([kx, kx.t()]).unsqueeze(1) / 4
    grad = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kernel)
    return (grad.pow(2).sum(1, keepdim=True) + 1e-8).sqrt()


def sketch_loss(edges: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the extracted sketch and the target sketch (B, 1, H, W), per image."""
    if edges.shape[-2:] != target.shape[-2:]:
        target = F.interpolate(target.to(edges), size=edges.shape[-2:], mode="bilinear", align_corners=False)
    return (edges - target.to(edges)).pow(2).flatten(1).mean(1)
