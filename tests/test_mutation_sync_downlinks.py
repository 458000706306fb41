"""common/sync_protocol.py, the canteen's and the door's downlinks: `meal_usage` (docs/sync-protocol.md "Meal usage
across tills") and `passage` (anti-passback). The documented sample messages pinned byte for byte, every field's
edges accepted, and every refusal asserted with its exact words. Issue 15."""

import base64
import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from common import sync_protocol as p

NOW = dt.datetime(2026, 11, 23, 2, 0, 0, 123456, tzinfo=dt.timezone.utc)
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
TID, TID2, EID = "000000000101", "000000000102", "00010001"
ASN, ASN2 = "0102030405060708", "1112131415161718"
UTC_LIKE = "must be a UTC time like 2026-11-23T02:00:00.000000Z, got"


def fails(exc_type, message, call, *args):
    with pytest.raises(Exception) as caught:
        call(*args)
    assert type(caught.value) is exc_type, caught.value
    assert str(caught.value) == message


def sealed(type_, body, target=f"e:{EID}", msg_id="m1"):
    return p.seal(KEY, type_, target, body, NOW, msg_id=msg_id)


def opened(type_, body, target=f"e:{EID}"):
    return p.open_envelope(sealed(type_, body, target), KEY.public_key())


def refused(type_, body, message):
    fails(p.ProtocolError, message, opened, type_, body)


def pinned_downlink(type_, body, body_bytes, target=f"e:{EID}", msg_id="m1"):
    """seal() gives exactly these bytes (Ed25519 is deterministic) and open_envelope() gives the message back."""
    unsigned = (
        b'{"body":' + body_bytes + b',"id":"' + msg_id.encode() + b'","issued_at":"2026-11-23T02:00:00.123456Z",'
        b'"target":"' + target.encode() + b'","type":"' + type_.encode() + b'","v":1}'
    )
    sig = base64.b64encode(KEY.sign(b"onecard.sync.v1\x00" + unsigned))
    payload = p.seal(KEY, type_, target, body, NOW, msg_id)
    assert payload == unsigned.replace(b',"target":', b',"sig":"' + sig + b'","target":')
    assert p.open_envelope(payload, KEY.public_key()) == p.Envelope(type_, msg_id, target, NOW, body)


def test_the_new_downlink_types_and_their_limits_are_pinned():
    assert p.DOWN_TYPES[-3:-1] == ("meal_usage", "passage")
    assert p.BODY_CHECKS["meal_usage"] is p._check_meal_usage
    assert p.BODY_CHECKS["passage"] is p._check_passage
    assert p.PASSAGE_DIRECTIONS == ("entry", "exit")
    assert p.MAX_MEAL_USAGE_ROWS == 5000


# --- meal_usage ------------------------------------------------------------------------------------------------------


def usage_row(asn=ASN, terminal_id=TID, period="lunch", count=1, amount=1000, **extra):
    row = {"asn": asn, "terminal_id": terminal_id, "period": period, "count": count, "amount": amount, **extra}
    return {k: v for k, v in row.items() if v is not ...}


def meal_usage(rows=None, **changes):
    body = {"enterprise_id": EID, "day": "2026-11-23", "usage": [usage_row()] if rows is None else rows}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


def test_the_documented_meal_usage_sample_is_pinned():
    body = meal_usage([usage_row(), usage_row(terminal_id=TID2, period="", amount=300)])
    pinned_downlink(
        "meal_usage",
        body,
        b'{"day":"2026-11-23","enterprise_id":"00010001","usage":['
        b'{"amount":1000,"asn":"0102030405060708","count":1,"period":"lunch","terminal_id":"000000000101"},'
        b'{"amount":300,"asn":"0102030405060708","count":1,"period":"","terminal_id":"000000000102"}]}',
    )


