"""Headless runner: start ComfyUI on loopback, run a workflow, save its images, stop.

    python -m guidekit.cli.run WORKFLOW.json [--set NODE.INPUT=VALUE ...] [--out DIR]

WORKFLOW is API format ("Export (API)") or UI format (a saved workflow or template; converted with the
server's node definitions).
NODE is a node id, a unique class_type or a unique node title; VALUE is parsed as JSON when it can
be (numbers, true/false, lists) and taken as a string otherwise. The server always stops, also on
errors; the exit status is 0 on success, 1 when ComfyUI rejects or fails the workflow, 2 for bad
input (file, JSON, --set, port) and 3 when the server does not start.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .ui_workflow import WorkflowFormatError, is_ui_format, ui_to_api

MODEL_FOLDERS = ("checkpoints", "vae", "vae_approx", "loras", "clip", "text_encoders", "diffusion_models",
                 "unet", "clip_vision", "embeddings", "upscale_models", "controlnet", "guidekit",
                 "open_clip", "guidekit_networks", "guidekit_refiners")


class RunError(Exception):
    """A failure with a one-line message for the user and the exit status it maps to."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------------------
# Workflow files

def load_workflow(path: Path) -> dict:
    """Read an API- or UI-format workflow; reject anything else and malformed JSON with a clear message."""
    if not path.is_file():
        raise RunError(f"workflow file {path} does not exist", 2)
    try:
        prompt = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RunError(f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})", 2)
    if is_ui_format(prompt):
        return prompt
    if not isinstance(prompt, dict) or not prompt or not all(
            isinstance(n, dict) and "class_type" in n for n in prompt.values()):
        raise RunError(f"{path} is neither an API-format workflow ({{node_id: {{class_type, inputs}}}}) "
                       "nor a UI-format one (nodes, links)", 2)
    return prompt


def find_node(prompt: dict, ref: str) -> str:
    """The id of the node that `ref` names: its id, else a unique class_type, else a unique title."""
    if ref in prompt:
        return ref
    for label in (lambda n: n.get("class_type"), lambda n: n.get("_meta", {}).get("title")):
        hits = [nid for nid, node in prompt.items() if label(node) == ref]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise RunError(f"--set {ref}: {len(hits)} nodes match ({', '.join(hits)}); use a node id", 2)
    raise RunError(f"--set {ref}: no node with that id, class_type or title; node ids: {', '.join(prompt)}", 2)


def apply_sets(prompt: dict, assignments: list[str]) -> dict:
    """Apply `NODE.INPUT=VALUE` overrides to a copy of the workflow."""
    prompt = json.loads(json.dumps(prompt))
    for item in assignments:
        target, eq, raw = item.partition("=")
        ref, dot, name = target.rpartition(".")
        if not eq or not dot or not ref or not name:
            raise RunError(f"--set {item!r}: expected NODE.INPUT=VALUE, e.g. --set KSampler.seed=7", 2)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        prompt[find_node(prompt, ref)].setdefault("inputs", {})[name] = value
    return prompt


