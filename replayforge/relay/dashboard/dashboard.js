// The relay's dashboard: fetch dashboard/data.json every few seconds and draw
// it.  Every value from the data reaches the page through textContent or a
// numeric attribute, never as markup.
"use strict";

const REFRESH_MS = 5000;
const SVG = "http://www.w3.org/2000/svg";
const SPARK_WIDTH = 120;
const SPARK_HEIGHT = 26;

let lastGood = null;

function finite(value) {
  return typeof value === "number" && Number.isFinite(value);
}

function count(value) {
  if (!finite(value)) {
    return "–";
  }
  return Math.round(value).toLocaleString("en-US");
}

function percent(value) {
  if (!finite(value)) {
    return "–";
  }
  return value.toFixed(1) + " %";
}

function bytes(value) {
  if (!finite(value)) {
    return "–";
  }
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let size = value;
  let unit = 0;
  while (size >= 1024 && unit < units.length - 1) {
    size /= 1024;
    unit += 1;
  }
  return (unit === 0 ? String(size) : size.toFixed(1)) + " " + units[unit];
}

function age(seconds) {
  if (!finite(seconds)) {
    return "never";
  }
  if (seconds < 90) {
    return Math.round(seconds) + " s ago";
  }
  if (seconds < 5400) {
    return Math.round(seconds / 60) + " min ago";
  }
  if (seconds < 172800) {
    return Math.round(seconds / 3600) + " h ago";
  }
  return Math.round(seconds / 86400) + " d ago";
}

function cell(row, field, text, title) {
  const td = document.createElement("td");
  td.dataset.field = field;
  td.textContent = text;
  if (title) {
    td.title = title;
  }
  row.appendChild(td);
  return td;
}

function stateCell(row, item) {
  const td = cell(row, "state", item.stale ? "stale" : "live");
  td.className = item.stale ? "badge stale" : "badge live";
  if (item.stale) {
    row.classList.add("stale");
  }
}

// A polyline of `values` scaled to the sparkline's box; `top` is the value
// drawn at the top edge.
function polyline(values, top, kind) {
  const line = document.createElementNS(SVG, "polyline");
  const step = values.length > 1 ? SPARK_WIDTH / (values.length - 1) : 0;
  const points = values.map(function (value, index) {
    const x = values.length > 1 ? index * step : SPARK_WIDTH / 2;
    const y = SPARK_HEIGHT - 1 - (top > 0 ? (value / top) * (SPARK_HEIGHT - 2) : 0);
    return x.toFixed(1) + "," + y.toFixed(1);
  });
  if (values.length === 1) {
    points.unshift("0," + points[0].split(",")[1]);
    points.push(SPARK_WIDTH + "," + points[1].split(",")[1]);
  }
  line.setAttribute("points", points.join(" "));
  line.setAttribute("class", kind);
  return line;
}

function sparkline(series, label) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "sparkline");
  svg.setAttribute("width", String(SPARK_WIDTH));
  svg.setAttribute("height", String(SPARK_HEIGHT));
  svg.setAttribute("viewBox", "0 0 " + SPARK_WIDTH + " " + SPARK_HEIGHT);
  svg.setAttribute("role", "img");
  let top = 0;
  series.forEach(function (entry) {
    entry.values.forEach(function (value) {
      top = Math.max(top, value);
    });
  });
  const title = document.createElementNS(SVG, "title");
  title.textContent = label + ", peak " + count(top);
  svg.appendChild(title);
  series.forEach(function (entry) {
    svg.appendChild(polyline(entry.values, top, entry.kind));
  });
  return svg;
}

function historyCell(row, bucket) {
  const td = cell(row, "history", "");
  const minutes = Array.isArray(bucket.history) ? bucket.history : [];
  const pick = function (key) {
    return minutes.map(function (minute) {
      return typeof minute[key] === "number" ? minute[key] : 0;
    });
  };
  td.appendChild(
    sparkline(
      [
        { kind: "rx", values: pick("rx") },
        { kind: "tx", values: pick("tx") },
      ],
      "in and out per minute over " + minutes.length + " minutes"
    )
  );
  td.appendChild(
    sparkline(
      [{ kind: "backlog", values: pick("backlog") }],
      "backlog over " + minutes.length + " minutes"
    )
  );
}

function droppedText(dropped) {
  const reasons = Object.keys(dropped || {}).sort();
  if (reasons.length === 0) {
    return "none";
  }
  return reasons
    .map(function (reason) {
      return reason + ": " + count(dropped[reason]);
    })
    .join(", ");
}

