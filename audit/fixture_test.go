package audit_test

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"time"

	"gongji/audit"
	"gongji/money"
	"gongji/region"
)

// The hand-computed period 202608 of the round-trip test. Four provinces
// (北京 110000, 上海 310000, 广东 440000 with 广州 440100 and 深圳 440300,
// 四川 510000 with 成都 510100 and 省本级 519900). Its ten rows include a usage
// reversed in part in the same period (U…0002 / R…0001), a usage reversed in
// full in the same period (U…0004 / R…0003, so the pair 110000→310000 sums to
// zero and has no gross row while its regions still appear in allocation), a
// reversal of a July usage cleared now (R…0002, a negative gross pair), an
// adjustment settling a July dispute (A…0001), a late row (U…0004 occurred in
// July), a row in the last second of the month, an id that needs RFC 4180
// quoting, and a prepayment shortfall (510000 owes 1315.25, its deposit holds
// 1000.00).
//
// Gross by (payer, payee):
//
//	310000→440000  -120.00   (R…0002)
//	310000→510000   100.00   (U…0006)
//	440000→110000   200.00   (250.50 − 50.50)
//	440000→510000  1000.00
//	510000→110000    35.25   (adjustment)
//	510000→310000  2000.00
//	510000→440000   380.00
//	110000→310000     0.00   (600.00 − 600.00: not listed)
//	total          3595.25
//
// Positions: 110000 +235.25 (235.25/0.00); 310000 +2020.00 (2000.00/-20.00);
// 440000 -940.00 (260.00/1200.00); 510000 -1315.25 (1100.00/2415.25); Σ 0.00.
const (
	fxPeriod      = "202608"
	fxGross       = "3595.25"
	fxJournalText = "gongji audit round-trip journal"
)

var (
	fxExportKey = mustKey("gongji-test-export-key-0123456789abcdef")
	fxPersonKey = mustKey("gongji-test-person-key-0123456789abcdef")
)

func mustKey(s string) audit.PseudonymKey {
	k, err := audit.NewPseudonymKey([]byte(s))
	if err != nil {
		panic(err)
	}
	return k
}

// idNumber builds a syntactically valid 18-character resident ID number
// (GB 11643 check character) from a 17-digit body, for synthetic people.
func idNumber(body17 string) string {
	w := []int{7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2}
	sum := 0
	for i := 0; i < 17; i++ {
		sum += int(body17[i]-'0') * w[i]
	}
	return body17 + string("10X98765432"[sum%11])
}

// fxPeople are synthetic ID numbers; only their pseudonyms may reach a file.
var fxPeople = []string{
	"11010519491231002X", // the GB 11643 specimen
	idNumber("31010419800101123"),
	idNumber("44030519920715456"),
	idNumber("51010719750320789"),
	idNumber("44010619881111321"),
}

// ref is the export pseudonym of a person: person_ref (HMAC with the national
// person key over the upper-cased ID, docs/architecture.md), then Pseudonym.
func ref(i int) string {
	personRef := audit.Pseudonym(fxPersonKey, strings.ToUpper(fxPeople[i]))
	return audit.Pseudonym(fxExportKey, personRef)
}

func y(s string) money.Yuan { return money.MustParse(s) }

