package console

import (
	"context"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"

	"gongji/region"
)

// The live page: ingest and authorisation rates of the running service,
// from the same Prometheus registry its /metrics endpoint serves (the
// counters clearingapi.NewMetrics registers). A sampler gathers the registry
// every LiveInterval and keeps the last LiveSamplesMax samples; a rate is the
// difference of a counter between two consecutive samples divided by the
// time between them. Counters, rates and times are not money: float64 is
// fine here.

// Metric names read by the sampler (clearingapi/server.go).
const (
	metricReportRecords = "gongji_report_records_total" // labels province, outcome
	metricSwitchCalls   = "gongji_switch_calls_total"   // labels op, outcome
	metricSwitchRoute   = "gongji_switch_route_seconds" // histogram, label op
	opAuthorize         = "AUTHORIZE"
	opReversal          = "REVERSAL"
)

// liveSample is the counters at one instant.
type liveSample struct {
	at                       time.Time
	stored, dups, rejected   float64
	byProvince               map[string]float64 // stored records by reporting province
	approved, refused, other float64            // AUTHORIZE calls by outcome (other: unavailable, error)
	reversals                float64            // REVERSAL calls, any outcome
	routeSum, routeCount     float64            // AUTHORIZE routing time
}

type liveSampler struct {
	g       prometheus.Gatherer
	mu      sync.Mutex
	samples []liveSample // oldest first, at most LiveSamplesMax
	lastErr string
}

func newLiveSampler(g prometheus.Gatherer) *liveSampler { return &liveSampler{g: g} }

// run samples every interval until ctx is done.
func (l *liveSampler) run(ctx context.Context, interval time.Duration, log *zap.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	l.sample(time.Now(), log)
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			l.sample(now, log)
		}
	}
}

// sample gathers the registry once.
func (l *liveSampler) sample(now time.Time, log *zap.Logger) {
	if l.g == nil {
		return
	}
	mfs, err := l.g.Gather()
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		// Gather returns what it could along with the error; a broken
		// collector elsewhere must not blank the page.
		l.lastErr = err.Error()
		if log != nil {
			log.Warn("console: gathering metrics", zap.Error(err))
		}
	} else {
		l.lastErr = ""
	}
	s := liveSample{at: now, byProvince: map[string]float64{}}
	for _, mf := range mfs {
		switch mf.GetName() {
		case metricReportRecords:
			for _, m := range mf.GetMetric() {
				v := m.GetCounter().GetValue()
				switch label(m, "outcome") {
				case "stored":
					s.stored += v
					s.byProvince[label(m, "province")] += v
				case "duplicate":
					s.dups += v
				case "rejected":
					s.rejected += v
				}
			}
		case metricSwitchCalls:
			for _, m := range mf.GetMetric() {
				v := m.GetCounter().GetValue()
				switch op, out := label(m, "op"), label(m, "outcome"); {
				case op == opReversal:
					s.reversals += v
				case op != opAuthorize:
				case out == "approved":
					s.approved += v
				case out == "refused":
					s.refused += v
				default:
					s.other += v
				}
			}
		case metricSwitchRoute:
			for _, m := range mf.GetMetric() {
				if label(m, "op") == opAuthorize {
					s.routeSum += m.GetHistogram().GetSampleSum()
					s.routeCount += float64(m.GetHistogram().GetSampleCount())
				}
			}
		}
	}
	if n := len(l.samples); n > 0 && !now.After(l.samples[n-1].at) {
		return // a clock that did not move: no rate can come of it
	}
	l.samples = append(l.samples, s)
	if len(l.samples) > LiveSamplesMax {
		l.samples = append(l.samples[:0], l.samples[len(l.samples)-LiveSamplesMax:]...)
	}
}

func label(m *dto.Metric, name string) string {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == name {
			return lp.GetValue()
		}
	}
	return ""
}

// Live is the live page's data.
type Live struct {
	// Available: the sampler has a registry and at least two samples, so
	// there are rates.
	Available       bool        `json:"available"`
	IntervalSeconds float64     `json:"interval_seconds"`
	Points          []LivePoint `json:"points"` // oldest first
	Latest          *LivePoint  `json:"latest,omitempty"`
	Totals          LiveTotals  `json:"totals"`
	// ByProvince: records stored per reporting province (total, and the
	// rate over the last interval), busiest first.
	ByProvince []LiveProvince `json:"by_province"`
	Error      string         `json:"error,omitempty"`
}

