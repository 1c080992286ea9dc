"""A real MooseFS cluster for side-by-side benchmarks: daemons in a network namespace, the
mount on the host.

    with NetNamespace.for_run(hosts=4) as ns, MooseFS(install, base, ns) as mfs:
        ... mfs.mnt ...

Why a namespace: MooseFS's chunkservers refuse to reach their master through a 127.x
address (`masterconn.c`: "localhost ... can't be used for connecting with master"), and the
master warns about chunkservers that do. The master and the chunkservers therefore run inside
a network namespace made for the run, each on its own private address on the namespace's
end of a veth pair; the host's end of the pair holds one private address of the same /24,
so the mount (on the host, where the benchmarks run) reaches them over the pair. Nothing is
added to the host's `lo`, and the namespace and the pair are removed at the end, also when
the run fails. All traffic stays on this machine.

Which MooseFS: an install prefix (MooseFS CE 4.x built from source by the developer, see
docs/performance.md) or, when that prefix has no MooseFS, Debian's packaged MooseFS 3.0.
`Install.find` says which it found; the caller prints it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass

from elkfs.testing.cluster import wait_port
from tests.fuse.mounted import is_mounted, unmount

MASTER_CLIENT_PORT = 9421
CS_PORT = 9422


@dataclass(frozen=True)
class Install:
    """Where one MooseFS's programs are, and which version they are."""

    master: str
    chunkserver: str
    mount: str
    tools_dir: str  # mfssetgoal, mfscheckfile
    empty_metadata: str
    version: str  # e.g. "4.59.2"

    @property
    def label(self) -> str:
        return f"MooseFS {'.'.join(self.version.split('.')[:2])}"

    @staticmethod
    def at_prefix(prefix: str) -> "Install | None":
        """The MooseFS installed under `prefix` (`make install` with --prefix), if any."""
        master = os.path.join(prefix, "sbin", "mfsmaster")
        if not os.path.exists(master):
            return None
        empty = [os.path.join(prefix, p, "metadata.mfs.empty")
                 for p in ("var/mfs", "var/lib/mfs", "share/mfs")]
        return Install(master, os.path.join(prefix, "sbin", "mfschunkserver"),
                       os.path.join(prefix, "bin", "mfsmount"), os.path.join(prefix, "bin"),
                       next((p for p in empty if os.path.exists(p)), empty[0]),
                       _version(master))

    @staticmethod
    def debian() -> "Install | None":
        """Debian's packages (moosefs-master, moosefs-chunkserver, moosefs-client), if
        installed."""
        if not os.path.exists("/usr/sbin/mfsmaster"):
            return None
        return Install("/usr/sbin/mfsmaster", "/usr/sbin/mfschunkserver", "/usr/bin/mfsmount",
                       "/usr/bin", "/var/lib/mfs/metadata.mfs.empty",
                       _version("/usr/sbin/mfsmaster"))

    @staticmethod
    def find(prefix: str) -> tuple["Install | None", str]:
        """The install at `prefix`, else Debian's; with a sentence saying which."""
        at = Install.at_prefix(prefix)
        if at is not None:
            return at, f"{at.label} ({at.version}) from {prefix}"
        deb = Install.debian()
        if deb is not None:
            return deb, (f"no MooseFS under {prefix}: falling back to Debian's packaged "
                         f"{deb.label} ({deb.version})")
        return None, (f"no MooseFS under {prefix} and none from Debian's packages (apt-get "
                      "install moosefs-master moosefs-chunkserver moosefs-client)")


def _version(binary: str) -> str:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True)
    m = re.search(r"(\d+\.\d+\.\d+)", out.stdout + out.stderr)
    return m.group(1) if m else "unknown"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


