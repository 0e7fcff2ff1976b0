// chunkd's live status page: one server-sent-events connection (GET /v1/status/events),
// read with fetch so that it can carry the bearer token; no polling, no libraries.
'use strict';

const TOKEN_KEY = 'chunkd-token';
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem(TOKEN_KEY) || '';
let retryMs = 1000;
let stopped = false;

function headers() {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function esc(s) {
  return String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

function bytes(n) {
  if (n === null || n === undefined) return '?';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function rate(r) {
  return r === null || r === undefined ? '–' : `${bytes(r)}/s`;
}

function duration(s) {
  if (s === null || s === undefined || !isFinite(s)) return '–';
  s = Math.round(s);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

function setConn(state, text) {
  const el = $('conn');
  el.dataset.state = state;
  el.textContent = text;
}

function notice(text) {
  const el = $('notice');
  el.textContent = text;
  el.hidden = !text;
}

// ---- rendering ----------------------------------------------------------------------

const jobEls = new Map(); // job id -> element, kept across updates so buttons stay put

function streamRow(s) {
  const known = s.size !== null && s.size !== undefined;
  const pct = known ? (s.size === 0 ? 100 : Math.min(100, (100 * s.bytes) / s.size)) : null;
  const chunks = s.total_chunks ? `${s.chunks}/${s.total_chunks}` : `${s.chunks}`;
  const state = s.end ? ` · ${esc(s.end)}` : (s.stalled ? ' · <span class="stalled">stalled</span>' : '');
  return `<div class="stream" data-job="${esc(s.job_id)}" data-cid="${esc(s.correlation_id)}" data-bytes="${s.bytes}">
    <div class="mono" title="correlation-id ${esc(s.correlation_id)}">${esc(s.container)}/${esc(s.blob)}</div>
    <div class="bar${known ? '' : ' unknown'}" role="progressbar" aria-label="progress of ${esc(s.blob)}"
         aria-valuemin="0" aria-valuemax="100" ${known ? `aria-valuenow="${pct.toFixed(1)}"` : ''}>
      <div style="width:${known ? pct.toFixed(1) : 100}%"></div></div>
    <div class="figures">${known ? `${pct.toFixed(1)}% · ` : ''}${bytes(s.bytes)}${known ? ` of ${bytes(s.size)}` : ''}
      · chunks ${chunks} · ${rate(s.rate)} · ETA ${s.end ? '–' : duration(s.eta_s)}${state}</div>
  </div>`;
}

function cancelButton(id) {
  return `<button class="cancel" data-cancel="${esc(id)}" title="DELETE /v1/jobs/${esc(id)}">Cancel</button>`;
}

function renderRunning(snap) {
  const box = $('running');
  $('running-count').textContent = snap.running.length ? `(${snap.running.length})` : '';
  const seen = new Set();
  for (const j of snap.running) {
    seen.add(j.job_id);
    let el = jobEls.get(j.job_id);
    if (!el) {
      el = document.createElement('div');
      el.className = 'job';
      el.dataset.job = j.job_id;
      el.innerHTML = `<div class="job-head">
          <code>${esc(j.job_id)}</code> <strong>${esc(j.component)}</strong>
          <span class="muted mono">${esc(j.args.join(' '))}</span>
          <span class="muted info"></span><span class="spacer"></span>${cancelButton(j.job_id)}</div>
        <div class="streams"></div><div class="outputs muted"></div>`;
      jobEls.set(j.job_id, el);
    }
    const where = [j.instance, j.node].filter(Boolean).join(' on ');
    el.querySelector('.info').textContent =
      `${where} · attempt ${j.attempts} · running ${duration(snap.time - (j.started_at || snap.time))}`;
    el.querySelector('.streams').innerHTML = j.streams.length
      ? j.streams.map(streamRow).join('') : '<p class="muted">no stream started yet</p>';
    el.querySelector('.outputs').innerHTML = outputList(j.outputs || []);
    box.appendChild(el); // keeps the server's order; a no-op move for elements in place
  }
  for (const [id, el] of jobEls) {
    if (!seen.has(id)) { el.remove(); jobEls.delete(id); }
  }
  $('running-none').hidden = snap.running.length > 0;
}

function renderQueued(snap) {
  $('queued-count').textContent = snap.queued.length ? `(${snap.queued.length})` : '';
  $('queued').innerHTML = snap.queued.length ? snap.queued.map((j) => `<tr data-job="${esc(j.job_id)}">
      <td><code>${esc(j.job_id)}</code></td><td>${esc(j.component)}</td>
      <td class="mono">${esc(j.args.join(' '))}</td><td>${duration(snap.time - j.created_at)}</td>
      <td>${cancelButton(j.job_id)}</td></tr>`).join('')
    : '<tr><td colspan="5" class="muted">none</td></tr>';
}

function renderComponents(snap) {
  $('components').innerHTML = snap.components.map((c) => `<tr data-component="${esc(c.name)}">
      <td><strong>${esc(c.name)}</strong></td><td>${esc(c.kind)}</td><td class="num">${c.instances}</td>
      <td class="num">${c.running}</td><td class="num">${c.queued}</td>
      <td class="num">${rate(c.rate)}</td><td class="num">${bytes(c.bytes)}</td></tr>`).join('');
}

// ---- shares: each flow's bytes per second over the last minutes, beside its quota ----------

const CHART_W = 300;
const CHART_H = 60;
const PLOT_H = CHART_H - 16; // the plot above, the labels below
const RECENT_POINTS = 5; // the 'recent' column: the mean of the last few steps

// an inline SVG: one point per sample step, the newest at the right edge, the quota's
// max_bytes_per_second (if any) as a dashed line; the y scale fits the peak and the quota
function shareChart(flow, f, stepS, spanS) {
  const rates = f.rates || [];
  const cap = (f.quota && f.quota.max_bytes_per_second) || 0;
  const peak = rates.reduce((m, r) => Math.max(m, r), 0);
  // the scale fits the data; the cap's line is drawn when it is within 1.5x the peak
  // (a far higher cap would flatten the data), and named in the label either way
  const showCap = cap > 0 && (peak === 0 || cap <= 1.5 * peak);
  const top = Math.max(peak, showCap ? cap : 0, 1) * 1.15;
  const slots = Math.max(1, Math.round(spanS / stepS));
  const dx = CHART_W / slots;
  const y = (r) => (4 + PLOT_H * (1 - r / top)).toFixed(1);
  const pts = rates.map((r, i) => [(CHART_W - (rates.length - 1 - i) * dx).toFixed(1), y(r)]);
  let shapes = '';
  if (pts.length) {
    const line = pts.map(([px, py], i) => `${i ? 'L' : 'M'}${px},${py}`).join('');
    const base = 4 + PLOT_H;
    const area = `M${pts[0][0]},${base}` + pts.map(([px, py]) => `L${px},${py}`).join('') + `L${CHART_W},${base}Z`;
    shapes = `<path class="area" d="${area}"/><path class="line" d="${line}"/>`;
  }
  const last = rates.length ? rates[rates.length - 1] : 0;
  return `<svg class="share-chart" data-flow="${esc(flow)}" data-points="${rates.length}" data-peak="${Math.round(peak)}"
      data-last="${Math.round(last)}" width="${CHART_W}" height="${CHART_H}" viewBox="0 0 ${CHART_W} ${CHART_H}"
      role="img" aria-label="${esc(flow)}: bytes per second, last ${duration(spanS)}">
    <title>${esc(flow)}: bytes delivered per second over the last ${duration(spanS)}, one point per ${stepS}s; peak ${rate(peak)}${cap ? `, cap ${rate(cap)}` : ''}</title>
    ${shapes}${showCap ? `<line class="quota" x1="0" x2="${CHART_W}" y1="${y(cap)}" y2="${y(cap)}"/>` : ''}
    <text x="4" y="${CHART_H - 3}">peak ${esc(rate(peak))}${cap ? ` · cap ${esc(rate(cap))}` : ''}</text>
    <text x="${CHART_W - 4}" y="${CHART_H - 3}" text-anchor="end">now</text></svg>`;
}

function quotaText(f) {
  const q = f.quota || {};
  const parts = [q.max_bytes_per_second ? `≤ ${rate(q.max_bytes_per_second)}` : 'no rate cap'];
  parts.push(q.max_jobs ? `jobs ${f.jobs}/${q.max_jobs}` : `jobs ${f.jobs}`);
  if (q.max_buffered_bytes) parts.push(`buffer ≤ ${bytes(q.max_buffered_bytes)}`);
  return parts.join(' · ');
}

function renderShares(snap) {
  const sh = snap.shares;
  const flows = sh ? Object.entries(sh.flows || {}) : [];
  $('shares-section').hidden = !sh;
  if (!sh) return;
  $('shares-span').textContent = sh.span_s % 60 === 0 ? `${sh.span_s / 60} min` : duration(sh.span_s);
  $('shares-recent').textContent = `last ${duration(RECENT_POINTS * sh.step_s)}`;
  $('shares').innerHTML = flows.length ? flows.map(([flow, f]) => {
    const rates = f.rates || [];
    const mean = (xs) => (xs.length ? xs.reduce((a, r) => a + r, 0) / xs.length : null);
    const avg = mean(rates);
    const recent = mean(rates.slice(-RECENT_POINTS)); // a batch counts when it returns: a few steps even out
    const name = f.tenant !== null && f.tenant !== undefined
      ? `<strong>${esc(f.tenant)}</strong>`
      : `<span class="muted">component</span> <strong>${esc(f.component || flow)}</strong>`;
    return `<tr data-flow="${esc(flow)}"><td>${name}</td><td class="num">${f.weight}</td>
      <td class="quota-text">${esc(quotaText(f))}</td><td>${shareChart(flow, f, sh.step_s, sh.span_s)}</td>
      <td class="num">${rate(recent)}</td><td class="num">${rate(avg)}</td>
      <td class="num">${bytes(f.bytes)}</td></tr>`;
  }).join('') : '<tr><td colspan="7" class="muted">none yet</td></tr>';
}

// the blobs a job writes back: container/name, bytes, state (writing, sealed, committed, aborted)
function outputList(outs) {
  return outs.map((o) => `<span class="output state-${esc(o.state)}" data-output="${esc(o.container)}/${esc(o.name)}">`
    + `→ ${esc(o.container)}/${esc(o.name)} ${bytes(o.bytes)} ${esc(o.state)}</span>`).join(' ');
}

function renderRecent(snap) {
  $('recent').innerHTML = snap.recent.length ? snap.recent.map((j) => `<tr data-job="${esc(j.job_id)}">
      <td><code>${esc(j.job_id)}</code></td><td>${esc(j.component)}</td>
      <td class="state-${esc(j.state)}" data-state="${esc(j.state)}">${esc(j.state)}</td>
      <td>${j.started_at && j.ended_at ? duration(j.ended_at - j.started_at) : '–'}</td>
      <td class="num">${bytes(j.bytes)}</td><td>${outputList(j.outputs || [])}</td>
      <td>${esc(j.error || '')}</td></tr>`).join('')
    : '<tr><td colspan="7" class="muted">none yet</td></tr>';
}

function render(snap) {
  $('main').hidden = false;
  $('node').textContent = snap.node ? `node ${snap.node}` : '';
  $('updated').textContent = `updated ${new Date(snap.time * 1000).toLocaleTimeString()}`
    + (snap.accepting ? '' : ' · draining');
  const b = snap.budget;
  const pct = b.limit ? (100 * b.in_use) / b.limit : 0;
  $('budget-bar').setAttribute('aria-valuenow', pct.toFixed(1));
  $('budget-bar').firstElementChild.style.width = `${pct.toFixed(1)}%`;
  $('budget-text').textContent = `${bytes(b.in_use)} of ${bytes(b.limit)} in use (${pct.toFixed(1)}%)`;
  renderRunning(snap);
  renderQueued(snap);
  renderShares(snap);
  renderComponents(snap);
  renderRecent(snap);
}

// ---- the event stream -----------------------------------------------------------------

function askToken(message) {
  stopped = true;
  setConn('down', 'token needed');
  $('token-form').hidden = false;
  $('token-error').textContent = message || '';
  $('token').focus();
}

async function connect() {
  stopped = false;
  setConn('connecting', 'connecting…');
  let resp;
  try {
    resp = await fetch('/v1/status/events?interval=1', { headers: headers(), cache: 'no-store' });
  } catch (e) {
    return retry(`cannot reach the daemon (${e.message})`);
  }
  if (resp.status === 401) return askToken(token ? 'that token was refused' : '');
  if (!resp.ok || !resp.body) return retry(`the daemon answered ${resp.status}`);
  setConn('live', 'live');
  notice('');
  retryMs = 1000;
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let end;
      while ((end = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
        if (data) render(JSON.parse(data));
      }
    }
  } catch (e) {
    return retry(`connection lost (${e.message})`);
  }
  retry('the daemon closed the connection');
}

function retry(why) {
  if (stopped) return;
  setConn('down', `offline, retrying in ${Math.round(retryMs / 1000)}s`);
  notice(why);
  setTimeout(connect, retryMs);
  retryMs = Math.min(10000, retryMs * 2);
}

$('token-form').addEventListener('submit', (e) => {
  e.preventDefault();
  token = $('token').value.trim();
  sessionStorage.setItem(TOKEN_KEY, token);
  $('token-form').hidden = true;
  connect();
});

document.addEventListener('click', async (e) => {
  const btn = e.target.closest('button[data-cancel]');
  if (!btn) return;
  const id = btn.dataset.cancel;
  btn.disabled = true;
  btn.textContent = 'Cancelling…';
  try {
    const resp = await fetch(`/v1/jobs/${encodeURIComponent(id)}`, { method: 'DELETE', headers: headers() });
    const body = await resp.json().catch(() => ({}));
    if (resp.status === 401) return askToken('that token was refused');
    if (resp.status !== 202) {
      notice(`cancel ${id}: ${body.error || resp.status}`);
      btn.disabled = false;
      btn.textContent = 'Cancel';
    } else {
      notice(`cancel of ${id} requested`);
    }
  } catch (err) {
    notice(`cancel ${id}: ${err.message}`);
    btn.disabled = false;
    btn.textContent = 'Cancel';
  }
});

connect();
