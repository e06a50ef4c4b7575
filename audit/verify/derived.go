package verify

import (
	"sort"
	"strings"

	"github.com/shopspring/decimal"

	"gongji/region"
)

const centre = "000000" // the national clearing centre in instructions.csv

type colKind int

const (
	colProvince colKind = iota // a provincial unit code
	colCode                    // any 6-digit code (instructions)
	colRegion                  // a pooling region code
	colAmount                  // a signed amount
	colNonNeg                  // an amount ≥ 0
	colBool
	colTier
)

func checkKind(k colKind, s string) string {
	switch k {
	case colProvince:
		return checkProvince(s)
	case colCode:
		if !isCode(s) {
			return "code must be 6 digits"
		}
	case colRegion:
		if !isCode(s) {
			return "code must be 6 digits"
		}
		if provinceOfRegion(s) == "" {
			return "not a pooling region of regions.csv"
		}
	case colAmount, colNonNeg:
		d, r := parseAmount(s)
		if r != "" {
			return r
		}
		if k == colNonNeg && d.IsNegative() {
			return "must not be negative"
		}
	case colBool:
		if s != "true" && s != "false" {
			return "must be true or false"
		}
	case colTier:
		if s != "NATIONAL" && s != "PROVINCE" {
			return "tier must be NATIONAL or PROVINCE"
		}
	}
	return ""
}

// derivedFile describes one derived CSV file and what it must contain.
type derivedFile struct {
	name    string
	header  []string
	kinds   []colKind
	keyCols int
	count   int                              // number of rows usages.csv gives
	want    func(i int, f []string) []string // expected row i; f is the found row (nil past the end)
	onRow   func(f []string)                 // collects found figures for the invariants
	// inputs: the file has columns the recomputation takes as given
	// (prepay's deposit_before and required_next), so a right content does
	// not prove that a wrong hash is the manifest's fault.
	inputs bool
}

func (v *verifier) compare(d derivedFile) error {
	c, err := openCSV(v.fsys, d.name)
	if err != nil {
		return err
	}
	defer c.close()
	if err := c.header(d.header); err != nil {
		return err
	}
	prevKey := ""
	i := 0
	for {
		f, ok, err := c.record(d.header)
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		for j, k := range d.kinds {
			if r := checkKind(k, f[j]); r != "" {
				return c.diff(d.header[j], r, "", f[j])
			}
		}
		key := strings.Join(f[:d.keyCols], ",")
		if i > 0 && key <= prevKey {
			return c.diff("", "rows must be sorted by "+strings.Join(d.header[:d.keyCols], ", ")+
				" strictly ascending; previous row has "+prevKey, "after "+prevKey, key)
		}
		if i >= d.count {
			return c.diff("", "extra row: usages.csv gives "+itoa(int64(d.count))+" rows", "", joinRecord(f))
		}
		want := d.want(i, f)
		wantKey := strings.Join(want[:d.keyCols], ",")
		for j := range want {
			if want[j] == f[j] {
				continue
			}
			if wantKey != key {
				return c.diff(d.header[j], "wrong row here: usages.csv gives the row for "+wantKey+
					" (a row is missing, extra, altered or out of order)", joinRecord(want), joinRecord(f))
			}
			return c.diff(d.header[j], "differs from the value recomputed from usages.csv", want[j], f[j])
		}
		d.onRow(f)
		prevKey = key
		i++
	}
	if i < d.count {
		want := d.want(i, nil)
		return &Difference{File: d.name, Line: c.line + 1, Reason: "missing row: usages.csv gives " +
			itoa(int64(d.count)) + " rows, the file has " + itoa(int64(i)), Want: joinRecord(want)}
	}
	sha, rows := c.finish()
	return v.checkFileSum(d.name, sha, rows, !d.inputs)
}

func mustAmount(s string) decimal.Decimal {
	d, _ := parseAmount(s) // only called on fields checkKind accepted
	return d
}

// provinceSums returns receivable and payable by province, from the gross
// matrix (computed once, after usages.csv).
func (v *verifier) provinceSums() (recv, pay map[string]decimal.Decimal) {
	if v.t.provRecv == nil {
		v.t.provRecv, v.t.provPay = map[string]decimal.Decimal{}, map[string]decimal.Decimal{}
		for k, a := range v.t.pair {
			v.t.provPay[k[0]] = v.t.provPay[k[0]].Add(a)
			v.t.provRecv[k[1]] = v.t.provRecv[k[1]].Add(a)
		}
	}
	return v.t.provRecv, v.t.provPay
}

