"""Open and check several sources at once, before any work: one error lists every problem.

A user running `ngpt cache build-all` offline learns in one message which sources could not be
reached or read and how to give each a local path, instead of fixing them one crash at a time.
"""

from __future__ import annotations

from ngpt.settings import Settings
from ngpt.sources.base import Source, SourceDataError, SourceUnavailable


class SourcesNotReady(RuntimeError):
    """One or more sources failed their check(); the message has one paragraph per source."""


def open_checked(names: list[str], settings: Settings) -> list[Source]:
    """make_source + check() for every name; raise SourcesNotReady listing all failures."""
    from ngpt.sources import make_source

    sources, problems = [], []
    for name in names:
        try:
            source = make_source(name, settings)
            source.check()
            sources.append(source)
        except (SourceUnavailable, SourceDataError, FileNotFoundError, ValueError) as e:
            problems.append(f"- {name}: {e}")
    if problems:
        raise SourcesNotReady(
            f"{len(problems)} of {len(names)} source(s) cannot be read; nothing was written.\n" + "\n".join(problems)
        )
    return sources
