"""The central platform: registry, ingest of terminal logs, purse accounting, card flows, signed downlinks, CA."""
