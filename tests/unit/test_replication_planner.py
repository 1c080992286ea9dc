"""The replication planner on its own: no sockets, time passed in."""

from elkfs.master.chunkservers import ChunkRegistry
from elkfs.master.nodes import ChunkTable
from elkfs.master.replication import Delete, Forget, Limits, Planner, Replicate

GIB = 1 << 30


def cs(n: int) -> bytes:
    return bytes([n]) * 16


def registry(servers: int = 4, free=None) -> ChunkRegistry:
    reg = ChunkRegistry()
    for i in range(1, servers + 1):
        total = 100 * GIB
        used = total - (free or {}).get(i, 50 * GIB)
        reg.register(cs(i), (f"10.0.0.{i}", 9422), [], total, used, object())
    return reg


def chunks(*specs):
    """specs: (chunk_id, version)"""
    table = ChunkTable()
    for cid, v in specs:
        table.add(cid, v)
    return table


def planner(**kw) -> Planner:
    return Planner(Limits(**{"delay_init": 0, "delay_disconnect": 10, **kw}), 0.0)


def test_undergoal_chunk_gets_a_copy_on_a_server_without_one():
    reg = registry(free={3: 90 * GIB})
    reg.set_copy(1, cs(1), 5)
    p = planner()
    [action] = p.plan(1.0, chunks((1, 5)), {1: 2}, reg)
    assert action == Replicate(1, 5, cs(3), (cs(1),))  # most free space
    assert p.stats.endangered == 1 and p.stats.undergoal == 1
    assert p.plan(2.0, chunks((1, 5)), {1: 2}, reg) == []  # in flight: not again
    p.finished(action, True)
    reg.set_copy(1, cs(3), 5)
    assert p.plan(3.0, chunks((1, 5)), {1: 2}, reg) == []
    assert p.stats.undergoal == 0 and p.replicated == 1


def test_goal_three_from_one_copy_schedules_two_targets():
    reg = registry()
    reg.set_copy(1, cs(2), 1)
    actions = planner().plan(1.0, chunks((1, 1)), {1: 3}, reg)
    assert sorted(a.target for a in actions) == [cs(1), cs(3)] or len(
        {a.target for a in actions}) == 2
    assert all(isinstance(a, Replicate) and a.target != cs(2) for a in actions)


def test_stale_and_damaged_copies_deleted_extra_copies_trimmed():
    reg = registry(free={1: 10 * GIB, 2: 20 * GIB, 3: 30 * GIB, 4: 40 * GIB})
    for i in (1, 2, 3, 4):
        reg.set_copy(1, cs(i), 7)  # goal 2, four copies: trim the two fullest
    reg.set_copy(2, cs(1), 3)
    reg.set_copy(2, cs(2), 2)  # stale
    reg.set_copy(2, cs(3), 3)
    reg.mark_damaged(2, cs(3))
    reg.set_copy(2, cs(4), 3)
    p = planner()
    actions = p.plan(1.0, chunks((1, 7), (2, 3)), {1: 2, 2: 2}, reg)
    assert set(actions) == {Delete(1, 7, cs(1), "overgoal"), Delete(1, 7, cs(2), "overgoal"),
                            Delete(2, 2, cs(2), "stale"), Delete(2, 3, cs(3), "damaged")}
    assert p.stats.stale_copies == 1 and p.stats.damaged_copies == 1
    assert p.stats.overgoal == 1


def test_no_readable_copy_is_missing_and_bad_copies_are_kept():
    reg = registry()
    reg.set_copy(1, cs(1), 1)  # stale, the only one
    p = planner()
    assert p.plan(1.0, chunks((1, 2)), {1: 2}, reg) == []
    assert p.stats.missing == 1 and p.stats.undergoal == 0


def test_disconnected_server_is_waited_for_then_forgotten():
    reg = registry()
    reg.set_copy(1, cs(1), 1)
    reg.set_copy(1, cs(2), 1)
    reg.disconnect(cs(2), 100.0)
    p = planner(delay_disconnect=10)
    assert p.plan(105.0, chunks((1, 1)), {1: 2}, reg) == []  # waiting: no storm
    assert p.stats.endangered == 1
    actions = p.plan(111.0, chunks((1, 1)), {1: 2}, reg)
    assert actions[0] == Forget(cs(2), 1)
    assert isinstance(actions[1], Replicate) and actions[1].target in (cs(3), cs(4))
    # A stale copy on the absent server does not count as waiting.
    reg2 = registry()
    reg2.set_copy(1, cs(1), 2)
    reg2.set_copy(1, cs(2), 1)
    reg2.disconnect(cs(2), 100.0)
    [action] = planner().plan(101.0, chunks((1, 2)), {1: 2}, reg2)
    assert isinstance(action, Replicate)


def test_returning_server_makes_extra_copies_deleted():
    reg = registry()
    for i in (1, 2, 3):
        reg.set_copy(1, cs(i), 1)
    actions = planner().plan(1.0, chunks((1, 1)), {1: 2}, reg)
    assert len(actions) == 1 and isinstance(actions[0], Delete)


def test_limits_priorities_and_init_delay():
    reg = registry(servers=3)
    specs = []
    for cid in range(1, 21):
        reg.set_copy(cid, cs(1), 1)
        if cid % 2:  # odd chunks have two copies of goal 3, even ones one of goal 2
            reg.set_copy(cid, cs(2), 1)
        specs.append((cid, 1))
    goals = {cid: 3 if cid % 2 else 2 for cid in range(1, 21)}
    assert Planner(Limits(delay_init=60), 0.0).plan(30.0, chunks(*specs), goals, reg) == []
    p = planner(write_rep=2, read_rep=3)
    actions = p.plan(1.0, chunks(*specs), goals, reg)
    assert all(isinstance(a, Replicate) for a in actions)
    per_target = {}
    for a in actions:
        per_target[a.target] = per_target.get(a.target, 0) + 1
    assert max(per_target.values()) <= 2
    # One-copy chunks go first.
    assert all(a.chunk_id % 2 == 0 for a in actions[:2])
    assert p.reading[cs(1)] + p.reading[cs(2)] == len(actions) <= 6


