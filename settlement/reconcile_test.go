package settlement_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"gongji/money"
	"gongji/settlement"
)

func baseReport() settlement.Report {
	return settlement.Report{
		UsageID: "U9", Type: settlement.EntryUsage, Kind: settlement.KindMedical,
		Row: settlement.Row{
			PayerProvince: ha, PayerRegion: "410100", PayeeProvince: bj, PayeeRegion: "110100",
			Amount: money.MustParse("88.00"),
		},
		OccurredAt: at("2026-08-12T09:30:00+08:00"),
	}
}

func ptr(r settlement.Report) *settlement.Report { return &r }

// excString renders exceptions compactly: kind field payer|payee|switch→cleared by.
func excString(es []settlement.Exception) string {
	var parts []string
	for _, e := range es {
		parts = append(parts, fmt.Sprintf("%s %s %s|%s|%s→%s %s", e.Kind, e.Field, e.PayerValue, e.PayeeValue, e.SwitchValue, e.Cleared, e.DecidedBy))
	}
	return strings.Join(parts, "; ")
}

func TestReconcile(t *testing.T) {
	t.Parallel()
	mod := func(f func(*settlement.Report)) *settlement.Report { r := baseReport(); f(&r); return &r }
	for _, tc := range []struct {
		name                      string
		payer, payee, sw          *settlement.Report
		cleared                   bool
		amount, kind, payeeRegion string
		exc                       string
	}{
		{
			name: "agree", payer: ptr(baseReport()), payee: ptr(baseReport()), sw: ptr(baseReport()),
			cleared: true, amount: "88.00", kind: "MEDICAL", payeeRegion: "110100",
		},
		{
			name: "same instant in another zone is no difference", payer: ptr(baseReport()),
			payee:   mod(func(r *settlement.Report) { r.OccurredAt = r.OccurredAt.UTC() }),
			cleared: true, amount: "88.00", kind: "MEDICAL", payeeRegion: "110100",
		},
		{
			name: "amount differs: the payer's is authoritative, even against the switch", payer: ptr(baseReport()),
			payee:   mod(func(r *settlement.Report) { r.Amount = money.MustParse("80.00") }),
			sw:      mod(func(r *settlement.Report) { r.Amount = money.MustParse("80.00") }),
			cleared: true, amount: "88.00", kind: "MEDICAL", payeeRegion: "110100",
			exc: "MISMATCH amount 88.00|80.00|80.00→88.00 PAYER",
		},
		{
			name: "kind differs: the switch sides with the payee", payer: ptr(baseReport()),
			payee:   mod(func(r *settlement.Report) { r.Kind = settlement.KindPharmacy }),
			sw:      mod(func(r *settlement.Report) { r.Kind = settlement.KindPharmacy }),
			cleared: true, amount: "88.00", kind: "PHARMACY", payeeRegion: "110100",
			exc: "MISMATCH kind MEDICAL|PHARMACY|PHARMACY→PHARMACY SWITCH",
		},
		{
			name: "region differs: the switch sides with the payer", payer: ptr(baseReport()),
			payee:   mod(func(r *settlement.Report) { r.PayeeRegion = "119900" }),
			sw:      ptr(baseReport()),
			cleared: true, amount: "88.00", kind: "MEDICAL", payeeRegion: "110100",
			exc: "MISMATCH payee_region 110100|119900|110100→110100 SWITCH",
		},
		{
			name: "field differs and the switch did not record it: payer's value", payer: ptr(baseReport()),
			payee:   mod(func(r *settlement.Report) { r.PayeeRegion = "119900"; r.OccurredAt = r.OccurredAt.Add(time.Minute) }),
			sw:      &settlement.Report{UsageID: "U9", Row: settlement.Row{Amount: money.MustParse("88.00")}},
			cleared: true, amount: "88.00", kind: "MEDICAL", payeeRegion: "110100",
			exc: "MISMATCH payee_region 110100|119900|→110100 PAYER; " +
				"MISMATCH occurred_at 2026-08-12T09:30:00+08:00|2026-08-12T09:31:00+08:00|→2026-08-12T09:30:00+08:00 PAYER",
		},
		{
			name: "the switch matches neither: payer's value", payer: ptr(baseReport()),
			payee:   mod(func(r *settlement.Report) { r.Kind = settlement.KindPharmacy }),
			sw:      mod(func(r *settlement.Report) { r.Kind = settlement.KindLTCPremium }),
			cleared: true, amount: "88.00", kind: "MEDICAL", payeeRegion: "110100",
			exc: "MISMATCH kind MEDICAL|PHARMACY|LTC_PREMIUM→MEDICAL PAYER",
		},
		{
			name: "payer only at close", payer: ptr(baseReport()),
			cleared: true, amount: "88.00", kind: "MEDICAL", payeeRegion: "110100",
			exc: "PAYER_ONLY  ||→ PAYER",
		},
		{
			name: "payer only, the switch authorised less", payer: ptr(baseReport()),
			sw:      mod(func(r *settlement.Report) { r.Amount = money.MustParse("80.00") }),
			cleared: true, amount: "88.00", kind: "MEDICAL", payeeRegion: "110100",
			exc: "PAYER_ONLY  ||→ PAYER; SWITCH_MISMATCH amount 88.00||80.00→88.00 PAYER",
		},
		{
			name:    "payee only, authorised: the switch's amount",
			payee:   mod(func(r *settlement.Report) { r.Amount = money.MustParse("90.00") }),
			sw:      ptr(baseReport()),
			cleared: true, amount: "88.00", kind: "MEDICAL", payeeRegion: "110100",
			exc: "PAYEE_ONLY  ||→ PAYEE; SWITCH_MISMATCH amount |90.00|88.00→88.00 SWITCH",
		},
		{
			name:    "payee only, nothing authorised: not cleared",
			payee:   ptr(baseReport()),
			cleared: false,
			exc:     "UNAUTHORISED  ||→ ",
		},
		{
			name: "switch only: nothing moved, nothing cleared", sw: ptr(baseReport()),
			cleared: false,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := settlement.Reconcile(tc.payer, tc.payee, tc.sw)
			if err != nil {
				t.Fatal(err)
			}
			if got.Cleared != tc.cleared {
				t.Fatalf("cleared %v, want %v", got.Cleared, tc.cleared)
			}
			if tc.cleared {
				r := got.Record
				if r.Amount.String() != tc.amount || string(r.Kind) != tc.kind || r.PayeeRegion != tc.payeeRegion {
					t.Errorf("cleared %s %s %s, want %s %s %s", r.Amount, r.Kind, r.PayeeRegion, tc.amount, tc.kind, tc.payeeRegion)
				}
			}
			if g := excString(got.Exceptions); g != tc.exc {
				t.Errorf("exceptions\n got %s\nwant %s", g, tc.exc)
			}
			for _, e := range got.Exceptions {
				if strings.Join(e.Provinces, ",") != bj+","+ha || e.UsageID != "U9" {
					t.Errorf("exception %+v must name U9 and both provinces", e)
				}
			}
		})
	}
}

