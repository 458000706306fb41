"""Files the wheel carries for an installer without a checkout: the documented firmware.toml and the systemd units.

In a checkout these are links to firmware.toml and deploy/systemd/, the one copy of each.
"""
