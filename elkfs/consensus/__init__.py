"""ElkFS master high availability: pure, deterministic protocol state machines.

Theory of operation (the full argument is in ``docs/ha.md`` and the design brief HA.md):

* Chunkservers vote.  Each runs a :class:`~elkfs.consensus.voter.Voter` that persists
  ``(term, voted_for, record)`` and keeps a volatile lease promise ``(holder, until)``.  A
  vote grant *is* a lease (PaxosLease); renewals every D/2 are vote requests in the
  holder's term (Raft thesis 6.4 leases, 12c of HA-traces.md).
* Masters run :class:`~elkfs.consensus.master.Master`: FOLLOWER / CANDIDATE / LEADER, with
  pre-vote (Raft 9.6), leases counted from the send time of the acknowledged round
  (openraft), a re-stamped in-sync record ``R' = (term, epoch+1, ...)`` stored at a majority
  of voters before serving (Paxos' highest-ballot rule, Raft's no-op), PacificA/Kafka-ISR
  group commit (every member of the record, and of a pending grow, persisted the exact
  ``(term, version)``), Raft log matching, snapshots for far-behind followers and
  leadership hand-over (Raft 3.10).
* Exactly-once client operations live in :mod:`elkfs.consensus.sessions` (Raft 6.3).
* Chunk-version fencing lives in :mod:`elkfs.consensus.fencing`.

Nothing here imports asyncio, time, random, socket or os: inputs are ``(now, message)``,
outputs are :class:`~elkfs.consensus.effects.Output` batches that the shell executes in
order (persist, then send).
"""
