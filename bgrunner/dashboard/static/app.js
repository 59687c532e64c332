// bgrunner dashboard: live updates over Server-Sent Events, and confirmations.
// Hand-written, no dependencies; loaded as a file so the CSP can forbid inline script.
// Every value from the server is put in the page with textContent, never as HTML.
"use strict";

(function () {
  const CANCELLABLE = ["pending", "retrying", "running"];
  const RETRYABLE = ["failed", "cancelled"];
  const FINAL = ["completed", "failed", "cancelled"];
  const RECONNECT_MS = 2000;
  const MAX_OUTPUT = 200000;

  // -- formatting (the same as the server's filters) ------------------------------
  function when(iso) {
    return iso ? iso.slice(0, 19).replace("T", " ") : "—";
  }

  function duration(startIso, endIso) {
    if (!startIso || !endIso) return "";
    const seconds = (Date.parse(endIso) - Date.parse(startIso)) / 1000;
    if (!(seconds >= 0)) return "";
    if (seconds < 1) return Math.round(seconds * 1000) + " ms";
    if (seconds < 60) return seconds.toFixed(1) + " s";
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return minutes + " min " + Math.floor(seconds % 60) + " s";
    return Math.floor(minutes / 60) + " h " + (minutes % 60) + " min";
  }

  function size(bytes) {
    const units = ["B", "KiB", "MiB", "GiB"];
    let value = bytes, i = 0;
    while (value >= 1024 && i < units.length - 1) { value /= 1024; i++; }
    return i === 0 ? value + " B" : value.toFixed(1) + " " + units[i];
  }

  function compact(value, limit) {
    const text = JSON.stringify(value);
    return text.length <= limit ? text : text.slice(0, limit - 1) + "…";
  }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // -- pieces shared by the list and the job page ----------------------------------
  function setBadge(badge, status) {
    if (!badge) return;
    badge.className = "badge s-" + status;
    badge.textContent = status;
  }

  function progressBar(progress) {
    const wrap = el("span", "progress");
    if (!progress || progress.done === null || progress.done === undefined) return null;
    if (progress.total) {
      const bar = el("progress");
      bar.max = progress.total;
      bar.value = progress.done;
      wrap.appendChild(bar);
      wrap.appendChild(el("span", "label", progress.done + "/" + progress.total));
    } else {
      wrap.appendChild(el("span", "label", String(progress.done)));
    }
    return wrap;
  }

  function showActions(container, status) {
    const cancel = container.querySelector(".act-cancel");
    const retry = container.querySelector(".act-retry");
    if (cancel) cancel.hidden = CANCELLABLE.indexOf(status) < 0;
    if (retry) retry.hidden = RETRYABLE.indexOf(status) < 0;
  }

  function setCounts(counts) {
    if (!counts) return;
    document.querySelectorAll("[data-count]").forEach(function (node) {
      const n = counts[node.dataset.count];
      if (n !== undefined) node.textContent = String(n);
    });
  }

  // A stream that reopens itself (with a fresh URL) when it ends or fails.
  function stream(urlOf, onMessage, onDone) {
    const state = document.querySelector("[data-live-state]");
    let source = null;
    let stopped = false;
    function open() {
      source = new EventSource(urlOf());
      source.onopen = function () {
        if (state) { state.hidden = false; state.textContent = "live"; state.classList.remove("off"); }
      };
      source.onmessage = function (event) { onMessage(JSON.parse(event.data)); };
      source.addEventListener("done", function () {
        stopped = true;
        source.close();
        if (onDone) onDone();
      });
      source.onerror = function () {
        source.close();
        if (state) { state.textContent = "reconnecting…"; state.classList.add("off"); }
        if (!stopped) setTimeout(open, RECONNECT_MS);
      };
    }
    open();
    function close() { stopped = true; if (source) source.close(); }
    window.addEventListener("pagehide", close);
    return { close: close };
  }

  // -- the job list ------------------------------------------------------------------
  function updateRow(row, job) {
    row.dataset.status = job.status;
    setBadge(row.querySelector("[data-field=status]"), job.status);
    const cell = row.querySelector("[data-field=progress]");
    const bar = progressBar(job.progress);
    cell.replaceChildren();
    if (bar) cell.appendChild(bar);
    row.querySelector("[data-field=attempts]").textContent = job.attempts + "/" + job.max_attempts;
    row.querySelector("[data-field=duration]").textContent = duration(job.started_at, job.finished_at);
    showActions(row, job.status);
  }

  function newRow(job) {
    const template = document.getElementById("row-template");
    const row = template.content.firstElementChild.cloneNode(true);
    row.dataset.id = job.id;
    const link = row.querySelector("[data-f=link]");
    link.href = "/jobs/" + encodeURIComponent(job.id);
    link.textContent = job.id;
    const target = row.querySelector(".target");
    target.title = job.target + "." + job.method;
    row.querySelector("[data-f=cls]").textContent = job.target.split(":").pop();
    row.querySelector("[data-f=method]").textContent = "." + job.method;
    const queue = row.querySelector("[data-f=queue]");
    queue.textContent = job.queue || "default";
    queue.href = "/jobs?queue=" + encodeURIComponent(job.queue || "default");
    row.querySelector("[data-f=params]").textContent = compact(job.params, 70);
    row.querySelector("[data-f=created]").textContent = when(job.created_at);
    const cancel = row.querySelector(".act-cancel");
    if (cancel) {
      cancel.action = "/jobs/" + encodeURIComponent(job.id) + "/cancel";
      cancel.dataset.confirm = "Cancel job " + job.id + "?";
      cancel.querySelector("[name=next]").value = location.pathname + location.search;
    }
    const retry = row.querySelector(".act-retry");
    if (retry) retry.action = "/jobs/" + encodeURIComponent(job.id) + "/retry";
    updateRow(row, job);
    return row;
  }

  function jobList() {
    const body = document.body;
    const tbody = document.querySelector("table[data-jobs] tbody");
    const live = body.dataset.live === "1";
    const filter = body.dataset.filter || "";
    function rows() { return Array.prototype.slice.call(tbody.querySelectorAll("tr[data-id]")); }
    function urlOf() {
      const ids = rows().filter(function (r) { return FINAL.indexOf(r.dataset.status) < 0; })
        .map(function (r) { return r.dataset.id; }).slice(0, 200);
      const top = rows().reduce(function (m, r) { return Math.max(m, Number(r.dataset.id)); }, 0);
      const parts = [];
      if (filter) parts.push(filter);
      if (ids.length) parts.push("watch=" + ids.join(","));
      if (live) parts.push("top=" + top);
      return "/events?" + parts.join("&");
    }
    stream(urlOf, function (data) {
      setCounts(data.counts);
      (data.jobs || []).forEach(function (job) {
        const row = tbody.querySelector('tr[data-id="' + CSS.escape(job.id) + '"]');
        if (row) updateRow(row, job);
      });
      const fresh = (data.new || []).slice().sort(function (a, b) { return Number(a.id) - Number(b.id); });
      fresh.forEach(function (job) {
        if (tbody.querySelector('tr[data-id="' + CSS.escape(job.id) + '"]')) return;
        tbody.insertBefore(newRow(job), tbody.firstChild);
        const empty = document.querySelector("[data-empty]");
        if (empty) empty.hidden = true;
      });
    });
  }

  // -- the overview: live counts only ---------------------------------------------------
  function overview() {
    stream(function () { return "/events"; }, function (data) { setCounts(data.counts); });
  }

  // -- one job ------------------------------------------------------------------------------
  function jobPage() {
    const body = document.body;
    const id = body.dataset.jobId;
    const wasFinal = FINAL.indexOf(body.dataset.status) >= 0;
    let offset = Number(body.dataset.offset || 0);
    const output = document.querySelector("[data-output]");
    function fact(name, text) {
      const node = document.querySelector('[data-fact="' + name + '"]');
      if (node) node.textContent = text;
    }
    function urlOf() { return "/jobs/" + encodeURIComponent(id) + "/stream?offset=" + offset; }
    stream(urlOf, function (data) {
      const job = data.job;
      document.querySelectorAll(".heading [data-field=status]").forEach(function (b) { setBadge(b, job.status); });
      const side = document.querySelector(".heading-side");
      if (side) showActions(side, job.status);
      fact("status", job.status);
      fact("attempts", job.attempts + " of " + job.max_attempts);
      fact("started", job.started_at ? when(job.started_at) + " UTC" : "—");
      fact("finished", job.finished_at ? when(job.finished_at) + " UTC" : "—");
      fact("duration", duration(job.started_at, job.finished_at) || "—");
      const card = document.querySelector("[data-progress-card]");
      if (job.progress && card) {
        card.hidden = false;
        const bar = card.querySelector("[data-progress]");
        if (job.progress.total) { bar.max = job.progress.total; bar.value = job.progress.done; }
        let text = String(job.progress.done);
        if (job.progress.total) text += " of " + job.progress.total;
        if (job.progress.message) text += " · " + job.progress.message;
        card.querySelector("[data-progress-text]").textContent = text;
      }
      const proc = document.querySelector("[data-process]");
      if (proc) {
        proc.hidden = !data.process;
        if (data.process) {
          proc.querySelector("[data-proc=pid]").textContent = String(data.process.pid);
          proc.querySelector("[data-proc=cpu]").textContent = data.process.cpu_percent === null
            ? "measuring…" : data.process.cpu_percent.toFixed(1) + " %";
          proc.querySelector("[data-proc=memory]").textContent = size(data.process.memory_bytes);
        }
      }
      const error = document.querySelector("[data-error]");
      if (error && job.error) {
        error.hidden = false;
        error.querySelector("[data-error-text]").textContent = job.error;
      }
      if (data.output) {
        let text = output.textContent + data.output;
        if (text.length > MAX_OUTPUT) text = text.slice(text.length - MAX_OUTPUT);
        output.textContent = text;
        output.scrollTop = output.scrollHeight;
        const empty = document.querySelector("[data-output-empty]");
        if (empty) empty.hidden = true;
      }
      if (typeof data.offset === "number") offset = data.offset;
    }, function () {
      // The job has ended: fetch the page once more and swap in its final sections
      // (summary, result, attempts, log events), without reloading.
      if (!wasFinal) refreshSections();
    });
  }

  function refreshSections() {
    fetch(location.pathname, { credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (!html) return;
        const fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-refresh]").forEach(function (old) {
          const name = old.dataset.refresh;
          const replacement = fresh.querySelector('[data-refresh="' + name + '"]');
          if (replacement) old.replaceWith(document.importNode(replacement, true));
        });
        document.body.dataset.status = fresh.body.dataset.status || document.body.dataset.status;
      })
      .catch(function () { /* the live values stay; a manual reload shows the rest */ });
  }

  // -- the logs ----------------------------------------------------------------------------------
  const MAX_LIVE_LINES = 1000;

  function logLine(line) {
    const template = document.getElementById("line-template");
    const row = template.content.firstElementChild.cloneNode(true);
    row.dataset.key = line.key;
    row.className = "fresh level-" + line.level + (line.error ? " is-error" : "");
    row.querySelector("[data-f=when]").textContent = line.when;
    const level = row.querySelector("[data-f=level]");
    level.textContent = line.level;
    level.className = "level lv-" + line.level;
    row.querySelector("[data-f=event]").textContent = line.event;
    if (line.job_id) {
      const link = el("a", null, line.job_id);
      link.href = "/jobs/" + encodeURIComponent(line.job_id);
      link.dataset.jobLink = "";
      row.querySelector("[data-f=job]").appendChild(link);
    }
    if (line.target) {
      const target = el("span", "target");
      target.title = line.target + (line.method ? "." + line.method : "");
      target.appendChild(el("span", "cls", line.cls));
      if (line.method) target.appendChild(el("span", "method", "." + line.method));
      row.querySelector("[data-f=target]").appendChild(target);
    }
    row.querySelector("[data-f=attempt]").textContent = line.attempt === null ? "" : String(line.attempt);
    row.querySelector("[data-f=pid]").textContent = line.pid === null ? "" : String(line.pid);
    const details = row.querySelector("[data-f=details]");
    (line.details || []).forEach(function (d) {
      const kv = el("span", "kv");
      kv.appendChild(el("span", "k", d.k));
      kv.appendChild(document.createTextNode(" " + d.v));
      details.appendChild(kv);
    });
    (line.folded || []).forEach(function (f) {
      const fold = el("details");
      fold.appendChild(el("summary", null, f.k));
      fold.appendChild(el("pre", "code", f.v));
      details.appendChild(fold);
    });
    return row;
  }

  function logsPage() {
    const body = document.body;
    if (body.dataset.live !== "1") return;
    const tbody = document.querySelector("[data-lines]");
    const filter = body.dataset.filter || "";
    let after = body.dataset.after || "";
    let added = 0;
    function urlOf() {
      const parts = [];
      if (filter) parts.push(filter);
      if (after) parts.push("after=" + encodeURIComponent(after));
      return "/logs/stream?" + parts.join("&");
    }
    const live = stream(urlOf, function (data) {
      if (typeof data.covered === "number") after = String(data.covered);
      const lines = (data.lines || []).slice().reverse();  // oldest first: each goes on top
      lines.forEach(function (line) {
        if (tbody.querySelector('tr[data-key="' + CSS.escape(line.key) + '"]')) return;
        tbody.insertBefore(logLine(line), tbody.firstChild);
        added++;
      });
      if (lines.length) {
        const empty = document.querySelector("[data-empty]");
        if (empty) empty.hidden = true;
      }
      if (data.gap) document.querySelector("[data-gap]").hidden = false;
      if (added >= MAX_LIVE_LINES) {
        live.close();
        document.querySelector("[data-full]").hidden = false;
        const state = document.querySelector("[data-live-state]");
        if (state) { state.textContent = "paused"; state.classList.add("off"); }
      }
    });
  }

  // -- every page ------------------------------------------------------------------------------
  document.addEventListener("submit", function (event) {
    const form = event.target.closest("form[data-confirm]");
    if (form && !window.confirm(form.dataset.confirm)) event.preventDefault();
  });

  document.addEventListener("DOMContentLoaded", function () {
    const page = document.body.dataset.page;
    if (page === "jobs") jobList();
    else if (page === "job") jobPage();
    else if (page === "overview") overview();
    else if (page === "logs") logsPage();
  });
})();
