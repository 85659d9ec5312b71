"""Run ``captum-vit serve`` in a subprocess on a free loopback port (tests, load tests, smoke checks).

Standard library only (``urllib``), so it works wherever the service itself does.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 at the time of the call."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``python -m captum_vit.export.serve_cli`` serving ``models`` on ``127.0.0.1``.

    Parameters
    ----------
    models : mapping of str to path
        Model name -> exported ``.onnx`` file (``--model NAME=PATH`` each).
    args : sequence of str
        Further ``captum-vit serve`` options (e.g. ``["--max-batch", "1"]``).
    threads : int
        ``OMP_NUM_THREADS`` and ``--intra-op-threads`` of the server (0: leave both alone).

    The server's JSON log lines go to a temporary file (:meth:`log`).
    """

    def __init__(
        self, models: Mapping[str, str | os.PathLike[str]], args: Sequence[str] = (), threads: int = 1
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        fd, log_name = tempfile.mkstemp(prefix="captum-vit-serve-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log_name)
        cmd = [sys.executable, "-m", "captum_vit.export.serve_cli", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += [a for name, path in models.items() for a in ("--model", f"{name}={path}")]
        env = dict(os.environ)
        if threads:
            cmd += ["--intra-op-threads", str(threads)]
            env["OMP_NUM_THREADS"] = str(threads)
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen([*cmd, *args], stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def log(self) -> str:
        return self.log_path.read_text()

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        """``(status, body)`` of a GET."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
                return int(r.status), r.read()
        except urllib.error.HTTPError as e:
            return int(e.code), e.read()

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until ``/readyz`` answers 200.

        Raises
        ------
        RuntimeError, TimeoutError
            The server exited, or was not ready in time (it is then stopped); the log is in the message.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.get("/readyz", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"the server was not ready after {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (graceful shutdown), SIGKILL after ``timeout``; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)

    def scrape(self) -> str:
        """The ``/metrics`` exposition now: every sample read at one instant."""
        return self.get("/metrics")[1].decode()

    def metric(self, name: str, scraped: str | None = None, **labels: str) -> float:
        """One sample of ``/metrics`` (0.0 when absent), e.g. ``metric("captum_vit_errors_total", kind="queue_full")``.

        Pass ``scraped`` (from :meth:`scrape`) to read several samples of the same instant.
        """
        for line in (self.scrape() if scraped is None else scraped).splitlines():
            if line.startswith("#") or not line.strip():
                continue
            key, _, value = line.rpartition(" ")
            sample, _, rest = key.partition("{")
            found = dict(p.split("=", 1) for p in rest.rstrip("}").split(",") if p)
            if sample == name and found == {k: f'"{v}"' for k, v in labels.items()}:
                return float(value)
        return 0.0

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far (Linux ``/proc``)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux ``/proc``)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("VmRSS not found")
