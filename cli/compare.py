"""Compare guidance methods on one seed: a labelled grid image with each method's time per step.

    python -m guidekit.cli.compare [--checkpoint NAME] [--prompt TEXT] [--negative TEXT] [--methods cfg,pag,seg,...]
                               [--seed 0] [--steps 20] [--cfg 5.0] [--width 512] [--height 512] [--out DIR]

Runs one txt2img workflow per method through a headless ComfyUI (the same runner as `python -m
guidekit.cli.run`): the checkpoint's model goes through the method's GuideKit node (its default settings,
read from the server) into KSampler. Writes compare.png (a labelled row of images: method, seconds per
step) and compare.json to --out. Without --checkpoint it uses the embedded default model
(guidekit-thin-sd15.safetensors, a random-weight test model: the images show noise; pass a real
checkpoint from your ComfyUI's models/checkpoints for real pictures). Time per step is the run's wall
time over the steps, after one untimed warm-up run (another seed, 1 step) that loads the model and
encodes the prompt.

With --server URL (repeatable) it starts nothing and spreads the methods round-robin over those running
servers (the runner's `run_prompts`: each server warmed up once, a server that does not answer left out and
its methods run on the next). Servers sharing one machine's cores slow each other: time per step is then
not the single-server figure.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

from PIL import Image

from ..postprocess.grid import add_ratios, labelled_grid, method_label
from .run import ComfyClient, ComfyServer, RunError, ServerUnavailable, remote_server, run_prompts

DEFAULT_CHECKPOINT = "guidekit-thin-sd15.safetensors"


def server_methods(server: ComfyClient) -> dict[str, dict]:
    """The methods the server's GuideKit offers: name → {"node", "inputs", "cfg"} (its node classes' COMPARE)."""
    try:
        with urllib.request.urlopen(server.url + "/guidekit/costs", timeout=30) as r:
            return json.load(r)["methods"]
    except (OSError, KeyError, ValueError) as e:
        raise RunError(f"the server's GuideKit does not list its compare methods ({e}): is GuideKit installed in "
                       "its custom_nodes?", 1) from e


def first_answer(servers: list[ComfyClient], ask):
    """ask(server) of the first server that answers (the others may be down); one server: its own error."""
    if len(servers) == 1:
        return ask(servers[0])
    last = None
    for server in servers:
        try:
            return ask(server)
        except (OSError, RunError) as err:
            last = err
    raise ServerUnavailable(f"no ComfyUI server answered ({last})", 3)


def base_prompt(checkpoint: str, prompt: str, negative: str, seed: int, steps: int, cfg: float,
                width: int, height: int) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": cfg, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0, "model": ["1", 0],
                                                   "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0]}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"filename_prefix": "compare", "images": ["6", 0]}},
    }


def node_defaults(object_info: dict, node: str) -> dict:
    """The default of every required widget input of a node, as the server defines it."""
    if node not in object_info:
        raise RunError(f"the server has no node {node!r}: is GuideKit installed in its custom_nodes?", 1)
    out = {}
    for name, spec in object_info[node]["input"].get("required", {}).items():
        kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
        if isinstance(kind, list):                                   # a combo: its first option
            out[name] = options.get("default", kind[0] if kind else None)
        elif kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
            out[name] = options.get("default", options.get("options", [None])[0] if kind == "COMBO" else None)
    return out


def method_prompt(base: dict, method: str, object_info: dict, cfg: float, methods: dict[str, dict]) -> dict:
    """The base workflow with the method's node between the checkpoint and KSampler."""
    if method not in methods:
        raise RunError(f"unknown method(s) [{method!r}]; choose from {', '.join(methods)}", 2)
    spec = methods[method]
    prompt = json.loads(json.dumps(base))
    prompt["5"]["inputs"]["cfg"] = cfg if spec["cfg"] is None else spec["cfg"]
    if spec["node"] is not None:
        prompt["100"] = {"class_type": spec["node"], "inputs": {**node_defaults(object_info, spec["node"]),
                                                                **spec["inputs"], "model": ["1", 0]}}
        prompt["5"]["inputs"]["model"] = ["100", 0]
    return prompt


