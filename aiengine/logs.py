"""Logging helpers shared by the components."""

__all__ = ["worthLogging"]


def worthLogging(count: int, period: int = 1000) -> bool:
    """Whether the ``count``-th occurrence of something gets a log line: the
    first and every ``period``-th, so that a flood of events cannot flood the
    log too (the counters keep the exact numbers)."""
    return count == 1 or count % period == 0