func (v *verifier) netOf(p string) decimal.Decimal {
	recv, pay := v.provinceSums()
	return recv[p].Sub(pay[p])
}

func (v *verifier) checkGross() error {
	var rows [][]string
	for k, a := range v.t.pair {
		if !a.IsZero() {
			rows = append(rows, []string{k[0], k[1], fmtAmount(a)})
		}
	}
	sortRows(rows, 2)
	return v.compare(derivedFile{
		name: grossName, header: []string{"payer_province", "payee_province", "amount"},
		kinds: []colKind{colProvince, colProvince, colAmount}, keyCols: 2, count: len(rows),
		want:  func(i int, _ []string) []string { return rows[i] },
		onRow: func([]string) {},
	})
}

func (v *verifier) checkPositions() error {
	recv, pay := v.provinceSums()
	var rows [][]string
	for _, p := range region.ProvinceCodes() {
		rows = append(rows, []string{p, fmtAmount(recv[p]), fmtAmount(pay[p]), fmtAmount(recv[p].Sub(pay[p]))})
	}
	v.foundNet = map[string]decimal.Decimal{}
	v.foundPosRPN = map[string][3]decimal.Decimal{}
	return v.compare(derivedFile{
		name: positionsName, header: []string{"province_code", "receivable", "payable", "net"},
		kinds: []colKind{colProvince, colAmount, colAmount, colAmount}, keyCols: 1, count: len(rows),
		want: func(i int, _ []string) []string { return rows[i] },
		onRow: func(f []string) {
			v.foundNet[f[0]] = mustAmount(f[3])
			v.foundPosRPN[f[0]] = [3]decimal.Decimal{mustAmount(f[1]), mustAmount(f[2]), mustAmount(f[3])}
		},
	})
}

// allocationRows: every region named in usages.csv, sorted by province, region.
func (v *verifier) allocationRows() [][]string {
	var rows [][]string
	for reg := range v.t.seen {
		r, p := v.t.recv[reg], v.t.pay[reg]
		rows = append(rows, []string{provinceOfRegion(reg), reg, fmtAmount(r), fmtAmount(p), fmtAmount(r.Sub(p))})
	}
	sortRows(rows, 2)
	return rows
}

func (v *verifier) checkAllocation() error {
	rows := v.allocationRows()
	v.foundRegionRPN = map[string][3]decimal.Decimal{}
	return v.compare(derivedFile{
		name: allocationName, header: []string{"province_code", "region_code", "receivable", "payable", "net"},
		kinds: []colKind{colProvince, colRegion, colAmount, colAmount, colAmount}, keyCols: 2, count: len(rows),
		want: func(i int, _ []string) []string { return rows[i] },
		onRow: func(f []string) {
			s := v.foundRegionRPN[f[0]]
			for j := 0; j < 3; j++ {
				s[j] = s[j].Add(mustAmount(f[2+j]))
			}
			v.foundRegionRPN[f[0]] = s
		},
	})
}

func (v *verifier) checkInstructions() error {
	var rows [][]string
	for _, p := range region.ProvinceCodes() {
		n := v.netOf(p)
		switch {
		case n.IsNegative():
			rows = append(rows, []string{"NATIONAL", p, centre, fmtAmount(n.Neg())})
		case n.IsPositive():
			rows = append(rows, []string{"NATIONAL", centre, p, fmtAmount(n)})
		}
	}
	for _, a := range v.allocationRows() {
		n := mustAmount(a[4])
		switch {
		case n.IsNegative():
			rows = append(rows, []string{"PROVINCE", a[1], a[0], fmtAmount(n.Neg())})
		case n.IsPositive():
			rows = append(rows, []string{"PROVINCE", a[0], a[1], fmtAmount(n)})
		}
	}
	sortRows(rows, 3)
	v.foundNational = map[string]decimal.Decimal{}
	v.foundProvTier = map[string]decimal.Decimal{}
	return v.compare(derivedFile{
		name: instructionsName, header: []string{"tier", "from_code", "to_code", "amount"},
		kinds: []colKind{colTier, colCode, colCode, colNonNeg}, keyCols: 3, count: len(rows),
		want: func(i int, _ []string) []string { return rows[i] },
		onRow: func(f []string) {
			a := mustAmount(f[3])
			from, to := f[1], f[2]
			if f[0] == "NATIONAL" {
				if from == centre {
					v.centreOut = v.centreOut.Add(a)
					v.foundNational[to] = v.foundNational[to].Add(a)
				} else {
					v.centreIn = v.centreIn.Add(a)
					v.foundNational[from] = v.foundNational[from].Sub(a)
				}
				return
			}
			if region.ProvinceName(from) != "" { // province pays a region
				v.foundProvTier[from] = v.foundProvTier[from].Add(a)
			} else { // a region pays its province
				v.foundProvTier[to] = v.foundProvTier[to].Sub(a)
			}
		},
	})
}

