"""Train a flow refiner (Zhao & Schwing 2025) from generated samples and real data.

    python -m guidekit.cli.train_refiner --generated GEN [GEN ...] --real REAL \
--out models/guidekit_refiners/NAME.safetensors
        [--vae VAE.safetensors] [--latent-format SD15] [--neighbour-space samples|open_clip]
        [--open-clip FILE --open-clip-arch ViT-B-16 --pool mean-patch|pooled]
        [--k 20] [--index auto|flat|ivf] [--feature-cache DIR | --no-feature-cache]
        [--iterations 4000] [--batch-size 256] [--lr 3e-4] [--ema 0.999] [--seed 0]
        [--checkpoint FILE] [--checkpoint-every 500] [--device cpu|cuda]

GEN and REAL are folders of images or tensor files (.safetensors with one tensor, or ComfyUI's .latent
from Save Latent). Several GEN sets (e.g. one per guidance scale) are pooled with equal counts: the
paper's one-for-all-scales refiner. Folders of images train in pixel space, or in a VAE's latent space
with --vae (encoded with ComfyUI's VAE, so ComfyUI must be importable: run it through
`python3 scripts/host.py run-python -m guidekit.cli.train_refiner ...`). Tensor files train on their values
(latents as the sampler outputs them; (N, D) vectors with an MLP). Neighbours are searched with FAISS in
the training space or in open_clip image features. Interrupt and rerun the same command to resume from
the checkpoint (default: OUT + '.ckpt').

Neighbour search: exact below 100,000 real samples, an IVF index above (--index auto; nprobe calibrated
to 95 % top-k recall against the exact search); open_clip features are computed in batches and cached in
--feature-cache (default: OUT + '.features'). Data-parallel on several processes (one per GPU, or CPU
processes with gloo) with the same command under torchrun:

    torchrun --standalone --nproc_per_node 2 -m guidekit.cli.train_refiner --generated GEN --real REAL --out OUT ...

--batch-size is the global batch (divisible by the number of processes); the result equals one process's
for the same seed up to float rounding, and the checkpoint resumes at any number of processes.
"""
from __future__ import annotations

import argparse
import os
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
    p.add_argument("--index", choices=neighbours.INDEXES, default="auto",
                   help=f"neighbour index: exact (flat), IVF, or auto (IVF from {neighbours.IVF_FROM:,} real samples)")
    p.add_argument("--feature-cache", type=Path, help="folder for cached open_clip features (default: OUT.features)")
    p.add_argument("--no-feature-cache", action="store_true", help="compute open_clip features every run")
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


def start_distributed(device: str) -> tuple[int, int, str]:
    """(world size, rank, device) under torchrun (WORLD_SIZE > 1): gloo on the CPU, NCCL on one GPU per process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 1, 0, device
    import torch.distributed as dist
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_world_size(), dist.get_rank(), device


def from_rank_0(x: torch.Tensor | None, shape: tuple[int, ...], device: str) -> torch.Tensor:
    """Rank 0's int64 tensor on every rank (x is None on the others)."""
    import torch.distributed as dist
    buf = (x if x is not None else torch.empty(shape, dtype=torch.int64)).to(device)
    dist.broadcast(buf, 0)
    return buf.cpu()


def search_neighbours(args, q: torch.Tensor, db: torch.Tensor, verbose: bool) -> neighbours.Search:
    found = neighbours.search(q, db, args.k, index=args.index)
    if verbose:
        how = (f"IVF, {found.nlist} cells, nprobe {found.nprobe}, top-{args.k} recall {found.recall:.3f} "
               f"against exact search on {min(q.shape[0], neighbours.CALIBRATION_QUERIES)} queries"
               if found.index == "ivf" else "exact")
        print(f"neighbours: {how}" + (f", {found.gpus} GPU(s)" if found.gpus else ""), flush=True)
    return found


