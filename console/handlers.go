package console

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"

	"go.uber.org/zap"

	"gongji/clearingdb"
	"gongji/internal/tlsconf"
	"gongji/region"
)

// viewer is the caller, from its verified client certificate.
type viewer struct{ id tlsconf.Identity }

func (v viewer) operator() bool { return v.id.Kind == tlsconf.Operator }

// filter is the province filter of the queries: "" for an operator (every
// province), the caller's own code for a province.
func (v viewer) filter() string {
	if v.operator() {
		return ""
	}
	return v.id.Province
}

// mayRead: an operator reads every province, a province only itself.
func (v viewer) mayRead(code string) bool { return v.operator() || v.id.Province == code }

func (v viewer) String() string { return v.id.String() }

type viewerKey struct{}

func viewerOf(r *http.Request) viewer { return r.Context().Value(viewerKey{}).(viewer) }

// pageKind is one of the period pages.
type pageKind struct {
	key, title, zh string
	// national: a page about every province at once; a province
	// certificate is refused (403) rather than shown a filtered copy.
	national bool
	build    func(s *Server, ctx context.Context, v viewer, p region.Period) (any, error)
}

var periodPages = []pageKind{
	{key: "overview", title: "Overview", zh: "概览", national: true,
		build: func(s *Server, ctx context.Context, _ viewer, p region.Period) (any, error) {
			return s.overview(ctx, p)
		}},
	{key: "positions", title: "Net positions", zh: "头寸",
		build: func(s *Server, ctx context.Context, v viewer, p region.Period) (any, error) {
			return s.positions(ctx, v, p)
		}},
	{key: "flows", title: "Flows", zh: "资金流向",
		build: func(s *Server, ctx context.Context, v viewer, p region.Period) (any, error) {
			return s.flows(ctx, v, p)
		}},
	{key: "prepay", title: "Prepayment", zh: "预付金",
		build: func(s *Server, ctx context.Context, v viewer, p region.Period) (any, error) {
			return s.prepay(ctx, v, p)
		}},
	{key: "exceptions", title: "Exceptions", zh: "异常",
		build: func(s *Server, ctx context.Context, v viewer, p region.Period) (any, error) {
			return s.exceptions(ctx, v, p)
		}},
}

func findPage(key string) (pageKind, bool) {
	for _, k := range periodPages {
		if k.key == key {
			return k, true
		}
	}
	return pageKind{}, false
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /static/", s.static)
	mux.HandleFunc("GET /{$}", s.index)
	mux.HandleFunc("GET /go", s.choose)
	mux.HandleFunc("GET /period/{ym}/{page}", s.periodPage)
	mux.HandleFunc("GET /period/{ym}/province/{code}", s.provincePage)
	mux.HandleFunc("GET /period/{ym}/download/{file}", s.download)
	mux.HandleFunc("GET /live", s.livePage)
	mux.HandleFunc("GET /api/periods", s.apiPeriods)
	mux.HandleFunc("GET /api/period/{ym}/{page}", s.apiPeriodPage)
	mux.HandleFunc("GET /api/period/{ym}/province/{code}", s.apiProvince)
	mux.HandleFunc("GET /api/live", s.apiLive)
	mux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) {
		s.fail(w, r, httpErr(http.StatusNotFound, "no such page", nil))
	})
	return s.identify(mux)
}

// identify is the authentication middleware: every request must carry a
// verified gongji client certificate (the TLS listener already refused any
// other); operators and provinces pass, anyone else (a clearing-service
// certificate) is 403. It also sets the security headers and the request's
// deadline.
func (s *Server) identify(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "+
			"connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Strict-Transport-Security", "max-age=31536000")
		if r.TLS == nil {
			s.fail(w, r, httpErr(http.StatusUnauthorized, "a verified gongji client certificate is required", nil))
			return
		}
		id, err := tlsconf.IdentityFromState(*r.TLS)
		if err != nil {
			s.fail(w, r, httpErr(http.StatusUnauthorized, "a verified gongji client certificate is required", nil))
			return
		}
		if id.Kind != tlsconf.Operator && id.Kind != tlsconf.Province {
			s.fail(w, r, httpErr(http.StatusForbidden, id.String()+" may not use the console: operator and province certificates only", nil))
			return
		}
		ctx := context.WithValue(r.Context(), viewerKey{}, viewer{id: id})
		timeout := requestTimeout
		if strings.Contains(r.URL.Path, "/download/") {
			timeout = downloadTimeout
		}
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// httpError is an error with the status and the message the caller sees.
type httpError struct {
	status int
	msg    string
	err    error // logged for 5xx
}

func (e *httpError) Error() string { return e.msg }

func httpErr(status int, msg string, err error) *httpError {
	return &httpError{status: status, msg: msg, err: err}
}