# ---------------------------------------------------------------------------------------------------
# The server

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@dataclass
class ComfyServer:
    """A ComfyUI server process on 127.0.0.1 with its own output/temp/user folders (and input, if given)."""
    comfyui: Path
    models_dir: Path | None = None
    input_dir: Path | None = None     # ComfyUI's own input folder when None
    front_end_root: Path | None = None  # a frontend's static folder to serve; ComfyUI's own frontend when None
    port: int = 0
    python: str = sys.executable
    startup_timeout: float = 300.0
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="guidekit-run-")))
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "comfyui.log"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def command(self) -> list[str]:
        cmd = [self.python, str(self.comfyui / "main.py"), "--cpu", "--listen", "127.0.0.1",
               "--port", str(self.port), "--disable-auto-launch",
               "--output-directory", str(self.workdir / "output"), "--temp-directory", str(self.workdir / "temp"),
               "--user-directory", str(self.workdir / "user"), "--database-url", "sqlite:///:memory:"]
        if self.models_dir:
            cmd += ["--extra-model-paths-config", str(self.write_model_paths())]
        if self.input_dir:
            cmd += ["--input-directory", str(self.input_dir)]
        if self.front_end_root:
            cmd += ["--front-end-root", str(self.front_end_root)]
        return cmd

    def write_model_paths(self) -> Path:
        lines = ["guidekit:", f"  base_path: {json.dumps(str(self.models_dir))}"]
        lines += [f"  {name}: {name}" for name in MODEL_FOLDERS]
        path = self.workdir / "extra_model_paths.yaml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> "ComfyServer":
        if not (self.comfyui / "main.py").is_file():
            raise RunError(f"no ComfyUI at {self.comfyui} (no main.py): set COMFYUI_PATH or --comfyui", 2)
        if self.port == 0:
            self.port = free_port()
        elif port_in_use(self.port):
            raise RunError(f"port {self.port} on 127.0.0.1 is already in use; pick another with --port "
                           "or leave --port out to use a free one", 2)
        for sub in ("output", "temp", "user"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(self.command(), cwd=self.comfyui, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_tail()
                self.stop(keep_files=True)
                raise RunError(f"ComfyUI exited during start-up (status {self.process.returncode}); "
                               f"last lines of its log:\n{tail}", 3)
            if self._ready():
                return self
            time.sleep(0.25)
        self.stop(keep_files=True)
        raise RunError(f"ComfyUI did not answer on {self.url} within {self.startup_timeout:.0f} s; "
                       f"log: {self.log_path}", 3)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/system_stats", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self, keep_files: bool = False) -> None:
        """Stop the server and every process it started (its own process group); remove its folder."""
        self._kill()
        if not keep_files:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _kill(self) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def object_info(self) -> dict:
        with urllib.request.urlopen(self.url + "/object_info", timeout=60) as r:
            return json.load(r)

    def to_api(self, workflow: dict) -> dict:
        """The workflow in API format (UI-format files are converted with this server's node definitions)."""
        if not is_ui_format(workflow):
            return workflow
        try:
            return ui_to_api(workflow, self.object_info())
        except WorkflowFormatError as err:
            raise RunError(str(err), 2)

    def free(self) -> None:
        """Drop ComfyUI's cached node outputs and unload models, so the next run recomputes everything."""
        req = urllib.request.Request(self.url + "/free", data=json.dumps(
            {"free_memory": True, "unload_models": True}).encode(), headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=10).close()

    def run(self, prompt: dict, out_dir: Path | None = None, timeout: float = 1800.0,
            progress: bool = False) -> "RunResult":
        return asyncio.run(_run_prompt(self, prompt, out_dir, timeout, progress))


@dataclass
class RunResult:
    prompt_id: str
    outputs: dict                     # ComfyUI history outputs, per node id
    images: list[Path]                # files written to out_dir
    seconds: float


def describe_rejection(body: dict) -> str:
    """One line from ComfyUI's /prompt validation error: the main message and each node's errors."""
    err = body.get("error", {})
    parts = [err.get("message", "workflow rejected") + (f": {err['details']}" if err.get("details") else "")]
    for nid, info in (body.get("node_errors") or {}).items():
        msgs = "; ".join(f"{e.get('message', '')}: {e.get('details', '')}".strip(": ")
                         for e in info.get("errors", []))
        parts.append(f"node {nid} ({info.get('class_type', '?')}): {msgs}")
    return " | ".join(parts)


async def _run_prompt(server: ComfyServer, prompt: dict, out_dir: Path | None, timeout: float,
                      progress: bool) -> RunResult:
    import aiohttp

    client_id = uuid.uuid4().hex
    t0 = time.monotonic()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{server.url}/ws?clientId={client_id}", max_msg_size=0) as ws:
            async with session.post(f"{server.url}/prompt", json={"prompt": prompt, "client_id": client_id}) as r:
                body = await r.json(content_type=None)
                if r.status != 200:
                    raise RunError("ComfyUI rejected the workflow: " + describe_rejection(body))
            prompt_id = body["prompt_id"]
            await _follow(ws, prompt_id, timeout, progress)
        if body.get("node_errors"):          # ComfyUI ran the outputs that passed validation, not these
            raise RunError("ComfyUI rejected part of the workflow: " + describe_rejection(body))
        outputs = await _history_outputs(session, server.url, prompt_id)
        images: list[Path] = []
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            for nid, node_out in outputs.items():
                for img in node_out.get("images", []):
                    params = {k: img.get(k, "") for k in ("filename", "subfolder", "type")}
                    async with session.get(f"{server.url}/view", params=params) as r:
                        r.raise_for_status()
                        dest = out_dir / img["filename"]
                        dest.write_bytes(await r.read())
                        images.append(dest)
    return RunResult(prompt_id, outputs, images, time.monotonic() - t0)


async def _history_outputs(session, url: str, prompt_id: str, wait: float = 30.0) -> dict:
    """The prompt's outputs from /history (ComfyUI records them just after it reports success)."""
    deadline = time.monotonic() + wait
    while True:
        async with session.get(f"{url}/history/{prompt_id}") as r:
            entry = (await r.json()).get(prompt_id)
        if entry is not None:
            return entry.get("outputs", {})
        if time.monotonic() > deadline:
            raise RunError(f"ComfyUI finished prompt {prompt_id} but kept no history of it")
        await asyncio.sleep(0.1)


async def _follow(ws, prompt_id: str, timeout: float, progress: bool) -> None:
    """Read websocket messages until this prompt succeeds, fails or is interrupted."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RunError(f"workflow did not finish within {timeout:.0f} s")
        try:
            msg = await ws.receive(timeout=remaining)
        except asyncio.TimeoutError:
            continue
        if msg.type.name in ("CLOSE", "CLOSED", "CLOSING", "ERROR"):
            raise RunError("ComfyUI closed the websocket before the workflow finished")
        if msg.type.name != "TEXT":
            continue                                  # binary preview frames
        event = json.loads(msg.data)
        kind, data = event.get("type"), event.get("data", {})
        if data.get("prompt_id") not in (None, prompt_id):
            continue
        if kind == "execution_error":
            raise RunError(f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                           f"{data.get('exception_type', 'error')}: {str(data.get('exception_message', '')).strip()}")
        if kind == "execution_interrupted":
            raise RunError(f"workflow interrupted at node {data.get('node_id')} ({data.get('node_type')})")
        if kind == "progress" and progress:
            print(f"  node {data.get('node')}: step {data.get('value')}/{data.get('max')}", flush=True)
        if kind == "execution_success" or (kind == "executing" and data.get("node") is None
                                           and data.get("prompt_id") == prompt_id):
            return


# ---------------------------------------------------------------------------------------------------
# Command line

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m guidekit.cli.run", description=__doc__.split("\n\n")[0])
    p.add_argument("workflow", type=Path, help="workflow JSON, API or UI format")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="override an input (repeatable), e.g. --set KSampler.seed=7")
    p.add_argument("--out", type=Path, default=Path("guidekit-out"), help="folder for output images")
    p.add_argument("--comfyui", type=Path, default=os.environ.get("COMFYUI_PATH"),
                   help="ComfyUI folder (default: $COMFYUI_PATH)")
    p.add_argument("--models-dir", type=Path, default=os.environ.get("GUIDEKIT_MODELS_DIR"),
                   help="extra models folder with checkpoints/, loras/, ... (default: $GUIDEKIT_MODELS_DIR)")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds the workflow may take")
    p.add_argument("--quiet", action="store_true", help="print only errors and output paths")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    server = None
    failed = True
    try:
        workflow = load_workflow(args.workflow)
        ui_format = is_ui_format(workflow)
        if not ui_format:
            workflow = apply_sets(workflow, args.sets)   # check --set before paying for a server start
        if args.comfyui is None:
            raise RunError("no ComfyUI given: set COMFYUI_PATH or pass --comfyui", 2)
        server = ComfyServer(Path(args.comfyui), args.models_dir, port=args.port)
        if not args.quiet:
            print(f"starting ComfyUI from {server.comfyui} on 127.0.0.1 ...", flush=True)
        t0 = time.monotonic()
        server.start()
        if not args.quiet:
            print(f"ComfyUI ready on {server.url} in {time.monotonic() - t0:.1f} s; running {args.workflow.name}",
                  flush=True)
        prompt = apply_sets(server.to_api(workflow), args.sets) if ui_format else workflow
        result = server.run(prompt, args.out, args.timeout, progress=not args.quiet)
        if not args.quiet:
            print(f"workflow finished in {result.seconds:.1f} s")
        for image in result.images:
            print(image)
        if not result.images and not args.quiet:
            print("the workflow produced no images")
        failed = False
        return 0
    except RunError as err:
        print(f"guidekit.cli.run: error: {err}", file=sys.stderr)
        if server is not None and server.process is not None:
            print(f"guidekit.cli.run: ComfyUI's log: {server.log_path}", file=sys.stderr)
        return err.status
    except KeyboardInterrupt:
        print("guidekit.cli.run: interrupted", file=sys.stderr)
        return 130
    finally:
        if server is not None:
            server.stop(keep_files=failed)


if __name__ == "__main__":
    sys.exit(main())
