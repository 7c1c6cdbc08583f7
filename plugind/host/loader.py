"""Verified bundle -> extracted read-only tree under `plugins.extract_dir/NAME-VERSION-<digest prefix>`.

The tree is extracted from the bytes that were verified (never by re-opening the bundle);
`extract_bundle` builds it in a temporary directory and renames it into place, recording every
file's SHA-256 in this process's memory. An existing tree is reused only when this loader extracted
it and it still matches that record byte for byte (a marker file on disk proves nothing: anyone
who can write `data/` can write it). Before every restart of a plugin `ensure` checks the tree
again (a first start follows `load`, which has just checked it) and re-extracts it from verified
bytes when it was changed.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from plugind import fsio
from plugind.config import PLUGIN_NAME_RE, Settings
from plugind.errors import BundleError, LoadError, PluginError
from plugind.fsio import FileIdentity, atomic_write, file_identity
from plugind.host.state import journal_path
from plugind.trust import PluginSecurity, TrustLevel, VerifiedBundle
from plugind.trust.bundle import BundleLimits, extract_bundle, remove_tree
from plugind.trust.signature import signature_path
from plugind.trust.tree import TreeRecord, tree_mismatch

log = logging.getLogger("plugind.host.loader")

DIGEST_PREFIX = 16
# Verdicts `PluginLoader.verify` keeps: bundles up to this size (their bytes are kept with them), at
# most this many and this many bytes in all (the oldest go first).
VERIFIED_MAX_BYTES = 1024 * 1024
VERIFIED_MAX_ENTRIES = 4096
VERIFIED_MAX_TOTAL = 64 * 1024 * 1024
_MARKER_SUFFIX = ".digest"
# The largest tree `load_kept` checks (a stat per file, on the caller's thread); a larger one goes
# through `load` in a worker thread.
KEPT_TREE_FILES = 64
# A check by stats that takes longer than this (slow stats: a network file system, a disk in
# trouble) turns them off: the event loop must not wait on the file system.
KEPT_SLOW_S = 0.005
KEPT_SLOW_TIMES = 3


LEFTOVER_PREFIXES = (".extract-", ".old-")  # extract_bundle's temporary directories


def remove_leftovers(settings: Settings) -> list[Path]:
    """What a daemon killed mid-write left behind, removed: the temporary directories of an
    extraction or a tree replacement in `plugins.extract_dir` (up to `max_unpacked_bytes` each),
    the temporary files of its tree markers, and those of the state file and its journal. Returns
    what was removed.

    Only with the instance lock held (daemon.lock_instance: no other daemon is writing them), and
    before the first load. Blocking; never raises (what cannot be removed is logged and kept)."""
    removed: list[Path] = []
    candidates: list[Path] = []
    extract_dir = Path(settings.plugins.extract_dir)
    try:
        with os.scandir(extract_dir) as entries:
            for e in entries:
                if (e.name.startswith(LEFTOVER_PREFIXES) and e.is_dir(follow_symlinks=False)) or (
                        e.name.startswith(fsio.TEMP_PREFIX) and e.is_file(follow_symlinks=False)):
                    candidates.append(Path(e.path))  # the last: a tree marker's (_write_marker)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot list %s for leftovers: %s", extract_dir, exc.strerror or exc)
    state = Path(settings.plugins.state_file)
    candidates += fsio.stale_temp_files(state) + fsio.stale_temp_files(journal_path(state))
    for path in candidates:
        try:
            if path.is_dir() and not path.is_symlink():
                remove_tree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot remove leftover %s: %s", path, exc.strerror or exc)
            continue
        removed.append(path)
    return removed


@dataclass(frozen=True)
class LoadedBundle:
    """A verified bundle and the read-only tree extracted from it."""

    bundle: VerifiedBundle
    tree: Path
    reused: bool


class PluginLoader:
    """Verifies a bundle (once, in memory), applies the trust policy and extracts it."""

    def __init__(
        self,
        settings: Settings,
        security: PluginSecurity,
        *,
        refresh: Callable[[], PluginSecurity] | None = None,
    ) -> None:
        """`refresh`, when given, rebuilds the security (re-reads the trust list) before each load
        and scan, so `plugind trust add/remove` takes effect without a restart."""
        self._settings = settings
        self._security = security
        self._refresh = refresh
        self.extract_dir = Path(settings.plugins.extract_dir)
        self._limits = BundleLimits.from_settings(settings)
        # resolved tree path -> (bundle digest, per-file record, stat identities of the files found
        # to match: tree_mismatch's `checked`), for trees this loader extracted.
        self._records: dict[str, tuple[str, TreeRecord, dict[str, FileIdentity]]] = {}
        # bundle digest -> (its tree, the key of its record): `load_kept`'s way to the record without
        # resolving the tree's path again (the identities of the checked files pin their inodes).
        self._trees: dict[str, tuple[Path, str]] = {}
        self._kept_slow = 0  # answers of load_kept slower than KEPT_SLOW_S
        # bundle path -> (security, identities of the bundle and its .sig, verdict): see `verify`.
        self._verified: dict[str, tuple[PluginSecurity, tuple[FileIdentity | None, FileIdentity | None],
                                        VerifiedBundle]] = {}
        self._verified_lock = threading.Lock()
        self._verified_bytes = 0  # the bundle bytes kept with them
        self._warned_dir = False

    def admits(self, level: TrustLevel | str) -> bool:
        """True when the policy (security.min_trust_level) lets a bundle of `level` load."""
        return self._security.policy.allows(level)

    def refresh_trust(self) -> None:
        """Re-read the trust list (blocking). Raises TrustListError / InvalidKey: fail closed."""
        if self._refresh is not None:
            self._security = self._refresh()

    def verify(self, path: Path, *, fresh: bool = False) -> VerifiedBundle:
        """Read and verify `path` once. Raises SignatureInvalid, BundleError, SecurityError, OSError.

        The verdict on a bundle is kept (with its bytes, up to VERIFIED_MAX_BYTES) and given again
        while the bundle file and its `.sig` keep their stat identity (`fsio.file_identity`: inode,
        size, mode, owner, mtime and ctime, which any write, rename or `touch` changes) and the
        security they were verified under is the same object (`SecuritySource` builds a new one
        whenever the trust list, the key or the settings change). Only a verification of files that
        did not change while they were read, and had not changed for `fsio.SETTLE_S` before, is
        kept. `fresh` verifies again whatever is kept (a restart's re-verification does).
        """
        security = self._security
        key = str(path)
        before = _identities(path)
        if not fresh:
            kept = self._verified.get(key)
            if kept is not None and kept[0] is security and kept[1] == before:
                return kept[2]
        started = time.time_ns()
        vb = security.verify_bundle(path)
        if (
            len(vb.data) <= VERIFIED_MAX_BYTES
            and _identities(path) == before
            and all(fsio.settled(identity, started) for identity in before)
        ):
            with self._verified_lock:
                self._forget_verdict(key)
                while self._verified and (len(self._verified) >= VERIFIED_MAX_ENTRIES or
                                          self._verified_bytes + len(vb.data) > VERIFIED_MAX_TOTAL):
                    self._forget_verdict(next(iter(self._verified)))  # the oldest
                self._verified[key] = (security, before, vb)
                self._verified_bytes += len(vb.data)
        else:
            with self._verified_lock:
                self._forget_verdict(key)
        return vb

    def _forget_verdict(self, key: str) -> None:
        # Under _verified_lock.
        kept = self._verified.pop(key, None)
        if kept is not None:
            self._verified_bytes -= len(kept[2].data)

    def load(self, path: Path, *, expected_name: str | None = None) -> LoadedBundle:
        """Verify, check the policy and extract `path`. Blocking: run it in a thread.

        Raises SignatureInvalid / BundleError (tampered, malformed, or it or its `.sig` unreadable),
        UntrustedPlugin (policy),
        LoadError (the bundle is not the plugin that was asked for; extraction I/O failed).
        """
        self.refresh_trust()
        try:
            vb = self.verify(path)
        except OSError as exc:  # gone since the scan, unreadable: this bundle's failure, said so
            name = Path(exc.filename).name if exc.filename else path.name
            raise BundleError(f"{name}: cannot be read: {exc.strerror or exc}", bundle=str(path)) from None
        if expected_name is not None and vb.name != expected_name:
            raise BundleError(
                f"bundle {path.name} contains plugin {vb.name!r}, not {expected_name!r}: "
                "rename or rebuild it",
                plugin=expected_name,
                bundle=str(path),
            )
        self._security.check_policy(vb)
        return self.extract(vb)

    def load_kept(self, path: Path, *, expected_name: str | None = None) -> LoadedBundle | None:
        """What `load` would return, when what this loader keeps answers it with stats alone, else
        None (then run `load` in a thread). A load of an unchanged plugin this plugind has loaded
        before: the trust list kept (`SecuritySource.kept`), the bundle's verdict kept, and its tree,
        of at most KEPT_TREE_FILES files, holding only files found to match since they last changed.
        Reads no file but the tree's marker and never waits on a lock, so it may run on the event
        loop (the hops to a worker thread and back cost more than it does). Every check `load` makes
        is made; anything it would refuse, or would have to read or write, gives None, and `load`
        then refuses or does it. Once KEPT_SLOW_TIMES answers took longer than KEPT_SLOW_S each (a
        file system whose stats are slow, such as a network one; one or two may be a busy machine),
        it answers None for good: slow stats must not stall the event loop.
        """
        if self._kept_slow >= KEPT_SLOW_TIMES:
            return None
        started = time.perf_counter()
        try:
            return self._kept(path, expected_name)
        finally:
            took = time.perf_counter() - started
            if took > KEPT_SLOW_S:
                self._kept_slow += 1
                if self._kept_slow == KEPT_SLOW_TIMES:
                    log.info("checking an unchanged plugin by stats took %.1f ms, the %dth time over "
                             "%.0f ms: its checks run in a worker thread from now on", took * 1e3,
                             KEPT_SLOW_TIMES, KEPT_SLOW_S * 1e3)

    def _kept(self, path: Path, expected_name: str | None) -> LoadedBundle | None:
        entry = self._verified.get(str(path))
        if entry is None:  # never verified here (a first load): nothing kept to check, not even a stat
            return None
        if self._refresh is not None:
            kept = getattr(self._refresh, "kept", None)
            security = kept() if kept is not None else None
            if security is None:
                return None
            self._security = security
        if entry[0] is not self._security or entry[1] != _identities(path):
            return None
        vb = entry[2]
        if expected_name is not None and vb.name != expected_name:
            return None
        try:
            self._security.check_policy(vb)
        except PluginError:
            return None
        found = self._trees.get(vb.digest)
        if found is None:
            return None
        tree, key = found
        if (
            _read_marker(tree.with_name(tree.name + _MARKER_SUFFIX)) != vb.digest
            or self._unchanged(tree, vb.digest, key, read=False) is not None
        ):
            return None
        return LoadedBundle(vb, tree, reused=True)

    def tree_path(self, vb: VerifiedBundle) -> Path:
        """Where the tree of `vb` lives. Raises BundleError on a name or version unfit for a path."""
        version = str(vb.version)
        if not PLUGIN_NAME_RE.match(vb.name) or not _safe_component(version):
            raise BundleError(
                f"bundle names plugin {vb.name!r} version {version!r}: not usable as a path",
                plugin=vb.name,
            )
        return self.extract_dir / f"{vb.name}-{version}-{vb.digest[:DIGEST_PREFIX]}"

    def extract(self, vb: VerifiedBundle) -> LoadedBundle:
        """Extract `vb`, or reuse the tree this loader extracted from the same digest when it still
        matches byte for byte. Raises BundleError, LoadError."""
        tree = self.tree_path(vb)
        marker = tree.with_name(tree.name + _MARKER_SUFFIX)
        if (
            tree.is_dir()
            and not tree.is_symlink()
            and _read_marker(marker) == vb.digest
            and self._unchanged(tree, vb.digest) is None
        ):
            return LoadedBundle(vb, tree, reused=True)
        self._extract(vb, tree)
        log.info("extracted %s %s into %s", vb.name, vb.version, tree, extra={"plugin": vb.name})
        return LoadedBundle(vb, tree, reused=False)

    def _unchanged(self, tree: Path, digest: str, key: str | None = None, *, read: bool = True) -> str | None:
        # None when `tree` is what this loader extracted from `digest`, else why not. `key`: its
        # record's key when known (else the resolved path). Without `read` (load_kept), a tree of
        # more than KEPT_TREE_FILES files, or with a file that would have to be read, is not vouched for.
        known = self._records.get(key if key is not None else str(tree.resolve()))
        if known is None or known[0] != digest:
            return "not extracted by this plugind from this bundle"
        if not read and len(known[1]) > KEPT_TREE_FILES:
            return "too many files to check without reading them"
        return tree_mismatch(tree, known[1], known[2], read=read)

    def _extract(self, vb: VerifiedBundle, tree: Path) -> None:
        marker = tree.with_name(tree.name + _MARKER_SUFFIX)
        record: TreeRecord = {}
        try:
            self.extract_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
            self._check_extract_dir()
            # The marker goes first and comes back last: a crash in between leaves no marker,
            # so the tree is never trusted half-made.
            marker.unlink(missing_ok=True)
            if tree.is_symlink():
                tree.unlink()
            self._records.pop(str(tree.resolve()), None)
            extract_bundle(vb, tree, self._limits, replace=True, record=record)
            _write_marker(marker, vb.digest)
        except OSError as exc:
            raise LoadError(
                f"cannot extract plugin {vb.name!r} into {self.extract_dir}: {exc.strerror or exc}",
                plugin=vb.name,
                reason="extract_failed",
            ) from exc
        key = str(tree.resolve())
        self._records[key] = (vb.digest, record, {})
        self._trees[vb.digest] = (tree, key)

    def _check_extract_dir(self) -> None:
        # Said once: trees are checked before every start, but a directory others can write lets
        # them race that check (docs/security.md).
        if self._warned_dir:
            return
        mode = self.extract_dir.stat().st_mode
        if mode & 0o022:
            self._warned_dir = True
            log.warning(
                "%s is writable by group or others (mode %o): anyone who can write it can race the "
                "check made before each plugin start; make it 0755 and owned by plugind's user",
                self.extract_dir, stat.S_IMODE(mode),
            )

    def ensure(self, loaded: LoadedBundle, *, recheck: bool) -> None:
        """Before a start of the plugin of `loaded`: make its tree byte-for-byte the verified bundle.

        With `recheck` (a restart) the trust list is re-read and the bundle file verified again
        under the current policy; it must still have the digest that was loaded. A tree that
        differs from what was extracted is re-extracted from the verified bytes (and logged).
        Blocking: run it in a thread. Raises UntrustedPlugin, SignatureInvalid, BundleError,
        TrustListError, LoadError(reason "bundle_changed", "bundle_missing", "extract_failed" or
        "tree_changed").
        """
        vb = loaded.bundle
        if recheck:
            self.refresh_trust()
            if vb.path is None:
                raise LoadError(f"cannot re-verify {vb.name}: no bundle file", plugin=vb.name)
            try:
                fresh = self.verify(vb.path, fresh=True)
            except OSError as exc:
                raise LoadError(
                    f"cannot re-verify {vb.name} before restarting it: {vb.path}: {exc.strerror or exc}",
                    plugin=vb.name,
                    reason="bundle_missing",
                ) from exc
            if fresh.digest != vb.digest:
                raise LoadError(
                    f"the bundle of {vb.name} changed since it was loaded (digest "
                    f"{vb.digest[:16]}... is now {fresh.digest[:16]}...): unload and load it to run the "
                    "new one",
                    plugin=vb.name,
                    reason="bundle_changed",
                )
            self._security.check_policy(fresh)
            vb = fresh
        why = self._unchanged(loaded.tree, vb.digest)
        if why is None:
            return
        log.warning(
            "the extracted tree of %s %s was changed (%s); re-extracting it from the verified bundle",
            vb.name, vb.version, why, extra={"plugin": vb.name},
        )
        self._extract(vb, loaded.tree)
        still = self._unchanged(loaded.tree, vb.digest)
        if still is not None:
            raise LoadError(
                f"the extracted tree of {vb.name} does not match its verified bundle ({still}); refusing "
                "to start it",
                plugin=vb.name,
                reason="tree_changed",
            )

    def discard(self, tree: Path) -> None:
        """Remove an extracted tree no instance runs from any more (an upgrade's old version), with
        its marker first, so a crash half-way never leaves a marked half-tree. Only a direct child
        of `extract_dir` is touched. Blocking; raises OSError."""
        if tree.parent.resolve() != self.extract_dir.resolve():
            raise OSError(f"{tree} is not an extracted tree of {self.extract_dir}")
        key = str(tree.resolve())
        self._records.pop(key, None)  # re-extracted and re-recorded if used again
        for digest, (_tree, k) in list(self._trees.items()):  # a copy: extractions run beside it
            if k == key:
                self._trees.pop(digest, None)
        tree.with_name(tree.name + _MARKER_SUFFIX).unlink(missing_ok=True)
        remove_tree(tree)


def _identities(path: Path) -> tuple[FileIdentity | None, FileIdentity | None]:
    return file_identity(path), file_identity(signature_path(path))


def _safe_component(value: str) -> bool:
    return bool(value) and len(value) <= 64 and all(c.isalnum() or c in ".+-_" for c in value) and (
        value not in (".", "..")
    )


def _read_marker(marker: Path) -> str | None:
    try:
        return marker.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _write_marker(marker: Path, digest: str) -> None:
    # Atomic (a temp file renamed into place) but not fsync'd: the marker is a hint, never trust. A
    # tree is reused only when this loader's in-memory record of it matches byte for byte, and a
    # restarted plugind has no record, so it re-extracts whatever the disk kept. Two fsyncs per
    # load (file and directory) were a third of the loader's time waiting at 1,000 loads.
    atomic_write(marker, (digest + "\n").encode("ascii"), durable=False)


__all__ = ["DIGEST_PREFIX", "LoadedBundle", "PluginLoader"]
