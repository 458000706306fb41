"""common/registry_protocol.py: every refusal of a registry request or answer with its exact words, the integer
arguments at their limits, and answers the platform signed but that must still not be believed as they are.
Issue 15."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common import registry_protocol as rp
from common.sync_protocol import ProtocolError, SignatureError, canonical

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
RID = "00112233445566778899aabbccddeeff"
SID = "000000000900"
NOW = dt.datetime(2026, 11, 23, 2, 0, tzinfo=dt.timezone.utc)
ASN = "0102030405060708"
OPS = "holder, card_of_phone, is_registered, card, register, voided, replace, cancel"


def fails(exc_type, message, call, *args, **kwargs):
    with pytest.raises(Exception) as caught:
        call(*args, **kwargs)
    assert type(caught.value) is exc_type, caught.value
    assert str(caught.value) == message


def request(**changes):
    obj = {"v": 1, "type": "registry.request", "id": RID, "station": SID, "op": "card", "args": {"asn": ASN}}
    obj.update(changes)
    return canonical({k: v for k, v in obj.items() if v is not ...})


def voided(**args):
    return {
        "asn": ASN,
        "frozen_cents": 1234,
        "offline_counter": 0,
        "online_counter": 0,
        "proof": "a1b2c3d4e5f60718",
        "challenge": "0011223344556677",
        "key_version": 1,
        **args,
    }


REGISTER = {"enterprise_id": "00010001", "employee_no": "E1", "asn": ASN, "rights": {}, "key_version": 1}


def test_integer_arguments_at_their_limits_are_accepted():
    for cents in (0, 0xFFFFFFFF):
        assert rp.decode_request(request(op="voided", args=voided(frozen_cents=cents))).args["frozen_cents"] == cents
    for version in (0, 255):
        req = rp.decode_request(request(op="register", args={**REGISTER, "key_version": version}))
        assert req == rp.RegistryRequest(RID, SID, "register", {**REGISTER, "key_version": version})
        args = {"old_asn": ASN, "new_asn": "1112131415161718", "key_version": version}
        assert rp.decode_request(request(op="replace", args=args)).args == args
    assert rp.decode_request(request(op="cancel", args={"asn": ASN, "settle": False})).args["settle"] is False


RQ = "registry request"


@pytest.mark.parametrize(
    "payload, message",
    [
        (request(type="registry.response"), f"{RQ}: type must be 'registry.request'"),
        (request(type=...), f"{RQ}: type must be 'registry.request'"),
        (request(v=2), f"{RQ} payload has protocol version 2, expected the integer 1"),
        (b"[]", f"{RQ} payload must be a JSON object"),
        (
            request(id="00112233445566778899AABBCCDDEEFF"),
            f"{RQ}: field 'id' = '00112233445566778899AABBCCDDEEFF' is not 32 lowercase hex digits",
        ),
        (request(id=...), f"{RQ}: field 'id' is missing"),
        (request(station="00000000090"), f"{RQ}: field 'station' = '00000000090' is not a 12-digit station ID"),
        (request(station=900), f"{RQ}: field 'station' must be str, got int"),
        (request(op=5), f"{RQ}: field 'op' must be str, got int"),
        (request(op="delete"), f"{RQ}: unknown op 'delete'; one of {OPS}"),
        (request(args=[ASN]), f"{RQ}: field 'args' must be dict, got list"),
        (request(args=...), f"{RQ}: field 'args' is missing"),
        (request(args={"asn": ASN, "x": 1, "a": 2}), f"{RQ} card: unknown argument 'a' for card"),
        (request(args={"asn": "x"}), f"{RQ} card: field 'asn' = 'x' is not valid"),
        (request(args={}), f"{RQ} card: field 'asn' is missing"),
        (request(op="cancel", args={"asn": ASN, "settle": 1}), f"{RQ} cancel: field 'settle' must be bool, got int"),
        (
            request(op="register", args={**REGISTER, "rights": []}),
            f"{RQ} register: field 'rights' must be dict, got list",
        ),
        (
            request(op="voided", args=voided(frozen_cents="1")),
            f"{RQ} voided: field 'frozen_cents' must be int, got str",
        ),
        (
            request(op="voided", args=voided(frozen_cents=True)),
            f"{RQ} voided: field 'frozen_cents' must be int, got a boolean",
        ),
        (
            request(op="voided", args=voided(frozen_cents=-1)),
            f"{RQ} voided: field 'frozen_cents' = -1 is not 0..4294967295",
        ),
        (
            request(op="voided", args=voided(frozen_cents=2**32)),
            f"{RQ} voided: field 'frozen_cents' = 4294967296 is not 0..4294967295",
        ),
        (
            request(op="register", args={**REGISTER, "key_version": 256}),
            f"{RQ} register: field 'key_version' = 256 is not 0..255",
        ),
        (
            request(op="register", args={**REGISTER, "key_version": -1}),
            f"{RQ} register: field 'key_version' = -1 is not 0..255",
        ),
        (
            request(op="holder", args={"enterprise_id": "00010001", "employee_no": "E 1"}),
            f"{RQ} holder: field 'employee_no' = 'E 1' is not valid",
        ),
    ],
)
def test_request_refusals(payload, message):
    fails(ProtocolError, message, rp.decode_request, payload)


def test_a_request_that_is_not_json_names_itself():
    with pytest.raises(ProtocolError) as caught:
        rp.decode_request(b"{")
    assert str(caught.value).startswith(f"{RQ} payload is not UTF-8 JSON (")


def test_encode_refuses_an_unknown_operation_and_what_the_platform_would_refuse():
    fails(ValueError, "unknown registry operation 'delete'", rp.encode_request, RID, SID, "delete", {})
    fails(
        ProtocolError, f"{RQ} card: field 'asn' = 'x' is not valid", rp.encode_request, RID, SID, "card", {"asn": "x"}
    )


def test_station_topics():
    assert rp.station_topic(SID, rp.UP_REGISTRY) == "onecard/v1/s/000000000900/up/registry"
    assert rp.station_topic(SID, rp.DOWN_REGISTRY) == "onecard/v1/s/000000000900/down/registry"
    assert rp.parse_station_topic("onecard/v1/s/000000000900/up/registry") == SID
    for topic in (
        "other/v1/s/000000000900/up/registry",  # six parts, another root
        "onecard/v2/s/000000000900/up/registry",
        "onecard/v1/t/000000000900/up/registry",
        "onecard/v1/s/00000000090/up/registry",
        "onecard/v1/s/000000000900/down/registry",
        "onecard/v1/s/000000000900/up/registry/x",
        "onecard/v1/s/000000000900/up",
    ):
        fails(ProtocolError, f"topic {topic!r} is not a station registry topic", rp.parse_station_topic, topic)


# --- answers -------------------------------------------------------------------------------------------------------


def answer(**changes):
    """An answer signed by the platform key, with any field changed before signing."""
    unsigned = {
        "v": 1,
        "type": "registry.response",
        "request_id": RID,
        "station": SID,
        "op": "card",
        "issued_at": "2026-11-23T02:00:00.000000Z",
        "ok": True,
        "result": {"asn": ASN},
    }
    unsigned.update(changes)
    unsigned = {k: v for k, v in unsigned.items() if v is not ...}
    sig = base64.b64encode(KEY.sign(rp.REGISTRY_SIGN_DOMAIN + canonical(unsigned))).decode()
    return canonical({**unsigned, "sig": sig})


def opened(payload):
    return rp.open_response(payload, KEY.public_key())


RS = "registry response"


def test_an_answer_and_a_refusal_come_back_whole():
    req = rp.decode_request(request())
    assert opened(rp.seal_response(KEY, req, NOW, result={"asn": ASN})) == rp.RegistryResponse(
        RID, SID, "card", NOW, True, {"asn": ASN}, ""
    )
    assert opened(rp.seal_response(KEY, req, NOW, error="no such card")) == rp.RegistryResponse(
        RID, SID, "card", NOW, False, None, "no such card"
    )
    # an empty error is still a refusal, and says nothing more
    empty = rp.seal_response(KEY, req, NOW, error="")
    assert b'"error":""' in empty and b'"ok":false' in empty
    assert opened(empty) == rp.RegistryResponse(RID, SID, "card", NOW, False, None, "")
    assert b'"error"' not in rp.seal_response(KEY, req, NOW, result=None)


def test_a_refusal_carries_no_result_even_if_one_was_signed():
    got = opened(answer(ok=False, error="refused", result={"asn": ASN}))
    assert (got.ok, got.result, got.error) == (False, None, "refused")


@pytest.mark.parametrize(
    "payload, message",
    [
        (answer(type="registry.request"), f"{RS}: type must be 'registry.response'"),
        (answer(v=2), f"{RS} payload has protocol version 2, expected the integer 1"),
        (answer()[:-1] + b',"sig":5}', "payload has the key 'sig' twice"),
        (answer(ok="yes"), f"{RS}: field 'ok' must be bool, got str"),
        (answer(ok=...), f"{RS}: field 'ok' is missing"),
        (answer(request_id="x"), f"{RS}: field 'request_id' = 'x' is not 32 lowercase hex digits"),
        (answer(station="1"), f"{RS}: field 'station' = '1' is not a 12-digit station ID"),
        (answer(op=5), f"{RS}: field 'op' must be str, got int"),
        (
            answer(issued_at="2026-11-23T02:00:00Z"),
            f"{RS} issued_at must be a UTC time like 2026-11-23T02:00:00.000000Z, got '2026-11-23T02:00:00Z'",
        ),
        (answer(ok=False, result=...), f"{RS}: field 'error' is missing"),
        (answer(ok=False, error=5), f"{RS}: field 'error' must be str, got int"),
    ],
)
def test_answer_refusals(payload, message):
    fails(ProtocolError, message, opened, payload)


def test_the_signature_must_be_strict_base64_and_the_platforms():
    good = answer()
    sig = json.loads(good)["sig"].encode()
    fails(ProtocolError, f"{RS}: sig is not base64", opened, good.replace(sig, b"!" + sig))
    fails(ProtocolError, f"{RS}: sig is not base64", opened, good.replace(sig, sig[:-2]))
    unsigned = good.replace(b',"sig":"' + sig + b'"', b"")
    fails(ProtocolError, f"{RS}: field 'sig' is missing", opened, unsigned)
    fails(ProtocolError, f"{RS}: field 'sig' must be str, got int", opened, good.replace(b'"' + sig + b'"', b"5"))
    forged = good.replace(b'"op":"card"', b'"op":"cancel"')
    fails(SignatureError, f"{RS} is not signed by the platform key", opened, forged)
    other = rp.seal_response(Ed25519PrivateKey.generate(), rp.decode_request(request()), NOW, result=1)
    fails(SignatureError, f"{RS} is not signed by the platform key", opened, other)