def test_meal_usage_edges_are_accepted():
    for body in (
        meal_usage([]),  # no rows: nothing to say, still a valid message
        meal_usage([usage_row(count=0, amount=0)]),  # every sale undone: count 0
        meal_usage([usage_row(period="")]),
        meal_usage([usage_row(period="A" * 20)]),
        meal_usage([usage_row(period="Za09_")]),
        meal_usage([usage_row(count=2**63 - 1, amount=2**63 - 1)]),
        meal_usage([usage_row(asn="F1F2F3F4F5F6F7F8", terminal_id="999999999999")]),
        meal_usage(day="2024-02-29"),
        meal_usage(enterprise_id="99999999"),
    ):
        assert opened("meal_usage", body).body == body
        assert opened("meal_usage", body, target=f"t:{TID}").body == body


def test_one_row_per_card_till_and_period():
    # Rows differing in exactly one of (asn, terminal_id, period) are different rows; the same three twice are not.
    base = usage_row()
    distinct = [base, usage_row(asn=ASN2), usage_row(terminal_id=TID2), usage_row(period=""), usage_row(period="LUNCH")]
    assert opened("meal_usage", meal_usage(distinct)).body["usage"] == distinct
    for i, other in enumerate(distinct):
        twice = distinct[: i + 1] + [usage_row(**{**other, "count": 9, "amount": 9})]
        refused(
            "meal_usage",
            meal_usage(twice),
            f"meal_usage usage[{i + 1}]: a second row for card {other['asn']}, terminal {other['terminal_id']}, "
            f"period {other['period']!r}",
        )
    # the first of a pair is never the one refused, wherever the pair stands
    rows = [usage_row(asn=ASN2), usage_row(terminal_id=TID2, period="dinner"), usage_row(asn=ASN2)]
    refused(
        "meal_usage",
        meal_usage(rows),
        "meal_usage usage[2]: a second row for card 1112131415161718, terminal 000000000101, period 'lunch'",
    )


def test_at_most_5000_rows():
    def rows(n):
        return [usage_row(terminal_id=f"{i:012d}") for i in range(n)]

    assert len(opened("meal_usage", meal_usage(rows(5000))).body["usage"]) == 5000
    refused("meal_usage", meal_usage(rows(5001)), "meal_usage: 5001 usage rows, more than 5000")
    # the count comes before any row is looked at: 5001 malformed rows are refused for their number
    refused("meal_usage", meal_usage([5] * 5001), "meal_usage: 5001 usage rows, more than 5000")


UW = "meal_usage usage[1]"


