"""The escape suite: hostile probes inside a real sandbox with the DEFAULT configuration.

Each probe runs after every isolation step (seccomp included), like plugin code, and reports what
it managed; each test asserts the attempt was blocked, and how.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import signal
import socket
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from cgroup_host import entries_needed_in, fstype_of, root_home, runtime_dirs
from sandbox_harness import in_child, libc_call, plan_for, run_probe, started

pytestmark = pytest.mark.root


def _read1(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(1)


def _errno_of(fn: Any) -> str:
    try:
        fn()
    except OSError as exc:
        return errno.errorcode[exc.errno or 0]
    return "OK"


def test_status_inside_shows_no_caps_nnp_and_seccomp(tmp_path: Path, parent: str) -> None:
    def probe() -> dict[str, Any]:
        lines = Path("/proc/self/status").read_text().splitlines()
        return {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}

    out = run_probe(plan_for(tmp_path, parent), probe)
    st = out.result
    assert st["CapEff"] == st["CapPrm"] == st["CapInh"] == st["CapAmb"] == "0000000000000000"
    assert st["CapBnd"] == "0000000000000000"
    assert st["NoNewPrivs"] == "1"
    assert st["Seccomp"] == "2"
    assert st["NSpid"].split()[-1] == "1"  # PID 1 of its own namespace
    assert all(v == "active" for k, v in out.spawned.steps.items() if k != "user_ns"), out.spawned.steps


def test_cannot_see_host_pids_or_signal_the_daemon(tmp_path: Path, parent: str) -> None:
    me = os.getpid()

    def probe() -> dict[str, Any]:
        return {
            "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
            "kill": _errno_of(lambda: os.kill(me, signal.SIGTERM)),
            "kill0": _errno_of(lambda: os.kill(me, 0)) if me != 1 else "n/a",
        }

    out = run_probe(plan_for(tmp_path, parent), probe)
    assert out.result["pids"] == [1]
    assert out.result["kill"] == "ESRCH"
    assert out.result["kill0"] == "ESRCH"


def test_cannot_read_shadow_or_host_root(tmp_path: Path, parent: str) -> None:
    home = root_home()  # where a secret of the host's root lives, whatever this host calls it
    assert home.is_dir(), f"root's home {home} does not exist on this host"
    secret = home / f".plugind-escape-{os.getpid()}"
    secret.write_text("host secret")
    plan = plan_for(tmp_path, parent)
    # Visible in there: only the way to what the runtime runs from (a pyenv interpreter or a venv
    # under root's home), or nothing at all (a system interpreter, a checkout elsewhere).
    expected = entries_needed_in(home, [*runtime_dirs(), plan.tree])
    try:

        def probe() -> dict[str, Any]:
            return {
                "shadow": _errno_of(lambda: open("/etc/shadow").read()),
                "secret": _errno_of(lambda: open(str(secret)).read()),
                "home": sorted(os.listdir(home)) if os.path.isdir(home) else None,
                "etc": sorted(os.listdir("/etc")),
            }

        out = run_probe(plan, probe)
    finally:
        secret.unlink()
    assert out.result["shadow"] == "ENOENT"
    assert out.result["secret"] == "ENOENT"
    assert out.result["home"] == expected, (home, runtime_dirs())
    assert "shadow" not in out.result["etc"] and "passwd" not in out.result["etc"]


def test_cannot_write_usr_or_own_code(tmp_path: Path, parent: str) -> None:
    plan = plan_for(tmp_path, parent)
    tree = plan.tree

    def probe() -> dict[str, Any]:
        return {
            "usr": _errno_of(lambda: open("/usr/escape", "w")),
            "code": _errno_of(lambda: open(f"{tree}/plugin.py", "a")),
            "newfile": _errno_of(lambda: open(f"{tree}/new.py", "w")),
            "root": _errno_of(lambda: open("/escape", "w")),
            "chmod": _errno_of(lambda: os.chmod(f"{tree}/plugin.py", 0o777)),
            "tmp": _errno_of(lambda: open("/tmp/scratch", "w").write("ok")),
        }

    out = run_probe(plan, probe)
    assert out.result == {
        "usr": "EROFS",
        "code": "EROFS",
        "newfile": "EROFS",
        "root": "EROFS",
        "chmod": "EROFS",
        "tmp": "OK",
    }
    assert (Path(tree) / "plugin.py").read_text() == "VALUE = 1\n"


def test_cannot_mount(tmp_path: Path, parent: str) -> None:
    def probe() -> dict[str, Any]:
        return {
            "tmpfs": libc_call("mount", b"none", b"/tmp", b"tmpfs", 0, None),
            "bind": libc_call("mount", b"/", b"/tmp", None, 4096, None),
            "umount": libc_call("umount2", b"/proc", 2),
        }

    out = run_probe(plan_for(tmp_path, parent), probe)
    assert out.result == {"tmpfs": -errno.EPERM, "bind": -errno.EPERM, "umount": -errno.EPERM}


def test_cannot_unshare_setns_or_clone_namespaces(tmp_path: Path, parent: str) -> None:
    def probe() -> dict[str, Any]:
        fd = os.open("/proc/self/ns/net", os.O_RDONLY)
        clone = ctypes.CDLL(None, use_errno=True).syscall
        return {
            "unshare_user": libc_call("unshare", 0x10000000),
            "unshare_mnt": libc_call("unshare", 0x00020000),
            "setns": libc_call("setns", fd, 0),
            # raw clone(CLONE_NEWUSER|SIGCHLD): must be refused by the argument filter
            "clone_ns": clone(56, 0x10000000 | 17, 0, 0, 0, 0),
            "clone_errno": ctypes.get_errno(),
            "clone3": clone(435, 0, 0),
            "clone3_errno": ctypes.get_errno(),
            "fork": in_child(lambda: None)["exit"],
        }

    out = run_probe(plan_for(tmp_path, parent), probe)
    r = out.result
    assert (r["unshare_user"], r["unshare_mnt"], r["setns"]) == (-errno.EPERM,) * 3
    assert (r["clone_ns"], r["clone_errno"]) == (-1, errno.EPERM)
    assert (r["clone3"], r["clone3_errno"]) == (-1, errno.ENOSYS)
    assert r["fork"] == 0  # ordinary fork still works


def test_cannot_ptrace_a_sibling(tmp_path: Path, parent: str) -> None:
    def probe() -> dict[str, Any]:
        pid = os.fork()
        if pid == 0:
            signal.pause()
            os._exit(0)
        try:
            attach = libc_call("ptrace", 16, pid, 0, 0)  # PTRACE_ATTACH
            mem = _errno_of(lambda: _read1(f"/proc/{pid}/mem"))
            buf = ctypes.create_string_buffer(8)
            vm = libc_call("process_vm_readv", pid, ctypes.byref(buf), 1, ctypes.byref(buf), 1, 0)
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        return {"attach": attach, "mem": mem, "vm": vm}

    out = run_probe(plan_for(tmp_path, parent), probe)
    assert out.result["attach"] == -errno.EPERM
    assert out.result["vm"] == -errno.EPERM
    assert out.result["mem"] in ("EACCES", "EPERM")  # no CAP_SYS_PTRACE, no ptrace access


def test_cannot_load_a_kernel_module(tmp_path: Path, parent: str) -> None:
    def probe() -> dict[str, Any]:
        lib = ctypes.CDLL(None, use_errno=True)
        return {
            "init_module": in_child(lambda: lib.syscall(175, None, 0, b""))["exit"],
            "finit_module": in_child(lambda: lib.syscall(313, 0, b"", 0))["exit"],
            "delete_module": in_child(lambda: lib.syscall(176, b"loop", 0))["exit"],
        }

    out = run_probe(plan_for(tmp_path, parent), probe)
    # The worst calls kill the process on the spot (SIGSYS), they are not merely refused.
    assert out.result == dict.fromkeys(("init_module", "finit_module", "delete_module"), -signal.SIGSYS)


def test_cannot_open_raw_or_packet_sockets(tmp_path: Path, parent: str) -> None:
    def probe() -> dict[str, Any]:
        return {
            "raw": _errno_of(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)),
            "packet": _errno_of(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW)),
            "netlink": _errno_of(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)),
            "unix": _errno_of(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()),
        }

    out = run_probe(plan_for(tmp_path, parent), probe)
    assert out.result == {"raw": "EPERM", "packet": "EPERM", "netlink": "EPERM", "unix": "OK"}


def test_cannot_reach_a_server_on_host_loopback(tmp_path: Path, parent: str) -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    accepted: list[Any] = []
    t = threading.Thread(target=_accept_all, args=(srv, accepted), daemon=True)
    t.start()

    def probe() -> dict[str, Any]:
        return {"inet": _errno_of(lambda: socket.create_connection(("127.0.0.1", port), timeout=2))}

    try:
        out = run_probe(plan_for(tmp_path, parent), probe)
    finally:
        srv.shutdown(socket.SHUT_RDWR)  # wakes the accept loop once the probe is done
        srv.close()
        t.join(5)
    assert out.result["inet"] == "EPERM"  # no AF_INET socket at all in network mode "none"
    assert accepted == []  # the live server never saw a connection


def _accept_all(srv: socket.socket, accepted: list[Any]) -> None:
    while True:
        try:
            conn, peer = srv.accept()
        except OSError:
            return
        accepted.append(peer)
        conn.close()


def test_setuid_binary_gives_no_privilege(tmp_path: Path, parent: str) -> None:
    plan = plan_for(tmp_path, parent)
    # A setuid copy of `cat`, owned by an ordinary uid: exec would switch euid if setuid worked.
    tool = Path(plan.tree) / "suid-cat"
    shutil.copy("/bin/cat", tool)
    os.chown(tool, 1000, 1000)
    os.chmod(tool, 0o4755)
    assert tool.stat().st_mode & stat.S_ISUID

    def probe() -> dict[str, Any]:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.dup2(w, 1)
            os.execv(str(tool), [str(tool), "/proc/self/status"])
        os.close(w)
        data = b""
        while chunk := os.read(r, 65536):
            data += chunk
        os.waitpid(pid, 0)
        status = dict(line.split(":", 1) for line in data.decode().splitlines())
        return {k: " ".join(v.split()) for k, v in status.items() if k in ("Uid", "CapEff", "CapPrm")}

    out = run_probe(plan, probe)
    assert out.result == {"Uid": "0 0 0 0", "CapEff": "0000000000000000", "CapPrm": "0000000000000000"}


def test_hostname_change_is_refused_and_invisible(tmp_path: Path, parent: str) -> None:
    before = socket.gethostname()

    def probe() -> dict[str, Any]:
        return {"set": libc_call("sethostname", b"pwned", 5), "name": socket.gethostname()}

    out = run_probe(plan_for(tmp_path, parent), probe)
    assert out.result == {"set": -errno.EPERM, "name": "plugin-probe"}
    assert socket.gethostname() == before


def test_cannot_create_device_nodes(tmp_path: Path, parent: str) -> None:
    def probe() -> dict[str, Any]:
        return {
            "tmp": _errno_of(lambda: os.mknod("/tmp/mem", stat.S_IFCHR | 0o600, os.makedev(1, 1))),
            "dev": _errno_of(lambda: os.mknod("/dev/sda", stat.S_IFBLK | 0o600, os.makedev(8, 0))),
        }

    out = run_probe(plan_for(tmp_path, parent), probe)
    assert out.result == {"tmp": "EPERM", "dev": "EPERM"}


def test_cannot_chroot_back_out(tmp_path: Path, parent: str) -> None:
    def probe() -> dict[str, Any]:
        os.makedirs("/tmp/jail", exist_ok=True)
        chroot = _errno_of(lambda: os.chroot("/tmp/jail"))
        os.chdir("/")
        for _ in range(10):
            os.chdir("..")
        return {"chroot": chroot, "cwd": os.getcwd(), "top": sorted(os.listdir("."))}

    plan = plan_for(tmp_path, parent)
    out = run_probe(plan, probe)
    assert out.result["chroot"] == "EPERM"
    assert out.result["cwd"] == "/"
    # Still the jail's root: of the host's private top-level directories, only those on the way to
    # what the runtime runs from or the plugin's tree (e.g. /root for a pyenv interpreter) are there.
    private = {"home", "root", "var", "srv", "boot", "mnt", "media", "opt", "run", "sys"}
    needed = set(entries_needed_in("/", [*runtime_dirs(), plan.tree]) or [])
    assert set(out.result["top"]) & private <= needed, out.result["top"]


def test_cannot_read_another_plugins_files_or_memory(tmp_path: Path, parent: str) -> None:
    victim_plan = plan_for(tmp_path, parent, name="victim")

    def victim() -> dict[str, Any]:
        signal.pause()
        return {}

    with started(victim_plan, victim) as vbox:
        vpid = vbox.pid

        def probe() -> dict[str, Any]:
            buf = ctypes.create_string_buffer(8)
            return {
                "file": _errno_of(lambda: open(f"{victim_plan.tree}/secret.txt").read()),
                "mem": _errno_of(lambda: _read1(f"/proc/{vpid}/mem")),
                "vm": libc_call("process_vm_readv", vpid, ctypes.byref(buf), 1, ctypes.byref(buf), 1, 0),
            }

        out = run_probe(plan_for(tmp_path, parent, name="thief"), probe)
    assert out.result["file"] == "ENOENT"
    assert out.result["mem"] == "ENOENT"
    assert out.result["vm"] == -errno.EPERM


def test_daemon_environment_never_reaches_the_plugin(tmp_path: Path, parent: str) -> None:
    os.environ["PLUGIN_TRUST_KEY"] = "a" * 64
    try:

        def probe() -> dict[str, Any]:
            raw = Path("/proc/self/environ").read_bytes()
            return {"env": dict(os.environ), "proc": raw.replace(b"\0", b"").decode(errors="replace")}

        out = run_probe(plan_for(tmp_path, parent), probe)
    finally:
        del os.environ["PLUGIN_TRUST_KEY"]
    assert "PLUGIN_TRUST_KEY" not in out.result["env"]
    assert "a" * 64 not in out.result["proc"]
    allowed = {"HOME", "TMPDIR", "PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ"}
    assert set(out.result["env"]) <= allowed | {"PYTHONDONTWRITEBYTECODE"}


def test_filling_tmp_is_capped(tmp_path: Path, parent: str) -> None:
    def probe() -> dict[str, Any]:
        written = 0
        block = b"x" * (1 << 20)
        try:
            with open("/tmp/fill", "wb") as f:
                for _ in range(200):
                    f.write(block)
                    f.flush()
                    written += len(block)
        except OSError as exc:
            return {"written": written, "error": errno.errorcode[exc.errno or 0]}
        return {"written": written, "error": None}

    plan = plan_for(tmp_path, parent, filesystem__tmp_size_mb=8)
    out = run_probe(plan, probe)
    assert out.result["error"] == "ENOSPC"
    assert out.result["written"] <= 8 << 20


def test_no_host_mount_is_left_in_the_namespace(tmp_path: Path, parent: str) -> None:
    def probe() -> dict[str, Any]:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
        return {"mounts": sorted({(ln.split()[4], ln.partition(" - ")[2].split()[0]) for ln in lines})}

    out = run_probe(plan_for(tmp_path, parent), probe)
    mounts = [tuple(m) for m in out.result["mounts"]]
    points, fstypes = {p for p, _ in mounts}, {t for _, t in mounts}
    assert not fstypes & {"cgroup", "cgroup2", "sysfs", "debugfs", "tracefs", "securityfs", "bpf", "devpts"}
    assert "/sys" not in points and "/run" not in points
    # Every other mount is the jail's own (tmpfs, proc, the /dev nodes) or a bind of the same path of
    # the host, on the host's filesystem there (ext4, xfs, overlay, 9p, ... whatever this host uses).
    for point, fstype in mounts:
        if fstype not in ("tmpfs", "proc", "devtmpfs"):
            assert fstype == fstype_of(point), (point, fstype)


def test_cannot_inject_terminal_input(tmp_path: Path, parent: str) -> None:
    import fcntl
    import termios

    def probe() -> dict[str, Any]:
        fd = os.open("/dev/null", os.O_RDWR)
        return {
            "tiocsti": _errno_of(lambda: fcntl.ioctl(fd, termios.TIOCSTI, b"x")),
            "tiocsti_high_bits": _errno_of(lambda: fcntl.ioctl(fd, termios.TIOCSTI | (1 << 32), b"x")),
            "other_ioctl": _errno_of(lambda: fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4)),
            "sid_is_self": os.getsid(0) == os.getpid(),
        }

    out = run_probe(plan_for(tmp_path, parent), probe)
    # Refused by seccomp (low 32 bits compared), while ordinary ioctls still reach the driver.
    assert out.result == {
        "tiocsti": "EPERM",
        "tiocsti_high_bits": "EPERM",
        "other_ioctl": "ENOTTY",
        "sid_is_self": True,
    }