// LivePoint is the rates between two samples, per second, rounded to 0.01;
// At is the later sample's time.
type LivePoint struct {
	At             time.Time `json:"at"`
	IngestPerSec   float64   `json:"ingest_per_s"`
	DupPerSec      float64   `json:"duplicates_per_s"`
	RejectPerSec   float64   `json:"rejected_per_s"`
	ApprovedPerSec float64   `json:"authorised_per_s"`
	RefusedPerSec  float64   `json:"refused_per_s"`
	FailedPerSec   float64   `json:"failed_per_s"`
	ReversalPerSec float64   `json:"reversals_per_s"`
	// RouteMillis is the mean switch routing time of the interval's
	// authorisations (0 without any).
	RouteMillis float64 `json:"route_ms"`
}

// LiveTotals are the counters at the latest sample.
type LiveTotals struct {
	Stored    int64 `json:"stored"`
	Dups      int64 `json:"duplicates"`
	Rejected  int64 `json:"rejected"`
	Approved  int64 `json:"authorised"`
	Refused   int64 `json:"refused"`
	Failed    int64 `json:"failed"`
	Reversals int64 `json:"reversals"`
}

// LiveProvince is one reporting province's stored records.
type LiveProvince struct {
	Province Label   `json:"province"`
	Stored   int64   `json:"stored"`
	PerSec   float64 `json:"per_s"`
}

func round2(f float64) float64 { return math.Round(f*100) / 100 }

// rate is a counter's increase per second; a counter that went down (a
// restart) counts from zero.
func rate(a, b float64, secs float64) float64 {
	d := b - a
	if d < 0 {
		d = b
	}
	return round2(d / secs)
}

func (l *liveSampler) view() Live {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := Live{Points: []LivePoint{}, ByProvince: []LiveProvince{}, Error: l.lastErr}
	for i := 1; i < len(l.samples); i++ {
		a, b := l.samples[i-1], l.samples[i]
		secs := b.at.Sub(a.at).Seconds()
		p := LivePoint{At: b.at.In(region.Shanghai),
			IngestPerSec: rate(a.stored, b.stored, secs), DupPerSec: rate(a.dups, b.dups, secs),
			RejectPerSec: rate(a.rejected, b.rejected, secs), ApprovedPerSec: rate(a.approved, b.approved, secs),
			RefusedPerSec: rate(a.refused, b.refused, secs), FailedPerSec: rate(a.other, b.other, secs),
			ReversalPerSec: rate(a.reversals, b.reversals, secs)}
		if dn := b.routeCount - a.routeCount; dn > 0 {
			p.RouteMillis = round2((b.routeSum - a.routeSum) / dn * 1000)
		}
		out.Points = append(out.Points, p)
	}
	n := len(l.samples)
	if n == 0 {
		return out
	}
	last := l.samples[n-1]
	out.Totals = LiveTotals{Stored: int64(last.stored), Dups: int64(last.dups), Rejected: int64(last.rejected),
		Approved: int64(last.approved), Refused: int64(last.refused), Failed: int64(last.other), Reversals: int64(last.reversals)}
	var prev map[string]float64
	secs := 0.0
	if n > 1 {
		prev, secs = l.samples[n-2].byProvince, last.at.Sub(l.samples[n-2].at).Seconds()
	}
	for code, v := range last.byProvince {
		lp := LiveProvince{Province: codeLabel(code), Stored: int64(v)}
		if prev != nil {
			lp.PerSec = rate(prev[code], v, secs)
		}
		out.ByProvince = append(out.ByProvince, lp)
	}
	sort.Slice(out.ByProvince, func(i, j int) bool {
		a, b := out.ByProvince[i], out.ByProvince[j]
		if a.Stored != b.Stored {
			return a.Stored > b.Stored
		}
		return a.Province.Code < b.Province.Code
	})
	if len(out.Points) > 0 {
		out.Available = true
		lp := out.Points[len(out.Points)-1]
		out.Latest = &lp
		out.IntervalSeconds = round2(last.at.Sub(l.samples[n-2].at).Seconds())
	}
	return out
}
