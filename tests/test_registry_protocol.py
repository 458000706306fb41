"""The issuing station's registry messages, byte for byte as docs/sync-protocol.md "Issuing station registry" shows
them, and what a platform answer must be to be believed."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from central.broker_config import render_acl
from common import registry_protocol as rp
from common.sync_protocol import ProtocolError, SignatureError, canonical

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
RID = "00112233445566778899aabbccddeeff"
NOW = dt.datetime(2026, 11, 23, 2, 0, tzinfo=dt.timezone.utc)
DOC = (Path(__file__).resolve().parent.parent / "docs" / "sync-protocol.md").read_text(encoding="utf-8")
SECTION = DOC[DOC.index("## Issuing station registry") : DOC.index("## Upload: ordering")]
EXAMPLES = re.findall(r"^\{.*\}$", SECTION, re.M)
REQUESTS = [e for e in EXAMPLES if '"type":"registry.request"' in e]
RESPONSES = [e for e in EXAMPLES if '"type":"registry.response"' in e]


def holder_request() -> bytes:
    return rp.encode_request(RID, "000000000900", "holder", {"enterprise_id": "00010001", "employee_no": "E1001"})


def test_the_documented_bytes_are_what_is_sent_and_signed():
    assert len(EXAMPLES) == len(REQUESTS) + len(RESPONSES) == 4
    assert REQUESTS[0].encode() == holder_request()
    req = rp.decode_request(holder_request())
    ok = rp.seal_response(KEY, req, NOW, result={"name": "Zhang Wei", "phone": "13800000001"})
    refused = rp.seal_response(KEY, req, NOW, error="employee NOBODY is not registered")
    assert [ok.decode(), refused.decode()] == RESPONSES
    answer = rp.open_response(ok, KEY.public_key())
    assert (answer.request_id, answer.ok, answer.result) == (RID, True, {"name": "Zhang Wei", "phone": "13800000001"})
    assert rp.open_response(refused, KEY.public_key()).error == "employee NOBODY is not registered"


def test_an_answer_is_believed_only_with_the_platform_signature():
    req = rp.decode_request(holder_request())
    forged = rp.seal_response(Ed25519PrivateKey.generate(), req, NOW, result={"name": "Mallory", "phone": ""})
    with pytest.raises(SignatureError):
        rp.open_response(forged, KEY.public_key())
    altered = rp.seal_response(KEY, req, NOW, result={"name": "Zhang Wei", "phone": "1"}).replace(b'"1"', b'"2"')
    with pytest.raises(SignatureError):
        rp.open_response(altered, KEY.public_key())


def test_a_sync_envelope_signature_cannot_stand_for_a_registry_answer():
    from common import sync_protocol as p

    envelope = p.seal(KEY, "time", "t:000000000900", {"platform_time": "2026-11-23T02:00:00.000000Z"}, NOW, "m1")
    assert rp.REGISTRY_SIGN_DOMAIN != p.SIGN_DOMAIN
    with pytest.raises(ProtocolError):
        rp.open_response(envelope, KEY.public_key())


VOID = {
    "asn": "0102030405060708",
    "frozen_cents": 5000,
    "offline_counter": 3,
    "online_counter": 1,
    "proof": "a1b2c3d4e5f60718",
    "challenge": "0011223344556677",
    "key_version": 1,
}
VOID_SUBSIDY = {
    "subsidy_cents": 1234,
    "subsidy_expiry": "20261231",
    "subsidy_offline_counter": 2,
    "subsidy_online_counter": 1,
}


def test_the_documented_void_report_is_what_is_sent():
    sent = rp.encode_request(RID, "000000000900", "voided", {**VOID, **VOID_SUBSIDY})
    assert REQUESTS[1].encode() == sent
    assert rp.decode_request(sent).args == {**VOID, **VOID_SUBSIDY}
    # without the subsidy purse (APPLICATION BLOCK P1 00): the four subsidy arguments are absent
    assert rp.decode_request(rp.encode_request(RID, "000000000900", "voided", VOID)).args == VOID


@pytest.mark.parametrize(
    "args, message",
    [
        (
            {**VOID, "subsidy_cents": 1},
            "registry request voided: field 'subsidy_expiry' is missing (subsidy_cents, subsidy_expiry, "
            "subsidy_offline_counter, subsidy_online_counter go together)",
        ),
        (
            {**VOID, **VOID_SUBSIDY, "subsidy_expiry": "20261331"},
            "registry request voided: field 'subsidy_expiry' = '20261331' is not a date YYYYMMDD or 00000000",
        ),
        (
            {**VOID, **VOID_SUBSIDY, "subsidy_expiry": "2026123"},
            "registry request voided: field 'subsidy_expiry' = '2026123' is not valid",
        ),
        (
            {**VOID, **VOID_SUBSIDY, "subsidy_cents": 0x100000000},
            "registry request voided: field 'subsidy_cents' = 4294967296 is not 0..4294967295",
        ),
        (
            {**VOID, **VOID_SUBSIDY, "subsidy_online_counter": 0x10000},
            "registry request voided: field 'subsidy_online_counter' = 65536 is not 0..65535",
        ),
        ({**VOID, "offline_counter": -1}, "registry request voided: field 'offline_counter' = -1 is not 0..65535"),
        (
            {**VOID, "challenge": "0011223344556677AA"},
            "registry request voided: field 'challenge' = '0011223344556677AA' is not valid",
        ),
        ({**VOID, "subsidy": 1}, "registry request voided: unknown argument 'subsidy' for voided"),
    ],
)
def test_a_void_report_is_strict(args, message):
    with pytest.raises(ProtocolError) as caught:
        rp.encode_request(RID, "000000000900", "voided", args)
    assert str(caught.value) == message


def test_a_void_report_at_its_limits_is_accepted():
    edge = {**VOID, "offline_counter": 0xFFFF, "online_counter": 0, "subsidy_cents": 0xFFFFFFFF}
    edge.update(subsidy_expiry="00000000", subsidy_offline_counter=0xFFFF, subsidy_online_counter=0)
    assert rp.decode_request(rp.encode_request(RID, "000000000900", "voided", edge)).args == edge


def test_the_documented_table_lists_every_op_and_argument():
    rows = re.findall(r"^\| `(\w+)` \| (.*?) \| [^|]* \|$", SECTION, re.M)[1:]  # after the header
    assert [op for op, _ in rows] == list(rp.OPS)
    for op, args in rows:
        named = list(rp.OPS[op]) + list(rp.OPTIONAL.get(op, {}))
        assert re.findall(r"`(\w+)`", re.sub(r"\(.*?\)", "", args).replace("`01`", "")) == named, op


@pytest.mark.parametrize(
    "op, args, problem",
    [
        ("holder", {"enterprise_id": "1", "employee_no": "E1"}, "enterprise_id"),
        ("holder", {"enterprise_id": "00010001"}, "employee_no"),
        ("cancel", {"asn": "0102030405060708", "settle": "yes"}, "settle"),
        ("replace", {"old_asn": "0102030405060708", "new_asn": "01020304050607", "key_version": 1}, "new_asn"),
        ("replace", {"old_asn": "0102030405060708", "new_asn": "0102030405060709"}, "key_version"),
        ("card", {"asn": "0102030405060708", "extra": 1}, "extra"),
        (
            "register",
            {"enterprise_id": "00010001", "employee_no": "E1", "asn": "0102030405060708", "rights": {}},
            "key_version",
        ),
        (
            "register",
            {
                "enterprise_id": "00010001",
                "employee_no": "E1",
                "asn": "0102030405060708",
                "rights": {},
                "key_version": 256,
            },
            "key_version",
        ),
        ("voided", {**VOID, "frozen_cents": True}, "frozen_cents"),
        ("voided", {**VOID, "frozen_cents": -1}, "frozen_cents"),
        ("voided", {**VOID, "proof": "A1B2C3D4E5F60718"}, "proof"),
    ],
)
def test_malformed_requests_are_refused_naming_the_field(op, args, problem):
    with pytest.raises(ProtocolError, match=problem):
        rp.encode_request(RID, "000000000900", op, args)


def test_only_station_registry_topics_parse():
    assert rp.parse_station_topic("onecard/v1/s/000000000900/up/registry") == "000000000900"
    for topic in (
        "onecard/v1/t/000000000900/up/registry",
        "onecard/v1/s/000000000900/down/registry",
        "onecard/v1/s/900/up/registry",
    ):
        with pytest.raises(ProtocolError):
            rp.parse_station_topic(topic)


def test_the_acl_gives_registry_topics_to_stations_only():
    acl = render_acl({"000000000001": "00010001"}, stations={"000000000900": "00010001"})
    door, station = acl.split("user 000000000001")[1].split("user 000000000900")
    assert "registry" not in door
    assert "topic write onecard/v1/s/000000000900/up/registry" in station
    assert "topic read onecard/v1/s/000000000900/down/registry" in station
    assert "topic read onecard/v1/s/+/up/registry" in acl.split("user platform")[1].split("user 0")[0]


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([*rp.OPS["voided"], *rp.OPTIONAL["voided"], "x"]),
        _JSON | st.sampled_from(["00000000", "20261231", "0011223344556677", "0102030405060708"]),
    )
)
def test_any_void_report_parses_or_is_refused_with_our_error(args):
    payload = canonical(
        {"v": 1, "type": "registry.request", "id": RID, "station": "000000000900", "op": "voided", "args": args}
    )
    try:
        req = rp.decode_request(payload)
    except ProtocolError:
        return
    assert set(req.args) >= set(rp.OPS["voided"])
    given_optional = set(req.args) & set(rp.OPTIONAL["voided"])
    assert given_optional in (set(), set(rp.OPTIONAL["voided"]))
