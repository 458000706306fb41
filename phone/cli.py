"""`onecard phone menu | balance`: a handset simulator that drives the RFID-SIM's toolkit menu over its contact
interface through PC/SC, as a real SIM in a contact reader would be driven (docs/phone-menu.md)."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Callable, Iterator, TextIO

from common import stk
from common.errors import EXIT_REFUSED, UserError
from phone.handset import Handset, HandsetError, SendSms, validate_input

CARD_WAIT_SECONDS = 10.0
HELP = "↑/↓ or a number, Enter: choose · ←, Backspace or 0: back · q: quit"


class Quit(Exception):
    """The holder pressed q."""


# --- keys -----------------------------------------------------------------------------------------------------------

UP, DOWN, ENTER, BACK, QUIT = "up", "down", "enter", "back", "quit"


class Keys:
    """Keys from a terminal in cbreak mode (arrows, digits, Enter, Backspace), or lines from a pipe: a number, an
    empty line for Enter, b / 0 for back, q, and u / d for the arrows."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        try:
            self.fd: int | None = stream.fileno() if stream.isatty() else None
        except (AttributeError, OSError, ValueError):
            self.fd = None
        self._line: list[str] = []

    @contextlib.contextmanager
    def raw(self) -> Iterator[None]:
        if self.fd is None:
            yield
            return
        import termios
        import tty

        saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)
        try:
            yield
        finally:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, saved)

    def _char(self) -> str:
        assert self.fd is not None
        b = os.read(self.fd, 1)
        if not b:
            raise Quit()
        return b.decode("latin-1")

    def key(self) -> str:
        if self.fd is None:
            line = self.stream.readline()
            if not line:
                raise Quit()
            word = line.strip().lower()
            return {"": ENTER, "b": BACK, "0": BACK, "q": QUIT, "u": UP, "d": DOWN}.get(word, word)
        c = self._char()
        if c == "\x1b":
            if self._char() == "[":
                return {"A": UP, "B": DOWN, "C": ENTER, "D": BACK}.get(self._char(), "")
            return BACK
        if c in ("\r", "\n"):
            return ENTER
        if c in ("\x7f", "\x08", "0"):
            return BACK
        if c in ("q", "Q", "\x03", "\x04"):
            return QUIT
        return c

    def text(self, out: TextIO, hidden: bool) -> str | None:
        """A line typed by the holder (None: back), echoed as * when hidden."""
        if self.fd is None:
            line = self.stream.readline()
            if not line:
                raise Quit()
            return None if line.strip().lower() == "b" else line.rstrip("\r\n")
        typed = ""
        while True:
            c = self._char()
            if c in ("\r", "\n"):
                out.write("\n")
                return typed
            if c == "\x1b":
                return None
            if c in ("\x7f", "\x08"):
                if not typed:
                    return None
                typed = typed[:-1]
                out.write("\b \b")
            elif c in ("\x03", "\x04"):
                raise Quit()
            elif c.isprintable():
                typed += c
                out.write("*" if hidden else c)
            out.flush()


# --- the screen -----------------------------------------------------------------------------------------------------


class ConsoleScreen:
    """The handset's display and keypad on a terminal."""

    def __init__(self, keys: Keys, out: TextIO):
        self.keys, self.out = keys, out

    def _show(self, lines: list[str]) -> None:
        if self.keys.fd is not None:
            self.out.write("\x1b[H\x1b[2J")
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()

    def select_item(self, title: str, items: tuple[stk.Item, ...]) -> int | None:
        at = 0
        while True:
            lines = [f"== {title} =="]
            lines += [f"{'>' if n == at else ' '} {n + 1}. {item.text}" for n, item in enumerate(items)]
            self._show(lines + [HELP])
            key = self.keys.key()
            if key == QUIT:
                raise Quit()
            if key == BACK:
                return None
            if key == UP:
                at = (at - 1) % len(items)
            elif key == DOWN:
                at = (at + 1) % len(items)
            elif key == ENTER:
                return items[at].id
            elif key.isdigit() and 1 <= int(key) <= len(items):
                return items[int(key) - 1].id

    def display_text(self, text: str) -> bool:
        self._show(["-" * 40, *text.splitlines(), "-" * 40, "Enter: OK · ←/0: back · q: quit"])
        while True:
            key = self.keys.key()
            if key == QUIT:
                raise Quit()
            if key in (ENTER, BACK):
                return key == ENTER

    def get_input(self, prompt: str, command: stk.GetInput) -> str | None:
        problem = ""
        while True:
            self._show([prompt, *([problem] if problem else []), "(Enter: OK · Esc or Backspace on empty: back)"])
            self.out.write("> ")
            self.out.flush()
            typed = self.keys.text(self.out, command.hidden)
            if typed is None:
                return None
            problem = validate_input(typed, command) or ""
            if not problem:
                return typed

    def sending(self, alpha: str) -> None:
        self._show([f"{alpha} ..."])


