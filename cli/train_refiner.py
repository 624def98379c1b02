"""Train a flow refiner (Zhao & Schwing 2025) from generated samples and real data.

    python -m guidekit.cli.train_refiner --generated GEN [GEN ...] --real REAL \
--out models/guidekit_refiners/NAME.safetensors
        [--vae VAE.safetensors] [--latent-format SD15] [--neighbour-space samples|open_clip]
        [--open-clip FILE --open-clip-arch ViT-B-16 --pool mean-patch|pooled]
        [--k 20] [--iterations 4000] [--batch-size 256] [--lr 3e-4] [--ema 0.999] [--seed 0]
        [--checkpoint FILE] [--checkpoint-every 500] [--device cpu|cuda]

GEN and REAL are folders of images or tensor files (.safetensors with one tensor, or ComfyUI's .latent
from Save Latent). Several GEN sets (e.g. one per guidance scale) are pooled with equal counts: the
paper's one-for-all-scales refiner. Folders of images train in pixel space, or in a VAE's latent space
with --vae (encoded with ComfyUI's VAE, so ComfyUI must be importable: run it through
`python3 scripts/host.py run-python -m guidekit.cli.train_refiner ...`). Tensor files train on their values
(latents as the sampler outputs them; (N, D) vectors with an MLP). Neighbours are searched with FAISS in
the training space or in open_clip image features. Interrupt and rerun the same command to resume from
the checkpoint (default: OUT + '.ckpt').
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from ..guidance.losses import CLIP_MEAN, CLIP_STD
from ..postprocess import data, features, neighbours
from ..postprocess.refiner import save_refiner
from ..postprocess.train import TrainSettings, new_refiner, pool_equal, tensor_sha256, train_refiner


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m guidekit.cli.train_refiner", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generated", type=Path, nargs="+", required=True, help="generated samples (one set per scale)")
    p.add_argument("--real", type=Path, required=True, help="real samples")
    p.add_argument("--out", type=Path, required=True, help="the refiner file (.safetensors)")
    p.add_argument("--vae", type=Path, help="train in this VAE's latent space (image folders are encoded)")
    p.add_argument("--latent-format", default="", help="recorded in the file, e.g. SD15, SDXL, Flux")
    p.add_argument("--neighbour-space", choices=("samples", "open_clip"), default="samples")
    p.add_argument("--open-clip", type=Path, help="open_clip weights (.safetensors) for --neighbour-space open_clip")
    p.add_argument("--open-clip-arch", default="ViT-B-16",
                   help="open_clip model name (unless the file's metadata has a config)")
    p.add_argument("--pool", choices=features.POOLS, default="mean-patch")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--limit", type=int, help="use at most this many samples of each set")
    p.add_argument("--iterations", type=int, default=TrainSettings.iterations)
    p.add_argument("--batch-size", type=int, default=TrainSettings.batch_size)
    p.add_argument("--lr", type=float, default=TrainSettings.lr)
    p.add_argument("--ema", type=float, default=TrainSettings.ema)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", type=Path, help="resumable training state (default: OUT.ckpt)")
    p.add_argument("--checkpoint-every", type=int, default=TrainSettings.checkpoint_every)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.out.suffix != ".safetensors":
        p.error("--out must end in .safetensors")
    if args.neighbour_space == "open_clip" and args.open_clip is None:
        p.error("--neighbour-space open_clip needs --open-clip FILE")
    return args


def comfy_vae(path: Path):
    """ComfyUI's VAE for a weights file (the only part of training that needs ComfyUI)."""
    from .inprocess import import_comfy
    try:
        import_comfy(cpu=False)              # ComfyUI picks the device, as in a server
        import comfy.sd
        import comfy.utils
    except (ImportError, RuntimeError) as e:
        raise SystemExit("--vae needs ComfyUI: run through `python3 scripts/host.py run-python -m "
                         "guidekit.cli.train_refiner ...` or set COMFYUI_PATH") from e
    return comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(path)))


