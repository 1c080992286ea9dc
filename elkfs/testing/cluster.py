"""A local ElkFS cluster on loopback addresses: what the demo and the tests run.

Every daemon is a real process with its own config file and data directory under
`base_dir`. Masters listen on `<net>.10`, `<net>.11`, ...; chunkservers on `<net>.20`,
`<net>.21`, ... (all of 127.0.0.0/8 is loopback on Linux, no set-up needed).

Every daemon gets the cluster's AUTH_CODE (`auth_code`; by default one made at random on
the first start and kept in `<base_dir>/auth_code`), so every test and the demo run with
authenticated members and chunk tokens; a test sets `AUTH_CODE` in `master_options` /
`cs_options` to run one daemon with another code or none.

With `ha=True` the masters run with HA_ENABLED and are found through DNS: a dnsmasq on
`<net>.53` (`LocalDNS`) answers `mfsmaster.test` with one A record per master, and the
chunkservers and clients resolve that name.

Two ways to run the daemons:
- `foreground=True` (tests): each daemon runs with `-f` as a child process of the
  launcher, so a test can SIGKILL, SIGSTOP or restart it precisely;
- `foreground=False` (demo): `mfsmaster ... start` daemonizes and the processes outlive
  the launcher; `stop` uses the daemons' own `stop` command.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

BIN = os.path.dirname(sys.executable)
MASTER_CLIENT_PORT = 9421
MASTER_CS_PORT = 9420
MASTER_HTTP_PORT = 9425
CS_PORT = 9422


def wait_port(host: str, port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None,
              what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what or 'daemon'} exited with {proc.returncode} before "
                               f"listening on {host}:{port}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what or 'daemon'} not listening on {host}:{port} after {timeout}s")
        time.sleep(0.05)


@dataclass
class Daemon:
    kind: str  # "master" | "chunkserver"
    name: str
    host: str
    port: int  # the port to wait for
    data_dir: str
    cfg_path: str
    proc: subprocess.Popen | None = None
    extra: dict = field(default_factory=dict)

    @property
    def binary(self) -> str:
        return os.path.join(BIN, "mfsmaster" if self.kind == "master" else "mfschunkserver")

    def pid(self) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            return self.proc.pid
        lock = os.path.join(self.data_dir, f".{os.path.basename(self.binary)}.lock")
        try:
            text = open(lock).read().strip()
        except OSError:
            return None
        if text.isdigit():
            try:
                os.kill(int(text), 0)
                return int(text)
            except OSError:
                return None
        return None


MASTER_NAME = "mfsmaster.test"


class Cluster:
    def __init__(self, base_dir: str, net: str = "127.0.1", masters: int = 1,
                 chunkservers: int = 3, foreground: bool = True,
                 master_options: dict | None = None, cs_options: dict | None = None,
                 ha: bool = False, auth_code: str | None = None):
        self.base_dir = os.path.abspath(base_dir)
        self._auth_code = auth_code
        self.net = net
        self.foreground = foreground
        self.master_options = master_options or {}
        self.cs_options = cs_options or {}
        self.ha = ha
        self._spawner = None
        self.masters = [self._master(i) for i in range(masters)]
        self.chunkservers = [self._chunkserver(i) for i in range(chunkservers)]
        self.dns = None
        if ha:
            from .dns import LocalDNS

            self.dns = LocalDNS(os.path.join(self.base_dir, "dns"), f"{net}.53")

    # ------------------------------------------------------------ layout

    def _master(self, i: int) -> Daemon:
        host = f"{self.net}.{10 + i}"
        data = os.path.join(self.base_dir, f"master{i + 1}")
        return Daemon("master", f"master{i + 1}", host, MASTER_CLIENT_PORT, data,
                      os.path.join(data, "mfsmaster.cfg"))

    def _chunkserver(self, i: int) -> Daemon:
        host = f"{self.net}.{20 + i}"
        data = os.path.join(self.base_dir, f"cs{i + 1}")
        return Daemon("chunkserver", f"cs{i + 1}", host, CS_PORT, data,
                      os.path.join(data, "mfschunkserver.cfg"))

    @property
    def master_host(self) -> str:
        """What clients and chunkservers are told to find the master(s) by."""
        return MASTER_NAME if self.ha else self.masters[0].host

    @property
    def master_addr(self) -> tuple[str, int]:
        return self.master_host, MASTER_CLIENT_PORT

    def web_url(self, d: Daemon, path: str = "/") -> str:
        """The address of master `d`'s web interface."""
        return f"http://{d.host}:{MASTER_HTTP_PORT}{path}"

    @property
    def dns_server(self) -> str | None:
        return self.dns.server if self.dns is not None else None

    def client_args(self) -> dict:
        """`Client.connect(**cluster.client_args())`."""
        return {"host": self.master_host, "port": MASTER_CLIENT_PORT,
                "dns_server": self.dns_server}

    def mount_args(self) -> list[str]:
        """mfsmount's options that find this cluster's master(s)."""
        args = ["-H", self.master_host, "-P", str(MASTER_CLIENT_PORT)]
        if self.dns is not None:
            args += ["-o", f"mfsdnsserver={self.dns.server}"]
        return args

    @property
    def auth_code(self) -> str:
        """The cluster's AUTH_CODE: given, or made once and kept with the cluster."""
        if self._auth_code is None:
            path = os.path.join(self.base_dir, "auth_code")
            try:
                with open(path) as f:
                    self._auth_code = f.read().strip()
            except FileNotFoundError:
                import secrets

                os.makedirs(self.base_dir, exist_ok=True)
                self._auth_code = secrets.token_hex(16)
                with open(path, "w") as f:
                    f.write(self._auth_code + "\n")
                os.chmod(path, 0o600)
        return self._auth_code

    def _ha_options(self) -> dict:
        if not self.ha:
            return {}
        return {"HA_ENABLED": 1, "MASTER_HOST": MASTER_NAME, "DNS_SERVER": self.dns.server,
                "MASTER_PORT": MASTER_CS_PORT}

    def write_configs(self) -> None:
        for d in self.masters:
            os.makedirs(d.data_dir, exist_ok=True)
            opts = {
                "DATA_PATH": d.data_dir,
                "MATOCL_LISTEN_HOST": d.host, "MATOCL_LISTEN_PORT": MASTER_CLIENT_PORT,
                "MATOCS_LISTEN_HOST": d.host, "MATOCS_LISTEN_PORT": MASTER_CS_PORT,
                "HTTP_LISTEN_HOST": d.host, "HTTP_LISTEN_PORT": MASTER_HTTP_PORT,
                "AUTH_CODE": self.auth_code,
                **self._ha_options(),
                **self.master_options,
            }
            self._write_cfg(d.cfg_path, opts)
        for d in self.chunkservers:
            hdd = os.path.join(d.data_dir, "hdd1")
            os.makedirs(hdd, exist_ok=True)
            hdd_cfg = os.path.join(d.data_dir, "mfshdd.cfg")
            if not os.path.exists(hdd_cfg):
                with open(hdd_cfg, "w") as f:
                    f.write(f"# one chunk directory per line\n{hdd}\n")
            opts = {
                "DATA_PATH": d.data_dir, "HDD_CONF_FILENAME": hdd_cfg,
                "CSSERV_LISTEN_HOST": d.host, "CSSERV_LISTEN_PORT": CS_PORT,
                "MASTER_HOST": self.master_host, "MASTER_PORT": MASTER_CS_PORT,
                "AUTH_CODE": self.auth_code,
                **({"DNS_SERVER": self.dns.server} if self.ha else {}),
                **self.cs_options,
            }
            self._write_cfg(d.cfg_path, opts)

    @staticmethod
    def _write_cfg(path: str, opts: dict) -> None:
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write("# written by elkfs.testing.cluster\n")
            for key, value in opts.items():
                f.write(f"{key} = {value}\n")

    # ------------------------------------------------------------ control

    def start(self) -> None:
        if self.dns is not None:
            self.dns.set_records(MASTER_NAME, [d.host for d in self.masters])
            if self.dns.pid() is None:
                self.dns.start()
        self.write_configs()
        for d in self.masters:
            self.start_daemon(d)
        for d in self.chunkservers:
            self.start_daemon(d)
        self.wait_chunkservers_registered()

    def start_daemon(self, d: Daemon, timeout: float = 30.0) -> None:
        if self.foreground:
            if self._spawner is None:  # made before any mount exists: see spawn.py
                from .spawn import Spawner

                self._spawner = Spawner()
            d.proc = self._spawner.spawn([d.binary, "-f", "-c", d.cfg_path, "start"],
                                         os.path.join(d.data_dir, "stderr.log"))
            wait_port(d.host, d.port, timeout, d.proc, d.name)
        else:
            out = subprocess.run([d.binary, "-c", d.cfg_path, "start"], capture_output=True,
                                 text=True, timeout=timeout)
            if out.returncode != 0:
                raise RuntimeError(f"{d.name}: {out.stderr.strip() or out.stdout.strip()}")
            wait_port(d.host, d.port, timeout, None, d.name)

    def signal(self, d: Daemon, sig: int) -> None:
        pid = d.pid()
        if pid is not None:
            os.kill(pid, sig)

    def kill(self, d: Daemon) -> None:
        """SIGKILL: a crash, nothing flushed."""
        self.signal(d, signal.SIGKILL)
        if d.proc is not None:
            d.proc.wait(10)
            d.proc = None

    def stop_daemon(self, d: Daemon, timeout: float = 60.0) -> None:
        if self.foreground:
            if d.proc is not None and d.proc.poll() is None:
                d.proc.send_signal(signal.SIGTERM)
                try:
                    d.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    d.proc.kill()
                    d.proc.wait(10)
            d.proc = None
        else:
            subprocess.run([d.binary, "-c", d.cfg_path, "stop"], capture_output=True,
                           timeout=timeout + 5)

    def restart(self, d: Daemon) -> None:
        self.stop_daemon(d)
        self.start_daemon(d)

    def stop(self) -> None:
        for d in self.chunkservers + self.masters:
            try:
                self.stop_daemon(d)
            except Exception:
                self.kill(d)
        if self.dns is not None:
            self.dns.stop()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def wait_chunkservers_registered(self, count: int | None = None, timeout: float = 30.0) -> None:
        """Wait until the master lists `count` connected chunkservers."""
        import asyncio

        from ..client.client import Client

        want = len(self.chunkservers) if count is None else count

        async def check() -> None:
            deadline = time.monotonic() + timeout
            client = await Client.connect(**self.client_args(), info="cluster launcher")
            try:
                while True:
                    info = await client.cluster_info()
                    connected = sum(1 for s in info["chunkservers"] if s["connected"])
                    if connected >= want:
                        return
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{connected} of {want} chunkservers registered")
                    await asyncio.sleep(0.1)
            finally:
                await client.close()

        run_sync(check)

    # ------------------------------------------------------------ HA

    def status(self, d: Daemon, timeout: float = 2.0) -> dict | None:
        """The master's own view (MasterStatus), None when it does not answer."""
        from ..client.masters import master_status

        async def ask():
            try:
                return await master_status(d.host, MASTER_CLIENT_PORT, timeout)
            except Exception:
                return None

        return run_sync(ask)

    def leader(self) -> Daemon | None:
        """The master that serves as leader now (by its own word), if any."""
        for d in self.masters:
            if d.pid() is None:
                continue
            st = self.status(d, timeout=1.0)
            if st is not None and st.get("state") == "LEADER":
                return d
        return None

    def wait_leader(self, timeout: float = 30.0, other_than: Daemon | None = None) -> Daemon:
        deadline = time.monotonic() + timeout
        while True:
            d = self.leader()
            if d is not None and d is not other_than:
                return d
            if time.monotonic() > deadline:
                states = {x.name: (self.status(x, 1.0) or {}).get("state") for x in self.masters}
                raise TimeoutError(f"no leader after {timeout}s: {states}")
            time.sleep(0.1)


def run_sync(coro_fn):
    """Run `coro_fn()` to completion from sync code, also when called from inside a
    running event loop (a test): then in a thread with its own loop."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_fn())
    import threading

    results: list = []
    t = threading.Thread(target=lambda: results.append(_run_catching(coro_fn)))
    t.start()
    t.join()
    kind, value = results[0]
    if kind == "error":
        raise value
    return value


def _run_catching(coro_fn):
    import asyncio

    try:
        return "ok", asyncio.run(coro_fn())
    except Exception as e:
        return "error", e
