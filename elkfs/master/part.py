"""What the parts of the master share: each part (one per connection kind, as MooseFS's
`matoclserv.c` / `matocsserv.c` / `matomlserv.c`, plus the chunk operations) holds the
`MasterServer` and reaches the shared tables through it."""

from __future__ import annotations


class MasterPart:
    def __init__(self, master):
        self.master = master

    @property
    def cfg(self):
        return self.master.cfg

    @property
    def store(self):
        return self.master.store

    @property
    def ns(self):
        return self.master.store.ns

    @property
    def registry(self):
        return self.master.registry

    @property
    def locks(self):
        return self.master.locks

    @property
    def planner(self):
        return self.master.planner

    def spawn(self, coro):
        return self.master.spawn(coro)
