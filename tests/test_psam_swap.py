"""A PSAM swapped while the terminal runs: at every reconnect the PSAM must be the one the terminal started with (and
whose binding it checked at start); another one signs nothing, and every tap is refused with the reason, logged."""

import pytest

from sam.interface import KeyPurpose, SamError, SamSwapped
from sam.keystore import Keystore
from sam.pcsc_sam import PcscSam
from sam.software import SoftwareSam
from simulator.psam import PsamApplet, psam_from_keystore
from terminal.keypad import Charge
from terminal.reader import CardRemoved
from tests.support import make_card, make_keystore, make_terminal
from tests.test_disk_full import Clock, tap
from tests.test_sam_backends import purchase


class Slot:
    """A SAM slot holding one PSAM at a time; swapping cuts the connection to the old one, as a real reader does."""

    def __init__(self, applet: PsamApplet):
        self.applet = applet
        self.connections = []

    def swap(self, applet: PsamApplet) -> None:
        for c in self.connections:
            c.removed = True
        self.applet = applet

    def connect(self):
        slot = self

        class Connection:
            removed = False
            applet = slot.applet

            def __init__(self):
                self.applet.power_on()

            def transmit(self, apdu: bytes) -> bytes:
                if self.removed:
                    raise CardRemoved("the PSAM left the slot")
                return self.applet.transmit(apdu)

            def close(self):
                pass

        connection = Connection()
        self.connections.append(connection)
        return connection


def psam_of(keystore) -> PsamApplet:
    """The PSAM a site's keystore becomes (a PSAM never holds the platform's TAC keys)."""
    return PsamApplet(psam_from_keystore(Keystore([k for k in keystore if k.purpose is not KeyPurpose.TAC])))


@pytest.fixture
def rig():
    keystore = make_keystore()
    slot = Slot(psam_of(keystore))
    return keystore, slot, PcscSam(slot.connect)


def test_a_swapped_psam_is_refused_at_reconnect_and_the_original_works_again(rig):
    keystore, slot, sam = rig
    original = slot.applet
    assert sam.purchase_mac1(purchase())[0] == 1
    slot.swap(psam_of(make_keystore()))  # same enterprise, other keys: another site's PSAM
    with pytest.raises(SamError, match="stopped answering"):
        sam.purchase_mac1(purchase())
    with pytest.raises(SamSwapped, match="was changed while the terminal ran.*nothing is signed with it"):
        sam.purchase_mac1(purchase())
    slot.swap(original)  # the terminal's own PSAM back (the refused one was let go): it works again
    assert sam.purchase_mac1(purchase())[0] == 2


@pytest.mark.parametrize("kind", ["door", "pos"])
def test_a_terminal_refuses_every_tap_on_a_swapped_psam_and_logs_why(tmp_path, rig, kind):
    keystore, slot, sam = rig
    clock = Clock()
    card = make_card(SoftwareSam(keystore), opening_balance=5000)
    terminal, _ = make_terminal(tmp_path, sam, kind)
    request = Charge(100) if kind == "pos" else None
    assert tap(terminal, card, request, clock()).accepted
    slot.swap(psam_of(make_keystore()))
    before = card.state.purse.balance
    for _ in range(2):  # the first notices the PSAM left, the second meets the other one
        refused = tap(terminal, card, request, clock())
        assert not refused.accepted
    assert refused.reason_code == "sam_swapped"
    assert refused.message.startswith("Terminal fault: the SAM is not this terminal's")
    assert card.state.purse.balance == before
    [record] = [e for e in terminal.event_log.events() if e.reason_code == "sam_swapped"]
    assert "was changed while the terminal ran" in record.detail["problem"]


def test_keys_loaded_through_the_sam_keep_it_the_same_psam(tmp_path):
    # `onecard keys load-psam` changes the key list through this very object: that is no swap.
    from sam import master_card as mc
    from simulator.psam import load_psam
    from tests.test_master_card import InProcess, load, make_master, write_blank_psam

    write_blank_psam(tmp_path / "psam.json")
    slot = Slot(load_psam(tmp_path / "psam.json"))
    sam = PcscSam(slot.connect)
    load(mc.MasterCardClient(InProcess(make_master(tmp_path))), sam)
    slot.swap(slot.applet)  # the same PSAM re-seated
    with pytest.raises(SamError, match="stopped answering"):
        sam.key_infos() and sam.purchase_mac1(purchase())
    assert sam.key_infos() and sam.purchase_mac1(purchase())[0] == 1
