"""Network modes: `none` (loopback only), `restricted` (veth + allowlist firewall), `host`.

`restricted`: a veth pair joins the plugin's network namespace to the host. The host end holds the
gateway address of a /30 out of 10.213.0.0/16; inside, an nftables table in the *plugin's own*
namespace accepts only the allowed targets and rejects everything else at once (an ICMP
admin-prohibited, so connect() fails fast instead of timing out). The plugin has no CAP_NET_ADMIN
and cannot touch that table; it vanishes with the namespace. We never change the host's forwarding
or NAT: targets beyond the host itself need the operator to route 10.213.0.0/16 (see docs/sandbox.md).
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import shutil
import socket
import struct
import subprocess

from plugind.sandbox import _libc as c
from plugind.sandbox.plan import Target

# pyroute2 (about 20 MiB of heap) is imported by the functions that use it, on the fork-server's
# first restricted network: the fork-server imports this module, and every page of its heap is
# copied into the page tables of each plugin it forks (a fork costs about twice as much with it).

SUBNET = ipaddress.ip_network("10.213.0.0/16")
SLOTS = SUBNET.num_addresses // 4
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up() -> None:
    """Bring `lo` up in the current network namespace (an ioctl: cheaper than a netlink socket).

    Raises KernelCallError naming the ioctl.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sh14x", b"lo", 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        try:
            fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sh14x", b"lo", flags | IFF_UP))
        except OSError as exc:
            raise c.KernelCallError("ioctl(SIOCSIFFLAGS, lo, IFF_UP)", exc.errno or 1) from exc


def slot_addresses(slot: int) -> tuple[str, str]:
    """(host end, plugin end) addresses of /30 number `slot`."""
    base = int(SUBNET.network_address) + 4 * (slot % SLOTS)
    return str(ipaddress.ip_address(base + 1)), str(ipaddress.ip_address(base + 2))


def host_ifname(slot: int) -> str:
    """The host end of the veth pair for `slot`."""
    return f"pd{slot % SLOTS}h"


def nft_ruleset(targets: tuple[Target, ...]) -> str:
    """The nftables script for the plugin's namespace: only `targets` are reachable."""
    lines = [
        "table inet plugind {",
        "  chain out {",
        "    type filter hook output priority 0; policy accept;",
        '    oifname "lo" accept',
        "    ct state established,related accept",
    ]
    for t in targets:
        net = ipaddress.ip_network(t.network)
        fam = "ip" if net.version == 4 else "ip6"
        if t.port is None:
            lines.append(f"    {fam} daddr {net} accept")
        else:
            lines.append(f"    {fam} daddr {net} tcp dport {t.port} accept")
            lines.append(f"    {fam} daddr {net} udp dport {t.port} accept")
    lines += ["    reject with icmpx type admin-prohibited", "  }", "}", ""]
    return "\n".join(lines)


def setup_restricted(pid: int, targets: tuple[Target, ...]) -> str:
    """Parent side, while the child waits: veth into `pid`'s netns, addresses, route, firewall.

    Returns the host interface name. Raises KernelCallError (netlink and nft errors included).
    """
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        return _setup_restricted(pid, targets)
    except NetlinkError as exc:
        raise c.KernelCallError(f"netlink: {exc.args[-1] if exc.args else exc}", exc.code or 5) from exc


def _setup_restricted(pid: int, targets: tuple[Target, ...]) -> str:
    from pyroute2 import IPRoute

    nft = shutil.which("nft") or "/usr/sbin/nft"
    if not os.path.exists(nft):
        raise c.KernelCallError("nft: not installed (apt-get install nftables)", 2)
    own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    theirs = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        slot, host_if, peer_if = _make_pair(pid, theirs)
        host_addr, plugin_addr = slot_addresses(slot)
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=host_if)[0]
            ipr.addr("add", index=idx, address=host_addr, prefixlen=30)
            ipr.link("set", index=idx, state="up")
        c.setns(theirs, c.CLONE_NEWNET)
        try:
            with IPRoute() as ipr:
                idx = ipr.link_lookup(ifname=peer_if)[0]
                ipr.link("set", index=idx, ifname="eth0")
                ipr.addr("add", index=idx, address=plugin_addr, prefixlen=30)
                ipr.link("set", index=idx, state="up")
                ipr.link("set", index=1, state="up")
                ipr.route("add", dst="0.0.0.0/0", gateway=host_addr)
            res = subprocess.run(
                [nft, "-f", "-"],
                input=nft_ruleset(targets).encode(),
                capture_output=True,
                timeout=10,
                check=False,
            )
            if res.returncode != 0:
                raise c.KernelCallError(f"nft -f: {res.stderr.decode(errors='replace').strip()[:300]}", 22)
        finally:
            c.setns(own, c.CLONE_NEWNET)
        return host_if
    finally:
        os.close(own)
        os.close(theirs)


def _make_pair(pid: int, netns_fd: int) -> tuple[int, str, str]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for i in range(64):
            slot = (pid + i) % SLOTS
            host_if, peer_if = host_ifname(slot), f"pd{slot}p"
            if ipr.link_lookup(ifname=host_if):
                continue
            ipr.link("add", ifname=host_if, kind="veth", peer=peer_if)
            ipr.link("set", index=ipr.link_lookup(ifname=peer_if)[0], net_ns_fd=netns_fd)
            return slot, host_if, peer_if
    raise c.KernelCallError("veth: no free address slot in 10.213.0.0/16", 28)


def remove_host_link(ifname: str) -> None:
    """Delete the host end if it is still there (it normally goes with the plugin's namespace)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        for idx in ipr.link_lookup(ifname=ifname):
            try:
                ipr.link("del", index=idx)
            except NetlinkError as exc:
                if exc.code != 19:  # ENODEV: the namespace teardown got there first
                    raise


__all__ = ["loopback_up", "nft_ruleset", "remove_host_link", "setup_restricted", "slot_addresses"]
