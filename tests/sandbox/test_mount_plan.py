"""The mount plan as data: order, read-only binds, capped /tmp, minimal /dev, hardened /proc."""

from __future__ import annotations

from pathlib import Path

from plugind.config import Settings
from plugind.sandbox.mounts import DEV_NODES, PROC_MASKED, PROC_READ_ONLY, MountOp, mount_ops, split_ops
from plugind.sandbox.plan import Bind, SandboxPlan, build_plan


def plan_with(binds: tuple[Bind, ...], tmp: int = 1 << 20) -> SandboxPlan:
    return SandboxPlan(name="alpha", tree="/srv/alpha", binds=binds, tmp_size_bytes=tmp)


def test_parents_before_children_and_tmp_before_trees_under_it() -> None:
    binds = (
        Bind("/tmp/x/tree", "/tmp/x/tree"),
        Bind("/usr", "/usr"),
        Bind("/root/.pyenv/v", "/root/.pyenv/v"),
    )
    targets = [op.target for op in mount_ops(plan_with(binds))]
    assert targets.index("/tmp") < targets.index("/tmp/x/tree")
    assert targets.index("/usr") < targets.index("/root/.pyenv/v")
    assert targets[-len(PROC_MASKED) :] == list(PROC_MASKED)


def test_tmp_is_size_capped_and_writable() -> None:
    tmp = next(op for op in mount_ops(plan_with((), tmp=8 << 20)) if op.target == "/tmp")
    assert tmp == MountOp("tmpfs", "/tmp", writable=True, data=f"size={8 << 20},mode=1777")


def test_binds_keep_writability_and_symlinks() -> None:
    binds = (
        Bind("/usr", "/usr"),
        Bind("/srv/rw", "/srv/rw", writable=True),
        Bind("/bin", "/bin", symlink="usr/bin"),
    )
    ops = {op.target: op for op in mount_ops(plan_with(binds))}
    assert ops["/usr"] == MountOp("bind", "/usr", source="/usr", writable=False)
    assert ops["/srv/rw"].writable is True
    assert ops["/bin"] == MountOp("symlink", "/bin", source="usr/bin")


def test_dev_has_only_the_harmless_nodes_and_proc_is_hardened() -> None:
    ops = mount_ops(plan_with(()))
    nodes = sorted(op.target for op in ops if op.kind == "devnode")
    assert nodes == sorted(f"/dev/{n}" for n in DEV_NODES)
    assert {"/dev/mem", "/dev/kmem", "/dev/sda", "/dev/tty"}.isdisjoint(nodes)
    kinds = [(op.kind, op.target) for op in ops]
    assert kinds.index(("readonly", "/dev")) > max(kinds.index(("devnode", n)) for n in nodes)
    assert kinds.index(("proc", "/proc")) < min(kinds.index(("readonly", p)) for p in PROC_READ_ONLY)
    assert "/proc/sys" in PROC_READ_ONLY and "/proc/sysrq-trigger" in PROC_READ_ONLY
    assert "/proc/kcore" in PROC_MASKED


def test_default_plan_binds_nothing_secret(tmp_path: Path) -> None:
    ops = mount_ops(build_plan(Settings(), "alpha", tmp_path))
    sources = {op.source for op in ops if op.kind == "bind"}
    assert not {"/", "/root", "/etc", "/etc/shadow", "/home", "/var", "/proc", "/sys"} & sources
    assert all(not op.writable for op in ops if op.kind == "bind")


def test_split_for_the_shared_template() -> None:
    binds = (
        Bind("/usr", "/usr"),
        Bind("/usr/local/share", "/usr/local/share"),
        Bind("/bin", "/bin", symlink="usr/bin"),
        Bind("/srv/alpha", "/srv/alpha"),  # the plugin's tree
    )
    split = split_ops(mount_ops(plan_with(binds)), "/srv/alpha")
    assert split is not None
    assert split.tops == ("/usr", "/dev")  # nested mounts travel with their parent
    assert [op.target for op in split.symlinks] == ["/bin"]
    child = [(op.kind, op.target) for op in split.per_child]
    assert child[:2] == [("tmpfs", "/tmp"), ("bind", "/srv/alpha")]  # /tmp before anything under it
    assert ("proc", "/proc") in child and ("mask", "/proc/kcore") in child
    assert all(op.target != "/srv/alpha" for op in split.shared)
    assert ("readonly", "/dev") in [(op.kind, op.target) for op in split.shared]


def test_no_template_when_a_shared_mount_lives_under_tmp() -> None:
    binds = (Bind("/usr", "/usr"), Bind("/tmp/data", "/tmp/data"), Bind("/srv/alpha", "/srv/alpha"))
    assert split_ops(mount_ops(plan_with(binds)), "/srv/alpha") is None
