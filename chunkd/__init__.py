"""chunkd: host-paced chunked blob delivery into WebAssembly components."""

__version__ = "0.1.0"
