"""The live event stream: read the ring buffer, decode, attribute, print.

Events are what was asked for (the filter runs in the kernel); losses are
counted in the kernel (ring buffer full) and here (undecodable records) and
always reported, never silently dropped.
"""

from __future__ import annotations

import ctypes
import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from tracer.host import docker_engine
from tracer.kernel import loader, wire
from tracer.stream import event_text, filters
from tracer.stream.attribution import Attributor

# Records taken per poll.  libbpf's poll consumes for as long as records
# keep coming: under a flood, decoding (fast) would outrun printing (slow)
# and pile up in memory (2.3 GB after 30 s here) instead of filling the ring
# buffer, where losses are counted.
MAX_BATCH = 4096


class EventReader:
    """Decoded events from a loaded Tracer's ring buffer."""

    def __init__(self, tracer: loader.Tracer, max_batch: int = MAX_BATCH) -> None:
        self._tracer = tracer
        self._pending: list[wire.Event] = []
        self._max_batch = max_batch
        self.decoded = 0
        self.decode_errors = 0
        tracer["events"].open_ring_buffer(self._on_record)

    def _on_record(self, _ctx, data, size) -> int:
        try:
            self._pending.append(wire.decode(ctypes.string_at(data, size)))
            self.decoded += 1
        except wire.DecodeError:
            self.decode_errors += 1
        # A negative return ends this poll; the record itself is consumed.
        return -1 if len(self._pending) >= self._max_batch else 0

    def poll(self, timeout_ms: int = 100) -> list[wire.Event]:
        self._tracer.bpf.ring_buffer_poll(timeout_ms)
        events, self._pending = self._pending, []
        return events

    def kernel_stats(self) -> dict[str, int]:
        values = self._tracer["stats"]
        return {
            "emitted": sum(values[ctypes.c_int(wire.STAT_EMITTED)]),
            "lost": sum(values[ctypes.c_int(wire.STAT_LOST)]),
        }


@dataclass
class StreamOptions:
    spec: filters.FilterSpec
    as_json: bool = False
    duration: float | None = None
    count: int | None = None
    ringbuf_pages: int = 256
    btf_path: str = loader.DEFAULT_BTF


def run(options: StreamOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """`cntrace events`.  Errors before the stream starts are CntraceErrors."""
    loader.check_privileges()
    kernel = loader.read_kernel(options.btf_path)
    client = docker_engine.docker_client()
    kernel_filter = filters.resolve(options.spec, docker_engine.discover(client))
    tracer = loader.load(kernel, ringbuf_pages=options.ringbuf_pages)
    reader = None
    # Ctrl-C and SIGTERM only set a flag: the loop stops between polls, never
    # inside a topology refresh (whose netns helper processes must be closed).
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        filters.install(kernel_filter, tracer)
        attributor = Attributor(
            lambda: docker_engine.discover(client), tracer.drop_reasons, tracer.symbolize
        )
        for hook in tracer.hooks:
            if not hook.attached:
                print(f"cntrace: {hook.name} not attached: {hook.detail}", file=err)
        reader = EventReader(tracer)
        mechanisms = ", ".join(sorted({h.mechanism for h in tracer.attached}))
        print(f"cntrace: tracing on {len(tracer.attached)}/{len(tracer.hooks)} hooks "
              f"({mechanisms}); Ctrl-C stops", file=err, flush=True)
        _stream(reader, attributor, options, out, err, stop)
    except BrokenPipeError:
        sys.stdout = None  # the reader went away: nothing left to print to
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if reader is not None:
            stats = reader.kernel_stats()
            print(
                f"cntrace: {reader.decoded} events, {stats['lost']} lost in the kernel "
                f"(ring buffer full), {reader.decode_errors} undecodable",
                file=err,
            )
        tracer.close()
    return 0


def _stream(
    reader: EventReader,
    attributor: Attributor,
    options: StreamOptions,
    out: TextIO,
    err: TextIO,
    stop: threading.Event,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    deadline = clock() + options.duration if options.duration else None
    t0_ns = None
    printed = 0
    lost_reported = 0
    if not options.as_json:
        print(event_text.HEADER, file=out, flush=True)
    while not stop.is_set() and (deadline is None or clock() < deadline):
        for event in reader.poll(100):
            item = attributor.attribute(event)
            if options.as_json:
                print(json.dumps(event_text.to_dict(item)), file=out)
            else:
                t0_ns = t0_ns or event.ts_ns
                print(event_text.format_text(item, t0_ns), file=out)
            printed += 1
            if options.count and printed >= options.count:
                out.flush()
                return
        out.flush()
        lost = reader.kernel_stats()["lost"]
        if lost > lost_reported:
            print(f"cntrace: {lost - lost_reported} events lost (ring buffer full)", file=err)
            lost_reported = lost