class BalanceScript:
    """`phone balance`: for one sub-application, choose "Balance", read what the SIM displays, go back."""

    def __init__(self) -> None:
        self.shown: list[str] = []
        self._asked = False

    def select_item(self, title: str, items: tuple[stk.Item, ...]) -> int | None:
        if self._asked:
            return None
        self._asked = True
        return next((i.id for i in items if i.text == "Balance"), None)

    def display_text(self, text: str) -> bool:
        self.shown.append(text)
        return True

    def get_input(self, prompt: str, command: stk.GetInput) -> str | None:
        return None

    def sending(self, alpha: str) -> None:
        pass


# --- commands -------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _sim(args) -> Iterator[object]:
    """A connection to the SIM: the simulated one through a private pcscd + vpcd (`--card`), or a real one in the
    contact reader `--reader`."""
    from terminal.reader import ReaderError
    from terminal.readers.pcsc import PcscReader

    with contextlib.ExitStack() as stack:
        name = args.reader
        if args.card is not None:
            name = stack.enter_context(args.wiring.simulated_sim_in_contact_reader(args.card))
        try:
            reader = PcscReader(name)
        except ReaderError as exc:
            raise UserError(str(exc)) from None
        stack.callback(reader.close)
        conn = reader.wait_for_card(CARD_WAIT_SECONDS)
        if conn is None:
            raise UserError(f"no SIM in reader {reader.name} after {CARD_WAIT_SECONDS:.0f} s; insert it and retry")
        stack.callback(conn.close)
        yield conn


def _no_network(destination: str, data: bytes) -> str | None:
    return "no network: give --platform-db, --platform-key and --tac-keystore to reach the platform"


def _send_sms(args) -> SendSms:
    if args.platform_db is None:
        return _no_network
    link: SendSms = args.wiring.platform_sms_link(
        args.platform_db, args.platform_key, args.tac_keystore, args.passphrase_file, sys.stderr
    )
    return link


def _start(handset: Handset) -> stk.SetUpMenu:
    try:
        menu = handset.start()
    except HandsetError as exc:
        raise UserError(f"the SIM does not work as a toolkit SIM: {exc}", EXIT_REFUSED) from None
    if menu is None:
        raise UserError("the SIM offers no phone menu (no one-card application issued on it)", EXIT_REFUSED)
    return menu


def cmd_menu(args) -> int:
    keys = Keys(sys.stdin)
    screen = ConsoleScreen(keys, sys.stdout)
    with _sim(args) as conn, keys.raw():
        handset = Handset(conn, screen, _send_sms(args))
        menu = _start(handset)
        try:
            while True:
                menu = handset.menu or menu  # the SIM may have replaced it (SET UP MENU during a session)
                chosen = screen.select_item(menu.title, menu.items)
                if chosen is None:
                    return 0
                handset.choose(chosen)
        except Quit:
            return 0
        except HandsetError as exc:
            raise UserError(f"the SIM stopped the menu: {exc}", EXIT_REFUSED) from None


def cmd_balance(args) -> int:
    with _sim(args) as conn:
        script = BalanceScript()
        handset = Handset(conn, script, _no_network)
        menu = _start(handset)
        for item in menu.items:
            script.shown.clear()
            script._asked = False
            try:
                handset.choose(item.id)
            except HandsetError as exc:
                raise UserError(f"the SIM stopped the menu: {exc}", EXIT_REFUSED) from None
            shown = "; ".join(line for text in script.shown for line in text.splitlines()[1:])
            print(f"{item.text}: {shown or 'no balance shown'}")
    return 0


