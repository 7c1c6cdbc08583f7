"""Capabilities: keep only `allowed_caps` in every set (bounding included), then no_new_privs."""

from __future__ import annotations

import prctl

from plugind.errors import SandboxError
from plugind.sandbox import _libc


def cap_numbers(names: tuple[str, ...] | list[str]) -> list[int]:
    """Capability names ('net_bind_service' or 'CAP_NET_BIND_SERVICE') -> numbers.

    Raises SandboxError (step "capabilities") naming an unknown capability.
    """
    out = []
    for name in names:
        key = "CAP_" + name.upper().removeprefix("CAP_")
        value = getattr(prctl, key, None)
        if not isinstance(value, int):
            raise SandboxError(f"unknown capability {name!r} in sandboxing.allowed_caps", step="capabilities")
        out.append(value)
    return out


def prepare_drop(allowed: list[int]) -> None:
    """In a pre-contained spare, ahead of a hand-off whose `drop(plugin_allowed)` has
    `plugin_allowed` within `allowed`: the part of `drop` that takes from it no capability it still
    uses for the hand-off (mounts, hostname, rlimits), done while it waits: ambient and inheritable
    cleared, the bounding set reduced to `allowed` (it bounds what an execve may gain, not what this
    process holds), the securebits set and locked. The effective and permitted sets stay whole
    until `drop`, which does all of this again at hand-off (each of it idempotent, and a bounding
    set can only shrink) and then limits them. Raises OSError from the kernel."""
    _libc.prctl(_libc.PR_CAP_AMBIENT, _libc.PR_CAP_AMBIENT_CLEAR_ALL)
    prctl.cap_inheritable.limit()
    _drop_bounding(allowed)
    _lock_securebits()


def _drop_bounding(allowed: list[int]) -> None:
    for cap in range(prctl.CAP_LAST_CAP + 1):
        if cap not in allowed and prctl.capbset_read(cap):
            prctl.capbset_drop(cap)


def _lock_securebits() -> None:
    prctl.securebits.noroot = True
    prctl.securebits.noroot_locked = True
    prctl.securebits.no_setuid_fixup = True
    prctl.securebits.no_setuid_fixup_locked = True
    prctl.securebits.keep_caps_locked = True


def drop(allowed: list[int]) -> None:
    """Drop every capability not in `allowed` from all five sets. Raises OSError from the kernel.

    Order (nsjail): ambient and inheritable first, the bounding set while CAP_SETPCAP is still
    effective, then permitted/effective; SECBIT_NOROOT so exec as uid 0 grants nothing back.
    """
    prepare_drop(allowed)
    prctl.cap_effective.limit(*allowed)
    prctl.cap_permitted.limit(*allowed)


def no_new_privs() -> None:
    """PR_SET_NO_NEW_PRIVS: execve can never grant privileges again (setuid bits, file caps)."""
    prctl.set_no_new_privs(1)


__all__ = ["cap_numbers", "drop", "no_new_privs", "prepare_drop"]
