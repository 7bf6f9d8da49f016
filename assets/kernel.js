// kernal dashboard, language models: bits per byte per specialty (and on
// code of subsystems no trainer has) by version, and the newest scored
// version completing kernel code. Kept apart from dashboard.js: it only
// reads which model is selected (window.kernalDash.model) and the REST API.
//
// Cost: every 2 s one GET of the model; the version list is fetched again
// only when the model's newest hub evaluation changed. The completion is
// the hub's own (one sampled completion of bounded length per scored
// version, computed with its bits-per-byte figures, off the hub's actor).
(() => {
  'use strict';
  const $ = (id) => document.getElementById(id);
  const k = {
    model: null,       // the model shown
    isKernel: false,
    key: null,         // what the version list was last fetched for
    names: [],         // series names of the chart
    xs: [],            // versions with figures
    series: {},        // name -> bits per byte per version (aligned with xs)
    completion: null,  // {version, prompt, text}
    chart: null,
  };
  window.kernalKernel = k;
  const palette = ['#2f6fdf', '#e0732e', '#1a8f4c', '#b03aa8', '#c4352b', '#1a9aa0'];
  const enc = encodeURIComponent;
  const selected = () => (window.kernalDash && window.kernalDash.model)
    || new URLSearchParams(window.location.search).get('model');

  async function getJSON(url) {
    const r = await fetch(url, { cache: 'no-store' });
    if (!r.ok) throw new Error(`${url}: ${r.status}`);
    return r.json();
  }

  // A language model has no accuracy: its panels replace the two
  // accuracy charts (which stay for classifiers).
  function show(on) {
    for (const id of ['kernel-bpb-card', 'kernel-completion-card']) $(id).hidden = !on;
    for (const id of ['chart-acc', 'chart-spec']) {
      const card = $(id) && $(id).closest('section');
      if (card) card.hidden = on;
    }
  }

  function draw() {
    const el = $('chart-bpb');
    if (!k.chart || k.chart.__names !== k.names.join()) {
      if (k.chart) k.chart.destroy();
      el.innerHTML = '';
      const dark = window.matchMedia && window.matchMedia('(prefers-color-scheme: dark)').matches;
      const stroke = dark ? '#c8cfdd' : '#3a4253';
      const grid = { stroke: dark ? '#2c3340' : '#e2e5ea' };
      k.chart = new uPlot({
        width: Math.max(el.clientWidth, 280), height: 240,
        scales: { x: { time: false } },
        series: [{ label: 'version' }, ...k.names.map((n, i) => ({
          label: n, stroke: palette[i % palette.length], width: n === 'unseen subsystems' ? 1.5 : 2,
          dash: n === 'unseen subsystems' ? [6, 4] : undefined, spanGaps: true,
        }))],
        axes: [{ stroke, grid, label: 'version' }, { stroke, grid, label: 'bits per byte', values: (u, s) => s.map((v) => v.toFixed(2)) }],
        legend: { live: false },
      }, [[]].concat(k.names.map(() => [])), el);
      k.chart.__names = k.names.join();
    }
    k.chart.setData([k.xs, ...k.names.map((n) => k.series[n])]);
    const c = k.completion;
    $('kernel-prompt').textContent = c ? c.prompt : '';
    $('kernel-completion').textContent = c ? c.text : 'no scored version yet';
    $('kernel-completion-version').textContent = c ? `version ${c.version}` : '';
  }

  async function tick() {
    const model = selected();
    if (!model) return;
    if (model !== k.model) {
      Object.assign(k, { model, key: null, xs: [], series: {}, names: [], completion: null });
    }
    const m = await getJSON(`/v1/models/${enc(model)}`);
    if (selected() !== model) return;
    k.isKernel = (m.tensors || []).some((t) => t.name === 'tok_emb.weight');
    show(k.isKernel);
    if (!k.isKernel) return;
    const ev = (m.last_metrics && m.last_metrics.eval) || {};
    const key = `${m.version}/${ev.bits_per_byte}`;
    if (key === k.key) return;
    const v = await getJSON(`/v1/models/${enc(model)}/versions?limit=5000`);
    if (selected() !== model) return;
    k.key = key;
    const rows = v.versions
      .filter((x) => x.metrics && x.metrics.eval && x.metrics.eval.per_specialty)
      .sort((a, b) => a.version - b.version);
    const specs = [...new Set([].concat(...rows.map((x) => Object.keys(x.metrics.eval.per_specialty))))].sort();
    k.names = [...specs, 'unseen subsystems'];
    k.xs = rows.map((x) => x.version);
    k.series = {};
    for (const s of specs) k.series[s] = rows.map((x) => x.metrics.eval.per_specialty[s] ?? null);
    k.series['unseen subsystems'] = rows.map((x) => x.metrics.eval.unseen_bits_per_byte ?? null);
    const last = [...rows].reverse().find((x) => x.metrics.eval.completion);
    k.completion = last ? { version: last.version, ...last.metrics.eval.completion } : null;
    const newest = rows[rows.length - 1];
    $('kernel-bpb-now').textContent = newest
      ? `version ${newest.version}: ${newest.metrics.eval.bits_per_byte.toFixed(3)} bits per byte on held-out kernel code`
      : 'no version scored yet';
    draw();
  }

  function loop() {
    tick().catch(() => {}).finally(() => setTimeout(loop, 2000));
  }
  window.addEventListener('resize', () => {
    if (k.chart && !$('kernel-bpb-card').hidden) {
      k.chart.setSize({ width: Math.max($('chart-bpb').clientWidth, 280), height: 240 });
    }
  });
  loop();
})();
