"""Parse the benchmark's fault schedule spec and expand it into timed fault events.

Design note
-----------
Parsing and planning are pure (no Ray, no clock, no global random state): the
runner passes its own seeded ``random.Random`` to :func:`schedule`, so a seed
gives the same plan, and carrying the plan out is the runner's business.

Grammar::

    spec     := "" | item ("," item)*
    item     := ACTION [":" TARGET] "@" WHEN [":" DURATION]
    ACTION   := "kill"    SIGKILL a process             (TARGET required)
              | "pause"   SIGSTOP, DURATION, SIGCONT    (TARGET and DURATION required)
              | "node"    remove a Ray node             (no TARGET)
    TARGET   := ROLE ["[" ["p"] INT "]"]                (partition only for leader/follower;
                                                          default: the runner picks one at random)
    ROLE     := "leader" | "follower" | "coordinator" | "supervisor"
    WHEN     := TIME                                    once, at this offset from run start
              | "every=" TIME                           periodically, first at TIME
              | "random=" TIME ".." TIME               repeatedly, gaps uniform in the range
    DURATION := TIME                                    (pause only, at most PAUSE_S_MAX)
    TIME     := NUMBER ("s" | "ms")                     positive: 10s, 1.5s, 500ms

Examples::

    kill:leader@every=5s,pause:follower@10s:2s,node@20s
    kill:supervisor@3s
    pause:leader[1]@random=1s..3s:500ms

Whitespace around items is ignored; names are lowercase.  ``every`` and the low
end of ``random`` must be at least ``EVERY_S_MIN`` so a typo cannot flood a run.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

KILL, PAUSE, NODE = "kill", "pause", "node"
ACTIONS = (KILL, PAUSE, NODE)
ROLES = ("leader", "follower", "coordinator", "supervisor")
PARTITIONED_ROLES = ("leader", "follower")

#: Shortest period for ``every=`` and shortest gap for ``random=``.
EVERY_S_MIN = 0.5
#: Longest pause.
PAUSE_S_MAX = 60.0

_TIME_RE = re.compile(r"(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+))(?P<unit>ms|s)")
_TARGET_RE = re.compile(r"(?P<role>[a-z_]+)(?:\[p?(?P<part>\d+)\])?")


class FaultSpecError(ValueError):
    """A fault spec that does not parse or does not make sense."""


@dataclass(frozen=True)
class FaultItem:
    """One parsed item of the spec; exactly one of at_s / every_s / random_s is set."""

    action: str
    target: str | None
    partition: int | None
    at_s: float | None
    every_s: float | None
    random_s: tuple[float, float] | None
    duration_s: float | None
    text: str


@dataclass(frozen=True)
class PlannedFault:
    """One concrete fault event; partition None means the runner picks one."""

    at_s: float
    action: str
    target: str | None
    partition: int | None
    duration_s: float | None
    source_text: str


class _ItemError(Exception):
    """What is wrong with one item; parse_faults adds which item."""


# --------------------------------------------------------------------------- parsing


def parse_faults(spec: str | None) -> list[FaultItem]:
    """Parse a spec; empty or None means no faults.  Raises FaultSpecError naming the bad item."""
    if spec is None or not spec.strip():
        return []
    items = []
    for number, text in enumerate(spec.split(","), start=1):
        text = text.strip()
        try:
            items.append(_parse_item(text))
        except _ItemError as e:
            raise FaultSpecError(f"fault {number} {text!r}: {e}") from None
    return items


def _parse_item(text: str) -> FaultItem:
    if not text:
        raise _ItemError("empty item (stray comma?)")
    if text.count("@") != 1:
        raise _ItemError("expected exactly one '@' between ACTION[:TARGET] and WHEN, e.g. kill:leader@10s")
    what, when = text.split("@")
    action, target, partition = _parse_what(what)
    at_s, every_s, random_s, duration_s = _parse_when(when)
    _check_duration(action, duration_s, text)
    return FaultItem(action, target, partition, at_s, every_s, random_s, duration_s, text)


def _parse_what(what: str) -> tuple[str, str | None, int | None]:
    action, sep, target_text = what.partition(":")
    if action not in ACTIONS:
        raise _ItemError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    if action == NODE:
        if sep:
            raise _ItemError(f"node takes no target (got {target_text!r}); write node@20s")
        return action, None, None
    if not target_text:
        raise _ItemError(f"{action} needs a target ({', '.join(ROLES)}), e.g. {action}:leader@10s")
    return (action, *_parse_target(target_text))


def _parse_target(text: str) -> tuple[str, int | None]:
    m = _TARGET_RE.fullmatch(text)
    if m is None:
        raise _ItemError(f"bad target {text!r}; expected a role, optionally with a partition, e.g. leader[p2]")
    role, part = m["role"], m["part"]
    if role not in ROLES:
        raise _ItemError(f"unknown target {role!r}; expected one of {', '.join(ROLES)}")
    if part is not None and role not in PARTITIONED_ROLES:
        raise _ItemError(f"a partition selector only applies to {' or '.join(PARTITIONED_ROLES)}, not {role}")
    return role, None if part is None else int(part)


def _parse_when(when: str) -> tuple[float | None, float | None, tuple[float, float] | None, float | None]:
    """WHEN[:DURATION] -> (at_s, every_s, random_s, duration_s)."""
    parts = when.split(":")
    if len(parts) > 2:
        raise _ItemError(f"too many ':' parts after '@' in {when!r}; expected WHEN[:DURATION]")
    duration_s = _parse_time(parts[1], "duration") if len(parts) == 2 else None
    schedule_text = parts[0]
    if schedule_text.startswith("every="):
        every_s = _parse_time(schedule_text[len("every="):], "every")
        if every_s < EVERY_S_MIN:
            raise _ItemError(f"every={every_s:g}s is below the minimum period of {EVERY_S_MIN:g}s")
        return None, every_s, None, duration_s
    if schedule_text.startswith("random="):
        return None, None, _parse_range(schedule_text[len("random="):]), duration_s
    return _parse_time(schedule_text, "time"), None, None, duration_s


def _parse_range(text: str) -> tuple[float, float]:
    low_text, sep, high_text = text.partition("..")
    if not sep:
        raise _ItemError(f"bad random range {text!r}; expected LOW..HIGH, e.g. random=2s..8s")
    low, high = _parse_time(low_text, "random low"), _parse_time(high_text, "random high")
    if low > high:
        raise _ItemError(f"random range {text!r} has low {low:g}s above high {high:g}s")
    if low < EVERY_S_MIN:
        raise _ItemError(f"random low {low:g}s is below the minimum gap of {EVERY_S_MIN:g}s")
    return low, high


def _parse_time(text: str, what: str) -> float:
    m = _TIME_RE.fullmatch(text)
    if m is None:
        raise _ItemError(f"bad {what} {text!r}; expected a number with unit s or ms, e.g. 10s, 1.5s, 500ms")
    seconds = float(m["num"]) / (1000.0 if m["unit"] == "ms" else 1.0)
    if seconds <= 0:
        raise _ItemError(f"{what} {text!r} must be positive")
    return seconds


def _check_duration(action: str, duration_s: float | None, text: str) -> None:
    if action != PAUSE and duration_s is not None:
        raise _ItemError(f"only pause takes a duration; {action} is instantaneous")
    if action == PAUSE and duration_s is None:
        raise _ItemError(f"pause needs a duration, e.g. {text}:2s")
    if duration_s is not None and duration_s > PAUSE_S_MAX:
        raise _ItemError(f"pause of {duration_s:g}s is longer than the maximum of {PAUSE_S_MAX:g}s")


# --------------------------------------------------------------------------- planning


def schedule(items: list[FaultItem], duration_s: float, rng: random.Random) -> list[PlannedFault]:
    """Expand items into time-sorted events with 0 < at_s < duration_s (later ones are dropped).

    The rng is consumed item by item in spec order, so a seed gives the same plan.
    Pauses are not clipped at the end of the run.
    """
    if not duration_s > 0:
        raise ValueError(f"run duration must be positive, got {duration_s!r}")
    planned = []
    for item in items:
        planned.extend(_planned(item, t) for t in _times(item, duration_s, rng))
    return sorted(planned, key=lambda p: p.at_s)  # stable: ties stay in spec order


def _times(item: FaultItem, duration_s: float, rng: random.Random) -> list[float]:
    if item.at_s is not None:
        return [item.at_s] if item.at_s < duration_s else []
    if item.every_s is not None:
        count = int(duration_s // item.every_s) + 1
        return [k * item.every_s for k in range(1, count + 1) if k * item.every_s < duration_s]
    if item.random_s is None:
        raise ValueError(f"fault {item.text!r} has no time (at_s, every_s or random_s)")
    low, high = item.random_s
    times, t = [], rng.uniform(low, high)
    while t < duration_s:
        times.append(t)
        t += rng.uniform(low, high)
    return times


def _planned(item: FaultItem, at_s: float) -> PlannedFault:
    return PlannedFault(at_s, item.action, item.target, item.partition, item.duration_s, item.text)