@pytest.mark.parametrize(
    "body, message",
    [
        (meal_usage(enterprise_id=...), "meal_usage: field 'enterprise_id' is missing"),
        (meal_usage(day=...), "meal_usage: field 'day' is missing"),
        (meal_usage(usage=...), "meal_usage: field 'usage' is missing"),
        (meal_usage(extra=1), "meal_usage: unknown field(s) 'extra'"),
        (meal_usage(enterprise_id="0001000"), "meal_usage: field 'enterprise_id' = '0001000' is not 8 decimal digits"),
        (
            meal_usage(enterprise_id="000100010"),
            "meal_usage: field 'enterprise_id' = '000100010' is not 8 decimal digits",
        ),
        (meal_usage(enterprise_id=10001), "meal_usage: field 'enterprise_id' must be str, got int"),
        (meal_usage(day="2026-11-31"), "meal_usage: day '2026-11-31' is not a real date"),
        (meal_usage(day="2026-1-23"), "meal_usage: field 'day' = '2026-1-23' is not a date YYYY-MM-DD"),
        (meal_usage(day=20261123), "meal_usage: field 'day' must be str, got int"),
        (meal_usage(usage={}), "meal_usage: field 'usage' must be list, got dict"),
        (meal_usage(usage="x"), "meal_usage: field 'usage' must be list, got str"),
        (meal_usage([5]), "meal_usage usage[0] must be an object"),
        (meal_usage([usage_row(), [1]]), f"{UW} must be an object"),
        (meal_usage([usage_row(), None]), f"{UW} must be an object"),
        (meal_usage([usage_row(), usage_row(asn=...)]), f"{UW}: field 'asn' is missing"),
        (meal_usage([usage_row(), usage_row(terminal_id=...)]), f"{UW}: field 'terminal_id' is missing"),
        (meal_usage([usage_row(), usage_row(period=...)]), f"{UW}: field 'period' is missing"),
        (meal_usage([usage_row(), usage_row(count=...)]), f"{UW}: field 'count' is missing"),
        (meal_usage([usage_row(), usage_row(amount=...)]), f"{UW}: field 'amount' is missing"),
        (meal_usage([usage_row(), usage_row(day="2026-11-23")]), f"{UW}: unknown field(s) 'day'"),
        (
            meal_usage([usage_row(), usage_row(asn="f1f2f3f4f5f6f7f8")]),
            f"{UW}: field 'asn' = 'f1f2f3f4f5f6f7f8' is not 16 uppercase hex digits",
        ),
        (
            meal_usage([usage_row(), usage_row(asn="010203040506070")]),
            f"{UW}: field 'asn' = '010203040506070' is not 16 uppercase hex digits",
        ),
        (meal_usage([usage_row(), usage_row(asn=5)]), f"{UW}: field 'asn' must be str, got int"),
        (
            meal_usage([usage_row(), usage_row(terminal_id="00000000010")]),
            f"{UW}: field 'terminal_id' = '00000000010' is not 12 decimal digits",
        ),
        (
            meal_usage([usage_row(), usage_row(terminal_id="0000000001010")]),
            f"{UW}: field 'terminal_id' = '0000000001010' is not 12 decimal digits",
        ),
        (meal_usage([usage_row(), usage_row(terminal_id=101)]), f"{UW}: field 'terminal_id' must be str, got int"),
        (
            meal_usage([usage_row(), usage_row(period="A" * 21)]),
            f"{UW}: field 'period' = '{'A' * 21}' is not 0-20 characters of [A-Za-z0-9_]",
        ),
        (
            meal_usage([usage_row(), usage_row(period="lunch-1")]),
            f"{UW}: field 'period' = 'lunch-1' is not 0-20 characters of [A-Za-z0-9_]",
        ),
        (
            meal_usage([usage_row(), usage_row(period="午餐")]),
            f"{UW}: field 'period' = '午餐' is not 0-20 characters of [A-Za-z0-9_]",
        ),
        (
            meal_usage([usage_row(), usage_row(period="lunch\n")]),
            f"{UW}: field 'period' = 'lunch\\n' is not 0-20 characters of [A-Za-z0-9_]",
        ),
        (meal_usage([usage_row(), usage_row(period=None)]), f"{UW}: field 'period' must be str, got NoneType"),
        (meal_usage([usage_row(), usage_row(count=-1)]), f"{UW}: field 'count' = -1 is out of range (>= 0)"),
        (meal_usage([usage_row(), usage_row(amount=-1)]), f"{UW}: field 'amount' = -1 is out of range (>= 0)"),
        (
            meal_usage([usage_row(), usage_row(count=2**63)]),
            f"{UW}: field 'count' = {2**63} is out of range (>= 0)",
        ),
        (
            meal_usage([usage_row(), usage_row(amount=2**63)]),
            f"{UW}: field 'amount' = {2**63} is out of range (>= 0)",
        ),
        (meal_usage([usage_row(), usage_row(count=1.0)]), f"{UW}: field 'count' must be int, got float"),
        (meal_usage([usage_row(), usage_row(amount=True)]), f"{UW}: field 'amount' must be int, got a boolean"),
        (meal_usage([usage_row(), usage_row(count="1")]), f"{UW}: field 'count' must be int, got str"),
    ],
)
def test_meal_usage_refusals(body, message):
    refused("meal_usage", body, message)