func at(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

func fxMeta() audit.Meta {
	p, _ := region.ParsePeriod(fxPeriod)
	h := sha256.Sum256([]byte(fxJournalText))
	return audit.Meta{
		Period:           p,
		ClosedAt:         at("2026-09-05T18:00:00+08:00"),
		JournalHead:      hex.EncodeToString(h[:]),
		Totals:           audit.Totals{Gross: y(fxGross), Usages: 10},
		WarningThreshold: threshold070,
	}
}

func fxUsage(id string, e audit.EntryType, k audit.Kind, payer, payerReg, payee, payeeReg, amount, when string, late bool, revOf string, sharer, beneficiary int) audit.UsageRow {
	p, _ := region.ParsePeriod(fxPeriod)
	return audit.UsageRow{UsageID: id, Period: p, EntryType: e, Kind: k,
		PayerProvince: payer, PayerRegion: payerReg, PayeeProvince: payee, PayeeRegion: payeeReg,
		Amount: y(amount), OccurredAt: at(when), Late: late, ReversalOf: revOf,
		SharerRef: ref(sharer), BeneficiaryRef: ref(beneficiary)}
}

// fixture returns the hand-computed period as a sorted MemSource.
func fixture() *audit.MemSource {
	const (
		U, R, A                   = audit.EntryUsage, audit.EntryReversal, audit.EntryAdjustment
		MED, PHA, RES, LTC        = audit.KindMedical, audit.KindPharmacy, audit.KindResidentPremium, audit.KindLTCPremium
		bj, sh, gd, sc            = "110000", "310000", "440000", "510000"
		bjR, shR, gz, sz, cd, scP = "110100", "310100", "440100", "440300", "510100", "519900"
	)
	src := &audit.MemSource{Info: fxMeta()}
	src.UsageRows = []audit.UsageRow{
		fxUsage("U202608-0001", U, MED, gd, gz, sc, cd, "1000.00", "2026-08-03T09:15:00+08:00", false, "", 2, 3),
		fxUsage("U202608-0002", U, PHA, gd, sz, bj, bjR, "250.50", "2026-08-10T14:02:33+08:00", false, "", 2, 0),
		fxUsage("U202608-0003", U, RES, sc, scP, gd, gz, "380.00", "2026-08-15T10:00:00+08:00", false, "", 3, 4),
		fxUsage("U202608-0004", U, MED, bj, bjR, sh, shR, "600.00", "2026-07-30T16:45:12+08:00", true, "", 0, 1),
		fxUsage("U202608-0005", U, LTC, sc, cd, sh, shR, "2000.00", "2026-08-31T23:59:59+08:00", false, "", 3, 1),
		fxUsage(`U202608-0006 "PH,7"`, U, MED, sh, shR, sc, cd, "100.00", "2026-08-08T08:08:08+08:00", false, "", 1, 3),
		fxUsage("R202608-0001", R, PHA, gd, sz, bj, bjR, "-50.50", "2026-08-12T11:11:11+08:00", false, "U202608-0002", 2, 0),
		fxUsage("R202608-0002", R, MED, sh, shR, gd, sz, "-120.00", "2026-08-05T07:30:00+08:00", false, "U202607-0099", 1, 2),
		fxUsage("R202608-0003", R, MED, bj, bjR, sh, shR, "-600.00", "2026-08-20T12:00:00+08:00", false, "U202608-0004", 0, 1),
		fxUsage("A202608-0001", A, MED, sc, cd, bj, bjR, "35.25", "2026-08-20T15:30:00+08:00", false, "U202607-0042", 3, 0),
	}
	src.GrossRows = []audit.GrossRow{
		{sh, gd, y("-120.00")}, {sh, sc, y("100.00")}, {gd, bj, y("200.00")}, {gd, sc, y("1000.00")},
		{sc, bj, y("35.25")}, {sc, sh, y("2000.00")}, {sc, gd, y("380.00")},
	}
	pos := map[string][3]string{
		bj: {"235.25", "0.00", "235.25"},
		sh: {"2000.00", "-20.00", "2020.00"},
		gd: {"260.00", "1200.00", "-940.00"},
		sc: {"1100.00", "2415.25", "-1315.25"},
	}
	// Prepayment inputs (deposit_before, required_next) and the derived
	// columns: 440000 draws 940.00 of 1200.00 (≥ 70 %: warning), 510000 owes
	// 1315.25 but holds 1000.00: drawn 1000.00, outstanding 315.25.
	prepay := map[string]audit.PrepayRow{
		bj:       {DepositBefore: y("5000.00"), Drawn: y("0.00"), Outstanding: y("0.00"), DepositAfter: y("5000.00"), RequiredNext: y("1000.00")},
		sh:       {DepositBefore: y("800.00"), Drawn: y("0.00"), Outstanding: y("0.00"), DepositAfter: y("800.00"), RequiredNext: y("0.00")},
		"320000": {DepositBefore: y("3000.00"), Drawn: y("0.00"), Outstanding: y("0.00"), DepositAfter: y("3000.00"), RequiredNext: y("3000.00")},
		gd:       {DepositBefore: y("1200.00"), Drawn: y("940.00"), Outstanding: y("0.00"), DepositAfter: y("260.00"), RequiredNext: y("2400.00"), Warning: true},
		sc:       {DepositBefore: y("1000.00"), Drawn: y("1000.00"), Outstanding: y("315.25"), DepositAfter: y("0.00"), RequiredNext: y("4830.50"), Warning: true},
	}
	for _, p := range region.ProvinceCodes() {
		r := pos[p]
		if r[0] == "" {
			r = [3]string{"0.00", "0.00", "0.00"}
		}
		src.PositionRows = append(src.PositionRows, audit.PositionRow{ProvinceCode: p, Receivable: y(r[0]), Payable: y(r[1]), Net: y(r[2])})
		pr := prepay[p]
		pr.ProvinceCode = p
		src.PrepayRows = append(src.PrepayRows, pr)
	}
	src.AllocationRows = []audit.AllocationRow{
		{bj, bjR, y("235.25"), y("0.00"), y("235.25")},
		{sh, shR, y("2000.00"), y("-20.00"), y("2020.00")},
		{gd, gz, y("380.00"), y("1000.00"), y("-620.00")},
		{gd, sz, y("-120.00"), y("200.00"), y("-320.00")},
		{sc, cd, y("1100.00"), y("2035.25"), y("-935.25")},
		{sc, scP, y("0.00"), y("380.00"), y("-380.00")},
	}
	src.InstructionRows = []audit.InstructionRow{
		{audit.TierNational, region.NationalCentre, bj, y("235.25")},
		{audit.TierNational, region.NationalCentre, sh, y("2020.00")},
		{audit.TierNational, gd, region.NationalCentre, y("940.00")},
		{audit.TierNational, sc, region.NationalCentre, y("1315.25")},
		{audit.TierProvince, bj, bjR, y("235.25")},
		{audit.TierProvince, sh, shR, y("2020.00")},
		{audit.TierProvince, gz, gd, y("620.00")},
		{audit.TierProvince, sz, gd, y("320.00")},
		{audit.TierProvince, cd, sc, y("935.25")},
		{audit.TierProvince, scP, sc, y("380.00")},
	}
	src.Sort()
	return src
}
