"""`make test-hosts`: run plugind on the hosts its users run, in a real Debian 12 guest under qemu.

Builds (or reuses) the guest image from Debian packages (`build-image.sh`), prepares it once per
recipe and `pyproject.toml` (the project's virtualenv, pip's cache, Docker's base image and build
cache, kept in a qcow2 overlay), then boots a throw-away copy of it with this checkout in a shared
folder and runs the lanes inside: `systemd`, `privileged`, `container`, `rootless`. Each lane
writes its own JSON result into the shared folder; this script joins them into
`build/hosts/report.json`, prints each lane's verdict and exits 0 only when every lane held.

The guest talks to this machine only through qemu's user-mode network (the package registries)
and the shared folder; nothing here touches this machine's cgroups, mounts or network otherwise.
Standard library only: it runs before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from install_key import install_key  # noqa: E402
from report import LANES, TABLE_BEGIN, TABLE_END, supported_hosts_table, validate_report  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
HOST_PACKAGES = ("qemu-system-x86", "qemu-utils", "debootstrap", "e2fsprogs")
PREPARE_TIMEOUT_S = 60 * 60
RUN_TIMEOUT_S = 75 * 60


def log(msg: str, started: float | None = None) -> None:
    """One progress line on the terminal, with the time since `started`."""
    stamp = f"[{time.monotonic() - started:6.0f}s] " if started is not None else ""
    print(f"test-hosts: {stamp}{msg}", flush=True)


def ensure_host_packages() -> None:
    """Install qemu and debootstrap from Debian's packages where they are missing."""
    missing = []
    for pkg in HOST_PACKAGES:
        probe = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True, check=False
        )
        if "install ok installed" not in probe.stdout:
            missing.append(pkg)
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"test-hosts: needs root to install {' '.join(missing)} (and to build the image)")
    log(f"installing Debian packages: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True, env=env
    )


def accel() -> list[str]:
    """KVM where the CPU offers VMX/SVM to us, else TCG (plain emulation); PLUGIND_HOSTS_ACCEL overrides.

    A /dev/kvm alone is not enough: a paravirtual KVM device (as on some cloud VMs) runs only
    guest kernels built for it, and Debian's stock kernel hangs early under it.
    """
    choice = os.environ.get("PLUGIND_HOSTS_ACCEL", "auto")
    if choice == "auto":
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").split()
        usable = os.access("/dev/kvm", os.R_OK | os.W_OK) and ("vmx" in flags or "svm" in flags)
        choice = "kvm" if usable else "tcg"
    if choice == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", "tcg,thread=multi,tb-size=512", "-cpu", "max"]


def checkout_tar(dest: Path) -> None:
    """This checkout as git sees it (tracked and untracked-but-not-ignored files) in one tar."""
    names = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    with tarfile.open(dest, "w") as tar:
        for raw in names:
            name = raw.decode()
            if name and (REPO / name).exists():
                tar.add(REPO / name, arcname=name, recursive=False)


def tail_progress(path: Path, started: float, stop: threading.Event) -> None:
    """Print the guest's progress lines as they appear in the shared folder."""
    seen = 0
    while True:
        done = stop.wait(2.0)
        if path.exists():
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            for line in lines[seen:]:
                log("guest: " + line.split(" ", 1)[-1], started)
            seen = len(lines)
        if done:
            return


def boot(
    disk: Path, kernel: Path, initrd: Path, share: Path, timeout_s: int, console: Path, started: float
) -> int:
    """Boot the guest on `disk` with `share` as /mnt/host; returns qemu's exit status."""
    cmd = [
        "timeout",
        "--signal=KILL",
        str(timeout_s),
        "qemu-system-x86_64",
        *accel(),
        "-m",
        "4G",
        "-smp",
        "2",
        "-kernel",
        str(kernel),
        "-initrd",
        str(initrd),
        "-append",
        "root=/dev/vda rw console=ttyS0 systemd.unified_cgroup_hierarchy=1 panic=-1",
        "-drive",
        f"file={disk},format=qcow2,if=virtio,cache=unsafe",
        "-virtfs",
        f"local,path={share},mount_tag=host0,security_model=none",
        "-netdev",
        "user,id=n0",
        "-device",
        "virtio-net-pci,netdev=n0",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        f"file:{console}",
        "-no-reboot",
    ]
    stop = threading.Event()
    watcher = threading.Thread(
        target=tail_progress, args=(share / "out" / "progress.log", started, stop), daemon=True
    )
    watcher.start()
    try:
        return subprocess.run(cmd, check=False).returncode
    finally:
        stop.set()
        watcher.join()


def new_share(build: Path, lanes: list[str]) -> Path:
    """A fresh shared folder: the checkout, the guest's entry script, the lanes to run."""
    share = build / "share"
    if share.exists():
        shutil.rmtree(share)
    (share / "out").mkdir(parents=True)
    checkout_tar(share / "src.tar")
    shutil.copy(HERE / "guest" / "run.sh", share / "run.sh")
    (share / "lanes").write_text(" ".join(lanes) + "\n", encoding="ascii")
    return share


def qcow2_over(backing: Path, fmt: str, dest: Path) -> None:
    """A copy-on-write overlay `dest` on top of `backing`."""
    dest.unlink(missing_ok=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(backing), str(dest)],
        check=True,
    )