def test_meal_usage_rows_are_checked_field_by_field_in_order():
    # A row wrong in every field names its first field: asn, then terminal_id, period, count, amount.
    order = [("asn", "x"), ("terminal_id", "x"), ("period", "-"), ("count", -1), ("amount", -1)]
    for i, (key, _) in enumerate(order):
        row = usage_row(**dict(order[i:]))
        with pytest.raises(p.ProtocolError) as caught:
            opened("meal_usage", meal_usage([row]))
        assert str(caught.value).startswith(f"meal_usage usage[0]: field {key!r} = "), caught.value


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([ASN, ASN2]),
            st.sampled_from([TID, TID2]),
            st.sampled_from(["", "lunch", "dinner"]),
            st.integers(0, 5),
            st.integers(0, 10_000),
        ),
        max_size=8,
    )
)
def test_meal_usage_is_accepted_exactly_when_no_key_repeats(rows):
    body = meal_usage([usage_row(a, t, per, c, amt) for a, t, per, c, amt in rows])
    keys = [(a, t, per) for a, t, per, _, _ in rows]
    if len(set(keys)) == len(keys):
        assert opened("meal_usage", body).body == body
    else:
        first_repeat = next(i for i, k in enumerate(keys) if k in keys[:i])
        a, t, per = keys[first_repeat]
        refused(
            "meal_usage",
            body,
            f"meal_usage usage[{first_repeat}]: a second row for card {a}, terminal {t}, period {per!r}",
        )


# --- passage ---------------------------------------------------------------------------------------------------------


