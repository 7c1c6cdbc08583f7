"""The filters are built in libseccomp's binary-tree layout (faster to load and to run): they must
answer every call exactly as the linear layout of the same rules does.

A small classic-BPF interpreter runs both programs, byte for byte as the kernel would be given
them, over every syscall number of the filtered architectures (and one foreign architecture), with
argument values taken from the rules' own comparisons.
"""

from __future__ import annotations

import operator
import struct

import pytest

from plugind.sandbox import seccomp as S

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7  # not in the filter: its bad-arch action
X32_BIT = 0x40000000
U32 = 0xFFFFFFFF


def _decode(prog: bytes) -> list[tuple[int, int, int, int]]:
    assert len(prog) % 8 == 0 and prog
    return [struct.unpack_from("<HBBI", prog, i) for i in range(0, len(prog), 8)]


def _load(data: bytes, k: int) -> int:
    assert k % 4 == 0 and 0 <= k <= len(data) - 4, f"out-of-range load at {k}"
    return int(struct.unpack_from("<I", data, k)[0])


_ALU = {0x00: operator.add, 0x10: operator.sub, 0x40: operator.or_, 0x50: operator.and_,
        0x60: operator.lshift, 0x70: operator.rshift, 0x80: lambda a, _k: -a, 0xA0: operator.xor}


def run_bpf(insns: list[tuple[int, int, int, int]], data: bytes) -> int:
    """What a seccomp classic-BPF program returns for `data` (a struct seccomp_data)."""
    a = x = 0
    mem = [0] * 16
    pc = 0
    for _ in range(10_000):
        code, jt, jf, k = insns[pc]
        cls = code & 0x07
        pc += 1
        if cls == 0x00:  # LD
            mode = code & 0xE0
            assert code & 0x18 == 0, "only 32-bit loads"
            a = _load(data, k) if mode == 0x20 else mem[k] if mode == 0x60 else k if mode == 0 else None  # type: ignore[assignment]
            assert a is not None, f"unsupported load {code:#x}"
        elif cls == 0x01:  # LDX
            mode = code & 0xE0
            x = mem[k] if mode == 0x60 else k if mode == 0 else None  # type: ignore[assignment]
            assert x is not None, f"unsupported ldx {code:#x}"
        elif cls == 0x02:  # ST
            mem[k] = a
        elif cls == 0x03:  # STX
            mem[k] = x
        elif cls == 0x04:  # ALU
            op, src = code & 0xF0, (x if code & 0x08 else k)
            assert op in _ALU, f"unsupported alu {code:#x}"
            a = _ALU[op](a, src) & U32
        elif cls == 0x05:  # JMP
            op, src = code & 0xF0, (x if code & 0x08 else k)
            if op == 0x00:
                pc += k
                continue
            taken = {0x10: a == src, 0x20: a > src, 0x30: a >= src, 0x40: bool(a & src)}.get(op)
            assert taken is not None, f"unsupported jump {code:#x}"
            pc += jt if taken else jf
        elif cls == 0x06:  # RET
            return a if code & 0x18 == 0x10 else k
        elif cls == 0x07:  # MISC
            if code & 0xF8 == 0x00:
                x = a
            else:
                a = x
        else:
            raise AssertionError(f"unknown opcode {code:#x}")
    raise AssertionError("no return within 10,000 instructions")


def _values(rules: list[S.Rule]) -> list[int]:
    out = {0, 1, U32, 1 << 32, (1 << 64) - 1}
    for rule in rules:
        for _i, _op, a, b in rule.args:
            out.update({a, b, a | b, b ^ 1, ~a & U32, a & ~b & U32, (b | (1 << 32))})
    return sorted(v & ((1 << 64) - 1) for v in out)


def _data(nr: int, arch: int, args: tuple[int, ...]) -> bytes:
    return struct.pack("<iIQ6Q", nr, arch, 0x7F00_0000_1000, *args)


def _cases(rules: list[S.Rule]) -> list[bytes]:
    values = _values(rules)
    # Every call with a few plain argument vectors; the calls that have argument rules (whatever
    # their numbers are) with every pair of rule values in arguments 0 and 1.
    plain = [(0,) * 6, (U32,) * 6, ((1 << 64) - 1,) * 6]
    pairs = [(v, w, 0, 0, 0, 0) for v in values for w in values]
    argful = {rule.syscall for rule in rules if rule.args}
    argful_nrs: set[tuple[int, int]] = set()
    for name in argful:
        for arch, native in ((AUDIT_ARCH_X86_64, S.sc.Arch.X86_64), (AUDIT_ARCH_I386, S.sc.Arch.X86)):
            try:
                argful_nrs.add((arch, int(S.sc.resolve_syscall(native, name))))
            except (OSError, ValueError, RuntimeError):
                continue
    out = []
    numbers = [*range(0, 520), *(X32_BIT | n for n in range(0, 560)), U32, 0x7FFFFFFF]
    for arch in (AUDIT_ARCH_X86_64, AUDIT_ARCH_I386, AUDIT_ARCH_AARCH64):
        for nr in numbers:
            nr32 = nr - (1 << 32) if nr > 0x7FFFFFFF else nr
            vectors = plain + pairs if (arch, nr) in argful_nrs else plain
            out += [_data(nr32, arch, args) for args in vectors]
    return out


FILTERS = {
    "guard": (S.ALLOW, S.guard_rules()),
    "allow-none": (S.EPERM, S.allow_rules("none")),
    "allow-host": (S.EPERM, S.allow_rules("host")),
    "strict": (S.KILL, S.strict_rules()),
}


@pytest.mark.skipif(S.platform.machine() != "x86_64", reason="the cases enumerate x86_64 and i386 numbers")
@pytest.mark.parametrize("name", sorted(FILTERS))
def test_tree_layout_answers_every_call_as_the_linear_one(name: str) -> None:
    default, rules = FILTERS[name]
    linear = _decode(S.compile_bpf(S._build(default, rules, optimize=False)))
    tree = _decode(S.compile_bpf(S._build(default, rules)))
    assert linear != tree, "libseccomp gave the same program: the binary-tree layout is not in use"
    mismatches = []
    for data in _cases(rules):
        want, got = run_bpf(linear, data), run_bpf(tree, data)
        if want != got:
            nr, arch = struct.unpack_from("<iI", data)
            mismatches.append((hex(arch), nr, data[16:32].hex(), hex(want), hex(got)))
    assert not mismatches, mismatches[:20]


def test_interpreter_tells_the_actions_apart() -> None:
    # The harness itself: the linear allowlist allows read, refuses mount, kills on a foreign arch.
    prog = _decode(S.compile_bpf(S._build(S.EPERM, S.allow_rules("none"), optimize=False)))
    nr_read = int(S.sc.resolve_syscall(S.sc.Arch.X86_64, "read"))
    nr_mount = int(S.sc.resolve_syscall(S.sc.Arch.X86_64, "mount"))
    assert run_bpf(prog, _data(nr_read, AUDIT_ARCH_X86_64, (0,) * 6)) == 0x7FFF0000  # SECCOMP_RET_ALLOW
    assert run_bpf(prog, _data(nr_mount, AUDIT_ARCH_X86_64, (0,) * 6)) == 0x00050000 | 1  # ERRNO(EPERM)
    assert run_bpf(prog, _data(nr_read, AUDIT_ARCH_AARCH64, (0,) * 6)) != 0x7FFF0000
