"""Bills as SMS text to the holder's phone, through the OTA gateway's SMPP path.

UCS-2 (TP-DCS 08) for every bill, so Chinese names and text arrive as written; a bill longer than one SMS (70
UTF-16 code units) is cut into parts of at most 67 code units, each after a UDH `05 00 03 <ref> <count> <seq>`
(TS 23.040 9.2.3.24.1), never between the two halves of a surrogate pair.
"""

from __future__ import annotations

from central.ota_gateway import DCS_UCS2, SmppGateway

SINGLE_UNITS = 70
PART_UNITS = 67


def bill_parts(text: str, reference: int) -> list[tuple[bool, bytes]]:
    """(udhi, user data) of each SMS of the bill."""
    if not text:
        raise ValueError("an empty bill is not sent")
    data = text.encode("utf-16-be")
    if len(data) <= 2 * SINGLE_UNITS:
        return [(False, data)]
    chunks, pos = [], 0
    while pos < len(data):
        end = min(pos + 2 * PART_UNITS, len(data))
        if end < len(data) and 0xD8 <= data[end - 2] <= 0xDB:  # a high surrogate: keep the pair together
            end -= 2
        chunks.append(data[pos:end])
        pos = end
    if len(chunks) > 255:
        raise ValueError(f"the bill needs {len(chunks)} SMS; at most 255 can be concatenated")
    ref = reference & 0xFF
    return [(True, bytes([5, 0, 3, ref, len(chunks), i + 1]) + c) for i, c in enumerate(chunks)]


def send_bill(gateway: SmppGateway, phone: str, text: str, reference: int, validity_seconds: int = 86400) -> list[str]:
    """submit_sm every part; the SMSC's message IDs (a part it would not take within validity: RuntimeError)."""
    ids = []
    for udhi, ud in bill_parts(text, reference):
        mid = gateway.submit(phone, ud, pid=0x00, dcs=DCS_UCS2, udhi=udhi, validity_seconds=validity_seconds)
        if mid is None:
            raise RuntimeError(f"the SMSC did not take the bill for {phone} within its validity; send it again")
        ids.append(mid)
    return ids
