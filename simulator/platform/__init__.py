"""The reference central platform: ingest, accounts, signed blacklists and configuration (docs/sync-protocol.md)."""
