"""The HTML of the web interface: Python f-strings over the data of `views.py`, every
value escaped on the way in (`e()`), no template engine.

A page is the navigation, a live part (`#live`: the status bar and the view) and the
Step Down dialog. The script (`static/app.js`) re-fetches the live part every few
seconds (`?fragment=1`) and swaps it in place, so the page stays where the reader is;
the dialog lives outside it and is never replaced under the user's hands.
"""

from __future__ import annotations

import time
from html import escape

from . import charts

VIEWS = [("masters", "Masters"), ("leases", "Lease history"), ("chunkservers", "Chunkservers"),
         ("info", "Info"), ("mounts", "Mounts"), ("operations", "Operations")]
REFRESH_S = 3
NONE_YET = '<tr><td colspan="4" class="muted">none yet</td></tr>'
CLOCK_WARN_S = 0.5


def e(value) -> str:
    return escape("" if value is None else str(value), quote=True)


def human_bytes(n) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def seconds(v, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f} s"


def ago(t: float | None, now: float | None = None) -> str:
    if t is None:
        return "-"
    d = (now or time.time()) - t
    if d < 90:
        return f"{d:.0f} s ago"
    if d < 5400:
        return f"{d / 60:.0f} min ago"
    if d < 172800:
        return f"{d / 3600:.1f} h ago"
    return f"{d / 86400:.0f} days ago"


def clock(t: float | None, ms: bool = False) -> str:
    if t is None:
        return "-"
    text = time.strftime("%H:%M:%S", time.localtime(t))
    return f"{text}.{int((t % 1) * 1000):03d}" if ms else text


def when(t: float | None) -> str:
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def state_badge(state: str | None) -> str:
    state = state or "?"
    kind = state.split(" ")[0].lower()
    return f'<span class="state state-{e(kind)}">{e(state)}</span>'


def yes_no(v) -> str:
    if v is None:
        return '<span class="muted">-</span>'
    return '<span class="ok">yes</span>' if v else '<span class="bad">no</span>'


# ---------------------------------------------------------------- the page


def page(view: str, title: str, live: str, token: str, asset_version: str,
         masters: dict) -> str:
    current = ' aria-current="page"'
    nav = "".join(f'<a href="/{name}"{current if name == view else ""}>{e(label)}</a>'
                  for name, label in VIEWS)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="elkfs-token" content="{e(token)}">
