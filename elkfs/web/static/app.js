// ElkFS web interface: refreshes the live part of the page in place, counts leases
// down between refreshes, and drives the Step Down dialog. Served by the master itself;
// it talks to nothing but the master that served it.
"use strict";

(function () {
  const body = document.body;
  const refreshS = Number(body.dataset.refresh || 3);
  const live = document.getElementById("live");
  const offline = document.getElementById("offline");
  const refreshed = document.getElementById("refreshed");
  const pauseButton = document.getElementById("pause");
  const dialog = document.getElementById("stepdown-dialog");
  const token = (document.querySelector('meta[name="elkfs-token"]') || {}).content || "";
  let paused = false;
  let failingSince = null;
  let inFlight = false;

  function clockText(date) {
    return date.toTimeString().slice(0, 8);
  }

  function fragmentUrl() {
    const params = new URLSearchParams(location.search);
    params.set("fragment", "1");
    return location.pathname + "?" + params.toString();
  }

  async function refresh() {
    if (inFlight) return;
    inFlight = true;
    try {
      const resp = await fetch(fragmentUrl(), { cache: "no-store" });
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const html = await resp.text();
      live.innerHTML = html;
      takeCountdowns();
      refreshed.textContent = "as of " + clockText(new Date());
      failingSince = null;
      offline.hidden = true;
    } catch (err) {
      if (failingSince === null) failingSince = new Date();
      offline.hidden = false;
      offline.textContent = "This master has not answered since " + clockText(failingSince) +
        " (" + err.message + "): the page shows its last answer and keeps trying. " +
        "Another master's page shows the cluster meanwhile.";
    } finally {
      inFlight = false;
    }
  }

  function dialogOpen() {
    return dialog !== null && dialog.open;
  }

  setInterval(function () {
    if (!paused && !document.hidden && !dialogOpen()) refresh();
  }, refreshS * 1000);

  pauseButton.addEventListener("click", function () {
    paused = !paused;
    pauseButton.textContent = paused ? "resume" : "pause";
    if (!paused) refresh();
  });

  // Leases count down live: the page's values, then the masters' answers once a second
  // (a lease is renewed every half lease, faster than the page refreshes).
  const leases = new Map();  // address -> {left: seconds at `at`, at: performance.now()}

  function takeCountdowns() {
    const at = performance.now();
    leases.clear();
    for (const el of document.querySelectorAll(".countdown[data-address]")) {
      leases.set(el.dataset.address, { left: Number(el.dataset.expiresIn), at: at });
    }
  }
  takeCountdowns();

  setInterval(function () {
    const now = performance.now();
    for (const el of document.querySelectorAll(".countdown[data-address]")) {
      const lease = leases.get(el.dataset.address);
      if (lease === undefined) continue;
      if (!isFinite(lease.left)) {
        el.textContent = "-";
        continue;
      }
      const left = Math.max(0, lease.left - (now - lease.at) / 1000);
      el.textContent = left.toFixed(2) + " s";
      el.classList.toggle("expired", left === 0);
    }
  }, 100);

  if (body.dataset.view === "masters") {
    setInterval(async function () {
      if (paused || document.hidden || dialogOpen()) return;
      try {
        const resp = await fetch("/api/masters", { cache: "no-store" });
        if (!resp.ok) return;
        const at = performance.now();
        for (const row of await resp.json()) {
          const left = row.lease_expires_in === null ? NaN : Number(row.lease_expires_in);
          if (leases.has(row.address)) leases.set(row.address, { left: left, at: at });
        }
      } catch (err) {
        // the full refresh reports an unreachable master
      }
    }, 1000);
  }

  if (dialog === null) return;

  // ------------------------------------------------------------ Step Down
  const form = document.getElementById("stepdown-form");
  const password = document.getElementById("stepdown-password");
  const target = document.getElementById("stepdown-target");
  const error = document.getElementById("stepdown-error");
  const progress = document.getElementById("stepdown-progress");
  const steps = document.getElementById("stepdown-steps");
  const next = document.getElementById("stepdown-next");
  const confirmButton = document.getElementById("stepdown-confirm");

  function step(text) {
    const li = document.createElement("li");
    li.textContent = clockText(new Date()) + "  " + text;
    steps.appendChild(li);
    return li;
  }

  async function masters() {
    const resp = await fetch("/api/masters", { cache: "no-store" });
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    return resp.json();
  }

  async function openDialog() {
    form.hidden = false;
    progress.hidden = true;
    error.textContent = "";
    password.value = "";
    steps.replaceChildren();
    next.replaceChildren();
    confirmButton.disabled = false;
    while (target.options.length > 1) target.remove(1);
    dialog.showModal();
    password.focus();
    try {
      for (const row of await masters()) {
        if (row.self || !row.reachable || !row.in_sync) continue;
        const opt = document.createElement("option");
        opt.value = row.address;
        opt.textContent = row.address + " (" + row.state + ", lag " + row.lag + ")";
        target.appendChild(opt);
      }
    } catch (err) {
      // the default target (the most up-to-date follower) needs no list
    }
  }

  document.addEventListener("click", function (ev) {
    const button = ev.target.closest("#stepdown-open");
    if (button !== null && !button.disabled) openDialog();
  });
  document.getElementById("stepdown-cancel").addEventListener("click", function () {
    dialog.close();
  });
  document.getElementById("stepdown-close").addEventListener("click", function () {
    dialog.close();
    refresh();
  });

  form.addEventListener("submit", async function (ev) {
    ev.preventDefault();
    error.textContent = "";
    confirmButton.disabled = true;
    let resp, answer;
    try {
      resp = await fetch("/api/step-down", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-ElkFS-Token": token },
        body: JSON.stringify({ password: password.value, target: target.value }),
      });
      answer = await resp.json();
    } catch (err) {
      error.textContent = "The master did not answer: " + err.message;
      confirmButton.disabled = false;
      return;
    }
    if (!resp.ok || !answer.ok) {
      error.textContent = "Refused: " + (answer.error || "HTTP " + resp.status);
      confirmButton.disabled = false;
      password.select();
      return;
    }
    password.value = "";
    form.hidden = true;
    progress.hidden = false;
    step("Step-down requested (term " + answer.term + "), handing over to " +
         (answer.target || "the most up-to-date in-sync follower") + ".");
    follow(answer, performance.now());
  });

  // Poll this master's view of the masters until another one leads in a newer term.
  async function follow(answer, started) {
    let released = false;
    let warned = false;
    while (dialog.open) {
      const waited = (performance.now() - started) / 1000;
      let rows = null;
      try {
        rows = await masters();
      } catch (err) {
        // this master may be busy handing over: try again
      }
      if (rows !== null) {
        const me = rows.find(function (r) { return r.self; });
        if (!released && me && me.state !== "LEADER") {
          released = true;
          step("This master released its lease: it is now " + me.state + ".");
        }
        const leader = rows.find(function (r) {
          return !r.self && r.state === "LEADER" && r.term > answer.term;
        });
        if (leader) {
          const li = step("New leader " + leader.address + " (term " + leader.term + ") after " +
                          waited.toFixed(2) + " s.");
          li.classList.add("done");
          li.id = "stepdown-done";
          const link = document.createElement("a");
          link.href = leader.url + "masters";
          link.id = "new-leader-link";
          link.textContent = "Open the new leader's page (" + leader.address + ")";
          next.replaceChildren(link);
          refresh();
          return;
        }
      }
      if (!warned && waited > 15) {
        warned = true;
        step("No new leader yet. A hand-over that cannot finish is aborted after one lease " +
             "and this master keeps leading; see the lease history.");
      }
      if (waited > 60) return;
      await new Promise(function (resolve) { setTimeout(resolve, 250); });
    }
  }
})();