class NetNamespace:
    """A network namespace joined to the host by a veth pair, for one run.

    The namespace's end carries `hosts` addresses `<net>.50`, `<net>.51`, ...; the host's
    end carries `<net>.1`. `net` is a /24 of 10.42.x.0 that no address or route of the host
    uses yet, so two runs (or another engineer's) do not collide.
    """

    def __init__(self, hosts: int):
        tag = str(os.getpid())
        self.name = f"elkfs-mfs-{tag}"
        self.host_if = f"emfs{tag}h"[:15]
        self.ns_if = f"emfs{tag}n"[:15]
        self.net = _free_net()
        self.host_addr = f"{self.net}.1"
        self.addrs = [f"{self.net}.{50 + i}" for i in range(hosts)]
        self.made: list[str] = []  # what exists, for __exit__

    def exec_args(self) -> list[str]:
        """The command prefix that runs a program inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def __enter__(self) -> "NetNamespace":
        try:
            _ip("netns", "add", self.name)
            self.made.append("netns")
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if,
                "netns", self.name)
            self.made.append("veth")
            _ip("addr", "add", f"{self.host_addr}/24", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            inside = ["-n", self.name]
            _ip(*inside, "link", "set", "lo", "up")
            for a in self.addrs:
                _ip(*inside, "addr", "add", f"{a}/24", "dev", self.ns_if)
            _ip(*inside, "link", "set", self.ns_if, "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if "veth" in self.made:
            _ip("link", "del", self.host_if, check=False)  # takes its peer with it
        if "netns" in self.made:
            _ip("netns", "del", self.name, check=False)
        self.made.clear()


def _free_net() -> str:
    """The first 10.42.N (N >= 10) that no address or route of the host touches."""
    used = _ip("-o", "addr").stdout + _ip("route").stdout + _ip("route", "show", "table",
                                                                "local").stdout
    for n in range(10, 250):
        net = f"10.42.{n}"
        if f"{net}." not in used:
            return net
    raise RuntimeError("no free 10.42.N.0/24 for the MooseFS namespace")


def write_cfg(path: str, opts: dict[str, object]) -> None:
    with open(path, "w") as f:
        f.writelines(f"{k} = {v}\n" for k, v in opts.items())


class MooseFS:
    """One master and `chunkservers` chunkservers of `install` inside `ns`, with data in
    `base`; mounted on the host at `base`/mnt with mfsmount's default options.

    The daemons run with `-f` as children of this process (so their CPU time can be read
    from /proc) and with `NICE_LEVEL = 0`, like ElkFS's, instead of MooseFS's -19.
    """

    def __init__(self, install: Install, base: str, ns: NetNamespace, chunkservers: int = 3,
                 goal: int = 2, fsync_chunks: bool = False):
        assert len(ns.addrs) >= chunkservers + 1
        self.install = install
        self.base = base
        self.ns = ns
        self.fsync_chunks = fsync_chunks  # HDD_FSYNC_BEFORE_CLOSE (MooseFS's default: off)
        self.mnt = os.path.join(base, "mnt")
        self.n_cs = chunkservers
        self.goal = goal
        self.master_host = ns.addrs[0]
        self.daemons: list[subprocess.Popen] = []
        self.mount_proc: subprocess.Popen | None = None

    @property
    def label(self) -> str:
        return self.install.label

    def pids(self) -> list[int]:
        """Every MooseFS process of this cluster: the daemons and the mount."""
        procs = self.daemons + ([self.mount_proc] if self.mount_proc else [])
        return [p.pid for p in procs if p.poll() is None]

    def _daemon(self, binary: str, cfg: str) -> subprocess.Popen:
        with open(cfg + ".log", "w") as log:
            # `ip netns exec` execs the program: the Popen's pid is the daemon's.
            p = subprocess.Popen([*self.ns.exec_args(), binary, "-f", "-c", cfg, "start"],
                                 stdout=log, stderr=subprocess.STDOUT)
        self.daemons.append(p)
        return p

    def _wait_listening(self, host: str, port: int, proc: subprocess.Popen,
                        timeout: float = 30.0) -> None:
        """Until `host:port` accepts; asked from the host, over the veth pair."""
        wait_port(host, port, timeout, proc, os.path.basename(proc.args[4]))

    def start(self) -> "MooseFS":
        os.makedirs(self.mnt)
        common = {"WORKING_USER": "root", "WORKING_GROUP": "root", "NICE_LEVEL": 0}
        mdir = os.path.join(self.base, "master")
        os.makedirs(mdir)
        shutil.copy(self.install.empty_metadata, os.path.join(mdir, "metadata.mfs"))
        with open(os.path.join(mdir, "mfsexports.cfg"), "w") as f:
            f.write("*  /  rw,alldirs,admin,maproot=0:0\n")
        open(os.path.join(mdir, "mfstopology.cfg"), "w").close()
        write_cfg(os.path.join(mdir, "mfsmaster.cfg"), {
            **common, "DATA_PATH": mdir,
            "EXPORTS_FILENAME": os.path.join(mdir, "mfsexports.cfg"),
            "TOPOLOGY_FILENAME": os.path.join(mdir, "mfstopology.cfg"),
            "MATOML_LISTEN_HOST": self.master_host, "MATOCS_LISTEN_HOST": self.master_host,
            "MATOCL_LISTEN_HOST": self.master_host})
        master = self._daemon(self.install.master, os.path.join(mdir, "mfsmaster.cfg"))
        self._wait_listening(self.master_host, MASTER_CLIENT_PORT, master)
        for i in range(self.n_cs):
            host = self.ns.addrs[1 + i]
            cdir = os.path.join(self.base, f"cs{i + 1}")
            os.makedirs(os.path.join(cdir, "hdd"))
            with open(os.path.join(cdir, "mfshdd.cfg"), "w") as f:
                f.write(os.path.join(cdir, "hdd") + "\n")
            write_cfg(os.path.join(cdir, "mfschunkserver.cfg"), {
                **common, "DATA_PATH": cdir, "HDD_CONF_FILENAME": os.path.join(cdir, "mfshdd.cfg"),
                "MASTER_HOST": self.master_host, "BIND_HOST": host, "CSSERV_LISTEN_HOST": host,
                "HDD_LEAVE_SPACE_DEFAULT": "64MiB",
                "HDD_FSYNC_BEFORE_CLOSE": int(self.fsync_chunks)})
            cs = self._daemon(self.install.chunkserver, os.path.join(cdir, "mfschunkserver.cfg"))
            self._wait_listening(host, CS_PORT, cs)
        self.mount()
        subprocess.run([os.path.join(self.install.tools_dir, "mfssetgoal"), "-r",
                        str(self.goal), self.mnt], check=True, capture_output=True)
        self._wait_chunkservers()
        return self

    def _wait_chunkservers(self, timeout: float = 60.0) -> None:
        """Until a first file of `goal` copies can be written (the chunkservers registered)."""
        deadline = time.monotonic() + timeout
        probe = os.path.join(self.mnt, ".probe")
        while True:
            with open(probe, "wb") as f:
                f.write(b"x")
            out = subprocess.run([os.path.join(self.install.tools_dir, "mfscheckfile"), probe],
                                 capture_output=True, text=True).stdout
            os.unlink(probe)
            # 3.0 says "chunks with 2 copies: 1", 4.x "2 full copies (redundancy level: 1): 1"
            if f"chunks with {self.goal} copies" in out or f"{self.goal} full copies" in out:
                return
            assert time.monotonic() < deadline, f"MooseFS chunkservers not ready: {out}"
            time.sleep(0.5)

    def mount(self) -> None:
        """mfsmount in the foreground, as a child (its pid is then known), on the host."""
        log = open(os.path.join(self.base, "mount.log"), "a")
        self.mount_proc = subprocess.Popen(
            [self.install.mount, "-f", self.mnt, "-H", self.master_host,
             "-P", str(MASTER_CLIENT_PORT)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 30
        while not is_mounted(self.mnt):
            if self.mount_proc.poll() is not None:
                raise RuntimeError(f"mfsmount exited with {self.mount_proc.returncode}, see "
                                   f"{self.base}/mount.log")
            assert time.monotonic() < deadline, "MooseFS not mounted in time"
            time.sleep(0.05)

    def unmount(self) -> None:
        if self.mount_proc is not None:
            unmount(self.mnt, self.mount_proc.pid)
            self.mount_proc.wait(10)
            self.mount_proc = None
        elif is_mounted(self.mnt):
            unmount(self.mnt)

    def remount(self) -> None:
        self.unmount()
        self.mount()

    def stop(self) -> None:
        try:
            self.unmount()
        finally:
            for p in reversed(self.daemons):
                if p.poll() is None:
                    p.terminate()
            for p in reversed(self.daemons):
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
            self.daemons.clear()

    def __enter__(self) -> "MooseFS":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
