"""Headless runner: start ComfyUI on loopback, run a workflow, save its images, stop.

    python -m guidekit.cli.run WORKFLOW.json [--set NODE.INPUT=VALUE ...] [--out DIR]
    python -m guidekit.cli.run WORKFLOW.json [WORKFLOW.json ...] [--repeat N] \
        --server http://127.0.0.1:8188 --server http://127.0.0.1:8189 [--out DIR]

WORKFLOW is API format ("Export (API)") or UI format (a saved workflow or template; converted with the
server's node definitions). With --server the runner starts nothing and uses those running ComfyUI servers:
the runs (every workflow, each --repeat times with its seed inputs + 0, 1, ...) are queued round-robin on
the servers' own queues (/prompt, at most two queued per server at a time); a run whose server does not answer
(connection refused or lost, HTTP 5xx) goes to the next server, a workflow error is reported, not retried.
Several runs save their images in one subfolder of --out each.
NODE is a node id, a unique class_type or a unique node title; VALUE is parsed as JSON when it can
be (numbers, true/false, lists) and taken as a string otherwise. The server always stops, also on
errors; the exit status is 0 on success, 1 when ComfyUI rejects or fails the workflow, 2 for bad
input (file, JSON, --set, port, --server) and 3 when the server does not start (or no --server answers).
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


class ServerUnavailable(RunError):
    """The server did not answer (connection refused or lost, a 5xx): the prompt may run on another server."""


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


class ComfyClient:
    """What the runner asks of a ComfyUI server at `self.url`: node definitions, conversion, /free, one prompt."""
    url: str

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
class RemoteServer(ComfyClient):
    """An already-running ComfyUI (e.g. http://127.0.0.1:8188): used as it is, never started or stopped."""
    address: str

    @property
    def url(self) -> str:
        return self.address.rstrip("/")


def remote_server(address: str) -> RemoteServer:
    if not address.startswith(("http://", "https://")) or len(address.split("://", 1)[1].strip("/")) == 0:
        raise RunError(f"--server {address!r}: expected a ComfyUI address such as http://127.0.0.1:8188", 2)
    return RemoteServer(address)


@dataclass
class ComfyServer(ComfyClient):
    """A ComfyUI server process on 127.0.0.1 with its own output/temp/user folders (and input, if given)."""
    comfyui: Path
    models_dir: Path | None = None
    input_dir: Path | None = None     # ComfyUI's own input folder when None
    front_end_root: Path | None = None  # a frontend's static folder to serve; ComfyUI's own frontend when None
    custom_nodes: Path | None = None  # an extra folder of custom-node packages, beside ComfyUI's own
    port: int = 0
    python: str = sys.executable
    startup_timeout: float = 300.0
    threads: int | None = None        # CPU threads for torch (OMP/MKL); torch's default (every core) when None
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
        if self.models_dir or self.custom_nodes:
            cmd += ["--extra-model-paths-config", str(self.write_model_paths())]
        if self.input_dir:
            cmd += ["--input-directory", str(self.input_dir)]
        if self.front_end_root:
            cmd += ["--front-end-root", str(self.front_end_root)]
        return cmd

    def write_model_paths(self) -> Path:
        """ComfyUI's extra_model_paths.yaml for the models folder and the extra custom-node folder."""
        lines = []
        if self.models_dir:
            lines += ["guidekit:", f"  base_path: {json.dumps(str(self.models_dir))}"]
            lines += [f"  {name}: {name}" for name in MODEL_FOLDERS]
        if self.custom_nodes:
            lines += ["guidekit_custom_nodes:", f"  custom_nodes: {json.dumps(str(self.custom_nodes))}"]
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
        env = None
        if self.threads:
            env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        self.process = subprocess.Popen(self.command(), cwd=self.comfyui, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True, env=env)
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


@dataclass
class RunResult:
    prompt_id: str
    outputs: dict                     # ComfyUI history outputs, per node id
    images: list[Path]                # files written to out_dir
    seconds: float                    # from the start of execution (after any queue wait) to the images saved
    server: str = ""                  # the address of the server that ran it


def describe_rejection(body: dict) -> str:
    """One line from ComfyUI's /prompt validation error: the main message and each node's errors."""
    err = body.get("error", {})
    parts = [err.get("message", "workflow rejected") + (f": {err['details']}" if err.get("details") else "")]
    for nid, info in (body.get("node_errors") or {}).items():
        msgs = "; ".join(f"{e.get('message', '')}: {e.get('details', '')}".strip(": ")
                         for e in info.get("errors", []))
        parts.append(f"node {nid} ({info.get('class_type', '?')}): {msgs}")
    return " | ".join(parts)


async def _run_prompt(server: ComfyClient, prompt: dict, out_dir: Path | None, timeout: float,
                      progress: bool) -> RunResult:
    """Queue the prompt on the server (POST /prompt), follow it on the websocket, save its images from /view.
    ServerUnavailable when the server does not answer or goes away, RunError when the workflow fails."""
    import aiohttp
    try:
        return await _queue_and_follow(server, prompt, out_dir, timeout, progress)
    except aiohttp.ClientResponseError as err:       # e.g. the websocket handshake answered with a 5xx
        raise ServerUnavailable(f"ComfyUI at {server.url} answered {err.request_info.url.path} with HTTP "
                                f"{err.status} ({err.message})") from err
    except (aiohttp.ClientError, ConnectionError) as err:
        raise ServerUnavailable(f"ComfyUI at {server.url} did not answer ({type(err).__name__}: {err})") from err


async def _queue_and_follow(server: ComfyClient, prompt: dict, out_dir: Path | None, timeout: float,
                            progress: bool) -> RunResult:
    import aiohttp

    client_id = uuid.uuid4().hex
    t0 = time.monotonic()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{server.url}/ws?clientId={client_id}", max_msg_size=0) as ws:
            async with session.post(f"{server.url}/prompt", json={"prompt": prompt, "client_id": client_id}) as r:
                if r.status >= 500:
                    raise ServerUnavailable(f"ComfyUI at {server.url} answered /prompt with HTTP {r.status}")
                body = await r.json(content_type=None)
                if r.status != 200:
                    raise RunError("ComfyUI rejected the workflow: " + describe_rejection(body))
            prompt_id = body["prompt_id"]
            t0 = await _follow(ws, prompt_id, timeout, progress) or t0
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
    return RunResult(prompt_id, outputs, images, time.monotonic() - t0, server.url)


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


async def _follow(ws, prompt_id: str, timeout: float, progress: bool) -> float | None:
    """Read websocket messages until this prompt succeeds, fails or is interrupted; return when it started.

    `timeout` bounds the wait in the server's queue and, again, the execution from its start."""
    deadline, started = time.monotonic() + timeout, None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RunError(f"workflow did not finish within {timeout:.0f} s")
        try:
            msg = await ws.receive(timeout=remaining)
        except asyncio.TimeoutError:
            continue
        if msg.type.name in ("CLOSE", "CLOSED", "CLOSING", "ERROR"):
            raise ServerUnavailable("ComfyUI closed the websocket before the workflow finished")
        if msg.type.name != "TEXT":
            continue                                  # binary preview frames
        event = json.loads(msg.data)
        kind, data = event.get("type"), event.get("data", {})
        if data.get("prompt_id") not in (None, prompt_id):
            continue
        if kind == "execution_start" and data.get("prompt_id") == prompt_id and started is None:
            started = time.monotonic()
            deadline = started + timeout
        if kind == "execution_error":
            raise RunError(f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                           f"{data.get('exception_type', 'error')}: {str(data.get('exception_message', '')).strip()}")
        if kind == "execution_interrupted":
            raise RunError(f"workflow interrupted at node {data.get('node_id')} ({data.get('node_type')})")
        if kind == "progress" and progress:
            print(f"  node {data.get('node')}: step {data.get('value')}/{data.get('max')}", flush=True)
        if kind == "execution_success" or (kind == "executing" and data.get("node") is None
                                           and data.get("prompt_id") == prompt_id):
            return started


# ---------------------------------------------------------------------------------------------------
# Several servers: round-robin over ComfyUI's own queues, retry on another server when one does not answer

def run_prompts(servers: list[ComfyClient], prompts: list[dict], out_dirs: list[Path | None],
                timeout: float = 1800.0, progress: bool = False, depth: int = 2,
                log=None) -> list[RunResult | RunError]:
    """Run the prompts over the servers: prompt i is queued on server i mod n (at most `depth` of them queued on
    a server at once, through its /prompt queue). A server that does not answer (ServerUnavailable) is left out
    for the rest of the call and its prompts go to the next server; a workflow error is the prompt's result and
    is not retried. Returns, in prompt order, each prompt's RunResult or its RunError."""
    if not servers:
        raise ValueError("run_prompts needs at least one server")
    return asyncio.run(_run_all(servers, prompts, out_dirs, timeout, progress, depth, log or (lambda _: None)))


async def _run_all(servers, prompts, out_dirs, timeout, progress, depth, log):
    n, down = len(servers), set()
    gates = [asyncio.Semaphore(depth) for _ in servers]

    async def one(i: int, prompt: dict, out_dir: Path | None) -> RunResult | RunError:
        last = None
        for s in ((i + step) % n for step in range(n)):
            if s in down:
                continue
            async with gates[s]:
                if s in down:
                    continue
                try:
                    return await _run_prompt(servers[s], prompt, out_dir, timeout, progress)
                except ServerUnavailable as err:
                    down.add(s)
                    last = err
                    log(f"{servers[s].url} did not answer, left out from now on ({err})")
                except RunError as err:
                    return err
        return ServerUnavailable(f"no server answered for prompt {i + 1}" + (f"; last: {last}" if last else ""), 3)

    return await asyncio.gather(*(one(i, p, d) for i, (p, d) in enumerate(zip(prompts, out_dirs))))


SEED_INPUTS = ("seed", "noise_seed")


def with_seed_offset(prompt: dict, offset: int) -> dict:
    """A copy whose integer seed inputs (seed, noise_seed) are increased by `offset` (the runs of --repeat)."""
    prompt = json.loads(json.dumps(prompt))
    for node in prompt.values():
        inputs = node.get("inputs", {})
        for name in SEED_INPUTS:
            if isinstance(inputs.get(name), int) and not isinstance(inputs[name], bool):
                inputs[name] += offset
    return prompt


# ---------------------------------------------------------------------------------------------------
# Command line

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m guidekit.cli.run", description=__doc__.split("\n\n")[0])
    p.add_argument("workflow", type=Path, nargs="+", help="workflow JSON, API or UI format (several: each is run)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="override an input (repeatable), e.g. --set KSampler.seed=7")
    p.add_argument("--out", type=Path, default=Path("guidekit-out"),
                   help="folder for output images (several runs: one subfolder each)")
    p.add_argument("--server", dest="servers", action="append", default=[], metavar="URL",
                   help="an already-running ComfyUI, e.g. http://127.0.0.1:8188 (repeatable: prompts are spread "
                        "round-robin over the servers' queues); nothing is started")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run each workflow N times, the r-th with its seed/noise_seed inputs + r")
    p.add_argument("--comfyui", type=Path, default=os.environ.get("COMFYUI_PATH"),
                   help="ComfyUI folder (default: $COMFYUI_PATH)")
    p.add_argument("--models-dir", type=Path, default=os.environ.get("GUIDEKIT_MODELS_DIR"),
                   help="extra models folder with checkpoints/, loras/, ... (default: $GUIDEKIT_MODELS_DIR)")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds a workflow may wait in a server's queue, and again run")
    p.add_argument("--quiet", action="store_true", help="print only errors and output paths")
    return p.parse_args(argv)


def api_prompt(servers: list[ComfyClient], workflow: dict, sets: list[str]) -> dict:
    """The workflow in API format with --set applied (UI format converted by the first server that answers)."""
    if not is_ui_format(workflow):
        return workflow
    last = None
    for server in servers:
        try:
            return apply_sets(server.to_api(workflow), sets)
        except OSError as err:
            last = err
    raise ServerUnavailable(f"no server answered /object_info to convert a UI-format workflow ({last})", 3)


def jobs(paths: list[Path], prompts: list[dict], repeat: int) -> list[tuple[str, dict]]:
    """(name, prompt) of every run: each workflow `repeat` times with its seeds offset by the run's index."""
    stems = [p.stem for p in paths]
    out = []
    for i, (path, prompt) in enumerate(zip(paths, prompts)):
        stem = path.stem if stems.count(path.stem) == 1 else f"{path.stem}-{i}"
        out += [(stem if repeat == 1 else f"{stem}-{r}", with_seed_offset(prompt, r)) for r in range(repeat)]
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    server = None
    failed = True
    try:
        workflows = [load_workflow(path) for path in args.workflow]
        workflows = [wf if is_ui_format(wf) else apply_sets(wf, args.sets)   # check --set before a server start
                     for wf in workflows]
        if args.repeat < 1:
            raise RunError(f"--repeat {args.repeat}: expected a number of runs ≥ 1", 2)
        servers: list[ComfyClient] = [remote_server(address) for address in args.servers]
        names = ", ".join(path.name for path in args.workflow)
        if servers:
            if not args.quiet:
                print(f"running {names} on {len(servers)} ComfyUI server(s): {', '.join(s.url for s in servers)}",
                      flush=True)
        else:
            if args.comfyui is None:
                raise RunError("no ComfyUI given: set COMFYUI_PATH, pass --comfyui or --server URL", 2)
            server = ComfyServer(Path(args.comfyui), args.models_dir, port=args.port)
            if not args.quiet:
                print(f"starting ComfyUI from {server.comfyui} on 127.0.0.1 ...", flush=True)
            t0 = time.monotonic()
            server.start()
            if not args.quiet:
                print(f"ComfyUI ready on {server.url} in {time.monotonic() - t0:.1f} s; running {names}", flush=True)
            servers = [server]
        runs = jobs(args.workflow, [api_prompt(servers, wf, args.sets) for wf in workflows], args.repeat)
        if len(runs) == 1 and server is not None:          # one workflow on the local server
            result = server.run(runs[0][1], args.out, args.timeout, progress=not args.quiet)
            if not args.quiet:
                print(f"workflow finished in {result.seconds:.1f} s")
            for image in result.images:
                print(image)
            if not result.images and not args.quiet:
                print("the workflow produced no images")
            failed = False
            return 0
        status = run_many(servers, runs, args)
        failed = status != 0
        return status
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


def run_many(servers: list[ComfyClient], runs: list[tuple[str, dict]], args: argparse.Namespace) -> int:
    """Several runs (or any run on --server): spread over the servers; each run's images in --out/NAME
    (--out itself for a single run). Exit status: 0, or the first failed run's."""
    def log(message: str) -> None:
        print(f"guidekit.cli.run: {message}", file=sys.stderr, flush=True)

    dirs = [args.out] if len(runs) == 1 else [args.out / name for name, _ in runs]
    t0 = time.monotonic()
    results = run_prompts(servers, [prompt for _, prompt in runs], dirs, args.timeout, log=log)
    status = 0
    for (name, _), result in zip(runs, results):
        if isinstance(result, RunError):
            print(f"guidekit.cli.run: error: {name}: {result}", file=sys.stderr)
            status = status or result.status
            continue
        if not args.quiet:
            print(f"{name}: finished on {result.server} in {result.seconds:.1f} s"
                  + ("" if result.images else "; no images"))
        for image in result.images:
            print(image)
    if not args.quiet:
        done = [r for r in results if isinstance(r, RunResult)]
        per_server = ", ".join(f"{s.url} {sum(r.server == s.url for r in done)}" for s in servers)
        print(f"{len(done)}/{len(runs)} runs finished in {time.monotonic() - t0:.1f} s ({per_server})")
    return status


if __name__ == "__main__":
    sys.exit(main())
