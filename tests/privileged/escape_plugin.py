"""The hostile plugin of the daemon escape suite (`test_escape_daemon.py`), as plugin source text.

Its `probe` hook takes `{"attempt": NAME, "args": {...}}`, tries that one escape from inside the
sandbox the real daemon gave it, and returns what happened (errno names, or what it saw). A second
plugin, `sibling`, is the victim of the cross-plugin attempts; a third, `calm`, is the well-behaved
plugin that must keep answering while `hostile` spins.
"""

from __future__ import annotations

from kit import plugin_source

# Everything below runs inside the sandbox, after seccomp, like any plugin code.
HOSTILE_HEADER = r'''
import ctypes, errno, stat
from pathlib import Path

LIBC = ctypes.CDLL(None, use_errno=True)


def attempt(fn):
    """The errno name `fn` fails with, or "OK"."""
    try:
        fn()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "OK"


def libc(name, *args):
    """-errno of a raw libc call, or its return value."""
    ret = getattr(LIBC, name)(*args)
    return -ctypes.get_errno() if ret == -1 else ret


def reap(pid):
    """Wait for our child; the runtime is PID 1 and may have reaped it already."""
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def read1(path):
    with open(path, "rb") as f:
        return f.read(1)


def status():
    text = Path("/proc/self/status").read_text()
    return {k.strip(): " ".join(v.split()) for k, _, v in (ln.partition(":") for ln in text.splitlines())}


def host_pids(daemon):
    return {
        "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "kill": attempt(lambda: os.kill(daemon, signal.SIGTERM)),
        "kill0": attempt(lambda: os.kill(daemon, 0)),
        "kill_all": attempt(lambda: os.kill(-1, 0)),  # -1 reaches every process we could signal
    }


def shadow_and_root(secret, home):
    return {
        "shadow": attempt(lambda: open("/etc/shadow").read()),
        "secret": attempt(lambda: open(secret).read()),
        "home": sorted(os.listdir(home)) if os.path.isdir(home) else None,
    }


def write_usr_and_code():
    here = os.path.dirname(os.path.abspath(__file__))
    return {
        "usr": attempt(lambda: open("/usr/escape", "w")),
        "code": attempt(lambda: open(__file__, "a")),
        "newfile": attempt(lambda: open(os.path.join(here, "dropped.py"), "w")),
        "chmod": attempt(lambda: os.chmod(__file__, 0o777)),
    }


def mount():
    return {
        "tmpfs": libc("mount", b"none", b"/tmp", b"tmpfs", 0, None),
        "bind": libc("mount", b"/", b"/tmp", None, 4096, None),
        "umount": libc("umount2", b"/proc", 2),
    }


def unshare_setns():
    fd = os.open("/proc/self/ns/mnt", os.O_RDONLY)
    try:
        return {
            "unshare_user": libc("unshare", 0x10000000),
            "unshare_mnt": libc("unshare", 0x00020000),
            "unshare_net": libc("unshare", 0x40000000),
            "setns": libc("setns", fd, 0),
        }
    finally:
        os.close(fd)


def ptrace_sibling(sibling):
    child = os.fork()
    if child == 0:
        signal.pause()
        os._exit(0)
    try:
        return {
            "attach_sibling": libc("ptrace", 16, sibling, 0, 0),  # PTRACE_ATTACH
            "seize_sibling": libc("ptrace", 0x4206, sibling, 0, 0),  # PTRACE_SEIZE
            "attach_own_child": libc("ptrace", 16, child, 0, 0),
            "sibling_visible": os.path.exists(f"/proc/{sibling}"),
        }
    finally:
        os.kill(child, signal.SIGKILL)
        reap(child)


def kernel_module():
    # finit_module(fd, "", 0): the seccomp filter kills the process on the spot.
    fd = os.open("/proc/self/exe", os.O_RDONLY)
    return {"finit_module": LIBC.syscall(313, fd, b"", 0), "errno": ctypes.get_errno()}


def raw_socket():
    return {
        "raw": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)),
        "packet": attempt(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW)),
        "netlink": attempt(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)),
    }


def loopback(port):
    return {
        "inet": attempt(lambda: socket.create_connection(("127.0.0.1", port), timeout=2).close()),
        "inet6": attempt(lambda: socket.create_connection(("::1", port), timeout=2).close()),
    }


def setuid(name):
    tool = os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
    st = status()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.dup2(w, 1)
        os.execv(tool, [tool, "/proc/self/status"])
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    reap(pid)
    after = {k: " ".join(v.split()) for k, _, v in (ln.partition(":") for ln in data.decode().splitlines())}
    return {
        "no_new_privs": st["NoNewPrivs"],
        "Uid": after.get("Uid"),
        "CapEff": after.get("CapEff"),
        "CapPrm": after.get("CapPrm"),
    }


def hostname():
    return {"set": libc("sethostname", b"pwned", 5), "name": socket.gethostname()}


def mknod():
    return {
        "tmp": attempt(lambda: os.mknod("/tmp/mem", stat.S_IFCHR | 0o600, os.makedev(1, 1))),
        "dev": attempt(lambda: os.mknod("/dev/sda", stat.S_IFBLK | 0o600, os.makedev(8, 0))),
    }


def chroot():
    os.makedirs("/tmp/jail", exist_ok=True)
    result = attempt(lambda: os.chroot("/tmp/jail"))
    os.chdir("/")
    for _ in range(16):
        os.chdir("..")
    return {"chroot": result, "cwd": os.getcwd(), "top": sorted(os.listdir("."))}


def other_plugin(sibling, secret_file):
    buf = ctypes.create_string_buffer(8)
    iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 8)
    return {
        "file": attempt(lambda: open(secret_file).read()),
        "mem": attempt(lambda: read1(f"/proc/{sibling}/mem")),
        "vm_readv": libc("process_vm_readv", sibling, iov, 1, iov, 1, 0),
    }


def environment(key):
    raw = Path("/proc/self/environ").read_bytes()
    return {"names": sorted(os.environ), "key_in_environ": key.encode() in raw}


def fill_tmp():
    written, error = 0, None
    block = b"x" * (1 << 20)
    try:
        with open("/tmp/fill", "wb") as f:
            for _ in range(256):
                f.write(block)
                f.flush()
                written += len(block)
    except OSError as exc:
        error = errno.errorcode.get(exc.errno or 0)
    finally:
        os.unlink("/tmp/fill")  # the next attempt starts with an empty /tmp
    return {"written": written, "error": error}


def fork_bomb():
    children, error = [], None
    try:
        for _ in range(10_000):
            pid = os.fork()
            if pid == 0:
                signal.pause()
                os._exit(0)
            children.append(pid)
    except OSError as exc:
        error = errno.errorcode.get(exc.errno or 0)
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    for pid in children:
        reap(pid)
    return {"forked": len(children), "error": error}


def spin(workers, stop, seconds):
    # `workers` spinning processes (without the quota they would take every CPU of the host), until
    # the test creates `stop` in this plugin's tree; `seconds` only bounds a hang.
    stop = os.path.join(os.path.dirname(os.path.abspath(__file__)), stop)
    end = time.monotonic() + seconds
    kids = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            while time.monotonic() < end:
                pass
            os._exit(0)
        kids.append(pid)
    while not os.path.exists(stop) and time.monotonic() < end:
        time.sleep(0.01)
    for pid in kids:
        os.kill(pid, signal.SIGKILL)
    for pid in kids:
        reap(pid)
    return {"workers": len(kids), "stopped": os.path.exists(stop)}


HOARD = []


def eat_memory():
    while True:
        HOARD.append(b"\x01" * (8 << 20))


ATTEMPTS = {
    "host_pids": host_pids, "shadow_and_root": shadow_and_root, "write_usr_and_code": write_usr_and_code,
    "mount": mount, "unshare_setns": unshare_setns, "ptrace_sibling": ptrace_sibling,
    "kernel_module": kernel_module, "raw_socket": raw_socket, "loopback": loopback, "setuid": setuid,
    "hostname": hostname, "mknod": mknod, "chroot": chroot, "other_plugin": other_plugin,
    "environment": environment, "fill_tmp": fill_tmp, "fork_bomb": fork_bomb, "spin": spin,
    "eat_memory": eat_memory, "status": status,
}
'''

HOSTILE_PROBE = 'return ATTEMPTS[data["attempt"]](**data.get("args", {}))'


def hostile() -> dict[str, str]:
    return plugin_source("hostile", {"probe": (0, HOSTILE_PROBE)}, header=HOSTILE_HEADER)


def sibling() -> dict[str, str]:
    files = plugin_source("sibling", {"secret": (0, 'return open(os.path.join(HERE, "secret.txt")).read()')},
                          header="HERE = os.path.dirname(os.path.abspath(__file__))")
    files["secret.txt"] = "the sibling's secret\n"
    return files


def calm() -> dict[str, str]:
    return plugin_source("calm", {"ping": (0, "return data")})