<title>ElkFS · {e(title)} · {e(masters["self"])}</title>
<link rel="stylesheet" href="/static/style.css?v={e(asset_version)}">
<link rel="icon" href="data:,">
<script src="/static/app.js?v={e(asset_version)}" defer></script>
</head>
<body data-view="{e(view)}" data-refresh="{REFRESH_S}">
<header class="top">
<a class="brand" href="/">ElkFS</a>
<nav>{nav}</nav>
<span class="api-links"><a href="/api/{e(view)}">JSON</a> · <a href="/metrics">metrics</a></span>
</header>
<div id="offline" class="banner bad" hidden role="status"></div>
<div id="live">
{live}
</div>
<footer><span id="refreshed">as of {clock(time.time())}</span> · refreshes every
{REFRESH_S} s · <button type="button" id="pause" class="link">pause</button></footer>
{stepdown_dialog(masters) if masters.get("ha") else ""}
</body>
</html>
"""


def status_bar(masters: dict) -> str:
    me = next((r for r in masters["rows"] if r["self"]), {})
    leader = masters["leader"]
    if not masters["ha"]:
        lead = "single master (HA off): it always leads"
    elif leader == masters["self"]:
        lead = "this master leads"
    elif leader:
        lead = f'leader: <a class="leader-link" href="{e(masters["leader_url"])}">{e(leader)}</a>'
    else:
        lead = '<span class="bad">no leader right now</span>'
    cluster = f' · cluster <code>{e(masters["cluster"])}</code>' if masters.get("cluster") else ""
    return (f'<div class="status" id="status">master <b>{e(masters["self"])}</b> '
            f'{state_badge(me.get("state"))} term {e(me.get("term"))} · {lead}{cluster}</div>')


def live(masters: dict, body: str) -> str:
    return status_bar(masters) + f'\n<main id="view">\n{body}\n</main>'


# ---------------------------------------------------------------- masters


def masters_view(d: dict, admin_enabled: bool) -> str:
    out = [_leader_summary(d, admin_enabled), _masters_table(d)]
    if d["ha"] and len(d["rows"]) > 1:
        out.append(_links_table(d))
    out.append('<p class="note">Each row is that master\'s own answer, fetched just now '
               '(unreachable masters did not answer within a second). The version vector is '
               '(term of the last journal entry, metadata version): compare these, never '
               'wall times, to tell who is up to date. Clock offsets are measured against '
               'this master\'s wall clock (± half the round trip); leases use monotonic '
               f'clocks only, but offsets above {CLOCK_WARN_S} s make logs hard to compare '
               'and are flagged.</p>')
    return "\n".join(out)


def _leader_summary(d: dict, admin_enabled: bool) -> str:
    me = next((r for r in d["rows"] if r["self"]), {})
    parts = []
    if not d["ha"]:
        parts.append("<p>This is a single master (<code>HA_ENABLED = 0</code>): it always "
                     "leads. Step Down needs several masters (<code>HA_ENABLED = 1</code>).</p>")
        return f'<section class="summary">{"".join(parts)}</section>'
    lease = d.get("lease") or {}
    if d["leader"] == d["self"]:
        left = lease.get("expires_in")
        acks, voters = lease.get("renewal_acks"), lease.get("voter_count")
        parts.append(
            f'<p class="lead">This master is the <b>LEADER</b> (term {e(me.get("term"))}). '
            f'Its lease expires in <span class="countdown" data-address="{e(d["self"])}" '
            f'data-expires-in="{e(left)}">'
            f'{seconds(left)}</span> unless renewed (every half lease); it rests on the '
            f'renewal sent {seconds(lease.get("renewed_ago_s"))} ago, acknowledged by '
            f'{e(acks)} of {e(voters)} voters.</p>')
        parts.append(_stepdown_controls(d, admin_enabled))
    elif d["leader"]:
        parts.append(
            f'<p class="lead">This master is a <b>{e(me.get("state"))}</b>. The leader is '
            f'<a class="leader-link" href="{e(d["leader_url"])}">{e(d["leader"])}</a> '
            f'(lease expires in <span class="countdown" data-address="{e(d["leader"])}" '
            f'data-expires-in="{e(lease.get("expires_in"))}">'
            f'{seconds(lease.get("expires_in"))}</span>). '
            f'Step Down is on <a href="{e(d["leader_url"])}masters">the leader\'s page</a>.</p>')
    else:
        believed = d.get("believed_leader")
        parts.append(f'<p class="lead bad">No master answers as leader right now '
                     f'(an election or a hand-over is under way, or the voters are not '
                     f'reachable). This master last followed {e(believed or "nobody")}.</p>')
    last = d.get("last_election")
    if last:
        parts.append(f'<p>Last election: {e(when(last["time"]))} ({e(ago(last["time"]))}), '
                     f'because: {e(last["reason"])}.</p>')
    return f'<section class="summary">{"".join(parts)}</section>'


def _stepdown_controls(d: dict, admin_enabled: bool) -> str:
    if admin_enabled:
        button = ('<button type="button" id="stepdown-open" class="danger">Step Down…</button>')
        note = ("Hands the leadership to the most up-to-date in-sync follower (or one you "
                "choose), as <code>mfscli -C SD</code> does: in-flight changes commit, the lease "
                "is released and the follower is elected at once. Clients pause briefly.")
    else:
        button = ('<button type="button" id="stepdown-open" class="danger" disabled>'
                  'Step Down…</button>')
        note = ("Step Down is disabled: no admin password is set. Set "
                "<code>ADMIN_PASSWORD = …</code> in <code>mfsmaster.cfg</code> of every master "
                "and reload them (<code>mfsmaster reload</code>); until then use "
                "<code>mfscli -C SD</code>.")
    return f'<div class="stepdown">{button}<span class="note">{note}</span></div>'


def _masters_table(d: dict) -> str:
    rows = []
    for r in d["rows"]:
        cls = ["self" if r["self"] else "", "leader" if r["state"] == "LEADER" else "",
               "unreachable" if not r["reachable"] else ""]
        addr = e(r["address"]) + (' <span class="tag">this page</span>' if r["self"] else
                                  f' <a class="tag" href="{e(r["url"])}">page</a>')
        if not r["reachable"]:
            rows.append(f'<tr class="{" ".join(c for c in cls if c)}" data-address='
                        f'"{e(r["address"])}"><td>{addr}</td><td>{state_badge("UNREACHABLE")}'
                        f'</td><td colspan="9" class="muted">{e(r["error"])}</td></tr>')
            continue
        vv = r["version_vector"]
        vv_text = f"({vv[0]}, {vv[1]})" if vv else "-"
        if r["lease_expires_in"] is not None:
            lease = (f'<span class="countdown" data-address="{e(r["address"])}" '
                     f'data-expires-in="{e(r["lease_expires_in"])}">'
                     f'{seconds(r["lease_expires_in"])}</span>'
                     f'<br><small>renewed {seconds(r["lease_renewed_ago_s"])} ago, '
                     f'{e(r["lease_acks"])}/{e(r["lease_voters"])} acks</small>')
        else:
            lease = '<span class="muted">-</span>'
        last = r["last_election"]
        election = (f'{e(clock(last["time"]))}<br><small>{e(last["reason"])}</small>'
                    if last else '<span class="muted">-</span>')
        off = r["clock_offset_s"]
        off_cls = "bad" if off is not None and abs(off) > CLOCK_WARN_S else ""
        off_text = "reference" if r["self"] else \
            f'{off:+.3f} s <small>±{(r["rtt_s"] or 0) / 2:.3f}</small>' if off is not None else "-"
        lag = r["lag"]
        lag_text = "-" if lag is None else ("0" if lag == 0 else f'<span class="bad">{lag}</span>')
        rows.append(
            f'<tr class="{" ".join(c for c in cls if c)}" data-address="{e(r["address"])}">'
            f'<td>{addr}</td><td>{state_badge(r["state"])}</td><td>{e(r["term"])}</td>'
            f'<td>{e(vv_text)}<br><small>meta {e(r["metadata_version"])}, commit '
            f'{e(r["commit"])}</small></td><td>{lag_text}</td><td>{yes_no(r["in_sync"])}</td>'
            f'<td>{e(r["leader"] or "-")}</td><td>{lease}</td><td>{election}</td>'
            f'<td>{e(clock(r["wall_time"], ms=True))}</td><td class="{off_cls}">{off_text}</td>'
            f'</tr>')
    return ('<table class="grid" id="masters-table"><thead><tr><th>Address</th><th>State</th>'
            '<th>Term</th><th>Version vector</th><th>Lag</th><th>In sync</th>'
            '<th>Lease holder it sees</th><th>Lease expires in</th><th>Last election</th>'
            '<th>Wall clock</th><th>Offset</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>")


def _links_table(d: dict) -> str:
    hosts = [r["address"] for r in d["rows"]]
    head = "".join(f"<th>{e(h)}</th>" for h in hosts)
    body = []
    for a in hosts:
        cells = []
        seen = d["links"].get(a)
        for b in hosts:
            if a == b:
                cells.append('<td class="muted">·</td>')
            elif seen is None:
                cells.append('<td class="muted" title="did not answer">?</td>')
            elif seen.get(b):
                cells.append('<td class="ok">connected</td>')
            else:
                cells.append('<td class="bad">down</td>')
        body.append(f"<tr><th>{e(a)}</th>{''.join(cells)}</tr>")
    return ('<h2>Links between masters</h2><p class="note">As each master (row) reports its '
            'links to the others (both directions up).</p>'
            f'<table class="grid links"><thead><tr><th>from \\ to</th>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def stepdown_dialog(d: dict) -> str:
    return f"""<dialog id="stepdown-dialog" aria-labelledby="stepdown-title">
