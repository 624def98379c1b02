"""Loss nodes: each adds one weighted, differentiable loss on the decoded x0 to a GUIDEKIT_LOSS chain.

A chain is a tuple of LossTerm; GuideKit Loss Guidance sums the weighted terms per image. Terms see
images (N, 3, H, W) in [0, 1] and `rows`, the batch image each row belongs to (augmented copies repeat
rows), so per-image targets follow their image.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from comfy_api.latest import io

from ..guidance import losses
from .base import GuideKitNode
from .loss_networks import NETWORK_FOLDER, NORMALIZATIONS, OPEN_CLIP_FOLDER, load_network, load_open_clip, model_files

CATEGORY = "GuideKit/loss guidance"
LossType = io.Custom("GUIDEKIT_LOSS")
OpenClipType = io.Custom("GUIDEKIT_OPEN_CLIP")
NetworkType = io.Custom("GUIDEKIT_NETWORK")


@dataclass(frozen=True)
class LossTerm:
    name: str
    weight: float
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]    # (images, rows) → loss per row
    spatial: bool = False        # compares against a map: only colour augmentation keeps the target aligned
    size: tuple[int, int] | None = None   # the (h, w) its network resizes images to; None: it uses every pixel


def chain(previous, term: LossTerm) -> tuple:
    return tuple(previous or ()) + (term,)


def per_image(target: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Row i's target: a batch of 1 is shared, a batch of B follows the images (repeated if shorter)."""
    index = rows.to(target.device) % target.shape[0]
    return target[index]


def common_inputs() -> list:
    return [io.Float.Input("weight", default=1.0, min=-1000.0, max=1000.0, step=0.01,
                           tooltip="Weight of this loss in the sum (losses of a chain add up)."),
            LossType.Input("loss", optional=True, tooltip="Another loss to add this one to (chain loss nodes).")]


class OpenClipLoaderGK(GuideKitNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GuideKitOpenClipLoader", display_name="GuideKit OpenCLIP Loader", category=CATEGORY,
            description="Loads an open_clip model (both towers) from models/open_clip for CLIP losses. Any open_clip "
                        "architecture; 'auto' reads it from the file's metadata or its name.",
            inputs=[io.Combo.Input("clip_name",
                                   options=model_files(OPEN_CLIP_FOLDER) or ["(put files in models/open_clip)"],
                                   tooltip="An open_clip checkpoint (.safetensors) in ComfyUI/models/open_clip."),
                    io.String.Input("architecture", default="auto",
                                    tooltip="open_clip model name (e.g. ViT-B-16, ViT-L-14, RN50) or 'auto'.")],
            outputs=[OpenClipType.Output(display_name="clip",
                                         tooltip="The open_clip model, for the CLIP losses "
                                                 "and the refiner's neighbour search.")],
        )

    @classmethod
    def execute(cls, clip_name, architecture) -> io.NodeOutput:
        return io.NodeOutput(load_open_clip(clip_name, architecture))


class NetworkLoaderGK(GuideKitNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GuideKitNetworkLoader", display_name="GuideKit Guidance Network Loader", category=CATEGORY,
            description="Loads a classifier, segmentation or sketch network from models/guidekit_networks "
                        "(safetensors): torchvision or timm architectures by name, the head sized from the file.",
            inputs=[io.Combo.Input("network_name",
                                   options=model_files(NETWORK_FOLDER) or ["(put files in models/guidekit_networks)"],
                                   tooltip="A network (.safetensors) in ComfyUI/models/guidekit_networks."),
                    io.String.Input("architecture", default="auto",
                                    tooltip="'torchvision:<name>' (resnet50, deeplabv3_resnet50, "
                                            "lraspp_mobilenet_v3_large …), 'timm:<name>', 'guidekit:digit-cnn', "
                                            "or 'auto' = the file's 'guidekit.arch' metadata."),
                    io.Combo.Input("normalization", options=["auto", *NORMALIZATIONS], default="auto",
                                   tooltip="Input normalisation the network was trained with; auto = metadata, "
                                           "else ImageNet mean/std."),
                    io.Int.Input("input_size", default=0, min=0, max=4096,
                                 tooltip="Resize images to this square size for the network; 0 = metadata or as is.")],
            outputs=[NetworkType.Output(display_name="network",
                                        tooltip="The network with its input size and normalisation.")],
        )

    @classmethod
    def execute(cls, network_name, architecture, normalization, input_size) -> io.NodeOutput:
        return io.NodeOutput(load_network(network_name, architecture, normalization, input_size))