def _new_password(args) -> str:
    """The holder's new service password: the first line of --password-file, or typed twice without echo. Never
    on the command line, where `ps` and the shell history would show it."""
    import getpass

    if args.password_file is not None:
        try:
            with open(args.password_file, encoding="utf-8") as f:
                password = f.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(
                f"cannot read --password-file {args.password_file}: {exc}; give a file of one line"
            ) from None
    elif sys.stdin.isatty():
        password = getpass.getpass("new service password (4-8 digits): ")
        if getpass.getpass("again: ") != password:
            raise UserError("the two passwords differ; nothing was written to the SIM, run the command again")
    else:
        raise UserError("no terminal to type the password on: give --password-file F (one line, mode 600)")
    if not (password.isascii() and password.isdigit() and 4 <= len(password) <= 8):
        raise UserError("a service password is 4 to 8 digits; nothing was written to the SIM")
    return password


def cmd_set_password(args) -> int:
    """Card office: set, change or unblock the SIM's one-card service password (the same card command: a new
    password, its try counter back at 3), under this enterprise's K_UPDATE through the station's SAM."""
    from phone.office import OfficeError, set_service_password
    from sam.interface import SamError
    from sam.keystore import KeystoreError, parse_enterprise_id
    from sam.software import SoftwareSam
    from sam.unlock_cli import unlock_from_args

    try:
        enterprise = parse_enterprise_id(args.enterprise)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    password = _new_password(args)
    try:
        sam = SoftwareSam.open(args.keystore, unlock_from_args(args))
    except (SamError, KeystoreError) as exc:
        raise UserError(str(exc)) from None
    with _sim(args) as conn:
        try:
            sub = set_service_password(conn, sam, enterprise, password)
        except (OfficeError, SamError) as exc:
            raise UserError(f"service password not set: {exc}", EXIT_REFUSED) from None
    print(
        f"service password set through {sub.name} (ASN {sub.card.asn_hex}); 3 tries; "
        "the holder needs it to delete an application"
    )
    return 0


def _add_sim_options(c) -> None:
    where = c.add_mutually_exclusive_group(required=True)
    where.add_argument("--card", type=Path, help="a simulated RFID-SIM file (put in a private pcscd + vpcd reader)")
    where.add_argument("--reader", help="a PC/SC contact reader holding a real SIM (part of its name)")


def add_subcommands(sub) -> None:
    c = sub.add_parser("menu", help="the SIM toolkit menu of a phone: balance, transactions, status, delete")
    _add_sim_options(c)
    c.add_argument("--platform-db", type=Path, help="the platform's database, to deliver deletion requests (lab)")
    c.add_argument("--platform-key", type=Path, help="the platform's signing key (with --platform-db)")
    c.add_argument("--tac-keystore", type=Path, help="the platform's TAC keystore (with --platform-db)")
    c.add_argument("--passphrase-file", type=Path, help="passphrase of --tac-keystore")
    c.set_defaults(handler=_checked(cmd_menu))
    c = sub.add_parser("balance", help="print each sub-application's balance as the SIM shows it (for scripts)")
    _add_sim_options(c)
    c.set_defaults(handler=cmd_balance)
    from sam.unlock_cli import add_unlock_options

    c = sub.add_parser(
        "set-password",
        aliases=["change-password", "unblock-password"],
        allow_abbrev=False,  # `--password 1234` must not pass for --password-file (and be echoed in an error)
        help="card office: set, change or unblock the one-card service password (enciphered under the station's keys)",
    )
    _add_sim_options(c)
    c.add_argument("--keystore", required=True, type=Path, help="the issuing station's keystore (UPDATE with mac)")
    add_unlock_options(c, what="the station's keystore")
    c.add_argument("--enterprise", required=True, help="8-digit enterprise ID of this card office")
    c.add_argument("--password-file", type=Path, help="the new password, one line (default: typed twice, not shown)")
    c.set_defaults(handler=cmd_set_password)


def _checked(handler: Callable[..., int]) -> Callable[..., int]:
    def run(args) -> int:
        given = [args.platform_key, args.tac_keystore, args.passphrase_file]
        if args.platform_db is None and any(g is not None for g in given):
            raise UserError("--platform-key, --tac-keystore and --passphrase-file go with --platform-db")
        if args.platform_db is not None and any(g is None for g in given):
            raise UserError("--platform-db needs --platform-key, --tac-keystore and --passphrase-file")
        return handler(args)

    return run
