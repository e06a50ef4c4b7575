package settlement_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"gongji/region"
	"gongji/settlement"
)

func TestTransition(t *testing.T) {
	t.Parallel()
	const (
		ok     = "ok"
		bad    = "bad"
		closed = "closed" // ErrBadTransition and ErrPeriodClosed
	)
	O, G, C, S := settlement.PeriodOpen, settlement.PeriodClosing, settlement.PeriodClosed, settlement.PeriodSettled
	want := map[[2]settlement.PeriodState]string{
		{O, O}: bad, {O, G}: ok, {O, C}: bad, {O, S}: bad,
		{G, O}: ok, {G, G}: bad, {G, C}: ok, {G, S}: bad,
		{C, O}: closed, {C, G}: closed, {C, C}: closed, {C, S}: ok,
		{S, O}: closed, {S, G}: closed, {S, C}: closed, {S, S}: closed,
	}
	if len(want) != 16 {
		t.Fatalf("table has %d cases, want all 16 pairs", len(want))
	}
	for pair, w := range want {
		t.Run(fmt.Sprintf("%s→%s", pair[0], pair[1]), func(t *testing.T) {
			t.Parallel()
			err := settlement.Transition(pair[0], pair[1])
			switch w {
			case ok:
				if err != nil {
					t.Fatalf("want legal, got %v", err)
				}
			case bad:
				if !errors.Is(err, settlement.ErrBadTransition) || errors.Is(err, settlement.ErrPeriodClosed) {
					t.Fatalf("want ErrBadTransition only, got %v", err)
				}
			case closed:
				if !errors.Is(err, settlement.ErrBadTransition) || !errors.Is(err, settlement.ErrPeriodClosed) {
					t.Fatalf("want ErrBadTransition and ErrPeriodClosed, got %v", err)
				}
			}
		})
	}
	for _, pair := range [][2]settlement.PeriodState{{"", O}, {O, "DONE"}, {"open", G}} {
		if err := settlement.Transition(pair[0], pair[1]); !errors.Is(err, settlement.ErrBadState) {
			t.Errorf("%q→%q: want ErrBadState, got %v", pair[0], pair[1], err)
		}
	}
}

func TestPeriodStatePredicates(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		s              settlement.PeriodState
		accepts, froze bool
	}{
		{settlement.PeriodOpen, true, false},
		{settlement.PeriodClosing, false, false},
		{settlement.PeriodClosed, false, true},
		{settlement.PeriodSettled, false, true},
	} {
		if tc.s.AcceptsRecords() != tc.accepts || tc.s.Frozen() != tc.froze {
			t.Errorf("%s: AcceptsRecords %v Frozen %v, want %v %v", tc.s, tc.s.AcceptsRecords(), tc.s.Frozen(), tc.accepts, tc.froze)
		}
		if got, err := settlement.ParsePeriodState(string(tc.s)); err != nil || got != tc.s {
			t.Errorf("ParsePeriodState(%s) = %s, %v", tc.s, got, err)
		}
	}
	if _, err := settlement.ParsePeriodState("closed"); !errors.Is(err, settlement.ErrBadState) {
		t.Errorf("lower-case state accepted: %v", err)
	}
}