class ClipTextLossGK(GuideKitNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GuideKitClipTextLoss", display_name="GuideKit CLIP Text Loss", category=CATEGORY,
            description="1 − cos(CLIP image embedding of x0, CLIP text embedding): pulls the image towards the text.",
            inputs=[OpenClipType.Input("clip", tooltip="From GuideKit OpenCLIP Loader."),
                    io.String.Input("text", default="a photo of a cat", multiline=True,
                                    tooltip="One prompt, or one per line for the images of the batch."),
                    *common_inputs()],
            outputs=[LossType.Output(display_name="loss",
                                     tooltip="The loss chain, for GuideKit Loss Guidance or another loss node.")],
        )

    @classmethod
    def execute(cls, clip, text, weight, loss=None) -> io.NodeOutput:
        prompts = [t.strip() for t in text.splitlines() if t.strip()]
        if not prompts:
            raise ValueError("GuideKit CLIP Text Loss: input 'text' is empty; write what the image should show")
        target = clip.encode_text(prompts)
        def fn(images, rows):
            return losses.clip_loss(clip.encode_image(images), per_image(target, rows))
        return io.NodeOutput(chain(loss, LossTerm(f"CLIP text {prompts[0]!r}", weight, fn, size=clip.image_size)))


class ClipImageLossGK(GuideKitNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GuideKitClipImageLoss", display_name="GuideKit CLIP Image Loss", category=CATEGORY,
            description="1 − cos(CLIP embedding of x0, CLIP embedding of a reference image): style/content reference.",
            inputs=[OpenClipType.Input("clip", tooltip="From GuideKit OpenCLIP Loader."),
                    io.Image.Input("image", tooltip="Reference image(s): 1, or one per image."),
                    *common_inputs()],
            outputs=[LossType.Output(display_name="loss",
                                     tooltip="The loss chain, for GuideKit Loss Guidance or another loss node.")],
        )

    @classmethod
    def execute(cls, clip, image, weight, loss=None) -> io.NodeOutput:
        with torch.inference_mode(False), torch.no_grad():
            target = clip.encode_image(image.movedim(-1, 1)[:, :3].clone().to(next(clip.model.parameters()).device))
        def fn(images, rows):
            return losses.clip_loss(clip.encode_image(images), per_image(target, rows))
        return io.NodeOutput(chain(loss, LossTerm("CLIP image", weight, fn, size=clip.image_size)))


class ClassifierLossGK(GuideKitNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GuideKitClassifierLoss", display_name="GuideKit Classifier Loss", category=CATEGORY,
            description="−log p(target class | x0) under a classifier network.",
            inputs=[NetworkType.Input("network", tooltip="A classifier from GuideKit Guidance Network Loader."),
                    io.String.Input("target_class", default="0",
                                    tooltip="Class index, or comma-separated indices, one per image of the batch."),
                    *common_inputs()],
            outputs=[LossType.Output(display_name="loss",
                                     tooltip="The loss chain, for GuideKit Loss Guidance or another loss node.")],
        )

    @classmethod
    def execute(cls, network, target_class, weight, loss=None) -> io.NodeOutput:
        try:
            target = torch.tensor([int(t) for t in target_class.replace(" ", "").split(",") if t != ""])
        except ValueError:
            target = torch.tensor([])
        if target.numel() == 0 or (target < 0).any():
            raise ValueError(f"GuideKit Classifier Loss: input 'target_class' = {target_class!r}; write a class index "
                             "(e.g. '7') or one per image ('0,1,2')")

        def fn(images, rows):
            logits = network(images)
            if (target >= logits.shape[1]).any():
                raise ValueError(f"GuideKit Classifier Loss: input 'target_class' = {target_class!r}, but "
                                 f"{network.name} has {logits.shape[1]} classes (0-{logits.shape[1] - 1})")
            return losses.classifier_loss(logits, per_image(target, rows))
        return io.NodeOutput(chain(loss, LossTerm(f"classifier {target_class}", weight, fn, size=network.size)))


