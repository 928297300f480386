"""The local MLflow tracking server a sweep (or `bertrep.study`, for all its stages)
starts, so parallel trials have one writer.

    python -m bertrep.sweep --spec sweeps/smoke/aufc.yaml     # serves ./mlflow.db

runs, for a store such as sqlite:///abs/mlflow.db (artifacts in mlartifacts/ beside it),

    mlflow server --backend-store-uri sqlite:///abs/mlflow.db \\
        --artifacts-destination /abs/mlartifacts --host 127.0.0.1 --port <free> --workers 1

and stops it (and its uvicorn children) when the sweep (or study) ends. An http(s) store is used
as it is.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow

from bertrep import env, tracking

START_TIMEOUT_S = 120.0
LOG_DIR = "outputs"  # where a server's log goes, under the working folder
ARTIFACTS = "mlartifacts"  # beside the store, as `mlflow server` names it
STOP_TIMEOUT_S = 15.0  # after SIGTERM, before SIGKILL
MAX_RESTARTS = 5  # a server that keeps dying is left dead: the sweep's trials then fail


def store_uri() -> str:
    """The store runs go to: $MLFLOW_TRACKING_URI, else MLflow's default, local paths
    absolute (trials run in other working folders)."""
    uri = os.environ.get(env.MLFLOW_TRACKING_URI) or mlflow.get_tracking_uri()
    sqlite = tracking.SQLITE_URI
    if uri.startswith(sqlite) and not uri.startswith(f"{sqlite}/"):
        return f"{sqlite}{Path(uri[len(sqlite) :]).resolve()}"
    if "://" not in uri:
        return Path(uri).resolve().as_uri()
    return uri


def lasting_store() -> str:
    """Where runs stay once this process's server is gone: the store behind the server
    `bertrep.study` shares with its stages ($BERTREP_STORE), else `store_uri()`."""
    return os.environ.get(env.STORE) or store_uri()


def artifacts_beside(store: str) -> Path:
    for scheme in (tracking.SQLITE_URI, tracking.FILE_URI):
        if store.startswith(scheme):
            return Path(store[len(scheme) :]).parent / ARTIFACTS
    return Path.cwd().resolve() / ARTIFACTS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    """Until `url`/health answers 200; an error if the server exits or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass  # not listening yet
        try:
            proc.wait(timeout=0.5)  # between polls: return early only if it died
        except subprocess.TimeoutExpired:
            continue
        raise RuntimeError(f"mlflow server exited ({proc.returncode}): {log.read_text()[-2000:]}")
    raise TimeoutError(f"mlflow server at {url} not healthy after {timeout_s}s; log: {log}")


@contextmanager
def serve(store: str, log_dir: Path) -> Iterator[str]:
    """One writer for parallel trials: serve a local store through an `mlflow server` on
    loopback and yield its URL once it answers (an http(s) store is yielded as it is).
    The server runs in this process group, so killing the sweep's group kills it too.
    Should it die while in use (killed, out of memory), it is started again on the same
    port: trials' MLflow requests retry with backoff and carry on against the same store."""
    with starting(store, log_dir) as served:
        served.wait()
        yield served.url


class Starting:
    """A server on its way up: its URL is known at once, `wait` returns once it answers
    (and from then on it is restarted should it die)."""

    def __init__(self, url: str, guard: Supervised | None) -> None:
        self.url, self._guard, self._ready = url, guard, guard is None

    def wait(self) -> None:
        if not self._ready:
            wait_healthy(self.url, self._guard.proc, self._guard.log, START_TIMEOUT_S)
            self._guard.watch()
            self._ready = True


@contextmanager
def starting(store: str, log_dir: Path) -> Iterator[Starting]:
    """`serve`, yielding as soon as the server process is launched: what the caller does
    next (starting Ray, say) overlaps the server's ~10 s start. Call `wait()` before
    its first request."""
    if tracking.is_server_uri(store):
        yield Starting(store, None)
        return
    port = free_port()
    url = f"{tracking.HTTP_URI}127.0.0.1:{port}"
    log_dir.mkdir(parents=True, exist_ok=True)
    guard = Supervised(store, port, log_dir / f"mlflow-server-{port}.log")
    try:
        guard.start()
        yield Starting(url, guard)
    finally:
        guard.stop()


