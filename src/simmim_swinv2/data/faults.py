"""Bad-sample accounting: skip, count and log undecodable samples; stop when there are too many."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class TooManyBadSamples(RuntimeError):
    """Raised when the fraction of undecodable samples passes ``max_bad_fraction``."""


class BadSampleTracker:
    """Counts good and bad samples seen by one process (one DataLoader worker).

    ``bad(where, err)`` logs ``where`` (a file path, or ``shard.tar:key``) with the reason and
    raises :class:`TooManyBadSamples` once at least ``min_seen`` samples were seen and more than
    ``max_bad_fraction`` of them were bad. Set ``max_bad_fraction=1.0`` to never stop.
    """

    def __init__(self, max_bad_fraction: float = 0.01, min_seen: int = 100) -> None:
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction={max_bad_fraction} must be within [0, 1]")
        self.max_bad_fraction = max_bad_fraction
        self.min_seen = min_seen
        self.seen = 0
        self.num_bad = 0
        self.bad_samples: list[tuple[str, str]] = []  # (where, reason), the first 1000

    def good(self) -> None:
        self.seen += 1

    def bad(self, where: str, err: BaseException | str) -> None:
        self.seen += 1
        self.num_bad += 1
        reason = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
        if len(self.bad_samples) < 1000:
            self.bad_samples.append((where, reason))
        log.warning("skipping bad sample %s (%s) [%d bad of %d seen]", where, reason, self.num_bad, self.seen)
        self.check()

    def check(self) -> None:
        if self.seen >= self.min_seen and self.num_bad > self.max_bad_fraction * self.seen:
            recent = "; ".join(f"{w} ({r})" for w, r in self.bad_samples[-5:])
            raise TooManyBadSamples(
                f"{self.num_bad} of {self.seen} samples could not be used "
                f"({self.num_bad / self.seen:.1%} > max_bad_fraction={self.max_bad_fraction:.1%}). "
                f"Last ones: {recent}. Fix or remove these files (scripts/make_shards.py reports and "
                "drops unreadable images), or raise max_bad_fraction if this is expected."
            )
