package clearingdb

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strings"
	"time"

	"github.com/shopspring/decimal"

	"gongji/audit"
	"gongji/audit/verify"
	"gongji/money"
	"gongji/prepay"
	"gongji/region"
	"gongji/settlement"
)

// ProvinceVerifyOptions adjust VerifyProvinceBundle.
type ProvinceVerifyOptions struct {
	// WarningThreshold is the prepayment warning threshold the settlement
	// used; zero means verify.DefaultWarningThreshold (0.70).
	WarningThreshold decimal.Decimal
	// JournalHead, when not empty, is the clearing journal's head the caller
	// holds (e.g. from the national bundle or the operator); manifest
	// journal_head must equal it.
	JournalHead string
	// Province, when not empty, is the province the bundle must be for (a
	// node checks that it received its own).
	Province string
	// Statement, when not nil, is the province's statement of the period as
	// the node received it (GetStatement): the bundle's position, region,
	// instruction rows and its usage tallies as payer and as payee must equal
	// it, and so must the prepay row when Prepay is not nil.
	Statement *settlement.Statement
	Prepay    *prepay.Row
	// National, when not nil, is the national bundle of the same period: it
	// is verified with verify.VerifyFS, must have the same setlym,
	// generated_at and journal_head, and each scoped file must equal the
	// national file filtered to the province, byte for byte.
	National fs.FS
}

// Headers of the bundle's CSV files (DESIGN §11).
var bundleHeaders = map[string][]string{
	audit.FileUsages: {"usage_id", "setlym", "entry_type", "kind", "payer_province", "payer_region",
		"payee_province", "payee_region", "amount", "occurred_at", "late", "reversal_of", "sharer_ref", "beneficiary_ref"},
	audit.FileGross:        {"payer_province", "payee_province", "amount"},
	audit.FilePositions:    {"province_code", "receivable", "payable", "net"},
	audit.FileAllocation:   {"province_code", "region_code", "receivable", "payable", "net"},
	audit.FileInstructions: {"tier", "from_code", "to_code", "amount"},
	audit.FilePrepay:       {"province_code", "deposit_before", "drawn", "outstanding", "deposit_after", "required_next", "warning"},
}

// scopeFilter says which rows of a national file belong to province p's
// scoped file (f: the row's fields).
var scopeFilter = map[string]func(f []string, p string) bool{
	audit.FileUsages:       func(f []string, p string) bool { return f[4] == p || f[6] == p },
	audit.FileGross:        func(f []string, p string) bool { return f[0] == p || f[1] == p },
	audit.FilePositions:    func(f []string, p string) bool { return f[0] == p },
	audit.FileAllocation:   func(f []string, p string) bool { return f[0] == p },
	audit.FileInstructions: func(f []string, p string) bool { return f[1] == p || f[2] == p },
	audit.FilePrepay:       func(f []string, p string) bool { return f[0] == p },
}