def passage(**changes):
    body = {
        "enterprise_id": EID,
        "area": 3,
        "asn": ASN,
        "direction": "entry",
        "time": "2026-11-23T02:00:00.000000Z",
        "terminal_id": TID,
        "seq": 42,
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


def test_sample_passage_is_pinned():
    pinned_downlink(
        "passage",
        passage(),
        b'{"area":3,"asn":"0102030405060708","direction":"entry","enterprise_id":"00010001",'
        b'"seq":42,"terminal_id":"000000000101","time":"2026-11-23T02:00:00.000000Z"}',
    )
    # in the answer to a sync request it goes to one terminal
    pinned_downlink(
        "passage",
        passage(direction="exit", area=255, seq=1),
        b'{"area":255,"asn":"0102030405060708","direction":"exit","enterprise_id":"00010001",'
        b'"seq":1,"terminal_id":"000000000101","time":"2026-11-23T02:00:00.000000Z"}',
        target=f"t:{TID2}",
    )


def test_passage_edges_are_accepted():
    for body in (
        passage(area=1),
        passage(area=255),
        passage(direction="exit"),
        passage(seq=1),
        passage(seq=2**63 - 1),
        passage(time="2024-02-29T23:59:59.999999Z"),
        passage(asn="F1F2F3F4F5F6F7F8", terminal_id="999999999999", enterprise_id="99999999"),
    ):
        assert opened("passage", body).body == body


PW = "passage"


@pytest.mark.parametrize(
    "body, message",
    [
        (passage(enterprise_id=...), f"{PW}: field 'enterprise_id' is missing"),
        (passage(area=...), f"{PW}: field 'area' is missing"),
        (passage(asn=...), f"{PW}: field 'asn' is missing"),
        (passage(direction=...), f"{PW}: field 'direction' is missing"),
        (passage(time=...), f"{PW}: field 'time' is missing"),
        (passage(terminal_id=...), f"{PW}: field 'terminal_id' is missing"),
        (passage(seq=...), f"{PW}: field 'seq' is missing"),
        (passage(door=1), f"{PW}: unknown field(s) 'door'"),
        (passage(enterprise_id="0001000"), f"{PW}: field 'enterprise_id' = '0001000' is not 8 digits"),
        (passage(enterprise_id="00010001 "), f"{PW}: field 'enterprise_id' = '00010001 ' is not 8 digits"),
        (passage(enterprise_id=10001), f"{PW}: field 'enterprise_id' must be str, got int"),
        (passage(area=0), f"{PW}: field 'area' = 0 is out of range (>= 1)"),
        (passage(area=-1), f"{PW}: field 'area' = -1 is out of range (>= 1)"),
        (passage(area=256), f"{PW}: area 256 is not 1..255"),
        (passage(area=2**63 - 1), f"{PW}: area {2**63 - 1} is not 1..255"),
        (passage(area=2**63), f"{PW}: field 'area' = {2**63} is out of range (>= 1)"),
        (passage(area="3"), f"{PW}: field 'area' must be int, got str"),
        (passage(area=True), f"{PW}: field 'area' must be int, got a boolean"),
        (passage(asn="010203040506070G"), f"{PW}: field 'asn' = '010203040506070G' is not 16 uppercase hex digits"),
        (passage(asn="f1f2f3f4f5f6f7f8"), f"{PW}: field 'asn' = 'f1f2f3f4f5f6f7f8' is not 16 uppercase hex digits"),
        (passage(asn=[ASN]), f"{PW}: field 'asn' must be str, got list"),
        (passage(direction="in"), f"{PW}: direction 'in' is not one of entry, exit"),
        (passage(direction="Entry"), f"{PW}: direction 'Entry' is not one of entry, exit"),
        (passage(direction=""), f"{PW}: direction '' is not one of entry, exit"),
        (passage(direction="x" * 40), f"{PW}: direction {('x' * 40)!r:.30} is not one of entry, exit"),
        (passage(direction=1), f"{PW}: field 'direction' must be str, got int"),
        (passage(time="2026-11-23T02:00:00Z"), f"{PW} time {UTC_LIKE} '2026-11-23T02:00:00Z'"),
        (passage(time=5), f"{PW}: field 'time' must be str, got int"),
        (
            passage(time="2026-02-30T02:00:00.000000Z"),
            f"{PW} time is not a real date/time: '2026-02-30T02:00:00.000000Z'",
        ),
        (passage(terminal_id="00000000010"), f"{PW}: field 'terminal_id' = '00000000010' is not 12 digits"),
        (passage(terminal_id=EID), f"{PW}: field 'terminal_id' = '00010001' is not 12 digits"),
        (passage(terminal_id=101), f"{PW}: field 'terminal_id' must be str, got int"),
        (passage(seq=0), f"{PW}: field 'seq' = 0 is out of range (>= 1)"),
        (passage(seq=2**63), f"{PW}: field 'seq' = {2**63} is out of range (>= 1)"),
        (passage(seq=1.5), f"{PW}: field 'seq' must be int, got float"),
    ],
)
def test_passage_refusals(body, message):
    refused("passage", body, message)


def test_passage_fields_are_checked_in_order():
    # A passage wrong everywhere names enterprise_id, then area, asn, direction, time, terminal_id, seq.
    order = [
        ("enterprise_id", "x", "passage: field 'enterprise_id' = 'x' is not 8 digits"),
        ("area", 0, "passage: field 'area' = 0 is out of range (>= 1)"),
        ("asn", "x", "passage: field 'asn' = 'x' is not 16 uppercase hex digits"),
        ("direction", "x", "passage: direction 'x' is not one of entry, exit"),
        ("time", "x", f"passage time {UTC_LIKE} 'x'"),
        ("terminal_id", "x", "passage: field 'terminal_id' = 'x' is not 12 digits"),
        ("seq", 0, "passage: field 'seq' = 0 is out of range (>= 1)"),
    ]
    for i, (_, _, message) in enumerate(order):
        refused("passage", passage(**{k: v for k, v, _ in order[i:]}), message)


@settings(max_examples=60, deadline=None)
@given(st.integers(-3, 300), st.integers(-3, 3), st.sampled_from(["entry", "exit", "in", "out", "ENTRY"]))
def test_passage_is_accepted_exactly_inside_its_ranges(area, seq, direction):
    body = passage(area=area, seq=seq, direction=direction)
    ok = 1 <= area <= 255 and seq >= 1 and direction in ("entry", "exit")
    if ok:
        assert opened("passage", body).body == body
    else:
        with pytest.raises(p.ProtocolError):
            opened("passage", body)


def allowance_list(allowances, eid="00010001"):
    return {"enterprise_id": eid, "allowances": allowances}


def allowance_row(aid, asn="0102030405060708", collected=False, expiry="2026-12-31", number=1):
    return {"allowance_id": aid, "asn": asn, "number": number, "amount": 500, "expiry": expiry,
            "policy": "cash_first", "collected": collected}  # fmt: skip


def test_the_allowance_list_schema_checks_each_number():
    """`number` (docs/sync-protocol.md): an integer 1..65535, present on every row, unique per card in a message."""
    check = p.BODY_CHECKS["subsidy_allowances"]
    check(
        allowance_list(
            [
                allowance_row("a", number=1),
                allowance_row("b", number=65535),
                allowance_row("c", asn="0A0B0C0D0E0F1011", number=1),
            ]
        )
    )
    no_number = allowance_row("a")
    del no_number["number"]
    w = "subsidy_allowances allowances"
    cases = [
        ([allowance_row("a", number=0)], f"{w}[0]: field 'number' = 0 is out of range (>= 1)"),
        ([allowance_row("a", number=65536)], f"{w}[0]: number above 65535 (the card keeps 2 bytes)"),
        (
            [allowance_row("a", number=2), allowance_row("b", number=2)],
            f"{w}[1]: card 0102030405060708 has two allowances numbered 2",
        ),
    ]
    for rows, message in cases:
        with pytest.raises(p.ProtocolError) as caught:
            check(allowance_list(rows))
        assert str(caught.value) == message
    with pytest.raises(p.ProtocolError, match="number"):
        check(allowance_list([no_number]))
    with pytest.raises(p.ProtocolError, match="number"):
        check(allowance_list([allowance_row("a", number="1")]))


def test_the_allowance_list_schema_refuses_each_field_exactly():
    """Every refusal of `subsidy_allowances` (docs/sync-protocol.md), word for word, and its edges accepted."""
    w = "subsidy_allowances allowances[0]"
    many = [allowance_row(f"a{i}", asn=f"{i:016X}", number=1 + i % 60_000) for i in range(20_001)]
    p.BODY_CHECKS["subsidy_allowances"](allowance_list(many[:20_000]))  # at most 20000
    edges = [allowance_row("a", number=1), allowance_row("b", number=2)]
    edges[0]["amount"], edges[1]["amount"] = 0xFFFFFFFF, 1
    p.BODY_CHECKS["subsidy_allowances"](allowance_list(edges))
    cases = [
        ({**allowance_list([]), "x": 1}, "subsidy_allowances: unknown field(s) 'x'"),
        (allowance_list([], eid="1"), "subsidy_allowances: field 'enterprise_id' = '1' is not 8 decimal digits"),
        (
            {"enterprise_id": "00010001", "allowances": "x"},
            "subsidy_allowances: field 'allowances' must be list, got str",
        ),
        (allowance_list(many), "subsidy_allowances: 20001 allowances, more than 20000"),
        (allowance_list([1]), f"{w} must be an object"),
        (allowance_list([{**allowance_row("a"), "x": 1}]), f"{w}: unknown field(s) 'x'"),
        (
            allowance_list([allowance_row("a b")]),
            f"{w}: field 'allowance_id' = 'a b' is not 1-64 characters of [A-Za-z0-9._-]",
        ),
        (allowance_list([allowance_row("a", asn="01")]), f"{w}: field 'asn' = '01' is not 16 uppercase hex digits"),
        (allowance_list([{**allowance_row("a"), "amount": 0}]), f"{w}: field 'amount' = 0 is out of range (>= 1)"),
        (allowance_list([{**allowance_row("a"), "amount": 2**32}]), f"{w}: amount above 4294967295 fen"),
        (allowance_list([allowance_row("a", expiry="2026-13-01")]), f"{w}: expiry '2026-13-01' is not a real date"),
        (
            allowance_list([{**allowance_row("a"), "policy": "x"}]),
            f"{w}: policy 'x' is not subsidy_first or cash_first",
        ),
        (allowance_list([{**allowance_row("a"), "policy": 1}]), f"{w}: field 'policy' must be str, got int"),
        (allowance_list([allowance_row("a", collected=1)]), f"{w}: field 'collected' must be bool, got int"),
        (
            allowance_list([allowance_row("a"), allowance_row("a", number=2)]),
            "subsidy_allowances allowances[1]: allowance a listed twice",
        ),
    ]
    for body, message in cases:
        with pytest.raises(p.ProtocolError) as caught:
            p.BODY_CHECKS["subsidy_allowances"](body)
        assert str(caught.value) == message
