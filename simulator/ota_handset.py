"""A minimal handset stand-in for the SMSC simulator: hands each SMS-PP data download (TP-PID 7F) to the SIM as
ENVELOPE and sends back the SIM's PoRs; keeps every other SMS (bills) in its inbox, concatenated parts joined and
UCS-2 decoded, as a phone shows them. The phone-menu issue's handset simulator replaces it."""

from __future__ import annotations

from dataclasses import dataclass, field

from common import ota
from simulator import ota_sim, sms_tpdu


@dataclass
class SimHandset:
    sim: ota_sim.OtaSim | None
    inbox: list[str] = field(default_factory=list)
    _parts: ota.Reassembler = field(default_factory=ota.Reassembler)

    def receive(self, deliver_tpdu: bytes) -> list[bytes]:
        sms = sms_tpdu.parse_deliver(deliver_tpdu)
        if sms.pid == sms_tpdu.PID_SIM_DATA_DOWNLOAD:
            return ota_sim.deliver_to_sim(self.sim, deliver_tpdu) if self.sim is not None else []
        seg = ota.parse_user_data(sms.user_data) if sms.udhi else ota.Segment((), sms.user_data, None, 1, 1)
        whole = self._parts.add(sms.address, seg)
        if whole is not None:
            if sms.dcs == sms_tpdu.DCS_UCS2:
                self.inbox.append(whole.data.decode("utf-16-be"))
            else:
                self.inbox.append(whole.data.decode("latin-1"))
        return []
