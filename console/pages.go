package console

import (
	"bytes"
	"embed"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"gongji/money"
	"gongji/region"
)

// embedded holds the console's templates and static files. assets/vendor
// holds only a README in the repository; `make console-assets` adds the
// third-party files (see assets/vendor/README.md).
//
//go:embed templates assets
var embedded embed.FS

// vendorFiles are the third-party files every page needs.
var vendorFiles = []string{"vendor/echarts.min.js", "vendor/china.js"}

// missingVendor lists the vendor files assets lacks.
func missingVendor(assets fs.FS) []string {
	var out []string
	for _, f := range vendorFiles {
		if st, err := fs.Stat(assets, f); err != nil || st.Size() == 0 {
			out = append(out, "console/assets/"+f)
		}
	}
	return out
}

// static serves the embedded assets (no directory listings).
func (s *Server) static(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(r.URL.Path, "/static/")
	if name == "" || strings.HasSuffix(name, "/") || !fs.ValidPath(name) {
		s.fail(w, r, httpErr(http.StatusNotFound, "no such file", nil))
		return
	}
	b, err := fs.ReadFile(s.assets, name)
	if err != nil {
		msg := "no such file"
		if strings.HasPrefix(name, "vendor/") {
			msg = "this clearing binary was built without the console's third-party files: run make build (it runs make console-assets)"
		}
		s.fail(w, r, httpErr(http.StatusNotFound, msg, nil))
		return
	}
	switch {
	case strings.HasSuffix(name, ".js"):
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
	case strings.HasSuffix(name, ".css"):
		w.Header().Set("Content-Type", "text/css; charset=utf-8")
	case strings.HasSuffix(name, ".svg"):
		w.Header().Set("Content-Type", "image/svg+xml")
	default:
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	}
	w.Header().Set("Cache-Control", "private, max-age=300")
	http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(b))
}

// pageSet is the parsed templates, one per page.
type pageSet struct{ t map[string]*template.Template }

var pageTemplates = []string{"overview", "positions", "flows", "prepay", "exceptions", "province", "live", "error"}

func parsePages() (*pageSet, error) {
	ps := &pageSet{t: map[string]*template.Template{}}
	for _, name := range pageTemplates {
		t, err := template.New("layout.html").Funcs(templateFuncs).ParseFS(embedded, "templates/layout.html", "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("console: template %s: %w", name, err)
		}
		ps.t[name] = t
	}
	return ps, nil
}

// navItem is one entry of the page menu.
type navItem struct {
	Key, Title, ZH, Href string
	Active               bool
}

// pageData is what the layout template renders.
type pageData struct {
	Title    string
	Key      string // the active menu entry
	Operator bool
	Who      string // the caller, for the header
	Periods  []PeriodInfo
	Period   string // setlym of the page ("" on live)
	Nav      []navItem
	API      string // the JSON endpoint the page's charts read
	Map      bool   // the page draws the China map (loads china.js)
	Data     any
	// Download links (a settled period): national for an operator, the
	// caller's province bundle for a province.
	Downloads bool
	Scope     string
	Provinces []Label // the province switcher (operator)
	Status    int
	Message   string
	Missing   []string
}

func (s *Server) newPage(r *http.Request, key, title string, setlym string) *pageData {
	v := viewerOf(r)
	d := &pageData{Title: title, Key: key, Operator: v.operator(), Period: setlym}
	if v.operator() {
		d.Who = "operator 运营"
		d.Provinces = allProvinces()
	} else {
		d.Who = region.ProvinceName(v.id.Province) + " " + v.id.Province
		d.Scope = v.id.Province
	}
	if ps, err := s.periods(r.Context()); err == nil {
		d.Periods = ps.Periods
		if d.Period == "" {
			d.Period = ps.Default
		}
	}
	for _, p := range d.Periods {
		if p.Setlym == d.Period && p.Settled {
			d.Downloads = true
		}
	}
	if d.Period != "" {
		for _, k := range periodPages {
			if k.national && !v.operator() {
				continue
			}
			d.Nav = append(d.Nav, navItem{Key: k.key, Title: k.title, ZH: k.zh, Href: "/period/" + d.Period + "/" + k.key, Active: key == k.key})
		}
		if !v.operator() {
			d.Nav = append(d.Nav, navItem{Key: "province", Title: "My province", ZH: "本省",
				Href: "/period/" + d.Period + "/province/" + v.id.Province, Active: key == "province"})
		}
	}
	if v.operator() {
		d.Nav = append(d.Nav, navItem{Key: "live", Title: "Live", ZH: "实时", Href: "/live", Active: key == "live"})
	}
	return d
}