def clip_features(args, gen_images: torch.Tensor, real_imgs: torch.Tensor, verbose: bool):
    """open_clip features of both image sets, in batches with a progress bar, cached on disk by their inputs."""
    cache = None if args.no_feature_cache else (args.feature_cache or args.out.with_name(args.out.name + ".features"))
    visual, isize, mean, std = load_open_clip_visual(args.open_clip, args.open_clip_arch)
    visual.to(args.device)
    weights = features.file_sha256(args.open_clip)
    out = []
    for name, x in (("generated", gen_images), ("real", real_imgs)):
        key = features.cache_key("open_clip", weights, args.open_clip_arch, args.pool, isize, mean, std, x)

        def compute(x=x, name=name):
            with tqdm(total=x.shape[0], desc=f"features ({name})", unit="img", disable=not verbose,
                      mininterval=2.0, dynamic_ncols=True) as bar:
                return features.open_clip_features(visual, x, isize, mean, std, args.pool, progress=bar.update)
        f, hit = features.cached(cache, key, compute)
        if hit and verbose:
            print(f"features ({name}): cached in {cache}", flush=True)
        out.append(f)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    world, rank, args.device = start_distributed(args.device)
    try:
        return _main(args, argv, world, rank)
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def _main(args, argv: list[str] | None, world: int, rank: int) -> int:
    verbose = rank == 0 and not args.quiet
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
    if args.neighbour_space == "open_clip" and (gen_images is None or real_imgs is None):
        raise SystemExit("--neighbour-space open_clip needs image folders for --generated and --real")
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} is the global batch: it must be divisible by the "
                         f"{world} processes")
    if rank == 0:
        print(f"{generated.shape[0]} generated ({len(gen_sets)} set(s)), {real.shape[0]} real, {space} "
              f"{tuple(generated.shape[1:])}; neighbours: {args.neighbour_space}, k = {args.k}"
              + (f"; {world} processes" if world > 1 else ""), flush=True)
    found = None
    if rank == 0:                 # one search; the other processes receive its result
        q, db = (clip_features(args, gen_images, real_imgs, verbose) if args.neighbour_space == "open_clip"
                 else (generated, real))
        found = search_neighbours(args, q, db, verbose)
    nbrs = found.indices if world == 1 else from_rank_0(found.indices if found else None,
                                                        (generated.shape[0], args.k), args.device)
    torch.manual_seed(args.seed)                          # the initial weights (DDP also sends rank 0's)
    refiner = new_refiner(real)
    settings = TrainSettings(iterations=args.iterations, batch_size=args.batch_size, lr=args.lr, ema=args.ema,
                             seed=args.seed, checkpoint_every=args.checkpoint_every)
    checkpoint = args.checkpoint or args.out.with_name(args.out.name + ".ckpt")
    bar = tqdm(total=args.iterations, desc="refiner", disable=not verbose, mininterval=2.0, dynamic_ncols=True)

    def on_step(step: int, loss: float) -> None:
        bar.n = step
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.update(0)

    result = train_refiner(refiner, generated, real, nbrs, settings, checkpoint, args.device, on_step)
    bar.close()
    if rank != 0:
        return 0
    command = "python -m guidekit.cli.train_refiner " + shlex.join(sys.argv[1:] if argv is None else argv)
    save_refiner(args.out, result.refiner, space, tuple(generated.shape[1:]), args.latent_format,
                 neighbour_space=args.neighbour_space if args.neighbour_space == "samples"
                 else f"open_clip {args.open_clip.name} {args.pool}",
                 k=args.k, iterations=result.iterations, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                 sets=len(gen_sets), command=command, final_loss=result.losses[-1], processes=world,
                 neighbour_index={"index": found.index, "nlist": found.nlist, "nprobe": found.nprobe,
                                  "recall": found.recall},
                 data_sha256={"generated": [tensor_sha256(x) for x in gen_sets], "real": tensor_sha256(real)})
    print(f"saved {args.out} ({result.iterations} iterations, loss {result.losses[0]:.4g} → {result.losses[-1]:.4g}, "
          f"{result.seconds:.0f} s this run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
