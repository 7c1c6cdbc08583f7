"""Verified bundle -> extracted read-only tree under `plugins.extract_dir/NAME-VERSION-<digest prefix>`.

The tree is extracted from the bytes that were verified (never by re-opening the bundle);
`extract_bundle` builds it in a temporary directory and renames it into place. An existing tree is reused only
if the marker written next to it names the same full digest; anything else is removed and redone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from plugind.config import PLUGIN_NAME_RE, Settings
from plugind.errors import BundleError, LoadError
from plugind.fsio import atomic_write
from plugind.trust import PluginSecurity, VerifiedBundle
from plugind.trust.bundle import BundleLimits, extract_bundle, remove_tree

log = logging.getLogger("plugind.host.loader")

DIGEST_PREFIX = 16
_MARKER_SUFFIX = ".digest"


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

    def refresh_trust(self) -> None:
        """Re-read the trust list (blocking). Raises TrustListError / InvalidKey: fail closed."""
        if self._refresh is not None:
            self._security = self._refresh()

    def verify(self, path: Path) -> VerifiedBundle:
        """Read and verify `path` once. Raises SignatureInvalid, BundleError, SecurityError."""
        return self._security.verify_bundle(path)

    def load(self, path: Path, *, expected_name: str | None = None) -> LoadedBundle:
        """Verify, check the policy and extract `path`. Blocking: run it in a thread.

        Raises SignatureInvalid / BundleError (tampered or malformed), UntrustedPlugin (policy),
        LoadError (the bundle is not the plugin that was asked for; extraction I/O failed).
        """
        self.refresh_trust()
        vb = self.verify(path)
        if expected_name is not None and vb.name != expected_name:
            raise BundleError(
                f"bundle {path.name} contains plugin {vb.name!r}, not {expected_name!r}: "
                "rename or rebuild it",
                plugin=expected_name,
                bundle=str(path),
            )
        self._security.check_policy(vb)
        return self.extract(vb)

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
        """Extract `vb` (or reuse the tree made from the same digest). Raises BundleError, LoadError."""
        tree = self.tree_path(vb)
        marker = tree.with_name(tree.name + _MARKER_SUFFIX)
        if tree.is_dir() and not tree.is_symlink() and _read_marker(marker) == vb.digest:
            return LoadedBundle(vb, tree, reused=True)
        try:
            self.extract_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
            # The marker goes first and comes back last: a crash in between leaves no marker,
            # so the tree is never trusted half-made.
            marker.unlink(missing_ok=True)
            if tree.is_symlink():
                tree.unlink()
            extract_bundle(vb, tree, self._limits, replace=True)
            _write_marker(marker, vb.digest)
        except OSError as exc:
            raise LoadError(
                f"cannot extract plugin {vb.name!r} into {self.extract_dir}: {exc.strerror or exc}",
                plugin=vb.name,
                reason="extract_failed",
            ) from exc
        log.info("extracted %s %s into %s", vb.name, vb.version, tree, extra={"plugin": vb.name})
        return LoadedBundle(vb, tree, reused=False)

    def discard(self, tree: Path) -> None:
        """Remove an extracted tree no instance runs from any more (an upgrade's old version), with
        its marker first, so a crash half-way never leaves a marked half-tree. Only a direct child
        of `extract_dir` is touched. Blocking; raises OSError."""
        if tree.parent.resolve() != self.extract_dir.resolve():
            raise OSError(f"{tree} is not an extracted tree of {self.extract_dir}")
        tree.with_name(tree.name + _MARKER_SUFFIX).unlink(missing_ok=True)
        remove_tree(tree)


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
    atomic_write(marker, (digest + "\n").encode("ascii"))


__all__ = ["DIGEST_PREFIX", "LoadedBundle", "PluginLoader"]