// classify maps a builder's error to what the caller sees.
func classify(err error) *httpError {
	var he *httpError
	switch {
	case errors.As(err, &he):
		return he
	case errors.Is(err, errForbidden):
		return httpErr(http.StatusForbidden, "this certificate may not see that: a province sees its own province only", nil)
	case errors.Is(err, errBadPeriod):
		return httpErr(http.StatusBadRequest, "the period must be a month written YYYYMM, e.g. 202610", nil)
	case errors.Is(err, errNoProvince):
		return httpErr(http.StatusNotFound, "no such provincial unit (a 6-digit code XX0000 from regions.csv)", nil)
	case errors.Is(err, errNoPage):
		return httpErr(http.StatusNotFound, "no such page", nil)
	case errors.Is(err, clearingdb.ErrNotFound):
		return httpErr(http.StatusNotFound, "no such period: nothing was ever cleared in it", nil)
	case errors.Is(err, clearingdb.ErrPeriodNotFrozen), errors.Is(err, clearingdb.ErrExportNotSettled):
		return httpErr(http.StatusConflict, "the period is not settled yet: its export bundle and workbook exist once it is closed and settled", nil)
	case errors.Is(err, clearingdb.ErrExportNoJournalHead):
		return httpErr(http.StatusConflict, "the clearing journal was empty when the period closed: there is nothing to export", nil)
	case errors.Is(err, context.DeadlineExceeded):
		return httpErr(http.StatusServiceUnavailable, "the database did not answer in time; try again", err)
	}
	return httpErr(http.StatusInternalServerError, "internal error (logged)", err)
}

// fail answers an error: JSON under /api/, an error page elsewhere.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	he := classify(err)
	if he.status >= 500 {
		s.o.Log.Error("console request failed", zap.String("path", r.URL.Path), zap.Int("status", he.status), zap.Error(he.err))
	}
	w.Header().Set("Cache-Control", "no-store")
	if strings.HasPrefix(r.URL.Path, "/api/") {
		writeJSON(w, he.status, map[string]any{"error": he.msg, "status": he.status})
		return
	}
	s.renderError(w, r, he.status, he.msg)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, `{"error":"internal error"}`, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(b)
	_, _ = w.Write([]byte("\n"))
}

func parsePeriodArg(s string) (region.Period, error) {
	p, err := region.ParsePeriod(s)
	if err != nil {
		return region.Period{}, errBadPeriod
	}
	return p, nil
}

// buildPage runs the builder of a period page for the caller, refusing a
// national page to a province.
func (s *Server) buildPage(r *http.Request, key string) (pageKind, region.Period, any, error) {
	k, ok := findPage(key)
	if !ok {
		return k, region.Period{}, nil, errNoPage
	}
	p, err := parsePeriodArg(r.PathValue("ym"))
	if err != nil {
		return k, p, nil, err
	}
	v := viewerOf(r)
	if k.national && !v.operator() {
		return k, p, nil, httpErr(http.StatusForbidden,
			"the "+k.title+" page shows every province: operators only. A province certificate sees its own province page.", nil)
	}
	data, err := k.build(s, r.Context(), v, p)
	return k, p, data, err
}

func (s *Server) apiPeriodPage(w http.ResponseWriter, r *http.Request) {
	_, _, data, err := s.buildPage(r, r.PathValue("page"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, data)
}

func (s *Server) apiProvince(w http.ResponseWriter, r *http.Request) {
	p, err := parsePeriodArg(r.PathValue("ym"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	data, err := s.provinceView(r.Context(), viewerOf(r), p, r.PathValue("code"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, data)
}

func (s *Server) apiPeriods(w http.ResponseWriter, r *http.Request) {
	data, err := s.periods(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, data)
}

func (s *Server) apiLive(w http.ResponseWriter, r *http.Request) {
	if !viewerOf(r).operator() {
		s.fail(w, r, httpErr(http.StatusForbidden, "the live page shows the whole service's traffic: operators only", nil))
		return
	}
	writeJSON(w, http.StatusOK, s.live.view())
}

// index opens the default period: its overview for an operator, the
// caller's own province page for a province. With no period at all it shows
// an empty overview page (operator) or a notice.
func (s *Server) index(w http.ResponseWriter, r *http.Request) {
	ps, err := s.periods(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if ps.Default == "" {
		s.fail(w, r, httpErr(http.StatusNotFound, "no clearing period exists yet: the first report of a month creates it", nil))
		return
	}
	http.Redirect(w, r, s.homeOf(viewerOf(r), ps.Default), http.StatusSeeOther)
}

func (s *Server) homeOf(v viewer, setlym string) string {
	if v.operator() {
		return "/period/" + setlym + "/overview"
	}
	return "/period/" + setlym + "/province/" + v.id.Province
}

// choose is the period chooser's form target (it works without script):
// /go?period=YYYYMM&page=KEY[&province=CODE].
func (s *Server) choose(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	p, err := parsePeriodArg(q.Get("period"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	page := q.Get("page")
	target := ""
	switch {
	case page == "province":
		code := q.Get("province")
		if _, err := region.ParseProvince(code); err != nil {
			s.fail(w, r, errNoProvince)
			return
		}
		target = "/period/" + p.String() + "/province/" + url.PathEscape(code)
	default:
		if _, ok := findPage(page); !ok {
			target = s.homeOf(viewerOf(r), p.String())
			break
		}
		target = "/period/" + p.String() + "/" + page
	}
	http.Redirect(w, r, target, http.StatusSeeOther)
}