class Supervised:
    """An `mlflow server` process, restarted (same port, same store) whenever it exits
    before `stop`."""

    def __init__(self, store: str, port: int, log: Path) -> None:
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store]
        cmd += ["--artifacts-destination", str(artifacts_beside(store))]
        self.cmd = cmd + ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        self.log, self.proc, self.restarts, self.children = log, None, 0, []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._supervise, daemon=True)

    def start(self) -> None:
        with open(self.log, "a") as out:
            # MLflow 3's job runner (GenAI scorers, trace rollups) starts half a dozen
            # consumer processes per server; nothing here submits jobs.
            quiet = {env.MLFLOW_SERVER_ENABLE_JOB_EXECUTION: "false"} | dict(os.environ)
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=quiet)

    def watch(self) -> None:
        self._remember_children()
        self._thread.start()

    def _remember_children(self) -> None:
        """Its children (uvicorn), found while it lives: once it is gone they cannot be."""
        import psutil

        try:
            self.children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass

    def _kill_children(self) -> None:
        import psutil

        for child in self.children:  # an orphaned uvicorn worker would keep the port
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(self.children, timeout=10)
        self.children = []

    def _supervise(self) -> None:
        while not self._stopping.wait(1.0):
            if self.proc.poll() is None:
                self._remember_children()
                continue
            self._kill_children()
            if self.restarts == MAX_RESTARTS:
                print(f"the sweep's tracking server exited ({self.proc.returncode}) "
                      f"{MAX_RESTARTS + 1} times; not starting it again (log {self.log})",
                      file=sys.stderr, flush=True)  # fmt: skip
                return
            self.restarts += 1
            print(f"the sweep's tracking server exited ({self.proc.returncode}); starting it "
                  f"again on the same port (restart {self.restarts}; log {self.log})",
                  file=sys.stderr, flush=True)  # fmt: skip
            self.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.proc is not None and self.proc.poll() is None:
            stop_tree(self.proc.pid)
        self._kill_children()


def stop_tree(pid: int, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stop a process and its children (`mlflow server` runs uvicorn as a child): SIGTERM,
    then SIGKILL for those still alive after `timeout_s`."""
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    procs = [*root.children(recursive=True), root]
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for p in alive:
        p.kill()
    psutil.wait_procs(alive, timeout=5)


def point_at(uri: str) -> None:
    """Send this process's runs (and those of processes it starts) to `uri`."""
    os.environ[env.MLFLOW_TRACKING_URI] = uri
    mlflow.set_tracking_uri(uri)


@contextmanager
def tracking_at(uri: str) -> Iterator[None]:
    """Point this process (and Ray workers it starts) at `uri`, restored afterwards."""
    old_env, old_uri = os.environ.get(env.MLFLOW_TRACKING_URI), mlflow.get_tracking_uri()
    point_at(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(old_uri)  # first: MLflow exports it to the environment too
        if old_env is None:
            os.environ.pop(env.MLFLOW_TRACKING_URI, None)
        else:
            os.environ[env.MLFLOW_TRACKING_URI] = old_env


@contextmanager
def through_server(log_dir: str | Path = LOG_DIR) -> Iterator[str]:
    """Point this process at a tracking server for the current store: the store itself if
    it is one, else a local `mlflow server` for the duration. Artifacts a sweep logged
    through its server (mlflow-artifacts:/ URIs) can only be read back through one."""
    with serve(store_uri(), Path(log_dir).resolve()) as uri, tracking_at(uri):
        yield uri


def is_local_location(location: str) -> bool:
    """An artifact location on this machine's disk (a path or file: URI), not a store
    such as mlflow-artifacts:/ (through a server), s3:// or dbfs:/."""
    scheme = urllib.parse.urlparse(location).scheme
    return scheme in ("", "file") or len(scheme) == 1  # C:\... is a path


def runs_page(store: str, experiment_id: str) -> str:
    """How to see an experiment's runs in the MLflow UI (whose default page for an
    experiment, the GenAI overview, is empty for this project)."""
    page = f"#/experiments/{experiment_id}/runs"
    if tracking.is_server_uri(store):
        return f"{store.rstrip('/')}/{page}"
    return f"mlflow ui --backend-store-uri {store}, then http://127.0.0.1:5000/{page}"
