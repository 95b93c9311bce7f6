"""The control plane's end (Control.close): no message outlives the run, even when MPI lets a
rank's DONE arrive before the PROGRESS and STOP it sent earlier (MPI orders the messages of one
tag between two ranks, not across tags; MPICH happens to keep them in order).

A fake mailbox for two ranks in one event loop holds messages of some tags "in transit":
invisible to ``poll`` (Iprobe), delivered to a ``receive`` that waits for them."""
from __future__ import annotations

import asyncio

from mpiswarm.control import TAG_PROGRESS, TAG_STOP, Control


class Wire:
    def __init__(self, held_tags=()):
        self.queues = {0: [], 1: []}  # dest -> [(source, tag, payload)]
        self.held_tags = set(held_tags)
        self.flags = None
        self.flags_sent = asyncio.Event()


class FakeMailbox:
    def __init__(self, wire: Wire, rank: int, on_send=lambda tag: None):
        self.wire, self.rank, self.on_send = wire, rank, on_send

    def send(self, dest, tag, payload=b""):
        self.wire.queues[dest].append((self.rank, tag, bytes(payload)))
        self.on_send(tag)

    def _take(self, tag, source, visible_only):
        for i, (src, t, payload) in enumerate(self.wire.queues[self.rank]):
            if t == tag and source in (None, src) and not (visible_only and t in self.wire.held_tags):
                del self.wire.queues[self.rank][i]
                return src, payload
        return None

    def poll(self, tag, source=None):
        return self._take(tag, source, visible_only=True)

    def receive(self, source, tag):
        got = self._take(tag, source, visible_only=False)
        assert got is not None, f"rank {self.rank} waits for tag {tag} from {source}, never sent: a hang"
        return got[1]

    def flush(self):
        pass

    async def bcast(self, flags):
        if self.rank == 0:
            self.wire.flags = flags.copy()
            self.wire.flags_sent.set()
        else:
            await self.wire.flags_sent.wait()
            flags[:] = self.wire.flags


async def finish_two_ranks(held_tags, stop_on_rank_1: bool):
    wire = Wire(held_tags)
    loop = asyncio.get_running_loop()
    until = loop.create_future()
    progress_sent = 0

    def after_send(tag):  # rank 1's work ends after its third PROGRESS
        nonlocal progress_sent
        progress_sent += tag == TAG_PROGRESS
        if progress_sent == 3 and not until.done():
            until.set_result(None)

    root = Control(FakeMailbox(wire, 0), 0, 2, n=10)
    worker = Control(FakeMailbox(wire, 1, after_send), 1, 2, n=10)
    stop = asyncio.Event()
    if stop_on_rank_1:
        stop.set()
    await worker.report(lambda: (7, 6, 0.5), until, stop, reason=lambda: "SIGTERM received")
    root._collect()  # the DONE is seen, what was sent before it may still be in transit
    root._stop_received()
    assert root.done[1] and root.counts[1].tolist() == [7, 6]
    await asyncio.gather(root.close(), worker.close())
    return wire


def test_progress_still_in_transit_when_the_done_arrives_is_received_before_the_end():
    wire = asyncio.run(finish_two_ranks({TAG_PROGRESS}, stop_on_rank_1=False))
    assert wire.queues == {0: [], 1: []}  # nothing left for MPI_Finalize to fail on


def test_a_stop_still_in_transit_when_the_done_arrives_is_received_before_the_end():
    wire = asyncio.run(finish_two_ranks({TAG_PROGRESS, TAG_STOP}, stop_on_rank_1=True))
    assert wire.queues == {0: [], 1: []}


def test_in_order_delivery_needs_no_waiting():
    wire = asyncio.run(finish_two_ranks(set(), stop_on_rank_1=True))
    assert wire.queues == {0: [], 1: []}