func TestReconcileBadInput(t *testing.T) {
	t.Parallel()
	if _, err := settlement.Reconcile(nil, nil, nil); !errors.Is(err, settlement.ErrBadReconcileInput) {
		t.Errorf("nothing: %v", err)
	}
	other := baseReport()
	other.UsageID = "U10"
	if _, err := settlement.Reconcile(ptr(baseReport()), &other, nil); !errors.Is(err, settlement.ErrBadReconcileInput) {
		t.Errorf("different ids: %v", err)
	}
}

// TestReconcileProvinceMismatchReachesAllStatements: when the payee reports
// another payee province than the payer, every named province sees the
// exception on its statement.
func TestReconcileProvinceMismatchReachesAllStatements(t *testing.T) {
	t.Parallel()
	payer := baseReport()
	payee := baseReport()
	payee.PayeeProvince, payee.PayeeRegion = sh, "310100"
	got, err := settlement.Reconcile(&payer, &payee, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Exceptions) != 2 || got.Record.PayeeProvince != bj {
		t.Fatalf("exceptions %s, cleared payee %s", excString(got.Exceptions), got.Record.PayeeProvince)
	}
	if p := strings.Join(got.Exceptions[0].Provinces, ","); p != bj+","+sh+","+ha {
		t.Fatalf("provinces %s", p)
	}
	rec := got.Record.ToRecord(settlement.Assignment{Period: per(2026, 8)}, "s", "b")
	if err := rec.Validate(); err != nil {
		t.Fatal(err)
	}
	rows := []settlement.Row{rec.Row}
	res := settlement.Compute(rows)
	sts, err := settlement.BuildStatements(per(2026, 8), res, settlement.CountTallies(rows), got.Exceptions)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range sts {
		want := 0
		if st.Province == bj || st.Province == sh || st.Province == ha {
			want = 2
		}
		if len(st.Exceptions) != want {
			t.Errorf("%s: %d exceptions, want %d", st.Province, len(st.Exceptions), want)
		}
	}
}