def test_marked_copies_are_copied_away_then_the_disk_is_ready():
    reg = registry(servers=3)
    reg.set_copy(1, cs(1), 1)
    reg.set_copy(1, cs(2), 1)
    reg.set_marked(cs(1), [1])
    assert reg.servers[cs(1)].marked_copies == 1
    p = planner()
    [action] = p.plan(1.0, chunks((1, 1)), {1: 2}, reg)
    assert action.target == cs(3) and p.stats.marked_needed[cs(1)] == 1
    p.finished(action, True)
    reg.set_copy(1, cs(3), 1)
    assert p.plan(2.0, chunks((1, 1)), {1: 2}, reg) == []  # marked copy kept, not needed
    assert p.stats.marked_needed[cs(1)] == 0 and p.stats.overgoal == 0


def test_removal_is_not_ready_until_a_pass_has_counted_the_marks():
    # A chunkserver that comes back registers its copies (as good) before it reports
    # which are marked: the last pass's stats must not call its removal ready.
    reg = registry(servers=3)
    reg.set_copy(1, cs(1), 1)
    reg.set_copy(1, cs(2), 1)
    p = planner()
    assert p.plan(1.0, chunks((1, 1)), {1: 2}, reg) == []
    server = reg.servers[cs(1)]
    assert p.removal_state(server, reg) == ""
    reg.set_marked(cs(1), [1])
    assert p.stats.marked_needed[cs(1)] == 0  # stale: counted before the mark
    assert p.removal_state(server, reg) == "counting"
    [action] = p.plan(2.0, chunks((1, 1)), {1: 2}, reg)
    assert p.removal_state(server, reg) == "in progress"
    p.finished(action, True)
    reg.set_copy(1, cs(3), 1)
    p.plan(3.0, chunks((1, 1)), {1: 2}, reg)
    assert p.removal_state(server, reg) == "ready"


def test_busy_chunks_and_orphans():
    reg = registry()
    reg.set_copy(1, cs(1), 1)
    reg.set_copy(9, cs(2), 4)  # no such chunk in the metadata
    p = planner()
    actions = p.plan(1.0, chunks((1, 1)), {1: 3}, reg, busy={1})
    assert actions == [Delete(9, 4, cs(2), "orphan")]


def test_a_raise_never_carried_out_is_carried_out_when_every_copy_is_known():
    """All copies one raise behind (decided, committed, never told to the chunkservers):
    the copies at the highest version are raised, but only with a complete registry and
    with no disconnected server holding a copy as high."""
    from elkfs.master.replication import Raise, raisable

    reg = registry()
    reg.set_copy(1, cs(1), 6)
    reg.set_copy(1, cs(2), 6)
    reg.set_copy(1, cs(3), 5)  # missed a write at 6: stale
    p = planner()
    assert p.plan(1.0, chunks((1, 7)), {1: 2}, reg, complete=False) == []
    [action] = p.plan(1.0, chunks((1, 7)), {1: 2}, reg, complete=True)
    assert action == Raise(1, 6, 7, (cs(1), cs(2)))
    assert p.plan(2.0, chunks((1, 7)), {1: 2}, reg, complete=True) == []  # in flight
    p.finished(action, True)
    reg.disconnect(cs(2), 3.0)
    assert raisable(7, reg.holders(1), reg.servers) is None  # a copy at 6 is away
    reg.set_copy(1, cs(4), 7)
    assert raisable(7, reg.holders(1), reg.servers) is None  # one copy is current


def test_a_disconnected_server_is_rebuilt_at_once_unless_in_maintenance():
    """Default delay 0: a server that went away has its copies counted as lost at the
    next pass and rebuilt; one in maintenance is waited for and gets no new copies."""
    reg = registry()
    for i in (1, 2):
        reg.set_copy(1, cs(i), 3)
    reg.disconnect(cs(2), 5.0)
    p = Planner(Limits(delay_init=0, delay_disconnect=0), 0.0)
    actions = p.plan(5.0, chunks((1, 3)), {1: 2}, reg, maintenance=frozenset({cs(2)}))
    assert actions == []  # waited for: no rebuild (its copy still counts toward the goal)
    actions = p.plan(6.0, chunks((1, 3)), {1: 2}, reg)
    assert isinstance(actions[0], Forget)
    [rep] = [a for a in actions if isinstance(a, Replicate)]
    assert rep.target in (cs(3), cs(4))
    reg2 = registry()
    reg2.set_copy(1, cs(1), 3)
    p2 = Planner(Limits(delay_init=0, delay_disconnect=0), 0.0)
    [rep2] = p2.plan(1.0, chunks((1, 3)), {1: 2}, reg2, maintenance=frozenset({cs(3), cs(4)}))
    assert rep2.target == cs(2)  # never onto a server in maintenance


def test_nothing_is_judged_before_every_known_server_is_back_or_the_delay_passed():
    reg = registry()
    reg.set_copy(1, cs(1), 3)
    p = Planner(Limits(delay_init=60, delay_disconnect=0), 0.0)
    assert p.plan(1.0, chunks((1, 3)), {1: 2}, reg, complete=False) == []
    assert p.plan(2.0, chunks((1, 3)), {1: 2}, reg, complete=True) != []