func TestConfigDefaultsAndValidate(t *testing.T) {
	t.Parallel()
	c := settlement.Config{}.WithDefaults()
	if c.CutOffGrace != 5*24*time.Hour || c.ConfirmationWindow != 10*24*time.Hour {
		t.Fatalf("defaults %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	kept := settlement.Config{CutOffGrace: 48 * time.Hour, ConfirmationWindow: time.Hour}.WithDefaults()
	if kept.CutOffGrace != 48*time.Hour || kept.ConfirmationWindow != time.Hour {
		t.Fatalf("WithDefaults overwrote set fields: %+v", kept)
	}
	for name, bad := range map[string]settlement.Config{
		"zero grace":         {CutOffGrace: 0, ConfirmationWindow: time.Hour},
		"negative grace":     {CutOffGrace: -time.Hour, ConfirmationWindow: time.Hour},
		"grace past month":   {CutOffGrace: 28 * 24 * time.Hour, ConfirmationWindow: time.Hour},
		"zero window":        {CutOffGrace: time.Hour},
		"window too long":    {CutOffGrace: time.Hour, ConfirmationWindow: 91 * 24 * time.Hour},
		"negative window":    {CutOffGrace: time.Hour, ConfirmationWindow: -1},
		"grace just too big": {CutOffGrace: settlement.CutOffGraceMax + 1, ConfirmationWindow: time.Hour},
	} {
		if err := bad.Validate(); !errors.Is(err, settlement.ErrBadConfig) {
			t.Errorf("%s: want ErrBadConfig, got %v", name, err)
		}
	}
	edge := settlement.Config{CutOffGrace: settlement.CutOffGraceMax, ConfirmationWindow: settlement.ConfirmationWindowMax}
	if err := edge.Validate(); err != nil {
		t.Errorf("maxima must be valid: %v", err)
	}
}

func at(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

func per(y int, m time.Month) region.Period { return region.Period{Year: y, Month: m} }

func TestCutOffAndCheckClose(t *testing.T) {
	t.Parallel()
	cfg := settlement.Config{}.WithDefaults()
	jul := per(2026, 7)
	// July ends 2026-08-01T00:00+08:00; plus 5 days.
	if got := cfg.CutOff(jul); !got.Equal(at("2026-08-06T00:00:00+08:00")) {
		t.Fatalf("cut-off %s", got)
	}
	for _, tc := range []struct {
		name    string
		state   settlement.PeriodState
		now     string
		earlier bool
		want    error
	}{
		{"after cut-off", settlement.PeriodOpen, "2026-08-06T00:00:01+08:00", false, nil},
		{"exactly at cut-off", settlement.PeriodOpen, "2026-08-06T00:00:00+08:00", false, settlement.ErrBeforeCutOff},
		{"during grace", settlement.PeriodOpen, "2026-08-03T12:00:00+08:00", false, settlement.ErrBeforeCutOff},
		{"cut-off in UTC terms is still before", settlement.PeriodOpen, "2026-08-05T15:59:59Z", false, settlement.ErrBeforeCutOff},
		{"earlier month open", settlement.PeriodOpen, "2026-09-01T00:00:00+08:00", true, settlement.ErrEarlierPeriodOpen},
		{"already closing", settlement.PeriodClosing, "2026-09-01T00:00:00+08:00", false, settlement.ErrBadTransition},
		{"closed", settlement.PeriodClosed, "2026-09-01T00:00:00+08:00", false, settlement.ErrPeriodClosed},
	} {
		err := cfg.CheckClose(jul, tc.state, at(tc.now), tc.earlier)
		if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestAssign(t *testing.T) {
	t.Parallel()
	cfg := settlement.Config{}.WithDefaults()
	jun, jul, aug, sep := per(2026, 6), per(2026, 7), per(2026, 8), per(2026, 9)
	none := settlement.StateMap{}
	for _, tc := range []struct {
		name              string
		occurred, arrived string
		closed            settlement.StateMap
		wantPeriod        region.Period
		wantLate          bool
	}{
		{"own month, on time", "2026-07-15T10:00:00+08:00", "2026-07-15T10:00:01+08:00", none, jul, false},
		{"own month, arrives in grace", "2026-07-31T23:00:00+08:00", "2026-08-05T23:59:59+08:00", none, jul, false},
		{"own month, arrives exactly at cut-off", "2026-07-31T23:00:00+08:00", "2026-08-06T00:00:00+08:00", none, jul, false},
		{"arrives after cut-off → next month, late", "2026-07-31T23:00:00+08:00", "2026-08-06T00:00:01+08:00", none, aug, true},
		// 2026-06-30T16:30Z is 2026-07-01 00:30 in Shanghai: July, although UTC says June.
		{"Shanghai month boundary, UTC says June", "2026-06-30T16:30:00Z", "2026-06-30T16:31:00Z", none, jul, false},
		{"Shanghai month boundary, last second of June", "2026-06-30T15:59:59Z", "2026-06-30T16:00:30Z", none, jun, false},
		// 2026-07-31T20:00Z is 2026-08-01 04:00 in Shanghai.
		{"UTC July evening is Shanghai August", "2026-07-31T20:00:00Z", "2026-08-01T00:00:00Z", none, aug, false},
		{"own month closed → next open, late", "2026-06-20T09:00:00+08:00", "2026-07-02T09:00:00+08:00",
			settlement.StateMap{jun: settlement.PeriodClosed}, jul, true},
		{"own month CLOSING counts as closed", "2026-06-20T09:00:00+08:00", "2026-07-02T09:00:00+08:00",
			settlement.StateMap{jun: settlement.PeriodClosing}, jul, true},
		{"own month OPEN in the map stays", "2026-06-20T09:00:00+08:00", "2026-07-02T09:00:00+08:00",
			settlement.StateMap{jun: settlement.PeriodOpen}, jun, false},
		{"skip closed and settled months", "2026-06-20T09:00:00+08:00", "2026-09-02T09:00:00+08:00",
			settlement.StateMap{jun: settlement.PeriodSettled, jul: settlement.PeriodClosed, aug: settlement.PeriodClosing}, sep, true},
		{"skip a month whose cut-off passed although not closed", "2026-06-20T09:00:00+08:00", "2026-09-07T09:00:00+08:00",
			settlement.StateMap{jun: settlement.PeriodClosed}, sep, true},
		// A reversal carries its own occurred_at: the reversal of a June usage
		// done in August is an August record, on time.
		{"reversal in a later month", "2026-08-10T12:00:00+08:00", "2026-08-10T12:00:05+08:00",
			settlement.StateMap{jun: settlement.PeriodSettled, jul: settlement.PeriodClosed}, aug, false},
		{"year boundary", "2026-12-31T23:59:00+08:00", "2027-01-06T00:00:01+08:00", none, per(2027, 1), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a, err := cfg.Assign(at(tc.occurred), at(tc.arrived), tc.closed)
			if err != nil {
				t.Fatal(err)
			}
			if a.Period != tc.wantPeriod || a.Late != tc.wantLate {
				t.Fatalf("got %s late=%v, want %s late=%v", a.Period, a.Late, tc.wantPeriod, tc.wantLate)
			}
		})
	}
}

type allClosed struct{}

func (allClosed) Closed(region.Period) bool { return true }

func TestAssignNoOpenPeriod(t *testing.T) {
	t.Parallel()
	cfg := settlement.Config{}.WithDefaults()
	_, err := cfg.Assign(at("2026-07-01T00:00:00+08:00"), at("2026-07-01T00:00:00+08:00"), allClosed{})
	if !errors.Is(err, settlement.ErrNoOpenPeriod) {
		t.Fatalf("want ErrNoOpenPeriod, got %v", err)
	}
}
