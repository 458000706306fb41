"""BCD dates and times as the card, the PSAM and the purse MACs carry them: 2026-01-31 -> 20 26 01 31 (4 bytes),
12:34:56 -> 12 34 56 (3 bytes). Pure functions; a date the card holds is checked here and nowhere else."""

from __future__ import annotations

import datetime as dt


def is_bcd(data: bytes) -> bool:
    """Every nibble is a decimal digit."""
    return all((b >> 4) <= 9 and (b & 0x0F) <= 9 for b in data)


def encode_date(day: dt.date) -> bytes:
    return bytes.fromhex(f"{day.year:04d}{day.month:02d}{day.day:02d}")


def encode_date_time(local: dt.datetime) -> tuple[bytes, bytes]:
    """(date, time) of a local time, as the purse commands and their MACs take them."""
    return encode_date(local), bytes.fromhex(f"{local.hour:02d}{local.minute:02d}{local.second:02d}")


def decode_date(raw: bytes) -> dt.date:
    """4 BCD bytes -> a real calendar date; ValueError otherwise."""
    text = raw.hex()
    if len(raw) != 4 or not text.isdigit():
        raise ValueError(f"{text} is not a BCD date YYYYMMDD")
    return dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))


def is_date(raw: bytes) -> bool:
    try:
        decode_date(raw)
    except ValueError:
        return False
    return True
