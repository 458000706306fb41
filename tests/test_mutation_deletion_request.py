"""common/deletion_request.py (docs/phone-menu.md 4): the 33 bytes pinned with values that tell every field apart,
every field at its limits, and every refusal with its words. Issue 15."""

from __future__ import annotations

import pytest

from common import deletion_request as dr

ASN, EID = bytes.fromhex("1122334455667788"), bytes.fromhex("0A0B0C0D")
MAC = bytes.fromhex("F0F1F2F3F4F5F6F7")


def request(**changes):
    fields = dict(
        asn=ASN,
        enterprise_id=EID,
        algorithm=0x02,
        key_version=0x03,
        frozen_balance=0x12345678,
        offline_counter=0x9ABC,
        online_counter=0xDEF0,
    )
    fields.update(changes)
    return dr.DeletionRequest(**fields)


def refused(message, call, *args, **kwargs):
    with pytest.raises(dr.DeletionRequestError) as caught:
        call(*args, **kwargs)
    assert str(caught.value) == message


def test_the_layout_is_pinned():
    assert (dr.MAGIC, dr.VERSION, dr.SIGNED_LENGTH, dr.LENGTH) == (b"DL", 1, 25, 33)
    signed = bytes.fromhex("444C0111223344556677880A0B0C0D0203123456789ABCDEF0")
    assert request().signed_part() == signed
    assert request().encode(MAC) == signed + MAC
    assert dr.parse(signed + MAC) == (request(), MAC)
    assert issubclass(dr.DeletionRequestError, ValueError)


def test_every_field_at_its_limits_round_trips():
    for changes in (
        dict(algorithm=0, key_version=0, frozen_balance=0, offline_counter=0, online_counter=0),
        dict(
            algorithm=0xFF, key_version=0xFF, frozen_balance=0xFFFFFFFF, offline_counter=0xFFFF, online_counter=0xFFFF
        ),
        dict(frozen_balance=0x01000000, offline_counter=0x0100, online_counter=0x0001),
        dict(frozen_balance=1, offline_counter=1, online_counter=0x0100),
    ):
        req = request(**changes)
        raw = req.encode(MAC)
        assert len(raw) == 33
        assert dr.parse(raw) == (req, MAC)
    top = request(algorithm=0xFF, key_version=0xFE, frozen_balance=0xFFFFFFFF, offline_counter=0xFFFF, online_counter=0)
    assert top.signed_part()[15:] == bytes.fromhex("FF FE FFFFFFFF FFFF 0000")


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(algorithm=0x100), "algorithm 256 is not 0..255"),
        (dict(algorithm=-1), "algorithm -1 is not 0..255"),
        (dict(key_version=0x100), "key version 256 is not 0..255"),
        (dict(key_version=-1), "key version -1 is not 0..255"),
        (dict(frozen_balance=2**32), "frozen balance 4294967296 is not 0..4294967295"),
        (dict(frozen_balance=-1), "frozen balance -1 is not 0..4294967295"),
        (dict(offline_counter=0x10000), "offline counter 65536 is not 0..65535"),
        (dict(offline_counter=-1), "offline counter -1 is not 0..65535"),
        (dict(online_counter=0x10000), "online counter 65536 is not 0..65535"),
        (dict(online_counter=-1), "online counter -1 is not 0..65535"),
        (dict(asn=ASN[:7]), "ASN must be 8 bytes and enterprise ID 4 bytes"),
        (dict(asn=ASN + b"\x00"), "ASN must be 8 bytes and enterprise ID 4 bytes"),
        (dict(enterprise_id=EID[:3]), "ASN must be 8 bytes and enterprise ID 4 bytes"),
        (dict(enterprise_id=EID + b"\x00"), "ASN must be 8 bytes and enterprise ID 4 bytes"),
    ],
)
def test_out_of_range_fields_are_refused(changes, message):
    refused(message, request, **changes)


def test_the_mac_is_8_bytes():
    refused("MAC of 7 bytes, expected 8", request().encode, MAC[:7])
    refused("MAC of 9 bytes, expected 8", request().encode, MAC + b"\x00")
    refused("MAC of 0 bytes, expected 8", request().encode, b"")


def test_parse_refusals():
    raw = request().encode(MAC)
    refused("a deletion request is 33 bytes, got 32", dr.parse, raw[:-1])
    refused("a deletion request is 33 bytes, got 34", dr.parse, raw + b"\x00")
    refused("a deletion request is 33 bytes, got 0", dr.parse, b"")
    refused("not a deletion request (starts 444d, expected 444c)", dr.parse, b"DM" + raw[2:])
    refused("not a deletion request (starts 004c, expected 444c)", dr.parse, b"\x00L" + raw[2:])
    refused("deletion request version 2, this platform reads version 1", dr.parse, raw[:2] + b"\x02" + raw[3:])
    refused("deletion request version 0, this platform reads version 1", dr.parse, raw[:2] + b"\x00" + raw[3:])