def load_open_clip_visual(path: Path, arch: str):
    """The vision tower of an open_clip file: the architecture by name, or from the file's 'open_clip.config'."""
    import json

    import open_clip
    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(str(path), framework="pt") as f:
        config = (f.metadata() or {}).get("open_clip.config")
    model = (open_clip.CLIP(**json.loads(config)) if config
             else open_clip.create_model(arch, pretrained=None, device="cpu"))
    model.load_state_dict(load_file(str(path)))
    size = model.visual.image_size
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    return (model.visual.eval(), (size, size) if isinstance(size, int) else tuple(size),
            tuple(cfg.get("mean", CLIP_MEAN)), tuple(cfg.get("std", CLIP_STD)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    gen_sets, size, images = [], None, None
    for path in args.generated:
        x, is_images = data.load_samples(path, size)
        x = x[:args.limit]
        if images is not None and is_images != images:
            raise SystemExit("--generated mixes image folders and tensor files; use one kind")
        images, size = is_images, (tuple(x.shape[-2:]) if is_images else size)
        gen_sets.append(x)
    real, real_images = data.load_samples(args.real, size if images else None)
    real = real[:args.limit]
    if real_images != images and args.vae is None:
        raise SystemExit("--generated and --real must both be image folders or both tensor files (or give --vae "
                         "to encode image folders into the generated latents' space)")
    generated = pool_equal(gen_sets, args.seed)
    gen_images = generated if images else None            # kept for open_clip features after VAE encoding
    real_imgs = real if real_images else None
    space = "vector" if generated.dim() == 2 else ("pixel" if images else "latent")
    if args.vae is not None:
        vae = comfy_vae(args.vae)
        with torch.no_grad():
            if images:
                generated = vae.encode(generated.movedim(1, -1)).float()
            if real_images:
                real = vae.encode(real.movedim(1, -1)).float()
        space = "latent"
    if args.neighbour_space == "open_clip":
        if gen_images is None or real_imgs is None:
            raise SystemExit("--neighbour-space open_clip needs image folders for --generated and --real")
        visual, isize, mean, std = load_open_clip_visual(args.open_clip, args.open_clip_arch)
        visual.to(args.device)
        q, db = (features.open_clip_features(visual, x, isize, mean, std, args.pool) for x in (gen_images, real_imgs))
    else:
        q, db = generated, real
    print(f"{generated.shape[0]} generated ({len(gen_sets)} set(s)), {real.shape[0]} real, {space} "
          f"{tuple(generated.shape[1:])}; neighbours: {args.neighbour_space}, k = {args.k}", flush=True)
    nbrs = neighbours.top_k(q, db, args.k)
    refiner = new_refiner(real)
    settings = TrainSettings(iterations=args.iterations, batch_size=args.batch_size, lr=args.lr, ema=args.ema,
                             seed=args.seed, checkpoint_every=args.checkpoint_every)
    checkpoint = args.checkpoint or args.out.with_name(args.out.name + ".ckpt")
    bar = tqdm(total=args.iterations, desc="refiner", disable=args.quiet, mininterval=2.0, dynamic_ncols=True)

    def on_step(step: int, loss: float) -> None:
        bar.n = step
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.update(0)

    result = train_refiner(refiner, generated, real, nbrs, settings, checkpoint, args.device, on_step)
    bar.close()
    command = "python -m guidekit.cli.train_refiner " + shlex.join(sys.argv[1:] if argv is None else argv)
    save_refiner(args.out, result.refiner, space, tuple(generated.shape[1:]), args.latent_format,
                 neighbour_space=args.neighbour_space if args.neighbour_space == "samples"
                 else f"open_clip {args.open_clip.name} {args.pool}",
                 k=args.k, iterations=result.iterations, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                 sets=len(gen_sets), command=command, final_loss=result.losses[-1],
                 data_sha256={"generated": [tensor_sha256(x) for x in gen_sets], "real": tensor_sha256(real)})
    print(f"saved {args.out} ({result.iterations} iterations, loss {result.losses[0]:.4g} → {result.losses[-1]:.4g}, "
          f"{result.seconds:.0f} s this run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
