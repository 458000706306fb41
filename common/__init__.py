"""What every part of onecard shares: errors, structured logs, atomic files, money, the event hash and sync messages."""
