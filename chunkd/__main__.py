from chunkd.cli import entry

entry()