def aligned_target(target: torch.Tensor, size: tuple[int, int], node: str, input_name: str, warned: list,
                   mode: str) -> torch.Tensor:
    """Resize a target map (B, C, h, w) to the image size; a different aspect ratio is an error."""
    h, w = target.shape[-2:]
    if tuple(size) == (h, w):
        return target
    if abs(h / w - size[0] / size[1]) > 0.01:
        raise ValueError(f"{node}: input '{input_name}' is {w}×{h} but the image is {size[1]}×{size[0]} (another "
                         "aspect ratio); give a target of the image's size or aspect ratio")
    if not warned:
        logging.warning("%s: input '%s' is %d×%d, resized to the image's %d×%d",
                        node, input_name, w, h, size[1], size[0])
        warned.append(True)
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(target.float(), size=tuple(size), mode=mode, **kwargs)


class SegmentationLossGK(GuideKitNode):
    NODE = "GuideKit Segmentation Loss"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GuideKitSegmentationLoss", display_name=cls.NODE, category=CATEGORY,
            description="Per-pixel cross-entropy between a segmentation network's map of x0 and a target: inside the "
                        "mask the class 'mask_class', outside 'background_class' (-1 = no constraint outside).",
            inputs=[NetworkType.Input("network",
                                      tooltip="A segmentation network from GuideKit Guidance Network Loader."),
                    io.Mask.Input("target_mask", tooltip="Where the class should be."),
                    io.Int.Input("mask_class", default=1, min=0, max=100000,
                                 tooltip="The class wanted inside the mask (an index of the network's output)."),
                    io.Int.Input("background_class", default=0, min=-1, max=100000,
                                 tooltip="The class wanted outside the mask; -1 = outside is ignored."),
                    *common_inputs()],
            outputs=[LossType.Output(display_name="loss",
                                     tooltip="The loss chain, for GuideKit Loss Guidance or another loss node.")],
        )

    @classmethod
    def execute(cls, network, target_mask, mask_class, background_class, weight, loss=None) -> io.NodeOutput:
        mask = target_mask.reshape(-1, 1, *target_mask.shape[-2:]).clone()
        warned: list = []

        def fn(images, rows):
            logits = network(images)
            if max(mask_class, background_class) >= logits.shape[1]:
                raise ValueError(f"{cls.NODE}: inputs 'mask_class'/'background_class' ({mask_class}/{background_class})"
                                 f" exceed {network.name}'s {logits.shape[1]} classes")
            inside = aligned_target(mask, images.shape[-2:], cls.NODE, "target_mask", warned, "nearest")[:, 0] > 0.5
            outside = background_class if background_class >= 0 else 255
            labels = torch.where(inside, torch.tensor(mask_class), torch.tensor(outside)).long()
            return losses.segmentation_loss(logits, per_image(labels, rows))
        return io.NodeOutput(chain(loss, LossTerm("segmentation", weight, fn, spatial=True, size=network.size)))


class SketchLossGK(GuideKitNode):
    NODE = "GuideKit Sketch Loss"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GuideKitSketchLoss", display_name=cls.NODE, category=CATEGORY,
            description="Mean squared difference between the sketch of x0 and a target sketch. The sketch is a "
                        "network's 1-channel map, or Sobel edges when no network is connected.",
            inputs=[io.Image.Input("target_sketch", tooltip="Light lines on dark (set invert for dark on white)."),
                    io.Boolean.Input("invert_target", default=False, tooltip="The target has dark lines on white."),
                    *common_inputs(),
                    NetworkType.Input("network", optional=True, tooltip="A sketch extractor; default Sobel edges.")],
            outputs=[LossType.Output(display_name="loss",
                                     tooltip="The loss chain, for GuideKit Loss Guidance or another loss node.")],
        )

    @classmethod
    def execute(cls, target_sketch, invert_target, weight, loss=None, network=None) -> io.NodeOutput:
        target = target_sketch.movedim(-1, 1)[:, :3].mean(1, keepdim=True).clone()
        target = 1 - target if invert_target else target
        warned: list = []

        def fn(images, rows):
            edges = network(images) if network is not None else losses.sobel_edges(images)
            if edges.shape[1] != 1:
                edges = edges.mean(1, keepdim=True)
            aligned = aligned_target(target, images.shape[-2:], cls.NODE, "target_sketch", warned, "bilinear")
            return losses.sketch_loss(edges, per_image(aligned, rows))
        size = network.size if network is not None else None        # Sobel edges: every pixel
        return io.NodeOutput(chain(loss, LossTerm("sketch", weight, fn, spatial=True, size=size)))