def compare(server: ComfyClient | list[ComfyClient], methods: list[str], out: Path,
            checkpoint: str = DEFAULT_CHECKPOINT, prompt: str = "a photo of a red apple on a wooden table",
            negative: str = "", seed: int = 0, steps: int = 20, cfg: float = 5.0, width: int = 512,
            height: int = 512) -> dict:
    """Run every method on one seed (on one server, or spread over a list of them); write compare.png and
    compare.json to `out`; return the record."""
    servers = list(server) if isinstance(server, (list, tuple)) else [server]
    info, table = first_answer(servers, lambda s: (s.object_info(), server_methods(s)))
    base = base_prompt(checkpoint, prompt, negative, seed, steps, cfg, width, height)
    prompts = {m: method_prompt(base, m, info, cfg, table) for m in methods}    # bad names fail before any run
    warmup = json.loads(json.dumps(prompts[methods[0]]))                 # loads the model, not timed; another
    warmup["5"]["inputs"].update(seed=seed + 1, steps=1)                 # seed, so no timed run is a cache hit
    if len(servers) == 1:
        servers[0].run(warmup, out / "warmup")
        results = [servers[0].run(p, out / method) for method, p in prompts.items()]
    else:                                                                # one warm-up per server, then fan out
        _raise_first(run_prompts(servers, [warmup] * len(servers), [out / "warmup"] * len(servers), depth=1))
        results = _raise_first(run_prompts(servers, list(prompts.values()), [out / m for m in prompts], depth=1))
    rows = []
    for (method, p), result in zip(prompts.items(), results):
        if not result.images:
            raise RunError(f"method {method!r} produced no image", 1)
        rows.append({"method": method, "image": os.path.relpath(result.images[0], out), "seconds": result.seconds,
                     "seconds_per_step": result.seconds / steps, "node": table[method]["node"],
                     "cfg": p["5"]["inputs"]["cfg"]} | ({"server": result.server} if len(servers) > 1 else {}))
    add_ratios(rows)
    panels = []
    for r in rows:
        with Image.open(out / r["image"]) as im:
            panels.append((method_label(r["method"], r["seconds_per_step"], r["vs_cfg"]), im.copy()))
    grid = out / "compare.png"
    labelled_grid(panels).save(grid)
    record = {"checkpoint": checkpoint, "prompt": prompt, "negative": negative, "seed": seed, "steps": steps,
              "cfg": cfg, "size": [width, height], "grid": grid.name, "methods": rows}
    (out / "compare.json").write_text(json.dumps(record, indent=1))
    return record


def _raise_first(results: list) -> list:
    for result in results:
        if isinstance(result, RunError):
            raise result
    return results


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m guidekit.cli.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="a file in models/checkpoints")
    p.add_argument("--prompt", default="a photo of a red apple on a wooden table")
    p.add_argument("--negative", default="")
    p.add_argument("--methods", default="cfg,pag,seg,sag",
                   help="comma-separated: cfg and the methods GuideKit's nodes offer "
                        "(pag, pag-only, seg, sag, icg, tsg)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--out", type=Path, default=Path("guidekit-out") / "compare")
    p.add_argument("--comfyui", type=Path, default=os.environ.get("COMFYUI_PATH"))
    p.add_argument("--models-dir", type=Path, default=os.environ.get("GUIDEKIT_MODELS_DIR"))
    p.add_argument("--server", dest="servers", action="append", default=[], metavar="URL",
                   help="an already-running ComfyUI with GuideKit (repeatable: methods spread over the servers)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        print("guidekit.cli.compare: error: no methods given (--methods cfg,pag,...)", file=sys.stderr)
        return 2
    if args.comfyui is None and not args.servers:
        print("guidekit.cli.compare: error: no ComfyUI given: set COMFYUI_PATH, pass --comfyui or --server URL",
              file=sys.stderr)
        return 2
    server = None
    try:
        if args.servers:
            servers = [remote_server(address) for address in args.servers]
            print(f"comparing {', '.join(methods)} on {', '.join(s.url for s in servers)}", flush=True)
        else:
            server = ComfyServer(Path(args.comfyui), args.models_dir)
            t0 = time.monotonic()
            server.start()
            print(f"ComfyUI ready in {time.monotonic() - t0:.1f} s; comparing {', '.join(methods)}", flush=True)
            servers = [server]
        offered = first_answer(servers, server_methods)
        unknown = [m for m in methods if m not in offered]
        if unknown:
            raise RunError(f"unknown method(s) {unknown}; choose from {', '.join(offered)}", 2)
        record = compare(servers if len(servers) > 1 else servers[0], methods, args.out, args.checkpoint,
                         args.prompt, args.negative, args.seed, args.steps, args.cfg, args.width, args.height)
    except RunError as err:
        print(f"guidekit.cli.compare: error: {err}", file=sys.stderr)
        return err.status
    finally:
        if server is not None:
            server.stop()
    for r in record["methods"]:
        print(f"{r['method']:10s} {r['seconds_per_step']:.3f} s/step"
              + (f"  {r['vs_cfg']:.2f}x CFG" if r["vs_cfg"] else ""))
    print(args.out / record["grid"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