func (v *verifier) checkPrepay() error {
	codes := region.ProvinceCodes()
	return v.compare(derivedFile{
		name:   prepayName,
		header: []string{"province_code", "deposit_before", "drawn", "outstanding", "deposit_after", "required_next", "warning"},
		kinds:  []colKind{colProvince, colNonNeg, colNonNeg, colNonNeg, colNonNeg, colNonNeg, colBool}, keyCols: 1,
		count: len(codes), inputs: true,
		want: func(i int, f []string) []string {
			if f == nil { // past the end: show what is missing
				return []string{codes[i], "…", "…", "…", "…", "…", "…"}
			}
			return v.prepayRow(codes[i], mustAmount(f[1]), f[5])
		},
		onRow: func([]string) {},
	})
}

// prepayRow derives a prepay row from its inputs (deposit_before,
// required_next) and the province's net (DESIGN §11): a net payer's −net is
// drawn from the deposit up to what it holds, the rest stays outstanding;
// warning when deposit_before > 0 and drawn ≥ threshold × deposit_before.
func (v *verifier) prepayRow(code string, before decimal.Decimal, requiredNext string) []string {
	owed := decimal.Zero
	if n := v.netOf(code); n.IsNegative() {
		owed = n.Neg()
	}
	drawn := decimal.Min(before, owed)
	warning := before.IsPositive() && drawn.GreaterThanOrEqual(before.Mul(v.opts.WarningThreshold))
	w := "false"
	if warning {
		w = "true"
	}
	return []string{code, fmtAmount(before), fmtAmount(drawn), fmtAmount(owed.Sub(drawn)),
		fmtAmount(before.Sub(drawn)), requiredNext, w}
}

// checkInvariants re-checks, on the figures found in the files, the sums the
// contract promises. After the line-by-line comparisons they hold unless the
// recomputation itself is wrong; they are checked anyway so that a bug in one
// place cannot hide in the other.
func (v *verifier) checkInvariants() error {
	sum := decimal.Zero
	for _, n := range v.foundNet {
		sum = sum.Add(n)
	}
	if !sum.IsZero() {
		return &Difference{File: positionsName, Column: "net", Reason: "nets do not sum to 0.00", Want: "0.00", Got: fmtAmount(sum)}
	}
	cols := []string{"receivable", "payable", "net"}
	for _, p := range region.ProvinceCodes() {
		pos, reg := v.foundPosRPN[p], v.foundRegionRPN[p]
		for j := range cols {
			if !pos[j].Equal(reg[j]) {
				return &Difference{File: allocationName, Column: cols[j],
					Reason: "the regions of " + p + " do not sum to its row in positions.csv",
					Want:   fmtAmount(pos[j]), Got: fmtAmount(reg[j])}
			}
		}
		if !v.foundNational[p].Equal(pos[2]) {
			return &Difference{File: instructionsName, Column: "amount",
				Reason: "NATIONAL instructions of " + p + " do not settle its net position",
				Want:   fmtAmount(pos[2]), Got: fmtAmount(v.foundNational[p])}
		}
		if !v.foundProvTier[p].Equal(v.foundNational[p]) {
			return &Difference{File: instructionsName, Column: "amount",
				Reason: "PROVINCE instructions of " + p + " do not reconcile with its NATIONAL instruction",
				Want:   fmtAmount(v.foundNational[p]), Got: fmtAmount(v.foundProvTier[p])}
		}
	}
	if !v.centreIn.Equal(v.centreOut) {
		return &Difference{File: instructionsName, Column: "amount",
			Reason: "NATIONAL tier does not balance: the centre must pay out what it receives",
			Want:   fmtAmount(v.centreIn), Got: fmtAmount(v.centreOut)}
	}
	return nil
}

func sortRows(rows [][]string, keyCols int) {
	sort.Slice(rows, func(i, j int) bool {
		for k := 0; k < keyCols; k++ {
			if rows[i][k] != rows[j][k] {
				return rows[i][k] < rows[j][k]
			}
		}
		return false
	})
}
