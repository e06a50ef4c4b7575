package console_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/prometheus/client_golang/prometheus"

	"gongji/console"
	"gongji/internal/tlsconf"
)

// The browser test opens every page of a demo-sized period in Debian's
// headless Chromium, driven by chromedp, and checks what a person would
// see: every chart drawn (an ECharts instance with a painted canvas), every
// figure on the page equal to the API's, no request leaving the console's
// origin, no console error, and a screenshot of each page in
// testdata/screenshots/ (git-ignored) to look at.
//
// A headless browser cannot present a client certificate without a
// profile and a certificate store, so the test puts a small reverse proxy on
// a loopback port in front of the console: the browser speaks plain HTTP to
// the proxy, and the proxy speaks mutual TLS to the console with the
// operator's (or a province's) certificate. Everything else is the real
// server: the same handlers, TLS listener and certificate check.

const (
	chromiumPath = "/usr/bin/chromium"
	// cjkFont makes the Chinese names legible in the screenshots (without
	// it Chromium draws boxes; the checks would pass all the same).
	cjkFont        = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"
	installLock    = "/tmp/gongji-chromium-install.lock"
	screenshotsDir = "testdata/screenshots"
)

var (
	chromiumOnce sync.Once
	chromiumWhy  string // why the browser test is skipped ("" = runnable)
)

// needChromium returns the Chromium binary, installing Debian's chromium
// (and a CJK font) with apt-get when it is missing and the test runs as root.
// An exclusive lock on a file in /tmp serialises test binaries of other
// packages doing the same; within this binary sync.Once does. It skips the
// test, saying why, only when Chromium cannot be had.
func needChromium(t *testing.T) string {
	t.Helper()
	chromiumOnce.Do(func() { chromiumWhy = installChromium() })
	if chromiumWhy != "" {
		t.Skip("browser test skipped: " + chromiumWhy)
	}
	return chromiumPath
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

func installChromium() string {
	if exists(chromiumPath) && exists(cjkFont) {
		return ""
	}
	if os.Geteuid() != 0 {
		if exists(chromiumPath) {
			return ""
		}
		return "Debian's chromium is not installed (apt-get install chromium fonts-wqy-microhei) and the test is not root, so it cannot install it"
	}
	f, err := os.OpenFile(installLock, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "lock " + installLock + ": " + err.Error()
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return "lock " + installLock + ": " + err.Error()
	}
	defer func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN) }()
	if exists(chromiumPath) && exists(cjkFont) {
		return "" // another test binary installed it while we waited
	}
	apt := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	pkgs := []string{"install", "-y", "-q", "--no-install-recommends", "chromium", "fonts-wqy-microhei"}
	if _, err := apt(pkgs...); err != nil {
		if out, err := apt("update", "-q"); err != nil {
			return "apt-get update failed: " + tail(out)
		}
		if out, err := apt(pkgs...); err != nil && !exists(chromiumPath) {
			return "apt-get install chromium failed: " + tail(out)
		}
	}
	if !exists(chromiumPath) {
		return "apt-get installed chromium but " + chromiumPath + " is missing"
	}
	return ""
}

func tail(s string) string {
	if len(s) > 600 {
		return "…" + s[len(s)-600:]
	}
	return s
}

