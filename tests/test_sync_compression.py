"""Compressed events uploads ([sync].compress_uploads, docs/sync-protocol.md "events"): the zlib stream of exactly
the JSON upload, told apart by its first byte, inflated within the uplink bound, refused whole or not at all."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import sync_protocol as p

TID = "000000000101"
HASH = "ab" * 32


def batch(n: int = 3) -> bytes:
    events = [
        p.WireEvent(
            i,
            "2026-11-23T01:00:00.000000Z",
            "door.grant",
            None,
            "ok",
            "Welcome",
            '{"i":1}',
            HASH if i > 1 else "0" * 64,
            HASH,
        )
        for i in range(1, n + 1)
    ]
    return p.encode_events(TID, events)


def test_a_compressed_upload_decodes_to_exactly_the_plain_one():
    plain = batch(50)
    z = p.compress_upload(plain)
    assert z[0] == p.ZLIB_FIRST_BYTE == 0x78 and plain[0] == ord("{")
    assert zlib.decompress(z) == plain and len(z) < len(plain) // 3
    assert p.decode_events(z) == p.decode_events(plain)
    for level in (0, 1, 9):  # any deflate level is a zlib stream with the 32 KiB window
        assert p.decode_events(zlib.compress(plain, level)) == p.decode_events(plain)


@pytest.mark.parametrize(
    "payload, words",
    [
        (p.compress_upload(batch())[:-3], "truncated zlib stream"),
        (p.compress_upload(batch()) + b"\x00", "1 bytes after its zlib stream"),
        (p.compress_upload(batch()) + p.compress_upload(batch()), "bytes after its zlib stream"),
        (b"\x78\x9c" + b"\xff" * 20, "is not a valid zlib stream"),
        (p.compress_upload(batch())[:-1] + b"\x00", "is not a valid zlib stream"),  # Adler-32 wrong
        (zlib.compress(b"not json at all"), "is not UTF-8 JSON"),
        (zlib.compress(b'{"v":1,"type":"heartbeat"}'), "must have type 'events'"),
    ],
)
def test_a_bad_compressed_upload_is_refused_in_one_line(payload, words):
    with pytest.raises(p.ProtocolError, match=words):
        p.decode_events(payload)


def test_a_stream_with_a_preset_dictionary_is_refused():
    c = zlib.compressobj(zdict=b'{"events":')
    z = c.compress(batch()) + c.flush()
    assert z[0] == 0x78 and z[1] & 0x20  # FDICT
    with pytest.raises(p.ProtocolError, match="not a valid zlib stream"):
        p.decode_events(z)


def test_a_compression_bomb_is_refused_without_inflating_it_all():
    bomb = zlib.compress(b" " * (p.MAX_UPLINK_BYTES + 1), 9)
    assert len(bomb) < 100_000
    with pytest.raises(p.ProtocolError, match=f"inflates to more than {p.MAX_UPLINK_BYTES} bytes"):
        p.decode_events(bomb)
    exact = zlib.compress(b" " * p.MAX_UPLINK_BYTES, 9)  # at the bound: inflated, then refused as JSON
    with pytest.raises(p.ProtocolError, match="is not UTF-8 JSON|must be a JSON object"):
        p.decode_events(exact)


def test_the_compressed_size_is_bounded_before_inflating():
    with pytest.raises(p.ProtocolError, match="more than"):
        p.decode_events(b"\x78" + bytes(p.MAX_UPLINK_BYTES))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_any_bytes_after_the_zlib_byte_parse_or_raise_protocol_error(tail):
    try:
        p.decode_events(b"\x78" + tail)
    except p.ProtocolError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2000), st.integers(1, 255))
def test_fuzz_a_flipped_byte_of_a_compressed_upload_is_refused_or_decodes_the_same(pos, flip):
    plain = batch(5)
    z = bytearray(p.compress_upload(plain))
    pos %= len(z)
    z[pos] ^= flip
    try:
        got = p.decode_events(bytes(z))
    except p.ProtocolError:
        return
    assert got == p.decode_events(plain)  # Adler-32 over the inflated bytes: nothing else can decode


def test_the_agent_compresses_at_level_6_as_documented():
    plain = batch(50)
    assert p.compress_upload(plain) == zlib.compress(plain, 6)


@pytest.mark.parametrize(
    "payload, message",
    [
        ("not bytes", "events payload must be bytes"),
        (
            b"\x78\x9c" + b"\xff" * 20,
            "events payload is not a valid zlib stream (Error -3 while decompressing data: invalid block type)",
        ),
        (p.compress_upload(batch())[:-3], "events payload is a truncated zlib stream"),
        (p.compress_upload(batch()) + b"\x00\x01", "events payload has 2 bytes after its zlib stream"),
    ],
)
def test_refusals_name_the_events_payload_exactly(payload, message):
    with pytest.raises(p.ProtocolError) as err:
        p.decode_events(payload)
    assert str(err.value) == message


def test_a_payload_of_exactly_the_bound_is_inflated_not_refused_for_its_size():
    with pytest.raises(p.ProtocolError, match="^events payload is not a valid zlib stream"):
        p.decode_events(b"\x78" + bytes(p.MAX_UPLINK_BYTES - 1))
    with pytest.raises(p.ProtocolError, match=f"^events payload is {p.MAX_UPLINK_BYTES + 1} bytes, more than"):
        p.decode_events(b"\x78" + bytes(p.MAX_UPLINK_BYTES))
