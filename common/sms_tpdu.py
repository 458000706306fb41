"""TS 23.040 SMS TPDUs, built and parsed with pycrate (TS23040_SMS): for the handset (phone/handset.py), the
simulated network and the simulated SIM.

Only what OTA and the SMS bills need: SMS-DELIVER (TP-PID 7F (U)SIM data download, TP-DCS F6 8-bit class 2, UDHI;
or a text message, TP-DCS 08 UCS-2 or 04 8-bit) and SMS-SUBMIT (the PoR back to the OTA server's address).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pycrate_mobile.TS23040_SMS import SMS_DELIVER, SMS_SUBMIT

PID_SIM_DATA_DOWNLOAD = 0x7F
DCS_8BIT_CLASS2 = 0xF6
DCS_UCS2 = 0x08


class TpduError(ValueError):
    """Bytes that are not the TPDU expected."""


@dataclass(frozen=True)
class Sms:
    address: str  # TP-OA of a DELIVER, TP-DA of a SUBMIT
    pid: int
    dcs: int
    udhi: bool
    user_data: bytes  # 8-bit user data with its UDH when udhi


def _pid_dcs(msg, pid: int, dcs: int) -> None:
    msg["TP_PID"].from_bytes(bytes([pid]))
    msg["TP_DCS"].from_bytes(bytes([dcs]))


def deliver(sms: Sms, when: dt.datetime) -> bytes:
    d = SMS_DELIVER()
    d["TP_UDHI"].set_val(int(sms.udhi))
    d["TP_OA"]["Num"].encode(sms.address)
    _pid_dcs(d, sms.pid, sms.dcs)
    d["TP_SCTS"].encode(when.timetuple())
    d["TP_UD"].from_bytes(bytes([len(sms.user_data)]) + sms.user_data)
    return d.to_bytes()


def submit(sms: Sms, reference: int) -> bytes:
    s = SMS_SUBMIT()
    s["TP_UDHI"].set_val(int(sms.udhi))
    s["TP_MR"].set_val(reference & 0xFF)
    s["TP_DA"]["Num"].encode(sms.address)
    _pid_dcs(s, sms.pid, sms.dcs)
    s["TP_UD"].from_bytes(bytes([len(sms.user_data)]) + sms.user_data)
    return s.to_bytes()


def _parse(cls, raw: bytes, addr_field: str, what: str) -> Sms:
    msg = cls()
    try:
        msg.from_bytes(raw)
        if msg.to_bytes() != raw:
            raise TpduError(f"{what} has trailing or inconsistent bytes")
        dcs = msg["TP_DCS"].to_bytes()[0]
        if dcs not in (DCS_8BIT_CLASS2, DCS_UCS2, 0x04):
            raise TpduError(f"{what} data coding {dcs:02x} is not 8-bit or UCS-2")
        return Sms(
            address=msg[addr_field]["Num"].decode(),
            pid=msg["TP_PID"].to_bytes()[0],
            dcs=dcs,
            udhi=bool(msg["TP_UDHI"].get_val()),
            user_data=msg["TP_UD"].to_bytes()[1:],
        )
    except TpduError:
        raise
    except Exception as e:  # pycrate raises its own errors for truncated input
        raise TpduError(f"{what} does not parse: {e}") from None


def parse_deliver(raw: bytes) -> Sms:
    if not raw or raw[0] & 0x03 != 0x00:
        raise TpduError("not an SMS-DELIVER (TP-MTI 00)")
    return _parse(SMS_DELIVER, raw, "TP_OA", "SMS-DELIVER")


def parse_submit(raw: bytes) -> Sms:
    if not raw or raw[0] & 0x03 != 0x01:
        raise TpduError("not an SMS-SUBMIT (TP-MTI 01)")
    return _parse(SMS_SUBMIT, raw, "TP_DA", "SMS-SUBMIT")
