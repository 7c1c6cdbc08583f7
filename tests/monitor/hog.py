"""A plugin-like child process for the monitor tests, driven by commands on stdin.

Each command line is answered with one line "ok ..." on stdout once it took effect:
    mem N        allocate and touch N MiB more          free       drop all allocations
    fds N        open N more file descriptors           closefds   close them
    threads N    start N more idle threads
    conn PORT N  open N TCP connections to 127.0.0.1:PORT
    listen       open a listening TCP socket and a UDP socket
    unix N       open N Unix socket pairs (not network connections)
    spin SECS    burn CPU for SECS seconds
    child-mem N  run a child process that allocates N MiB (to be OOM-killed in a small cgroup)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

blocks: list[bytearray] = []
fds: list[int] = []
socks: list[socket.socket] = []
stop = threading.Event()

for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "mem":
        block = bytearray(int(args[0]) * 1024 * 1024)
        for i in range(0, len(block), 4096):  # touch every page so it is resident
            block[i] = 1
        blocks.append(block)
        del block  # only `blocks` may hold it, so that `free` really frees
    elif cmd == "free":
        blocks.clear()
    elif cmd == "fds":
        fds.extend(os.open(os.devnull, os.O_RDONLY) for _ in range(int(args[0])))
    elif cmd == "closefds":
        for fd in fds:
            os.close(fd)
        fds.clear()
    elif cmd == "threads":
        for _ in range(int(args[0])):
            threading.Thread(target=stop.wait, daemon=True).start()
    elif cmd == "conn":
        for _ in range(int(args[1])):
            socks.append(socket.create_connection(("127.0.0.1", int(args[0]))))
    elif cmd == "listen":
        socks.append(socket.create_server(("127.0.0.1", 0)))
        socks.append(socket.socket(socket.AF_INET6, socket.SOCK_DGRAM))
    elif cmd == "unix":
        for _ in range(int(args[0])):
            socks.extend(socket.socketpair())
    elif cmd == "spin":
        end = time.process_time() + float(args[0])
        while time.process_time() < end:
            pass
    elif cmd == "child-mem":
        code = f"b = bytearray({int(args[0])} * 1024 * 1024)\nfor i in range(0, len(b), 4096): b[i] = 1"
        rc = subprocess.run([sys.executable, "-c", code], check=False).returncode
        print("ok", cmd, rc, flush=True)
        continue
    print("ok", cmd, flush=True)
