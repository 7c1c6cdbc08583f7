"""seccomp_audit: the killed plugin's system call, from the kernel's audit record."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plugind.sandbox.seccomp_audit import parse_record, ring_buffer_problem, seccomp_kill, syscall_name

RECORD = ('5,2080,10057816365,-;audit: type=1326 audit(1795630204.648:203): auid=4294967295 uid=0 '
          'gid=0 ses=4294967295 pid=5079 comm="python" exe="/usr/bin/python3.11" sig=31 '
          'arch=c000003e syscall=175 compat=0 ip=0x7f3dfb71f829 code=0x80000000\n')
X86_64 = 0xC000003E


def test_parse_record_reads_pid_call_and_time() -> None:
    kill = parse_record(RECORD, 5079, since=1795630204.0)
    assert kill is not None
    assert (kill.syscall, kill.name, kill.arch, kill.signal) == (175, "init_module", X86_64, 31)
    assert kill.describe() == "init_module (175)"
    assert parse_record(RECORD, 5080, since=0) is None  # another process
    assert parse_record(RECORD, 5079, since=1795630300.0) is None  # logged before this one started
    assert parse_record(RECORD.replace("type=1326", "type=1300"), 5079, since=0) is None
    assert parse_record("6,1,1,-;random kernel line pid=5079 syscall=1\n", 5079, since=0) is None


def test_unknown_numbers_are_described_by_number() -> None:
    assert syscall_name(X86_64, 313) == "finit_module"
    assert syscall_name(X86_64, 99_999) is None
    kill = parse_record(RECORD.replace("syscall=175", "syscall=99999"), 5079, since=0)
    assert kill is not None and kill.name is None and kill.describe() == "syscall 99999"


def test_an_unreadable_ring_buffer_gives_nothing(tmp_path: Path) -> None:
    assert seccomp_kill(1, 0.0, path=str(tmp_path / "no-kmsg")) is None


def test_ring_buffer_problem_says_why_it_cannot_be_read(tmp_path: Path) -> None:
    missing = tmp_path / "no-kmsg"
    assert ring_buffer_problem(str(missing)) == f"open({missing}): No such file or directory"
    readable = tmp_path / "kmsg"
    readable.write_text("")
    assert ring_buffer_problem(str(readable)) is None


def test_a_file_of_records_is_read_to_the_newest_match(tmp_path: Path) -> None:
    older = RECORD.replace("syscall=175", "syscall=41").replace("1795630204.648", "1795630100.000")
    kmsg = tmp_path / "kmsg"
    kmsg.write_text(older + "6,2,2,-;unrelated\n" + RECORD)
    kill = seccomp_kill(5079, 1795630000.0, path=str(kmsg))
    assert kill is not None and kill.name == "init_module"


@pytest.mark.root
def test_a_real_seccomp_kill_is_found_in_the_kernel_log() -> None:
    # A process kills itself through a real filter; the kernel's record names the call.
    if not os.access("/dev/kmsg", os.R_OK):
        pytest.skip("the kernel ring buffer is not readable here")
    code = (
        "import ctypes, pyseccomp as sc\n"
        "f = sc.SyscallFilter(defaction=sc.ALLOW)\n"
        "f.add_rule(sc.KILL_PROCESS, 'init_module')\n"
        "f.load()\n"
        "ctypes.CDLL(None).syscall(175, 0, 0, 0)\n"
    )
    since = time.time()
    proc = subprocess.Popen([sys.executable, "-c", code])
    assert proc.wait() == -signal.SIGSYS
    kill = seccomp_kill(proc.pid, since)
    assert kill is not None
    assert kill.name == "init_module" and kill.syscall == 175 and kill.signal == signal.SIGSYS
