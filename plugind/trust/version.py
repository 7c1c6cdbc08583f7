"""Semantic versions of plugins (semver 2.0.0), ordered by precedence."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)
MAX_VERSION_LEN = 64


@dataclass(frozen=True, order=False)
class PluginVersion:
    """A parsed semantic version; compares by semver precedence (build metadata ignored)."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def parse(cls, text: str) -> PluginVersion:
        """Parse `1.2.3`, `1.0.0-rc.1+build.5`, ... Raises ValueError with a message saying what is wrong."""
        if not isinstance(text, str) or len(text) > MAX_VERSION_LEN or not _SEMVER.fullmatch(text):
            raise ValueError(f"{str(text)[:80]!r} is not a semantic version like 1.2.0")
        m = _SEMVER.fullmatch(text)
        assert m is not None
        pre = tuple(m.group(4).split(".")) if m.group(4) else ()
        build = tuple(m.group(5).split(".")) if m.group(5) else ()
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3)), pre, build)

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        if self.build:
            text += "+" + ".".join(self.build)
        return text

    def _key(self) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
        # A release sorts after its pre-releases; numeric identifiers sort before alphanumeric ones.
        pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __lt__(self, other: PluginVersion) -> bool:
        return self._key() < other._key()

    def __le__(self, other: PluginVersion) -> bool:
        return self._key() <= other._key()

    def __gt__(self, other: PluginVersion) -> bool:
        return self._key() > other._key()

    def __ge__(self, other: PluginVersion) -> bool:
        return self._key() >= other._key()
