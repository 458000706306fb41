"""A platform OTA gateway process for the kill tests (a test helper, not a test): runs one top-up job over SMPP.

Usage: python -m tests.ota_kill_child DIR SMSC_PORT ASN MSISDN AMOUNT. The test SIGKILLs it from the SMSC
simulator right after a chosen submit_sm, before the PoR comes back.
"""

import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central.ota_channel import OtaChannel, OtaStore
from central.ota_gateway import SmppGateway
from central.store import Platform
from sam.interface import Algorithm, CardIdentity
from sam.keystore import KeystoreUnlock, load_keystore
from sam.ota_keys import OtaSam
from sam.software import SoftwareSam
from tests.support import ENTERPRISE


def main() -> None:
    work, port, asn, msisdn, amount = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
    ks = load_keystore(work / "keystore", KeystoreUnlock.from_passphrase_file(work / "pass"))
    card = CardIdentity(bytes.fromhex(asn), ENTERPRISE, 1, Algorithm.AES128)
    gw = SmppGateway("127.0.0.1", port, "onecard", "secret", "10657000", timeout=3.0)
    gw.connect()
    platform = Platform(work / "p.db", Ed25519PrivateKey.generate())
    channel = OtaChannel(gw, OtaSam(ks), OtaStore(platform), por_wait_seconds=5.0)
    top = channel.top_up("kill-job", card, card, msisdn, amount, bytes.fromhex("000000000901"), SoftwareSam(ks))
    print(top.step.value)


if __name__ == "__main__":
    main()