// render writes a page; with vendor files missing every page is the error
// page instead (503), since no chart could draw.
func (s *Server) render(w http.ResponseWriter, r *http.Request, name string, d *pageData) {
	if len(s.missing) > 0 {
		s.renderError(w, r, http.StatusServiceUnavailable,
			"This clearing binary was built without the console's chart library. Rebuild it with make build "+
				"(it runs make console-assets: npm ci in web/ and a copy into console/assets/vendor/).")
		return
	}
	var buf bytes.Buffer
	if err := s.pages.t[name].Execute(&buf, d); err != nil {
		s.o.Log.Error("console template", zap.String("page", name), zap.Error(err))
		http.Error(w, "internal error (logged)", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	status := d.Status
	if status == 0 {
		status = http.StatusOK
	}
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

func (s *Server) renderError(w http.ResponseWriter, r *http.Request, status int, msg string) {
	d := &pageData{Title: http.StatusText(status), Key: "error", Status: status, Message: msg, Missing: s.missing}
	if _, ok := r.Context().Value(viewerKey{}).(viewer); ok {
		d = s.newPage(r, "error", http.StatusText(status), r.PathValue("ym"))
		d.Status, d.Message, d.Missing = status, msg, s.missing
	}
	var buf bytes.Buffer
	if err := s.pages.t["error"].Execute(&buf, d); err != nil {
		s.o.Log.Error("console template", zap.String("page", "error"), zap.Error(err))
		http.Error(w, msg, status)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

func (s *Server) periodPage(w http.ResponseWriter, r *http.Request) {
	k, p, data, err := s.buildPage(r, r.PathValue("page"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	d := s.newPage(r, k.key, k.title+" "+k.zh+" · "+p.String(), p.String())
	d.API, d.Data, d.Map = "/api/period/"+p.String()+"/"+k.key, data, k.key == "flows"
	s.render(w, r, k.key, d)
}

func (s *Server) provincePage(w http.ResponseWriter, r *http.Request) {
	p, err := parsePeriodArg(r.PathValue("ym"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	code := r.PathValue("code")
	data, err := s.provinceView(r.Context(), viewerOf(r), p, code)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	d := s.newPage(r, "province", data.Province.Name+" "+code+" · "+p.String(), p.String())
	d.API, d.Data = "/api/period/"+p.String()+"/province/"+code, data
	s.render(w, r, "province", d)
}

func (s *Server) livePage(w http.ResponseWriter, r *http.Request) {
	if !viewerOf(r).operator() {
		s.fail(w, r, httpErr(http.StatusForbidden, "the live page shows the whole service's traffic: operators only", nil))
		return
	}
	d := s.newPage(r, "live", "Live 实时", "")
	d.API, d.Data = "/api/live", s.live.view()
	s.render(w, r, "live", d)
}

// ---- template functions ----

var templateFuncs = template.FuncMap{
	"yuan":  fmtYuan,
	"yuanp": func(y *money.Yuan) string { return fmtYuanPtr(y) },
	"count": fmtCount,
	// rate writes a float as encoding/json does (rates are rounded to 0.01).
	"rate": func(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) },
	"ts":   fmtTime,
	"tsp": func(t *time.Time) string {
		if t == nil {
			return "—"
		}
		return fmtTime(*t)
	},
	"rfc": func(t time.Time) string { return t.In(region.Shanghai).Format(time.RFC3339) },
	"rfcp": func(t *time.Time) string {
		if t == nil {
			return ""
		}
		return t.In(region.Shanghai).Format(time.RFC3339)
	},
	"sign": func(y money.Yuan) string {
		switch {
		case y.IsNegative():
			return "neg"
		case y.IsPositive():
			return "pos"
		}
		return "zero"
	},
	"stateClass": func(s string) string { return "state-" + strings.ToLower(s) },
	"lower":      strings.ToLower,
}

// fmtYuan writes an amount with thousands separators and two decimals,
// straight from its exact decimal text (no float): -1234567.80 →
// "-1,234,567.80".
func fmtYuan(y money.Yuan) string { return groupDigits(y.String()) }

func fmtYuanPtr(y *money.Yuan) string {
	if y == nil {
		return "—"
	}
	return fmtYuan(*y)
}

func fmtCount(n int64) string { return groupDigits(strconv.FormatInt(n, 10)) }

func groupDigits(s string) string {
	sign := ""
	if strings.HasPrefix(s, "-") {
		sign, s = "-", s[1:]
	}
	intPart, frac := s, ""
	if i := strings.IndexByte(s, '.'); i >= 0 {
		intPart, frac = s[:i], s[i:]
	}
	var b strings.Builder
	b.WriteString(sign)
	for i, c := range intPart {
		if i > 0 && (len(intPart)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	b.WriteString(frac)
	return b.String()
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.In(region.Shanghai).Format("2006-01-02 15:04")
}
