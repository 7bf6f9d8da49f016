// kernal dashboard: history from the REST API, then live from /v1/events.
(() => {
  'use strict';
  const $ = (id) => document.getElementById(id);
  const state = {
    // `/?model=NAME` opens that model.
    model: new URLSearchParams(window.location.search).get('model'),
    historyOf: null,          // the model `versions`, `fed` and `spec` belong to
    versions: new Map(),      // version -> {acc, loss, n, stale, by}: `by` names the evaluator
    fed: new Map(),           // version -> {sum, w}: trainers' own evaluations, example-weighted
    spec: new Map(),          // specialty -> Map(version -> accuracy)
    charts: {},
    ws: null,
    backoff: 500,
    events: 0,
    redrawQueued: false,
    refreshQueued: false,
    lastRefresh: 0,
  };
  window.kernalDash = state;

  const pct = (v) => (v == null ? '–' : (v * 100).toFixed(1) + '%');
  // Labels of percentage axis ticks (fractions in `splits`): as few decimals
  // as show each tick as itself. A fixed 0 decimals printed "10%", "10%",
  // "9%" when accuracy moved within a point (a fresh model).
  const pctTicks = (u, splits) => {
    const xs = splits.map((x) => x * 100);
    let step = Infinity;
    for (let i = 1; i < xs.length; i++) step = Math.min(step, Math.abs(xs[i] - xs[i - 1]));
    for (let d = 0; d < 6; d++) {
      const labels = xs.map((x) => x.toFixed(d));
      const exact = labels.every((l, i) => !(Math.abs(Number(l) - xs[i]) > step * 1e-3));
      if (exact && new Set(labels).size === labels.length) return labels.map((l) => l + '%');
    }
    return xs.map((x) => x.toFixed(6) + '%');
  };
  state.pctTicks = pctTicks;
  const num = (v, d = 3) => (v == null ? '–' : Number(v).toFixed(d));
  const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
  const when = (ts) => (ts ? new Date(ts).toLocaleString() : '–');
  const time = (ts) => (ts ? new Date(ts).toLocaleTimeString() : '');

  async function getJSON(url) {
    const r = await fetch(url, { cache: 'no-store' });
    if (!r.ok) throw new Error(`${url}: ${r.status}`);
    return r.json();
  }

  function waitingText(m) {
    const w = m.waiting;
    if (!w) return '–';
    if (w.folding) return 'aggregating a new version…';
    const parts = [];
    const members = w.members ?? w.buffered;
    if (w.more_updates > 0) parts.push(`${w.more_updates} more trainer${w.more_updates === 1 ? '' : 's'} (${members}/${w.min_updates} in this round)`);
    if (w.round_timeout_in_secs != null && w.buffered > 0) parts.push(`round timeout in ${Math.ceil(w.round_timeout_in_secs)} s`);
    if (w.buffered === 0) return `the first update of version ${m.version + 1} (${m.connected_trainers} trainer${m.connected_trainers === 1 ? '' : 's'} connected)`;
    return parts.join(', or ');
  }

  async function loadStatus() {
    const s = await getJSON('/v1/status');
    $('kernal-version').textContent = 'v' + s.kernal_version;
    $('up-since').textContent = when(s.started_at);
    $('online').textContent = s.connected_trainers;
    $('ups').textContent = num(s.metrics.updates_per_sec, 1);
    const sel = $('model-select');
    const names = s.models.map((m) => m.name);
    if (Array.from(sel.options, (o) => o.value).join('\n') !== names.join('\n')) {
      sel.innerHTML = names.map((n) => `<option>${esc(n)}</option>`).join('');
    }
    if (!names.includes(state.model)) state.model = names.includes('kernel') ? 'kernel' : names.includes('digits') ? 'digits' : names[0] || null;
    if (sel.value !== state.model) sel.value = state.model;
    const m = s.models.find((x) => x.name === state.model);
    state.status = m || null;
    if (m) {
      $('version').textContent = m.version;
      $('waiting').textContent = waitingText(m);
    }
    showAccuracy();
    return s;
  }

  // The header's accuracy: the selected model's own newest hub evaluation
  // (from its history, or its status), never another model's.
  function showAccuracy() {
    let acc = null;
    let ver = null;
    if (state.historyOf === state.model) {
      for (const [v, x] of state.versions) {
        if (x.acc != null && (ver == null || v > ver)) { ver = v; acc = x.acc; }
      }
    }
    const m = state.status && state.status.name === state.model ? state.status : null;
    const last = m && m.last_metrics && m.last_metrics.eval ? m.last_metrics.eval.accuracy : null;
    if (acc == null && last != null) {
      acc = last; ver = m.version;
      // The status knows an evaluation the event stream did not bring (the
      // page subscribed after it was made): the chart shows it too.
      const y = state.historyOf === state.model ? state.versions.get(ver) : null;
      if (y && y.acc == null) {
        state.versions.set(ver, { ...y, acc: last, by: m.last_metrics.eval.evaluator || null });
        redraw();
      }
    }
    const x = ver != null ? state.versions.get(ver) : null;
    const by = (x && x.by) || (m && m.last_metrics && m.last_metrics.eval && m.last_metrics.eval.evaluator) || null;
    const el = $('accuracy');
    // A language model's figure is bits per byte (kernel.js charts it); a
    // new version is scored after its commit, so the last figure stays.
    const bpb = m && m.last_metrics && m.last_metrics.eval ? m.last_metrics.eval.bits_per_byte : null;
    if (bpb != null) state.bpb = { model: state.model, bpb, version: m.version };
    const b = state.bpb && state.bpb.model === state.model ? state.bpb : null;
    if (acc == null && b) { el.textContent = `${b.bpb.toFixed(3)} bits/byte`; el.title = `${state.model} version ${b.version}: held-out code`; return; }
    el.textContent = acc == null ? 'no evaluation yet' : pct(acc);
    el.title = acc == null ? `no version of ${state.model || 'this model'} was evaluated by the hub yet` : `${state.model} version ${ver}${by ? ', scored by evaluator ' + by : ''}`;
  }

  async function loadHistory() {
    const model = state.model;
    if (!model) return;
    const [v, e] = await Promise.all([
      getJSON(`/v1/models/${encodeURIComponent(model)}/versions?limit=5000`),
      getJSON(`/v1/models/${encodeURIComponent(model)}/evaluations?limit=20000`),
    ]);
    if (state.model !== model) return; // another model was chosen meanwhile
    state.historyOf = model;
    state.versions.clear();
    for (const x of v.versions) {
      const m = x.metrics || {};
      state.versions.set(x.version, {
        acc: m.eval ? m.eval.accuracy : null,
        loss: m.eval ? m.eval.loss : null,
        by: m.eval && m.eval.evaluator ? m.eval.evaluator : null,
        n: x.num_updates,
        stale: m.aggregation ? m.aggregation.mean_staleness : null,
      });
    }
    state.fed.clear();
    for (const x of e.evaluations) addFed(x.version, x.global_accuracy, x.num_examples);
    state.spec.clear();
    for (const x of e.evaluations) addSpec(x.specialty, x.version, x.specialty_accuracy);
    showAccuracy();
    redraw();
  }

  function addFed(version, acc, n) {
    if (acc == null) return;
    const w = Math.max(1, n || 1);
    const f = state.fed.get(version) || { sum: 0, w: 0 };
    f.sum += acc * w;
    f.w += w;
    state.fed.set(version, f);
  }

  function addSpec(specialty, version, acc) {
    if (acc == null) return;
    if (!state.spec.has(specialty)) state.spec.set(specialty, new Map());
    state.spec.get(specialty).set(version, acc);
  }

  async function loadTrainers() {
    const t = await getJSON('/v1/trainers');
    const rows = t.trainers.map((x) => `<tr data-trainer="${esc(x.name)}">
      <td>${esc(x.name)}</td><td>${esc(x.specialty)}</td>
      <td class="${x.online ? 'online' : 'offline'}">${x.revoked ? 'revoked' : x.online ? 'online' : 'offline'}</td>
      <td>${x.online ? 'since ' + time(x.connected_since) : when(x.last_seen)}</td>
      <td>${x.updates_accepted}</td><td>${x.updates_refused}</td>
      <td class="refusal">${esc(x.last_refusal || '')}</td>
      <td>${num(x.last_loss)}</td><td>${pct(x.specialty_accuracy)}</td></tr>`);
    $('trainers').tBodies[0].innerHTML = rows.join('');
  }

  async function loadRuns() {
    const r = await getJSON('/v1/harness/runs?limit=20');
    $('runs').tBodies[0].innerHTML = r.runs.map((x) => `<tr>
      <td>${esc(x.scenario)}</td><td class="${x.passed ? 'pass' : 'fail'}">${x.passed ? 'PASS' : 'FAIL'}</td>
      <td>${pct(x.collective_accuracy)}</td><td>${when(x.finished_at)}</td></tr>`).join('');
  }

  function describe(e) {
    switch (e.type) {
      case 'trainer_joined': return [`${e.trainer} (${e.specialty}) joined ${e.model}${e.registered ? ' — registered' : ''}`, ''];
      case 'trainer_left': return [`${e.trainer} left ${e.model} (${e.reason})`, ''];
      case 'version': return [`${e.model} version ${e.version} from ${e.num_updates} updates${e.accuracy != null ? ', accuracy ' + pct(e.accuracy) : ''}`, 'version'];
      case 'update_refused': return [`refused update ${e.update_id || ''} from ${e.trainer}: ${e.code} — ${e.message}`, 'refused'];
      case 'harness_run': return [`harness ${e.scenario}: ${e.passed ? 'PASS' : 'FAIL'}${e.collective_accuracy != null ? ', ' + pct(e.collective_accuracy) : ''}`, e.passed ? 'version' : 'refused'];
      case 'harness_run_deleted': return [`harness run ${e.id} deleted`, ''];
      case 'hub_evaluation': return [`${e.model} version ${e.version} scores ${pct(e.accuracy)} on its evaluation set`, 'version'];
      case 'evaluator_report': return [`${e.model} version ${e.version} scored by evaluator ${e.evaluator}: ${e.accuracy != null ? pct(e.accuracy) : e.bits_per_byte != null ? num(e.bits_per_byte) + ' bits/byte' : 'loss ' + num(e.loss)}${e.current ? '' : ' (the hub\'s own evaluation is shown)'}`, 'version'];
      case 'normalisation_frozen': return [e.trainers ? `${e.model}: input normalisation frozen from ${e.trainers} trainer(s), ${e.count} rows` : `${e.model}: no statistics reported, no normalisation`, ''];
      case 'updates_summary': return [`${e.accepted} updates accepted`, ''];
      case 'hub_stopping': return ['the hub is shutting down', 'refused'];
      default: return [null, ''];
    }
  }

  function addEvent(e) {
    const [text, cls] = describe(e);
    if (!text) return;
    const li = document.createElement('li');
    li.className = cls;
    li.dataset.type = e.type;
    if (e.code) li.dataset.code = e.code;
    li.innerHTML = `<span class="ts">${time(e.ts)}</span>${esc(text)}`;
    const list = $('events');
    list.insertBefore(li, list.firstChild);
    while (list.children.length > 300) list.removeChild(list.lastChild);
  }

  function makeChart(el, series, axes) {
    const width = Math.max(el.clientWidth, 280);
    const dark = window.matchMedia && window.matchMedia('(prefers-color-scheme: dark)').matches;
    const stroke = dark ? '#c8cfdd' : '#3a4253';
    const grid = { stroke: dark ? '#2c3340' : '#e2e5ea' };
    return new uPlot({
      width, height: 240,
      scales: { x: { time: false } },
      series: [{ label: 'version' }, ...series],
      axes: [{ stroke, grid, label: 'version' }, ...axes.map((a) => ({ stroke, grid, ...a }))],
      legend: { live: false },
    }, [[]].concat(series.map(() => [])), el);
  }

  const palette = ['#2f6fdf', '#e0732e', '#1a8f4c', '#b03aa8', '#c4352b', '#1a9aa0', '#8a6d1b', '#5b5fc7'];

  function ensureCharts() {
    if (!state.charts.acc) {
      state.charts.acc = makeChart($('chart-acc'), [
        { label: 'hub evaluation', stroke: palette[0], width: 2, scale: 'acc', spanGaps: true },
        { label: 'loss', stroke: palette[1], width: 1.5, scale: 'loss', spanGaps: true },
        { label: "trainers' own evaluation (pooled)", stroke: palette[2], width: 1.5, dash: [6, 4], scale: 'acc', spanGaps: true },
      ], [{ scale: 'acc', values: pctTicks }, { scale: 'loss', side: 1, grid: { show: false } }]);
      state.charts.updates = makeChart($('chart-updates'), [
        { label: 'updates', stroke: palette[2], width: 2, scale: 'n' },
        { label: 'mean staleness', stroke: palette[3], width: 1.5, scale: 's' },
      ], [{ scale: 'n' }, { scale: 's', side: 1, grid: { show: false } }]);
    }
    const specs = [...state.spec.keys()].sort();
    const have = state.charts.specNames || [];
    if (!state.charts.spec || specs.join() !== have.join()) {
      if (state.charts.spec) state.charts.spec.destroy();
      $('chart-spec').innerHTML = '';
      state.charts.spec = makeChart($('chart-spec'), specs.map((s, i) => ({
        label: s, stroke: palette[i % palette.length], width: 2, scale: 'acc', spanGaps: true,
      })), [{ scale: 'acc', values: pctTicks }]);
      state.charts.specNames = specs;
    }
  }

  function redraw() {
    if (state.redrawQueued) return;
    state.redrawQueued = true;
    requestAnimationFrame(() => {
      state.redrawQueued = false;
      ensureCharts();
      const xs = [...state.versions.keys()].sort((a, b) => a - b);
      const v = xs.map((x) => state.versions.get(x));
      const fed = xs.map((x) => { const f = state.fed.get(x); return f ? f.sum / f.w : null; });
      state.charts.acc.setData([xs, v.map((p) => p.acc), v.map((p) => p.loss), fed]);
      const ux = xs.filter((x) => x > 0);
      state.charts.updates.setData([ux, ux.map((x) => state.versions.get(x).n), ux.map((x) => state.versions.get(x).stale)]);
      const specs = state.charts.specNames;
      const sx = [...new Set([].concat(...specs.map((s) => [...state.spec.get(s).keys()])))].sort((a, b) => a - b);
      state.charts.spec.setData([sx, ...specs.map((s) => sx.map((x) => state.spec.get(s).get(x) ?? null))]);
    });
  }

  // Table and header refreshes triggered by events, at most once a second.
  function scheduleRefresh() {
    if (state.refreshQueued) return;
    state.refreshQueued = true;
    const wait = Math.max(0, 1000 - (Date.now() - state.lastRefresh));
    setTimeout(async () => {
      state.refreshQueued = false;
      state.lastRefresh = Date.now();
      try { await Promise.all([loadStatus(), loadTrainers()]); } catch (e) { /* shown by the feed state */ }
    }, wait);
  }

  function handle(e) {
    state.events++;
    if (e.type === 'version' && e.model === state.model) {
      const prev = state.versions.get(e.version) || {};
      state.versions.set(e.version, { acc: e.accuracy, loss: e.loss, n: e.num_updates, stale: e.mean_staleness, ...(e.accuracy == null ? { acc: prev.acc } : {}) });
      $('version').textContent = e.version;
      showAccuracy();
      redraw();
    } else if (e.type === 'hub_evaluation' && e.model === state.model) {
      const prev = state.versions.get(e.version) || {};
      state.versions.set(e.version, { ...prev, acc: e.accuracy, loss: e.loss });
      showAccuracy();
      redraw();
    } else if (e.type === 'evaluator_report' && e.current && e.model === state.model) {
      // An evaluator's report is the version's hub evaluation: charted alike.
      const prev = state.versions.get(e.version) || {};
      state.versions.set(e.version, { ...prev, acc: e.accuracy, loss: e.loss, by: e.evaluator });
      showAccuracy();
      redraw();
    } else if (e.type === 'evaluation' && e.model === state.model) {
      addSpec(e.specialty, e.version, e.specialty_accuracy);
      addFed(e.version, e.global_accuracy, e.num_examples);
      redraw();
    } else if (e.type === 'harness_run' || e.type === 'harness_run_deleted') {
      loadRuns().catch(() => {});
    }
    if (e.type !== 'hello' && e.type !== 'evaluation') scheduleRefresh();
    addEvent(e);
  }

  function connect() {
    const proto = location.protocol === 'https:' ? 'wss' : 'ws';
    const ws = new WebSocket(`${proto}://${location.host}/v1/events`);
    state.ws = ws;
    ws.onopen = async () => {
      state.backoff = 500;
      $('hub-state').textContent = 'live';
      $('hub-state').className = 'value online';
      // After a hub restart, catch up on what happened meanwhile.
      try { await loadStatus(); await Promise.all([loadHistory(), loadTrainers(), loadRuns()]); } catch (e) { /* retried on next event */ }
    };
    ws.onmessage = (m) => { try { handle(JSON.parse(m.data)); } catch (e) { /* ignore a bad frame */ } };
    ws.onclose = () => {
      $('hub-state').textContent = 'reconnecting…';
      $('hub-state').className = 'value offline';
      setTimeout(connect, state.backoff);
      state.backoff = Math.min(state.backoff * 2, 10000);
    };
  }

  async function start() {
    $('model-select').addEventListener('change', (ev) => {
      state.model = ev.target.value;
      state.historyOf = null;
      state.versions.clear();
      state.fed.clear();
      state.spec.clear();
      window.history.replaceState(null, '', `?model=${encodeURIComponent(state.model)}`);
      showAccuracy();
      redraw();
      loadStatus().then(loadHistory).catch(() => {});
    });
    try {
      const s = await loadStatus();
      for (const e of (s.metrics.recent_events || []).slice(-100)) addEvent(e);
      await Promise.all([loadHistory(), loadTrainers(), loadRuns()]);
    } catch (e) {
      $('hub-state').textContent = 'unreachable';
    }
    connect();
    // The "waiting for" countdown ticks between events.
    setInterval(() => { loadStatus().catch(() => {}); }, 2000);
    window.addEventListener('resize', () => {
      for (const k of ['acc', 'spec', 'updates']) {
        const c = state.charts[k];
        if (c) c.setSize({ width: Math.max(c.root.parentElement.clientWidth, 280), height: 240 });
      }
    });
  }
  start();
})();