// proxy serves the console on a loopback plain-HTTP port, presenting id's
// client certificate to the console (see the comment at the top).
func (e *env) proxy(id tlsconf.Identity) string {
	target, err := url.Parse("https://" + e.addr)
	if err != nil {
		e.t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = &http.Transport{TLSClientConfig: e.clientTLS(e.certs, id)}
	srv := httptest.NewServer(rp)
	e.t.Cleanup(srv.Close)
	return srv.URL
}

// browserPage is one page to open and what it must show.
type browserPage struct {
	who    string // proxy key
	path   string
	api    string   // the JSON the page's figures must equal
	charts []string // data-chart names that must be drawn
	shot   string   // screenshot file name
	// fieldsMin: the page must show at least this many figures tied to the API.
	fieldsMin int
}

// pageState is what the page reports after its charts are drawn.
type pageState struct {
	State  string `json:"state"`
	Title  string `json:"title"`
	Charts []struct {
		Name     string `json:"name"`
		Rendered bool   `json:"rendered"`
		Instance bool   `json:"instance"`
		Series   int    `json:"series"`
		Painted  int    `json:"painted"`
	} `json:"charts"`
	Fields []struct {
		Field    string `json:"field"`
		Text     string `json:"text"`
		Datetime string `json:"datetime"`
		Value    string `json:"value"` // data-value: the figure when the text is a word for it
		HasValue bool   `json:"has_value"`
	} `json:"fields"`
}

const pageStateJS = `(() => {
  const charts = [...document.querySelectorAll('[data-chart]')].map(el => {
    const inst = window.echarts ? echarts.getInstanceByDom(el) : null;
    let painted = 0;
    el.querySelectorAll('canvas').forEach(c => {
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      for (let i = 3; i < d.length; i += 4) { if (d[i] > 0) painted++; }
    });
    return {name: el.dataset.chart, rendered: el.dataset.rendered === 'true', instance: !!inst,
      series: inst ? (inst.getOption().series || []).length : 0, painted: painted};
  });
  const fields = [...document.querySelectorAll('[data-field]')].map(el => ({
    field: el.dataset.field, text: el.textContent.trim(), datetime: el.getAttribute('datetime') || '',
    value: el.dataset.value || '', has_value: el.hasAttribute('data-value')}));
  return {state: document.body.dataset.charts || '', title: document.title, charts: charts, fields: fields};
})()`

// lookup resolves a dotted path ("rows.3.net") in decoded JSON.
func lookup(v any, path string) (any, bool) {
	for _, k := range strings.Split(path, ".") {
		switch x := v.(type) {
		case map[string]any:
			var ok bool
			if v, ok = x[k]; !ok {
				return nil, false
			}
		case []any:
			i, err := strconv.Atoi(k)
			if err != nil || i < 0 || i >= len(x) {
				return nil, false
			}
			v = x[i]
		default:
			return nil, false
		}
	}
	return v, true
}

// jsonText is how a page shows a JSON value (amounts and counts without the
// thousands separators).
func jsonText(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(x)
	case nil:
		return "—"
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// checkFields compares every [data-field] of a page with the API's JSON.
func checkFields(t *testing.T, p browserPage, st pageState, api any) {
	t.Helper()
	if len(st.Fields) < p.fieldsMin {
		t.Errorf("%s: %d figures tied to the API, want at least %d", p.path, len(st.Fields), p.fieldsMin)
	}
	for _, f := range st.Fields {
		want, ok := lookup(api, f.Field)
		if !ok {
			t.Errorf("%s: field %s is not in %s", p.path, f.Field, p.api)
			continue
		}
		if f.Datetime != "" {
			a, err1 := time.Parse(time.RFC3339, f.Datetime)
			b, err2 := time.Parse(time.RFC3339, jsonText(want))
			if err1 != nil || err2 != nil || !a.Equal(b) {
				t.Errorf("%s: %s shows time %s, API has %v", p.path, f.Field, f.Datetime, want)
			}
			continue
		}
		got := strings.NewReplacer(",", "", " ", "").Replace(f.Text)
		if f.HasValue {
			got = f.Value
		}
		if got != jsonText(want) {
			t.Errorf("%s: %s shows %q, API has %q", p.path, f.Field, f.Text, jsonText(want))
		}
	}
}

func TestBrowser(t *testing.T) {
	chrome := needChromium(t)
	fx := buildFixture(t, 3000)
	e := startConsole(t, fx, console.Options{})
	feedLive(t, e)
	proxies := map[string]string{"operator": e.proxy(operator), "410000": e.proxy(provinceID("410000"))}
	apiAs := map[string]tlsconf.Identity{"operator": operator, "410000": provinceID("410000")}
	if err := os.MkdirAll(screenshotsDir, 0o755); err != nil {
		t.Fatal(err)
	}

	pages := []browserPage{
		{who: "operator", path: "/period/202610/overview", api: "/api/period/202610/overview", charts: []string{"timeline"}, shot: "overview", fieldsMin: 15},
		{who: "operator", path: "/period/202610/positions", api: "/api/period/202610/positions", charts: []string{"positions"}, shot: "positions", fieldsMin: 32 * 5},
		{who: "operator", path: "/period/202610/flows", api: "/api/period/202610/flows", charts: []string{"flowmap", "flowmatrix"}, shot: "flows", fieldsMin: 300},
		{who: "operator", path: "/period/202610/prepay", api: "/api/period/202610/prepay", charts: []string{"prepay"}, shot: "prepay", fieldsMin: 32 * 8},
		{who: "operator", path: "/period/202610/exceptions", api: "/api/period/202610/exceptions", charts: []string{"exceptions"}, shot: "exceptions", fieldsMin: 100},
		{who: "operator", path: "/period/202610/province/440000", api: "/api/period/202610/province/440000", charts: []string{"regions", "counterparties"}, shot: "province-440000", fieldsMin: 40},
		{who: "operator", path: "/period/202610/province/410000", api: "/api/period/202610/province/410000", charts: []string{"regions", "counterparties"}, shot: "province-410000", fieldsMin: 40},
		{who: "operator", path: "/live", api: "/api/live", charts: []string{"live"}, shot: "live", fieldsMin: 10},
		{who: "operator", path: "/period/202611/overview", api: "/api/period/202611/overview", charts: []string{"timeline"}, shot: "overview-open", fieldsMin: 5},
		{who: "operator", path: "/period/202611/positions", api: "/api/period/202611/positions", shot: "positions-open"},
		{who: "410000", path: "/period/202610/province/410000", api: "/api/period/202610/province/410000", charts: []string{"regions", "counterparties"}, shot: "as-410000-province", fieldsMin: 40},
		{who: "410000", path: "/period/202610/positions", api: "/api/period/202610/positions", charts: []string{"positions"}, shot: "as-410000-positions", fieldsMin: 5},
		{who: "410000", path: "/period/202610/flows", api: "/api/period/202610/flows", charts: []string{"flowmap", "flowmatrix"}, shot: "as-410000-flows", fieldsMin: 10},
	}

	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chrome),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		// This machine has no internet: without these Chromium tries
		// outside hosts (component updates, sync, QUIC probes).
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("metrics-recording-only", true),
		chromedp.Flag("safebrowsing-disable-auto-update", true),
		chromedp.Flag("no-pings", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1440, 1000),
	)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(alloc)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start Chromium: %v", err)
	}

	// Everything the browser requests and logs, across all pages.
	var (
		mu       sync.Mutex
		requests []string
		messages []string
		current  string // the page being opened, for the messages
		wg       sync.WaitGroup
	)
	lctx, stopListening := context.WithCancel(ctx)
	reqs := chromedp.Events(lctx, network.RequestWillBeSent)
	msgs := chromedp.Console(lctx)
	wg.Add(2)
	go func() {
		defer wg.Done()
		for ev, err := range reqs {
			if err != nil {
				return
			}
			mu.Lock()
			requests = append(requests, ev.Request.URL)
			mu.Unlock()
		}
	}()
	go func() {
		defer wg.Done()
		for m, err := range msgs {
			if err != nil {
				return
			}
			mu.Lock()
			if m.Type == chromedp.ConsoleError || m.IsException() || m.Type == chromedp.ConsoleWarning {
				where := fmt.Sprintf("%s:%d", m.URL, m.Line)
				if m.Stack != nil {
					for i, f := range m.Stack.CallFrames {
						if i == 14 {
							break
						}
						where += fmt.Sprintf(" < %s@%s:%d", f.FunctionName, f.URL[strings.LastIndexByte(f.URL, '/')+1:], f.LineNumber)
					}
				}
				messages = append(messages, fmt.Sprintf("on %s: %s (%s)", current, m.String(), where))
			}
			mu.Unlock()
		}
	}()

	for _, p := range pages {
		started := time.Now()
		base := proxies[p.who]
		mu.Lock()
		current = p.path + " as " + p.who
		mu.Unlock()
		if err := chromedp.Do(ctx, chromedp.Navigate(base+p.path)); err != nil {
			t.Fatalf("%s: navigate: %v", p.path, err)
		}
		pctx, pcancel := context.WithTimeout(ctx, 60*time.Second)
		state, err := chromedp.Run(pctx, chromedp.Poll[string](`document.body && document.body.dataset.charts`))
		pcancel()
		if err != nil || state != "ready" {
			t.Errorf("%s (as %s): charts %q, %v", p.path, p.who, state, err)
		}
		st, err := chromedp.Run(ctx, chromedp.Evaluate[pageState](pageStateJS))
		if err != nil {
			t.Fatalf("%s: page state: %v", p.path, err)
		}
		drawn := map[string]bool{}
		for _, c := range st.Charts {
			if !c.Rendered || !c.Instance || c.Series == 0 || c.Painted < 500 {
				t.Errorf("%s: chart %s not drawn: %+v", p.path, c.Name, c)
			}
			drawn[c.Name] = true
		}
		for _, want := range p.charts {
			if !drawn[want] {
				t.Errorf("%s: chart %s missing (drawn: %v)", p.path, want, drawn)
			}
		}
		if len(st.Charts) != len(p.charts) {
			t.Errorf("%s: %d charts, want %d", p.path, len(st.Charts), len(p.charts))
		}
		var api any
		e.getJSON(apiAs[p.who], p.api, http.StatusOK, &api)
		checkFields(t, p, st, api)
		// The whole page in one viewport: a capture beyond the viewport
		// draws scrolled boxes with sticky headers badly.
		h, err := chromedp.Run(ctx, chromedp.Evaluate[int64](`document.documentElement.scrollHeight`))
		if err != nil {
			t.Fatal(err)
		}
		if err := chromedp.Do(ctx, chromedp.EmulateViewport(1440, max(h, 900))); err != nil {
			t.Fatal(err)
		}
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("%s: screenshot: %v", p.path, err)
		}
		if err := os.WriteFile(filepath.Join(screenshotsDir, p.shot+".png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := chromedp.Do(ctx, chromedp.EmulateViewport(1440, 900)); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s as %s: %q, %d charts, %d figures checked, screenshot %s.png (%.1fs)", p.path, p.who, st.Title,
			len(st.Charts), len(st.Fields), p.shot, time.Since(started).Seconds())
	}

	// A province certificate on a national page gets the refusal page.
	mu.Lock()
	current = "/period/202610/overview as 410000"
	mu.Unlock()
	if err := chromedp.Do(ctx, chromedp.Navigate(proxies["410000"]+"/period/202610/overview")); err != nil {
		t.Fatal(err)
	}
	msg, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById('error-message').textContent`))
	if err != nil || !strings.Contains(msg, "operators only") {
		t.Errorf("overview as 410000: %q, %v", msg, err)
	}

	stopListening()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	origins := map[string]bool{}
	for _, base := range proxies {
		origins[base] = true
	}
	for _, u := range requests {
		if strings.HasPrefix(u, "data:") || u == "about:blank" {
			continue
		}
		pu, err := url.Parse(u)
		if err != nil || !origins[pu.Scheme+"://"+pu.Host] {
			t.Errorf("the page requested %s: outside the console's origin", u)
		}
	}
	if len(requests) < len(pages)*4 {
		t.Errorf("only %d requests seen for %d pages: is the network listener working?", len(requests), len(pages))
	}
	for _, m := range messages {
		// The refusal page itself is a 403, which Chromium logs as a failed
		// resource load; anything else is a defect.
		if strings.Contains(m, "403") && strings.Contains(m, "/period/202610/overview as 410000") {
			continue
		}
		t.Errorf("browser console: %s", m)
	}
	t.Logf("%d requests, all to the console's origin; screenshots in console/%s", len(requests), screenshotsDir)
}

// Metric definitions the live page reads, registered as clearingapi does
// (same names and labels).
type liveMetrics struct {
	records *prometheus.CounterVec
	calls   *prometheus.CounterVec
	route   *prometheus.HistogramVec
}

func newLiveMetrics(reg prometheus.Registerer) liveMetrics {
	m := liveMetrics{
		records: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gongji_report_records_total", Help: "test"}, []string{"province", "outcome"}),
		calls:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gongji_switch_calls_total", Help: "test"}, []string{"op", "outcome"}),
		route: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "gongji_switch_route_seconds", Help: "test",
			Buckets: []float64{.001, .01, .1, 1}}, []string{"op"}),
	}
	reg.MustRegister(m.records, m.calls, m.route)
	return m
}

// feedLive takes three samples 2 s apart with known increments: 100
// records/s stored (60 from 410000, 40 from 110000), 25 authorisations/s
// approved, 5 refused, 1 unavailable, routing 4 ms on average.
func feedLive(t testing.TB, e *env) time.Time {
	t.Helper()
	m := newLiveMetrics(e.reg)
	t0 := time.Date(2026, time.November, 8, 12, 0, 0, 0, time.UTC)
	e.srv.SampleLive(t0)
	for i := 1; i <= 2; i++ {
		m.records.WithLabelValues("410000", "stored").Add(120)
		m.records.WithLabelValues("110000", "stored").Add(80)
		m.records.WithLabelValues("110000", "duplicate").Add(4)
		m.calls.WithLabelValues("AUTHORIZE", "approved").Add(50)
		m.calls.WithLabelValues("AUTHORIZE", "refused").Add(10)
		m.calls.WithLabelValues("AUTHORIZE", "unavailable").Add(2)
		m.calls.WithLabelValues("REVERSAL", "approved").Add(6)
		for range 62 {
			m.route.WithLabelValues("AUTHORIZE").Observe(0.004)
		}
		e.srv.SampleLive(t0.Add(time.Duration(2*i) * time.Second))
	}
	return t0
}
