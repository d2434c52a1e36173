"""A real mosquitto for the MQTT tests: on a free port of 127.0.0.1, anonymous (or with
``users``: only those, by password; with ``tls``: mqtts with a self-signed certificate),
with its
persistence in a temp dir (sessions and queued messages survive a restart of it).
``stop()`` ends it (SIGTERM, then SIGKILL); ``start()`` again runs it on the same port
with the same store. Nothing is mocked; no process is left behind.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    def __init__(self, users: dict[str, str] | None = None, tls: bool = False) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="flowctl-mosquitto-")
        self.dir = Path(self._dir.name)
        self.port = free_port()
        self.url = f"{'mqtts' if tls else 'mqtt'}://127.0.0.1:{self.port}"
        self.cert: Path | None = None  # tls: the server's self-signed certificate (its CA)
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = self.dir / "mosquitto.conf"
        auth = "allow_anonymous true\n"
        if users:  # only these may connect
            passwords = self.dir / "passwords"
            passwords.touch(mode=0o600)
            for user, password in users.items():
                subprocess.run([PASSWD, "-b", str(passwords), user, password], check=True,
                               capture_output=True)
            auth = f"allow_anonymous false\npassword_file {passwords}\n"
        if tls:
            self.cert, key = self.dir / "server.crt", self.dir / "server.key"
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                            "-days", "1", "-subj", "/CN=127.0.0.1",
                            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                            "-keyout", str(key), "-out", str(self.cert)],
                           check=True, capture_output=True)
            auth += f"certfile {self.cert}\nkeyfile {key}\n"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            + auth +
            "persistence true\n"
            f"persistence_location {self.dir}/\n"
            "max_queued_messages 100000\n"  # an offline session keeps them all (default 1,000)
            f"log_dest file {self.dir}/mosquitto.log\n"
            # run as root it would switch to the user mosquitto, who cannot read this dir
            + ("user root\n" if os.geteuid() == 0 else "")
        )

    @staticmethod
    def available() -> bool:
        return Path(MOSQUITTO).exists()

    def start(self, timeout: float = 10) -> Mosquitto:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log()}")

    def log(self) -> str:
        path = self.dir / "mosquitto.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()
