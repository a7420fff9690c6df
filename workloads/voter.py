"""Voter: VoltDB's sample workload -- a TV talent show's phone-in votes.

Design note
-----------
Tables (as in VoltDB's sample, with primary keys our tables require):

* ``contestants`` (replicated): contestant_number -> contestant_name.
* ``area_code_state`` (replicated): area_code -> state.
* ``voters`` (partitioned by phone_number): votes cast so far per phone.
* ``votes`` (partitioned by phone_number): one row per accepted vote, keyed
  by (phone_number, vote_number).

``vote(phone_number, contestant_number, max_votes)`` rejects (user abort) an
unknown contestant and a phone over its vote limit, otherwise records the vote
with the caller's state (from the area code).  ``results()`` is a read-only
scatter-gather: every partition tallies its votes, the totals are summed.
``votes_of(phone_number)`` lists a phone's recorded votes (for the checkers).

``VoterGenerator`` makes the call stream from a passed-in ``random.Random``:
area codes from a fixed list, a bounded pool of numbers per area code (so some
phones exceed the limit), contestants skewed towards lower numbers, and about
one call in a hundred for a contestant that does not exist (VoltDB's "fraud").
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pyarrow as pa

from actors.schema import Schema, Table, procedure

MAX_VOTES_DEFAULT = 2
CONTESTANTS_DEFAULT = 6
#: Distinct phone numbers per area code in generated calls.
PHONES_PER_AREA_CODE = 2_000
#: One call in this many names a contestant that does not exist.
INVALID_CONTESTANT_EVERY = 100

INVALID_CONTESTANT = "invalid contestant"
OVER_VOTE_LIMIT = "over vote limit"

CONTESTANT_NAMES = (
    "Edwina Burnam", "Tabatha Gehling", "Kelly Clauss", "Jessie Alloway", "Alana Bregman",
    "Jessie Eichman", "Allie Rogalski", "Nita Coster", "Kurt Walser", "Ericka Dieter",
    "Loraine Nygren", "Tania Mattioli",
)

# A sample of North American area codes and their states.
AREA_CODES: tuple[tuple[int, str], ...] = (
    (201, "NJ"), (202, "DC"), (203, "CT"), (205, "AL"), (206, "WA"), (207, "ME"), (208, "ID"),
    (209, "CA"), (210, "TX"), (212, "NY"), (213, "CA"), (214, "TX"), (215, "PA"), (216, "OH"),
    (217, "IL"), (218, "MN"), (219, "IN"), (224, "IL"), (225, "LA"), (228, "MS"), (229, "GA"),
    (231, "MI"), (234, "OH"), (239, "FL"), (240, "MD"), (248, "MI"), (251, "AL"), (252, "NC"),
    (253, "WA"), (254, "TX"), (256, "AL"), (260, "IN"), (262, "WI"), (267, "PA"), (269, "MI"),
    (270, "KY"), (276, "VA"), (281, "TX"), (301, "MD"), (302, "DE"), (303, "CO"), (304, "WV"),
    (305, "FL"), (307, "WY"), (308, "NE"), (309, "IL"), (310, "CA"), (312, "IL"), (313, "MI"),
    (314, "MO"), (315, "NY"), (316, "KS"), (317, "IN"), (318, "LA"), (319, "IA"), (320, "MN"),
    (321, "FL"), (323, "CA"), (325, "TX"), (330, "OH"), (334, "AL"), (336, "NC"), (337, "LA"),
    (339, "MA"), (347, "NY"), (351, "MA"), (352, "FL"), (360, "WA"), (361, "TX"), (386, "FL"),
    (401, "RI"), (402, "NE"), (404, "GA"), (405, "OK"), (406, "MT"), (407, "FL"), (408, "CA"),
    (409, "TX"), (410, "MD"), (412, "PA"), (413, "MA"), (414, "WI"), (415, "CA"), (417, "MO"),
    (419, "OH"), (423, "TN"), (425, "WA"), (432, "TX"), (434, "VA"), (435, "UT"), (440, "OH"),
    (443, "MD"), (469, "TX"), (478, "GA"), (479, "AR"), (480, "AZ"), (484, "PA"), (501, "AR"),
    (502, "KY"), (503, "OR"), (504, "LA"), (505, "NM"), (507, "MN"), (508, "MA"), (509, "WA"),
    (510, "CA"), (512, "TX"), (513, "OH"), (515, "IA"), (516, "NY"), (517, "MI"), (518, "NY"),
    (520, "AZ"), (530, "CA"), (540, "VA"), (541, "OR"), (551, "NJ"), (559, "CA"), (561, "FL"),
    (562, "CA"), (563, "IA"), (567, "OH"), (570, "PA"), (571, "VA"), (573, "MO"), (574, "IN"),
    (580, "OK"), (585, "NY"), (586, "MI"), (601, "MS"), (602, "AZ"), (603, "NH"), (605, "SD"),
    (606, "KY"), (607, "NY"), (608, "WI"), (609, "NJ"), (610, "PA"), (612, "MN"), (614, "OH"),
    (615, "TN"), (616, "MI"), (617, "MA"), (618, "IL"), (619, "CA"), (620, "KS"), (623, "AZ"),
    (626, "CA"), (630, "IL"), (631, "NY"), (636, "MO"), (641, "IA"), (646, "NY"), (650, "CA"),
    (651, "MN"), (660, "MO"), (661, "CA"), (662, "MS"), (678, "GA"), (682, "TX"), (701, "ND"),
    (702, "NV"), (703, "VA"), (704, "NC"), (706, "GA"), (707, "CA"), (708, "IL"), (712, "IA"),
    (713, "TX"), (714, "CA"), (715, "WI"), (716, "NY"), (717, "PA"), (718, "NY"), (719, "CO"),
    (720, "CO"), (724, "PA"), (727, "FL"), (731, "TN"), (732, "NJ"), (734, "MI"), (740, "OH"),
    (754, "FL"), (757, "VA"), (760, "CA"), (763, "MN"), (765, "IN"), (770, "GA"), (772, "FL"),
    (773, "IL"), (774, "MA"), (775, "NV"), (781, "MA"), (785, "KS"), (786, "FL"), (801, "UT"),
    (802, "VT"), (803, "SC"), (804, "VA"), (805, "CA"), (806, "TX"), (808, "HI"), (810, "MI"),
    (812, "IN"), (813, "FL"), (814, "PA"), (815, "IL"), (816, "MO"), (817, "TX"), (818, "CA"),
    (828, "NC"), (830, "TX"), (831, "CA"), (832, "TX"), (843, "SC"), (845, "NY"), (847, "IL"),
    (848, "NJ"), (850, "FL"), (856, "NJ"), (857, "MA"), (858, "CA"), (859, "KY"), (860, "CT"),
    (862, "NJ"), (863, "FL"), (864, "SC"), (865, "TN"), (870, "AR"), (901, "TN"), (903, "TX"),
    (904, "FL"), (907, "AK"), (908, "NJ"), (909, "CA"), (910, "NC"), (912, "GA"), (913, "KS"),
    (914, "NY"), (915, "TX"), (916, "CA"), (917, "NY"), (918, "OK"), (919, "NC"), (920, "WI"),
    (925, "CA"), (928, "AZ"), (931, "TN"), (936, "TX"), (937, "OH"), (940, "TX"), (941, "FL"),
    (949, "CA"), (951, "CA"), (952, "MN"), (954, "FL"), (956, "TX"), (970, "CO"), (971, "OR"),
    (972, "TX"), (973, "NJ"), (978, "MA"), (979, "TX"), (980, "NC"), (985, "LA"), (989, "MI"),
)

contestants = Table(
    "contestants",
    pa.schema([pa.field("contestant_number", pa.int32(), nullable=False), ("contestant_name", pa.string())]),
    primary_key="contestant_number", replicated=True,
)
area_code_state = Table(
    "area_code_state",
    pa.schema([pa.field("area_code", pa.int16(), nullable=False), ("state", pa.string())]),
    primary_key="area_code", replicated=True,
)
voters = Table(
    "voters",
    pa.schema([pa.field("phone_number", pa.int64(), nullable=False), ("votes_cast", pa.int32())]),
    primary_key="phone_number", partition_by="phone_number",
)
votes = Table(
    "votes",
    pa.schema([
        pa.field("phone_number", pa.int64(), nullable=False),
        pa.field("vote_number", pa.int32(), nullable=False),
        ("state", pa.string()),
        ("contestant_number", pa.int32()),
    ]),
    primary_key=["phone_number", "vote_number"], partition_by="phone_number",
)


@procedure(partition_by="phone_number")
def vote(tx, phone_number: int, contestant_number: int, max_votes: int) -> int:
    """Record one vote; returns the phone's vote count so far."""
    if tx.get("contestants", contestant_number) is None:
        tx.abort(f"{INVALID_CONTESTANT} {contestant_number}")
    voter = tx.get("voters", phone_number)
    cast = 0 if voter is None else voter["votes_cast"]
    if cast >= max_votes:
        tx.abort(f"{OVER_VOTE_LIMIT}: {phone_number} has cast {cast} of {max_votes}")
    area = tx.get("area_code_state", phone_number // 10_000_000)
    tx.upsert("voters", {"phone_number": phone_number, "votes_cast": cast + 1})
    tx.insert("votes", {
        "phone_number": phone_number, "vote_number": cast + 1,
        "state": None if area is None else area["state"], "contestant_number": contestant_number,
    })
    return cast + 1


@procedure(partition_by="phone_number", read_only=True)
def votes_of(tx, phone_number: int) -> list[tuple[int, int]]:
    """The phone's recorded votes: (vote_number, contestant_number), in order."""
    voter = tx.get("voters", phone_number)
    cast = 0 if voter is None else voter["votes_cast"]
    rows = (tx.get("votes", (phone_number, n)) for n in range(1, cast + 1))
    return [(row["vote_number"], row["contestant_number"]) for row in rows if row is not None]


def _tally(tx) -> dict[int, int]:
    return dict(Counter(row["contestant_number"] for row in tx.scan("votes")))


def _contestant_names(tx) -> dict[int, str]:
    return {row["contestant_number"]: row["contestant_name"] for row in tx.scan("contestants")}


@procedure(multi_partition=True, read_only=True)
def results(tx) -> list[tuple[int, str, int]]:
    """(contestant_number, contestant_name, votes) for every contestant, most votes first."""
    totals: Counter = Counter()
    for partial in tx.run_all(_tally):
        totals.update(partial)
    names = tx.run(0, _contestant_names)
    return sorted(((n, name, totals.get(n, 0)) for n, name in names.items()), key=lambda r: (-r[2], r[0]))


def schema() -> Schema:
    return Schema(tables=[contestants, area_code_state, voters, votes], procedures=[vote, results, votes_of])


def initial_data(contestant_count: int = CONTESTANTS_DEFAULT) -> dict[str, list[dict[str, Any]]]:
    if not 1 <= contestant_count <= len(CONTESTANT_NAMES):
        raise ValueError(f"contestants must be in 1..{len(CONTESTANT_NAMES)}, got {contestant_count}")
    return {
        "contestants": [
            {"contestant_number": i + 1, "contestant_name": CONTESTANT_NAMES[i]} for i in range(contestant_count)
        ],
        "area_code_state": [{"area_code": code, "state": state} for code, state in AREA_CODES],
    }


class VoterGenerator:
    """The call stream: ``(phone_number, contestant_number, max_votes)`` tuples."""

    def __init__(self, rng: random.Random, contestant_count: int = CONTESTANTS_DEFAULT,
                 max_votes: int = MAX_VOTES_DEFAULT, phones_per_area_code: int = PHONES_PER_AREA_CODE) -> None:
        self.rng = rng
        self.contestant_count = contestant_count
        self.max_votes = max_votes
        self.phones = phones_per_area_code
        # Skew: contestant i is (contestant_count - i + 1) times as likely as the last one.
        self._weights = [contestant_count - i for i in range(contestant_count)]
        self._numbers = list(range(1, contestant_count + 1))

    def next_call(self) -> tuple[int, int, int]:
        rng = self.rng
        area_code = AREA_CODES[rng.randrange(len(AREA_CODES))][0]
        phone = area_code * 10_000_000 + rng.randrange(self.phones)
        if rng.randrange(INVALID_CONTESTANT_EVERY) == 0:
            contestant = self.contestant_count + 1
        else:
            contestant = rng.choices(self._numbers, self._weights)[0]
        return phone, contestant, self.max_votes

    def next_batch(self, n: int) -> list[tuple[int, int, int]]:
        return [self.next_call() for _ in range(n)]
