// gongji operator console: draws the page's charts with Apache ECharts from
// the page's own JSON endpoint (body[data-api]). The tables are rendered by
// the server from the same figures; charts convert the decimal strings to
// numbers for drawing only, and every tooltip shows the exact string.
//
// Test hooks: window.gongjiData (the JSON the charts were drawn from),
// window.gongjiCharts (chart name -> ECharts instance), and
// document.body.dataset.charts = "ready" | "error" once every chart is drawn.
(function () {
  'use strict';

  var COLORS = {
    receiver: '#2b6cb0', // net > 0
    payer: '#c05621',    // net < 0
    even: '#a0aec0',
    neutral: '#4a5568',
    deposit: '#90a4c0',
    drawn: '#2b6cb0',
    outstanding: '#c53030',
    warn: '#d69e2e',
    done: '#2b6cb0',
    current: '#d69e2e',
    pending: '#cbd5e0'
  };
  var FONT = 'system-ui, -apple-system, "Segoe UI", "PingFang SC", "Microsoft YaHei", "Noto Sans CJK SC", "WenQuanYi Micro Hei", sans-serif';
  // 新疆生产建设兵团 has no outline of its own on a map of provinces: its
  // flows are drawn from Shihezi (石河子), seat of its 8th division.
  var EXTRA_CENTRES = { '660000': [86.04, 44.31] };

  window.gongjiCharts = {};
  window.gongjiData = null;

  function yuanNum(s) { return Number(s); } // drawing only; tables show the exact string
  function label(l) { return l.name + ' ' + l.code; }
  function groupDigits(s) {
    var neg = s.charAt(0) === '-';
    if (neg) { s = s.slice(1); }
    var dot = s.indexOf('.');
    var ip = dot >= 0 ? s.slice(0, dot) : s;
    var fr = dot >= 0 ? s.slice(dot) : '';
    var out = '';
    for (var i = 0; i < ip.length; i++) {
      if (i > 0 && (ip.length - i) % 3 === 0) { out += ','; }
      out += ip.charAt(i);
    }
    return (neg ? '-' : '') + out + fr;
  }
  function axisYuan(v) {
    var a = Math.abs(v);
    if (a >= 1e8) { return (v / 1e8).toFixed(1) + '亿'; }
    if (a >= 1e4) { return (v / 1e4).toFixed(1) + '万'; }
    return String(v);
  }
  function base() {
    return { animation: false, textStyle: { fontFamily: FONT }, tooltip: { confine: true } };
  }
  function signColor(s) { return yuanNum(s) < 0 ? COLORS.payer : (yuanNum(s) > 0 ? COLORS.receiver : COLORS.even); }

  var builders = {
    timeline: function (d) {
      var cats = d.phases.map(function (p) { return p.name; });
      var now = Date.parse(d.now);
      var data = d.phases.map(function (p, i) {
        var end = p.end ? Date.parse(p.end) : Math.max(now, Date.parse(p.start) + 3600e3);
        return { value: [i, Date.parse(p.start), end, p.state], itemStyle: { color: COLORS[p.state] || COLORS.pending, opacity: p.end ? 1 : 0.6 } };
      });
      var o = base();
      o.tooltip.formatter = function (x) {
        var p = d.phases[x.value[0]];
        return p.name + '<br>' + p.start.replace('T', ' ').slice(0, 16) + ' → ' + (p.end ? p.end.replace('T', ' ').slice(0, 16) : 'open') + '<br>' + p.state;
      };
      o.grid = { left: 170, right: 30, top: 20, bottom: 40 };
      o.xAxis = { type: 'time', axisLabel: { hideOverlap: true } };
      o.yAxis = { type: 'category', data: cats, inverse: true };
      o.series = [{
        type: 'custom', encode: { x: [1, 2], y: 0 }, data: data,
        renderItem: function (params, api) {
          var y = api.value(0);
          var a = api.coord([api.value(1), y]);
          var b = api.coord([api.value(2), y]);
          var h = api.size([0, 1])[1] * 0.5;
          var rect = echarts.graphic.clipRectByRect(
            { x: a[0], y: a[1] - h / 2, width: Math.max(b[0] - a[0], 3), height: h },
            { x: params.coordSys.x, y: params.coordSys.y, width: params.coordSys.width, height: params.coordSys.height });
          return rect && { type: 'rect', shape: rect, style: { fill: api.visual('color'), opacity: api.visual('opacity') } };
        },
        markLine: { symbol: 'none', silent: true, label: { formatter: 'now' }, lineStyle: { color: COLORS.neutral, type: 'dashed' }, data: [{ xAxis: now }] }
      }];
      return o;
    },

    positions: function (d) {
      var rows = d.rows.slice().reverse(); // largest receiver on top
      var o = base();
      o.tooltip.trigger = 'axis';
      o.tooltip.axisPointer = { type: 'shadow' };
      o.tooltip.formatter = function (xs) {
        var r = rows[xs[0].dataIndex];
        return label(r.province) + '<br>receivable ' + groupDigits(r.receivable) + '<br>payable ' + groupDigits(r.payable) + '<br><b>net ' + groupDigits(r.net) + '</b> (' + r.role + ')';
      };
      o.grid = { left: 120, right: 40, top: 10, bottom: 30 };
      o.xAxis = { type: 'value', axisLabel: { formatter: axisYuan } };
      o.yAxis = { type: 'category', data: rows.map(function (r) { return label(r.province); }), axisLabel: { fontSize: 11 } };
      o.series = [{ type: 'bar', barMaxWidth: 18, data: rows.map(function (r) { return { value: yuanNum(r.net), itemStyle: { color: signColor(r.net) } }; }) }];
      return o;
    },

    flowmatrix: function (d) {
      var names = d.provinces.map(function (p) { return p.name; });
      var idx = {};
      d.provinces.forEach(function (p, i) { idx[p.code] = i; });
      var max = 0, min = 0;
      var data = d.cells.map(function (c) {
        var v = yuanNum(c.amount);
        max = Math.max(max, v); min = Math.min(min, v);
        return { value: [idx[c.payee.code], idx[c.payer.code], v], cell: c };
      });
      var o = base();
      o.tooltip.formatter = function (x) {
        var c = x.data.cell;
        return label(c.payer) + ' → ' + label(c.payee) + '<br><b>' + groupDigits(c.amount) + '</b> 元';
      };
      o.grid = { left: 110, right: 110, top: 30, bottom: 110 };
      o.xAxis = { type: 'category', data: names, name: 'payee 收方', nameLocation: 'middle', nameGap: 90, axisLabel: { rotate: 60, fontSize: 11, interval: 0 }, splitArea: { show: true } };
      o.yAxis = { type: 'category', data: names, name: 'payer 付方', nameLocation: 'start', inverse: true, axisLabel: { fontSize: 11, interval: 0 }, splitArea: { show: true } };
      o.visualMap = { min: min, max: max || 1, calculable: true, orient: 'vertical', right: 10, top: 'middle', itemHeight: 240,
        inRange: { color: ['#ebf4ff', '#90cdf4', '#3182ce', '#1a365d'] }, formatter: function (v) { return axisYuan(Math.round(v)); } };
      o.series = [{ type: 'heatmap', data: data, emphasis: { itemStyle: { borderColor: '#1a202c', borderWidth: 1 } } }];
      return o;
    },

    flowmap: function (d) {
      var map = echarts.getMap && echarts.getMap('china');
      if (!map) { throw new Error('the China map (vendor/china.js) is not loaded'); }
      var features = (map.geoJSON || map.geoJson).features;
      var centre = {};
      features.forEach(function (f) { if (f.properties && f.properties.cp) { centre[String(f.id)] = f.properties.cp; } });
      Object.keys(EXTRA_CENTRES).forEach(function (k) { centre[k] = EXTRA_CENTRES[k]; });
      var cells = d.cells.filter(function (c) { return yuanNum(c.amount) > 0 && centre[c.payer.code] && centre[c.payee.code]; }).slice(0, d.lines_max);
      var max = cells.reduce(function (m, c) { return Math.max(m, yuanNum(c.amount)); }, 1);
      var min = cells.reduce(function (m, c) { return Math.min(m, yuanNum(c.amount)); }, max);
      var span = Math.max(max - min, 1);
      var seen = {};
      var points = [];
      cells.forEach(function (c) {
        [c.payer, c.payee].forEach(function (p) {
          if (!seen[p.code]) { seen[p.code] = true; points.push({ name: label(p), value: centre[p.code].concat([0]) }); }
        });
      });
      var o = base();
      o.tooltip.formatter = function (x) {
        if (x.seriesType === 'lines') { var c = x.data.cell; return label(c.payer) + ' → ' + label(c.payee) + '<br><b>' + groupDigits(c.amount) + '</b> 元'; }
        return x.name;
      };
      o.geo = { map: 'china', roam: false, layoutCenter: ['50%', '50%'], layoutSize: '112%', silent: true,
        itemStyle: { areaColor: '#edf2f7', borderColor: '#a0aec0' } };
      o.series = [
        { type: 'lines', coordinateSystem: 'geo', zlevel: 1, symbol: ['none', 'arrow'], symbolSize: 7,
          data: cells.map(function (c) {
            return { coords: [centre[c.payer.code], centre[c.payee.code]], cell: c,
              lineStyle: { width: 0.5 + 3.5 * (yuanNum(c.amount) - min) / span, opacity: 0.25 + 0.55 * (yuanNum(c.amount) - min) / span,
                curveness: 0.2, color: COLORS.receiver } };
          }) },
        { type: 'scatter', coordinateSystem: 'geo', zlevel: 2, symbolSize: 6, itemStyle: { color: COLORS.neutral }, data: points }
      ];
      return o;
    },

    prepay: function (d) {
      // Provinces with a deposit, a draw or a shortfall, in code order.
      var rows = d.rows.filter(function (r) {
        return yuanNum(r.deposit_before) > 0 || yuanNum(r.drawn) > 0 || yuanNum(r.outstanding) > 0;
      });
      var o = base();
      o.legend = { top: 0 };
      o.tooltip.trigger = 'axis';
      o.tooltip.axisPointer = { type: 'shadow' };
      o.tooltip.formatter = function (xs) {
        var r = rows[xs[0].dataIndex];
        return label(r.province) + '<br>deposit before ' + groupDigits(r.deposit_before) + '<br>drawn ' + groupDigits(r.drawn) +
          (r.draw_pct ? ' (' + r.draw_pct + ' %)' : '') + '<br>outstanding ' + groupDigits(r.outstanding) + (r.warning ? '<br><b>warning</b>' : '');
      };
      o.grid = { left: 70, right: 60, top: 50, bottom: 90 };
      o.xAxis = { type: 'category', data: rows.map(function (r) { return label(r.province); }), axisLabel: { rotate: 50, fontSize: 11, interval: 0 } };
      o.yAxis = [{ type: 'value', axisLabel: { formatter: axisYuan } },
        { type: 'value', max: 100, min: 0, axisLabel: { formatter: '{value} %' }, splitLine: { show: false } }];
      o.series = [
        { name: 'deposit before 期初', type: 'bar', itemStyle: { color: COLORS.deposit }, data: rows.map(function (r) { return yuanNum(r.deposit_before); }) },
        { name: 'drawn 动用', type: 'bar', itemStyle: { color: COLORS.drawn }, data: rows.map(function (r) { return yuanNum(r.drawn); }) },
        { name: 'outstanding 缺口', type: 'bar', itemStyle: { color: COLORS.outstanding }, data: rows.map(function (r) { return yuanNum(r.outstanding); }) },
        { name: 'drawn % of deposit', type: 'scatter', yAxisIndex: 1, symbol: 'diamond', symbolSize: 10,
          itemStyle: { color: COLORS.warn, borderColor: '#744210' },
          data: rows.map(function (r) { return r.draw_pct ? Number(r.draw_pct) : null; }),
          markLine: { symbol: 'none', label: { formatter: 'warning ' + d.threshold_pct + ' %', position: 'insideEndTop' },
            lineStyle: { color: COLORS.warn, type: 'dashed' }, data: [{ yAxis: Number(d.threshold_pct) }] } }
      ];
      return o;
    },

    exceptions: function (d) {
      var rows = d.by_province;
      var kinds = [['one_sided', 'ONE_SIDED', '#c05621'], ['amount_differs', 'AMOUNT_DIFFERS', '#c53030'], ['field_differs', 'FIELD_DIFFERS', '#d69e2e'],
        ['rejected', 'REJECTED', '#805ad5'], ['late', 'late 迟报', '#3182ce'], ['disputes', 'disputed 争议', '#2f855a']];
      var o = base();
      o.legend = { top: 0 };
      o.tooltip.trigger = 'axis';
      o.tooltip.axisPointer = { type: 'shadow' };
      o.grid = { left: 60, right: 20, top: 40, bottom: 90 };
      o.xAxis = { type: 'category', data: rows.map(function (r) { return label(r.province); }), axisLabel: { rotate: 60, fontSize: 11, interval: 0 } };
      o.yAxis = { type: 'value', minInterval: 1 };
      o.series = kinds.map(function (k) {
        return { name: k[1], type: 'bar', stack: 'all', itemStyle: { color: k[2] }, data: rows.map(function (r) { return r[k[0]]; }) };
      });
      return o;
    },

    regions: function (d) {
      var rows = d.regions.slice().sort(function (a, b) { return yuanNum(a.net) - yuanNum(b.net); });
      var o = base();
      o.tooltip.trigger = 'axis';
      o.tooltip.axisPointer = { type: 'shadow' };
      o.tooltip.formatter = function (xs) {
        var r = rows[xs[0].dataIndex];
        return label(r.region) + '<br>receivable ' + groupDigits(r.receivable) + '<br>payable ' + groupDigits(r.payable) + '<br><b>net ' + groupDigits(r.net) + '</b>';
      };
      o.grid = { left: 150, right: 40, top: 10, bottom: 30 };
      o.xAxis = { type: 'value', axisLabel: { formatter: axisYuan } };
      o.yAxis = { type: 'category', data: rows.map(function (r) { return label(r.region); }), axisLabel: { fontSize: 11, interval: 0 } };
      o.series = [{ type: 'bar', barMaxWidth: 16, data: rows.map(function (r) { return { value: yuanNum(r.net), itemStyle: { color: signColor(r.net) } }; }) }];
      return o;
    },

    counterparties: function (d) {
      var rows = d.counterparties;
      var o = base();
      o.legend = { top: 0 };
      o.tooltip.trigger = 'axis';
      o.tooltip.axisPointer = { type: 'shadow' };
      o.tooltip.formatter = function (xs) {
        var r = rows[xs[0].dataIndex];
        return label(r.province) + '<br>pays ' + groupDigits(r.pays) + '<br>receives ' + groupDigits(r.receives) + '<br><b>net ' + groupDigits(r.net) + '</b>';
      };
      o.grid = { left: 120, right: 40, top: 40, bottom: 30 };
      o.yAxis = { type: 'category', inverse: true, data: rows.map(function (r) { return label(r.province); }), axisLabel: { fontSize: 11, interval: 0 } };
      o.xAxis = { type: 'value', axisLabel: { formatter: axisYuan } };
      o.series = [
        { name: 'pays 付出', type: 'bar', itemStyle: { color: COLORS.payer }, data: rows.map(function (r) { return yuanNum(r.pays); }) },
        { name: 'receives 收入', type: 'bar', itemStyle: { color: COLORS.receiver }, data: rows.map(function (r) { return yuanNum(r.receives); }) }
      ];
      return o;
    },

    live: function (d) {
      var pts = d.points;
      function s(name, key, color) {
        return { name: name, type: 'line', showSymbol: false, itemStyle: { color: color }, data: pts.map(function (p) { return [Date.parse(p.at), p[key]]; }) };
      }
      var o = base();
      o.legend = { top: 0 };
      o.tooltip.trigger = 'axis';
      o.grid = { left: 60, right: 60, top: 40, bottom: 30 };
      o.xAxis = { type: 'time' };
      o.yAxis = [{ type: 'value', name: '/s' }, { type: 'value', name: 'ms', splitLine: { show: false } }];
      var route = s('routing ms', 'route_ms', '#718096');
      route.yAxisIndex = 1;
      route.lineStyle = { type: 'dashed' };
      o.series = [s('ingest 入库', 'ingest_per_s', COLORS.receiver), s('authorised 授权', 'authorised_per_s', '#2f855a'),
        s('refused 拒绝', 'refused_per_s', COLORS.payer), s('unavailable/error', 'failed_per_s', COLORS.outstanding), route];
      return o;
    }
  };

  function draw(el, data) {
    var kind = el.getAttribute('data-chart');
    var build = builders[kind];
    if (!build) { throw new Error('unknown chart ' + kind); }
    var chart = echarts.getInstanceByDom(el) || echarts.init(el, null, { renderer: 'canvas' });
    chart.setOption(build(data), true);
    window.gongjiCharts[kind] = chart;
    el.setAttribute('data-rendered', 'true');
  }

  // resizeSoon follows the window's size once it settles. A chart whose box
  // is empty at that moment (a window being resized or captured) keeps its
  // size: a map cannot be laid out in an empty box.
  var resizeTimer = 0;
  function resizeSoon() {
    window.clearTimeout(resizeTimer);
    resizeTimer = window.setTimeout(function () {
      Object.keys(window.gongjiCharts).forEach(function (k) {
        var c = window.gongjiCharts[k];
        var el = c.getDom();
        if (el.clientWidth > 0 && el.clientHeight > 0 && (el.clientWidth !== c.getWidth() || el.clientHeight !== c.getHeight())) {
          c.resize();
        }
      });
    }, 150);
  }

  function get(obj, path) {
    return path.split('.').reduce(function (o, k) { return o == null ? undefined : o[k]; }, obj);
  }

  // Live page: the cards and chart follow the sampler.
  function pollLive(url, seconds) {
    window.setTimeout(function () {
      fetch(url, { credentials: 'same-origin', cache: 'no-store' }).then(function (r) {
        if (!r.ok) { throw new Error(url + ': HTTP ' + r.status); }
        return r.json();
      }).then(function (d) {
        window.gongjiData = d;
        document.querySelectorAll('[data-live]').forEach(function (el) {
          var v = get(d, el.getAttribute('data-live'));
          el.textContent = v == null ? '—' : String(v);
        });
        var waiting = document.getElementById('live-waiting');
        if (waiting && d.available) { waiting.remove(); }
        document.querySelectorAll('[data-chart="live"]').forEach(function (el) { draw(el, d); });
        pollLive(url, seconds);
      }).catch(function (e) {
        console.warn('live: ' + e.message + '; retrying');
        pollLive(url, seconds * 2);
      });
    }, seconds * 1000);
  }

  function start() {
    ['period', 'province-switch'].forEach(function (id) {
      var sel = document.getElementById(id);
      if (sel) { sel.addEventListener('change', function () { sel.form.submit(); }); }
    });
    var charts = document.querySelectorAll('[data-chart]');
    var api = document.body.getAttribute('data-api');
    if (!charts.length || !api) { document.body.setAttribute('data-charts', 'ready'); return; }
    if (typeof echarts === 'undefined') {
      document.body.setAttribute('data-charts', 'error');
      throw new Error('ECharts is not loaded');
    }
    fetch(api, { credentials: 'same-origin', cache: 'no-store' }).then(function (r) {
      if (!r.ok) { throw new Error(api + ': HTTP ' + r.status); }
      return r.json();
    }).then(function (d) {
      window.gongjiData = d;
      charts.forEach(function (el) { draw(el, d); });
      window.addEventListener('resize', resizeSoon);
      document.body.setAttribute('data-charts', 'ready');
      if (document.body.getAttribute('data-page') === 'live') {
        pollLive(api, Math.max(1, d.interval_seconds || 2));
      }
    }).catch(function (e) {
      document.body.setAttribute('data-charts', 'error');
      charts.forEach(function (el) { el.textContent = 'Chart not available: ' + e.message; el.classList.add('chart-error'); });
      console.error(e);
    });
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', start);
  } else {
    start();
  }
}());
