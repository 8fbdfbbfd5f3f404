"""Run tritonserver on a repository: find it, set up its environment, wait until it is
ready, stop it cleanly. Standard library only (runs from the main environment).

The server binary comes from the serving environment (.venv-serving, made by
scripts/setup_serving.sh: nvidia-pytriton bundles tritonserver with the Python backend),
or ``$TRITONSERVER`` / ``tritonserver`` on PATH for a full Triton install. For the
bundled build three things are arranged here, because the Python-backend stub is a
separate process that links libpython itself:

- a backend folder holding the Python backend and the stub for the serving Python's
  version (pytriton ships one stub per Python version beside the backend);
- LD_LIBRARY_PATH with pytriton's bundled libraries and the serving interpreter's lib
  folder first, so the stub loads that libpython and not another one on the system;
- PATH with the serving environment's bin first, so the stub's interpreter resolves the
  virtual environment (numpy<2, onnxruntime) as its prefix.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["ServerError", "ServerInterrupted", "ServingEnv", "find_serving_env", "TritonServer", "free_port",
           "SERVING_ENV"]

ROOT = Path(__file__).resolve().parents[1]
SERVING_ENV = ".venv-serving"
ENV_VAR = "VGGT_MV_SERVING_ENV"


class ServerError(RuntimeError):
    pass


class ServerInterrupted(ServerError):
    """start() was asked to give up (Ctrl-C / SIGTERM) before the server was ready."""


@dataclass
class ServingEnv:
    python: Path                    # the serving environment's interpreter
    tritonserver: Path
    backends: Path | None = None    # pytriton's backends/ (None for a full install)
    stubs: Path | None = None       # pytriton's python_backend_stubs/
    libs: list[Path] = field(default_factory=list)


def _probe(python: Path) -> dict[str, Any]:
    code = ("import json, sys, sysconfig, pathlib\n"
            "info = {'version': '%d.%d' % sys.version_info[:2],"
            " 'libdir': sysconfig.get_config_var('LIBDIR'), 'prefix': sys.prefix}\n"
            "try:\n"
            "    import pytriton\n"
            "    info['pytriton'] = str(pathlib.Path(pytriton.__file__).parent)\n"
            "except ImportError:\n"
            "    pass\n"
            "print(json.dumps(info))\n")
    r = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
    if r.returncode:
        raise ServerError(f"{python} does not run: {r.stderr.strip()[-300:]}")
    return json.loads(r.stdout)


def find_serving_env(env_dir: str | Path | None = None) -> ServingEnv:
    """The serving environment: ``env_dir``, ``$VGGT_MV_SERVING_ENV`` or .venv-serving in
    the repository root."""
    d = Path(env_dir or os.environ.get(ENV_VAR) or ROOT / SERVING_ENV)
    python = d / "bin" / "python"
    if not python.exists():
        explicit = os.environ.get("TRITONSERVER") or shutil.which("tritonserver")
        if explicit:
            return ServingEnv(python=Path(shutil.which("python3") or "python3"),
                              tritonserver=Path(explicit))
        raise ServerError(f"no serving environment at {d} and no tritonserver on PATH; "
                          f"create it with `bash scripts/setup_serving.sh`")
    info = _probe(python)
    if "pytriton" not in info:
        raise ServerError(f"{d} has no nvidia-pytriton (the bundled tritonserver); run "
                          f"`bash scripts/setup_serving.sh`")
    pt = Path(info["pytriton"]) / "tritonserver"
    server = Path(os.environ.get("TRITONSERVER") or pt / "bin" / "tritonserver")
    if not server.is_file():
        raise ServerError(f"tritonserver binary missing at {server}; reinstall with "
                          f"`bash scripts/setup_serving.sh`")
    libs = [Path(info["libdir"]), Path(info["pytriton"]).parent / "nvidia_pytriton.libs"]
    return ServingEnv(python=python, tritonserver=server, backends=pt / "backends",
                      stubs=pt / "python_backend_stubs" / info["version"], libs=libs)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _backend_dir(env: ServingEnv, scratch: Path) -> Path:
    """backends/python with the stub for the serving Python (links, no copies of the
    large libraries)."""
    stub = env.stubs / "triton_python_backend_stub" if env.stubs else None
    if stub is None or not stub.is_file():
        raise ServerError(f"no Python-backend stub for this Python in {env.stubs}")
    dst = scratch / "backends" / "python"
    dst.mkdir(parents=True)
    for f in (env.backends / "python").iterdir():
        if f.is_file():
            os.symlink(f, dst / f.name)
    shutil.copy2(stub, dst / "triton_python_backend_stub")
    return scratch / "backends"


_BACKEND_OF = {"pipeline": "python", "onnx": "onnxruntime", "trt": "tensorrt"}


def _index_buckets(repo: Path) -> list[dict[str, Any]]:
    index = repo / "serving.json"
    if not index.is_file():
        return []
    buckets = json.loads(index.read_text()).get("buckets", [])
    return [b for b in buckets if isinstance(b, dict)]


def repository_models(repo: Path) -> dict[str, str]:
    """model name -> the Triton backend it needs, from the repository index. A name that
    is not a folder inside the repository is refused (it becomes --load-model)."""
    from runtime.layout import inside  # noqa: PLC0415 - serving imports runtime, not back

    out = {}
    for i, b in enumerate(_index_buckets(repo)):
        for kind, backend in _BACKEND_OF.items():
            if b.get(kind):
                inside(repo, b[kind], source=repo / "serving.json", key=f"buckets[{i}].{kind}")
                out[b[kind]] = backend
    return out


def _plugin_libraries(repo: Path) -> list[Path]:
    """The TensorRT models' plugin libraries, each inside the repository or refused:
    tritonserver dlopens them, so a repository must not name a library elsewhere."""
    from runtime.layout import inside  # noqa: PLC0415

    libs = []
    for i, b in enumerate(_index_buckets(repo)):
        rel = b.get("trt_plugins")
        if not rel:
            continue
        lib = inside(repo, rel, source=repo / "serving.json", key=f"buckets[{i}].trt_plugins")
        if lib.is_file():
            libs.append(lib)
    return libs


class TritonServer:
    """tritonserver on ``repo``, listening on 127.0.0.1 (or ``host``) only.

        with TritonServer(repo) as srv:      # started and ready
            print(srv.http_url, srv.grpc_url)
    """

    def __init__(self, repo: str | Path, http_port: int | None = None,
                 grpc_port: int | None = None, metrics_port: int | None = None,
                 host: str = "127.0.0.1", env: ServingEnv | None = None,
                 log_path: str | Path | None = None, extra_args: Sequence[str] = (),
                 verbose: int = 0, exit_timeout: int = 5):
        self.repo = Path(repo).resolve()
        if not self.repo.is_dir():
            raise ServerError(f"model repository {repo} does not exist; write one with "
                              f"`python cli.py export-triton`")
        self.host = host
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        self.env = env or find_serving_env()
        self.extra_args = list(extra_args)
        self.verbose = verbose
        self.exit_timeout = exit_timeout    # seconds Triton drains in-flight work on stop
        self._scratch: Path | None = None
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen | None = None
        self.skipped: dict[str, str] = {}   # models not loaded -> the backend they need

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def command(self, backend_dir: Path | None) -> list[str]:
        cmd = [str(self.env.tritonserver), "--model-repository", str(self.repo),
               "--http-address", self.host, "--http-port", str(self.http_port),
               "--grpc-address", self.host, "--grpc-port", str(self.grpc_port),
               "--metrics-address", self.host, "--metrics-port", str(self.metrics_port),
               "--allow-metrics", "true", "--exit-on-error", "true",
               "--exit-timeout-secs", str(self.exit_timeout),
               "--log-verbose", str(self.verbose)]
        if backend_dir is not None:
            cmd += ["--backend-directory", str(backend_dir)]
        self.skipped = {}
        if self.env.backends is not None:
            # The bundled server has only some backends: load the models it can run
            # (explicit mode) and say which were left out, rather than failing to start.
            have = {d.name for d in self.env.backends.iterdir() if d.is_dir()}
            models = repository_models(self.repo)
            self.skipped = {m: b for m, b in models.items() if b not in have}
            if self.skipped:
                cmd += ["--model-control-mode", "explicit"]
                for m, b in models.items():
                    if b in have:
                        cmd += ["--load-model", m]
        plugins = _plugin_libraries(self.repo)
        if plugins:
            # Triton's TensorRT backend loads these before deserializing any engine.
            cmd += ["--backend-config", "tensorrt,plugins=" + ";".join(map(str, plugins))]
        return cmd + self.extra_args

    def environment(self) -> dict[str, str]:
        env = os.environ.copy()
        libs = [str(p) for p in self.env.libs if p.is_dir()]
        if env.get("LD_LIBRARY_PATH"):
            libs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
        env["PATH"] = os.pathsep.join([str(self.env.python.parent), env.get("PATH", "")])
        env.pop("PYTHONHOME", None)
        return env

    def start(self, timeout: float = 120.0,
              abort: Callable[[], bool] | None = None) -> "TritonServer":
        """Launch and wait for readiness. ``abort`` is polled while waiting (a signal
        handler sets it): the half-started server is then stopped and ServerInterrupted
        raised, with no exception thrown from inside a signal handler."""
        self._scratch = Path(tempfile.mkdtemp(prefix="vggt-mv-triton-"))
        backend_dir = _backend_dir(self.env, self._scratch) if self.env.backends else None
        log_path = self.log_path or self._scratch / "tritonserver.log"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        # Own process group: Ctrl-C in the terminal reaches us, and we stop the server
        # (and its stub processes) ourselves.
        self.proc = subprocess.Popen(self.command(backend_dir), stdout=self._log,
                                     stderr=subprocess.STDOUT, env=self.environment(),
                                     start_new_session=True)
        try:
            self.wait_ready(timeout, abort)
        except BaseException:
            self.stop()
            raise
        return self

    def _get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        url = f"http://{self.host}:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def log_tail(self, n: int = 30) -> str:
        if self.log_path and self.log_path.is_file():
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def wait_ready(self, timeout: float, abort: Callable[[], bool] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if abort is not None and abort():
                raise ServerInterrupted("interrupted before the server was ready")
            if self.proc.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self.proc.returncode} "
                                  f"before it was ready; its log ({self.log_path}):\n"
                                  f"{self.log_tail()}")
            with contextlib.suppress(OSError):
                if self._get("/v2/health/ready")[0] == 200:
                    return
            time.sleep(0.25)
        raise ServerError(f"tritonserver not ready after {timeout:.0f} s; its log "
                          f"({self.log_path}):\n{self.log_tail()}")

    def models(self) -> list[dict[str, Any]]:
        req = urllib.request.Request(f"http://{self.host}:{self.http_port}"
                                     f"/v2/repository/index", data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def statistics(self, model: str) -> dict[str, Any]:
        code, body = self._get(f"/v2/models/{model}/stats", timeout=5)
        if code != 200:
            raise ServerError(f"statistics of {model}: HTTP {code} {body[:200]!r}")
        return json.loads(body)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM (Triton stops taking requests, drains for ``exit_timeout`` s, unloads
        and exits), SIGKILL to the process group after ``timeout``; returns the exit
        code."""
        timeout = self.exit_timeout + 15.0 if timeout is None else timeout
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(10)
            # Stub processes left behind by a killed server: same process group. Wait
            # (bounded) until the group is gone, so callers may rely on it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    os.killpg(self.proc.pid, 0)
                    time.sleep(0.1)
            code = self.proc.returncode
            self._log.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        return code

    def __enter__(self) -> "TritonServer":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
