"""A real Prometheus server (Debian's `prometheus`, 2.42) and `promtool`, for
integration tests that must prove an exporter is scraped, not just that its
text looks right.

Each PrometheusServer listens on 127.0.0.1 only, keeps its config, data and
log under the tmp dir it is given (never /etc/prometheus or /var/lib), and is
always stopped: use it in a `with` block.

Prometheus is ready in about 0.05 s, but 2.42's scrape manager applies new
targets on a fixed 5 s tick that no flag shortens, so the first scrape lands
5-6 s after start (measured): wait_for's 30 s default leaves room for that.

    with PrometheusServer(tmp_path, [scrape_config("job", f"127.0.0.1:{port}")]) as prom:
        prom.wait_for('up{job="job"} == 1')
"""

from __future__ import annotations

import ctypes
import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

PROMETHEUS = "prometheus"
PROMTOOL = "promtool"


class PrometheusError(RuntimeError):
    """Prometheus would not start, or its HTTP API answered with an error."""


def prometheus_available() -> bool:
    return shutil.which(PROMETHEUS) is not None


def promtool_available() -> bool:
    return shutil.which(PROMTOOL) is not None


def _promtool(*args: str, stdin: str | None = None) -> tuple[int, str]:
    # promtool 2.42 prints lint problems on stderr, so the two are merged.
    out = subprocess.run([PROMTOOL, *args], input=stdin, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=60)
    return out.returncode, out.stdout


def promtool_check_metrics(text: str) -> tuple[int, str]:
    """Lint exposition text with `promtool check metrics` (text on stdin).
    Exit 0: clean; 3: lint problems (e.g. a counter without `_total`, no HELP);
    1: the text does not parse."""
    return _promtool("check", "metrics", stdin=text)


def promtool_check_config(path: Path) -> tuple[int, str]:
    """Validate a prometheus.yml with Prometheus's own parser."""
    return _promtool("check", "config", str(path))


def scrape_config(job: str, *targets: str, **extra: object) -> dict:
    """A static scrape config: `scrape_config("x", "127.0.0.1:9435", scheme="https")`."""
    return {"job_name": job, "static_configs": [{"targets": list(targets)}], **extra}


def _die_with_parent() -> None:
    # Runs in the child before exec: if pytest is killed outright (no finally,
    # no __exit__), the kernel sends prometheus SIGTERM instead of orphaning it.
    # PR_SET_PDEATHSIG follows the thread that forked, so start() from the main thread.
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _free_port() -> int:
    # The port is free when we look; another process could take it before
    # Prometheus binds, in which case start() fails with the log saying so.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrometheusServer:
    """A real Prometheus on 127.0.0.1, its own config and data dir in tmp,
    started and always stopped."""

    def __init__(self, tmp_dir: Path, scrape_configs: list[dict],
                 scrape_interval: str = "1s", port: int | None = None) -> None:
        self.dir = Path(tmp_dir) / "prometheus"
        self.config_path = self.dir / "prometheus.yml"
        self.data_dir = self.dir / "data"
        self.log_path = self.dir / "prometheus.log"
        self.scrape_configs = scrape_configs
        self.scrape_interval = scrape_interval
        self.port = port
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None  # start() to /-/ready, for reports

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        """Write prometheus.yml: JSON, which is valid YAML, so no PyYAML."""
        self.dir.mkdir(parents=True, exist_ok=True)
        config = {"global": {"scrape_interval": self.scrape_interval,
                             "evaluation_interval": self.scrape_interval},
                  "scrape_configs": self.scrape_configs}
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")
        return self.config_path

    def start(self, timeout: float = 30) -> None:
        if self.proc is not None:
            raise PrometheusError("already started")
        self.write_config()
        self.data_dir.mkdir(exist_ok=True)
        if self.port is None:
            self.port = _free_port()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={self.config_path}",
                 f"--storage.tsdb.path={self.data_dir}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent)
        started = time.monotonic()
        try:
            self._wait_ready(timeout)
        except BaseException:  # __exit__ does not run when __enter__ raises
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise PrometheusError(
                    f"not ready after {timeout}s on {self.url}\n{self.log_tail()}")
            time.sleep(0.05)

    def _check_alive(self) -> None:
        if self.proc is None:
            raise PrometheusError("not started")
        if self.proc.poll() is not None:
            raise PrometheusError(
                f"prometheus exited with {self.proc.returncode}\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL; idempotent. Leaves the tmp dir for the test to read."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)

    def __enter__(self) -> PrometheusServer:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _api(self, path: str, params: dict[str, str] | None = None) -> object:
        self._check_alive()
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as err:  # 4xx/5xx still carry the JSON error
            try:
                body = json.load(err)
            except ValueError:
                raise PrometheusError(f"GET {url}: HTTP {err.code}") from err
        if body.get("status") != "success":
            raise PrometheusError(f"GET {url}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, promql: str) -> list[dict]:
        """An instant query; the `data.result` list, each {"metric": {...}, "value": [ts, "v"]}."""
        return self._api("query", {"query": promql})["result"]

    def targets(self) -> list[dict]:
        return self._api("targets", {"state": "active"})["activeTargets"]

    def wait_for(self, promql: str, predicate: Callable[[list[dict]], bool] = bool,
                 timeout: float = 30) -> list[dict]:
        """Poll `promql` until predicate(result) holds; return that result."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if predicate(result):
                return result
            if time.monotonic() > deadline:
                health = [{k: t.get(k) for k in ("scrapeUrl", "health", "lastError")}
                          for t in self.targets()]
                raise AssertionError(f"{promql!r} not satisfied after {timeout}s; "
                                     f"last result {result}; targets {health}")
            time.sleep(0.2)


def value(result: list[dict]) -> float:
    """The value of a single-series instant-query result."""
    assert len(result) == 1, f"expected one series, got {result}"
    return float(result[0]["value"][1])