function bucketRow(bucket) {
  const row = document.createElement("tr");
  row.dataset.bucket = bucket.name;
  const name = cell(row, "name", bucket.name);
  name.className = "name";
  cell(row, "rx", count(bucket.rxPerMinute), "last minute: " + count(bucket.rxLastMinute));
  cell(row, "tx", count(bucket.txPerMinute));
  cell(row, "received", count(bucket.rxSinceStart), "last stored " + age(bucket.rxAgeSeconds));
  cell(row, "sent", count(bucket.txSinceStart), "last fetched " + age(bucket.txAgeSeconds));
  cell(row, "backlog", count(bucket.backlog));
  const capped = typeof bucket.maxBytes === "number";
  const cap = capped ? bytes(bucket.maxBytes) : "no cap";
  const size = cell(row, "size", bytes(bucket.usedBytes) + " / " + cap);
  const meter = document.createElement("meter");
  meter.min = 0;
  meter.max = capped ? bucket.maxBytes : 1;
  meter.value = capped ? bucket.usedBytes : 0;
  meter.high = meter.max * 0.8;
  size.appendChild(meter);
  if (bucket.full) {
    row.classList.add("full");
    size.appendChild(document.createTextNode(" full"));
  }
  historyCell(row, bucket);
  cell(row, "dropped", droppedText(bucket.dropped));
  return row;
}

function envRow(env) {
  const row = document.createElement("tr");
  row.dataset.env = env.name;
  cell(row, "name", env.name).className = "name";
  const hosts = count(env.hosts) + (env.staleHosts ? " (" + count(env.staleHosts) + " stale)" : "");
  cell(row, "hosts", hosts);
  cell(row, "rx", count(env.rxPerMinute));
  cell(row, "tx", count(env.txPerMinute));
  cell(row, "received", count(env.rxSinceStart));
  cell(row, "sent", count(env.txSinceStart));
  cell(row, "seen", age(env.ageSeconds), env.lastSeen || "");
  stateCell(row, env);
  return row;
}

function hostRow(host) {
  const row = document.createElement("tr");
  row.dataset.host = host.name;
  cell(row, "name", host.name).className = "name";
  cell(row, "env", host.env || "–");
  cell(row, "report", age(host.reportAgeSeconds), host.lastReport || "no report");
  cell(row, "memory", bytes(host.memoryProcess));
  cell(
    row,
    "hostMemory",
    percent(host.memoryHostUsedPct),
    typeof host.memoryHostTotal === "number" ? "of " + bytes(host.memoryHostTotal) : ""
  );
  cell(row, "cpu", percent(host.cpuPercentHost));
  const warnings = cell(row, "warnings", count(host.warnCount));
  if (host.warnCount > 0) {
    warnings.className = "warn";
  }
  const errors = cell(row, "errors", count(host.errorCount));
  if (host.errorCount > 0) {
    errors.className = "error";
  }
  cell(row, "rx", count(host.rxPerMinute));
  cell(row, "tx", count(host.txPerMinute));
  stateCell(row, host);
  return row;
}

function fill(tableId, items, makeRow, emptyText) {
  const body = document.querySelector("#" + tableId + " tbody");
  const rows = (Array.isArray(items) ? items : []).map(makeRow);
  if (rows.length === 0) {
    const row = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = document.querySelectorAll("#" + tableId + " thead th").length;
    td.className = "empty";
    td.textContent = emptyText;
    row.appendChild(td);
    rows.push(row);
  }
  body.replaceChildren.apply(body, rows);
}

function render(data) {
  fill("buckets", data.buckets, bucketRow, "No buckets are configured.");
  fill("envs", data.envs, envRow, "No environment has been seen yet.");
  fill("hosts", data.hosts, hostRow, "No host has been seen yet.");
  const hosts = Array.isArray(data.hosts) ? data.hosts : [];
  const stale = hosts.filter(function (host) {
    return host.stale;
  }).length;
  document.getElementById("summary").textContent =
    "Up " + data.uptime + " · " + count(hosts.length) + " hosts, " +
    count(stale) + " stale · updated " + data.now;
  document.getElementById("legend").textContent =
    "Refreshes every " + REFRESH_MS / 1000 + " s. A host or environment " +
    "silent for more than " + count(data.staleAfterSeconds) + " s is marked stale.";
}

function showProblem(text) {
  const problem = document.getElementById("problem");
  problem.hidden = text === null;
  problem.textContent = text === null ? "" : text;
  document.body.classList.toggle("offline", text !== null);
}

function refresh() {
  fetch("dashboard/data.json", { cache: "no-store" })
    .then(function (response) {
      if (!response.ok) {
        throw new Error("the relay answered " + response.status);
      }
      return response.json();
    })
    .then(function (data) {
      render(data);
      lastGood = data.now;
      showProblem(null);
    })
    .catch(function (error) {
      const since = lastGood ? "; figures shown are from " + lastGood : "";
      showProblem("Cannot read the relay's figures: " + error.message + since);
    })
    .finally(function () {
      window.setTimeout(refresh, REFRESH_MS);
    });
}

document.addEventListener("DOMContentLoaded", refresh);
