"""The holder's phone: a handset driving the RFID-SIM's toolkit menu over its contact interface (docs/phone-menu.md)."""
