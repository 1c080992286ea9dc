"""Invariant checks of HA.md, evaluated by the simulator after every step, in real time.

The oracle sees what no node can: real time, every clock, every disk.  Each check is
named after the invariant it guards; the first violation stops the run.

* ``one-leader``: serving intervals of different masters never overlap in real time.  A
  master's interval runs from the step at which it serves (LEADER, record re-stamped,
  lease valid) to the real instant its clock reaches ``lease_until`` (or a crash /
  release).  A paused master with a valid lease still counts: it may wake and answer.
* ``reply-while-not-serving``: an ``ok`` reply leaves only from a master inside its
  interval (deposed leaders change nothing, reads included).
* ``read-misses-ack``: a read must reflect every write acknowledged before it arrived.
* ``apply-consistency``: every master applies the same entry at a version.
* ``lost-ack`` / ``stale-leader``: a master that starts serving holds every acknowledged
  change.
* ``exactly-once``: an operation executes at one version only, and every reply to it
  carries the same result.
* ``fencing``: a chunkserver accepts only versions produced by committed bumps, and a
  version is never produced twice.
* ``term-fencing`` (invariant 4): a master identity that accepted term ``T`` never again
  acts on (acknowledges or journals) an append or snapshot of a lower term, and a
  chunkserver that accepted a command of term ``T`` never accepts one of a lower term.
* ``liveness`` / ``convergence``: checked by the world at the end of the healed phase.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import msgspec


class Violation(Exception):
    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"[{invariant}] {detail}")
        self.invariant = invariant
        self.detail = detail


@dataclass
class Interval:
    master: str
    ident: str
    term: int
    start: float
    end: float
    closed: bool = False


@dataclass
class Oracle:
    intervals: list[Interval] = field(default_factory=list)
    open: dict[str, Interval] = field(default_factory=dict)
    history: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    executed: dict[tuple[str, int], int] = field(default_factory=dict)
    results: dict[tuple[str, int], bytes] = field(default_factory=dict)
    acked: dict[int, int] = field(default_factory=dict)          # version -> term
    ack_times: list[float] = field(default_factory=list)
    ack_maxver: list[int] = field(default_factory=list)
    bumps: dict[tuple[int, int], int] = field(default_factory=dict)  # chunk version -> entry
    leaders_by_term: dict[int, str] = field(default_factory=dict)
    serving_log: list[tuple[float, str, int]] = field(default_factory=list)
    accepted_by_ident: dict[str, int] = field(default_factory=dict)
    # False when clocks may break their bound (--unfair clock/freeze): the real-time
    # checks of invariant 1 are then off, every other invariant stays
    clocks_bounded: bool = True
    chunk_terms: dict[str, int] = field(default_factory=dict)

    # ------------------------------------------------------------ invariant 1 ------------
    def master_state(self, name: str, m, clock, t: float) -> None:
        """Called after every step of master ``name`` (``m`` may be None: crashed)."""
        cur = self.open.get(name)
        if m is not None and m.role == "LEADER":
            prev = self.leaders_by_term.setdefault(m.accepted_term, m.ident)
            if prev != m.ident:
                raise Violation("one-leader",
                                f"term {m.accepted_term} has leaders {prev} and {m.ident}")
        serving = m is not None and m.serving(clock.local(t))
        if cur is not None and (not serving or cur.ident != m.ident
                                or cur.term != m.accepted_term):
            cur.end = min(cur.end, t)
            cur.closed = True
            del self.open[name]
            cur = None
        if not serving:
            return
        end = clock.to_real(m.lease_until)
        if cur is None:
            self._new_leader_checks(name, m, t)
            cur = Interval(name, m.ident, m.accepted_term, t, end)
            self.open[name] = cur
            self.intervals.append(cur)
            self.serving_log.append((t, m.ident, m.accepted_term))
        else:
            cur.end = max(cur.end, end)
        for iv in self.intervals if self.clocks_bounded else ():
            if iv.master != name and iv.start < cur.end and cur.start < iv.end:
                raise Violation("one-leader",
                                f"{cur.ident} (term {cur.term}) serves [{cur.start:.4f}, "
                                f"{cur.end:.4f}) while {iv.ident} (term {iv.term}) serves "
                                f"[{iv.start:.4f}, {iv.end:.4f})")
        if len(self.intervals) > 64:
            horizon = t - 60.0
            self.intervals = [iv for iv in self.intervals if iv.end > horizon or not iv.closed]

    def crashed(self, name: str, t: float) -> None:
        cur = self.open.pop(name, None)
        if cur is not None:
            cur.end = min(cur.end, t)
            cur.closed = True

    def serving_at(self, name: str, t: float) -> bool:
        cur = self.open.get(name)
        return cur is not None and cur.start <= t < cur.end

    # ------------------------------------------------------------ invariants 2, 3 --------
    def _new_leader_checks(self, name: str, m, t: float) -> None:
        if not self.acked:
            return
        top = max(self.acked)
        if m.log.last_version < top:
            raise Violation("stale-leader", f"{m.ident} serves at {m.last()} but version "
                                            f"{top} was acknowledged")
        for v, term in self.acked.items():
            have = m.log.term_at(v)
            if have is not None and have != term:
                raise Violation("lost-ack", f"{m.ident} holds ({have},{v}) but ({term},{v}) "
                                            f"was acknowledged")
        if m.applied < top:
            raise Violation("stale-leader", f"{m.ident} serves with applied={m.applied} < "
                                            f"acknowledged {top}")

    def applied(self, name: str, a) -> None:
        h = self.history.get(a.version)
        mine = (a.term, a.payload)
        if h is None:
            self.history[a.version] = mine
        elif h != mine:
            raise Violation("apply-consistency",
                            f"{name} applied (t{a.term},v{a.version}) but another master "
                            f"applied (t{h[0]},v{a.version}) there")
        if a.executed and a.session is not None and a.seq > 0:
            key = (a.session, a.seq)
            first = self.executed.setdefault(key, a.version)
            if first != a.version:
                raise Violation("exactly-once", f"op {key} executed at versions {first} and "
                                                f"{a.version}")
            body = _decode_body(a.payload)
            if body and body[0] == "bump":
                ver = tuple(msgspec.msgpack.decode(a.result))
                prev = self.bumps.setdefault(ver, a.version)
                if prev != a.version:
                    raise Violation("fencing", f"chunk version {ver} produced twice "
                                               f"(versions {prev}, {a.version})")

    # ------------------------------------------------------------ replies ---------------
    def reply(self, name: str, t: float, reply, arrived: float | None, is_read: bool) -> None:
        if reply.status != "ok":
            return
        if not self.clocks_bounded:
            pass
        elif not self.serving_at(name, t):
            raise Violation("reply-while-not-serving",
                            f"{name} sent ok reply {reply.session[:6]}/{reply.seq} at {t:.4f} "
                            f"outside its serving interval")
        if is_read:
            if not self.clocks_bounded:
                return
            i = bisect.bisect_left(self.ack_times, arrived if arrived is not None else t)
            need = self.ack_maxver[i - 1] if i > 0 else 0
            if reply.version < need:
                raise Violation("read-misses-ack",
                                f"{name} answered a read arrived at {arrived:.4f} from version "
                                f"{reply.version}, but version {need} was acknowledged before")
            return
        if reply.seq == 0:
            return
        key = (reply.session, reply.seq)
        prev = self.results.setdefault(key, reply.result)
        if prev != reply.result:
            raise Violation("exactly-once", f"op {key} answered {prev!r} then {reply.result!r}")
        h = self.history.get(reply.version)
        if h is None:
            raise Violation("lost-ack", f"ack of {key} at version {reply.version} not applied")
        self.acked[reply.version] = h[0]
        top = max(self.ack_maxver[-1] if self.ack_maxver else 0, reply.version)
        self.ack_times.append(t)
        self.ack_maxver.append(top)

    # ------------------------------------------------------------ invariant 4 ------------
    def master_term(self, ident: str, accepted_term: int) -> None:
        """After every step: the highest term this identity has accepted so far."""
        if accepted_term > self.accepted_by_ident.get(ident, 0):
            self.accepted_by_ident[ident] = accepted_term

    def master_acted_on(self, ident: str, term: int, what: str) -> None:
        """Called *before* recording the step's own term: ``ident`` acknowledged or
        journaled a leader's message of ``term``."""
        top = self.accepted_by_ident.get(ident, 0)
        if term < top:
            raise Violation("term-fencing", f"{ident} acted on {what} of term {term} after "
                                            f"accepting term {top}")

    def chunk_accepted(self, node: str, version: tuple[int, int], term: int = 0) -> None:
        top = self.chunk_terms.get(node, 0)
        if term < top:
            raise Violation("term-fencing", f"chunkserver {node} accepted a command of term "
                                            f"{term} after one of term {top}")
        self.chunk_terms[node] = max(top, term)
        if tuple(version) not in self.bumps:
            raise Violation("fencing", f"{node} accepted chunk version {version} that no "
                                       f"committed change produced")


def _decode_body(payload: bytes):
    from elkfs.consensus.sessions import Command, decode_payload
    p = decode_payload(payload)
    if isinstance(p, Command):
        return msgspec.msgpack.decode(p.body)
    return None