<form id="stepdown-form">
<h2 id="stepdown-title">Step down the leader?</h2>
<p>This master (<b>{e(d["self"])}</b>) will stop taking changes, commit what is in flight,
release its lease and hand the leadership over. Clients pause briefly and carry on with
the new leader.</p>
<label>Hand over to <select id="stepdown-target">
<option value="">the most up-to-date in-sync follower</option></select></label>
<input type="text" name="username" value="admin" autocomplete="username" hidden>
<label>Admin password <input type="password" id="stepdown-password"
autocomplete="current-password" required></label>
<p id="stepdown-error" class="error" role="alert"></p>
<div class="buttons"><button type="button" id="stepdown-cancel">Cancel</button>
<button type="submit" id="stepdown-confirm" class="danger">Confirm step-down</button></div>
</form>
<div id="stepdown-progress" hidden>
<h2>Hand-over</h2>
<ol id="stepdown-steps"></ol>
<p id="stepdown-next"></p>
<div class="buttons"><button type="button" id="stepdown-close">Close</button></div>
</div>
</dialog>"""


# ---------------------------------------------------------------- lease history


def leases_view(d: dict, everything: bool) -> str:
    now = d["now"]
    chart = charts.timeline(d["masters"], d["tenures"], d["failovers"], now)
    sources = ", ".join(f"{e(h)}: {e(s)}" for h, s in d["sources"].items())
    fails = []
    for f in reversed(d["failovers"][-20:]):
        fails.append(f'<tr><td>{e(when(f["time"]))}</td><td>{e(f["from"])} → {e(f["to"])}'
                     f'</td><td>{e(f["term"])}</td><td>{e(f["kind"])}</td>'
                     f'<td>{e(f["reason"])}</td></tr>')
    fail_table = ('<table class="grid" id="failovers"><thead><tr><th>When</th><th>From → to'
                  '</th><th>New term</th><th>How the old tenure ended</th><th>Why the election'
                  '</th></tr></thead><tbody>' + "".join(fails) + "</tbody></table>"
                  if fails else '<p class="muted">No failover in the events at hand.</p>')
    events = []
    idents = d.get("idents", {})
    for ev in d["events"]:
        cls = "ev-" + ev["event"].split("-")[0]
        detail = e(ev["detail"])
        for ident, host in idents.items():  # name the masters by address too
            if ident:
                detail = detail.replace(e(ident), f"{e(ident)} ({e(host)})")
        events.append(f'<tr class="{e(cls)}"><td>{e(when(ev["time"]))}</td><td>{e(ev["term"])}'
                      f'</td><td>{e(ev["event"])}</td><td><code>{detail}</code></td></tr>')
    toggle = ('<a href="/leases">notable events only</a>' if everything else
              '<a href="/leases?all=1">all events</a>')
    return f"""<h2>Who led when</h2>
