"""hostile: a guest that misbehaves on purpose. invoke(args): args[0] is the mode,
args[1:] its parameters (CONTAINER NAME for the modes that stream a blob).

  trap-invoke                 raise in invoke (a trap, not an Err)
  loop-invoke                 loop forever in invoke
  trap-chunk C N / loop-chunk C N / bomb-chunk C N
                              stream C/N in 4 KiB chunks; trap / loop / allocate without
                              bound in handle-chunk at chunk 1
  trap-ended C N / loop-ended C N
                              stream C/N; trap / loop in stream-ended
  many-starts C N COUNT       open C/N and call start-chunking-read COUNT times
                              (cid 0..COUNT-1, a fresh handle each time); prints the tally
  start-from-chunk C N        stream C/N; from its chunk 0 start another stream of it
  start-from-ended C N        stream C/N; from its stream-ended start another stream of it,
                              whose own end starts nothing more
  big-result MIB              return a string of MIB MiB
  stdout-flood LINES          print LINES lines, then one 1 MiB line without a newline
  bad-utf8                    write invalid UTF-8 to stdout and stderr
"""
import os
import sys

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import blobs

mode = ""
params: list = []
kept: list = []  # handles kept alive until the job's streams end
starts_from_end = 0


def start(container: str, name: str, chunk: int, cid: int) -> None:
    s = blobs.open(container, name)
    kept.append(s)
    s.start_chunking_read(chunk, cid)


class Trigger(exports.Trigger):
    def invoke(self, args):
        global mode, params, starts_from_end
        mode, params = args[0], args[1:]
        starts_from_end = 0
        if mode == "trap-invoke":
            raise RuntimeError("hostile trap in invoke")
        if mode == "loop-invoke":
            while True:
                pass
        if mode in ("trap-chunk", "loop-chunk", "bomb-chunk", "trap-ended", "loop-ended",
                    "start-from-chunk", "start-from-ended"):
            start(params[0], params[1], 4096, 1)
            return "streaming"
        if mode == "many-starts":
            tally: dict = {}
            for cid in range(int(params[2])):
                try:
                    s = blobs.open(params[0], params[1])
                    s.start_chunking_read(4096, cid)
                    kept.append(s)
                    key = "ok"
                except Err as e:
                    key = type(e.value).__name__.split("_")[-1]
                tally[key] = tally.get(key, 0) + 1
            print("tally " + " ".join(f"{k}={v}" for k, v in sorted(tally.items())), flush=True)
            return "started"
        if mode == "big-result":
            return "x" * (int(params[0]) * 1024 * 1024)
        if mode == "stdout-flood":
            for i in range(int(params[0])):
                print(f"flood line {i}")
            sys.stdout.write("y" * (1024 * 1024))
            sys.stdout.flush()
            return "flooded"
        if mode == "bad-utf8":
            os.write(1, b"bad \xff\xfe utf-8 \x80 on stdout\n")
            os.write(2, b"bad \xc3\x28 on stderr\n")
            return "wrote"
        raise Err(f"unknown mode {mode!r}")


class ChunkedStreamHandler(exports.ChunkedStreamHandler):
    def handle_chunk(self, stream, correlation_id, current_chunk, total_chunks, data):
        if current_chunk == 1 and mode == "trap-chunk":
            raise RuntimeError("hostile trap in handle-chunk")
        if current_chunk == 1 and mode == "loop-chunk":
            while True:
                pass
        if current_chunk == 1 and mode == "bomb-chunk":
            hog = []
            while True:
                hog.append(bytearray(1024 * 1024))
        if current_chunk == 0 and correlation_id == 1 and mode == "start-from-chunk":
            start(params[0], params[1], 8192, 2)
        return True


class ChunkedStreamEvents(exports.ChunkedStreamEvents):
    def stream_ended(self, correlation_id, end):
        global starts_from_end
        print(f"ended {correlation_id} {type(end).__name__.split('_')[-1].lower()}", flush=True)
        if mode == "trap-ended":
            raise RuntimeError("hostile trap in stream-ended")
        if mode == "loop-ended":
            while True:
                pass
        if mode == "start-from-ended" and starts_from_end == 0:
            starts_from_end += 1
            start(params[0], params[1], 8192, 7)
