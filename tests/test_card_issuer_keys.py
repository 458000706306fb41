"""The card issuer's transport key (enterprise 00000000, K_CARD of every version 2 card) in the key tooling
(docs/key-handling.md 3): an issuing station gets it with the mac usage only, from the card issuer's key master card
(`keys load-keystore --role issuing`) or from `sam restrict --role issuing --enterprise E --card-issuer`; no other role
ever gets it; the restricted keystore is what `issue add-application` needs, and it cannot put K_CARD on a card."""

from __future__ import annotations

import pytest

from onecard.cli import main
from sam import master_card as mc
from sam.interface import KeyPurpose, KeyUsage
from sam.keystore import Keystore, KeystoreUnlock, load_keystore, save_keystore
from sam.roles import CARD_ISSUER, ROLE_KEYS
from simulator.master_card import MasterCardApplet
from tests.test_card_v2 import ISSUER, KS, A, B
from tests.test_card_v2_cli import add_application, bench  # noqa: F401  (the fixture)
from tests.test_master_card import InProcess, make_master


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def exported(card: MasterCardApplet, role: str) -> list:
    client = mc.MasterCardClient(InProcess(card))
    client.verify_pin(b"246810")
    target = mc.KeystoreTarget()
    keys, _ = target.open(
        client.export_for_target(role, mc.TARGET_KEYSTORE, target.target_id, target.public_key),
        client.card_info().anchor(),
    )
    return keys


def test_the_card_issuers_master_card_exports_transport_mac_only_and_to_the_issuing_role_only(tmp_path):
    issuer = make_master(tmp_path, "issuer.json", enterprise=CARD_ISSUER, versions=0)
    keys = exported(issuer, "issuing")
    assert keys and {(k.enterprise_id, k.purpose, k.version, k.usages) for k in keys} == {
        (CARD_ISSUER, KeyPurpose.TRANSPORT, 0, frozenset({KeyUsage.MAC}))
    }
    for role in ("door", "pos", "top-up", "platform"):
        with pytest.raises(mc.MasterCardError):
            exported(issuer, role)
    # An enterprise's own master card still exports its transport key with personalise (washing needs it).
    own = exported(make_master(tmp_path, "a.json", enterprise=A), "issuing")
    assert {k.usages for k in own if k.purpose is KeyPurpose.TRANSPORT} == {ROLE_KEYS["issuing"][KeyPurpose.TRANSPORT]}


@pytest.fixture
def office(tmp_path):
    (tmp_path / "pass").write_text("key office\n")
    unlock = KeystoreUnlock.from_passphrase_file(tmp_path / "pass")
    save_keystore(tmp_path / "all.ks", Keystore([*KS[A], *KS[B], *ISSUER]), unlock, scrypt_n=2**10)
    return tmp_path, unlock


def restrict(d, out, *extra):
    return ["sam", "restrict", "--keystore", d / "all.ks", "--passphrase-file", d / "pass", "--out", d / out, *extra]


def test_restrict_card_issuer_keeps_the_issuers_transport_key_with_mac_only(office, capsys):
    d, unlock = office
    code, out, err = run(capsys, *restrict(d, "b.ks", "--role", "issuing", "--enterprise", B.hex(), "--card-issuer"))
    assert code == 0, err
    keys = list(load_keystore(d / "b.ks", unlock))
    assert {k.enterprise_id for k in keys} == {B, CARD_ISSUER}
    issuer = [k for k in keys if k.enterprise_id == CARD_ISSUER]
    assert {(k.purpose, k.usages) for k in issuer} == {(KeyPurpose.TRANSPORT, frozenset({KeyUsage.MAC}))}
    assert len(issuer) == len(ISSUER)  # both algorithms
    for k in keys:
        if k.enterprise_id == B:
            assert k.usages <= ROLE_KEYS["issuing"][k.purpose]
    assert all(k.key.reveal().hex() not in (out + err).lower() for k in ISSUER)  # no raw key is printed (KCVs only)


def test_restrict_drops_the_card_issuers_key_unless_asked_and_refuses_it_to_other_roles(office, capsys):
    d, unlock = office
    # --role issuing without --enterprise: every enterprise's keys, none of the card issuer's (no PERSONALISE of
    # K_CARD leaks through an enterprise's rules).
    code, _, err = run(capsys, *restrict(d, "all-issuing.ks", "--role", "issuing"))
    assert code == 0, err
    assert {k.enterprise_id for k in load_keystore(d / "all-issuing.ks", unlock)} == {A, B}
    code, _, err = run(capsys, *restrict(d, "door.ks", "--role", "door", "--card-issuer"))
    assert code == 2 and err.count("\n") == 1 and "--card-issuer goes with --role issuing" in err, err
    assert not (d / "door.ks").exists()
    save_keystore(d / "b-only.ks", KS[B], unlock, scrypt_n=2**10)
    code, _, err = run(
        capsys,
        "sam",
        "restrict",
        "--keystore",
        d / "b-only.ks",
        "--passphrase-file",
        d / "pass",
        "--out",
        d / "x.ks",
        "--role",
        "issuing",
        "--card-issuer",
    )
    assert code == 2 and "holds no key of the card issuer" in err and not (d / "x.ks").exists(), err


def test_the_restricted_station_keystore_adds_a_sub_application_end_to_end(bench, capsys):  # noqa: F811
    d = bench
    unlock = KeystoreUnlock.from_passphrase_file(d / "pass")
    save_keystore(d / "all.ks", Keystore([*KS[A], *KS[B], *ISSUER]), unlock, scrypt_n=2**10)
    code, _, err = run(
        capsys, *restrict(d, "station.ks", "--role", "issuing", "--enterprise", B.hex(), "--card-issuer")
    )
    assert code == 0, err
    code, out, err = run(capsys, *add_application(d, "station.ks"))
    assert code == 0, err
    assert "of enterprise 00020002 added, issued to employee R-0707" in out
