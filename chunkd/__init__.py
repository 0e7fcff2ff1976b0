"""chunkd: host-paced chunked blob delivery into WebAssembly components."""
import os as _os

# numpy (the component path's list fill) loads OpenBLAS, which starts a pool of worker
# threads that chunkd never uses (it does no linear algebra); one thread is enough.
# Set before anything imports numpy; an operator's own setting wins.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