// VerifyProvinceBundle checks a province-scoped bundle (see WriteBundle) in
// fsys and returns nil or a *verify.Difference naming the first difference
// (file, line, column, want, got), or ctx's error. The checks, in order:
//
//  1. manifest.json: canonical form (keys sorted, two-space indent, final
//     newline), exactly the national keys plus "province", the six files,
//     well-formed values; province and journal_head equal the options' when
//     given.
//  2. Each CSV file: the national header, every line canonical and valid by
//     the row rules of package audit (no ID number anywhere), strict key
//     order; its row count and sha256 against the manifest.
//  3. usages.csv: every row involves the province (as payer or payee); the
//     row count and sum equal the manifest totals.
//  4. gross, positions, allocation, instructions and prepay (its derived
//     columns) recomputed from the scoped usages.csv alone and compared line
//     by line: exact, because every usage that moves the province's or its
//     regions' figures involves the province.
//  5. With opts.Statement: the files agree with the province's statement
//     (position, regions, instructions, entries and sums as payer and as
//     payee, prepay row). This is what proves that no row of the province was
//     left out: the statement's tallies were counted at close.
//  6. With opts.National: the national bundle verifies, has the same setlym,
//     generated_at and journal_head, and every scoped file equals its
//     national file filtered to the province (scopeFilter), byte for byte.
//     A difference in the national bundle itself is reported with File
//     "national/<name>".
//
// Memory is bounded by the code lists, not by the number of usages; each CSV
// file is read twice (format, then figures). No database is involved.
func VerifyProvinceBundle(ctx context.Context, fsys fs.FS, opts ProvinceVerifyOptions) error {
	thr := opts.WarningThreshold
	if thr.IsZero() {
		thr = decimal.RequireFromString(verify.DefaultWarningThreshold)
	}
	if !thr.IsPositive() || thr.GreaterThan(decimal.NewFromInt(1)) {
		return fmt.Errorf("verify: warning threshold must be in (0, 1], got %s", thr)
	}
	v := &scopeVerifier{ctx: ctx, fsys: fsys, opts: opts, thr: thr}
	steps := []func() error{v.readManifest, v.checkFormats, v.tallyUsages, v.checkDerived}
	if opts.Statement != nil {
		steps = append(steps, v.checkStatement)
	}
	if opts.National != nil {
		steps = append(steps, v.checkNational)
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return nil
}

type scopeVerifier struct {
	ctx  context.Context
	fsys fs.FS
	opts ProvinceVerifyOptions
	thr  decimal.Decimal

	raw      []byte // manifest.json
	doc      provinceManifestDoc
	province string
	meta     audit.Meta

	// tally of the scoped usages.csv
	rows     int64
	total    money.Yuan
	pair     map[[2]string]money.Yuan
	recv     map[string]money.Yuan // by region of the province
	pay      map[string]money.Yuan
	asPayer  settlement.Tally
	asPayee  settlement.Tally
	provRecv money.Yuan
	provPay  money.Yuan

	found map[string][][]string // rows of the derived files (bounded by the code lists)
}

func (v *scopeVerifier) manDiff(key, reason, want, got string) *verify.Difference {
	return &verify.Difference{File: audit.FileManifest, Line: lineOfKey(v.raw, key), Column: key, Reason: reason, Want: want, Got: got}
}

func (v *scopeVerifier) readManifest() error {
	raw, err := readManifest(v.fsys)
	if err != nil {
		return &verify.Difference{File: audit.FileManifest, Reason: "cannot read the file", Err: err}
	}
	v.raw = raw
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v.doc); err != nil {
		return &verify.Difference{File: audit.FileManifest, Reason: "not a valid province bundle manifest", Err: err}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return &verify.Difference{File: audit.FileManifest, Reason: "data after the JSON object"}
	}
	canon, err := encodeProvinceManifest(v.doc)
	if err != nil {
		return &verify.Difference{File: audit.FileManifest, Reason: "cannot re-encode", Err: err}
	}
	if !bytes.Equal(canon, raw) {
		cl, rl := strings.SplitAfter(string(canon), "\n"), strings.SplitAfter(string(raw), "\n")
		for i := 0; i < len(cl) || i < len(rl); i++ {
			var w, g string
			if i < len(cl) {
				w = cl[i]
			}
			if i < len(rl) {
				g = rl[i]
			}
			if w != g {
				return &verify.Difference{File: audit.FileManifest, Line: int64(i + 1), Want: w, Got: g,
					Reason: "not in canonical form (keys sorted, two-space indent, every key present, final newline)"}
			}
		}
	}
	for _, n := range audit.CSVFiles {
		if _, ok := v.doc.Files[n]; !ok {
			return v.manDiff("files", "no entry for "+n, n, "")
		}
	}
	for n, f := range v.doc.Files {
		if _, ok := bundleHeaders[n]; !ok {
			return v.manDiff(n, "not a file of the bundle", "", n)
		}
		if len(f.SHA256) != 64 || !isLowerHex(f.SHA256) {
			return v.manDiff(n, "sha256 must be 64 lowercase hex characters", "", f.SHA256)
		}
		if f.Rows < 0 {
			return v.manDiff(n, "negative row count", "", fmt.Sprint(f.Rows))
		}
	}
	if _, err := region.ParseProvince(v.doc.Province); err != nil {
		return v.manDiff("province", "not a provincial unit code", "", v.doc.Province)
	}
	if v.opts.Province != "" && v.doc.Province != v.opts.Province {
		return v.manDiff("province", "the bundle is for another province", v.opts.Province, v.doc.Province)
	}
	v.province = v.doc.Province
	p, err := region.ParsePeriod(v.doc.Setlym)
	if err != nil {
		return v.manDiff("setlym", "setlym must be YYYYMM", "", v.doc.Setlym)
	}
	at, err := time.Parse(time.RFC3339, v.doc.GeneratedAt)
	if err != nil || fmtBundleTime(at) != v.doc.GeneratedAt {
		return v.manDiff("generated_at", "want RFC 3339 whole seconds with +08:00", "", v.doc.GeneratedAt)
	}
	if at.Before(p.End()) {
		return v.manDiff("generated_at", "the period cannot close before it ends", "at or after "+fmtBundleTime(p.End()), v.doc.GeneratedAt)
	}
	if len(v.doc.JournalHead) != 64 || !isLowerHex(v.doc.JournalHead) {
		return v.manDiff("journal_head", "journal_head must be 64 lowercase hex characters", "", v.doc.JournalHead)
	}
	if v.opts.JournalHead != "" && v.opts.JournalHead != v.doc.JournalHead {
		return v.manDiff("journal_head", "differs from the clearing journal's head", v.opts.JournalHead, v.doc.JournalHead)
	}
	gross, err := money.Parse(v.doc.Totals.Gross)
	if err != nil || gross.String() != v.doc.Totals.Gross {
		return v.manDiff("gross", "want a plain decimal with exactly two places", "", v.doc.Totals.Gross)
	}
	if v.doc.Totals.Usages < 0 {
		return v.manDiff("usages", "negative row count", "", fmt.Sprint(v.doc.Totals.Usages))
	}
	v.meta = audit.Meta{Period: p, ClosedAt: at, JournalHead: v.doc.JournalHead,
		Totals: audit.Totals{Gross: gross, Usages: v.doc.Totals.Usages}, WarningThreshold: v.thr}
	return nil
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// checkFormats runs every CSV file through audit.WriteRawCSV (canonical
// lines, row rules, key order) and compares its row count and sha256 with the
// manifest.
func (v *scopeVerifier) checkFormats() error {
	for _, name := range audit.CSVFiles {
		if err := v.checkFormat(name); err != nil {
			return err
		}
	}
	return nil
}

func (v *scopeVerifier) checkFormat(name string) error {
	f, err := v.fsys.Open(name)
	if err != nil {
		return &verify.Difference{File: name, Reason: "cannot open the file", Err: err}
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 64<<10)
	head, err := br.ReadSlice('\n')
	want := strings.Join(bundleHeaders[name], ",") + "\n"
	if (err != nil && !errors.Is(err, io.EOF)) || string(head) != want {
		return &verify.Difference{File: name, Line: 1, Reason: "header differs from DESIGN §11", Want: want, Got: string(head)}
	}
	sum, err := audit.WriteRawCSV(v.ctx, io.Discard, name, v.meta, br)
	if err != nil {
		return rowDifference(name, err)
	}
	e := v.doc.Files[name]
	if e.Rows != sum.Rows {
		return &verify.Difference{File: name, Column: "rows", Reason: "row count differs from manifest.json line " +
			fmt.Sprint(lineOfKey(v.raw, name)), Want: fmt.Sprint(e.Rows), Got: fmt.Sprint(sum.Rows)}
	}
	if e.SHA256 != sum.SHA256 {
		return &verify.Difference{File: name, Column: "sha256", Reason: "file's sha256 differs from manifest.json line " +
			fmt.Sprint(lineOfKey(v.raw, name)), Want: e.SHA256, Got: sum.SHA256}
	}
	return nil
}

// rowDifference turns a refusal of package audit into a Difference.
func rowDifference(name string, err error) error {
	var re *audit.RowError
	if errors.As(err, &re) {
		return &verify.Difference{File: re.File, Line: re.Line, Column: re.Column, Reason: re.Err.Error()}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return &verify.Difference{File: name, Reason: "cannot read the file", Err: err}
}

// eachRow calls fn with the fields of every body row of a file that
// checkFormat accepted, and its line number.
func eachRow(fsys fs.FS, name string, fn func(line int64, f []string) error) error {
	f, err := fsys.Open(name)
	if err != nil {
		return &verify.Difference{File: name, Reason: "cannot open the file", Err: err}
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 64<<10)
	var fields []string
	for line := int64(1); ; line++ {
		b, err := br.ReadSlice('\n')
		if errors.Is(err, io.EOF) && len(b) == 0 {
			return nil
		}
		if err != nil {
			return &verify.Difference{File: name, Line: line, Reason: "cannot read the line", Err: err}
		}
		if line == 1 {
			continue // the header, checked before
		}
		fields, err = splitCanonical(b[:len(b)-1], fields[:0])
		if err != nil {
			return &verify.Difference{File: name, Line: line, Reason: err.Error()}
		}
		if err := fn(line, fields); err != nil {
			return err
		}
	}
}

// splitCanonical splits one canonical CSV line (RFC 4180, minimal quoting,
// no line breaks inside fields) into fields.
func splitCanonical(line []byte, dst []string) ([]string, error) {
	for i := 0; ; {
		if i < len(line) && line[i] == '"' {
			var b strings.Builder
			for i++; ; {
				if i >= len(line) {
					return dst, errors.New("unterminated quoted field")
				}
				c := line[i]
				i++
				if c == '"' {
					if i < len(line) && line[i] == '"' {
						b.WriteByte('"')
						i++
						continue
					}
					break
				}
				b.WriteByte(c)
			}
			dst = append(dst, b.String())
			if i == len(line) {
				return dst, nil
			}
			if line[i] != ',' {
				return dst, errors.New("text after a closing quote")
			}
			i++
			continue
		}
		j := bytes.IndexByte(line[i:], ',')
		if j < 0 {
			return append(dst, string(line[i:])), nil
		}
		dst = append(dst, string(line[i:i+j]))
		i += j + 1
	}
}

func (v *scopeVerifier) tallyUsages() error {
	v.pair, v.recv, v.pay = map[[2]string]money.Yuan{}, map[string]money.Yuan{}, map[string]money.Yuan{}
	p := v.province
	err := eachRow(v.fsys, audit.FileUsages, func(line int64, f []string) error {
		if line%4096 == 0 {
			if err := v.ctx.Err(); err != nil {
				return err
			}
		}
		payer, payee := f[4], f[6]
		if payer != p && payee != p {
			return &verify.Difference{File: audit.FileUsages, Line: line, Column: "payer_province",
				Reason: "row does not involve province " + p + " (neither payer nor payee)", Want: p, Got: payer + "→" + payee}
		}
		amt, err := money.Parse(f[8])
		if err != nil { // checkFormat accepted it: cannot happen
			return &verify.Difference{File: audit.FileUsages, Line: line, Column: "amount", Reason: err.Error()}
		}
		v.rows++
		v.total = v.total.Add(amt)
		k := [2]string{payer, payee}
		v.pair[k] = v.pair[k].Add(amt)
		if payer == p {
			v.pay[f[5]] = v.pay[f[5]].Add(amt)
			v.recv[f[5]] = v.recv[f[5]]
			v.asPayer.Entries++
			v.asPayer.Sum = v.asPayer.Sum.Add(amt)
			v.provPay = v.provPay.Add(amt)
		}
		if payee == p {
			v.recv[f[7]] = v.recv[f[7]].Add(amt)
			v.pay[f[7]] = v.pay[f[7]]
			v.asPayee.Entries++
			v.asPayee.Sum = v.asPayee.Sum.Add(amt)
			v.provRecv = v.provRecv.Add(amt)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if v.rows != v.doc.Totals.Usages {
		return v.manDiff("usages", "differs from the rows of usages.csv", fmt.Sprint(v.rows), fmt.Sprint(v.doc.Totals.Usages))
	}
	if g := v.total.String(); g != v.doc.Totals.Gross {
		return v.manDiff("gross", "differs from the sum of usages.csv amount", g, v.doc.Totals.Gross)
	}
	return nil
}

// wantRows recomputes the province's derived files from the tally.
func (v *scopeVerifier) wantRows() map[string][][]string {
	p := v.province
	out := map[string][][]string{}
	for k, a := range v.pair {
		if !a.IsZero() {
			out[audit.FileGross] = append(out[audit.FileGross], []string{k[0], k[1], a.String()})
		}
	}
	net := v.provRecv.Sub(v.provPay)
	out[audit.FilePositions] = [][]string{{p, v.provRecv.String(), v.provPay.String(), net.String()}}
	switch {
	case net.IsNegative():
		out[audit.FileInstructions] = append(out[audit.FileInstructions], []string{"NATIONAL", p, region.NationalCentre, net.Neg().String()})
	case net.IsPositive():
		out[audit.FileInstructions] = append(out[audit.FileInstructions], []string{"NATIONAL", region.NationalCentre, p, net.String()})
	}
	for reg, rec := range v.recv {
		pay := v.pay[reg]
		n := rec.Sub(pay)
		out[audit.FileAllocation] = append(out[audit.FileAllocation], []string{p, reg, rec.String(), pay.String(), n.String()})
		switch {
		case n.IsNegative():
			out[audit.FileInstructions] = append(out[audit.FileInstructions], []string{"PROVINCE", reg, p, n.Neg().String()})
		case n.IsPositive():
			out[audit.FileInstructions] = append(out[audit.FileInstructions], []string{"PROVINCE", p, reg, n.String()})
		}
	}
	keyed := map[string]int{audit.FileGross: 2, audit.FileAllocation: 2, audit.FileInstructions: 3}
	for name, n := range keyed {
		slices.SortFunc(out[name], func(a, b []string) int {
			for i := range n {
				if c := cmp.Compare(a[i], b[i]); c != 0 {
					return c
				}
			}
			return 0
		})
	}
	return out
}

// prepayWant derives the prepay row of the province from its inputs
// (deposit_before, required_next, as found) and its net (DESIGN §11).
func (v *scopeVerifier) prepayWant(found []string) []string {
	p := v.province
	before, err := money.Parse(found[1])
	if err != nil {
		return []string{p, "…", "…", "…", "…", "…", "…"}
	}
	owed := money.Zero
	if net := v.provRecv.Sub(v.provPay); net.IsNegative() {
		owed = net.Neg()
	}
	drawn := before.Min(owed)
	warning := before.IsPositive() && drawn.Decimal().GreaterThanOrEqual(before.Decimal().Mul(v.thr))
	return []string{p, before.String(), drawn.String(), owed.Sub(drawn).String(), before.Sub(drawn).String(),
		found[5], fmt.Sprint(warning)}
}

func (v *scopeVerifier) checkDerived() error {
	want := v.wantRows()
	v.found = map[string][][]string{}
	for _, name := range audit.CSVFiles[1:] {
		header := bundleHeaders[name]
		n := len(want[name])
		if name == audit.FilePrepay {
			n = 1 // its inputs are taken from the row found
		}
		i := 0
		var lastLine int64 = 1
		err := eachRow(v.fsys, name, func(line int64, f []string) error {
			lastLine = line
			var w []string
			switch {
			case i >= n:
				return &verify.Difference{File: name, Line: line, Reason: fmt.Sprintf(
					"extra row: the scoped usages.csv gives %d rows for province %s", n, v.province), Got: strings.Join(f, ",")}
			case name == audit.FilePrepay:
				w = v.prepayWant(f)
			default:
				w = want[name][i]
			}
			for j := range w {
				if w[j] != f[j] {
					return &verify.Difference{File: name, Line: line, Column: header[j],
						Reason: "differs from the value recomputed from the scoped usages.csv (a row is missing, extra, altered or out of order)",
						Want:   strings.Join(w, ","), Got: strings.Join(f, ",")}
				}
			}
			v.found[name] = append(v.found[name], slices.Clone(f))
			i++
			return nil
		})
		if err != nil {
			return err
		}
		if i < n {
			w := "the row of " + v.province
			if name != audit.FilePrepay {
				w = strings.Join(want[name][i], ",")
			}
			return &verify.Difference{File: name, Line: lastLine + 1, Reason: fmt.Sprintf(
				"missing row: the scoped usages.csv gives %d rows, the file has %d", n, i), Want: w}
		}
	}
	return nil
}

// checkStatement compares the bundle with the province's statement.
func (v *scopeVerifier) checkStatement() error {
	st := v.opts.Statement
	p := v.province
	if st.Province != p || st.Period != v.meta.Period {
		return v.manDiff("province", "the statement is for another province or period",
			st.Period.String()+" "+st.Province, v.doc.Setlym+" "+p)
	}
	diff := func(name string, i int, reason string, want []string) error {
		got := ""
		if i < len(v.found[name]) {
			got = strings.Join(v.found[name][i], ",")
		}
		return &verify.Difference{File: name, Line: int64(i + 2), Reason: reason + " (the province's statement)",
			Want: strings.Join(want, ","), Got: got}
	}
	compare := func(name string, want [][]string) error {
		for i, w := range want {
			if i >= len(v.found[name]) || !slices.Equal(w, v.found[name][i]) {
				return diff(name, i, "differs from the statement", w)
			}
		}
		if len(v.found[name]) > len(want) {
			return diff(name, len(want), "row not on the statement", nil)
		}
		return nil
	}
	pos := st.Position
	if err := compare(audit.FilePositions, [][]string{{p, pos.Receivable.String(), pos.Payable.String(), pos.Net.String()}}); err != nil {
		return err
	}
	var regs [][]string
	for _, r := range st.Regions {
		regs = append(regs, []string{r.Province, r.Region, r.Receivable.String(), r.Payable.String(), r.Net.String()})
	}
	if err := compare(audit.FileAllocation, regs); err != nil {
		return err
	}
	var ins [][]string
	for _, in := range st.Instructions {
		ins = append(ins, []string{string(in.Tier), in.From, in.To, in.Amount.String()})
	}
	if err := compare(audit.FileInstructions, ins); err != nil {
		return err
	}
	for _, side := range []struct {
		name      string
		got, want settlement.Tally
	}{{"payer", v.asPayer, st.Usage.AsPayer}, {"payee", v.asPayee, st.Usage.AsPayee}} {
		if side.got.Entries != side.want.Entries || !side.got.Sum.Equal(side.want.Sum) {
			return &verify.Difference{File: audit.FileUsages, Column: side.name + "_province",
				Reason: "rows with " + p + " as " + side.name + " differ from the statement's tally (a row is missing or extra)",
				Want:   fmt.Sprintf("%d rows summing to %s", side.want.Entries, side.want.Sum),
				Got:    fmt.Sprintf("%d rows summing to %s", side.got.Entries, side.got.Sum)}
		}
	}
	if r := v.opts.Prepay; r != nil {
		return compare(audit.FilePrepay, [][]string{{r.Province, r.DepositBefore.String(), r.Drawn.String(), r.Outstanding.String(),
			r.DepositAfter.String(), r.RequiredNext.String(), fmt.Sprint(r.Warning)}})
	}
	return nil
}

// checkNational reconciles the scoped bundle with the national one.
func (v *scopeVerifier) checkNational() error {
	nat := v.opts.National
	err := verify.VerifyFS(v.ctx, nat, verify.Options{WarningThreshold: v.thr, JournalHead: v.opts.JournalHead})
	var d *verify.Difference
	if errors.As(err, &d) {
		nd := *d
		nd.File = "national/" + d.File
		return &nd
	}
	if err != nil {
		return err
	}
	raw, err := readManifest(nat)
	if err != nil {
		return &verify.Difference{File: "national/" + audit.FileManifest, Reason: "cannot read the file", Err: err}
	}
	nm, err := audit.DecodeManifest(raw)
	if err != nil {
		return &verify.Difference{File: "national/" + audit.FileManifest, Reason: "not a valid manifest", Err: err}
	}
	for _, c := range []struct{ key, want, got string }{
		{"setlym", nm.Period.String(), v.doc.Setlym},
		{"generated_at", fmtBundleTime(nm.GeneratedAt), v.doc.GeneratedAt},
		{"journal_head", nm.JournalHead, v.doc.JournalHead},
	} {
		if c.want != c.got {
			return v.manDiff(c.key, "differs from the national bundle", c.want, c.got)
		}
	}
	for _, name := range audit.CSVFiles {
		if err := v.compareFiltered(name); err != nil {
			return err
		}
	}
	return nil
}

// compareFiltered streams the national file and the scoped file together:
// the national lines that belong to the province must be the scoped lines,
// in order, byte for byte.
func (v *scopeVerifier) compareFiltered(name string) error {
	sf, err := v.fsys.Open(name)
	if err != nil {
		return &verify.Difference{File: name, Reason: "cannot open the file", Err: err}
	}
	defer sf.Close()
	scoped := bufio.NewReaderSize(sf, 64<<10)
	if _, err := scoped.ReadSlice('\n'); err != nil { // header: checked before
		return &verify.Difference{File: name, Line: 1, Reason: "cannot read the header", Err: err}
	}
	line := int64(1)
	keep := scopeFilter[name]
	err = eachRawLine(v.opts.National, name, func(nline int64, raw []byte, f []string) error {
		if nline%4096 == 0 {
			if err := v.ctx.Err(); err != nil {
				return err
			}
		}
		if !keep(f, v.province) {
			return nil
		}
		got, err := scoped.ReadSlice('\n')
		line++
		if len(got) == 0 && errors.Is(err, io.EOF) {
			return &verify.Difference{File: name, Line: line, Reason: fmt.Sprintf(
				"missing row: national/%s line %d belongs to province %s", name, nline, v.province), Want: string(raw)}
		}
		if err != nil {
			return &verify.Difference{File: name, Line: line, Reason: "cannot read the line", Err: err}
		}
		if !bytes.Equal(got, raw) {
			return &verify.Difference{File: name, Line: line, Reason: fmt.Sprintf(
				"differs from the national bundle's row for province %s (national/%s line %d)", v.province, name, nline),
				Want: string(raw), Got: string(got)}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if extra, _ := scoped.ReadSlice('\n'); len(extra) > 0 {
		return &verify.Difference{File: name, Line: line + 1, Reason: "extra row: not in the national bundle's rows for province " +
			v.province, Got: string(extra)}
	}
	return nil
}

// eachRawLine calls fn with every body line of a canonical CSV file (with
// its "\n") and its fields.
func eachRawLine(fsys fs.FS, name string, fn func(line int64, raw []byte, f []string) error) error {
	f, err := fsys.Open(name)
	if err != nil {
		return &verify.Difference{File: "national/" + name, Reason: "cannot open the file", Err: err}
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 64<<10)
	var fields []string
	for line := int64(1); ; line++ {
		b, err := br.ReadSlice('\n')
		if errors.Is(err, io.EOF) && len(b) == 0 {
			return nil
		}
		if err != nil {
			return &verify.Difference{File: "national/" + name, Line: line, Reason: "cannot read the line", Err: err}
		}
		if line == 1 {
			continue
		}
		fields, err = splitCanonical(b[:len(b)-1], fields[:0])
		if err != nil {
			return &verify.Difference{File: "national/" + name, Line: line, Reason: err.Error()}
		}
		if err := fn(line, b, fields); err != nil {
			return err
		}
	}
}
