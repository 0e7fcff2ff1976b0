"""probe: a scriptable test guest. invoke(args) runs a tiny command list.

Commands (one per arg, words split by spaces):
  open SLOT CONTAINER NAME      open a blob into a slot
  start SLOT CHUNK CID          start-chunking-read
  read SLOT N                   pull N bytes
  size SLOT                     print the size
  drop SLOT                     drop the handle
  stop CID N                    handle-chunk answers false at chunk N (0-based)
  trap CID N                    raise (trap) at chunk N
  loop CID N                    loop forever at chunk N
  bomb CID N                    allocate without bound at chunk N
  readin CID N                  call read on the borrowed stream at chunk N
  restart CID N                 call start-chunking-read again on it at chunk N
  nested CID N CONTAINER NAME CHUNK NEWCID   start another stream at chunk N
  trapend CID                   raise (trap) in stream-ended for CID
  create OSLOT CONTAINER NAME   create an output into a slot (issue 25)
  tee CID OSLOT                 write every chunk of CID to output OSLOT
  finishon CID OSLOT            finish OSLOT when CID ends completed (drop it otherwise)
  write OSLOT TEXT              write TEXT to OSLOT now
  finish OSLOT                  finish OSLOT now
  fail                          invoke returns an error (after earlier commands)
  loop-invoke                   loop forever inside invoke
Every observation is printed to stdout, one line each.
"""
import hashlib

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import chunked_stream_events
from wit_world.imports import blobs

slots: dict = {}
actions: dict = {}  # (cid, chunk) -> list of commands
trap_on_end: set = set()
digests: dict = {}
outputs: dict = {}  # output slot -> output-stream
tees: dict = {}  # cid -> output slot
finish_on: dict = {}  # cid -> output slot


def err_text(e) -> str:
    v = e.value
    name = type(v).__name__.split("_")[-1]
    payload = getattr(v, "value", None)
    return f"{name}" + (f" {payload}" if payload is not None else "")


def do_start(stream, chunk, cid):
    try:
        stream.start_chunking_read(chunk, cid)
        print(f"start {cid} ok", flush=True)
    except Err as e:
        print(f"start {cid} err {err_text(e)}", flush=True)


def out_write(slot, data):
    try:
        outputs[slot].write(data)
    except Err as e:
        print(f"write {slot} err {err_text(e)}", flush=True)


def out_finish(slot):
    try:
        outputs[slot].finish()
        print(f"finish {slot} ok", flush=True)
    except Err as e:
        print(f"finish {slot} err {err_text(e)}", flush=True)


class Trigger(exports.Trigger):
    def invoke(self, args):
        for cmd in args:
            w = cmd.split(" ")
            op = w[0]
            if op == "open":
                try:
                    slots[w[1]] = blobs.open(w[2], w[3])
                    print(f"open {w[1]} ok", flush=True)
                except Err as e:
                    print(f"open {w[1]} err {err_text(e)}", flush=True)
            elif op == "start":
                do_start(slots[w[1]], int(w[2]), int(w[3]))
            elif op == "read":
                try:
                    data = slots[w[1]].read(int(w[2]))
                    print(f"read {w[1]} {len(data)} {hashlib.sha256(data).hexdigest()[:16]}", flush=True)
                except Err as e:
                    print(f"read {w[1]} err {err_text(e)}", flush=True)
            elif op == "size":
                print(f"size {w[1]} {slots[w[1]].size()}", flush=True)
            elif op == "drop":
                slots.pop(w[1]).__exit__(None, None, None)
                print(f"drop {w[1]} ok", flush=True)
            elif op in ("stop", "trap", "loop", "bomb", "readin", "restart"):
                actions.setdefault((int(w[1]), int(w[2])), []).append([op])
            elif op == "nested":
                actions.setdefault((int(w[1]), int(w[2])), []).append(["nested"] + w[3:])
            elif op == "create":
                try:
                    outputs[w[1]] = blobs.create(w[2], w[3])
                    print(f"create {w[1]} ok", flush=True)
                except Err as e:
                    print(f"create {w[1]} err {err_text(e)}", flush=True)
            elif op == "tee":
                tees[int(w[1])] = w[2]
            elif op == "finishon":
                finish_on[int(w[1])] = w[2]
            elif op == "write":
                out_write(w[1], " ".join(w[2:]).encode())
            elif op == "finish":
                out_finish(w[1])
            elif op == "trapend":
                trap_on_end.add(int(w[1]))
            elif op == "fail":
                raise Err("asked to fail")
            elif op == "loop-invoke":
                while True:
                    pass
            else:
                raise Err(f"unknown command {cmd!r}")
        return "ok"


class ChunkedStreamHandler(exports.ChunkedStreamHandler):
    def handle_chunk(self, stream, correlation_id, current_chunk, total_chunks, data):
        digests.setdefault(correlation_id, hashlib.sha256()).update(data)
        print(f"chunk {correlation_id} {current_chunk} {total_chunks} {len(data)}", flush=True)
        if correlation_id in tees:
            out_write(tees[correlation_id], data)
        more = True
        for act in actions.get((correlation_id, current_chunk), []):
            op = act[0]
            if op == "stop":
                more = False
            elif op == "trap":
                raise RuntimeError("probe trap")
            elif op == "loop":
                while True:
                    pass
            elif op == "bomb":
                hog = []
                while True:
                    hog.append(bytearray(1024 * 1024))
            elif op == "readin":
                try:
                    stream.read(10)
                    print(f"readin {correlation_id} ok", flush=True)
                except Err as e:
                    print(f"readin {correlation_id} err {err_text(e)}", flush=True)
            elif op == "restart":
                do_start(stream, 16, 999)
            elif op == "nested":
                container, name, chunk, newcid = act[1], act[2], int(act[3]), int(act[4])
                s = blobs.open(container, name)
                do_start(s, chunk, newcid)
        return more


class ChunkedStreamEvents(exports.ChunkedStreamEvents):
    def stream_ended(self, correlation_id, end):
        if correlation_id in trap_on_end:
            raise RuntimeError("probe trap in stream-ended")
        slot = finish_on.pop(correlation_id, None)
        if slot is not None:
            if isinstance(end, chunked_stream_events.StreamEnd_Completed):
                out_finish(slot)
            else:
                outputs.pop(slot).__exit__(None, None, None)  # dropped unfinished: aborted
                print(f"dropped {slot}", flush=True)
        h = digests.pop(correlation_id, hashlib.sha256()).hexdigest()
        if isinstance(end, chunked_stream_events.StreamEnd_Failed):
            print(f"ended {correlation_id} failed {end.value}", flush=True)
        else:
            print(f"ended {correlation_id} {type(end).__name__.split('_')[-1].lower()} {h}", flush=True)