<div class="chart-wrap">{chart}</div>
<p class="legend"><span class="key tenure"></span> leader (bar: one term)
<span class="key planned"></span> planned failover (step-down)
<span class="key unplanned"></span> unplanned failover (lease lost, crash, partition)</p>
<p class="note">From the <code>lease.log</code> of each master that answers, put on this
master's clock with the measured offsets ({sources}).</p>
<h2>Failovers</h2>
{fail_table}
<h2>Last events of this master's <code>lease.log</code></h2>
<p class="note">Newest first · {toggle}</p>
<table class="grid" id="lease-events"><thead><tr><th>Time</th><th>Term</th><th>Event</th>
<th>Detail</th></tr></thead><tbody>{"".join(events) or NONE_YET}</tbody></table>"""


# ---------------------------------------------------------------- chunkservers


def chunkservers_view(d: dict) -> str:
    rows = []
    servers = d["chunkservers"]
    for i, s in enumerate(servers, 1):
        total, used = s["total_bytes"], s["used_bytes"]
        pct = 100.0 * used / total if total else 0.0
        state = ('<span class="ok">connected</span>' if s["connected"] else
                 f'<span class="bad">{"lost" if s["lost"] else "disconnected"} '
                 f'{e(s["disconnected_s"])} s</span>')
        if not d["ha"]:
            votes = '<span class="muted">no voting (HA off)</span>'
        elif s["votes_for"]:
            votes = (f'{e(s["votes_for"])} <small>(acked {seconds(s["vote_acked_ago_s"])} '
                     f'ago)</small>')
        elif s["voter"]:
            votes = '<span class="bad">no lease acknowledged</span>'
        else:
            votes = '<span class="muted">-</span>'
        removal = e(s.get("removal") or "")
        if s.get("marked_chunks"):
            removal += f' ({e(s["marked_chunks"])} marked)'
        errors = s.get("errors", 0)
        rows.append(
            f'<tr data-address="{e(s["address"])}"><td>{i}</td><td>{e(s["address"])}</td>'
            f'<td><code title="{e(s["id"])}">{e(s["id"][:8])}</code></td>'
            f'<td>{e(s.get("version") or "-")}</td><td>{state}</td>'
            f'<td class="num">{e(s["chunks"])}</td><td class="num">{human_bytes(used)}</td>'
            f'<td class="num">{human_bytes(total)}</td>'
            f'<td><meter min="0" max="100" value="{pct:.1f}" high="90">{pct:.1f}%</meter> '
            f'{pct:.1f}%</td><td class="num{" bad" if errors else ""}">{e(errors)}</td>'
            f'<td>{removal}</td><td>{votes}</td></tr>')
    connected = sum(1 for s in servers if s["connected"])
    voting = sum(1 for s in servers if s.get("votes_for"))
    summary = f"{connected} of {len(servers)} chunkservers connected to this master"
    if d["ha"]:
        summary += (f"; {voting} acknowledged the current leader's lease"
                    + (f" ({e(d['leader'])})" if d["leader"] else ""))
    return (f'<p>{summary}.</p><table class="grid" id="chunkservers-table"><thead><tr><th>#</th>'
            '<th>Address</th><th>Id</th><th>Version</th><th>State</th><th>Chunks</th>'
            '<th>Used</th><th>Total</th><th>Usage</th><th>Errors</th><th>Disk removal</th>'
            '<th>Votes for</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>"
            '<p class="note">Errors: damaged or lost copies the chunkserver reported since '
            'this master started. Every chunkserver registers with every master and votes: '
            '"votes for" is the leader whose lease renewals it acknowledged.</p>'
            + _disks_table(servers))


def _disks_table(servers: list[dict]) -> str:
    rows = []
    for s in servers:
        for disk in s.get("disks") or []:
            total, used = disk["total_bytes"], disk["used_bytes"]
            pct = 100.0 * used / total if total else 0.0
            if disk["failed"]:
                state = '<span class="bad">taken out (I/O errors)</span>'
            elif disk["marked_for_removal"]:
                state = '<span class="warn">marked for removal</span>'
            else:
                state = '<span class="ok">in use</span>'
            rows.append(
                f'<tr><td>{e(s["address"])}</td><td><code>{e(disk["path"])}</code></td>'
                f'<td>{state}</td><td class="num">{e(disk["chunks"])}</td>'
                f'<td class="num">{human_bytes(used)}</td><td class="num">{human_bytes(total)}'
                f'</td><td><meter min="0" max="100" value="{pct:.1f}" high="90">{pct:.1f}%'
                f'</meter> {pct:.1f}%</td><td class="num{" bad" if disk["errors"] else ""}">'
                f'{e(disk["errors"])}</td></tr>')
    if not rows:
        return ""
    return ('<h2>Disks</h2><table class="grid" id="disks-table"><thead><tr><th>Chunkserver</th>'
            '<th>Path</th><th>State</th><th>Chunks</th><th>Used</th><th>Total</th><th>Usage</th>'
            '<th>I/O errors</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>"
            '<p class="note">Used and total are those of the file system holding the '
            'directory (several directories on one file system each show all of it).</p>')


# ---------------------------------------------------------------- info


def info_view(d: dict) -> str:
    total, used = d["total_bytes"], d["used_bytes"]
    pct = 100.0 * used / total if total else 0.0
    totals = [("Total space", human_bytes(total)), ("Used space", f"{human_bytes(used)} "
                                                                   f"({pct:.1f}%)"),
              ("Free space", human_bytes(d["free_bytes"])), ("Files", d["files"]),
              ("Directories", d["dirs"]), ("All inodes", d["inodes"]),
              ("Chunks", d["chunks"]), ("Sessions", d["sessions"]),
              ("Trash", f'{d["trash_files"]} files, {human_bytes(d["trash_bytes"])}'),
              ("Metadata version", d["metadata_version"]),
              ("Last checkpoint version", d.get("last_checkpoint_version"))]
    totals_html = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in totals)
    if not d["leading"]:
        health = ('<p class="note">Chunk health is counted by the leader\'s replication '
                  'passes; this master does not lead, so see the leader\'s Info page.</p>')
    else:
        cards = [("missing", "Missing", "no readable copy", d["missing_chunks"]),
                 ("endangered", "Endangered", "one copy left, goal 2 or more",
                  d["endangered_chunks"]),
                 ("undergoal", "Under goal", "fewer valid copies than the goal",
                  d["undergoal_chunks"]),
                 ("overgoal", "Over goal", "more copies than the goal", d["overgoal_chunks"]),
                 ("stale", "Stale copies", "old versions to delete", d["stale_copies"]),
                 ("damaged", "Damaged copies", "failed a CRC check", d["damaged_copies"])]
        card_html = "".join(
            f'<div class="card {cls}{" alert" if n and cls in ("missing", "endangered") else ""}'
            f'" id="health-{cls}"><b>{e(n)}</b><span>{e(title)}</span><small>{e(hint)}</small>'
            f'</div>' for cls, title, hint, n in cards)
        health = (f'<div class="cards">{card_html}</div>' + _goal_matrix(d)
                  + f'<p class="note">From the replication pass {e(d["replication_passes"])}; '
                  f'replications in flight {e(d["replications_in_flight"])}, done '
                  f'{e(d["replications_done"])}, failed {e(d["replications_failed"])}; '
                  f'deletions {e(d["deletions_done"])}'
                  + ('' if d["replication_active"] else '; replication not active yet '
                     '(REPLICATIONS_DELAY_INIT)') + '.</p>')
    return (f'<div class="two"><section><h2>Totals</h2><table class="kv" id="totals">'
            f'{totals_html}</table></section><section><h2>Chunk health</h2>{health}</section>'
            '</div>')


def _goal_matrix(d: dict) -> str:
    cells = d.get("chunks_by_goal_copies") or []
    if not cells:
        return '<p class="muted">No chunks.</p>'
    goals = sorted({g for g, _, _ in cells})
    copies = sorted({c for _, c, _ in cells} | {0})
    count = {(g, c): n for g, c, n in cells}
    head = "".join(f"<th>{c}</th>" for c in copies)
    body = []
    for g in goals:
        tds = []
        for c in copies:
            n = count.get((g, c), 0)
            cls = ("missing" if c == 0 else "endangered" if c == 1 and g >= 2 else
                   "undergoal" if c < g else "overgoal" if c > g else "ok")
            tds.append(f'<td class="num {cls if n else "muted"}">{n or "·"}</td>')
        body.append(f"<tr><th>goal {g}</th>{''.join(tds)}</tr>")
    return ('<h3>Chunks by valid copies (columns) and goal (rows)</h3>'
            f'<table class="grid matrix" id="goal-matrix"><thead><tr><th></th>{head}</tr>'
            f'</thead><tbody>{"".join(body)}</tbody></table>')


# ---------------------------------------------------------------- mounts


def mounts_view(d: dict) -> str:
    rows = []
    for s in d["sessions"]:
        if s["connected"]:
            state = f'<span class="ok">connected</span> {e(s["peer"])}'
        elif s["disconnected_s"] is not None:
            state = (f'<span class="bad">away {e(s["disconnected_s"])} s</span>, kept '
                     f'{e(s["expires_in_s"])} s more')
        else:
            state = '<span class="muted">not connected here</span>'
        rows.append(f'<tr><td><code title="{e(s["session"])}">{e(s["session"][:12])}</code></td>'
                    f'<td>{e(s["info"])}</td><td>{state}</td><td>{e(when(s["opened"]))}</td>'
                    f'<td class="num">{e(s["open_files"])}</td></tr>')
    note = ("" if d["leading"] else
            '<p class="note">This master does not lead: clients connect to the leader, so '
            'the sessions below are the replicated ones (no connections here).</p>')
    return (note + f'<p>{len(d["sessions"])} sessions.</p><table class="grid" '
            'id="mounts-table"><thead><tr><th>Session</th><th>Client</th><th>Connection</th>'
            '<th>Opened</th><th>Open files</th></tr></thead><tbody>'
            + ("".join(rows) or '<tr><td colspan="5" class="muted">no sessions</td></tr>')
            + "</tbody></table>")


# ---------------------------------------------------------------- operations


def operations_view(d: dict) -> str:
    now = time.time()
    chart = charts.ops_chart(d["samples"], now)
    r10, r60, totals = d["rate_10s"], d["rate_60s"], d["totals"]
    rows = "".join(
        f'<tr><td>{e(op)}</td><td class="num">{r10.get(op, 0):.1f}</td>'
        f'<td class="num">{r60.get(op, 0):.1f}</td><td class="num">{e(n)}</td></tr>'
        for op, n in sorted(totals.items(), key=lambda kv: -r60.get(kv[0], 0) * 1e9 - kv[1]))
    note = ("" if d["leading"] else '<p class="note">This master does not lead: clients send '
            'their operations to the leader.</p>')
    total10 = sum(r10.values())
    return (note + f'<h2>Metadata operations per second <small>(now {total10:.1f}/s, last 10 s)'
            f'</small></h2><div class="chart-wrap">{chart}</div>'
            '<table class="grid" id="ops-table"><thead><tr><th>Operation</th><th>/s (10 s)</th>'
            '<th>/s (60 s)</th><th>Total since start</th></tr></thead><tbody>'
            + (rows or '<tr><td colspan="4" class="muted">none yet</td></tr>')
            + "</tbody></table>")
