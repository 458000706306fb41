"""Reader back-ends implementing terminal.reader.Reader (PC/SC in pcsc.py); import the one you use."""