def prepared_image(build: Path, base: Path, key: str, started: float) -> Path:
    """The base image with the project's environment installed: reused while its key holds."""
    # Keyed on what pip installs and on the preparing script; Docker's build cache is an
    # optimisation only, so a changed Dockerfile does not re-prepare.
    recipe = install_key(REPO / "pyproject.toml") + (HERE / "guest" / "prepare.sh").read_text("utf-8")
    deps = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    prepared = build / f"prepared-{key}-{deps}.qcow2"
    if prepared.exists():
        log(f"prepared guest cached: {prepared.name}", started)
        return prepared
    for old in build.glob("prepared-*.qcow2"):
        old.unlink()
    log("preparing the guest (project venv, pip cache, Docker base image): once per recipe", started)
    # An interrupted or failed preparation is resumed (every step of prepare.sh is idempotent).
    work = build / f"prepared-{key}.partial"
    if not work.exists():
        qcow2_over(base, "raw", work)
    share = new_share(build, ["prepare"])
    shutil.copy(build / f"container-base-{key}.tar", share / "container-base.tar")
    rc = boot(
        work,
        build / f"vmlinuz-{key}",
        build / f"initrd-{key}",
        share,
        PREPARE_TIMEOUT_S,
        build / "console-prepare.log",
        started,
    )
    result = read_json(share / "out" / "prepare.json")
    if rc != 0 or not result.get("ok"):
        detail = result.get("detail") or f"qemu exited {rc}; see {build / 'console-prepare.log'}"
        log(f"preparing the guest failed: {detail}", started)
        keep_logs(share, build / "prepare-logs")
        raise SystemExit(1)
    work.rename(prepared)
    log("prepared guest cached", started)
    return prepared


def read_json(path: Path) -> dict:
    """A lane's result, or {} when the lane wrote none (it crashed or the guest died)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def keep_logs(share: Path, dest: Path) -> None:
    """Keep the guest's logs after the shared folder is gone."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(share / "out", dest)


def publish(build: Path) -> int:
    """Copy the last report to docs/hosts-report.json and remake the docs' "Supported hosts" table."""
    report = read_json(build / "report.json")
    problems = validate_report(report, list(report.get("lanes", {})))
    if not report or problems:
        log(f"no valid report to publish in {build}: {'; '.join(problems) or 'missing'}")
        return 1
    (REPO / "docs" / "hosts-report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    ops = REPO / "docs" / "operations.md"
    text = ops.read_text(encoding="utf-8")
    begin, end = text.index(TABLE_BEGIN), text.index(TABLE_END) + len(TABLE_END)
    ops.write_text(text[:begin] + supported_hosts_table(report) + text[end:], encoding="utf-8")
    log(f"published {build / 'report.json'} to docs/hosts-report.json and docs/operations.md")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 only when every lane held."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--lanes", default=",".join(LANES), help=f"comma-separated subset of {','.join(LANES)}"
    )
    parser.add_argument("--build", type=Path, default=REPO / "build" / "hosts")
    parser.add_argument("--publish", action="store_true", help="publish the last report into docs/ (no run)")
    args = parser.parse_args(argv)
    if args.publish:
        return publish(args.build.resolve())
    lanes = [lane for lane in args.lanes.split(",") if lane]
    unknown = sorted(set(lanes) - set(LANES))
    if unknown:
        parser.error(f"unknown lane(s): {', '.join(unknown)}")
    started = time.monotonic()
    build = args.build.resolve()
    build.mkdir(parents=True, exist_ok=True)

    ensure_host_packages()
    log("guest image (debootstrap bookworm, Debian's kernel)", started)
    image = (
        subprocess.run(
            ["bash", str(HERE / "build-image.sh"), str(build)],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    key = Path(image).stem.removeprefix("base-")
    log(f"guest image ready: {Path(image).name}", started)
    prepared = prepared_image(build, Path(image), key, started)

    run_disk = build / "run.qcow2"
    qcow2_over(prepared, "qcow2", run_disk)
    share = new_share(build, lanes)
    log(f"booting the guest for lanes: {', '.join(lanes)}", started)
    rc = boot(
        run_disk,
        build / f"vmlinuz-{key}",
        build / f"initrd-{key}",
        share,
        RUN_TIMEOUT_S,
        build / "console.log",
        started,
    )
    run_disk.unlink(missing_ok=True)
    keep_logs(share, build / "logs")

    guest = read_json(share / "out" / "guest.json")
    report = {"guest": guest, "lanes": {}, "qemu_exit": rc, "seconds": round(time.monotonic() - started)}
    for lane in lanes:
        result = read_json(share / "out" / f"{lane}.json")
        if not result:
            result = {
                "ok": False,
                "detail": f"the lane wrote no result; see build/hosts/logs/{lane}.log",
                "seconds": 0,
            }
        report["lanes"][lane] = result
    problems = validate_report(report, lanes)
    (build / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for lane in lanes:
        res = report["lanes"][lane]
        verdict = "ok" if res.get("ok") else "FAILED"
        why = "" if res.get("ok") else f": {res.get('detail', '')}"
        log(f"lane {lane}: {verdict} ({res.get('seconds', 0)} s){why}")
    for problem in problems:
        log(f"report: {problem}")
    log(f"report: {build / 'report.json'}", started)
    ok = rc == 0 and not problems and all(report["lanes"][lane].get("ok") for lane in lanes)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
